"""The context mixer (codec.mixing): exact encoder/decoder symmetry of every prediction, round trips through
the codec, determinism across processes and thread settings, and integer-only kernels."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import blm_lab.codec.mixing as M
from blm_lab.codec.mixing import engine
from blm_lab.codec.mixing import tables as T
from blm_lab.codec import container
from blm_lab.codec.coder import BatchDecoder, BatchEncoder
from blm_lab.codec.neural import compress, compress_with_stats, decompress
from blm_lab.gpt import BytesGPTConfig
from conftest import train_briefly

SMALL = M.MixerConfig(hash_bits=12, match_bits=12)  # small tables: cheap mixers for the direct tests
SMALL2 = M.MixerConfig.revision2(hash_bits=12, match_bits=12)  # revision 2's models, small tables
EXTRAS = M.MixerConfig.revision2(hash_bits=12, match_bits=12, selectors=SMALL2.selectors + ("pixels",),
                                 contexts=SMALL2.contexts + M.config.INDIRECT_CONTEXTS + M.config.RECORD_CONTEXTS)
CONFIGS = pytest.mark.parametrize("config", [SMALL, SMALL2, EXTRAS], ids=["rev1", "rev2", "selectable-extras"])
REVISION1_FINGERPRINT = "82a22076"  # what every file of revision 1 records: it never changes
CANTERBURY = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "canterbury"
PINNED_TABLES = "58c70c673cc5197d63b35882c12891b43632c51f9a9e286aa58397c60136b07e"
TEXT = (b"Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
        b"once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations "
        b"in it, 'and what is the use of a book,' thought Alice 'without pictures or conversations?'\n") * 12


def lockstep(data: bytes, segment_bytes: int, config=SMALL, neural_freqs=None, masks=None, steps_per_call=1):
    """Code ``data`` with a ContextMixer and decode it again, as codec.neural's loop does; returns the
    encoder's and the decoder's p1 (steps, B, 8) from the trace hook, with their mixers (and checks the
    bytes came back). ``masks`` (steps, B): which streams are active at each step."""
    n = len(data)
    B = -(-n // segment_bytes)
    known = np.zeros(B * segment_bytes, dtype=np.uint8)
    known[:n] = np.frombuffer(data, dtype=np.uint8)
    known = known.reshape(B, segment_bytes)
    lengths = np.minimum(segment_bytes, n - np.arange(B) * segment_bytes)
    steps = int(lengths.max())
    records = []
    for decoding in (False, True):
        mixer = M.ContextMixer(B, config, neural=neural_freqs is not None)
        coder = BatchDecoder(streams, 16) if decoding else BatchEncoder(B, 16)
        trace = M.StepTrace.new(steps, B, neural_share=False)
        symbols = np.zeros((B, steps), dtype=np.uint8) if decoding else known[:, :steps].copy()
        if masks is None and neural_freqs is None:
            for first in range(0, steps, steps_per_call):
                mixer.code(coder, first, min(first + steps_per_call, steps), lengths, symbols, trace=trace)
        else:
            for t in range(steps):
                step_lengths = lengths if masks is None else np.where(masks[t], steps, 0)
                mixer.code(coder, t, t + 1, step_lengths, symbols,
                           freqs=neural_freqs[t] if neural_freqs is not None else None, trace=trace)
        if not decoding:
            streams = coder.finish()
        else:
            valid = np.arange(steps)[None, :] < lengths[:, None] if masks is None else masks.T
            assert np.array_equal(symbols[valid], known[:, :steps][valid])
        records.append((trace.p1, mixer))
    return records


def fake_neural(rng, steps, B):
    """Integer frequencies totalling 2**24 per row, some very confident."""
    raw = rng.integers(1, 1000, size=(steps, B, 256)).astype(np.int64)
    np.put_along_axis(raw, rng.integers(0, 256, size=(steps, B))[..., None], 10**7, axis=-1)
    f = raw * ((1 << 24) - 256) // raw.sum(-1, keepdims=True) + 1
    f[..., 0] += (1 << 24) - f.sum(-1)
    assert (f >= 1).all() and (f.sum(-1) == 1 << 24).all()
    return f


# ----------------------------------------------------------------------------- tables

def test_tables_are_pinned_integers():
    """The tables are the same integers everywhere (decimal arithmetic and integer rules, never libm)."""
    assert M.table_digest() == PINNED_TABLES
    for table in (T.SQUASH, T.STRETCH, T.LOG2, T.NEX, T.STATE_INIT, T.DT):
        assert np.issubdtype(table.dtype, np.integer)
    assert T.SQUASH.min() >= 1 and T.SQUASH.max() <= T.PONE - 1
    assert np.all(np.diff(T.SQUASH) >= 0) and np.all(np.diff(T.STRETCH[1:]) >= 0)


def test_state_machine_counts_and_discounts():
    s = 0
    for _ in range(100):
        s = T.NEX[s, 1]
    assert T.STATE_N1[s] == 40 and T.STATE_N0[s] == 0
    s = T.NEX[s, 0]
    assert T.STATE_N0[s] == 1 and T.STATE_N1[s] < 40  # the opposite count is discounted


# ----------------------------------------------------------------------------- symmetry

@CONFIGS
@pytest.mark.parametrize("segment_bytes", [len(TEXT) + 512, 500, 977, 59])
def test_encoder_and_decoder_predict_the_same_p1_at_every_bit(segment_bytes, config):
    """Both sides see the same p1 at every bit of every stream, also where the last segment is short (its
    stream finishes early and is masked out of the remaining steps)."""
    data = TEXT + bytes(range(256)) * 2
    (enc, _), (dec, _) = lockstep(data, segment_bytes, config)
    assert enc.shape[2] == 8 and np.array_equal(enc, dec)
    assert enc.max() <= T.PONE - 1 and (enc > 0).sum() == 8 * len(data)  # every coded bit recorded, only those


def test_the_trace_hook_reports_what_each_byte_cost():
    """StepTrace.bits is -log2 of the probabilities the recorded p1 gave each coded bit."""
    data = TEXT[:3000]
    B, steps = 3, 1000
    mixer = M.ContextMixer(B, SMALL)
    trace = M.StepTrace.new(steps, B, neural_share=False)
    symbols = np.frombuffer(data, dtype=np.uint8).reshape(B, steps).copy()
    mixer.code(BatchEncoder(B, 16), 0, steps, np.full(B, steps), symbols, trace=trace)
    bit = (symbols.T[..., None] >> np.arange(7, -1, -1)) & 1  # (steps, B, 8)
    p1 = trace.p1.astype(np.float64)
    expected = (16 - np.log2(np.where(bit == 1, p1, 65536 - p1))).sum(-1)
    assert np.allclose(trace.bits, expected, rtol=0, atol=1e-9)


@CONFIGS
def test_steps_per_call_do_not_change_anything(config):
    """One compiled call per byte step or many: the same p1 at every bit, the same tables."""
    data = TEXT + bytes(range(256))
    (one, m1), _ = lockstep(data, 500, config, steps_per_call=1)
    (many, m2), _ = lockstep(data, 500, config, steps_per_call=97)
    assert np.array_equal(one, many)
    a1, a2 = m1.arrays(), m2.arrays()
    for name in a1:
        if name != "streams.buf":  # the history buffer grows by different steps: compare what was written
            assert np.array_equal(a1[name], a2[name]), name
    assert np.array_equal(a1["streams.buf"][:len(data)], a2["streams.buf"][:len(data)])


@CONFIGS
def test_arbitrary_active_masks_keep_every_table_identical(config):
    """Streams pausing and resuming at random: predictions and every table of the shared state agree."""
    rng = np.random.default_rng(3)
    B, steps = 6, 250
    data = (TEXT * 2)[:B * steps]
    masks = rng.random((steps, B)) < 0.7
    for neural in (None, fake_neural(rng, steps, B)):
        (enc, m1), (dec, m2) = lockstep(data, steps, config, neural_freqs=neural, masks=masks)
        assert np.array_equal(enc, dec)
        a1, a2 = m1.arrays(), m2.arrays()
        assert a1.keys() == a2.keys() and len(a1) > 30
        for name in a1:
            assert np.array_equal(a1[name], a2[name]), name


def test_neural_input_dominates_at_the_start():
    """A fresh mixer follows the model: a confident byte prediction sets every one of its bits."""
    B = 4
    mixer = M.ContextMixer(B, SMALL, neural=True)
    freqs = np.full((B, 256), 1, dtype=np.int64)
    freqs[:, 0x41] = (1 << 24) - 255  # the model is sure the byte is 'A' (0b01000001)
    trace = M.StepTrace.new(1, B, neural_share=True)
    mixer.code(BatchEncoder(B, 16), 0, 1, np.ones(B, dtype=np.int64), np.full((B, 1), 0x41, dtype=np.uint8),
               freqs=freqs, trace=trace)
    for k in range(8):
        p1 = trace.p1[0, :, k]
        assert (p1 > 60000).all() if (0x41 >> (7 - k)) & 1 else (p1 < 5536).all()
    assert (trace.share[0] > 0.5).all() and (trace.share[0] <= 1).all()  # the neural inputs carry layer 1


# ----------------------------------------------------------------------------- through the codec

@pytest.fixture(scope="module")
def model():
    return train_briefly(TEXT, BytesGPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32))


@pytest.mark.parametrize("revision", sorted(M.REVISIONS))
@pytest.mark.parametrize("data", [b"", b"\x00", b"a", bytes(5000), b"\xff" * 3000, TEXT],
                         ids=["empty", "zero", "a", "zeros", "ffs", "text"])
@pytest.mark.parametrize("segments", [1, 3])
def test_context_mixing_alone_round_trips(data, segments, revision):
    blob = compress(data, None, segments=segments, mixer_revision=revision)
    assert decompress(blob) == data
    assert len(blob) <= len(data) + container.stored_overhead(len(data))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.sampled_from([b"ab", b"abc", b"\x00\x01", b"xyz ", b"\xff", b"\n  a\n"]),
                     max_size=300).map(b"".join),
       segments=st.integers(min_value=1, max_value=6), revision=st.sampled_from(sorted(M.REVISIONS)))
def test_context_mixing_round_trips_repetitive_inputs(data, segments, revision):
    assert decompress(compress(data, None, segments=segments, mixer_revision=revision)) == data


# ----------------------------------------------------------------------------- revisions

def test_revision_1_keeps_its_fingerprint_and_revision_2_has_its_own():
    """Fields added for revision 2 leave revision 1's fingerprint (the one its files record) as it was."""
    assert M.MixerConfig().fingerprint()[:4].hex() == REVISION1_FINGERPRINT
    assert M.REVISIONS[1] == M.MixerConfig()
    fps = {r: c.fingerprint()[:4] for r, c in M.REVISIONS.items()}
    assert len(set(fps.values())) == len(fps) and all(M.revision_of(fp) == r for r, fp in fps.items())
    assert M.revision_of(b"\0\0\0\0") is None


@pytest.mark.parametrize("segment_bytes", [None, 700, 333])
def test_revision_2_with_a_model_round_trips_and_records_its_revision(model, segment_bytes):
    data = TEXT[:1500] + b"\n".join(b"%5d|%-8s|" % (i, b"x" * (i % 7)) for i in range(60)) + TEXT[1500:2100]
    kw = {} if segment_bytes is None else {"segment_bytes": segment_bytes}
    blobs = {r: compress(data, model, mixer_revision=r, **kw) for r in M.REVISIONS}
    for r, blob in blobs.items():
        header, _ = container.unpack(blob)
        assert M.revision_of(header.mixer_fingerprint) == r
        assert decompress(blob, model) == data
    assert blobs[1] != blobs[2]


def test_an_unknown_mixer_revision_is_refused_before_any_work(monkeypatch):
    from blm_lab.codec import neural
    from blm_lab.errors import CompressionError, ConfigError

    header, parts = container.unpack(compress(TEXT, None, mixer_revision=2))
    header.mixer_fingerprint = b"\x01\x02\x03\x04"
    blob = container.pack(header, parts)
    monkeypatch.setattr(neural, "_coding", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(CompressionError, match="unknown context mixer revision"):
        decompress(blob)
    with pytest.raises(ConfigError, match="mixer revision 9"):
        compress(TEXT, None, mixer_revision=9)


def test_mixing_with_the_model_beats_either_alone(model):
    data = TEXT[:2000] + b"ALICE!" * 100 + TEXT[2000:]
    sizes = {}
    for name, kw in {"model": dict(mixing="none"), "cm": dict(model_off=True), "both": {}}.items():
        blob, stats = compress_with_stats(data, None if kw.pop("model_off", False) else model, segments=3, **kw)
        assert decompress(blob, model) == data
        header, _ = container.unpack(blob)
        assert not header.stored
        sizes[name] = len(blob)
    assert sizes["both"] < min(sizes["model"], sizes["cm"]), sizes


def test_stored_segments_still_feed_the_shared_model(model):
    """A stored segment's bytes are known to the decoder: it gives them to the mixer, so the state agrees."""
    rng = np.random.default_rng(9)
    noise = rng.integers(0, 256, 700, dtype=np.uint8).tobytes()
    data = TEXT[:700] + noise + TEXT[700:1400] + noise
    blob, stats = compress_with_stats(data, model, segment_bytes=700)
    header, _ = container.unpack(blob)
    assert header.mixing == "cm" and header.stored_segments[1] and stats.stored_segments >= 1
    assert decompress(blob, model) == data


def test_a_file_mixed_with_a_model_needs_it():
    blob = compress(TEXT, None)
    assert decompress(blob, None) == TEXT
    header, _ = container.unpack(blob)
    assert header.numerics == "none" and header.model_fingerprint == bytes(16)


def test_a_model_file_decompressed_without_the_model_is_refused(model):
    from blm_lab.errors import CompressionError

    with pytest.raises(CompressionError, match="pass the checkpoint"):
        decompress(compress(TEXT, model), None)


# ----------------------------------------------------------------------------- determinism

CHILD = """
import hashlib, sys
from blm_lab.codec.neural import compress
data = open(sys.argv[1], 'rb').read()
print(hashlib.sha256(compress(data, None, segment_bytes=3000)).hexdigest())
"""


@pytest.mark.slow
def test_identical_across_processes_and_thread_settings(tmp_path):
    path = tmp_path / "input.bin"
    extra = (CANTERBURY / "sum").read_bytes()[:8000] if CANTERBURY.is_dir() else bytes(range(256)) * 30
    path.write_bytes(TEXT + extra)
    digests = {hashlib.sha256(compress(path.read_bytes(), None, segment_bytes=3000)).hexdigest()}
    for threads in ("1", "2", "4"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   PYTHONHASHSEED=threads)
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


# ----------------------------------------------------------------------------- integers only

def _float_variables(py_func, signatures):
    """Variables typed float/complex (scalars or array dtypes) when py_func is compiled for signatures."""
    from numba import njit
    from numba.core import types

    fresh = njit(cache=False)(py_func)  # cached compiles carry no type annotations: type it afresh
    for sig in signatures:
        fresh.compile(sig)
    bad, count = [], 0
    for sig in fresh.signatures:
        # inline="always" helpers are inlined into the IR, so their variables are typed here too
        for var, ty in fresh.overloads[sig].type_annotation.typemap.items():
            count += 1
            if isinstance(ty, (types.Float, types.Complex)) or isinstance(getattr(ty, "dtype", None),
                                                                          (types.Float, types.Complex)):
                bad.append((var, str(ty)))
    return bad, count


def test_the_float_check_catches_floats():
    def uses_float(a):
        s = 0
        for i in range(a.shape[0]):
            s += a[i] // 2
        return s * 0.5  # one float

    def mixes_uint64(a):
        return a[0] + np.uint64(1)  # int64 + uint64 is float64 in numba

    assert _float_variables(uses_float, ["float64(int64[::1])"])[0]
    assert _float_variables(mixes_uint64, ["float64(int64[::1])"])[0]


def _reachable_kernels(fn, sig, seen):
    """fn typed for sig, then every numba kernel it calls, with the signatures it calls them with."""
    from numba import njit
    from numba.core import ir, types

    if (fn.py_func, sig) in seen:
        return
    seen[(fn.py_func, sig)] = fn
    fresh = njit(cache=False)(fn.py_func)
    fresh.compile(sig)
    annotation = fresh.overloads[fresh.signatures[0]].type_annotation
    for expr, call in annotation.calltypes.items():
        if isinstance(expr, ir.Expr) and expr.op == "call":
            callee = annotation.typemap.get(expr.func.name)
            if isinstance(callee, types.Dispatcher):
                _reachable_kernels(callee.dispatcher, tuple(call.args), seen)


@pytest.mark.slow
def test_kernels_are_integer_only():
    """No numba kernel that shapes p1 has a float-typed variable anywhere: the three per-bit and per-byte
    steps of the engine, the components inlined into them, and every kernel they call (inferred types of
    every variable; the coding loop around them uses floats only for its statistics)."""
    from numba import typeof

    mixer = M.ContextMixer(2, EXTRAS, neural=True)  # every component, every selectable model
    state, active = mixer.state, np.ones(2, dtype=np.bool_)
    roots = {engine.predict_bit: (0, active, state, T.TABLES, np.zeros((2, 2), dtype=np.int64)),
             engine.update_bit: (3, np.zeros(2, dtype=np.int64), active, state, T.TABLES),
             engine.end_byte: (0, active, state),
             M.neural_input.cum_freqs: (np.ones((2, 256), dtype=np.int64), state.neural.cum)}
    seen = {}
    for fn, args in roots.items():
        _reachable_kernels(fn, tuple(typeof(a) for a in args), seen)
    names = {fn.py_func.__module__.rsplit(".", 1)[-1] + "." + fn.__name__ for fn in seen.values()}
    # the per-bit components (inline="always") are typed inside the engine's steps; the rest are called
    assert {"engine.predict_bit", "engine.update_bit", "engine.end_byte", "contexts.find_bucket",
            "contexts.byte_contexts", "match.advance", "match.find", "record.vote", "record.end_byte"} <= names, names
    checked = 0
    for (py_func, sig) in seen:
        bad, count = _float_variables(py_func, [sig])
        assert not bad, (py_func.__name__, bad)
        checked += count
    assert checked > 500


def test_kept_tables_are_rebuilt_when_their_file_is_damaged():
    from blm_lab.codec.mixing import tables

    expected = tables._squash_table()
    assert np.array_equal(tables._kept("squash", tables._squash_table), expected)  # kept or built
    kept = tables._kept_path("squash")  # this source's file (an edited checkout keeps older ones beside it)
    kept.write_bytes(kept.read_bytes()[:100])  # truncated
    assert np.array_equal(tables._kept("squash", tables._squash_table), expected)
    with np.load(kept) as again:  # and written whole again
        assert np.array_equal(again["table"], expected)
