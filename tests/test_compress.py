"""Model-driven compression: exact round trips, the container's checks, and the CLI."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import blm_lab
from blm_lab.codec import container
from blm_lab.codec.mixing import revision_of
from blm_lab.checkpoint import save_checkpoint
from blm_lab.codec.neural import compress, compress_with_stats, decompress, default_segment_bytes, model_fingerprint
from blm_lab.errors import CompressionError, ContainerError
from blm_lab.scoring import window_bits
from blm_lab.gpt import BytesGPT, BytesGPTConfig
from conftest import train_briefly

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _tiny_model(seed=0, block_size=8):
    torch.manual_seed(seed)
    return BytesGPT(BytesGPTConfig(block_size=block_size, n_layer=1, n_head=2, n_embd=16)).eval()


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def trained_model():
    """A tiny model trained for a moment on English, so that text compresses below 8 bits per byte."""
    return train_briefly(b"the cat sat on the mat. the dog sat on the log. " * 40,
                         BytesGPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32))


CAT_TEXT = b"the cat sat on the mat. the dog sat on the log. " * 8  # what trained_model knows: it codes, not stores

SPECIAL_INPUTS = {
    "empty": b"",
    "one byte": b"x",
    "all 256 values": bytes(range(256)),
    "long run": b"\x00" * 3000,
    "random": random.Random(1).randbytes(2000),
    "text": b"It was the best of times, it was the worst of times.\n" * 30,
    "binary-ish": np.arange(1500, dtype=np.uint32).tobytes(),
}


@pytest.mark.parametrize("name", SPECIAL_INPUTS)
def test_round_trip_special_inputs(model, name):
    data = SPECIAL_INPUTS[name]
    blob = compress(data, model)
    assert decompress(blob, model) == data


@pytest.mark.parametrize("segment_bytes", [1, 7, 64, 100_000])
def test_round_trip_any_segmentation(trained_model, segment_bytes):
    data = random.Random(segment_bytes).randbytes(100) + b"the cat sat on the mat. " * 20
    blob, stats = compress_with_stats(data, trained_model, segment_bytes=segment_bytes)
    assert decompress(blob, trained_model) == data
    if segment_bytes == 1:  # one uniform byte plus a flush per stream never pays: the file is stored whole
        assert stats.numerics == "stored" and len(blob) == len(data) + container.stored_overhead(len(data))
    else:
        assert stats.segment_bytes == segment_bytes and stats.segments == -(-len(data) // segment_bytes)
        assert stats.numerics == "portable" and len(blob) < len(data)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=200), segments=st.integers(min_value=1, max_value=9))
def test_round_trip_property(model, data, segments):
    blob = compress(data, model, segments=segments)
    assert decompress(blob, model) == data


@pytest.mark.parametrize("numerics, rel", [("float", 1e-4), ("portable", 3e-3)])
def test_long_input_past_block_size_rolls_the_cache(trained_model, numerics, rel):
    data = b"the cat sat on the mat. the dog sat on the log. " * 30  # 1470 bytes, block_size 16
    blob, stats = compress_with_stats(data, trained_model, segments=1, numerics=numerics, mixing="none")
    assert decompress(blob, trained_model) == data
    assert stats.bits_per_byte < 4.0  # the model learnt the text; the cache keeps its context past block_size
    # the coder's ideal bits (one step at a time) equal the float model's full-sequence estimate: within float
    # rounding for the float numerics, within the integer model's quantisation for the portable ones
    assert stats.ideal_bits == pytest.approx(window_bits(data, trained_model, segment_bytes=len(data)), rel=rel)


def test_sizes_are_the_real_file_and_overhead_is_small(trained_model):
    data = b"the cat sat on the mat. the dog sat on the log. " * 40
    blob, stats = compress_with_stats(data, trained_model, segments=2)
    assert stats.compressed_bytes == len(blob)
    assert stats.bits_per_byte == pytest.approx(8 * len(blob) / len(data))
    assert stats.original_bytes == len(data)
    # the container header and the per-stream flush are the only costs over the ideal code length
    header_bytes = len(blob) - sum(container.unpack(blob)[0].stream_lengths)
    assert 8 * len(blob) - stats.ideal_bits < 8 * header_bytes + 2 * 64 + 0.01 * stats.ideal_bits


def test_default_segmentation_adapts_to_size():
    assert default_segment_bytes(1000) == 4096
    assert default_segment_bytes(100_000) == 4096
    assert default_segment_bytes(10_000_000) == -(-10_000_000 // 256)
    assert default_segment_bytes(10_000_000, with_model=False) == 10_000_000  # context mixing alone: one stream


def test_context_mixing_alone_codes_one_stream_by_default_and_explicit_segments_stay():
    data = CAT_TEXT * 3
    blob, stats = compress_with_stats(data)
    assert stats.segments == 1 and decompress(blob) == data
    assert compress_with_stats(data, segments=4)[1].segments == 4


def test_identical_inputs_give_identical_files(trained_model):
    data = CAT_TEXT
    assert compress(data, trained_model) == compress(data, trained_model)


# ----------------------------------------------------------------------------- container checks

def test_wrong_model_is_refused(trained_model):
    blob = compress(CAT_TEXT, trained_model)
    other = _tiny_model(seed=1)
    with pytest.raises(CompressionError, match="different model"):
        decompress(blob, other)


def test_fingerprint_sees_one_changed_weight(model):
    other = _tiny_model(seed=0)
    assert model_fingerprint(other) == model_fingerprint(model)
    with torch.no_grad():
        other.lm_head.weight[3, 3] += 1e-3
    assert model_fingerprint(other) != model_fingerprint(model)


def test_truncated_file(trained_model):
    blob = compress(CAT_TEXT, trained_model)
    for cut in (1, 5, len(blob) // 2, len(blob) - 1):
        with pytest.raises(ContainerError, match="truncated|magic"):
            decompress(blob[:cut], trained_model)


def test_trailing_garbage(trained_model):
    blob = compress(CAT_TEXT, trained_model)
    with pytest.raises(ContainerError, match="trailing"):
        decompress(blob + b"\x00", trained_model)


def test_wrong_magic(trained_model):
    blob = compress(CAT_TEXT, trained_model)
    with pytest.raises(ContainerError, match="magic"):
        decompress(b"XXXX" + blob[4:], trained_model)


def test_every_flipped_header_bit_is_caught(trained_model):
    blob = compress(CAT_TEXT, trained_model)
    header, streams = container.unpack(blob)
    header_len = len(blob) - sum(header.stream_lengths)
    for i in range(4, header_len):
        for bit in (0, 7):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            with pytest.raises((ContainerError, CompressionError)):
                decompress(bytes(bad), trained_model)


def test_flipped_payload_bits_never_give_wrong_output(trained_model):
    data = CAT_TEXT
    blob = compress(data, trained_model, segments=3)
    header, _ = container.unpack(blob)
    start = len(blob) - sum(header.stream_lengths)
    rng = random.Random(0)
    for _ in range(20):
        bad = bytearray(blob)
        i = rng.randrange(start, len(blob))
        bad[i] ^= 1 << rng.randrange(8)
        try:  # a flip in a stream's slack bits (inside its final interval) still decodes to the original
            assert decompress(bytes(bad), trained_model) == data
        except CompressionError as exc:
            assert "checksum" in str(exc) or "corrupted" in str(exc)


def test_different_compute_setting_is_refused_unless_forced(trained_model):
    data = CAT_TEXT
    blob = compress(data, trained_model, numerics="float")
    header, streams = container.unpack(blob)
    assert {"torch", "device", "dtype", "threads", "cpu_capability", "cpu", "blas", "onednn"} <= set(header.setting)
    header.setting["torch"] = "0.0.1-other"
    foreign = container.pack(header, streams)
    with pytest.raises(CompressionError, match="torch: file '0.0.1-other'"):
        decompress(foreign, trained_model)
    # the same arithmetic really ran, so with the flag the checksum accepts the output
    assert decompress(foreign, trained_model, allow_compute_mismatch=True) == data


# ----------------------------------------------------------------------------- the CLI

BLM_LAB = Path(sys.executable).parent / "blm-lab"  # the console script pip installed beside this interpreter


def _cli(*args, cwd=None):
    return subprocess.run([str(BLM_LAB), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def ckpt_pair(tmp_path_factory, trained_model):
    d = tmp_path_factory.mktemp("ckpts")
    for name, m in (("a.pt", trained_model), ("b.pt", _tiny_model(seed=5))):
        save_checkpoint(d / name, {"config": m.config.to_dict(), "model_state": m.state_dict()})
    return d / "a.pt", d / "b.pt"


@pytest.mark.slow
def test_cli_round_trip_json_and_errors(tmp_path, ckpt_pair):
    ckpt, other = ckpt_pair
    src = tmp_path / "in.txt"
    src.write_bytes(CAT_TEXT)  # coded, not stored: the model knows it
    packed, restored = tmp_path / "in.blmz", tmp_path / "out.txt"

    r = _cli("compress", src, packed, "--model", ckpt, "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("original_bytes", "compressed_bytes", "bits_per_byte", "ideal_bits", "overhead_percent",
                "seconds", "bytes_per_second"):
        assert key in summary
    assert summary["compressed_bytes"] == packed.stat().st_size
    assert summary["original_bytes"] == src.stat().st_size

    r = _cli("decompress", packed, restored, "--model", ckpt, "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert restored.read_bytes() == src.read_bytes()
    back = json.loads(r.stdout.strip().splitlines()[-1])
    # the decoder ran the identical computation, so it measures the identical ideal code length
    assert back["ideal_bits"] == pytest.approx(summary["ideal_bits"], rel=1e-9)
    assert back["compressed_bytes"] == summary["compressed_bytes"]

    # an existing output is not overwritten without --force
    before = restored.read_bytes()
    r = _cli("decompress", packed, restored, "--model", ckpt, "--quiet")
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    assert restored.read_bytes() == before
    assert _cli("decompress", packed, restored, "--model", ckpt, "--quiet", "--force").returncode == 0

    # the input is never the output, even with --force
    r = _cli("compress", src, src, "--model", ckpt, "--force", "--quiet")
    assert r.returncode == 2 and "is the input" in r.stderr
    assert src.read_bytes() == before

    # wrong model: clear error, no output file
    r = _cli("decompress", packed, tmp_path / "wrong.txt", "--model", other, "--quiet")
    assert r.returncode == 2 and "different model" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "wrong.txt").exists()

    # truncated file
    cut = tmp_path / "cut.blmz"
    cut.write_bytes(packed.read_bytes()[:-3])
    r = _cli("decompress", cut, tmp_path / "cut.txt", "--model", ckpt, "--quiet")
    assert r.returncode == 2 and "truncated" in r.stderr and not (tmp_path / "cut.txt").exists()

    # not a compressed file at all
    r = _cli("decompress", src, tmp_path / "x.txt", "--model", ckpt, "--quiet")
    assert r.returncode == 2 and "magic" in r.stderr

    # missing checkpoint and missing input
    r = _cli("compress", src, tmp_path / "y.blmz", "--model", tmp_path / "nope.pt", "--quiet")
    assert r.returncode == 2 and "checkpoint not found" in r.stderr
    r = _cli("compress", tmp_path / "nope.txt", tmp_path / "y.blmz", "--model", ckpt, "--quiet")
    assert r.returncode == 2 and "input file not found" in r.stderr
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written temp files left


def test_cli_mixer_revision(tmp_path):
    """``--mixer-revision 2`` writes a revision-2 file that decompresses with no option; an unknown one is refused."""
    src, packed, restored = tmp_path / "in.txt", tmp_path / "in.blmz", tmp_path / "out.txt"
    src.write_bytes(CAT_TEXT)
    assert _cli("compress", src, packed, "--mixer-revision", "2", "--quiet").returncode == 0
    header, _ = container.unpack(packed.read_bytes())
    assert revision_of(header.mixer_fingerprint) == 2
    assert _cli("decompress", packed, restored, "--quiet").returncode == 0 and restored.read_bytes() == CAT_TEXT
    r = _cli("compress", src, tmp_path / "x.blmz", "--mixer-revision", "7", "--quiet")
    assert r.returncode == 2 and "mixer revision 7" in r.stderr and not (tmp_path / "x.blmz").exists()


def test_package_level_api(model):
    data = b"package api"
    assert blm_lab.decompress(blm_lab.compress(data, model), model) == data


CANTERBURY = SHARED / "corpora" / "canterbury"


@pytest.mark.slow
@pytest.mark.skipif(not CANTERBURY.is_dir(), reason="../shared/corpora/canterbury is not present")
@pytest.mark.parametrize("name", ["grammar.lsp", "xargs.1", "sum", "kennedy.xls"])
def test_canterbury_files_round_trip(model, name):
    data = (CANTERBURY / name).read_bytes()[:6000]  # real text and binaries; a prefix keeps the test fast
    blob = compress(data, model, segments=4)
    assert decompress(blob, model) == data


# ----------------------------------------------------------------------------- never expanding

def _figure_file(fmt: str) -> bytes:
    """A real JPEG or PDF (its streams are already deflated or entropy-coded): made here with matplotlib."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow(rng.random((60, 80)), cmap="viridis")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=80)
    plt.close(fig)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["random", "jpeg", "pdf"])
def test_incompressible_input_grows_by_at_most_the_stored_overhead(trained_model, kind):
    data = {"random": lambda: random.Random(7).randbytes(4096), "jpeg": lambda: _figure_file("jpeg"),
            "pdf": lambda: _figure_file("pdf")}[kind]()
    blob, stats = compress_with_stats(data, trained_model)
    assert len(blob) <= len(data) + container.stored_overhead(len(data))
    assert container.stored_overhead(len(data)) <= 23
    assert decompress(blob, trained_model) == data


def test_a_segment_that_does_not_shrink_is_stored_as_it_is(trained_model):
    data = CAT_TEXT + random.Random(3).randbytes(len(CAT_TEXT)) + CAT_TEXT
    blob, stats = compress_with_stats(data, trained_model, segment_bytes=len(CAT_TEXT))
    header, streams = container.unpack(blob)
    assert header.stored_segments == [False, True, False] and streams[1] == data[len(CAT_TEXT):2 * len(CAT_TEXT)]
    assert stats.stored_segments == 1 and len(blob) < len(data)
    assert decompress(blob, trained_model) == data


def test_compress_restores_the_models_train_mode(trained_model):
    trained_model.train()
    try:
        blob = compress(CAT_TEXT, trained_model, numerics="float")
        assert trained_model.training
        assert decompress(blob, trained_model) == CAT_TEXT and trained_model.training
    finally:
        trained_model.eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_compress_portably(tmp_path, trained_model, dtype):
    """A float16/bfloat16 checkpoint loads upcast; its portable fingerprint and file are those of the upcast."""
    from blm_lab.checkpoint import load_checkpoint

    half = BytesGPT(trained_model.config)
    half.load_state_dict(trained_model.state_dict())
    half = half.to(dtype)
    path = save_checkpoint(tmp_path / "half.pt", {"config": half.config.to_dict(), "model_state": half.state_dict()})
    loaded, _ = load_checkpoint(path)
    upcast = BytesGPT(trained_model.config)
    upcast.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    assert compress(CAT_TEXT, loaded) == compress(CAT_TEXT, upcast)
    assert decompress(compress(CAT_TEXT, loaded), loaded) == CAT_TEXT


def test_claimed_length_beyond_the_cap_is_refused_before_decoding(trained_model):
    blob = compress(CAT_TEXT, trained_model)
    with pytest.raises(ContainerError, match="more than the limit"):
        decompress(blob, trained_model, max_output_bytes=len(CAT_TEXT) - 1)


def test_a_huge_segment_size_allocates_nothing_for_it(trained_model):
    """segment_bytes far beyond the data (one segment) is valid, from the caller or a crafted header: no
    allocation follows it, only the data's own size."""
    blob = compress(CAT_TEXT, trained_model, segment_bytes=2**50)
    header, streams = container.unpack(blob)
    assert header.segment_bytes == 2**50 and header.n_segments == 1
    assert decompress(blob, trained_model) == CAT_TEXT


@pytest.mark.parametrize("threads", ["0", "100000", "two", ""])
def test_a_crafted_thread_count_is_refused_before_decoding(trained_model, threads):
    """The float path pins the file's thread count; a value no machine could have is a corrupted header,
    never a torch.set_num_threads error halfway through."""
    header, streams = container.unpack(compress(CAT_TEXT, trained_model, numerics="float"))
    header.setting["threads"] = threads
    with pytest.raises(ContainerError, match="thread count"):
        decompress(container.pack(header, streams), trained_model)
