"""The mixer's deterministic tables and the integer primitives on them (lpaq1's squash/stretch, the
bit-history state machine, adaptation rates, the 32-bit hash), plus the named constants the kernels use.

Built with Python integers and the ``decimal`` module, never binary floats, so they are the same integers
on every machine; ``table_digest`` (pinned by the tests, and part of ``MixerConfig.fingerprint``) hashes
them all. Every kernel receives them as one ``Tables`` argument.
"""

from __future__ import annotations

import decimal
import hashlib
import mmap
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

def zeroed(shape, dtype) -> np.ndarray:
    """A zero-filled array for a table that is touched sparsely (the hashed bit histories, the match model's
    index), in 4 KB pages that the OS zeroes on first touch. numpy asks for 2 MB pages above 4 MB, which the
    kernel zeroes whole on first touch: 100 KB of input touches a few bytes of most of the 168 MB of bit
    histories, and zeroing 2 MB pages for them took 0.3 s (cm alone, 1 stream: 100 KB in 0.88 s, now 0.56 s;
    1 MB 9% faster; 10 MB the same). Private, so that a forked process does not share it."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if n == 0 or not hasattr(mmap, "MAP_PRIVATE"):  # (Windows: numpy's own)
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE), dtype=dtype).reshape(shape)


PBITS = 16  # the coded probability p1 is an integer in [1, 2**16 - 1] out of 2**16
PONE = 1 << PBITS
SMAX = 4095  # the logistic ("stretch") domain is [-4095, 4095] in units of 1/256 nat


def _squash_table() -> np.ndarray:
    """squash[x + 4095] = round(2**16 / (1 + e**(-x/256))) clamped to [1, 2**16 - 1], x in [-4095, 4095].

    Computed in decimal arithmetic at 40 digits (correctly rounded exp, fully specified), so the
    integers are the same on every machine; ``test_tables_pinned`` pins their sha256.
    """
    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)
    out = np.empty(2 * SMAX + 1, dtype=np.int32)
    one = decimal.Decimal(1)
    for x in range(-SMAX, SMAX + 1):
        e = ctx.exp(ctx.divide(decimal.Decimal(-x), decimal.Decimal(256)))
        v = ctx.divide(decimal.Decimal(PONE), ctx.add(one, e))
        q = int(v.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
        out[x + SMAX] = min(max(q, 1), PONE - 1)
    return out


def _log2_table() -> np.ndarray:
    """lg[j] = round(log2(1 + j/4096) * 2**16), j in [0, 4096], in 40-digit decimal arithmetic."""
    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)
    ln2 = ctx.ln(decimal.Decimal(2))
    out = np.empty(4097, dtype=np.int32)
    for j in range(4097):
        v = ctx.divide(ctx.ln(ctx.add(decimal.Decimal(1), ctx.divide(decimal.Decimal(j), decimal.Decimal(4096)))), ln2)
        out[j] = int(ctx.multiply(v, decimal.Decimal(65536)).to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
    return out


# ln(2) * 2**24, rounded: converts a log2 difference with 16 fraction bits into 1/256 nat units
LN2_Q24 = 11629080


def _state_table():
    """The bit-history state machine: (next (S, 2) int32, n0 (S,), n1 (S,)) with S <= 256 states.

    A state stands for a pair of counts (n0, n1) of 0 and 1 bits seen in a context, and for small
    totals also the last bit. Allowed pairs: with x the larger and y the smaller count, x <= BOUND[y]
    (y <= 5). On bit b: n_b += 1; the opposite count n, if above 2, is discounted to 2 + (n - 2) // 2
    (old evidence fades); a pair outside the bounds is pulled back towards one with about the same
    ratio (the larger count scaled by (y-1)/y while the smaller loses one, or the larger capped).
    States are numbered by total count, so a larger number means more evidence (the hash tables use
    the state of a bucket's first node as its replacement priority). State 0 is "nothing seen".
    """
    bound = {0: 40, 1: 24, 2: 12, 3: 8, 4: 6, 5: 5}
    last_max = 8  # pairs with both counts > 0 and n0 + n1 <= last_max also remember the last bit

    def allowed(a, b):
        x, y = max(a, b), min(a, b)
        return y in bound and x <= bound[y]

    def tracked(a, b):
        return a > 0 and b > 0 and a + b <= last_max

    pairs = [(a, b) for a in range(41) for b in range(41) if allowed(a, b)]
    states = []
    for a, b in pairs:
        if tracked(a, b):
            states += [(a, b, 0), (a, b, 1)]
        else:
            states.append((a, b, -1))
    states.sort(key=lambda s: (s[0] + s[1], abs(s[0] - s[1]), s[0], s[2]))
    assert states[0] == (0, 0, -1) and len(states) <= 256
    index = {s: i for i, s in enumerate(states)}

    def fix(big, small):
        while not allowed(big, small):
            if small < 2:
                big -= 1
            else:
                big = (big * (small - 1) + small // 2) // small
                small -= 1
        return big, small

    nex = np.zeros((len(states), 2), dtype=np.int32)
    for i, (a, b, _) in enumerate(states):
        for bit in (0, 1):
            n = [a, b]
            n[bit] += 1
            o = n[1 - bit]
            if o > 2:
                n[1 - bit] = 2 + (o - 2) // 2
            if n[0] >= n[1]:
                n[0], n[1] = fix(n[0], n[1])
            else:
                n[1], n[0] = fix(n[1], n[0])
            last = bit if tracked(n[0], n[1]) else -1
            nex[i, bit] = index[(n[0], n[1], last)]
    n0 = np.array([s[0] for s in states], dtype=np.int32)
    n1 = np.array([s[1] for s in states], dtype=np.int32)
    last = np.array([s[2] for s in states], dtype=np.int32)
    return nex, n0, n1, last


def _log2_fix(n: np.ndarray) -> np.ndarray:
    """log2(n) with 16 fraction bits for integers n >= 1, from the mantissa table (integer only).

    With k = bit_length(n) - 1 and the top 13 bits m of n (m in [4096, 8192)), the result is
    k * 2**16 + LOG2[m - 4096] - 12 * 2**16 ... i.e. (k << 16) + LOG2[m - 4096].
    """
    n = np.asarray(n, dtype=np.int64)
    k = np.zeros_like(n)
    for bit in range(62, -1, -1):  # bit length without floats
        k = np.where((k == 0) & (n >> bit > 0), bit, k)
    m = np.where(k >= 12, n >> np.maximum(k - 12, 0), n << np.maximum(12 - k, 0))
    return (k << 16) + LOG2[m - 4096].astype(np.int64)


def _stretch_table() -> np.ndarray:
    """stretch[p] = ln(p / (2**16 - p)) in 1/256 nat, p in [1, 2**16), from the integer log2 (stretch[0] = -4095)."""
    p = np.arange(1, PONE, dtype=np.int64)
    d = _log2_fix(p) - _log2_fix(PONE - p)
    x = (d * LN2_Q24) >> 32
    out = np.empty(PONE, dtype=np.int32)
    out[0] = -SMAX
    out[1:] = np.clip(x, -SMAX, SMAX)
    return out


def _kept_path(name: str) -> Path:
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return Path(__file__).with_name("__pycache__") / f"tables-{name}-{source}.npz"


def _kept(name: str, build) -> np.ndarray:
    """``build()``, computed once per installation: the decimal tables cost a quarter second at every
    start-up, so the result is kept in ``__pycache__`` under this file's source hash (an edit rebuilds it)
    and checked against the digest stored beside it; where nothing can be written, it is built each time."""
    path = _kept_path(name)
    try:
        with np.load(path) as kept:
            table, digest = kept["table"], str(kept["digest"])
        if hashlib.sha256(table.tobytes()).hexdigest() == digest:
            return table
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # absent or damaged: build it
        pass
    table = build()
    try:
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.npz")
        np.savez(partial, table=table, digest=hashlib.sha256(table.tobytes()).hexdigest())
        os.replace(partial, path)  # atomic: a concurrent reader sees the whole file or none
    except OSError:
        pass
    return table


SQUASH = _kept("squash", _squash_table)
LOG2 = _kept("log2", _log2_table)
STRETCH = _stretch_table()
NEX, STATE_N0, STATE_N1, STATE_LAST = _state_table()
NUM_STATES = NEX.shape[0]


def _state_init_probs() -> np.ndarray:
    """Initial StateMap probability (22 bits) per state: (2 n1 + 1) / (2 (n0 + n1) + 2), nudged to the last bit."""
    n0, n1 = STATE_N0.astype(np.int64), STATE_N1.astype(np.int64)
    p = ((2 * n1 + 1) << 22) // (2 * (n0 + n1) + 2)
    p = np.where(STATE_LAST == 1, p + ((1 << 22) - p) // 8, p)
    p = np.where(STATE_LAST == 0, p - p // 8, p)
    return np.clip(p, 1 << 6, (1 << 22) - (1 << 6)).astype(np.int32)


STATE_INIT = _state_init_probs()


def table_digest() -> str:
    """sha256 over every built table: identical on every machine (pinned by the tests)."""
    h = hashlib.sha256()
    for t in (SQUASH, STRETCH, LOG2, NEX, STATE_INIT):
        h.update(np.ascontiguousarray(t).astype("<i4").tobytes())
    return h.hexdigest()


def _dt_table(n: int = 1024) -> np.ndarray:
    """Adaptation rate after n updates, out of 2**17: 2**18 // (2 n + 3), i.e. 1/(n + 1.5)."""
    return (np.int64(1 << 18) // (2 * np.arange(n, dtype=np.int64) + 3)).astype(np.int32)


DT = _dt_table()

# --------------------------------------------------------------------------------------------------
# Named constants of the arithmetic
# --------------------------------------------------------------------------------------------------

HALF = PONE // 2  # p1 of a stream that is not coded this step
LOGIT_OFFSET = SMAX + 1  # stretch + LOGIT_OFFSET lies in [1, 8191]: the index domain of interpolated bins
LOGIT_SPAN = 2 * LOGIT_OFFSET  # 8192
M32 = 0xFFFFFFFF
WEIGHT_SHIFT = 16  # mixer weights are 16.16 fixed point
WMAX = (1 << 24) - 1  # mixer weights stay within +-256.0, so int32 storage never wraps
ROUND24 = 1 << 23  # rounding term of the >> 24 in the weight updates

# kinds of hashed context (column 0 of a context spec (kind, mask4, mask8, local)); part of the format
CTX_BYTES = 0  # the bytes selected by mask4 over the last 4 bytes and mask8 over the 4 before them
CTX_WORD = 1  # hash of the current word's letters (case folded); when not in a word, the mask4 bytes
CTX_WORD2 = 2  # the current word's hash and the previous word's hash
CTX_RECORD = 3  # record model: the byte one record length above, the record length, the mask4 bytes
CTX_RECORD2 = 4  # the bytes one and two record lengths above, the record length, the mask4 bytes
CTX_RECORD3 = 5  # the bytes above-left, above and above-right, the record length, the mask4 bytes
CTX_INDIRECT1 = 6  # (revision 2) the mask4 bytes and the 2 bytes that followed the last 2 occurrences of c1
CTX_INDIRECT2 = 7  # (revision 2) the mask4 bytes and the byte that followed the last occurrence of c2 c1
CTX_COLUMN = 8  # (revision 2) the column (capped), the byte above it in the previous line, the mask4 bytes
CTX_COLUMN_WORD = 9  # (revision 2) the byte above, the one above-right, and the current word

# the contexts that select layer-1 weight sets: name -> (kind, rows)
SEL_C0, SEL_MATCH, SEL_C1, SEL_HITS, SEL_NEURAL, SEL_PIXELS = range(6)
SELECTORS = {"c0": (SEL_C0, 256), "match": (SEL_MATCH, 65), "c1": (SEL_C1, 256), "hits": (SEL_HITS, 128),
             "neural": (SEL_NEURAL, 128), "pixels": (SEL_PIXELS, 256)}  # pixels: revision 2's bitmap model


class Tables(NamedTuple):
    SQUASH: np.ndarray  # (8191,) int32: squash[x + SMAX], a 16-bit probability
    STRETCH: np.ndarray  # (65536,) int32: stretch[p] in [-SMAX, SMAX]
    LOG2: np.ndarray  # (4097,) int32: log2 mantissa table
    NEX: np.ndarray  # (states, 2) int32: the next bit-history state after a 0 or a 1
    DT: np.ndarray  # (1024,) int32: adaptation rate after n updates


TABLES = Tables(SQUASH, STRETCH, LOG2, NEX, DT)


@njit(cache=True, inline="always")
def h2(a, b):
    """32-bit hash of the low 32 bits of a and b (int64 arithmetic, no overflow: every product is < 2**63)."""
    x = (((a & M32) * 0x2F0B4AD3) & M32) ^ (((b & M32) * 0x6F4F2A49 + 0x1B873593) & M32)
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & M32
    x ^= x >> 12
    x = (x * 0x297A2D39) & M32
    x ^= x >> 15
    return x


@njit(cache=True, inline="always")
def clamp(x, lo, hi):
    return lo if x < lo else (hi if x > hi else x)


@njit(cache=True, inline="always")
def ilog2fix(n, LOG2):
    """log2(n) * 2**16 for 1 <= n < 2**40 (integer mantissa table)."""
    k = 0
    while (n >> (k + 1)) > 0:
        k += 1
    if k >= 12:
        m = n >> (k - 12)
    else:
        m = n << (12 - k)
    return (k << 16) + LOG2[m - 4096]


@njit(cache=True, inline="always")
def squash(T, x):
    """16-bit probability of logit x (clamped to the stretch domain)."""
    return np.int64(T.SQUASH[clamp(x, -SMAX, SMAX) + SMAX])
