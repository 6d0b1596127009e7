"""APM / SSE (lpaq1's ``APM``): interpolating refinements of the mixer's probability, with contexts c0,
(c0, c1) and, from revision 2 (``apm_order2``), (c0, c1, c2) hashed to 2**16 contexts, averaged with it:
p1 = (w0 p_mix + w1 apm0 + w2 apm1 [+ w3 apm2]) / 16, clamped to [1, 2**16 - 1].

Each context has 8192 / 2**shift + 1 bins (22-bit probabilities, starting at squash of the bin's
centre) over the stretch domain; the prediction interpolates the two bins around stretch(p_mix), and the
update moves the nearer one 1/2**rate of the way to the bit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .statemap import AP_BITS, AP_TO_P
from .tables import LOGIT_OFFSET, LOGIT_SPAN, PONE, SMAX, SQUASH, clamp, h2

FINAL_SHIFT = 4  # the final weights sum to 2**FINAL_SHIFT
CONTEXTS = (256, 65536, 65536)  # c0; (c0, c1); hash of (c0, c1, c2) (revision 2)
ORDER2_MASK = CONTEXTS[2] - 1


class APM(NamedTuple):
    bins: np.ndarray  # (sum(contexts) * bins,) int32: 22-bit probabilities
    base: np.ndarray  # (A,) int64: where each APM's bins start
    index: np.ndarray  # (B, A) int64: the bin each APM updates after this bit
    shift: int  # bins are 2**shift stretch units apart
    rate: int
    final: np.ndarray  # (A + 1,) int64: (w0, w1, ...), summing to 16


def new_apm(cfg, num_streams: int) -> APM:
    nbins = (LOGIT_SPAN >> cfg.apm_shift) + 1
    centre = [SQUASH[clamp_py((j << cfg.apm_shift) - LOGIT_OFFSET, -SMAX, SMAX) + SMAX] for j in range(nbins)]
    bins = np.array(centre, dtype=np.int64) << AP_TO_P
    contexts = CONTEXTS[:3 if cfg.apm_order2 else 2]
    return APM(bins=np.tile(bins, sum(contexts)).astype(np.int32),
               base=(np.cumsum((0,) + contexts[:-1]) * nbins).astype(np.int64),
               index=np.zeros((num_streams, len(contexts)), dtype=np.int64),
               shift=int(cfg.apm_shift), rate=int(cfg.apm_rate), final=np.array(cfg.final_w, dtype=np.int64))


def clamp_py(x, lo, hi):
    return lo if x < lo else hi if x > hi else x


@njit(cache=True, inline="always")
def predict(A, T, b, pm, c0, c4):
    """Stream b's final p1 from the mixer's pm (c4: the last 4 bytes)."""
    xs = np.int64(T.STRETCH[pm]) + LOGIT_OFFSET  # 1 .. 8191
    ash = A.shift
    lo = xs & ((1 << ash) - 1)
    j0 = xs >> ash
    nbins = (LOGIT_SPAN >> ash) + 1
    pf = A.final[0] * pm
    for a in range(A.base.shape[0]):
        if a == 0:
            base = A.base[0] + c0 * nbins
        elif a == 1:
            base = A.base[1] + (c0 | ((c4 & 0xFF) << 8)) * nbins
        else:
            base = A.base[2] + (h2(c4 & 0xFFFF, c0) & ORDER2_MASK) * nbins
        pa = (np.int64(A.bins[base + j0]) * ((1 << ash) - lo) + np.int64(A.bins[base + j0 + 1]) * lo) >> (ash + AP_TO_P)
        A.index[b, a] = base + j0 + (lo >> (ash - 1))
        pf += A.final[1 + a] * pa
    return clamp(pf >> FINAL_SHIFT, 1, PONE - 1)


@njit(cache=True, inline="always")
def update(A, b, y):
    for a in range(A.base.shape[0]):
        i = A.index[b, a]
        A.bins[i] += ((y << AP_BITS) - A.bins[i]) >> A.rate
