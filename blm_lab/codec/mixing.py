"""Context mixing (lpaq1 / paq8 style) for B lock-step byte streams, with an optional neural input.

``ContextMixer(num_streams, MixerConfig(), neural)`` predicts every byte of B streams (the B segments
of a file) one bit at a time, MSB first, and ``code_step`` codes one byte of every active stream per
call with the project's range coder as a 2-symbol distribution ``[[2**16 - p1, p1]]``
(``BatchEncoder(B, precision=16).encode_binary``): 8 coder calls per byte step, all streams at once.
``codec.neural`` runs it in its lock-step loop, with the model's integer frequencies as the neural
input (or none: the pure context-mixing compressor).

The model
---------
Byte contexts are computed once per byte step per stream from its own previous bytes (c4 = the last
4 bytes, c8 = the 4 before them) and hashed (``_h2``, 32-bit, integer multiply/xor-shift); c0 is the
partial byte with a leading 1 (1..255). All tables are shared by the B streams.

* Order 0: a direct adaptive probability per c0 (256 entries).
* Order 1 and order 2: direct tables of bit-history states indexed by (c1, c0) (64 KiB) and
  (c2, c1, c0) (16 MiB): no hashing, no collisions.
* Hashed contexts (``MixerConfig.contexts``; default 9): orders 3, 4, 5, 6; the current word
  (letters, case folded; outside a word, the previous byte); the current and previous word; order 2
  hashed with the stream id (*local*: statistics of this segment only); and two record contexts, the
  byte one record length above plus the previous byte (shared), and the bytes one and two record
  lengths above (local). Each context has 2**hash_bits buckets of 16 bytes (lpaq1 ``HashTable<16>``):
  a checksum byte and the bit-history states of the 15 nodes of one nibble's binary tree. At bits 0
  and 4 each stream looks up its bucket (hash of the context, and of the context and the first
  nibble); three neighbouring buckets are probed and, on a miss, the one whose first state (its
  priority) is lowest is cleared and claimed.
* Why local contexts: the shared tables mix B places of the file that are coded at the same time.
  A context that is locally deterministic (a row number in a spreadsheet) looks random when 252
  streams interleave their updates; the local variants keep each segment's own recent history.
* Bit histories: a state byte per context and node (``_state_table``: counts (n0, n1), plus the
  last bit while n0 + n1 <= 8, 194 states; the opposite count is discounted above 2). Each model maps
  its state through its own StateMap (adaptive probability per state, 22 bits, rate 1/(n + 1.5) with
  n capped at ``sm_limit``) to p; the mixer inputs are stretch(p) and (p - 1/2) >> 4, both 0 for a
  context never seen (state 0).
* Match models: the longest earlier occurrence of the last ``match_min`` bytes of this stream's
  context, found through a hash table of positions and verified backwards (at least ``match_min``
  bytes), predicts its following byte. The history buffer holds every decoded byte, byte t of stream b
  at index t*B + b, so a match can be in any segment's known prefix; it continues in the same source
  segment. A second, local match model only looks in the stream's own segment. While the predicted
  byte agrees with the bits so far, the expected bit enters through a StateMap indexed by (match
  length bucket, expected bit); otherwise the input is 0.
* Record length: a paq8-style detector (a distance repeated 4 times in a row by the same byte value,
  a candidate winning 16 times) runs per stream and over all streams together; a stream without its
  own record length uses the global one.
* Neural input: from the integer frequencies ``f`` (B, 256) of a byte model, for prefix c0 of bit k,
  S1 = sum of f over the bytes under the 1-branch and S0 under the 0-branch (prefix sums of the
  integer frequencies, exact); its logit ln(S1/S0) comes from an integer log2 (13-bit mantissa
  table), in 1/256 nat, clamped to +-16 nat (p up to 1 - 1e-7). The mixer gets it raw and through a
  calibration (33 interpolated bins per bit position, count-based rate, initially the identity), whose
  weight starts at 0.5 while every adaptive input starts at 0.125 and says nothing until its context
  has been seen: at the start the neural model dominates, and where it is wrong (binaries, markup)
  the calibration and the mixer learn within a few hundred bytes to discount it.
* Mixer (paq8 two-layer): N inputs (bias, order 0, 11 bit-history models x 2, 2 match models, and
  raw + calibrated neural). K weight sets are selected by small contexts: c0; match state (length
  bucket and expected bit of the longest match); c1; the number of models whose context was seen, per
  bit position; and with a neural input, its confidence bucket per bit position. Each gives
  d_j = clamp(sum w_i x_i >> 16); a second layer (weights per bit position and neural bucket) mixes
  the d_j, and squash gives p. Weights are 16.16 fixed point; after each bit
  w_i += (x_i * err * lr + 2**23) >> 24 with err = (bit << 16) - p_j (the gradient of the code
  length), lr = lr1 + lr1_boost * T / (T + n) for a weight set updated n times (a table).
* APM/SSE: two interpolating APMs (33 bins over the stretch domain) refine the mixer's p, with
  contexts c0 and (c0, c1); final p1 = (6 p_mix + 4 apm0 + 6 apm1) / 16, clamped to [1, 2**16 - 1].

Numeric rules (identical results on every machine)
--------------------------------------------------
Everything that affects p1 is integer arithmetic on int64 scalars inside numba kernels (no float
appears in any kernel: ``test_kernels_are_integer_only`` checks every inferred type), on integer
tables: probabilities are 16 bits (p1, squash) or 22 bits (adaptive probabilities, APM bins); the
logistic domain is [-4095, 4095] in 1/256 nat. Right shifts of negative numbers are arithmetic
(floor); products stay below 2**63 (hash inputs are masked to 32 bits, weights clamped to +-256.0).
The tables are built deterministically: squash(x) = round(2**16 / (1 + e**(-x/256))) and
log2(1 + j/4096) in 40-digit ``decimal`` arithmetic (specified, correctly rounded), stretch from the
integer log2, the state machine and rates by integer rules; ``table_digest`` is pinned in the tests.
No kernel uses threads or parallel reductions, and numpy is only used for integer array copies.

Lock-step symmetry
------------------
At each bit, ``_predict`` computes p1 for every stream from the state before the bit; ``code_bits``
codes (or decodes) that bit of all streams; ``_update`` then applies every stream's updates in
stream order 0..B-1 (two streams in the same context both predicted from the old state; their
updates apply in turn). Bucket lookups happen at nibble boundaries, after all updates of the
previous bit, in stream order; the end of a byte step first stores every stream's byte, then advances
each stream's contexts and match models in stream order. Everything any step reads is known to the
decoder at that point, and the decoder makes the identical calls, so both sides hold identical state
(``test_encoder_decoder_p1_identical`` compares every p1 of both sides). Streams outside the active
mask are skipped entirely.

Memory (default config): bit histories 16.1 MiB direct + 9 x 16 MiB hashed, match tables 2 x 8 MiB,
APMs 8.3 MiB, plus the history buffer (n bytes) and 8 KiB per stream: about 185 MiB. Tables are
allocated lazily (zero pages), so small inputs touch little of it.
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from .coder import BatchDecoder, decode_binary_kernel, encode_binary_kernel, raise_binary_problem

# ==================================================================================================
# Deterministic tables (built with Python integers and the decimal module, never binary floats)
# ==================================================================================================

PBITS = 16  # the coded probability p1 is an integer in [1, 2**16 - 1] out of 2**16
PONE = 1 << PBITS
SMAX = 4095  # the logistic ("stretch") domain is [-4095, 4095] in units of 1/256 nat
_SQ_OFF = SMAX


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


SQUASH = _squash_table()
LOG2 = _log2_table()
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

# ==================================================================================================
# Configuration (part of the file format: the decoder must use the same one)
# ==================================================================================================

# kinds of hashed context (column 0 of a context spec (kind, mask4, mask8, local))
CTX_BYTES = 0  # the bytes selected by mask4 over the last 4 bytes and mask8 over the 4 before them
CTX_WORD = 1  # hash of the current word's letters (case folded); when not in a word, the mask4 bytes
CTX_WORD2 = 2  # the current word's hash and the previous word's hash
CTX_RECORD = 3  # record model: the byte one record length above, the record length, the mask4 bytes
CTX_RECORD2 = 4  # the bytes one and two record lengths above, the record length, the mask4 bytes
CTX_RECORD3 = 5  # the bytes above-left, above and above-right, the record length, the mask4 bytes


def order_ctx(n: int, local: bool = False) -> tuple[int, int, int, int]:
    """The context spec of order n (n in 1..8): the last n bytes; ``local``: hashed with the stream id."""
    m4 = (1 << (8 * min(n, 4))) - 1
    m8 = (1 << (8 * max(n - 4, 0))) - 1
    return (CTX_BYTES, m4, m8, int(local))


DEFAULT_CONTEXTS = (
    order_ctx(3), order_ctx(4), order_ctx(5), order_ctx(6), (CTX_WORD, 0xFF, 0, 0), (CTX_WORD2, 0, 0, 0),
    order_ctx(2, True), (CTX_RECORD2, 0, 0, 1), (CTX_RECORD, 0xFF, 0, 0),
)


@dataclass(frozen=True)
class MixerConfig:
    """Everything that shapes the model; the compressed format depends on every field."""

    hash_bits: int = 20  # each hashed context has 2**hash_bits buckets of 16 bytes
    contexts: tuple = DEFAULT_CONTEXTS
    match_min: int = 6  # the match models hash the last match_min bytes
    match_local: bool = True  # a second match model that only looks in the stream's own segment
    match_bits: int = 20  # match-model hash tables: 2**match_bits positions each
    match_max: int = 65535
    sm_limit: int = 1023  # StateMap adaptation: rate 1/(n + 1.5), n capped here
    o0_limit: int = 255  # direct order-0 probabilities
    mm_limit: int = 1023
    lr1: int = 112  # layer-1 mixer learning rate: dw = x * err * lr1 >> 24 (x, err fixed point)
    lr2: int = 48  # layer-2 mixer learning rate
    lr1_boost: int = 336  # extra layer-1 rate at the start of each weight set: + lr1_boost * T / (T + updates)
    lr1_boost_t: int = 256
    w_init: int = 8192  # initial layer-1 weight of each adaptive input (65536 = 1.0)
    nn_w_init: int = 32768  # initial weight of the calibrated neural input
    nn_raw_w_init: int = 0  # initial weight of the raw neural input
    nn_cm_w_init: int = 8192  # initial weight of each adaptive input when a neural input is present
    nn_limit: int = 255  # calibration of the neural input: rate 1/(n + 1.5), n capped here
    selectors: tuple = ("c0", "match", "c1", "hits")  # layer-1 weight sets (+ "neural" with a neural input)
    lin_shift: int = 4  # > 0: each bit-history model also gives (p - 1/2) >> lin_shift as a second input
    apm_rate: int = 6  # APM bins move 1/2**apm_rate of the way to the coded bit
    apm_shift: int = 8  # APM bins are 2**apm_shift stretch units apart: 8192 / 2**apm_shift + 1 bins
    final_w: tuple = (6, 4, 6)  # final p = (w0 mixer + w1 apm(c0) + w2 apm(c0, c1)) / 16

    @classmethod
    def fast(cls) -> "MixerConfig":
        """Fewer models for speed: 6 hashed contexts, one input per model, 3 weight sets (about 1.5% larger)."""
        return cls(contexts=(order_ctx(3), order_ctx(4), order_ctx(6), (CTX_WORD, 0xFF, 0, 0), order_ctx(2, True),
                             (CTX_RECORD, 0xFF, 0, 0)), lin_shift=0, selectors=("c0", "match", "hits"))

    def fingerprint(self) -> bytes:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob + table_digest().encode()).digest()[:4]


# ==================================================================================================
# Kernels (numba, integers only; every array of state is passed in explicitly)
# ==================================================================================================

M32 = 0xFFFFFFFF
WMAX = (1 << 24) - 1  # mixer weights stay within +-256.0 (16 fraction bits), so int32 storage never wraps

# per-stream scalar state: columns of S (B, NS) int64
(C0, C4, C8, WH, WP, PMIX, NBYTES, NNBIN, RLEN, _RL1, _RC1, _RL2, _RC2, ABOVE, ABOVE2, ABOVEL, ABOVER, W2ROW, NS) = range(19)

# parameter vector P (int64)
(P_NBMASK, P_MMMASK, P_MINLEN, P_MAXLEN, P_SMLIM, P_O0LIM, P_MMLIM, P_LR1, P_LR2, P_APMRATE, P_NEURAL,
 P_FW0, P_FW1, P_FW2, P_APMSH, P_NH, P_O0OFF, P_SMOFF, P_MMOFF, P_NNOFF, P_NNLIM, P_LINSH, P_LRB, P_LRBT, P_NP) = range(25)

# layer-1 weight-set selectors: name -> (kind, rows)
SELECTORS = {"c0": (0, 256), "match": (1, 65), "c1": (2, 256), "hits": (3, 128), "neural": (4, 128)}


@njit(cache=True, inline="always")
def _h2(a, b):
    """32-bit hash of the low 32 bits of a and b (int64 arithmetic, no overflow: every product is < 2**63)."""
    x = (((a & M32) * 0x2F0B4AD3) & M32) ^ (((b & M32) * 0x6F4F2A49 + 0x1B873593) & M32)
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & M32
    x ^= x >> 12
    x = (x * 0x297A2D39) & M32
    x ^= x >> 15
    return x


@njit(cache=True, inline="always")
def _ilog2fix(n, LOG2):
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
def _clamp(x, lo, hi):
    return lo if x < lo else (hi if x > hi else x)


@njit(cache=True, inline="always")
def _ap_update(APROB, ACNT, i, y, limit, DT):
    """Adaptive probability (22 bits): p += (y - p) / (n + 1.5), n = updates so far capped at limit."""
    n = ACNT[i]
    p = np.int64(APROB[i])
    p += (((y << 22) - p) * DT[n]) >> 17
    APROB[i] = p
    if n < limit:
        ACNT[i] = n + 1


@njit(cache=True, inline="always")
def _dot(w, x, n):
    s = 0
    for i in range(n):
        s += np.int64(w[i]) * x[i]
    return s


@njit(cache=True, inline="always")
def _train(w, x, n, e):
    """w += x * e / 2**24, rounded (e = error * learning rate), kept within +-WMAX."""
    for i in range(n):
        w[i] = min(max(w[i] + ((x[i] * e + (1 << 23)) >> 24), -WMAX), WMAX)


@njit(cache=True)
def _bucket(STATES, base, h, nbmask):
    """Index of the 16-byte bucket for hash h in the table at STATES[base:], lpaq style.

    Byte 0 of a bucket is an 8-bit checksum, bytes 1..15 the bit histories of the 15 nodes of a
    nibble's binary tree (byte 1, the first node, doubles as priority). Three neighbouring buckets
    are probed; on a miss the one with the lowest priority is cleared and claimed.
    """
    chk = (h >> 24) & 255
    hi = h & nbmask
    i = base + (hi << 4)
    if STATES[i] == chk:
        return i
    j = base + ((hi ^ 1) << 4)
    if STATES[j] == chk:
        return j
    l = base + ((hi ^ 2) << 4)
    if STATES[l] == chk:
        return l
    best = i
    if STATES[j + 1] < STATES[best + 1]:
        best = j
    if STATES[l + 1] < STATES[best + 1]:
        best = l
    for q in range(16):
        STATES[best + q] = 0
    STATES[best] = chk
    return best


@njit(cache=True)
def _cum_freqs(freqs, cum):
    """cum[b, i] = sum of freqs[b, :i] (int64), for the neural input's branch sums."""
    B = freqs.shape[0]
    for b in range(B):
        s = 0
        cum[b, 0] = 0
        for i in range(256):
            s += freqs[b, i]
            cum[b, i + 1] = s


@njit(cache=True, inline="always")
def _len_bucket(n):
    """Match length -> 0..31: exact below 16, then one bucket per power of two."""
    if n < 16:
        return n
    k = 0
    while (n >> (k + 1)) > 0:
        k += 1
    r = 12 + k  # n = 16 -> 16
    return 31 if r > 31 else r


@njit(cache=True)
def _contexts(b, S, CK, CTX, BKT, STATES, P, HBASE):
    """Byte-boundary context hashes and nibble-0 bucket lookups for stream b."""
    c4 = S[b, C4]
    c8 = S[b, C8]
    nh = CK.shape[0]
    for h in range(nh):
        kind = CK[h, 0]
        if kind == 0:
            x = _h2(_h2(c4 & CK[h, 1], c8 & CK[h, 2]), h + 1)
        elif kind == 1:
            if S[b, WH] != 0:
                x = _h2(S[b, WH], 0x100 + h)
            else:
                x = _h2(c4 & CK[h, 1], 0x200 + h)
        elif kind == 2:
            x = _h2(_h2(S[b, WH], S[b, WP]), 0x300 + h)
        elif kind == 3:
            x = _h2(_h2(S[b, ABOVE] | (S[b, RLEN] << 8), c4 & CK[h, 1]), 0x400 + h)
        elif kind == 4:
            x = _h2(_h2(S[b, ABOVE] | (S[b, ABOVE2] << 8) | (S[b, RLEN] << 16), c4 & CK[h, 1]), 0x500 + h)
        else:
            x = _h2(_h2(S[b, ABOVE] | (S[b, ABOVEL] << 8) | (S[b, ABOVER] << 16), c4 & CK[h, 1]), 0x600 + h)
        if CK[h, 3]:
            x = _h2(x, 0x10000 + b)
        CTX[b, h] = x
        BKT[b, h] = _bucket(STATES, HBASE[h], x, P[P_NBMASK])


DIRECT_MODELS = 2  # bit-history models on direct tables (orders 1 and 2), before the nh hashed contexts


@njit(cache=True)
def _layout(S, CK, M, SEL, X):
    """The mixer's sizes, read from its arrays: (B streams, nh hashed contexts, nm = DIRECT_MODELS + nh
    bit-history models, nmm match models (M is any (B, nmm) match array), K weight sets, N inputs)."""
    nh = CK.shape[0]
    return S.shape[0], nh, DIRECT_MODELS + nh, M.shape[1], SEL.shape[1], X.shape[1]


@njit(cache=True)
def _predict(k, active, P, S, CK, BKT, SLOT, ST, X, SEL, SELK, SELOFF, D1, AIDX, STATES, APROB, W1, W2, APM, APMBASE,
             MBY, MLN, MCX, cum, p1out, SQUASH, STRETCH, LOG2, share):
    """P(bit k = 1) for every active stream, from the state before this bit's updates. With ``share`` of
    shape (B, 2) (the trace hook; (0, 2) when unused) it also stores, per stream, sum |w*x| over the neural
    inputs and over all inputs of layer 1."""
    B, nh, nm, nmm, K, N = _layout(S, CK, MBY, SEL, X)
    neural = P[P_NEURAL]
    smoff = P[P_SMOFF]
    lin = P[P_LINSH] > 0
    for b in range(B):
        if not active[b]:
            p1out[b] = 32768
            continue
        c0 = S[b, C0]
        c4 = S[b, C4]
        c1 = c4 & 255
        # --- slots of the bit-history models for this bit
        SLOT[b, 0] = (c1 << 8) | c0  # order 1, direct
        SLOT[b, 1] = 65536 + (((c4 & 0xFFFF) << 8) | c0)  # order 2, direct
        if k < 4:
            nib = c0
        else:
            nib = (c0 & ((1 << (k - 4)) - 1)) | (1 << (k - 4))
        for h in range(nh):
            SLOT[b, 2 + h] = BKT[b, h] + nib
        # --- inputs
        X[b, 0] = 256
        X[b, 1] = STRETCH[APROB[P[P_O0OFF] + c0] >> 6]
        hits = 0
        for m in range(nm):
            st = np.int64(STATES[SLOT[b, m]])
            ST[b, m] = st
            if st != 0:
                hits += 1
            pq = APROB[smoff + m * 256 + st] >> 6
            X[b, 2 + m] = STRETCH[pq] if st != 0 else 0  # a context never seen says nothing
            if lin:
                X[b, 2 + nm + nmm + m] = (pq - 32768) >> P[P_LINSH] if st != 0 else 0
        # match models
        mstate = 0
        best = 0
        for q in range(nmm):
            mb = MBY[b, q]
            if mb >= 0 and ((mb + 256) >> (8 - k)) == c0:
                ebit = (mb >> (7 - k)) & 1
                ctx = _len_bucket(MLN[b, q]) * 2 + ebit
                MCX[b, q] = q * 64 + ctx
                X[b, 2 + nm + q] = STRETCH[APROB[P[P_MMOFF] + q * 64 + ctx] >> 6]
                if MLN[b, q] > best:
                    best = MLN[b, q]
                    mstate = 1 + ctx
            else:
                MCX[b, q] = -1
                X[b, 2 + nm + q] = 0
        # neural model: P(1 | prefix) from the integer frequencies, as an exact log ratio
        nnb = 0
        if neural:
            lo = (c0 - (1 << k)) << (8 - k)
            width = 256 >> k
            mid = lo + (width >> 1)
            s1 = cum[b, lo + width] - cum[b, mid]
            s0 = cum[b, mid] - cum[b, lo]
            d = _ilog2fix(s1, LOG2) - _ilog2fix(s0, LOG2)
            st_nn = _clamp((d * 11629080) >> 32, -4095, 4095)
            X[b, N - 2] = st_nn
            nnb = _clamp((st_nn + 4096) >> 9, 0, 15)
            # calibration: 33 interpolated bins over the stretch domain per bit position
            xs = st_nn + 4096
            w8 = xs & 255
            cb = P[P_NNOFF] + k * 33 + (xs >> 8)
            pc = (np.int64(APROB[cb]) * (256 - w8) + np.int64(APROB[cb + 1]) * w8) >> 14
            X[b, N - 1] = STRETCH[pc]
            S[b, NNBIN] = cb + (w8 >> 7)
        # --- layer 1: K weight sets chosen by small contexts; layer 2 mixes their outputs
        for j in range(K):
            kind = SELK[j]
            if kind == 0:
                v = c0
            elif kind == 1:
                v = mstate
            elif kind == 2:
                v = c1
            elif kind == 3:
                v = k * 16 + _clamp(hits, 0, 15)
            else:
                v = k * 16 + nnb
            SEL[b, j] = SELOFF[j] + v
        dot2 = 0
        xb = X[b]
        r2 = k * 16 + nnb
        S[b, W2ROW] = r2
        for j in range(K):
            d1 = _clamp(_dot(W1[SEL[b, j]], xb, N) >> 16, -4095, 4095)
            D1[b, j] = d1
            dot2 += np.int64(W2[r2, j]) * d1
        if share.shape[0] > 0:
            neural_part, whole = 0, 0
            for j in range(K):
                w = W1[SEL[b, j]]
                for i in range(N):
                    a = abs(np.int64(w[i]) * xb[i])
                    whole += a
                    if neural and i >= N - 2:
                        neural_part += a
            share[b, 0] = neural_part
            share[b, 1] = whole
        pm = SQUASH[_clamp(dot2 >> 16, -4095, 4095) + 4095]
        S[b, PMIX] = pm
        # --- APM / SSE stages on the mixer output
        xs = np.int64(STRETCH[pm]) + 4096  # 1 .. 8191
        ash = P[P_APMSH]
        lo = xs & ((1 << ash) - 1)
        j0 = xs >> ash
        nbins = (8192 >> ash) + 1
        pf = P[P_FW0] * pm
        for a in range(2):
            if a == 0:
                base = APMBASE[0] + c0 * nbins
            else:
                base = APMBASE[1] + (c0 | (c1 << 8)) * nbins
            pa = (np.int64(APM[base + j0]) * ((1 << ash) - lo) + np.int64(APM[base + j0 + 1]) * lo) >> (ash + 6)
            AIDX[b, a] = base + j0 + (lo >> (ash - 1))
            pf += P[P_FW1 + a] * pa
        p1out[b] = _clamp(pf >> 4, 1, 65535)


@njit(cache=True)
def _update(k, bits, active, P, S, CK, CTX, BKT, SLOT, ST, X, SEL, D1, AIDX, STATES, APROB, ACNT, W1, W1N, W2, APM,
            MCX, NEX, SQUASH, DT, LRT, HBASE):
    """Learn from the coded bit k of every active stream, in stream order 0..B-1."""
    B, nh, nm, nmm, K, N = _layout(S, CK, MCX, SEL, X)
    smoff = P[P_SMOFF]
    lr1 = P[P_LR1]
    lr2 = P[P_LR2]
    rate = P[P_APMRATE]
    for b in range(B):
        if not active[b]:
            continue
        y = np.int64(bits[b])
        c0 = S[b, C0]
        # adaptive probabilities: order 0, StateMaps of the state each model predicted from, match
        _ap_update(APROB, ACNT, P[P_O0OFF] + c0, y, P[P_O0LIM], DT)
        for m in range(nm):
            _ap_update(APROB, ACNT, smoff + m * 256 + ST[b, m], y, P[P_SMLIM], DT)
            s = SLOT[b, m]
            STATES[s] = NEX[STATES[s], y]
        for q in range(nmm):
            if MCX[b, q] >= 0:
                _ap_update(APROB, ACNT, P[P_MMOFF] + MCX[b, q], y, P[P_MMLIM], DT)
        if P[P_NEURAL]:
            _ap_update(APROB, ACNT, S[b, NNBIN], y, P[P_NNLIM], DT)
        # mixers: gradient of the code length in the logistic domain
        err2 = (y << 16) - S[b, PMIX]
        for j in range(K):
            d1 = D1[b, j]
            err = (y << 16) - SQUASH[d1 + 4095]
            row = SEL[b, j]
            n = W1N[row]
            if n < LRT.shape[0] - 1:
                W1N[row] = n + 1
            _train(W1[row], X[b], N, err * LRT[n])
            W2[S[b, W2ROW], j] += (d1 * err2 * lr2 + (1 << 23)) >> 24
        for a in range(2):
            i = AIDX[b, a]
            APM[i] += ((y << 22) - APM[i]) >> rate
        S[b, C0] = c0 * 2 + y
    if k == 3:  # nibble boundary: the hashed contexts move to the bucket of the second nibble
        for b in range(B):
            if not active[b]:
                continue
            c0 = S[b, C0]
            for h in range(nh):
                BKT[b, h] = _bucket(STATES, HBASE[h], _h2(CTX[b, h], c0), P[P_NBMASK])


@njit(cache=True, inline="always")
def _record_vote(R, i, r):
    """Record-length detector (paq8 style) in R[i:i+5] = (length, cand1, count1, cand2, count2)."""
    if r == R[i + 1]:
        R[i + 2] += 1
    elif r == R[i + 3]:
        R[i + 4] += 1
    elif R[i + 2] > R[i + 4]:
        R[i + 3] = r
        R[i + 4] = 1
    else:
        R[i + 1] = r
        R[i + 2] = 1
    if R[i + 2] > 15 and R[i] != R[i + 1]:
        R[i] = R[i + 1]
        R[i + 2] = 0
        R[i + 4] = 0
    if R[i + 4] > 15 and R[i] != R[i + 3]:
        R[i] = R[i + 3]
        R[i + 2] = 0
        R[i + 4] = 0


@njit(cache=True)
def _end_byte(step, active, P, S, CK, CTX, BKT, STATES, BUF, MMHT, MPT, MLN, MBY, RPOS, G, HBASE):
    """After bit 7: store the bytes, advance the byte contexts, match and record models, look up the next contexts."""
    B = S.shape[0]
    base = step * B
    for b in range(B):
        if active[b]:
            BUF[base + b] = S[b, C0] - 256
    minlen = P[P_MINLEN]
    mmask = P[P_MMMASK]
    maxlen = P[P_MAXLEN]
    nmm = MPT.shape[1]
    m4 = (1 << (8 * min(minlen, 4))) - 1
    m8 = (1 << (8 * max(minlen - 4, 0))) - 1
    for b in range(B):
        if not active[b]:
            continue
        c = S[b, C0] - 256
        pos = base + b
        c4 = S[b, C4]
        c8 = S[b, C8]
        nb = S[b, NBYTES]
        # match models: extend, or forget, the current match; insert the context before this byte
        hm_old = _h2(c4 & m4, c8 & m8)
        for q in range(nmm):
            if MLN[b, q] > 0:
                if MBY[b, q] == c:
                    MLN[b, q] = min(MLN[b, q] + 1, maxlen)
                    MPT[b, q] += B
                else:
                    MLN[b, q] = 0
            if nb >= minlen:
                hq = hm_old if q == 0 else _h2(hm_old, 0x777 + b)
                MMHT[q, hq & mmask] = pos + 1
        # byte contexts
        c8 = ((c8 << 8) | (c4 >> 24)) & M32
        c4 = ((c4 << 8) | c) & M32
        S[b, C4] = c4
        S[b, C8] = c8
        nb += 1
        S[b, NBYTES] = nb
        # look up new matches for the context ending here (verified backwards, at least minlen)
        if nb >= minlen:
            hm_new = _h2(c4 & m4, c8 & m8)
            for q in range(nmm):
                if MLN[b, q] == 0:
                    hq = hm_new if q == 0 else _h2(hm_new, 0x777 + b)
                    cand = MMHT[q, hq & mmask] - 1
                    if cand >= 0:
                        ln = 0
                        while (ln < maxlen and ln < nb and cand - B * (ln + 1) >= 0
                               and BUF[cand - B * (ln + 1)] == BUF[pos - B * ln]):
                            ln += 1
                        if ln >= minlen:
                            MLN[b, q] = ln
                            MPT[b, q] = cand
        for q in range(nmm):
            MBY[b, q] = BUF[MPT[b, q]] if MLN[b, q] > 0 else -1
        # words
        if (c >= 65 and c <= 90) or (c >= 97 and c <= 122):
            S[b, WH] = _h2(S[b, WH], c | 32)
        elif S[b, WH] != 0:
            S[b, WP] = S[b, WH]
            S[b, WH] = 0
        # record model: a distance seen 4 times in a row for the same byte value is a candidate
        # record length; one that keeps recurring (16 times) becomes the record length
        r = step - RPOS[b, c, 0]
        if r > 1 and RPOS[b, c, 0] - RPOS[b, c, 1] == r and RPOS[b, c, 1] - RPOS[b, c, 2] == r and \
                RPOS[b, c, 2] - RPOS[b, c, 3] == r:
            _record_vote(S[b], RLEN, r)
            _record_vote(G, 0, r)
        RPOS[b, c, 3] = RPOS[b, c, 2]
        RPOS[b, c, 2] = RPOS[b, c, 1]
        RPOS[b, c, 1] = RPOS[b, c, 0]
        RPOS[b, c, 0] = step
        rl = S[b, RLEN] if S[b, RLEN] > 0 else G[0]
        nxt = step + 1  # the step of the byte to be predicted next
        S[b, ABOVE] = BUF[(nxt - rl) * B + b] if rl > 0 and nxt - rl >= 0 else 0
        S[b, ABOVE2] = BUF[(nxt - 2 * rl) * B + b] if rl > 0 and nxt - 2 * rl >= 0 else 0
        S[b, ABOVEL] = BUF[(nxt - rl - 1) * B + b] if rl > 0 and nxt - rl - 1 >= 0 else 0
        S[b, ABOVER] = BUF[(nxt - rl + 1) * B + b] if rl > 1 and nxt - rl + 1 >= 0 else 0
        S[b, C0] = 1
        _contexts(b, S, CK, CTX, BKT, STATES, P, HBASE)


# ==================================================================================================
# The engine
# ==================================================================================================


class ContextMixer:
    """The shared adaptive model for ``num_streams`` lock-step byte streams.

    ``code_step(neural_freqs, code_bits, active)`` codes one byte per active stream: for bit k = 7..0
    (MSB first) it computes ``p1`` (B,) int64 in [1, 2**16 - 1] for every stream from the state
    before the bit, calls ``code_bits(p1) -> bits (B,)`` once (an encoder encodes the known bits and
    returns them, a decoder decodes them), then updates the shared state stream by stream. Encoder and
    decoder run the identical sequence of calls, so their states, and every p1, are identical.
    """

    def __init__(self, num_streams: int, config: MixerConfig | None = None, neural: bool = False):
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        cfg = config or MixerConfig()
        if not 10 <= cfg.hash_bits <= 22:
            raise ValueError("hash_bits must be in [10, 22]")
        if not 6 <= cfg.apm_shift <= 10:
            raise ValueError("apm_shift must be in [6, 10]")
        if not 1 <= cfg.match_min <= 8:
            raise ValueError("match_min must be in [1, 8]")
        if len(cfg.final_w) != 3 or sum(cfg.final_w) != 16:
            raise ValueError("final_w must sum to 16")
        self.config, self.neural, self.B = cfg, bool(neural), int(num_streams)
        B = self.B
        nh = len(cfg.contexts)
        nm = DIRECT_MODELS + nh
        nmm = 2 if cfg.match_local else 1
        self.nm, self.nmm = nm, nmm
        self.N = 2 + nm + nmm + (nm if cfg.lin_shift else 0) + (2 if self.neural else 0)
        sels = list(cfg.selectors) + (["neural"] if self.neural else [])
        self.K = len(sels)
        self.SELK = np.array([SELECTORS[x][0] for x in sels], dtype=np.int64)
        self.SELOFF = np.cumsum([0] + [SELECTORS[x][1] for x in sels])[:-1].astype(np.int64)
        rows = sum(SELECTORS[x][1] for x in sels)
        self.CK = np.array([list(c) for c in cfg.contexts], dtype=np.int64).reshape(nh, 4)
        nb = 1 << cfg.hash_bits
        direct = 65536 + (1 << 24)
        self.HBASE = np.array([direct + h * nb * 16 for h in range(nh)], dtype=np.int64)
        self.STATES = np.zeros(direct + nh * nb * 16, dtype=np.uint8)
        o0off, smoff = 0, 256
        mmoff = smoff + nm * 256
        nnoff = mmoff + 64 * nmm
        self.APROB = np.empty(nnoff + 8 * 33, dtype=np.int32)
        self.APROB[:] = 1 << 21
        bins = np.array([SQUASH[_clamp_py(j * 256 - 4096, -SMAX, SMAX) + SMAX] for j in range(33)], dtype=np.int64) << 6
        self.APROB[nnoff:] = np.tile(bins, 8)
        for m in range(nm):
            self.APROB[smoff + m * 256: smoff + m * 256 + NUM_STATES] = STATE_INIT
        self.ACNT = np.zeros_like(self.APROB)
        P = np.zeros(P_NP, dtype=np.int64)
        P[P_NBMASK] = nb - 1
        P[P_MMMASK] = (1 << cfg.match_bits) - 1
        P[P_MINLEN], P[P_MAXLEN] = cfg.match_min, cfg.match_max
        P[P_SMLIM], P[P_O0LIM], P[P_MMLIM] = cfg.sm_limit, cfg.o0_limit, cfg.mm_limit
        P[P_LR1], P[P_LR2], P[P_APMRATE] = cfg.lr1, cfg.lr2, cfg.apm_rate
        P[P_NEURAL] = int(self.neural)
        P[P_FW0:P_FW2 + 1] = cfg.final_w
        P[P_APMSH] = cfg.apm_shift
        P[P_NH], P[P_O0OFF], P[P_SMOFF], P[P_MMOFF] = nh, o0off, smoff, mmoff
        P[P_NNOFF], P[P_NNLIM] = nnoff, cfg.nn_limit
        P[P_LINSH] = cfg.lin_shift
        P[P_LRB], P[P_LRBT] = cfg.lr1_boost, cfg.lr1_boost_t
        self.P = P
        self.MMHT = np.zeros((nmm, 1 << cfg.match_bits), dtype=np.int64)
        self.W1 = np.zeros((rows, self.N), dtype=np.int32)
        self.W1[:, 1:self.N] = cfg.w_init
        if self.neural:
            self.W1[:, 1:self.N] = cfg.nn_cm_w_init
            self.W1[:, self.N - 2] = cfg.nn_raw_w_init
            self.W1[:, self.N - 1] = cfg.nn_w_init
        self.W1N = np.zeros(rows, dtype=np.int64)  # updates of each layer-1 weight set (capped)
        n = np.arange(4096, dtype=np.int64)  # layer-1 rate after n updates of a weight set
        self.LRT = (cfg.lr1 + (cfg.lr1_boost * cfg.lr1_boost_t) // (cfg.lr1_boost_t + n)).astype(np.int64)
        if cfg.lin_shift:
            self.W1[:, 2 + nm + nmm: 2 + nm + nmm + nm] = 0
        self.W2 = np.full((128, self.K), PONE // self.K, dtype=np.int32)  # rows: bit position x neural bucket
        # APM tables: 33 bins over the stretch domain per context, 22-bit probabilities
        nbins = (8192 >> cfg.apm_shift) + 1
        bins = np.array([SQUASH[_clamp_py((j << cfg.apm_shift) - 4096, -SMAX, SMAX) + SMAX] for j in range(nbins)],
                        dtype=np.int64) << 6
        sizes = [256, 65536]
        self.APMBASE = np.array([0, 256 * nbins], dtype=np.int64)
        self.APM = np.tile(bins, sum(sizes)).astype(np.int32)
        # per-stream state
        self.S = np.zeros((B, NS), dtype=np.int64)
        self.S[:, C0] = 1
        self.CTX = np.zeros((B, nh), dtype=np.int64)
        self.BKT = np.zeros((B, nh), dtype=np.int64)
        self.SLOT = np.zeros((B, nm), dtype=np.int64)
        self.ST = np.zeros((B, nm), dtype=np.int64)
        self.X = np.zeros((B, self.N), dtype=np.int64)
        self.SEL = np.zeros((B, self.K), dtype=np.int64)
        self.D1 = np.zeros((B, self.K), dtype=np.int64)
        self.AIDX = np.zeros((B, 2), dtype=np.int64)
        self.MPT = np.zeros((B, nmm), dtype=np.int64)
        self.MLN = np.zeros((B, nmm), dtype=np.int64)
        self.MBY = np.full((B, nmm), -1, dtype=np.int64)
        self.MCX = np.full((B, nmm), -1, dtype=np.int64)
        self.RPOS = np.full((B, 256, 4), -(1 << 40), dtype=np.int64)
        self.RPOS -= np.arange(4, dtype=np.int64)  # distinct: no spurious record distance at the start
        self.G = np.zeros(5, dtype=np.int64)  # the record-length detector over all streams
        self.cum = np.zeros((B, 257), dtype=np.int64)
        self.p1 = np.zeros(B, dtype=np.int64)
        self.BUF = np.zeros(B * 1024, dtype=np.uint8)  # the byte of stream b at step t lives at t * B + b
        self.step = 0
        self.all_active = np.ones(B, dtype=np.bool_)
        for b in range(B):
            _contexts(b, self.S, self.CK, self.CTX, self.BKT, self.STATES, self.P, self.HBASE)

    def _arrays(self):
        return MixerArrays(self.P, self.S, self.CK, self.CTX, self.BKT, self.SLOT, self.ST, self.X, self.SEL, self.SELK,
                           self.SELOFF, self.D1, self.AIDX, self.STATES, self.APROB, self.ACNT, self.W1, self.W1N, self.W2,
                           self.APM, self.APMBASE, self.MBY, self.MLN, self.MCX, self.MPT, self.MMHT, self.RPOS, self.G,
                           self.HBASE, self.BUF, self.LRT, self.cum, self.p1)

    def code(self, coder, first: int, last: int, lengths, symbols, stored=None, freqs=None, bits=None,
             trace=None) -> None:
        """Code byte steps ``first .. last - 1`` of every stream in one compiled call (``_code_steps``).

        ``coder`` is a ``BatchEncoder`` (``symbols`` (B, steps) uint8 are the bytes to code) or a
        ``BatchDecoder`` of precision 16 (the decoded bytes are written into ``symbols``; the rows of the
        ``stored`` streams already hold their bytes, whose bits feed the model without being decoded).
        Stream b is active while ``lengths[b] > step``. ``freqs`` (B, 256): the model's integer
        frequencies for a neural mixer (then one step per call). ``bits`` (B,) float64 accumulates each
        stream's ideal code length. ``trace`` (the per-byte hook, see ``StepTrace``) receives the p1 of
        every coded bit, and with a neural input its share of layer 1; without it nothing is recorded.
        """
        B = self.B
        decoding = isinstance(coder, BatchDecoder)
        if coder.precision != PBITS:
            raise ValueError(f"the mixer codes with a precision-{PBITS} coder, got {coder.precision}")
        if self.neural:
            if freqs is None or last - first != 1:
                raise ValueError("a neural mixer codes one step per call, with the model's frequencies")
            _cum_freqs(np.ascontiguousarray(freqs, dtype=np.int64).reshape(B, 256), self.cum)
        elif freqs is not None:
            raise ValueError("this mixer was built with neural=False: freqs must be None")
        if last * B > self.BUF.shape[0]:
            grown = np.zeros(max(2 * self.BUF.shape[0], last * B), dtype=np.uint8)
            grown[: self.BUF.shape[0]] = self.BUF
            self.BUF = grown
        if decoding:
            value, range_, position, words, last_column = coder.binary_state()
            state = (value, range_, words, position)
        else:
            coder.reserve(8 * (last - first) + 1)  # at most one word per coded bit
            state, last_column = coder.binary_state(), 0
        stored = np.zeros(B, dtype=np.bool_) if stored is None else np.ascontiguousarray(stored, dtype=np.bool_)
        bits = np.zeros(B, dtype=np.float64) if bits is None else bits
        trace = trace or StepTrace.off(B)
        problem, stream = _code_steps(first, last, np.ascontiguousarray(lengths, dtype=np.int64), decoding, stored,
                                      symbols, self._arrays(), TABLES, state, last_column, bits, trace.p1, trace.share,
                                      first - trace.first)
        self.step = last
        if problem:
            raise_binary_problem(problem, stream, self.p1, PBITS)

def _clamp_py(x, lo, hi):
    return lo if x < lo else hi if x > hi else x


# ==================================================================================================
# The coding loop: the mixer and the range coder in one compiled call
# ==================================================================================================


class MixerArrays(NamedTuple):
    """Every array of a ContextMixer's state, as one argument of the compiled loop."""

    P: np.ndarray
    S: np.ndarray
    CK: np.ndarray
    CTX: np.ndarray
    BKT: np.ndarray
    SLOT: np.ndarray
    ST: np.ndarray
    X: np.ndarray
    SEL: np.ndarray
    SELK: np.ndarray
    SELOFF: np.ndarray
    D1: np.ndarray
    AIDX: np.ndarray
    STATES: np.ndarray
    APROB: np.ndarray
    ACNT: np.ndarray
    W1: np.ndarray
    W1N: np.ndarray
    W2: np.ndarray
    APM: np.ndarray
    APMBASE: np.ndarray
    MBY: np.ndarray
    MLN: np.ndarray
    MCX: np.ndarray
    MPT: np.ndarray
    MMHT: np.ndarray
    RPOS: np.ndarray
    G: np.ndarray
    HBASE: np.ndarray
    BUF: np.ndarray
    LRT: np.ndarray
    cum: np.ndarray
    p1: np.ndarray


class Tables(NamedTuple):
    SQUASH: np.ndarray
    STRETCH: np.ndarray
    LOG2: np.ndarray
    NEX: np.ndarray
    DT: np.ndarray


TABLES = Tables(SQUASH, STRETCH, LOG2, NEX, DT)


@dataclass
class StepTrace:
    """The per-byte hook of ``ContextMixer.code``: ``p1`` (steps, B, 8) uint16, the probability of a 1 that
    coded each bit (0 for inactive streams), and ``share`` (steps, B) float64, the neural inputs' share
    of layer 1 (sum |w*x| over them / over all inputs) averaged over the byte's 8 bits (zero-sized when
    not wanted). Row 0 is step ``first``."""

    p1: np.ndarray
    share: np.ndarray
    first: int = 0

    @classmethod
    def new(cls, steps: int, num_streams: int, neural_share: bool, first: int = 0) -> "StepTrace":
        return cls(np.zeros((steps, num_streams, 8), dtype=np.uint16),
                   np.zeros((steps if neural_share else 0, num_streams), dtype=np.float64), first)

    @classmethod
    def off(cls, num_streams: int) -> "StepTrace":
        return cls(np.zeros((0, num_streams, 8), dtype=np.uint16), np.zeros((0, num_streams), dtype=np.float64))


@njit(cache=True)
def _code_steps(first, last, lengths, decoding, stored, symbols, A, T, coder, last_column, bits, trace_p1, trace_share,
                trace_row):
    """Steps first..last-1: for each bit k, p1 of every stream (``_predict``), the range coder on all of
    them (``encode_binary_kernel`` / ``decode_binary_kernel``), then the updates (``_update``); after bit 7
    ``_end_byte``. The calls and their order are those of one byte step per call, so the output does not
    depend on how the steps are grouped into calls. Floats here only accumulate statistics (code lengths,
    shares), never anything that shapes p1. Returns (0, -1), or the coder's (problem, stream)."""
    B = lengths.shape[0]
    active = np.zeros(B, dtype=np.bool_)
    decoded = np.zeros(B, dtype=np.bool_)  # the streams whose bits come from the coder when decoding
    bit = np.zeros(B, dtype=np.int64)
    share = np.zeros((B if trace_share.shape[0] > 0 else 0, 2), dtype=np.int64)
    tracing = trace_p1.shape[0] > 0
    for step in range(first, last):
        for b in range(B):
            active[b] = lengths[b] > step
            decoded[b] = active[b] and not stored[b]
        row = step - first + trace_row
        for k in range(8):
            _predict(k, active, A.P, A.S, A.CK, A.BKT, A.SLOT, A.ST, A.X, A.SEL, A.SELK, A.SELOFF, A.D1, A.AIDX,
                     A.STATES, A.APROB, A.W1, A.W2, A.APM, A.APMBASE, A.MBY, A.MLN, A.MCX, A.cum, A.p1, T.SQUASH,
                     T.STRETCH, T.LOG2, share)
            if decoding:
                problem, stream = decode_binary_kernel(coder[0], coder[1], coder[3], coder[2], last_column, A.p1,
                                                       decoded, PBITS, bit)
                for b in range(B):
                    if stored[b]:
                        bit[b] = (symbols[b, step] >> (7 - k)) & 1 if active[b] else 0
            else:
                for b in range(B):
                    bit[b] = (symbols[b, step] >> (7 - k)) & 1 if active[b] else 0
                problem, stream = encode_binary_kernel(coder[0], coder[1], coder[2], coder[3], A.p1, bit, active,
                                                       PBITS)
            if problem:
                return problem, stream
            for b in range(B):
                if active[b]:
                    p = A.p1[b]
                    bits[b] += PBITS - np.log2(p if bit[b] else PONE - p)
                    if tracing:
                        trace_p1[row, b, k] = p
                    if share.shape[0] > 0 and share[b, 1] > 0:
                        trace_share[row, b] += share[b, 0] / share[b, 1] / 8
            _update(k, bit, active, A.P, A.S, A.CK, A.CTX, A.BKT, A.SLOT, A.ST, A.X, A.SEL, A.D1, A.AIDX, A.STATES,
                    A.APROB, A.ACNT, A.W1, A.W1N, A.W2, A.APM, A.MCX, T.NEX, T.SQUASH, T.DT, A.LRT, A.HBASE)
        if decoding:
            for b in range(B):
                if decoded[b]:
                    symbols[b, step] = A.S[b, C0] - 256
        _end_byte(step, active, A.P, A.S, A.CK, A.CTX, A.BKT, A.STATES, A.BUF, A.MMHT, A.MPT, A.MLN, A.MBY, A.RPOS,
                  A.G, A.HBASE)
    return 0, -1
