"""The bit-history models (lpaq1's ``HashTable``, ``StateMap`` over ``nex`` states): order 0 as a direct
probability, orders 1 and 2 on direct tables, and the hashed contexts of ``MixerConfig.contexts``.

Predict: each model's slot for this bit (direct: (context, c0); hashed: its nibble's 16-byte bucket plus
the node of c0 in that nibble's binary tree) holds a bit-history state; the model's StateMap turns the
state into p, and the mixer gets stretch(p) and, with ``lin_shift``, (p - 1/2) >> lin_shift (both 0 for
a state never seen). Update: the StateMap learns the bit, the state moves along ``NEX``. At bits 0 and 4
each hashed context looks up its bucket (``find_bucket``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .statemap import AP_TO_P, StateMap, new_statemap, sm_p, sm_update
from .tables import (CTX_BYTES, CTX_COLUMN, CTX_COLUMN_WORD, CTX_INDIRECT1, CTX_INDIRECT2, CTX_RECORD, CTX_RECORD2,
                     CTX_RECORD3, CTX_WORD, CTX_WORD2, HALF, NUM_STATES, STATE_INIT, h2, zeroed)

DIRECT_MODELS = 2  # bit-history models on direct tables (orders 1 and 2), before the hashed contexts
ORDER2_BASE = 1 << 16  # the order-2 table follows the order-1 table (65536 states) in ``states``
DIRECT_STATES = ORDER2_BASE + (1 << 24)
BUCKET_BYTES = 16  # a checksum byte and the states of a nibble's 15 tree nodes
MAP_SLOTS = 256  # each model's StateMap has a slot per state
# hash salts: each kind of context hashes into its own family (``+ h``: and each context into its own)
SALT_WORD, SALT_NO_WORD, SALT_WORD2, SALT_RECORD, SALT_RECORD2, SALT_RECORD3 = 0x100, 0x200, 0x300, 0x400, 0x500, 0x600
SALT_INDIRECT1, SALT_INDIRECT2, SALT_COLUMN, SALT_COLUMN_WORD = 0x700, 0x800, 0x900, 0xA00
SALT_LOCAL = 0x10000  # a local context is hashed again with SALT_LOCAL + stream


class BitHistories(NamedTuple):
    states: np.ndarray  # (DIRECT_STATES + nh * buckets * 16,) uint8: every bit-history state
    spec: np.ndarray  # (nh, 4) int64: (kind, mask4, mask8, local) per hashed context
    base: np.ndarray  # (nh,) int64: where each hashed context's buckets start in ``states``
    nbmask: int  # buckets per hashed context - 1
    lin_shift: int  # > 0: a second input (p - 1/2) >> lin_shift per model
    ctx: np.ndarray  # (B, nh) int64: each hashed context's hash for this byte
    bucket: np.ndarray  # (B, nh) int64: the bucket of the current nibble
    slot: np.ndarray  # (B, nm) int64: where each model's state for this bit lives
    state: np.ndarray  # (B, nm) int64: the state each model predicted from
    word: np.ndarray  # (B,) int64: hash of the current word (0 outside a word)
    prev_word: np.ndarray  # (B,) int64: hash of the previous word
    order0: StateMap  # (256 slots): P(1 | c0)
    maps: StateMap  # (nm * 256 slots): each model's StateMap over its states


def mixer_inputs(cfg, neural: bool) -> list[int]:
    """This component's mixer inputs, as their initial weights: order 0, stretch(p) per model, and with
    ``lin_shift`` (p - 1/2) per model (starting at 0)."""
    w = cfg.nn_cm_w_init if neural else cfg.w_init
    nm = DIRECT_MODELS + len(cfg.contexts)
    return [w] + [w] * nm + ([0] * nm if cfg.lin_shift else [])


def new_bit_histories(cfg, num_streams: int) -> BitHistories:
    nh = len(cfg.contexts)
    nm = DIRECT_MODELS + nh
    nb = 1 << cfg.hash_bits
    maps = np.full(nm * MAP_SLOTS, HALF << AP_TO_P, dtype=np.int32)
    for m in range(nm):
        maps[m * MAP_SLOTS: m * MAP_SLOTS + NUM_STATES] = STATE_INIT
    B = num_streams
    return BitHistories(
        states=zeroed(DIRECT_STATES + nh * nb * BUCKET_BYTES, np.uint8),
        spec=np.array([list(c) for c in cfg.contexts], dtype=np.int64).reshape(nh, 4),
        base=np.array([DIRECT_STATES + h * nb * BUCKET_BYTES for h in range(nh)], dtype=np.int64),
        nbmask=nb - 1, lin_shift=int(cfg.lin_shift),
        ctx=np.zeros((B, nh), dtype=np.int64), bucket=np.zeros((B, nh), dtype=np.int64),
        slot=np.zeros((B, nm), dtype=np.int64), state=np.zeros((B, nm), dtype=np.int64),
        word=np.zeros(B, dtype=np.int64), prev_word=np.zeros(B, dtype=np.int64),
        order0=new_statemap(np.full(256, HALF << AP_TO_P), cfg.o0_limit), maps=new_statemap(maps, cfg.sm_limit))


@njit(cache=True)
def find_bucket(states, base, h, nbmask):
    """Index of the 16-byte bucket for hash h in the table at states[base:], lpaq style.

    Byte 0 of a bucket is an 8-bit checksum, bytes 1..15 the bit histories of the 15 nodes of a
    nibble's binary tree (byte 1, the first node, doubles as priority). Three neighbouring buckets
    are probed; on a miss the one with the lowest priority is cleared and claimed.
    """
    chk = (h >> 24) & 255
    hi = h & nbmask
    i = base + (hi << 4)
    if states[i] == chk:
        return i
    j = base + ((hi ^ 1) << 4)
    if states[j] == chk:
        return j
    l = base + ((hi ^ 2) << 4)
    if states[l] == chk:
        return l
    best = i
    if states[j + 1] < states[best + 1]:
        best = j
    if states[l + 1] < states[best + 1]:
        best = l
    for q in range(BUCKET_BYTES):
        states[best + q] = 0
    states[best] = chk
    return best


@njit(cache=True)
def byte_contexts(H, R, I, C, b, c4, c8):
    """At a byte boundary: stream b's hashed contexts (``R`` the record model, ``I`` the indirect model and
    ``C`` the column model, for their contexts) and their first nibble's buckets."""
    for h in range(H.spec.shape[0]):
        kind = H.spec[h, 0]
        m4 = H.spec[h, 1]
        if kind == CTX_BYTES:
            x = h2(h2(c4 & m4, c8 & H.spec[h, 2]), h + 1)
        elif kind == CTX_WORD:
            if H.word[b] != 0:
                x = h2(H.word[b], SALT_WORD + h)
            else:
                x = h2(c4 & m4, SALT_NO_WORD + h)
        elif kind == CTX_WORD2:
            x = h2(h2(H.word[b], H.prev_word[b]), SALT_WORD2 + h)
        elif kind == CTX_RECORD:
            x = h2(h2(R.above[b] | (R.length[b] << 8), c4 & m4), SALT_RECORD + h)
        elif kind == CTX_RECORD2:
            x = h2(h2(R.above[b] | (R.above2[b] << 8) | (R.length[b] << 16), c4 & m4), SALT_RECORD2 + h)
        elif kind == CTX_RECORD3:
            x = h2(h2(R.above[b] | (R.above_left[b] << 8) | (R.above_right[b] << 16), c4 & m4), SALT_RECORD3 + h)
        elif kind == CTX_INDIRECT1:
            x = h2(h2(c4 & m4, I.t1[c4 & 0xFF]), SALT_INDIRECT1 + h)
        elif kind == CTX_INDIRECT2:
            x = h2(h2(c4 & m4, I.t2[c4 & 0xFFFF] & 0xFF), SALT_INDIRECT2 + h)
        elif kind == CTX_COLUMN:
            x = h2(h2(C.column[b] | (C.above[b] << 8), c4 & m4), SALT_COLUMN + h)
        else:  # CTX_COLUMN_WORD
            x = h2(h2(C.above[b] | (C.above_right[b] << 8), H.word[b]), SALT_COLUMN_WORD + h)
        if H.spec[h, 3]:
            x = h2(x, SALT_LOCAL + b)
        H.ctx[b, h] = x
        H.bucket[b, h] = find_bucket(H.states, H.base[h], x, H.nbmask)


@njit(cache=True, inline="always")
def predict(H, T, k, b, c0, c4, x, x_first):
    """Stream b's inputs for bit k into x[b, x_first:]; returns how many models have seen their context."""
    states, slot, state, stretch = H.states, H.slot, H.state, T.STRETCH  # bound once: no reference counting per use
    nh = H.spec.shape[0]
    nm = DIRECT_MODELS + nh
    slot[b, 0] = ((c4 & 0xFF) << 8) | c0  # order 1
    slot[b, 1] = ORDER2_BASE + (((c4 & 0xFFFF) << 8) | c0)  # order 2
    if k < 4:
        node = c0
    else:
        node = (c0 & ((1 << (k - 4)) - 1)) | (1 << (k - 4))
    bucket = H.bucket
    for h in range(nh):
        slot[b, DIRECT_MODELS + h] = bucket[b, h] + node
    x[b, x_first] = stretch[sm_p(H.order0, c0) >> AP_TO_P]
    maps = H.maps.p
    lin_shift = H.lin_shift
    hits = 0
    for m in range(nm):
        st = np.int64(states[slot[b, m]])
        state[b, m] = st
        if st != 0:
            hits += 1
        pq = np.int64(maps[m * MAP_SLOTS + st]) >> AP_TO_P
        x[b, x_first + 1 + m] = stretch[pq] if st != 0 else 0  # a context never seen says nothing
        if lin_shift > 0:
            x[b, x_first + 1 + nm + m] = (pq - HALF) >> lin_shift if st != 0 else 0
    return hits


@njit(cache=True, inline="always")
def update(H, T, b, y, c0):
    """Learn bit y of stream b: each StateMap at the state it predicted from, each state along NEX."""
    states, slot, state, maps, nex, dt = H.states, H.slot, H.state, H.maps, T.NEX, T.DT
    sm_update(H.order0, c0, y, dt)
    for m in range(slot.shape[1]):
        sm_update(maps, m * MAP_SLOTS + state[b, m], y, dt)
        s = slot[b, m]
        states[s] = nex[states[s], y]


@njit(cache=True, inline="always")
def next_nibble(H, b, c0):
    """After bit 3: the hashed contexts move to the bucket of the second nibble."""
    for h in range(H.spec.shape[0]):
        H.bucket[b, h] = find_bucket(H.states, H.base[h], h2(H.ctx[b, h], c0), H.nbmask)


@njit(cache=True)
def end_byte(H, b, c):
    """The word hashes after byte c (letters, case folded)."""
    if (c >= 65 and c <= 90) or (c >= 97 and c <= 122):
        H.word[b] = h2(H.word[b], c | 32)
    elif H.word[b] != 0:
        H.prev_word[b] = H.word[b]
        H.word[b] = 0
