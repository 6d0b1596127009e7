"""Checkpoints: plain dicts of tensors and builtins, written atomically, loaded by one function.

A checkpoint holds ``config`` (the BytesGPTConfig as a dict) and ``model_state`` (the state dict),
which is all the seed project's snippet needs, plus for ``--resume``: ``optimizer_state``, ``step``,
``epoch``, ``batch_in_epoch``, ``rng_state``, ``best_val_bpb``, ``elapsed_s``, ``train_config``.
Everything in it loads with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .errors import CheckpointError
from .gpt import BytesGPT, BytesGPTConfig


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, fsync, then rename it over ``path``.

    A process killed at any moment leaves either the previous file or the new one, never a torn one,
    and no temp file survives an exception.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; the result is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write a checkpoint atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda f: torch.save(payload, f))


def read_checkpoint(path: str | os.PathLike, device=None) -> dict:
    """The raw checkpoint dict (weights_only load), with clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}; train one with `python -m blm_lab.train_bytes` "
                              "or pass the path of an existing .pt file")
    try:
        ckpt = torch.load(path, map_location=device or "cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"cannot load checkpoint {str(path)!r}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}; "
                              "is it a blm_lab checkpoint written completely?") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model_state" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is not a blm_lab checkpoint (it needs 'config' and 'model_state')")
    return ckpt


def load_checkpoint(path: str | os.PathLike, device=None) -> tuple[BytesGPT, dict]:
    """Load a checkpoint into a BytesGPT in eval mode on ``device`` (default CPU); returns (model, ckpt dict).

    This is the one loader the package uses.
    """
    ckpt = read_checkpoint(path, device)
    try:
        config = BytesGPTConfig(**ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} has an unusable config: {exc}") from None
    model = BytesGPT(config)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match its config: {str(exc).splitlines()[0]}") from None
    model.to(device or "cpu").eval()
    return model, ckpt
