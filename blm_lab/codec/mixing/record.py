"""The record model (paq8's ``RecordModel``): the record length of tables, spreadsheets and fixed-width data,
and the bytes one and two records above, which the record contexts hash.

A distance seen 4 times in a row between occurrences of the same byte value is a candidate record length;
a candidate that wins 16 votes becomes the length. The detector runs per stream and over all streams
together (row B); a stream without its own record length uses the global one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

VOTES_TO_WIN = 15  # a candidate with more votes than this becomes the record length


class RecordModel(NamedTuple):
    length: np.ndarray  # (B + 1,) int64: the record length (0 = none); row B over all streams
    cand1: np.ndarray  # (B + 1,) int64: the first candidate length ...
    count1: np.ndarray  # ... and its votes
    cand2: np.ndarray  # (B + 1,) int64: the second candidate ...
    count2: np.ndarray  # ... and its votes
    last_seen: np.ndarray  # (B, 256, 4) int64: the last 4 steps at which each byte value was coded
    above: np.ndarray  # (B,) int64: the byte one record length above the next one
    above2: np.ndarray  # two above
    above_left: np.ndarray  # one above, one to the left
    above_right: np.ndarray  # one above, one to the right


def new_record_model(num_streams: int) -> RecordModel:
    B = num_streams
    detector = [np.zeros(B + 1, dtype=np.int64) for _ in range(5)]
    last_seen = np.full((B, 256, 4), -(1 << 40), dtype=np.int64)
    last_seen -= np.arange(4, dtype=np.int64)  # distinct: no spurious record distance at the start
    return RecordModel(*detector, last_seen, *[np.zeros(B, dtype=np.int64) for _ in range(4)])


@njit(cache=True)
def vote(R, i, r):
    """Detector row i saw distance r repeat."""
    if r == R.cand1[i]:
        R.count1[i] += 1
    elif r == R.cand2[i]:
        R.count2[i] += 1
    elif R.count1[i] > R.count2[i]:
        R.cand2[i] = r
        R.count2[i] = 1
    else:
        R.cand1[i] = r
        R.count1[i] = 1
    if R.count1[i] > VOTES_TO_WIN and R.length[i] != R.cand1[i]:
        R.length[i] = R.cand1[i]
        R.count1[i] = 0
        R.count2[i] = 0
    if R.count2[i] > VOTES_TO_WIN and R.length[i] != R.cand2[i]:
        R.length[i] = R.cand2[i]
        R.count1[i] = 0
        R.count2[i] = 0


@njit(cache=True)
def end_byte(R, b, c, step, buf):
    """Byte c of stream b was coded at ``step``: vote, then the bytes above the next one."""
    B = R.above.shape[0]
    seen = R.last_seen[b, c]
    r = step - seen[0]
    if r > 1 and seen[0] - seen[1] == r and seen[1] - seen[2] == r and seen[2] - seen[3] == r:
        vote(R, b, r)
        vote(R, B, r)
    seen[3] = seen[2]
    seen[2] = seen[1]
    seen[1] = seen[0]
    seen[0] = step
    rl = R.length[b] if R.length[b] > 0 else R.length[B]
    nxt = step + 1  # the step of the byte to be predicted next
    R.above[b] = buf[(nxt - rl) * B + b] if rl > 0 and nxt - rl >= 0 else 0
    R.above2[b] = buf[(nxt - 2 * rl) * B + b] if rl > 0 and nxt - 2 * rl >= 0 else 0
    R.above_left[b] = buf[(nxt - rl - 1) * B + b] if rl > 0 and nxt - rl - 1 >= 0 else 0
    R.above_right[b] = buf[(nxt - rl + 1) * B + b] if rl > 1 and nxt - rl + 1 >= 0 else 0
