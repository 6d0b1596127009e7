"""Named training recipes: the measured defaults for CPU and GPU runs.

``cpu``: 4 layers, 4 heads, 128 wide, block 128, batch 32, peak LR 2e-3 with cosine decay to 2e-4
over a 10-minute time budget. Measured on the 2-core development machine on tiny-shakespeare
(nanoGPT's split): 2.199 validation bits per byte after 10.04 minutes, 2080 steps, 14.6k tokens/s
(benchmarks/bench_train.py; the curve is in the README).
``gpu``: nanoGPT's shakespeare size (6 layers, 6 heads, 384 wide, block 256) in bf16.
"""

from __future__ import annotations

import copy

from .gpt import BytesGPTConfig
from .train import TrainConfig

RECIPES: dict[str, tuple[TrainConfig, BytesGPTConfig]] = {
    "cpu": (
        TrainConfig(batch_size=32, lr=2e-3, min_lr=2e-4, warmup_steps=100, weight_decay=0.1, beta2=0.99,
                    epochs=100.0, time_budget=600.0, eval_interval=300, device="cpu"),
        BytesGPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    ),
    "gpu": (
        TrainConfig(batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=200, weight_decay=0.1, beta2=0.99,
                    epochs=1000.0, time_budget=300.0, eval_interval=250, amp=True, device="cuda"),
        BytesGPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    ),
}


def recipe(name: str) -> tuple[TrainConfig, BytesGPTConfig]:
    """A fresh copy of a named recipe's (TrainConfig, BytesGPTConfig)."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    train_cfg, model_cfg = RECIPES[name]
    return copy.deepcopy(train_cfg), copy.deepcopy(model_cfg)
