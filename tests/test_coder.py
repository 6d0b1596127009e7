"""blm_lab.coder: quantisation, exact round trips, byte-for-byte agreement with a big-integer model, carries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blm_lab.codec import coder
from blm_lab.codec.coder import (
    PRECISION,
    BatchDecoder,
    BatchEncoder,
    decode_symbols,
    encode_symbols,
    ideal_bits,
    quantize,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = ["dirichlet", "near_deterministic", "uniform", "dominant", "zeros"]


def make_probs(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """float32 distributions (..., V) of one of the KINDS."""
    num_symbols = shape[-1]
    if kind == "dirichlet":
        alpha = rng.choice([0.01, 0.1, 1.0, 10.0])
        probs = rng.dirichlet(np.full(num_symbols, alpha), size=shape[:-1])
    elif kind == "near_deterministic":  # one symbol at 1 - 1e-9, the rest share 1e-9
        probs = np.full(shape, 1e-9 / max(num_symbols - 1, 1))
        top = rng.integers(0, num_symbols, size=shape[:-1])
        np.put_along_axis(probs, top[..., None], 1 - 1e-9, axis=-1)
    elif kind == "uniform":
        probs = np.full(shape, 1.0 / num_symbols)
    elif kind == "dominant":
        probs = rng.random(shape) * 0.01 / num_symbols
        top = rng.integers(0, num_symbols, size=shape[:-1])
        np.put_along_axis(probs, top[..., None], 0.99, axis=-1)
    else:  # exact zeros: a random subset of each row gets no mass (at least one entry keeps some)
        probs = rng.random(shape) * (rng.random(shape) < 0.3)
        probs[..., 0] += 1e-3
    probs = probs / probs.sum(axis=-1, keepdims=True)
    return probs.astype(np.float32)


def sample_symbols(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Symbols (...) drawn from probs (..., V), a quarter of them uniformly (so improbable ones occur)."""
    cdf = np.cumsum(probs.astype(np.float64), axis=-1)
    drawn = (cdf < rng.random(probs.shape[:-1])[..., None] * cdf[..., -1:]).sum(axis=-1)
    uniform = rng.integers(0, probs.shape[-1], size=probs.shape[:-1])
    return np.minimum(np.where(rng.random(probs.shape[:-1]) < 0.25, uniform, drawn), probs.shape[-1] - 1)


def reference_encode(
    freq_rows, symbols, precision: int = PRECISION, low: int = 0, range_: int = 2**64 - 1, words: int = 0
) -> bytes:
    """The same coder on unbounded Python ints: no carries to handle, so a check on the numpy one.

    ``low`` is the whole lower end L (emitted words and the 64-bit window together), in units of the
    current scale; ``range_`` the width; ``words`` how many words were already emitted. All three
    start where a fresh encoder starts unless given.
    """
    for freqs, symbol in zip(freq_rows, symbols):
        scale = range_ >> precision
        low += scale * int(freqs[:symbol].sum())
        range_ = scale * int(freqs[symbol])
        if range_ < 2**32:
            low, range_, words = low << 32, range_ << 32, words + 1
    high = low + range_ - 1
    if low == 0:
        point = 0
    else:
        zeros = ((low - 1) ^ high).bit_length() - 1
        point = high >> zeros << zeros
    return point.to_bytes(8 + 4 * words, "big").rstrip(b"\0")


def round_trip(freqs: np.ndarray, symbols: np.ndarray, lengths: np.ndarray):
    """Encode symbols (T, B) under freqs (T, B, V), stream b taking its first lengths[b]; decode; return both."""
    steps, num_streams = symbols.shape
    encoder = BatchEncoder(num_streams)
    for step in range(steps):
        encoder.encode(freqs[step], symbols[step], active=step < lengths)
    streams = encoder.finish()
    decoder = BatchDecoder(streams)
    decoded = np.zeros_like(symbols)
    for step in range(steps):
        decoded[step] = decoder.decode(freqs[step], active=step < lengths)
    return streams, decoded


# --------------------------------------------------------------------------------------------------
# quantize and ideal_bits
# --------------------------------------------------------------------------------------------------


@FAST
@given(
    kind=st.sampled_from(KINDS),
    num_symbols=st.sampled_from([1, 2, 3, 17, 256, 1000]),
    rows=st.integers(1, 8),
    precision=st.sampled_from([12, 16, 24, 32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantize_every_entry_positive_and_rows_total_exactly(kind, num_symbols, rows, precision, seed):
    probs = make_probs(kind, (rows, num_symbols), np.random.default_rng(seed))
    freqs = quantize(probs, precision=precision)
    assert freqs.dtype == np.int64 and freqs.shape == probs.shape
    assert (freqs >= 1).all()
    assert (freqs.sum(axis=-1) == 2**precision).all()
    assert np.array_equal(freqs, quantize(probs.copy(), precision=precision))  # deterministic
    # float32 input is exact in float64, so the same values as float64 give the same integers
    assert np.array_equal(freqs, quantize(probs.astype(np.float64), precision=precision))


def test_quantize_recipe_and_leftover_to_first_max():
    freqs = quantize(np.array([0.5, 0.5]))
    assert freqs.tolist() == [2**23, 2**23]
    probs = np.array([0.2, 0.4, 0.4])
    freqs = quantize(probs)
    floors = np.floor(probs * (2**PRECISION - 3)).astype(np.int64) + 1
    leftover = 2**PRECISION - floors.sum()
    assert freqs.tolist() == [floors[0], floors[1] + leftover, floors[2]]


def test_quantize_renormalises_clips_and_keeps_leading_axes():
    probs = np.random.default_rng(0).random((2, 3, 5))
    assert quantize([[0.2, 0.2]]).tolist() == [[2**23, 2**23]]  # renormalised, not the leftover to the first
    assert quantize(probs).shape == (2, 3, 5)
    assert np.array_equal(quantize([[-0.5, 1.0, 1.0]]), quantize([[0.0, 0.5, 0.5]]))
    assert np.array_equal(quantize(np.asfortranarray(probs[0])), quantize(probs[0].copy()))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_rejects_non_finite(bad):
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize(np.array([[0.5, bad, 0.5]]))


def test_quantize_rejects_unusable_rows():
    with pytest.raises(ValueError, match="all zeros"):
        quantize(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="raise precision"):
        quantize(np.ones(300), precision=8)


def test_quantize_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    logits = torch.randn(4, 256, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits, dim=-1)
    assert np.array_equal(quantize(probs), quantize(probs.numpy()))
    assert np.array_equal(quantize(probs.requires_grad_()), quantize(probs.detach().numpy()))


def test_ideal_bits_is_exact_code_length():
    freqs = quantize(np.full((10, 256), 1 / 256))
    assert ideal_bits(freqs, np.arange(10)) == pytest.approx(80.0, abs=1e-9)
    freqs = np.array([[2**23, 2**22, 2**22]])
    assert ideal_bits(freqs, np.array([2])) == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------


@FAST
@given(
    kind=st.sampled_from(KINDS),
    num_symbols=st.sampled_from([1, 2, 5, 16, 17, 256, 300]),
    num_streams=st.integers(1, 40),
    max_steps=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_streams_of_different_lengths(kind, num_symbols, num_streams, max_steps, seed):
    rng = np.random.default_rng(seed)
    probs = make_probs(kind, (max_steps, num_streams, num_symbols), rng)
    freqs = quantize(probs)  # (T, B, V)
    symbols = sample_symbols(probs, rng)  # (T, B)
    lengths = rng.integers(0, max_steps + 1, size=num_streams)
    lengths[rng.integers(num_streams)] = max_steps  # some stream runs the whole way
    streams, decoded = round_trip(freqs, symbols, lengths)
    running = np.arange(max_steps)[:, None] < lengths
    assert np.array_equal(decoded, np.where(running, symbols, 0))
    for stream, length in enumerate(lengths):
        expected = reference_encode(freqs[:length, stream], symbols[:length, stream])
        assert streams[stream] == expected  # byte for byte, carries included
        if length == 0:
            assert streams[stream] == b""


@pytest.mark.parametrize("precision", [1, 8, 16, 24, 32])
def test_round_trip_at_every_precision(precision):
    rng = np.random.default_rng(precision)
    probs = make_probs("dirichlet", (60, 8, 2 if precision == 1 else 37), rng)
    freqs = quantize(probs, precision=precision)
    symbols = sample_symbols(probs, rng)
    encoder = BatchEncoder(8, precision=precision)
    for step in range(60):
        encoder.encode(freqs[step], symbols[step])
    streams = encoder.finish()
    decoder = BatchDecoder(streams, precision=precision)
    assert np.array_equal(np.stack([decoder.decode(f) for f in freqs]), symbols)
    assert streams[3] == reference_encode(freqs[:, 3], symbols[:, 3], precision=precision)


def test_empty_streams_and_a_single_symbol():
    assert BatchEncoder(3).finish() == [b"", b"", b""]
    freqs = quantize(np.array([[0.1, 0.2, 0.7]]))
    for symbol in range(3):
        data = encode_symbols(freqs, [symbol])
        assert len(data) <= 4
        assert decode_symbols(data, freqs).tolist() == [symbol]
    decoder = BatchDecoder([b"", b""])  # decoding past the end of empty streams gives the zero-padded point
    assert decoder.decode(quantize(np.full((2, 4), 0.25))).tolist() == [0, 0]


def test_no_active_stream_changes_nothing():
    encoder = BatchEncoder(2)
    encoder.encode(np.zeros((2, 3), dtype=np.int64), np.array([7, -1]), active=np.array([False, False]))
    assert encoder.finish() == [b"", b""]


def test_size_within_a_tiny_margin_of_ideal_for_long_streams():
    rng = np.random.default_rng(1)
    steps, num_streams = 3000, 4
    logits = rng.standard_normal((steps, num_streams, 256)) / 0.3
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    freqs = quantize(probs)
    symbols = sample_symbols(probs, rng)
    encoder = BatchEncoder(num_streams)
    for step in range(steps):
        encoder.encode(freqs[step], symbols[step])
    committed = encoder.code_length_bits()  # (B,) before the flush
    streams = encoder.finish()
    ideal = ideal_bits(freqs, symbols)
    assert ideal <= committed.sum() <= ideal * 1.0005  # the coding itself: under 0.05 % over ideal
    actual = 8 * sum(len(data) for data in streams)
    assert committed.sum() <= actual + 8 * num_streams  # dropping trailing zero bytes can undercut it
    assert actual <= committed.sum() + 32 * num_streams  # the flush: under 32 bits a stream


def test_rows_of_inactive_streams_are_ignored():
    rng = np.random.default_rng(2)
    probs = make_probs("dirichlet", (30, 3, 16), rng)
    freqs = quantize(probs)
    symbols = sample_symbols(probs, rng)
    active = np.array([True, False, True])
    garbage_freqs, garbage_symbols = freqs.copy(), symbols.copy()
    garbage_freqs[:, 1] = -7  # not a distribution at all
    garbage_symbols[:, 1] = 99  # out of range
    encoder = BatchEncoder(3)
    for step in range(30):
        encoder.encode(garbage_freqs[step], garbage_symbols[step], active=active)
    streams = encoder.finish()
    assert streams[1] == b""
    decoder = BatchDecoder(streams)
    decoded = np.stack([decoder.decode(garbage_freqs[step], active=active) for step in range(30)])
    assert np.array_equal(decoded, np.where(active, symbols, 0))


def test_invalid_inputs_are_rejected():
    freqs = quantize(np.full((2, 4), 0.25))
    encoder = BatchEncoder(2)
    with pytest.raises(ValueError, match="shape"):
        encoder.encode(freqs[:1], np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        encoder.encode(freqs, np.array([0, 4]))
    with pytest.raises(ValueError, match="total"):
        encoder.encode(freqs * 2, np.array([0, 1]))
    encoder.finish()
    with pytest.raises(ValueError, match="finished"):
        encoder.encode(freqs, np.array([0, 1]))
    with pytest.raises(ValueError, match="precision"):
        BatchEncoder(2, precision=33)


# --------------------------------------------------------------------------------------------------
# Carries
# --------------------------------------------------------------------------------------------------


def test_carries_happen_and_round_trip(monkeypatch):
    """Symbols at the top of the cdf push low towards 2**64; count the carries this causes."""
    carried = []
    propagate = coder._propagate_carry

    def counting(words, num_words, streams):
        carried.append(len(streams))
        propagate(words, num_words, streams)

    monkeypatch.setattr(coder, "_propagate_carry", counting)
    rng = np.random.default_rng(5)
    steps, num_streams = 400, 16
    probs = make_probs("dirichlet", (steps, num_streams, 8), rng)
    freqs = quantize(probs)
    symbols = np.where(rng.random((steps, num_streams)) < 0.7, 7, sample_symbols(probs, rng))  # mostly the top symbol
    streams, decoded = round_trip(freqs, symbols, np.full(num_streams, steps))
    assert sum(carried) > 50
    assert np.array_equal(decoded, symbols)
    for stream in range(num_streams):
        assert streams[stream] == reference_encode(freqs[:, stream], symbols[:, stream])


def test_propagate_carry_ripples_through_ffffffff_words():
    words = np.array(
        [[0x12345678, 0xFFFFFFFF, 0xFFFFFFFF], [0x00000001, 0x00000002, 0], [0, 0xFFFFFFFF, 0]], dtype=np.uint32
    )
    num_words = np.array([3, 2, 2])
    coder._propagate_carry(words, num_words, np.array([0, 1, 2]))
    assert words.tolist() == [[0x12345679, 0, 0], [1, 3, 0], [1, 0, 0]]


def test_encoder_carry_into_ffffffff_word_matches_reference():
    """Put one stream in a state whose next symbol carries through a 0xFFFFFFFF word, then finish."""
    encoder = BatchEncoder(1)
    encoder._words[0, :2] = [0x00000001, 0xFFFFFFFF]
    encoder._num_words[0] = 2
    low, range_ = 2**64 - 2**35, 2**40  # the interval [L, L + range) crosses the next 2**64 boundary
    encoder._low[0], encoder._range[0] = low, range_
    freqs = quantize(np.full((1, 4), 0.25))
    encoder.encode(freqs, np.array([3]))  # low += 2**16 * 3 * 2**22 > 2**64: a carry
    assert encoder._words[0, :2].tolist() == [0x00000002, 0x00000000]
    encoder.encode(freqs, np.array([1]))
    whole_low = ((0x00000001 << 32 | 0xFFFFFFFF) << 64) + low
    expected = reference_encode([freqs[0], freqs[0]], [3, 1], low=whole_low, range_=range_, words=2)
    assert encoder.finish() == [expected]


# ------------------------------------------------------------------------------------------ binary coding

def binary_rows(p1: np.ndarray, precision: int) -> np.ndarray:
    """The (B, 2) frequency rows [2**precision - p1, p1] that encode_binary codes with."""
    return np.stack([(1 << precision) - p1, p1], axis=-1).astype(np.int64)


@pytest.mark.parametrize("precision", [16, 24])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_coding_writes_what_encode_writes_and_decodes_back(precision, seed):
    """encode_binary / decode_binary are encode / decode on the rows [2**precision - p1, p1]: the same
    words from the same calls (skewed p1, so carries and renormalisations happen), under random masks."""
    rng = np.random.default_rng(seed)
    steps, num_streams, one = 600, 9, 1 << precision
    p1 = np.where(rng.random((steps, num_streams)) < 0.5, rng.integers(1, 64, (steps, num_streams)),
                  rng.integers(1, one, (steps, num_streams)))
    p1 = np.where(rng.random((steps, num_streams)) < 0.2, one - p1, p1)
    bits = (rng.random((steps, num_streams)) < p1 / one).astype(np.int64)
    bits[rng.random((steps, num_streams)) < 0.05] ^= 1  # some improbable bits: long words, carries
    active = rng.random((steps, num_streams)) < 0.85
    binary, general = BatchEncoder(num_streams, precision), BatchEncoder(num_streams, precision)
    for t in range(steps):
        binary.encode_binary(p1[t], bits[t], active[t])
        general.encode(binary_rows(p1[t], precision), bits[t], active[t])
        assert np.array_equal(binary._low, general._low) and np.array_equal(binary._range, general._range)
    streams = binary.finish()
    assert streams == general.finish()
    decoder, reference = BatchDecoder(streams, precision), BatchDecoder(streams, precision)
    for t in range(steps):
        got = decoder.decode_binary(p1[t], active[t])
        assert np.array_equal(got, np.where(active[t], bits[t], 0)), t
        assert np.array_equal(got, reference.decode(binary_rows(p1[t], precision), active[t]))


def test_binary_carry_into_ffffffff_word():
    """The compiled loop's carry ripples through a 0xFFFFFFFF word like _propagate_carry."""
    encoders = [BatchEncoder(1, 16), BatchEncoder(1, 16)]
    for encoder in encoders:
        encoder._words[0, :2] = [0x00000001, 0xFFFFFFFF]
        encoder._num_words[0] = 2
        encoder._low[0], encoder._range[0] = 2**64 - 2**35, 2**40
    p1 = np.array([1 << 14])
    encoders[0].encode_binary(p1, np.array([1]))  # cum = 3 * 2**14, scale = 2**24: low passes 2**64
    encoders[1].encode(binary_rows(p1, 16), np.array([1]))
    assert encoders[0]._words[0, :2].tolist() == [0x00000002, 0x00000000]
    assert encoders[0].finish() == encoders[1].finish()


def test_binary_coding_rejects_bad_input_and_changes_nothing():
    encoder = BatchEncoder(3, 16)
    encoder.encode_binary(np.array([100, 200, 300]), np.array([0, 1, 0]))
    state = (encoder._low.copy(), encoder._range.copy(), encoder._num_words.copy())
    for p1, bits in (([100, 0, 300], [0, 1, 0]), ([100, 1 << 16, 300], [0, 1, 0]), ([100, 200, 300], [0, 2, 0])):
        with pytest.raises(ValueError, match="stream 1"):
            encoder.encode_binary(np.array(p1), np.array(bits))
        assert all(np.array_equal(a, b) for a, b in zip(state, (encoder._low, encoder._range, encoder._num_words)))
    encoder.encode_binary(np.array([100, 0, 300]), np.array([0, 1, 0]), active=np.array([True, False, True]))
    with pytest.raises(ValueError, match="shape"):
        encoder.encode_binary(np.array([1, 2]), np.array([0, 1]))
    decoder = BatchDecoder(encoder.finish(), 16)
    with pytest.raises(ValueError, match="stream 2"):
        decoder.decode_binary(np.array([100, 200, 0]))
    # an impossible code point (value in [scale 2**16, range), as in a damaged stream) is refused like decode's
    decoder._range[1], decoder._value[1] = 2**32 + 5, 2**32 + 1
    for decode in (lambda: decoder.decode_binary(np.array([100, 200, 300])),
                   lambda: decoder.decode(binary_rows(np.array([100, 200, 300]), 16))):
        with pytest.raises(coder.StreamError, match="impossible code point"):
            decode()
