"""The mixer's configuration: everything that shapes its predictions, and so part of the file format.

The container records the first bytes of ``fingerprint()``; a decoder finds the revision that wrote a file
by it (``REVISIONS``, ``revision_of``) and refuses any other. Revision 1 is ``MixerConfig()``, the
arithmetic of blm_lab's first context mixer; revision 2 (``MixerConfig.revision2()``) adds sparse
and column contexts, a third APM and a bilevel-image model. Fields added after revision 1 are hashed only when they
differ from their default (the revision-1 behaviour), so revision 1's fingerprint never changes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from .tables import (CTX_BYTES, CTX_COLUMN, CTX_COLUMN_WORD, CTX_INDIRECT1, CTX_INDIRECT2, CTX_RECORD, CTX_RECORD2,
                     CTX_RECORD3, CTX_WORD, CTX_WORD2, table_digest)

def order_ctx(n: int, local: bool = False) -> tuple[int, int, int, int]:
    """The context spec of order n (n in 1..8): the last n bytes; ``local``: hashed with the stream id."""
    m4 = (1 << (8 * min(n, 4))) - 1
    m8 = (1 << (8 * max(n - 4, 0))) - 1
    return (CTX_BYTES, m4, m8, int(local))


DEFAULT_CONTEXTS = (
    order_ctx(3), order_ctx(4), order_ctx(5), order_ctx(6), (CTX_WORD, 0xFF, 0, 0), (CTX_WORD2, 0, 0, 0),
    order_ctx(2, True), (CTX_RECORD2, 0, 0, 1), (CTX_RECORD, 0xFF, 0, 0),
)

# revision 2: sparse contexts (bytes 3-4; bytes 1 and 3) and column contexts. The indirect and record-neighbour
# contexts (and the "pixels" weight sets) are selectable but not in revision 2: measured, they paid too little
# for their time (benchmarks/bench_mixer_ablation.py)
SPARSE_CONTEXTS = ((CTX_BYTES, 0xFFFF0000, 0, 0), (CTX_BYTES, 0xFF00FF, 0, 0))
INDIRECT_CONTEXTS = ((CTX_INDIRECT1, 0xFF, 0, 0), (CTX_INDIRECT2, 0xFFFF, 0, 0))
COLUMN_CONTEXTS = ((CTX_COLUMN, 0xFF, 0, 0), (CTX_COLUMN_WORD, 0, 0, 0))
RECORD_CONTEXTS = ((CTX_RECORD3, 0xFF, 0, 0),)  # the cells above-left, above, above-right and beside
REVISION2_CONTEXTS = DEFAULT_CONTEXTS + SPARSE_CONTEXTS + COLUMN_CONTEXTS
ADDED_FIELDS = {"apm_order2", "bitmap"}
REVISION2 = dict(contexts=REVISION2_CONTEXTS, apm_order2=True, final_w=(4, 4, 4, 4), bitmap=True,
                 lr1=80)


@dataclass(frozen=True)
class MixerConfig:
    """Everything that shapes the model; the compressed format depends on every field."""

    hash_bits: int = 20  # each hashed context has 2**hash_bits buckets of 16 bytes
    contexts: tuple = DEFAULT_CONTEXTS
    match_min: int = 6  # the match models hash the last match_min bytes
    match_local: bool = True  # a second match model that only looks in the stream's own segment
    match_bits: int = 20  # match-model hash tables: 2**match_bits positions each
    match_max: int = 65535
    sm_limit: int = 1023  # StateMap adaptation: rate 1/(n + 1.5), n capped here
    o0_limit: int = 255  # direct order-0 probabilities
    mm_limit: int = 1023
    lr1: int = 112  # layer-1 mixer learning rate: dw = x * err * lr1 >> 24 (x, err fixed point)
    lr2: int = 48  # layer-2 mixer learning rate
    lr1_boost: int = 336  # extra layer-1 rate at the start of each weight set: + lr1_boost * T / (T + updates)
    lr1_boost_t: int = 256
    w_init: int = 8192  # initial layer-1 weight of each adaptive input (65536 = 1.0)
    nn_w_init: int = 32768  # initial weight of the calibrated neural input
    nn_raw_w_init: int = 0  # initial weight of the raw neural input
    nn_cm_w_init: int = 8192  # initial weight of each adaptive input when a neural input is present
    nn_limit: int = 255  # calibration of the neural input: rate 1/(n + 1.5), n capped here
    selectors: tuple = ("c0", "match", "c1", "hits")  # layer-1 weight sets (+ "neural" with a neural input)
    lin_shift: int = 4  # > 0: each bit-history model also gives (p - 1/2) >> lin_shift as a second input
    apm_rate: int = 6  # APM bins move 1/2**apm_rate of the way to the coded bit
    apm_shift: int = 8  # APM bins are 2**apm_shift stretch units apart: 8192 / 2**apm_shift + 1 bins
    final_w: tuple = (6, 4, 6)  # final p = (w0 mixer + w1 apm(c0) + w2 apm(c0, c1) [+ w3 apm(c0, c1, c2)]) / 16
    # ---- added in revision 2 (hashed into the fingerprint only when not at these defaults)
    apm_order2: bool = False  # a third APM on (c0, c1, c2), hashed to 2**16 contexts
    bitmap: bool = False  # the bilevel-image model (``bitmap``): pixel windows around each bit

    @classmethod
    def fast(cls) -> "MixerConfig":
        """Fewer models for speed: 6 hashed contexts, one input per model, 3 weight sets (about 1.5% larger)."""
        return cls(contexts=(order_ctx(3), order_ctx(4), order_ctx(6), (CTX_WORD, 0xFF, 0, 0), order_ctx(2, True),
                             (CTX_RECORD, 0xFF, 0, 0)), lin_shift=0, selectors=("c0", "match", "hits"))

    @classmethod
    def revision2(cls, **changes) -> "MixerConfig":
        """Revision 2: revision 1's contexts plus sparse (skip) orders and column contexts (the byte above in
        the previous line); a third APM on order 2; the bilevel-image model; a lower layer-1 rate."""
        return cls(**{**REVISION2, **changes})

    def fingerprint(self) -> bytes:
        fields = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in ADDED_FIELDS and fields[f.name] == f.default:
                del fields[f.name]  # revision 1 knew no such field: its fingerprint stays as it was
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob + table_digest().encode()).digest()[:4]



REVISIONS = {1: MixerConfig(), 2: MixerConfig.revision2()}  # every mixer revision this blm_lab decodes
DEFAULT_REVISION = 1  # what new files are written with


def revision_of(fingerprint: bytes) -> int | None:
    """The revision whose fingerprint begins with ``fingerprint`` (as the container records it), or None."""
    if not fingerprint:
        return None
    for revision, cfg in REVISIONS.items():
        if cfg.fingerprint()[:len(fingerprint)] == fingerprint:
            return revision
    return None
