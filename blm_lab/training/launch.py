"""Training from a notebook on one process or on every GPU: ``run_training`` picks, ``torchrun`` launches.

With several GPUs visible and ``nproc`` != 1, the run is ``torchrun --nproc_per_node N -m
blm_lab.train_bytes ...`` in a subprocess, the two configs turned back into flags by
``blm_lab.flags.to_argv`` (the same mapping that parsed them). Its ``metrics.jsonl`` is followed so a
live curve still sees every evaluation as it happens, and the run's own ``result.json`` is its
TrainResult. Otherwise (CPU, one GPU) it trains in this process.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import load_checkpoint
from ..data import Corpus
from ..errors import BlmError
from ..flags import to_argv
from ..gpt import BytesGPTConfig
from .config import TrainConfig
from .loop import METRICS_FILE, train
from .state import TrainResult


def training_processes(nproc: int, device: str) -> int:
    """How many DDP processes a run gets: ``nproc`` (0 = every visible GPU) on CUDA with several GPUs, else 1."""
    if device.startswith("cpu") or not torch.cuda.is_available():
        return 1
    count = torch.cuda.device_count()
    return max(1, min(count, nproc or count))


def torchrun_command(train_cfg: TrainConfig, model_cfg: BytesGPTConfig, nproc: int) -> list[str]:
    """``torchrun --nproc_per_node N -m blm_lab.train_bytes ...`` reproducing the two configs flag for flag."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "blm_lab.train_bytes"]
    if train_cfg.dataset:
        cmd.append(train_cfg.dataset)
    cmd += to_argv(model_cfg, skip=("vocab_size",))
    cmd += to_argv(train_cfg, skip=("dataset", "device", "progress"))
    return cmd + ["--device", "cuda", "--no-progress"]


def run_training(train_cfg: TrainConfig, model_cfg: BytesGPTConfig, corpus: Corpus,
                 callback: Callable[[dict], None] | None = None, nproc: int = 1) -> TrainResult:
    """Train and return the TrainResult: in this process, or with DDP over several GPUs (see the module)."""
    n = training_processes(nproc, train_cfg.device)
    if n == 1:
        return train(train_cfg, model_cfg, corpus=corpus, callback=callback)
    train_cfg = dataclasses.replace(train_cfg, dataset="" if corpus.source == "default" else corpus.source)
    out = Path(train_cfg.output_dir)
    metrics = out / METRICS_FILE
    proc = subprocess.Popen(torchrun_command(train_cfg, model_cfg, n))
    seen = 0
    while True:
        running = proc.poll() is None
        lines = [line for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
        for line in lines[seen:]:
            if callback is not None:
                callback(json.loads(line))
        seen = len(lines)
        if not running:
            break
        time.sleep(2.0)
    if proc.returncode != 0:
        raise BlmError(f"torchrun with {n} processes failed (exit {proc.returncode}); its error is printed above")
    model, _ = load_checkpoint(out / "last.pt" if (out / "last.pt").exists() else out / "best.pt")
    return TrainResult.load(out, model=model)
