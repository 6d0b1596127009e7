"""The mixer's configuration: everything that shapes its predictions, and so part of the file format
(the container records ``MixerConfig().fingerprint()``, and a decoder refuses any other)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from .tables import CTX_BYTES, CTX_RECORD, CTX_RECORD2, CTX_WORD, CTX_WORD2, table_digest

def order_ctx(n: int, local: bool = False) -> tuple[int, int, int, int]:
    """The context spec of order n (n in 1..8): the last n bytes; ``local``: hashed with the stream id."""
    m4 = (1 << (8 * min(n, 4))) - 1
    m8 = (1 << (8 * max(n - 4, 0))) - 1
    return (CTX_BYTES, m4, m8, int(local))


DEFAULT_CONTEXTS = (
    order_ctx(3), order_ctx(4), order_ctx(5), order_ctx(6), (CTX_WORD, 0xFF, 0, 0), (CTX_WORD2, 0, 0, 0),
    order_ctx(2, True), (CTX_RECORD2, 0, 0, 1), (CTX_RECORD, 0xFF, 0, 0),
)


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
    final_w: tuple = (6, 4, 6)  # final p = (w0 mixer + w1 apm(c0) + w2 apm(c0, c1)) / 16

    @classmethod
    def fast(cls) -> "MixerConfig":
        """Fewer models for speed: 6 hashed contexts, one input per model, 3 weight sets (about 1.5% larger)."""
        return cls(contexts=(order_ctx(3), order_ctx(4), order_ctx(6), (CTX_WORD, 0xFF, 0, 0), order_ctx(2, True),
                             (CTX_RECORD, 0xFF, 0, 0)), lin_shift=0, selectors=("c0", "match", "hits"))

    def fingerprint(self) -> bytes:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob + table_digest().encode()).digest()[:4]

