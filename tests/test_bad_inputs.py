"""Bad input on the command line: one clear ``error:`` line, exit status 2, checked before any work, nothing
written and nothing lost. A bug (any other exception) keeps its traceback."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from blm_lab import cli, train_bytes
from blm_lab.checkpoint import FORMAT_VERSION, load_checkpoint, read_checkpoint, save_checkpoint
from blm_lab.errors import CheckpointError
from blm_lab.gpt import BytesGPT, BytesGPTConfig
from conftest import TINY_MODEL_FLAGS

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def run(main, argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_error(result, *fragments):
    code, out, err = result
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def checkpoint(tmp_path, tiny_config) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "model.pt", {"config": tiny_config.to_dict(),
                                                   "model_state": BytesGPT(tiny_config).state_dict()})


@pytest.fixture
def no_compression(monkeypatch):
    """Fail the test if the compressor is ever reached: path errors must come before any work."""
    import blm_lab.codec.neural as neural

    def reached(*args, **kwargs):
        raise AssertionError("compression ran although the paths were bad")

    monkeypatch.setattr(neural, "compress_with_stats", reached)
    monkeypatch.setattr(neural, "decompress_with_stats", reached)


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (chmod for a normal user; /sys for root)."""
    if not ROOT:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked
    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(probe)
    pytest.skip("no directory here refuses writes to root")


# ----------------------------------------------------------------------------- compress / decompress

def test_output_that_is_a_directory_is_refused_up_front_even_with_force(tmp_path, checkpoint, capsys, no_compression):
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello world")
    target = tmp_path / "out_dir"
    target.mkdir()
    for extra in ([], ["--force"]):
        assert_error(run(cli.main, ["compress", src, target, "--model", checkpoint, *extra], capsys),
                     "is a directory", str(target))
    assert list(target.iterdir()) == []


def test_unwritable_output_is_refused_up_front(tmp_path, checkpoint, capsys, no_compression):
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello world")
    locked = unwritable_dir(tmp_path)
    assert_error(run(cli.main, ["compress", src, locked / "out.blmz", "--model", checkpoint], capsys),
                 "cannot write into", "permission denied")


def test_unreadable_input_is_an_error_not_a_traceback(tmp_path, checkpoint, capsys, no_compression):
    if ROOT:
        src = Path("/proc/self/mem")  # a regular file whose read fails with EIO, even for root
    else:
        src = tmp_path / "secret.txt"
        src.write_bytes(b"x")
        src.chmod(0)
    result = run(cli.main, ["compress", src, tmp_path / "out.blmz", "--model", checkpoint], capsys)
    assert_error(result, "cannot read input file", str(src))
    assert not (tmp_path / "out.blmz").exists()


def test_directory_as_input_is_named_as_such(tmp_path, checkpoint, capsys, no_compression):
    assert_error(run(cli.main, ["decompress", tmp_path, tmp_path / "out", "--model", checkpoint], capsys),
                 "is a directory, not a file")


def test_directory_as_model_is_named_as_such(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello")
    assert_error(run(cli.main, ["compress", src, tmp_path / "out", "--model", tmp_path], capsys),
                 "is a directory", "best.pt")


def test_a_bug_keeps_its_traceback(tmp_path, checkpoint, monkeypatch, capsys):
    """Only the project's own errors become one-line messages: a ValueError from a bug propagates."""
    import blm_lab.codec.neural as neural

    def buggy(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(neural, "compress_with_stats", buggy)
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello")
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["compress", str(src), str(tmp_path / "out"), "--model", str(checkpoint), "--quiet"])
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- training

def test_output_dir_that_is_a_file(tmp_path, corpus_dir, capsys):
    target = tmp_path / "not_a_dir"
    target.write_text("keep me")
    assert_error(run(train_bytes.main, [corpus_dir, *TINY_MODEL_FLAGS, "--output-dir", target, "--max-steps", "2",
                                        "--cpu", "--no-progress"], capsys), "is a file, not a directory")
    assert target.read_text() == "keep me"


def test_non_empty_output_dir_is_refused_without_resume_or_force(tmp_path, corpus_dir, capsys):
    out = tmp_path / "out"
    flags = [corpus_dir, *TINY_MODEL_FLAGS, "--output-dir", out, "--batch-size", "8", "--eval-interval", "2",
             "--cpu", "--no-progress"]
    assert run(train_bytes.main, [*flags, "--max-steps", "4"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_error(run(train_bytes.main, [*flags, "--max-steps", "2"], capsys), "is not empty", "--resume", "--force")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier run is untouched

    # --force starts afresh: one run's metrics, not two runs interleaved
    assert run(train_bytes.main, [*flags, "--max-steps", "2", "--force"], capsys)[0] == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2]
    assert torch.load(out / "best.pt", weights_only=True)["step"] == 2


def test_resume_from_a_checkpoint_without_rng_state(tmp_path, corpus_dir, tiny_config, capsys):
    out = tmp_path / "out"
    save_checkpoint(out / "last.pt", {"config": tiny_config.to_dict(), "model_state": BytesGPT(tiny_config).state_dict(),
                                      "optimizer_state": {}, "step": 3, "epoch": 0, "batch_in_epoch": 3})
    # tiny_config has blm_lab 0.1's architecture: --recipe baseline gives the same model
    assert_error(run(train_bytes.main, [corpus_dir, *TINY_MODEL_FLAGS, "--recipe", "baseline", "--output-dir", out,
                                        "--max-steps", "5", "--resume", "--cpu", "--no-progress"], capsys), "lacks rng_state")


def test_resume_and_force_together_are_refused(tmp_path, corpus_dir, capsys):
    assert_error(run(cli.main, ["train", corpus_dir, *TINY_MODEL_FLAGS, "--output-dir", tmp_path / "o", "--resume",
                                "--force", "--cpu"], capsys), "--resume", "--force")


def test_time_budget_progress_shows_time(make_train_config, tiny_config, capsys):
    from blm_lab.training.loop import train

    train(make_train_config(max_steps=0, epochs=0, time_budget=1.0, eval_interval=0, progress=True), tiny_config)
    err = capsys.readouterr().err
    assert "/1 s" in err and "steps" not in err


# ----------------------------------------------------------------------------- checkpoint format versions

def test_checkpoints_carry_a_format_version(checkpoint):
    assert torch.load(checkpoint, weights_only=True)["format_version"] == FORMAT_VERSION


def test_version_1_checkpoint_loads_with_its_documented_defaults(tmp_path, tiny_config):
    from blm_lab.checkpoint import VERSION_1_DEFAULTS, VERSION_1_FIELDS

    torch.manual_seed(0)
    model = BytesGPT(tiny_config)
    v1_config = {k: v for k, v in tiny_config.to_dict().items() if k in VERSION_1_FIELDS}
    path = tmp_path / "v1.pt"
    torch.save({"config": v1_config, "model_state": model.state_dict()}, path)  # 0.1 wrote no format_version
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["format_version"] == FORMAT_VERSION
    assert loaded.config == BytesGPTConfig(**{**v1_config, **VERSION_1_DEFAULTS})
    x = torch.randint(0, 256, (1, 12))
    assert torch.equal(loaded(x)[0], model.eval()(x)[0])


def test_unknown_config_keys_are_refused_by_name(tmp_path, tiny_config):
    path = tmp_path / "future.pt"
    save_checkpoint(path, {"config": {**tiny_config.to_dict(), "warp_drive": 9}, "model_state": {}})
    with pytest.raises(CheckpointError, match="warp_drive"):
        read_checkpoint(path)


def test_missing_config_keys_are_refused_in_the_current_version(tmp_path, tiny_config):
    path = tmp_path / "partial.pt"
    config = tiny_config.to_dict()
    del config["rope_base"]
    save_checkpoint(path, {"config": config, "model_state": {}})
    with pytest.raises(CheckpointError, match="lacks config keys rope_base"):
        read_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path, tiny_config):
    path = tmp_path / "newer.pt"
    torch.save({"format_version": FORMAT_VERSION + 1, "config": tiny_config.to_dict(), "model_state": {}}, path)
    with pytest.raises(CheckpointError, match="newer than this blm_lab reads"):
        read_checkpoint(path)
