"""A training run's state while it runs (``TrainState``) and what it leaves behind (``TrainResult``)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..files import atomic_write

RESULT_FILE = "result.json"  # TrainResult of a finished run, beside its checkpoints


@dataclass
class TrainState:
    """Everything the loop updates, in one place; the checkpoint stores the first seven fields."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # optimizer steps done in the current epoch
    best_val_bpb: float = math.inf
    best_step: int = 0  # the step best.pt was saved at
    elapsed_before: float = 0.0  # seconds trained before a resume
    history: list[dict] = field(default_factory=list)  # one metrics record per evaluation
    last_val_bpb: float = math.nan
    tokens: int = 0  # training tokens this process consumed since start (or resume)
    eval_seconds: float = 0.0
    # since the last evaluation:
    train_bits: float = 0.0
    train_count: int = 0
    tokens_since: int = 0


@dataclass
class TrainResult:
    best_val_bpb: float  # validation bits/byte of best.pt (held-out split)
    final_val_bpb: float  # validation bits/byte of the final weights
    best_step: int  # the step best.pt was saved at
    num_params: int
    flops_per_token: float  # training FLOPs per token (BytesGPT.flops_per_token)
    steps: int
    tokens: int
    elapsed_s: float
    tokens_per_s: float  # training tokens per second, evaluations excluded
    output_dir: str
    checkpoint: str
    history: list[dict]
    # the trained model: its final weights (from last.pt, or best.pt when only that was kept, under torchrun)
    model: object | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict:
        """The headline numbers, JSON-ready."""
        return {k: getattr(self, k) for k in ("best_val_bpb", "final_val_bpb", "best_step", "num_params",
                                              "flops_per_token", "steps", "tokens", "elapsed_s", "tokens_per_s",
                                              "output_dir", "checkpoint")}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``DIRECTORY/result.json`` (everything but the model)."""
        payload = json.dumps(self.to_dict()).encode()
        return atomic_write(Path(directory) / RESULT_FILE, lambda f: f.write(payload))

    @classmethod
    def load(cls, directory: str | os.PathLike, model=None) -> "TrainResult":
        """The result a run wrote into ``directory`` (``save``), with ``model`` attached."""
        payload = json.loads((Path(directory) / RESULT_FILE).read_text())
        return cls(**payload, model=model)

    def to_dict(self) -> dict:
        """Every field but the model, JSON-ready."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
