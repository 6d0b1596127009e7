"""Checkpoints: plain weights_only dicts, written atomically, loaded by one function with clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import blm_lab.checkpoint as checkpoint_mod
from blm_lab.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from blm_lab.errors import BlmError, CheckpointError, PathError
from blm_lab.gpt import BytesGPT
from blm_lab.training.loop import train


@pytest.fixture
def trained_dir(make_train_config, tiny_config) -> Path:
    cfg = make_train_config(max_steps=3, eval_interval=1000)
    train(cfg, tiny_config)
    return Path(cfg.output_dir)


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_checkpoints_load_weights_only(trained_dir, tiny_config, name):
    ckpt = torch.load(trained_dir / name, map_location="cpu", weights_only=True)
    assert ckpt["config"] == tiny_config.to_dict()
    model = BytesGPT(tiny_config)
    model.load_state_dict(ckpt["model_state"])  # strict: every key present, every shape right
    if name == "last.pt":
        assert ckpt["step"] == 3
        assert isinstance(ckpt["optimizer_state"], dict) and ckpt["optimizer_state"]["state"]
        assert isinstance(ckpt["rng_state"], torch.Tensor) and ckpt["rng_state"].dtype == torch.uint8
        torch.set_rng_state(ckpt["rng_state"])  # a real generator state


def test_load_checkpoint_gives_the_trained_model_in_eval_mode(trained_dir, tiny_config):
    model, ckpt = load_checkpoint(trained_dir / "last.pt")
    assert not model.training
    assert model.config == tiny_config
    for name, tensor in ckpt["model_state"].items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_save_then_read_round_trip(tmp_path, tiny_config):
    model = BytesGPT(tiny_config)
    path = save_checkpoint(tmp_path / "sub" / "m.pt", {"config": tiny_config.to_dict(), "model_state": model.state_dict()})
    assert path == tmp_path / "sub" / "m.pt"
    loaded, _ = load_checkpoint(path)
    x = torch.randint(0, 256, (1, 16))
    assert torch.equal(loaded(x)[0], model.eval()(x)[0])
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pt"]


def test_checkpoint_file_permissions_follow_the_umask(tmp_path, tiny_config):
    """An atomic write must not change who can read the result: same mode as a plain torch.save."""
    plain = tmp_path / "plain.pt"
    payload = {"config": tiny_config.to_dict(), "model_state": {}}
    torch.save(payload, plain)
    atomic = save_checkpoint(tmp_path / "atomic.pt", payload)
    assert oct(atomic.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, tiny_config, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    old_state = BytesGPT(tiny_config).state_dict()
    save_checkpoint(path, {"config": tiny_config.to_dict(), "model_state": old_state, "step": 1})

    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the file, then the process "dies"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_mod.torch, "save", torn_save)
    with pytest.raises(PathError, match="No space left"):
        save_checkpoint(path, {"config": tiny_config.to_dict(), "model_state": {}, "step": 2})
    monkeypatch.setattr(checkpoint_mod.torch, "save", real_save)

    ckpt = read_checkpoint(path)
    assert ckpt["step"] == 1
    assert all(torch.equal(ckpt["model_state"][k], v) for k, v in old_state.items())
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_interrupted_save_leaves_no_temp_file(tmp_path, tiny_config, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        f.write(b"\x00" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_mod.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "new.pt", {"config": tiny_config.to_dict(), "model_state": {}})
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as info:
        load_checkpoint(tmp_path / "missing.pt")
    assert "missing.pt" in str(info.value)
    assert isinstance(info.value, BlmError)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)  # a directory is no checkpoint file


def test_garbage_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(path)


def test_pickled_object_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"config": {}, "model_state": {}, "evil": io.BytesIO(b"x")}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "_io.BytesIO" in message and message.endswith("re-save it as plain tensors")  # a whole sentence


@pytest.mark.parametrize("payload", [{"model_state": {}}, {"config": {"block_size": 16}}, [1, 2, 3]])
def test_dict_without_config_or_model_state(tmp_path, payload):
    path = tmp_path / "partial.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="not a blm_lab checkpoint"):
        load_checkpoint(path)


def test_config_and_weights_that_do_not_match(tmp_path, tiny_config):
    path = tmp_path / "mismatch.pt"
    other = BytesGPT(tiny_config.__class__(block_size=16, n_layer=1, n_head=2, n_embd=32))
    torch.save({"config": tiny_config.to_dict(), "model_state": other.state_dict()}, path)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path)
    torch.save({"config": {**tiny_config.to_dict(), "n_embd": 30, "n_head": 4}, "model_state": {}}, path)
    with pytest.raises(CheckpointError, match="unusable config"):
        load_checkpoint(path)
