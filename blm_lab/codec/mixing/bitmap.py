"""The bilevel-image model (after paq8px's ``Image1BitModel``, revision 2): in a 1-bit-per-pixel image whose
rows are one record long (ptt5: 216 bytes), each pixel is best predicted from the pixels around it, bit by
bit, not byte by byte. Per bit k the pixel's neighbours are taken from the record model's bytes above
(above-left, above, above-right: the row above; above2: two rows above) and from the current row's bits
so far (c1 and c0); three windows of them index three direct StateMaps, each a mixer input. Without a record
length the windows hold only the current row's pixels, and the mixer learns what they are worth."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .statemap import AP_TO_P, StateMap, new_statemap, sm_p, sm_update
from .tables import HALF

CONTEXTS = 3
SLOTS = 1 << 16  # per context


class BitmapModel(NamedTuple):
    maps: StateMap  # (CONTEXTS * SLOTS): P(1 | the pixel window)
    slot: np.ndarray  # (B, CONTEXTS) int64: the slot each context predicted from


def mixer_inputs(cfg, neural: bool) -> list[int]:
    """stretch(p) of each window (none unless ``cfg.bitmap``)."""
    return [cfg.nn_cm_w_init if neural else cfg.w_init] * CONTEXTS if cfg.bitmap else []


def new_bitmap_model(cfg, num_streams: int) -> BitmapModel:
    size = CONTEXTS * SLOTS if cfg.bitmap else 0
    return BitmapModel(maps=new_statemap(np.full(size, HALF << AP_TO_P), cfg.sm_limit),
                       slot=np.zeros((num_streams, CONTEXTS), dtype=np.int64))


@njit(cache=True, inline="always")
def predict(G, R, T, k, b, c0, c1, x, x_first):
    """Stream b's inputs for bit k (the pixel at bit 7 - k of its byte) into x[b, x_first:]; returns the
    window of the 3 pixels above and the 2 to the left (0..31), which can select a mixer weight set."""
    row1 = (R.above_left[b] << 16) | (R.above[b] << 8) | R.above_right[b]  # the pixel above is bit 15 - k
    row2 = R.above2[b] << 8  # two rows above: the pixel is bit 15 - k
    left = ((c1 << k) | (c0 ^ (1 << k))) & 0xFF  # the current row's last 8 pixels
    up5 = (row1 >> (13 - k)) & 31  # above-left 2 .. above-right 2
    up3 = (row1 >> (14 - k)) & 7
    up2 = (row2 >> (14 - k)) & 7
    G.slot[b, 0] = (up5 | ((left & 15) << 5) | (up2 << 9)) & (SLOTS - 1)
    G.slot[b, 1] = SLOTS + ((up3 | (left << 3) | (((row1 >> (10 - k)) & 31) << 11)) & (SLOTS - 1))
    G.slot[b, 2] = 2 * SLOTS + ((up5 | (((row2 >> (13 - k)) & 31) << 5) | ((left & 63) << 10)) & (SLOTS - 1))
    for j in range(CONTEXTS):
        x[b, x_first + j] = T.STRETCH[sm_p(G.maps, G.slot[b, j]) >> AP_TO_P]
    return up3 | ((left & 3) << 3)


@njit(cache=True, inline="always")
def update(G, T, b, y):
    for j in range(CONTEXTS):
        sm_update(G.maps, G.slot[b, j], y, T.DT)
