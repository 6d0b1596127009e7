"""The per-byte trace of a real compression (codec.trace.ByteTrace, filled through the coding loop's hook):
it sums to the ideal code length, leaves the file unchanged, and reads the same on the decoding side; and
the no-model path never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blm_lab.checkpoint import load_checkpoint
from blm_lab.codec.neural import compress_with_stats, decompress_with_stats

GOLDEN = Path(__file__).resolve().parent / "golden"
TEXT = (GOLDEN / "text.bin").read_bytes()  # text the tiny golden model compresses
MIXED = TEXT[:600] + bytes(range(256)) + TEXT[:400]  # with a segment nothing shrinks: stored


@pytest.fixture(scope="module")
def model():
    return load_checkpoint(GOLDEN / "tiny.pt")[0]


CASES = {"cm": (None, {}), "blm": ("model", {}), "model": ("model", {"mixing": "none"})}


@pytest.mark.parametrize("method", CASES)
@pytest.mark.parametrize("data", [TEXT, MIXED], ids=["text", "mixed"])
def test_trace_sums_to_the_ideal_code_length_and_changes_nothing(model, method, data):
    use, kw = CASES[method]
    m = model if use else None
    plain, _ = compress_with_stats(data, m, segment_bytes=256, **kw)
    blob, stats = compress_with_stats(data, m, segment_bytes=256, trace=True, **kw)
    assert blob == plain
    tr = stats.trace
    assert tr.method == method and tr.streams == stats.segments and len(tr) == len(data)
    assert abs(tr.total_bits - stats.ideal_bits) < 1e-9 * stats.ideal_bits
    assert np.array_equal(tr.data, np.frombuffer(data, dtype=np.uint8))
    assert np.array_equal(tr.segment, np.arange(len(data)) // 256) and np.array_equal(tr.position, np.arange(len(data)) % 256)
    assert (tr.coded_bits >= 0).all()
    if method == "cm":
        assert tr.model_bits is None and tr.neural_share is None
    else:
        first = tr.position == 0
        assert np.isnan(tr.model_bits[first]).all() and np.isfinite(tr.model_bits[~first]).all()
        assert (tr.neural_share is None) == (method == "model")
    if method == "blm":
        assert ((tr.neural_share >= 0) & (tr.neural_share <= 1)).all() and tr.neural_share.max() > 0
    if method == "model":  # coded directly: the coder spent the model's own surprisal (stored segments: 8 bits)
        coded = stats.stored_segments == 0
        ok = ~np.isnan(tr.model_bits)
        if coded:
            assert np.allclose(tr.coded_bits[ok], tr.model_bits[ok])
    for b in range(stats.segments):  # a stored segment costs 8 bits a byte
        if (tr.coded_bits[tr.segment == b] == 8.0).all():
            assert stats.stored_segments >= 1
    out, back = decompress_with_stats(blob, m, trace=True)
    assert out == data and np.allclose(back.trace.coded_bits, tr.coded_bits, rtol=0, atol=1e-12)
    frame = tr.to_frame()
    assert len(frame) == len(data) and list(frame.columns)[:4] == ["offset", "byte", "segment", "position"]
    assert frame["coded_bits"].sum() == pytest.approx(stats.ideal_bits, rel=1e-9)


def test_a_stored_file_traces_eight_bits_a_byte():
    data = np.random.default_rng(0).bytes(300)  # nothing to learn: the file is kept as it is
    _, stats = compress_with_stats(data, trace=True)
    assert stats.numerics == "stored" and (stats.trace.coded_bits == 8.0).all()
    assert stats.trace.total_bits == stats.ideal_bits


NO_TORCH = """
import sys, types
from pathlib import Path
# the codec without blm_lab/__init__ (which the package makes lazy separately): this is about the codec modules
pkg = types.ModuleType("blm_lab"); pkg.__path__ = [sys.argv[1]]; sys.modules["blm_lab"] = pkg
from blm_lab.codec.neural import compress, decompress
data = b"context mixing alone needs no torch " * 50
assert decompress(compress(data)) == data
print("torch" in sys.modules)
"""


def test_context_mixing_alone_never_imports_torch():
    import blm_lab

    out = subprocess.run([sys.executable, "-c", NO_TORCH, str(Path(blm_lab.__file__).parent)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
