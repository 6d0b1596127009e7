"""The neural input: the byte model's integer frequencies f (B, 256) as two mixer inputs.

For prefix c0 of bit k, S1 = sum of f over the bytes under the 1-branch and S0 under the 0-branch (prefix
sums of the integers, exact); its logit ln(S1/S0) comes from the integer log2 (13-bit mantissa table), in
1/256 nat, clamped to +-16 nat. The mixer gets it raw and through a calibration (33 interpolated bins per
bit position, a StateMap, initially the identity), whose weight starts at ``nn_w_init`` while the adaptive
inputs say nothing until their contexts are seen: at the start the model dominates, and where it is wrong
the calibration and the mixer learn within a few hundred bytes to discount it. Its confidence bucket
(16 per bit position) selects a layer-1 weight set and the layer-2 row.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .statemap import AP_TO_P, StateMap, new_statemap, sm_p, sm_update
from .tables import LN2_Q24, LOGIT_OFFSET, SMAX, SQUASH, clamp, ilog2fix

CAL_BINS = 33  # calibration bins per bit position, 256 stretch units apart
BUCKET_SHIFT = 9  # confidence bucket = (logit + 4096) >> 9, 16 buckets


class NeuralInput(NamedTuple):
    cum: np.ndarray  # (B, 257) int64: prefix sums of this step's frequencies
    calibration: StateMap  # (8 * 33 slots)
    bin: np.ndarray  # (B,) int64: the calibration bin this bit updates


def mixer_inputs(cfg, neural: bool) -> list[int]:
    """The raw logit and the calibrated one (none without a model)."""
    return [cfg.nn_raw_w_init, cfg.nn_w_init] if neural else []


def new_neural_input(cfg, num_streams: int) -> NeuralInput:
    identity = [SQUASH[max(-SMAX, min(SMAX, j * 256 - LOGIT_OFFSET)) + SMAX] for j in range(CAL_BINS)]
    cal = np.tile(np.array(identity, dtype=np.int64) << AP_TO_P, 8)
    return NeuralInput(cum=np.zeros((num_streams, 257), dtype=np.int64), calibration=new_statemap(cal, cfg.nn_limit),
                       bin=np.zeros(num_streams, dtype=np.int64))


@njit(cache=True)
def cum_freqs(freqs, cum):
    """cum[b, i] = sum of freqs[b, :i] (int64), for the branch sums."""
    B = freqs.shape[0]
    for b in range(B):
        s = 0
        cum[b, 0] = 0
        for i in range(256):
            s += freqs[b, i]
            cum[b, i + 1] = s


@njit(cache=True, inline="always")
def predict(NI, T, k, b, c0, x, x_first):
    """Stream b's two inputs for bit k into x[b, x_first:]; returns the confidence bucket (0..15)."""
    lo = (c0 - (1 << k)) << (8 - k)
    width = 256 >> k
    mid = lo + (width >> 1)
    s1 = NI.cum[b, lo + width] - NI.cum[b, mid]
    s0 = NI.cum[b, mid] - NI.cum[b, lo]
    d = ilog2fix(s1, T.LOG2) - ilog2fix(s0, T.LOG2)
    logit = clamp((d * LN2_Q24) >> 32, -SMAX, SMAX)
    x[b, x_first] = logit
    xs = logit + LOGIT_OFFSET
    w8 = xs & 255
    cb = k * CAL_BINS + (xs >> 8)
    pc = (sm_p(NI.calibration, cb) * (256 - w8) + sm_p(NI.calibration, cb + 1) * w8) >> (8 + AP_TO_P)
    x[b, x_first + 1] = T.STRETCH[pc]
    NI.bin[b] = cb + (w8 >> 7)
    return clamp(xs >> BUCKET_SHIFT, 0, 15)


@njit(cache=True, inline="always")
def update(NI, T, b, y):
    sm_update(NI.calibration, NI.bin[b], y, T.DT)
