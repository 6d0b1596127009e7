"""Indirect contexts (paq8's ``indirectModel``, revision 2): what followed the last occurrences of this
context. ``t1[c1]`` holds the 2 bytes that followed the last 2 occurrences of byte c1, ``t2[c2 c1]`` the
byte that followed the last occurrence of those 2 bytes; the hashed contexts ``CTX_INDIRECT1`` and
``CTX_INDIRECT2`` (``contexts.byte_contexts``) combine them with the bytes themselves. The tables are
shared by the B streams and updated at the end of each byte step in stream order."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit


class IndirectModel(NamedTuple):
    t1: np.ndarray  # (256,) int64: the 2 bytes that followed the last 2 occurrences of each byte
    t2: np.ndarray  # (65536,) int64: the bytes that followed the last occurrences of each pair of bytes


def new_indirect_model() -> IndirectModel:
    return IndirectModel(t1=np.zeros(256, dtype=np.int64), t2=np.zeros(1 << 16, dtype=np.int64))


@njit(cache=True, inline="always")
def end_byte(I, c, c4):
    """Byte c followed the context c4 (the last 4 bytes before it)."""
    c1, c2 = c4 & 0xFF, c4 & 0xFFFF
    I.t1[c1] = ((I.t1[c1] << 8) | c) & 0xFFFF
    I.t2[c2] = ((I.t2[c2] << 8) | c) & 0xFFFF
