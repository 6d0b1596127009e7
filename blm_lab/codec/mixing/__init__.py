"""Context mixing (lpaq1 / paq8 style) for B lock-step byte streams, with an optional neural input.

``ContextMixer(num_streams, MixerConfig(), neural)`` predicts every byte of B streams (the B segments
of a file) one bit at a time, MSB first, and ``ContextMixer.code`` codes byte steps of every active
stream with the project's range coder as 2-symbol distributions ``[2**16 - p1, p1]`` in one compiled
call: all 8 bits of every stream, and without a model many byte steps at once. ``codec.neural`` runs it
in its lock-step loop, with the model's integer frequencies as the neural input (one step per call), or
none (the pure context-mixing compressor: the whole file in a few large compiled calls).

The package, in lpaq1's and paq8px's shape
------------------------------------------
* ``tables``: the deterministic tables (squash, stretch, log2, the bit-history state machine, rates),
  the 32-bit hash, and the named constants of the arithmetic.
* ``config``: ``MixerConfig``, everything that shapes predictions, and its fingerprint (the format).
* one module per component, each a named state (a NamedTuple of arrays) with ``predict`` beside
  ``update`` and its own ``mixer_inputs``: ``statemap`` (adaptive probabilities), ``contexts`` (the
  bit-history models: order 0, direct orders 1-2, hashed contexts), ``match``, ``record``,
  ``neural_input``, ``mixer`` (two layers), ``apm`` (SSE).
* revision 2's components: ``indirect`` (what followed the last occurrences of a context; measured, not
  in revision 2), ``column``
  (the byte above in the previous line) and ``bitmap`` (a bilevel image's pixel windows, per bit).
* ``engine``: ``ContextMixer``, the per-bit order of calls (``predict_bit``, ``update_bit``,
  ``end_byte``) and the compiled coding loop ``_code_steps``, with its per-byte trace hook
  (``StepTrace``: the p1 of every coded bit and the neural input's share of layer 1).

Revisions
---------
A file records its mixer revision by ``MixerConfig.fingerprint`` (``config.REVISIONS``, ``revision_of``);
every revision's arithmetic stays, so every file decodes. Revision 1 (``MixerConfig()``, described below)
is the default for new files; revision 2 (``MixerConfig.revision2()``, ``compress(..., mixer_revision=2)``)
adds to it: sparse contexts (bytes 3-4; bytes 1 and 3), column contexts (column and the byte above, with
c1; the bytes above and above-right with the current word), a third APM on (c0, c1, c2) hashed to 2**16
contexts (final weights 4/4/4/4), the bilevel-image model (three direct StateMaps over pixel windows of
the rows above and the current row, per bit) and a layer-1 rate lr1 = 80.
``benchmarks/bench_mixer_ablation.py`` measures each step. Measured and left out of revision 2 for their
time (selectable): the indirect contexts (``indirect``: c1 with the 2 bytes that followed its last 2
occurrences; c2 c1 with the byte that followed its last occurrence), the record cells
above-left/above/above-right (``CTX_RECORD3``) and the bitmap's pixel-window weight sets (selector
``"pixels"``).

The model (revision 1)
----------------------
Byte contexts are computed once per byte step per stream from its own previous bytes (c4 = the last
4 bytes, c8 = the 4 before them) and hashed (``tables.h2``, 32-bit, integer multiply/xor-shift); c0 is the
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
* Bit histories: a state byte per context and node (``tables._state_table``: counts (n0, n1), plus the
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
At each bit, ``predict_bit`` computes p1 for every stream from the state before the bit; the range
coder codes (or decodes) that bit of all streams; ``update_bit`` then applies every stream's updates in
stream order 0..B-1 (two streams in the same context both predicted from the old state; their
updates apply in turn). Bucket lookups happen at nibble boundaries, after all updates of the
previous bit, in stream order; the end of a byte step first stores every stream's byte, then advances
each stream's contexts and match models in stream order. Everything any step reads is known to the
decoder at that point, and the decoder makes the identical calls, so both sides hold identical state
(``test_encoder_and_decoder_predict_the_same_p1_at_every_bit`` compares every p1 of both sides;
the grouping of steps into compiled calls changes nothing). Streams outside the active
mask are skipped entirely.

Memory (default config): bit histories 16.1 MiB direct + 9 x 16 MiB hashed, match tables 2 x 8 MiB,
APMs 8.3 MiB, plus the history buffer (n bytes) and 8 KiB per stream: about 185 MiB. Tables are
allocated lazily (zero pages), so small inputs touch little of it.
"""

from .config import DEFAULT_CONTEXTS, DEFAULT_REVISION, REVISIONS, MixerConfig, order_ctx, revision_of
from .engine import ContextMixer, StepTrace
from .tables import table_digest

__all__ = ["ContextMixer", "DEFAULT_CONTEXTS", "DEFAULT_REVISION", "MixerConfig", "REVISIONS", "StepTrace", "order_ctx",
           "revision_of", "table_digest"]
