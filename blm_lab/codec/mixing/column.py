"""Column contexts (paq8's word model's column part, revision 2): text laid out in lines (tables, code,
verse, fixed-width data) repeats the byte above. Per stream: where the current and the previous line
started (in its own steps), so the byte in the previous line at the next byte's column (``above``) and the
one after it (``above_right``), which ``CTX_COLUMN`` and ``CTX_COLUMN_WORD`` hash (``contexts``)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

NEWLINE = 10
MAX_COLUMN = 255  # columns beyond this share a context


class ColumnModel(NamedTuple):
    line_start: np.ndarray  # (B,) int64: the step at which the current line started
    prev_start: np.ndarray  # (B,) int64: ... and the previous line
    column: np.ndarray  # (B,) int64: the next byte's column, capped at MAX_COLUMN
    above: np.ndarray  # (B,) int64: the byte above the next one (0: the previous line is shorter)
    above_right: np.ndarray  # (B,) int64: the byte after it


def new_column_model(num_streams: int) -> ColumnModel:
    return ColumnModel(*[np.zeros(num_streams, dtype=np.int64) for _ in range(5)])


@njit(cache=True, inline="always")
def end_byte(C, b, c, step, buf):
    """Byte c of stream b was coded at ``step`` (byte t of stream b is buf[t * B + b])."""
    B = C.line_start.shape[0]
    nxt = step + 1
    if c == NEWLINE:
        C.prev_start[b] = C.line_start[b]
        C.line_start[b] = nxt
    col = nxt - C.line_start[b]
    C.column[b] = min(col, MAX_COLUMN)
    pos = C.prev_start[b] + col
    C.above[b] = buf[pos * B + b] if pos < C.line_start[b] else 0
    C.above_right[b] = buf[(pos + 1) * B + b] if pos + 1 < C.line_start[b] else 0
