"""The match models (lpaq1's ``MatchModel``): the longest earlier occurrence of the last ``match_min`` bytes
predicts the byte that followed it.

The history buffer holds every coded byte, byte t of stream b at index t*B + b, so a match can lie in
any segment's known prefix; it continues in the same source segment. A hash of the last ``match_min``
bytes finds a candidate, verified backwards (at least ``match_min`` bytes). The second model hashes with
the stream id, so it only finds matches in the stream's own segment. While the predicted byte agrees with
the bits so far, its expected bit enters through a StateMap indexed by (length bucket, expected bit);
otherwise the input is 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .statemap import AP_TO_P, StateMap, new_statemap, sm_p, sm_update
from .tables import HALF, h2, zeroed

MAP_SLOTS = 64  # per match model: 32 length buckets x expected bit
LOCAL_SALT = 0x777  # the local match model hashes its context with LOCAL_SALT + stream


class MatchModel(NamedTuple):
    table: np.ndarray  # (models, 2**match_bits) int64: 1 + the history index after a context, 0 = none
    mask: int
    min_len: int
    max_len: int
    ptr: np.ndarray  # (B, models) int64: history index of the predicted byte
    length: np.ndarray  # (B, models) int64: current match length, 0 = no match
    byte: np.ndarray  # (B, models) int64: the predicted byte, -1 = none
    slot: np.ndarray  # (B, models) int64: the StateMap slot this bit predicted from, -1 = none
    maps: StateMap  # (models * 64 slots)


def mixer_inputs(cfg, neural: bool) -> list[int]:
    """One input per match model (its expected bit's stretch(p))."""
    return [cfg.nn_cm_w_init if neural else cfg.w_init] * (2 if cfg.match_local else 1)


def new_match_model(cfg, num_streams: int) -> MatchModel:
    nmm = 2 if cfg.match_local else 1
    B = num_streams
    return MatchModel(table=zeroed((nmm, 1 << cfg.match_bits), np.int64), mask=(1 << cfg.match_bits) - 1,
                      min_len=int(cfg.match_min), max_len=int(cfg.match_max),
                      ptr=np.zeros((B, nmm), dtype=np.int64), length=np.zeros((B, nmm), dtype=np.int64),
                      byte=np.full((B, nmm), -1, dtype=np.int64), slot=np.full((B, nmm), -1, dtype=np.int64),
                      maps=new_statemap(np.full(nmm * MAP_SLOTS, HALF << AP_TO_P), cfg.mm_limit))


@njit(cache=True, inline="always")
def length_bucket(n):
    """Match length -> 0..31: exact below 16, then one bucket per power of two."""
    if n < 16:
        return n
    k = 0
    while (n >> (k + 1)) > 0:
        k += 1
    r = 12 + k  # n = 16 -> 16
    return 31 if r > 31 else r


@njit(cache=True, inline="always")
def predict(M, T, k, b, c0, x, x_first):
    """Stream b's inputs for bit k into x[b, x_first:]; returns the match state that selects a weight set:
    0 for no agreeing match, else 1 + (length bucket, expected bit) of the longest."""
    mstate = 0
    best = 0
    for q in range(M.length.shape[1]):
        mb = M.byte[b, q]
        if mb >= 0 and ((mb + 256) >> (8 - k)) == c0:
            ebit = (mb >> (7 - k)) & 1
            ctx = length_bucket(M.length[b, q]) * 2 + ebit
            M.slot[b, q] = q * MAP_SLOTS + ctx
            x[b, x_first + q] = T.STRETCH[sm_p(M.maps, q * MAP_SLOTS + ctx) >> AP_TO_P]
            if M.length[b, q] > best:
                best = M.length[b, q]
                mstate = 1 + ctx
        else:
            M.slot[b, q] = -1
            x[b, x_first + q] = 0
    return mstate


@njit(cache=True, inline="always")
def update(M, T, b, y):
    for q in range(M.slot.shape[1]):
        if M.slot[b, q] >= 0:
            sm_update(M.maps, M.slot[b, q], y, T.DT)


@njit(cache=True, inline="always")
def _context_hash(M, c4, c8):
    m4 = (1 << (8 * min(M.min_len, 4))) - 1
    m8 = (1 << (8 * max(M.min_len - 4, 0))) - 1
    return h2(c4 & m4, c8 & m8)


@njit(cache=True)
def advance(M, b, c, pos, c4, c8, nbytes):
    """Byte c of stream b was coded at history index pos, after context (c4, c8) and nbytes bytes: extend
    or forget each match, and record pos as following that context."""
    hm = _context_hash(M, c4, c8)
    for q in range(M.length.shape[1]):
        if M.length[b, q] > 0:
            if M.byte[b, q] == c:
                M.length[b, q] = min(M.length[b, q] + 1, M.max_len)
                M.ptr[b, q] += M.ptr.shape[0]
            else:
                M.length[b, q] = 0
        if nbytes >= M.min_len:
            hq = hm if q == 0 else h2(hm, LOCAL_SALT + b)
            M.table[q, hq & M.mask] = pos + 1


@njit(cache=True)
def find(M, b, pos, c4, c8, nbytes, buf):
    """With the context (c4, c8) now ending at pos: a model without a match looks one up (verified
    backwards, at least min_len bytes); then each model's predicted byte."""
    B = M.ptr.shape[0]
    if nbytes >= M.min_len:
        hm = _context_hash(M, c4, c8)
        for q in range(M.length.shape[1]):
            if M.length[b, q] == 0:
                hq = hm if q == 0 else h2(hm, LOCAL_SALT + b)
                cand = M.table[q, hq & M.mask] - 1
                if cand >= 0:
                    ln = 0
                    while (ln < M.max_len and ln < nbytes and cand - B * (ln + 1) >= 0
                           and buf[cand - B * (ln + 1)] == buf[pos - B * ln]):
                        ln += 1
                    if ln >= M.min_len:
                        M.length[b, q] = ln
                        M.ptr[b, q] = cand
    for q in range(M.length.shape[1]):
        M.byte[b, q] = buf[M.ptr[b, q]] if M.length[b, q] > 0 else -1
