"""An exact, batched integer range coder: many independent streams advance one symbol per call.

The model gives, for every stream, a distribution over V symbols; ``quantize`` turns it into integer
frequencies that total exactly ``2**precision``, the same integers on every machine. ``BatchEncoder``
and ``BatchDecoder`` then code one symbol per active stream per call, with vector operations over the
whole batch (no Python loop per stream), so an autoregressive model can drive B streams in lockstep.

The coder follows constriction's default range coder: 64-bit state, 32-bit words, ``precision <= 32``.

Encoder invariants (asserted in code)
-------------------------------------
Per stream the encoder holds ``low`` (uint64) and ``range`` (uint64) and the words emitted so far,
``w_1 .. w_n`` (uint32, big-endian). Read the words as one integer ``W``; then the exact lower end of
the current interval is ``L = W * 2**64 + low`` and the interval is ``[L, L + range)``, in units of
``2**-(64 + 32 n)``. Every code point in that interval decodes to the symbols encoded so far.

* After every call, ``2**32 <= range <= 2**64 - 1`` for every stream.
* Encoding a symbol with cumulative frequency ``cum`` and frequency ``freq`` (``freq >= 1``,
  ``cum + freq <= 2**precision``) shrinks the interval to ``[L + scale*cum, L + scale*(cum + freq))``
  with ``scale = range >> precision``: a sub-interval, because ``scale * 2**precision <= range``.
* ``low + scale*cum`` may exceed ``2**64``. The uint64 add then wraps, and the carry is added into
  ``W`` (the last emitted word, rippling back through words that were ``0xFFFFFFFF``). ``W`` itself
  never overflows: the first interval is ``[0, 2**64 - 1)`` and intervals only shrink, so ``L`` stays
  below ``2**(64 + 32 n)``.
* The new range is at least ``scale >= 2**(32 - precision) >= 1``. When it drops below ``2**32`` the
  top word of ``low`` is emitted and ``low`` and ``range`` are shifted left by 32 bits: one shift is
  always enough, so at most one word is emitted per symbol.

Flush: ``finish`` picks the code point in ``[L, L + range)`` with the most trailing zero bits. Because
``range >= 2**32`` it has at least 32 of them, so at most 4 more bytes are needed; trailing zero bytes
are dropped (the decoder reads missing bytes as zeros). A stream with no symbols is ``b""``.

Decoder invariants
------------------
Per stream the decoder holds ``range`` (identical to the encoder's after the same symbols) and
``value = C - L`` where ``C`` is the first ``64 + 32 n`` bits of the code (zero padded) and ``L`` the
encoder's lower end at that point. Because the code point lies in ``[L, L + range)``,
``0 <= value < range`` always; and because it lies in ``[L, L + scale * 2**precision)``,
``target = value // scale < 2**precision`` for a valid stream (checked: a failure means a corrupt
stream or frequencies that differ from the encoder's). The decoded symbol is the ``s`` with
``cdf[s] <= target < cdf[s + 1]``; ``value -= scale * cdf[s]`` and ``range = scale * freq[s]`` mirror
the encoder, and a renormalisation shifts the next code word into ``value``.

Binary coding
-------------
``encode_binary`` / ``decode_binary`` code one bit per active stream with the two frequencies
``[2**precision - p1, p1]``: the same arithmetic as ``encode`` / ``decode`` on that row (so the same
words), as one compiled loop over the streams. A context mixer makes 8 such calls per byte, and at
tens of streams the vector version's fixed cost per call (about 30 numpy operations) was most of the
mixer's time.

Cumulative frequencies
----------------------
A full ``np.cumsum`` over (B, V) each step would dominate the run time (numpy's cumsum is a slow
scalar loop). The encoder needs only ``cdf[s]``: one ``np.add.reduceat`` pass sums each row's prefix.
The decoder searches in two levels: rows are cut into blocks of ``k`` symbols (about sqrt(V)); block
sums are one contiguous reduction, and only the (B, V/k) block sums and the (B, k) block that holds
each target are cumulatively summed and searched.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from ..errors import StreamError

PRECISION = 24  # quantized frequencies total exactly 2**PRECISION
WORD_BITS = 32  # the coder emits and reads 32-bit words

_U64 = np.uint64
_WORD_SHIFT = _U64(WORD_BITS)
_RANGE_MIN = _U64(1 << WORD_BITS)  # renormalise when range drops below this
_RANGE_START = _U64((1 << 64) - 1)
_U32_ONE = np.uint32(1)
_TWO_POW_52 = float(2**52)
_TWO_POW_52_BITS = int(np.array(_TWO_POW_52).view(np.int64))  # 0x4330000000000000


def _check_precision(precision: int) -> int:
    if not isinstance(precision, (int, np.integer)) or not 1 <= precision <= WORD_BITS:
        raise ValueError(f"precision must be an integer in [1, {WORD_BITS}], got {precision!r}")
    return int(precision)


# --------------------------------------------------------------------------------------------------
# Quantisation
# --------------------------------------------------------------------------------------------------


def _row_sums(p: np.ndarray) -> np.ndarray:
    """Row sums (..., 1) of ``p`` (..., V) as a fixed tree of elementwise float64 adds.

    np.sum's summation order is an implementation detail of the numpy build; elementwise adds are
    correctly rounded IEEE operations, so this tree gives the same bits on every machine and version.
    Rows are zero padded (exact) to a power-of-two width, then neighbours are added pairwise over the
    flattened array (pairs never straddle two rows), which keeps every add one long strided loop.
    """
    width = p.shape[-1]
    padded_width = 1 << (width - 1).bit_length()
    if padded_width != width:
        padded = np.zeros(p.shape[:-1] + (padded_width,), dtype=np.float64)
        padded[..., :width] = p
        p = padded
    sums = p.reshape(-1)  # (rows * padded_width,)
    while padded_width > 1:
        sums = sums[0::2] + sums[1::2]
        padded_width //= 2
    return sums.reshape(p.shape[:-1] + (1,))


def quantize(probs, precision: int = PRECISION) -> np.ndarray:
    """Integer frequencies (..., V) int64 for probabilities (..., V): each >= 1, each row totals 2**precision.

    ``probs`` is a numpy array or torch tensor of floats; rows should sum to about 1 (they are
    renormalised, so float32 softmax output is fine). The result is deterministic: the same floats
    give the same integers on any machine, which the decoder relies on. Recipe, all in float64 (exact
    for float32 input): clip to [0, 1]; divide by the row sum; ``f = floor(p * (2**precision - V)) + 1``;
    the leftover ``2**precision - sum(f)`` goes to the (first) most probable entry.
    """
    precision = _check_precision(precision)
    if hasattr(probs, "detach"):  # a torch tensor; torch is not imported here
        probs = probs.detach().cpu().double().numpy()  # float64 is exact for float32, float16 and bfloat16
    p = np.array(probs, dtype=np.float64, order="C")  # a private copy, safe to modify in place
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(f"probs must have a last axis of symbols, got shape {p.shape}")
    num_symbols = p.shape[-1]
    total = 1 << precision
    if num_symbols > total:
        raise ValueError(
            f"{num_symbols} symbols cannot each get a frequency >= 1 out of 2**{precision}; raise precision"
        )
    if p.size == 0:  # no rows
        return np.zeros(p.shape, dtype=np.int64)
    lowest, highest = p.min(), p.max()  # NaN propagates into both
    if not (np.isfinite(lowest) and np.isfinite(highest)):
        raise ValueError("probs contain NaN or inf; check the model output (e.g. logits overflowed)")
    if lowest < 0.0 or highest > 1.0:  # softmax output never needs it; skip the pass when it can
        np.clip(p, 0.0, 1.0, out=p)
    row_sums = _row_sums(p)  # (..., 1)
    if (row_sums <= 0.0).any():
        raise ValueError("a row of probs is all zeros (after clipping negatives); every row needs mass")
    p /= row_sums
    top = np.argmax(p, axis=-1)[..., None]  # (..., 1): the first most probable entry takes the leftover
    p *= float(total - num_symbols)
    np.floor(p, out=p)  # integers in [0, 2**precision - V], exact in float64
    # float64 -> int64 without numpy's slow cast: for an integer 0 <= x < 2**52 the bits of 2**52 + x
    # are the bits of 2**52 plus x
    p += _TWO_POW_52
    freqs = p.view(np.int64)
    freqs -= _TWO_POW_52_BITS - 1  # ... and the + 1 of the recipe
    # Every other entry is >= 1 and each row now totals 2**precision; only the top entry can go wrong.
    top_freqs = np.take_along_axis(freqs, top, axis=-1) + (total - freqs.sum(axis=-1, keepdims=True))
    assert (top_freqs >= 1).all(), "quantize: rounding pushed the leftover below zero"
    np.put_along_axis(freqs, top, top_freqs, axis=-1)
    return freqs


def ideal_bits(freqs, symbols, precision: int = PRECISION) -> float:
    """Exact code length in bits of ``symbols`` (...) under the quantized distributions ``freqs`` (..., V).

    This is ``-sum log2(freq[symbol] / 2**precision)``, what an ideal coder would spend; the range
    coder's output is within a small overhead of it.
    """
    precision = _check_precision(precision)
    freqs = np.asarray(freqs)
    symbols = np.asarray(symbols, dtype=np.int64)
    if freqs.shape[:-1] != symbols.shape:
        raise ValueError(f"freqs {freqs.shape} need shape symbols.shape + (V,), symbols are {symbols.shape}")
    chosen = np.take_along_axis(freqs, symbols[..., None], axis=-1)[..., 0].astype(np.float64)
    return float(np.sum(precision - np.log2(chosen)))


# --------------------------------------------------------------------------------------------------
# Cumulative-frequency lookups (see the module docstring)
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _row_bounds(num_rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (n,) of the first and last entry of each row of a (num_rows, width) array, read-only."""
    first = np.arange(num_rows) * width
    last = first + (width - 1)
    first.flags.writeable = last.flags.writeable = False
    return first, last


def _lookup_symbols(freqs: np.ndarray, symbols: np.ndarray):
    """cum[s], freq[s] and the row totals, each (n,) int64, for ``symbols`` (n,) in ``freqs`` (n, V).

    One pass over ``freqs``: ``np.add.reduceat`` at the offsets [row start, row start + s] sums each
    row's prefix before s and its remainder from s on.
    """
    starts, _ = _row_bounds(*freqs.shape)
    flat = freqs.reshape(-1)  # (n*V,)
    at_symbol = starts + symbols
    bounds = np.stack([starts, at_symbol], axis=1).reshape(-1)  # (2n,): row start, symbol, row start, ...
    partial = np.add.reduceat(flat, bounds).reshape(-1, 2)  # (n, 2): [sum before s, sum from s on]
    # reduceat gives flat[i] for an empty range [i, i), i.e. when s == 0: that prefix is 0
    cum = np.where(symbols == 0, 0, partial[:, 0])
    return cum, flat.take(at_symbol), cum + partial[:, 1]


@functools.lru_cache(maxsize=None)
def _block_size(num_symbols: int) -> int:
    """Symbols per block for the decoder's search: about sqrt(V), a power of two, at most V."""
    return min(num_symbols, 1 << max(2, (math.ceil(math.log2(max(num_symbols, 2))) + 1) // 2))


def _search_rows(values: np.ndarray, targets: np.ndarray):
    """For each row r of ``values`` (n, m) >= 0, the index j with prefix[j] <= targets[r] < prefix[j + 1].

    Returns (flat index r * m + j, j, prefix[j], prefix[m]), each (n,) int64, where prefix[j] sums the
    row's first j entries. One cumulative sum over the flattened array is non-decreasing across rows
    too, so a single searchsorted serves every row; j is clipped to [0, m) for rows whose targets are
    out of range (the caller rejects those rows by their totals).
    """
    first, last = _row_bounds(*values.shape)
    flat = values.reshape(-1)  # (n*m,)
    ends = np.cumsum(flat)  # (n*m,) inclusive, running across rows
    starts = ends - flat  # (n*m,) exclusive
    row_offset = starts.take(first)  # (n,): the sum of all earlier rows
    found = np.searchsorted(ends, row_offset + targets, side="right")
    found = np.minimum(np.maximum(found, first), last)
    return found, found - first, starts.take(found) - row_offset, ends.take(last) - row_offset


def _find_symbols(freqs: np.ndarray, targets: np.ndarray):
    """The symbols s with cdf[s] <= target < cdf[s + 1], and cum[s], freq[s], row totals; all (n,) int64.

    Two levels, so no step touches a (n, V) cumsum: block sums (n, nb) find the target's block, then
    that block's k frequencies (n, k) find the symbol.
    """
    n, num_symbols = freqs.shape
    k = _block_size(num_symbols)
    num_blocks = -(-num_symbols // k)
    if num_blocks * k != num_symbols:  # zero frequencies past V are never found: targets stay below the total
        padded = np.zeros((n, num_blocks * k), dtype=np.int64)
        padded[:, :num_symbols] = freqs
        freqs = padded
    blocks = freqs.reshape(n, num_blocks, k)  # (n, nb, k)
    block_sums = np.einsum("ijk->ij", blocks)  # (n, nb)
    found_block, block, block_start, totals = _search_rows(block_sums, targets)
    segment = blocks.reshape(n * num_blocks, k).take(found_block, axis=0)  # (n, k): the block of each target
    found, offset, segment_start, _ = _search_rows(segment, targets - block_start)
    return block * k + offset, block_start + segment_start, segment.reshape(-1).take(found), totals


def _check_freqs(freqs, num_streams: int) -> np.ndarray:
    freqs = np.asarray(freqs)
    if freqs.ndim != 2 or freqs.shape[0] != num_streams:
        raise ValueError(f"freqs must have shape ({num_streams}, V) from quantize(), got {freqs.shape}")
    if freqs.dtype != np.int64:
        if not np.issubdtype(freqs.dtype, np.integer):
            raise ValueError(f"freqs must be integers from quantize(), got dtype {freqs.dtype}")
        freqs = freqs.astype(np.int64)
    return freqs


def _selection(active, num_streams: int, all_rows: np.ndarray):
    """(selector for per-stream arrays, global stream indices) of the active streams; None if none are active."""
    if active is None:
        return slice(None), all_rows
    active = np.asarray(active, dtype=bool)
    if active.shape != (num_streams,):
        raise ValueError(f"active must be a bool mask of shape ({num_streams},), got {active.shape}")
    streams = np.flatnonzero(active)
    if streams.size == 0:
        return None
    if streams.size == num_streams:
        return slice(None), all_rows
    return streams, streams


def _bad_rows_message(totals: np.ndarray, cum: np.ndarray, freq: np.ndarray, precision: int) -> str | None:
    """Why the coded rows are unusable, or None: each must total 2**precision, with the coded symbol's
    interval [cum, cum + freq) non-empty and inside [0, 2**precision). Checked on (n,) values only."""
    total = 1 << precision
    if totals.min() != total or totals.max() != total:
        return f"a row of freqs does not total 2**{precision}; build freqs with quantize(probs, precision={precision})"
    if freq.min() < 1 or cum.min() < 0 or (cum + freq).max() > total:
        return "freqs has entries < 1; build freqs with quantize(), which gives every symbol a frequency >= 1"
    return None


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------


def _propagate_carry(words: np.ndarray, num_words: np.ndarray, streams: np.ndarray) -> None:
    """Add 1 to the multi-word integer W (big-endian uint32 words) of each stream in ``streams``.

    ``words`` is (B, capacity) uint32 and ``num_words`` (B,) the words used per stream; ``streams``
    holds distinct stream indices. The last word of every stream is incremented at once; the rare
    streams whose word wrapped to 0 (it was 0xFFFFFFFF, probability about 2**-32) ripple the carry
    further back in a Python loop. W never overflows (see the module docstring).
    """
    if streams.size == 0:
        return
    last = num_words[streams] - 1
    assert (last >= 0).all(), "carry with no emitted word: the interval left [0, 2**64)"
    words[streams, last] += _U32_ONE  # uint32 wraps to 0 on overflow
    for stream in streams[words[streams, last] == 0]:
        position = int(num_words[stream]) - 2
        while True:
            assert position >= 0, "carry out of the first word: the interval left [0, 1)"
            word = (int(words[stream, position]) + 1) & 0xFFFFFFFF
            words[stream, position] = word
            if word != 0:
                break
            position -= 1


# --------------------------------------------------------------------------------------------------
# Binary coding: one compiled loop over the streams (the arithmetic of encode / decode, for V = 2)
# --------------------------------------------------------------------------------------------------

_BAD_P1, _BAD_CARRY, _BAD_TARGET = 1, 2, 3


@njit(cache=True)
def _bad_binary(p1, bits, active, precision, check_bits):
    """The first active stream whose p1 is outside [1, 2**precision - 1] (or bit outside {0, 1}), or -1."""
    one = np.int64(1) << precision
    for i in range(p1.shape[0]):
        if active[i] and (p1[i] < 1 or p1[i] > one - 1 or (check_bits and (bits[i] < 0 or bits[i] > 1))):
            return i
    return -1


@njit(cache=True, inline="always")
def _binary_interval(bit, p1, one):
    """(cum, freq) of ``bit`` in the row [one - p1, p1], as uint64."""
    if bit:
        return np.uint64(one - p1), np.uint64(p1)
    return np.uint64(0), np.uint64(one - p1)


@njit(cache=True)
def encode_binary_kernel(low, range_, words, num_words, p1, bits, active, precision):
    """``BatchEncoder.encode`` of bit ``bits[i]`` with freqs [one - p1, p1] for every active stream i:
    returns (0, -1), or (problem, stream) with nothing changed for a bad p1 or bit."""
    bad = _bad_binary(p1, bits, active, precision, True)
    if bad >= 0:
        return _BAD_P1, bad
    one, shift = np.int64(1) << precision, np.uint64(precision)
    for i in range(low.shape[0]):
        if not active[i]:
            continue
        cum, freq = _binary_interval(bits[i], p1[i], one)
        scale = range_[i] >> shift
        new_low = low[i] + scale * cum  # wraps modulo 2**64 on a carry
        r = scale * freq
        if new_low < low[i]:  # the carry into W (``_propagate_carry``)
            position = num_words[i] - 1
            while True:
                if position < 0:
                    return _BAD_CARRY, i
                words[i, position] += np.uint32(1)
                if words[i, position] != 0:
                    break
                position -= 1
        position = num_words[i]
        words[i, position] = np.uint32(new_low >> _WORD_SHIFT)
        if r < _RANGE_MIN:
            num_words[i] = position + 1
            r = r << _WORD_SHIFT
            new_low = new_low << _WORD_SHIFT
        low[i] = new_low
        range_[i] = r
    return 0, -1


@njit(cache=True)
def decode_binary_kernel(value, range_, position, words, last_column, p1, active, precision, out):
    """``BatchDecoder.decode`` with freqs [one - p1, p1] for every active stream: the bits into ``out``
    (0 for inactive streams); returns (0, -1), or (problem, stream) with nothing changed."""
    bad = _bad_binary(p1, p1, active, precision, False)
    if bad >= 0:
        return _BAD_P1, bad
    one, shift = np.int64(1) << precision, np.uint64(precision)
    for i in range(value.shape[0]):
        if active[i] and value[i] // (range_[i] >> shift) >= np.uint64(one):
            return _BAD_TARGET, i
    for i in range(value.shape[0]):
        if not active[i]:
            out[i] = 0
            continue
        scale = range_[i] >> shift
        target = value[i] // scale
        out[i] = 1 if target >= np.uint64(one - p1[i]) else 0
        cum, freq = _binary_interval(out[i], p1[i], one)
        v = value[i] - scale * cum
        r = scale * freq  # v < r: cum <= target < cum + freq
        if r < _RANGE_MIN:
            v = (v << _WORD_SHIFT) | np.uint64(words[i, position[i]])
            r = r << _WORD_SHIFT
            position[i] = min(position[i] + 1, last_column)
        value[i] = v
        range_[i] = r
    return 0, -1


def _binary_args(p1, active, num_streams: int, all_active: np.ndarray, precision: int):
    p1 = np.ascontiguousarray(p1, dtype=np.int64)
    if p1.shape != (num_streams,):
        raise ValueError(f"p1 must have shape ({num_streams},), got {p1.shape}")
    if active is None:
        active = all_active
    active = np.ascontiguousarray(active, dtype=np.bool_)
    if active.shape != (num_streams,):
        raise ValueError(f"active must be a bool mask of shape ({num_streams},), got {active.shape}")
    return p1, active


def raise_binary_problem(problem: int, stream: int, p1: np.ndarray, precision: int):
    if problem == _BAD_P1:
        raise ValueError(f"stream {stream}: p1 = {int(p1[stream])} must lie in [1, 2**{precision} - 1] (and each "
                         "bit in {0, 1}); both symbols need a frequency >= 1")
    if problem == _BAD_TARGET:
        raise StreamError(
            "impossible code point: a damaged stream, more symbols decoded than were encoded, "
            "or freqs/active that differ from what the encoder was given"
        )
    assert problem != _BAD_CARRY, "carry with no emitted word: the interval left [0, 2**64)"


class BatchEncoder:
    """Encode ``num_streams`` independent streams, one symbol per active stream per ``encode`` call.

    Per stream: ``low`` and ``range`` (uint64) and a growable row of emitted 32-bit words. See the
    module docstring for the invariants; ``2**32 <= range`` is asserted after every call.
    """

    def __init__(self, num_streams: int, precision: int = PRECISION):
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        self.num_streams = int(num_streams)
        self.precision = _check_precision(precision)
        self._shift = _U64(self.precision)
        self._low = np.zeros(self.num_streams, dtype=_U64)
        self._range = np.full(self.num_streams, _RANGE_START, dtype=_U64)
        self._words = np.zeros((self.num_streams, 64), dtype=np.uint32)  # (B, capacity), grows by doubling
        self._num_words = np.zeros(self.num_streams, dtype=np.int64)
        self._all_rows = np.arange(self.num_streams)
        self._all_active = np.ones(self.num_streams, dtype=np.bool_)
        self._finished = False

    def encode(self, freqs: np.ndarray, symbols: np.ndarray, active: np.ndarray | None = None) -> None:
        """Advance every active stream by one symbol.

        ``freqs`` (B, V) int64 rows from ``quantize``; ``symbols`` (B,) in [0, V); ``active`` (B,) bool,
        default all. Inactive streams are untouched and their rows of ``freqs`` and ``symbols`` ignored.
        """
        if self._finished:
            raise ValueError("this encoder is finished; start a new BatchEncoder for more symbols")
        freqs = _check_freqs(freqs, self.num_streams)
        symbols = np.asarray(symbols)
        if symbols.shape != (self.num_streams,) or not np.issubdtype(symbols.dtype, np.integer):
            raise ValueError(f"symbols must be integers of shape ({self.num_streams},), got {symbols.shape}")
        selection = _selection(active, self.num_streams, self._all_rows)
        if selection is None:
            return
        sel, streams = selection
        freqs, symbols = freqs[sel], symbols[sel].astype(np.int64, copy=False)  # (n, V), (n,)
        num_symbols = freqs.shape[1]
        if symbols.min() < 0 or symbols.max() >= num_symbols:
            raise ValueError(f"symbols must lie in [0, {num_symbols}) for the active streams")
        cum, freq, totals = _lookup_symbols(freqs, symbols)
        problem = _bad_rows_message(totals, cum, freq, self.precision)
        if problem:
            raise ValueError(problem)

        low, range_ = self._low[sel], self._range[sel]
        scale = range_ >> self._shift
        new_low = low + scale * cum.astype(_U64)  # wraps modulo 2**64 on a carry
        range_ = scale * freq.astype(_U64)  # >= scale >= 1
        carry = new_low < low
        if carry.any():
            _propagate_carry(self._words, self._num_words, streams[carry])
        emit = range_ < _RANGE_MIN
        # Every stream writes its top word into its next free slot; only the emitting ones keep it
        # (a slot past num_words is never read, and the next write overwrites it).
        position = self._num_words[sel]
        if position.max() >= self._words.shape[1]:
            self._grow()
        self._words[streams, position] = (new_low >> _WORD_SHIFT).astype(np.uint32)
        self._num_words[sel] = position + emit
        range_ = np.where(emit, range_ << _WORD_SHIFT, range_)
        assert range_.min() >= _RANGE_MIN, "range fell below 2**32 after renormalisation"
        self._low[sel] = np.where(emit, new_low << _WORD_SHIFT, new_low)
        self._range[sel] = range_

    def encode_binary(self, p1: np.ndarray, bits: np.ndarray, active: np.ndarray | None = None) -> None:
        """``encode`` of ``bits`` (B,) with the rows [2**precision - p1, p1], p1 (B,) int in
        [1, 2**precision - 1]: the same words as ``encode`` would write, in one compiled loop."""
        if self._finished:
            raise ValueError("this encoder is finished; start a new BatchEncoder for more symbols")
        p1, active = _binary_args(p1, active, self.num_streams, self._all_active, self.precision)
        bits = np.ascontiguousarray(bits, dtype=np.int64)
        if bits.shape != (self.num_streams,):
            raise ValueError(f"bits must have shape ({self.num_streams},), got {bits.shape}")
        if self._num_words.max() >= self._words.shape[1]:
            self._grow()
        problem, stream = encode_binary_kernel(self._low, self._range, self._words, self._num_words, p1, bits, active,
                                         self.precision)
        if problem:
            raise_binary_problem(problem, stream, p1, self.precision)

    def reserve(self, num_words: int) -> None:
        """Room for ``num_words`` more words in every stream (a compiled loop that calls ``encode_binary_kernel``
        itself codes at most one word per binary symbol, and cannot grow the buffer)."""
        while self._num_words.max() + num_words >= self._words.shape[1]:
            self._grow()

    def binary_state(self):
        """The arrays ``encode_binary_kernel`` advances: (low, range, words, num_words), for a compiled loop
        that codes bits itself; call ``reserve`` first."""
        if self._finished:
            raise ValueError("this encoder is finished; start a new BatchEncoder for more symbols")
        return self._low, self._range, self._words, self._num_words

    def code_length_bits(self) -> np.ndarray:
        """(B,) float64: the exact code length so far, ``32 * words + 64 - log2(range)`` per stream.

        This is what the current intervals cost; ``finish`` adds the flush (under 32 bits a stream).
        """
        return WORD_BITS * self._num_words + 64.0 - np.log2(self._range.astype(np.float64))

    def _grow(self) -> None:
        """Double the capacity of the word buffer."""
        capacity = self._words.shape[1]
        grown = np.zeros((self.num_streams, 2 * capacity), dtype=np.uint32)
        grown[:, :capacity] = self._words
        self._words = grown

    def finish(self) -> list[bytes]:
        """Flush and return one ``bytes`` per stream (``b""`` for a stream with no symbols).

        Each stream ends with the code point of its final interval that has the most trailing zero
        bits (at least 32, since range >= 2**32); its trailing zero bytes are dropped, and the decoder
        reads them back as zeros.
        """
        if self._finished:
            raise ValueError("finish() was already called on this encoder")
        self._finished = True
        streams = []
        for stream in range(self.num_streams):
            low, range_ = int(self._low[stream]), int(self._range[stream])
            high = low + range_ - 1  # the interval is [low, high], possibly past 2**64 (a carry)
            if high >> 64:
                point = 1 << 64
            elif low == 0:
                point = 0
            else:  # clear every bit below the highest bit where low - 1 and high differ
                zeros = ((low - 1) ^ high).bit_length() - 1
                point = high >> zeros << zeros
            assert low <= point <= high and (point & 0xFFFFFFFF) == 0, "flush point outside the interval"
            if point >> 64:
                _propagate_carry(self._words, self._num_words, np.array([stream]))
                point = 0
            body = self._words[stream, : self._num_words[stream]].astype(">u4").tobytes()
            streams.append((body + point.to_bytes(8, "big")).rstrip(b"\0"))
        return streams


# --------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------


class BatchDecoder:
    """Decode the streams written by ``BatchEncoder``, one symbol per active stream per ``decode`` call.

    Give ``decode`` the same ``freqs`` and the same ``active`` masks, in the same order, as the
    encoder got. Per stream: ``value = code - low`` and ``range`` (uint64), with ``value < range``,
    and a read position into the zero-padded words. Reading past the end gives zero words.
    """

    def __init__(self, streams: list[bytes], precision: int = PRECISION):
        if len(streams) < 1:
            raise ValueError("need at least one stream to decode")
        self.num_streams = len(streams)
        self.precision = _check_precision(precision)
        self._shift = _U64(self.precision)
        lengths = [-(-len(data) // 4) for data in streams]
        # (B, capacity); the last column stays zero and read positions stop there
        self._words = np.zeros((self.num_streams, max(lengths) + 1), dtype=np.uint32)
        for stream, data in enumerate(streams):
            data = bytes(data)
            data += b"\0" * (-len(data) % 4)
            self._words[stream, : len(data) // 4] = np.frombuffer(data, dtype=">u4")
        self._last_column = self._words.shape[1] - 1
        self._all_rows = np.arange(self.num_streams)
        self._all_active = np.ones(self.num_streams, dtype=np.bool_)
        first = self._words[:, 0].astype(_U64)
        second = self._words[:, min(1, self._last_column)].astype(_U64)
        self._value = (first << _WORD_SHIFT) | second
        self._range = np.full(self.num_streams, _RANGE_START, dtype=_U64)
        self._position = np.full(self.num_streams, min(2, self._last_column), dtype=np.int64)

    def decode(self, freqs: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Decode one symbol per active stream: (B,) int64, 0 for inactive streams."""
        freqs = _check_freqs(freqs, self.num_streams)
        selection = _selection(active, self.num_streams, self._all_rows)
        if selection is None:
            return np.zeros(self.num_streams, dtype=np.int64)
        sel, streams = selection
        freqs = freqs[sel]  # (n, V)
        value, range_ = self._value[sel], self._range[sel]
        scale = range_ >> self._shift
        target = value // scale
        if target.max() >= _U64(1 << self.precision):
            raise StreamError(
                "impossible code point: a damaged stream, more symbols decoded than were encoded, "
                "or freqs/active that differ from what the encoder was given"
            )
        decoded, cum, freq, totals = _find_symbols(freqs, target.astype(np.int64))
        if (totals != (1 << self.precision)).any():
            raise ValueError(f"a row of freqs does not total 2**{self.precision}; build freqs with quantize()")
        value = value - scale * cum.astype(_U64)
        range_ = scale * freq.astype(_U64)
        # value < range holds whenever every frequency is >= 1 (cum <= target < cum + freq)
        if not (value < range_).all():
            raise ValueError("freqs has entries < 1; build freqs with quantize(), which gives every symbol >= 1")
        refill = range_ < _RANGE_MIN
        position = self._position[sel]
        next_word = self._words[streams, position].astype(_U64)  # (n,): read by the refilling streams only
        self._value[sel] = np.where(refill, (value << _WORD_SHIFT) | next_word, value)
        self._range[sel] = np.where(refill, range_ << _WORD_SHIFT, range_)
        self._position[sel] = np.minimum(position + refill, self._last_column)
        if isinstance(sel, slice):
            return decoded
        symbols = np.zeros(self.num_streams, dtype=np.int64)
        symbols[sel] = decoded
        return symbols


    def binary_state(self):
        """The arrays ``decode_binary_kernel`` advances: (value, range, position, words, last_column), for a
        compiled loop that decodes bits itself."""
        return self._value, self._range, self._position, self._words, self._last_column

    def decode_binary(self, p1: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """``decode`` with the rows [2**precision - p1, p1]: the bits (B,) int64, 0 for inactive streams."""
        p1, active = _binary_args(p1, active, self.num_streams, self._all_active, self.precision)
        bits = np.zeros(self.num_streams, dtype=np.int64)
        problem, stream = decode_binary_kernel(self._value, self._range, self._position, self._words, self._last_column,
                                         p1, active, self.precision, bits)
        if problem:
            raise_binary_problem(problem, stream, p1, self.precision)
        return bits


# --------------------------------------------------------------------------------------------------
# One stream
# --------------------------------------------------------------------------------------------------


def encode_symbols(freqs_seq: np.ndarray, symbols, precision: int = PRECISION) -> bytes:
    """Encode one stream: ``symbols`` (T,) under ``freqs_seq`` (T, V) from ``quantize``."""
    freqs_seq = np.asarray(freqs_seq)
    symbols = np.asarray(symbols, dtype=np.int64)
    if freqs_seq.ndim != 2 or freqs_seq.shape[0] != symbols.shape[0]:
        raise ValueError(f"freqs_seq must be (T, V) with T = len(symbols) = {symbols.shape[0]}, got {freqs_seq.shape}")
    encoder = BatchEncoder(1, precision)
    for step in range(symbols.shape[0]):
        encoder.encode(freqs_seq[step : step + 1], symbols[step : step + 1])
    return encoder.finish()[0]


def decode_symbols(data: bytes, freqs_seq: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Decode one stream of ``len(freqs_seq)`` symbols (T,) int64 written by ``encode_symbols``."""
    freqs_seq = np.asarray(freqs_seq)
    decoder = BatchDecoder([data], precision)
    decoded = [decoder.decode(freqs_seq[step : step + 1])[0] for step in range(freqs_seq.shape[0])]
    return np.array(decoded, dtype=np.int64)
