"""blm_lab: byte-level language modelling and neural compression, as a Jupyter research workbench.

The names below are imported on first use (PEP 562), so ``import blm_lab`` and the command line's
``--help`` and model-free ``compress``/``decompress`` do not pay for torch; ``from blm_lab import
BytesGPT`` imports it then.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "NeuralCompressor": "codec.neural", "compress": "codec.neural", "compress_with_stats": "codec.neural",
    "decompress": "codec.neural", "decompress_with_stats": "codec.neural",
    "ByteWindows": "data", "Corpus": "data", "default_corpus": "data", "load_corpus": "data", "split_bytes": "data",
    "BlmError": "errors",
    "BytesGPT": "gpt", "KVCache": "gpt", "decode": "gpt", "encode": "gpt",
    "BytesGPTConfig": "gpt_config",
    "bits_per_byte": "scoring",
    "TrainConfig": "training.config",
    "train": "training.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'blm_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
