"""Checkpoints: plain dicts of tensors and builtins, written atomically, read by one function.

A checkpoint holds ``format_version``, ``config`` (the BytesGPTConfig as a dict) and ``model_state``
(the state dict), which is all the seed project's snippet needs, plus for ``--resume``:
``optimizer_state``, ``step``, ``epoch``, ``batch_in_epoch``, ``rng_state``, ``best_val_bpb``,
``elapsed_s``, ``train_config``. Everything in it loads with ``torch.load(path, weights_only=True)``.

Format versions
---------------
* 1 (blm_lab 0.1, no ``format_version`` key): ``config`` holds the nine fields block_size, vocab_size,
  n_layer, n_head, n_embd, dropout, bias, rope_base, mlp_ratio. Read as version 2 with every field
  added since at its documented default (``VERSION_1_DEFAULTS``), which reproduces the old model.
* 2: ``format_version`` is 2 and ``config`` holds every field of BytesGPTConfig.

A config key this version does not know is refused by name (the file was written by a newer
blm_lab, or it is not a blm_lab config); a missing key in a version-2 file is refused too.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import torch

from .errors import CheckpointError, ConfigError
from .files import atomic_write
from .gpt import BytesGPT, BytesGPTConfig

FORMAT_VERSION = 2
VERSION_1_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "rope_base",
                    "mlp_ratio")
# fields of BytesGPTConfig that version 1 did not have, with the value that reproduces a version-1 model
VERSION_1_DEFAULTS = {"mlp": "gelu", "norm": "layernorm", "qk_norm": False, "tie_embeddings": True,
                      "value_residual": False}


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write a checkpoint atomically (see ``files.atomic_write``), stamped with the current format version."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    return atomic_write(path, lambda f: torch.save(payload, f))


def _unsafe_reason(exc: Exception) -> str | None:
    """What a weights_only load refused, as one phrase, or None when the failure is not that."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return f"it holds the Python object {found.group(1)}" if found else None


def read_checkpoint(path: str | os.PathLike, device=None) -> dict:
    """The checkpoint dict (weights_only load), upgraded to the current format version.

    Missing, foreign, unsafe (pickled objects) and newer-format files each get a CheckpointError that
    says so and what to do.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; pass the path of a .pt file "
                              f"(for example {str(path / 'best.pt')!r})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}; train one with `python -m blm_lab.train_bytes` "
                              "or pass the path of an existing .pt file")
    try:
        ckpt = torch.load(path, map_location=device or "cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt, foreign or unsafe file
        unsafe = _unsafe_reason(exc)
        if unsafe:
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded safely: {unsafe}, which blm_lab "
                                  "checkpoints never contain; load it only if you trust its source, and re-save "
                                  "it as plain tensors") from None
        raise CheckpointError(f"cannot load checkpoint {str(path)!r} ({type(exc).__name__}); it is not a complete "
                              "torch checkpoint: was it written completely?") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model_state" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is not a blm_lab checkpoint (it needs 'config' and 'model_state')")
    return upgrade(ckpt, str(path))


def upgrade(ckpt: dict, where: str = "checkpoint") -> dict:
    """``ckpt`` read as the current format version: older versions get their documented defaults."""
    version = ckpt.get("format_version", 1)
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{where} has an invalid format_version {version!r}; it is not a blm_lab checkpoint")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where} has format version {version}, newer than this blm_lab reads "
                              f"({FORMAT_VERSION}); upgrade blm_lab")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{where} has a config that is not a mapping; it is not a blm_lab checkpoint")
    config = dict(ckpt["config"])
    known = {f.name for f in dataclasses.fields(BytesGPTConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(f"{where} has config keys this blm_lab does not know: {', '.join(unknown)}; it was "
                              "written by a newer blm_lab (upgrade) or is not a blm_lab checkpoint")
    if version == 1:
        missing_v1 = [name for name in VERSION_1_FIELDS if name not in config]
        if missing_v1:
            raise CheckpointError(f"{where} (format version 1) lacks config keys {', '.join(missing_v1)}")
        config = {**VERSION_1_DEFAULTS, **config}
    missing = sorted(known - set(config))
    if missing:
        raise CheckpointError(f"{where} (format version {version}) lacks config keys {', '.join(missing)}; "
                              "the file is damaged or was not written by blm_lab")
    return {**ckpt, "format_version": FORMAT_VERSION, "config": config}


def load_checkpoint(path: str | os.PathLike, device=None) -> tuple[BytesGPT, dict]:
    """Load a checkpoint into a float32 BytesGPT in eval mode on ``device`` (default CPU); returns
    (model, checkpoint dict). Weights saved as float16 or bfloat16 are upcast exactly. This is the one
    loader the package uses."""
    ckpt = read_checkpoint(path, device)
    try:
        config = BytesGPTConfig(**ckpt["config"])
    except (TypeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} has an unusable config: {exc}") from None
    model = BytesGPT(config)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match its config: {str(exc).splitlines()[0]}") from None
    model.to(device or "cpu").eval()
    return model, ckpt
