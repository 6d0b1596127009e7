"""Shared fixtures: a tiny model, a small text corpus, the ../shared corpora, and a CLI runner."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blm_lab.gpt import BytesGPTConfig
from blm_lab.training.config import TrainConfig


# One fixed torch thread count for every test, whatever the machine's load: float results depend on the
# thread count, so a test's outcome must not. Subprocesses started by tests get the same through the
# environment. Tests that are about thread counts set theirs explicitly, in their own processes.
TORCH_THREADS = 1
torch.set_num_threads(TORCH_THREADS)
os.environ["OMP_NUM_THREADS"] = str(TORCH_THREADS)

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
REPO_ROOT = Path(__file__).resolve().parents[1]

WORDS = ("the king and queen of bytes spoke to the model while a small dog ran over the quiet hill "
         "then every letter in a line of text followed the one before it").split()


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# Every architecture option of BytesGPTConfig alone, and all of them together: the cases the model's tests
# (test_model_options) and the portable numerics' tests (test_portable) both run.
ARCHITECTURE_OPTIONS = {
    "relu2": dict(mlp="relu2"),
    "rmsnorm": dict(norm="rmsnorm"),
    "qk_norm": dict(qk_norm=True),
    "untied": dict(tie_embeddings=False),
    "value_residual": dict(value_residual=True),
    "all": dict(mlp="relu2", norm="rmsnorm", qk_norm=True, tie_embeddings=False, value_residual=True),
}


def train_briefly(text: bytes, config: BytesGPTConfig, steps: int = 60, device: str = "cpu"):
    """A BytesGPT trained for a moment on ``text`` (AdamW 1e-2, 16 random windows a step, seed 0), in eval
    mode: enough for text like it to be coded, not stored, with confident predictions."""
    from blm_lab.gpt import BytesGPT

    torch.manual_seed(0)
    model = BytesGPT(config).to(device)
    data = torch.tensor(list(text), device=device)
    window = config.block_size + 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - window, (16,))
        windows = torch.stack([data[s:s + window] for s in starts])
        _, loss = model(windows[:, :-1], windows[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def tiny_config() -> BytesGPTConfig:
    return BytesGPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32)


TINY_MODEL_FLAGS = ["--block-size", "16", "--n-layer", "2", "--n-head", "2", "--n-embd", "32"]


def write_text_corpus(directory: Path, n_files: int = 3, words_per_file: int = 1500, seed: int = 0) -> Path:
    """A few files of English-like text (about 7 KB each): learnable in a few dozen steps."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        lines = []
        for _ in range(words_per_file // 10):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(10)).capitalize() + ".")
        (directory / f"part{i}.txt").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    """A small text corpus directory (about 20 KB in 3 files) in tmp_path."""
    return write_text_corpus(tmp_path / "corpus")


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared corpora not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture
def make_train_config(corpus_dir, tmp_path):
    """TrainConfig factory for quick CPU runs on the small corpus; keyword arguments override."""

    def make(**overrides) -> TrainConfig:
        values = dict(dataset=str(corpus_dir), output_dir=str(tmp_path / "out"), batch_size=8, epochs=100.0,
                      max_steps=5, warmup_steps=10, eval_interval=1000, cpu=True, progress=False, seed=1234)
        values.update(overrides)
        return TrainConfig(**values)

    return make


def start_cli(args, cwd: Path) -> subprocess.Popen:
    """Start ``python -m blm_lab.train_bytes ARGS`` in a fresh interpreter (collect it with ``finish_cli``)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(TORCH_THREADS))
    return subprocess.Popen([sys.executable, "-m", "blm_lab.train_bytes", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")


def finish_cli(process: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"CLI did not finish within {timeout} s: {process.args}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_cli(args, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m blm_lab.train_bytes ARGS`` in a fresh interpreter, waited for."""
    return finish_cli(start_cli(args, cwd), timeout)
