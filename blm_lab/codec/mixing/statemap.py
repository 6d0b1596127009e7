"""StateMap (lpaq1's ``StateMap``): an adaptive probability per slot of a small context.

Each slot holds a 22-bit probability p that the next bit is 1 and a count n; after a bit y it moves
1/(n + 1.5) of the way to y (``DT[n]``), with n capped at ``limit``, so a slot learns fast at first and
then averages. The bit-history models map each state through one; so do order 0, the match models and
the neural input's calibration. The 16-bit probability a model reads is ``p >> AP_TO_P``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

AP_BITS = 22  # adaptive probabilities (StateMaps, APM bins) are 22-bit integers
AP_TO_P = 6  # shift from an adaptive probability to the coder's 16-bit one
DT_SHIFT = 17  # DT[n] (``tables.DT``) is the rate 1/(n + 1.5) out of 2**17


class StateMap(NamedTuple):
    p: np.ndarray  # (slots,) int32: 22-bit probability of a 1
    n: np.ndarray  # (slots,) int32: updates so far, capped at limit
    limit: int


def new_statemap(init: np.ndarray, limit: int) -> StateMap:
    init = np.ascontiguousarray(init, dtype=np.int32)
    return StateMap(init.copy(), np.zeros_like(init), int(limit))


@njit(cache=True, inline="always")
def sm_p(sm, i):
    """The 22-bit probability of slot i."""
    return np.int64(sm.p[i])


@njit(cache=True, inline="always")
def sm_update(sm, i, y, DT):
    """p += (y - p) / (n + 1.5), n = updates so far capped at the limit."""
    n = sm.n[i]
    p = np.int64(sm.p[i])
    p += (((y << AP_BITS) - p) * DT[n]) >> DT_SHIFT
    sm.p[i] = p
    if n < sm.limit:
        sm.n[i] = n + 1
