"""The engine: one ``ContextMixer`` over B lock-step streams, and the compiled loop that codes byte steps
with it and the range coder (``_code_steps``).

Per bit k of a byte step: ``predict_bit`` asks every component of every active stream for its inputs,
the mixer and the APMs for p1; the range coder codes (or decodes) that bit of all streams; then
``update_bit`` lets every component learn it, stream by stream in order 0..B-1. After bit 7 ``end_byte``
stores the bytes and advances the byte contexts, the match and record models. The mixer's input layout
comes from each component's ``mixer_inputs`` (``Layout``), so adding a model adds a module, a line in
``Layout`` and its calls in the three functions below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from ..coder import BatchDecoder, decode_binary_kernel, encode_binary_kernel, raise_binary_problem
from . import apm, bitmap, column, contexts, indirect, match, mixer, neural_input, record
from .config import MixerConfig
from .tables import CTX_COLUMN, CTX_COLUMN_WORD, CTX_INDIRECT1, CTX_INDIRECT2, HALF, M32, PBITS, PONE, TABLES


class Streams(NamedTuple):
    """Each stream's byte context, and the history of every coded byte."""

    c0: np.ndarray  # (B,) int64: the partial byte with a leading 1 (1..255)
    c4: np.ndarray  # (B,) int64: the last 4 bytes
    c8: np.ndarray  # (B,) int64: the 4 before them
    nbytes: np.ndarray  # (B,) int64: bytes coded so far
    buf: np.ndarray  # (>= steps * B,) uint8: byte t of stream b at t * B + b
    p1: np.ndarray  # (B,) int64: the probability of a 1 this bit


class Layout(NamedTuple):
    """Where each component's inputs start in the mixer's input vector."""

    contexts: int
    match: int
    bitmap: int
    neural: int


class MixerState(NamedTuple):
    streams: Streams
    contexts: contexts.BitHistories
    match: match.MatchModel
    record: record.RecordModel
    indirect: indirect.IndirectModel
    column: column.ColumnModel
    bitmap: bitmap.BitmapModel
    neural: neural_input.NeuralInput
    mixer: mixer.Mixer
    apm: apm.APM
    layout: Layout
    has_neural: bool
    has_indirect: bool  # a context reads the indirect model: it is kept up to date (else skipped)
    has_column: bool  # ... the column model


def _check(cfg: MixerConfig) -> None:
    if not 10 <= cfg.hash_bits <= 22:
        raise ValueError("hash_bits must be in [10, 22]")
    if not 6 <= cfg.apm_shift <= 10:
        raise ValueError("apm_shift must be in [6, 10]")
    if not 1 <= cfg.match_min <= 8:
        raise ValueError("match_min must be in [1, 8]")
    if len(cfg.final_w) != 3 + int(cfg.apm_order2) or sum(cfg.final_w) != 16:
        raise ValueError("final_w must have one weight per APM and the mixer's, and sum to 16")


@njit(cache=True, inline="always")
def predict_bit(k, active, M, T, share):
    """p1 of bit k for every active stream (HALF for the others), from the state before this bit."""
    # components bound once per bit, outside the stream loop (each access to a tuple of arrays counts references)
    S, L, H, MM, NI, X, A, G = M.streams, M.layout, M.contexts, M.match, M.neural, M.mixer, M.apm, M.bitmap
    c0s, c4s, p1, x, neural, bitmaps = S.c0, S.c4, S.p1, X.x, M.has_neural, G.maps.p.shape[0] > 0
    for b in range(c0s.shape[0]):
        if not active[b]:
            p1[b] = HALF
            continue
        c0 = c0s[b]
        c4 = c4s[b]
        c1 = c4 & 255
        hits = contexts.predict(H, T, k, b, c0, c4, x, L.contexts)
        mstate = match.predict(MM, T, k, b, c0, x, L.match)
        pixels = bitmap.predict(G, M.record, T, k, b, c0, c1, x, L.bitmap) if bitmaps else 0
        nnb = neural_input.predict(NI, T, k, b, c0, x, L.neural) if neural else 0
        mixer.select(X, b, k, c0, c1, mstate, hits, nnb, pixels)
        pm = mixer.predict(X, T, b, k, nnb, share)
        p1[b] = apm.predict(A, T, b, pm, c0, c4)


@njit(cache=True, inline="always")
def update_bit(k, bits, active, M, T):
    """Every component of every active stream learns its bit, in stream order."""
    H, MM, NI, X, A, G = M.contexts, M.match, M.neural, M.mixer, M.apm, M.bitmap
    c0s, neural, bitmaps = M.streams.c0, M.has_neural, G.maps.p.shape[0] > 0
    for b in range(c0s.shape[0]):
        if not active[b]:
            continue
        y = np.int64(bits[b])
        c0 = c0s[b]
        contexts.update(H, T, b, y, c0)
        match.update(MM, T, b, y)
        if bitmaps:
            bitmap.update(G, T, b, y)
        if neural:
            neural_input.update(NI, T, b, y)
        mixer.update(X, T, b, y)
        apm.update(A, b, y)
        c0s[b] = c0 * 2 + y
    if k == 3:
        for b in range(c0s.shape[0]):
            if active[b]:
                contexts.next_nibble(H, b, c0s[b])


@njit(cache=True, inline="always")
def end_byte(step, active, M):
    """After bit 7: store every stream's byte, then advance each stream's models in stream order."""
    S = M.streams
    B = S.c0.shape[0]
    base = step * B
    for b in range(B):
        if active[b]:
            S.buf[base + b] = S.c0[b] - 256
    for b in range(B):
        if not active[b]:
            continue
        c = S.c0[b] - 256
        c4, c8, nb = S.c4[b], S.c8[b], S.nbytes[b]
        match.advance(M.match, b, c, base + b, c4, c8, nb)
        if M.has_indirect:
            indirect.end_byte(M.indirect, c, c4)
        c8 = ((c8 << 8) | (c4 >> 24)) & M32
        c4 = ((c4 << 8) | c) & M32
        S.c4[b] = c4
        S.c8[b] = c8
        S.nbytes[b] = nb + 1
        match.find(M.match, b, base + b, c4, c8, nb + 1, S.buf)
        contexts.end_byte(M.contexts, b, c)
        record.end_byte(M.record, b, c, step, S.buf)
        if M.has_column:
            column.end_byte(M.column, b, c, step, S.buf)
        S.c0[b] = 1
        contexts.byte_contexts(M.contexts, M.record, M.indirect, M.column, b, c4, c8)


@njit(cache=True)
def _start(M):
    for b in range(M.streams.c0.shape[0]):
        contexts.byte_contexts(M.contexts, M.record, M.indirect, M.column, b, 0, 0)


class ContextMixer:
    """The shared adaptive model of ``num_streams`` lock-step byte streams (``neural``: with the byte model's
    frequencies as an input); ``code`` codes byte steps with it."""

    def __init__(self, num_streams: int, config: MixerConfig | None = None, neural: bool = False):
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        cfg = config or MixerConfig()
        _check(cfg)
        self.config, self.neural, self.B = cfg, bool(neural), int(num_streams)
        B = self.B
        # the mixer's inputs: a bias, then each component's, as it declares them
        inputs = [0]
        layout = {}
        for name, component in (("contexts", contexts), ("match", match), ("bitmap", bitmap), ("neural", neural_input)):
            layout[name] = len(inputs)
            inputs += component.mixer_inputs(cfg, self.neural)
        self.N = len(inputs)
        selectors = list(cfg.selectors) + (["neural"] if self.neural else [])
        self.K = len(selectors)
        self.state = MixerState(
            streams=Streams(c0=np.ones(B, dtype=np.int64), c4=np.zeros(B, dtype=np.int64),
                            c8=np.zeros(B, dtype=np.int64), nbytes=np.zeros(B, dtype=np.int64),
                            buf=np.zeros(B * 1024, dtype=np.uint8), p1=np.zeros(B, dtype=np.int64)),
            contexts=contexts.new_bit_histories(cfg, B), match=match.new_match_model(cfg, B),
            record=record.new_record_model(B), indirect=indirect.new_indirect_model(),
            column=column.new_column_model(B), bitmap=bitmap.new_bitmap_model(cfg, B), neural=neural_input.new_neural_input(cfg, B),
            mixer=mixer.new_mixer(cfg, B, inputs, selectors, neural_first=layout["neural"]),
            apm=apm.new_apm(cfg, B), layout=Layout(**layout), has_neural=self.neural,
            has_indirect=any(c[0] in (CTX_INDIRECT1, CTX_INDIRECT2) for c in cfg.contexts),
            has_column=any(c[0] in (CTX_COLUMN, CTX_COLUMN_WORD) for c in cfg.contexts))
        self.step = 0
        _start(self.state)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the state by its dotted name (the tests compare encoder and decoder with it)."""
        out = {}

        def walk(prefix, node):
            for name, value in zip(node._fields, node):
                if isinstance(value, np.ndarray):
                    out[prefix + name] = value
                elif hasattr(value, "_fields"):
                    walk(prefix + name + ".", value)

        walk("", self.state)
        return out

    def _reserve_history(self, last: int) -> None:
        S = self.state.streams
        if last * self.B > S.buf.shape[0]:
            grown = np.zeros(max(2 * S.buf.shape[0], last * self.B), dtype=np.uint8)
            grown[: S.buf.shape[0]] = S.buf
            self.state = self.state._replace(streams=S._replace(buf=grown))

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
            neural_input.cum_freqs(np.ascontiguousarray(freqs, dtype=np.int64).reshape(B, 256), self.state.neural.cum)
        elif freqs is not None:
            raise ValueError("this mixer was built with neural=False: freqs must be None")
        self._reserve_history(last)
        if decoding:
            value, range_, position, words, last_column = coder.binary_state()
            state = (value, range_, words, position)
        else:
            coder.reserve(8 * (last - first) + 1)  # at most one word per coded bit
            state, last_column = coder.binary_state(), 0
        stored = np.zeros(B, dtype=np.bool_) if stored is None else np.ascontiguousarray(stored, dtype=np.bool_)
        bits = np.zeros(B, dtype=np.float64) if bits is None else bits
        trace = trace or StepTrace.off(B)
        masks, bit = np.zeros((2, B), dtype=np.bool_), np.zeros(B, dtype=np.int64)  # the loop's scratch
        share = np.zeros((B if trace.share.shape[0] > 0 else 0, 2), dtype=np.int64)
        problem, stream = _code_steps(first, last, np.ascontiguousarray(lengths, dtype=np.int64), decoding, stored,
                                      symbols, self.state, TABLES, state, last_column, bits, trace.p1, trace.bits,
                                      trace.share, first - trace.first, masks, bit, share)
        self.step = last
        if problem:
            raise_binary_problem(problem, stream, self.state.streams.p1, PBITS)


@dataclass
class StepTrace:
    """The per-byte hook of ``ContextMixer.code``: ``p1`` (steps, B, 8) uint16, the probability of a 1 that
    coded each bit (0 for inactive streams); ``bits`` (steps, B) float64, what the byte cost, -log2 of
    the probabilities of its coded bits; and ``share`` (steps, B) float64, the neural inputs' share of
    layer 1 (sum |w*x| over them / over all inputs) averaged over the byte's 8 bits (zero-sized when not
    wanted). Row 0 is step ``first``."""

    p1: np.ndarray
    bits: np.ndarray
    share: np.ndarray
    first: int = 0

    @classmethod
    def new(cls, steps: int, num_streams: int, neural_share: bool, first: int = 0) -> "StepTrace":
        return cls(np.zeros((steps, num_streams, 8), dtype=np.uint16), np.zeros((steps, num_streams), dtype=np.float64),
                   np.zeros((steps if neural_share else 0, num_streams), dtype=np.float64), first)

    @classmethod
    def off(cls, num_streams: int) -> "StepTrace":
        none = np.zeros((0, num_streams), dtype=np.float64)
        return cls(np.zeros((0, num_streams, 8), dtype=np.uint16), none, none)


@njit(cache=True, _nrt=False)
def _code_steps(first, last, lengths, decoding, stored, symbols, M, T, coder, last_column, bits, trace_p1, trace_bits,
                trace_share, trace_row, masks, bit, share):
    """Steps first..last-1: for each bit k, p1 of every stream (``predict_bit``), the range coder on all of
    them (``encode_binary_kernel`` / ``decode_binary_kernel``), then ``update_bit``; after bit 7
    ``end_byte``. The calls and their order are those of one byte step per call, so the output does not
    depend on how the steps are grouped into calls. Floats here only accumulate statistics (code lengths,
    shares), never anything that shapes p1. Compiled without reference counting (``_nrt=False``: it
    allocates nothing; its scratch ``masks``, ``bit`` and the hook's ``share`` (B or 0, 2) come from the caller), which
    the per-bit array accesses of the inlined components would otherwise pay for. Returns (0, -1), or
    the coder's (problem, stream)."""
    B = lengths.shape[0]
    p1 = M.streams.p1
    active, decoded = masks[0], masks[1]  # decoded: the streams whose bits come from the coder when decoding
    tracing = trace_p1.shape[0] > 0
    for step in range(first, last):
        for b in range(B):
            active[b] = lengths[b] > step
            decoded[b] = active[b] and not stored[b]
        row = step - first + trace_row
        for k in range(8):
            predict_bit(k, active, M, T, share)
            if decoding:
                problem, stream = decode_binary_kernel(coder[0], coder[1], coder[3], coder[2], last_column, p1,
                                                       decoded, PBITS, bit)
                for b in range(B):
                    if stored[b]:
                        bit[b] = (symbols[b, step] >> (7 - k)) & 1 if active[b] else 0
            else:
                for b in range(B):
                    bit[b] = (symbols[b, step] >> (7 - k)) & 1 if active[b] else 0
                problem, stream = encode_binary_kernel(coder[0], coder[1], coder[2], coder[3], p1, bit, active,
                                                       PBITS)
            if problem:
                return problem, stream
            for b in range(B):
                if active[b]:
                    p = p1[b]
                    cost = PBITS - np.log2(p if bit[b] else PONE - p)
                    bits[b] += cost
                    if tracing:
                        trace_p1[row, b, k] = p
                        trace_bits[row, b] += cost
                    if share.shape[0] > 0 and share[b, 1] > 0:
                        trace_share[row, b] += share[b, 0] / share[b, 1] / 8
            update_bit(k, bit, active, M, T)
        if decoding:
            for b in range(B):
                if decoded[b]:
                    symbols[b, step] = M.streams.c0[b] - 256
        end_byte(step, active, M)
    return 0, -1
