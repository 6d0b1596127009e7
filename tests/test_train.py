"""Training: it learns, it logs, it resumes, it follows its LR schedule; bits per byte is CE / ln 2."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from blm_lab.checkpoint import load_checkpoint
from blm_lab.data import load_corpus
from blm_lab.errors import CorpusError
from blm_lab.gpt import BytesGPT
from blm_lab.scoring import bits_per_byte
from blm_lab.training.config import TrainConfig
from blm_lab.training.loop import estimate_loss, get_lr, train

METRIC_FIELDS = {"step", "epoch", "train_bpb", "val_bpb", "tokens_per_s", "lr", "elapsed_s", "fraction_done"}


def read_metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def untrained_val_bpb(cfg: TrainConfig, model_cfg) -> float:
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building its model
    model = BytesGPT(model_cfg)
    _, val = load_corpus(cfg.dataset).split(cfg.val_fraction)
    return estimate_loss(model, val, model_cfg.block_size, cfg.batch_size, torch.device("cpu"))


# ----------------------------------------------------------------------------- it learns and it logs


@pytest.mark.slow
def test_short_cpu_run_lowers_validation_bits_per_byte(make_train_config, tiny_config):
    cfg = make_train_config(max_steps=60, eval_interval=20)
    before = untrained_val_bpb(cfg, tiny_config)
    assert abs(before - 8.0) < 0.2  # an untrained byte model is about uniform: 8 bits per byte
    result = train(cfg, tiny_config)
    assert result.steps == 60
    assert result.final_val_bpb < before - 1.0
    assert result.best_val_bpb <= result.final_val_bpb
    # the saved best model really has the reported validation score
    model, ckpt = load_checkpoint(Path(cfg.output_dir) / "best.pt")
    _, val = load_corpus(cfg.dataset).split()
    assert estimate_loss(model, val, 16, 8, torch.device("cpu")) == pytest.approx(result.best_val_bpb, abs=1e-4)


def test_metrics_jsonl_has_the_documented_fields(make_train_config, tiny_config):
    cfg = make_train_config(max_steps=6, eval_interval=2)
    result = train(cfg, tiny_config)
    records = read_metrics(cfg.output_dir)
    assert records == result.history
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert set(r) == METRIC_FIELDS
        assert isinstance(r["train_bpb"], float) and 0 < r["train_bpb"] < 16
        assert isinstance(r["val_bpb"], float) and 0 < r["val_bpb"] < 16
        assert r["tokens_per_s"] > 0 and r["lr"] > 0 and r["elapsed_s"] > 0
    assert [r["elapsed_s"] for r in records] == sorted(r["elapsed_s"] for r in records)
    assert [r["fraction_done"] for r in records] == pytest.approx([2 / 6, 4 / 6, 1.0])  # steps decide: no budget
    # epoch is the fraction of an epoch done: steps / steps_per_epoch
    steps_per_epoch = records[0]["step"] / records[0]["epoch"]
    assert records[-1]["epoch"] == pytest.approx(6 / steps_per_epoch, abs=1e-3)
    assert result.final_val_bpb == records[-1]["val_bpb"]


def test_training_error_writes_nothing(tmp_path, tiny_config):
    short = tmp_path / "short.txt"
    short.write_bytes(b"0123456789")
    out = tmp_path / "out"
    cfg = TrainConfig(dataset=str(short), output_dir=str(out), cpu=True, progress=False)
    with pytest.raises(CorpusError, match=r"^Corpus is shorter than block_size \+ 1") as info:
        train(cfg, tiny_config)
    assert "10" in str(info.value) and "17" in str(info.value)
    assert not out.exists()


# ----------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_continues_from_the_saved_step(make_train_config, tiny_config, tmp_path):
    # warmup longer than the run: the LR at each step then does not depend on the total number of steps,
    # so 4 steps + 4 resumed steps must retrace an uninterrupted 8-step run
    first = make_train_config(max_steps=4, eval_interval=2, warmup_steps=50)
    r1 = train(first, tiny_config)
    assert r1.steps == 4
    saved = torch.load(Path(first.output_dir) / "last.pt", weights_only=True)
    assert saved["step"] == 4

    # resuming at the saved step trains nothing: the model evaluated is the saved one, not a fresh init
    same = make_train_config(max_steps=4, eval_interval=2, warmup_steps=50, resume=True)
    r_same = train(same, tiny_config)
    assert r_same.steps == 4
    assert r_same.final_val_bpb == pytest.approx(r1.final_val_bpb, abs=1e-6)
    assert r_same.final_val_bpb < untrained_val_bpb(first, tiny_config) - 0.01

    resumed = make_train_config(max_steps=8, eval_interval=2, warmup_steps=50, resume=True)
    r2 = train(resumed, tiny_config)
    assert r2.steps == 8
    steps = [r["step"] for r in r2.history]
    assert steps[:2] == [2, 4] and steps[-2:] == [6, 8]
    assert r2.history[:2] == r1.history[:2]
    assert r2.history[-1]["elapsed_s"] > r1.history[-1]["elapsed_s"]

    straight = make_train_config(max_steps=8, eval_interval=2, warmup_steps=50, output_dir=str(tmp_path / "straight"))
    r3 = train(straight, tiny_config)
    resumed_state = torch.load(Path(resumed.output_dir) / "last.pt", weights_only=True)["model_state"]
    straight_state = torch.load(Path(straight.output_dir) / "last.pt", weights_only=True)["model_state"]
    for name in straight_state:
        torch.testing.assert_close(resumed_state[name], straight_state[name], rtol=1e-4, atol=1e-5)
    assert r2.final_val_bpb == pytest.approx(r3.final_val_bpb, abs=1e-4)


def test_resume_after_an_interrupted_checkpoint_keeps_metrics_consistent(make_train_config, tiny_config, monkeypatch):
    """Ctrl-C while a checkpoint is written: the metrics record of that evaluation is already in metrics.jsonl,
    but last.pt is still the previous one. Resuming must leave a log that matches the resumed history."""
    train_mod = sys.modules["blm_lab.training.loop"]

    real_save = train_mod.save_checkpoint

    def interrupted_at_step_4(path, payload):
        if payload["step"] == 4:
            raise KeyboardInterrupt
        return real_save(path, payload)

    monkeypatch.setattr(train_mod, "save_checkpoint", interrupted_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(make_train_config(max_steps=6, eval_interval=2), tiny_config)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert torch.load(Path(make_train_config().output_dir) / "last.pt", weights_only=True)["step"] == 2

    cfg = make_train_config(max_steps=6, eval_interval=2, resume=True)
    result = train(cfg, tiny_config)
    assert [r["step"] for r in result.history] == [2, 4, 6]
    assert [r["step"] for r in read_metrics(cfg.output_dir)] == [2, 4, 6]  # no stale record of the lost step 4


def test_resume_with_another_model_config_is_refused(make_train_config, tiny_config):
    from dataclasses import replace

    from blm_lab.errors import BlmError

    train(make_train_config(max_steps=2), tiny_config)
    with pytest.raises(BlmError, match="--resume"):
        train(make_train_config(max_steps=4, resume=True), replace(tiny_config, n_embd=64))


def test_save_best_writes_only_best_pt(make_train_config, tiny_config):
    cfg = make_train_config(max_steps=4, eval_interval=2, save_best=True)
    train(cfg, tiny_config)
    assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == ["best.pt", "metrics.jsonl", "result.json"]


# ----------------------------------------------------------------------------- learning-rate schedule


def test_lr_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    # linear warmup reaching the peak on the last warmup step
    assert [get_lr(cfg, s, 0.0) for s in range(10)] == pytest.approx([1e-4 * (s + 1) for s in range(10)])
    assert get_lr(cfg, 10, 0.0) == pytest.approx(1e-3)
    assert get_lr(cfg, 10, 0.5) == pytest.approx(5.5e-4)
    assert get_lr(cfg, 10, 1.0) == pytest.approx(1e-4)
    assert get_lr(cfg, 10, 2.0) == pytest.approx(1e-4)  # past the end it stays at min_lr
    decay = [get_lr(cfg, 10, p / 20) for p in range(21)]
    assert decay == sorted(decay, reverse=True)
    assert get_lr(cfg, 50, 0.25) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)


def test_lr_schedule_used_by_training(make_train_config, tiny_config):
    total, warmup, peak, floor = 10, 3, 1e-3, 1e-4
    cfg = make_train_config(max_steps=total, eval_interval=1, warmup_steps=warmup, lr=peak, min_lr=floor)
    train(cfg, tiny_config)
    logged = [r["lr"] for r in read_metrics(cfg.output_dir)]
    expected = []
    for s in range(total):  # the record after step s + 1 shows the LR step s was taken with
        if s < warmup:
            expected.append(peak * (s + 1) / warmup)
        else:
            expected.append(floor + 0.5 * (1 + math.cos(math.pi * s / total)) * (peak - floor))
    assert logged == pytest.approx(expected)


@pytest.mark.slow
def test_time_budget_stops_the_run_and_anneals_on_time(make_train_config, tiny_config):
    budget = 1.5
    cfg = make_train_config(max_steps=0, epochs=1000.0, time_budget=budget, warmup_steps=2, lr=1e-3, min_lr=1e-4)
    result = train(cfg, tiny_config)
    assert budget <= result.elapsed_s < budget + 10
    records = read_metrics(cfg.output_dir)
    final = records[-1]
    assert final["step"] == result.steps
    # by steps the run is nowhere near its end (1000 epochs), so only time can have annealed the LR
    assert final["lr"] < 1e-4 + 0.5 * (1e-3 - 1e-4)  # past the midpoint of the cosine; by steps it would be at the peak


# ----------------------------------------------------------------------------- bits per byte


def test_bits_per_byte_is_cross_entropy_over_ln2():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 256, generator=g) * 3
    targets = torch.randint(0, 256, (3, 7), generator=g)
    expected = F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1)) / math.log(2)
    torch.testing.assert_close(bits_per_byte(logits, targets), expected)
    assert bits_per_byte(torch.zeros(2, 5, 256), targets[:2, :5]).item() == pytest.approx(8.0)
    confident = torch.full((1, 4, 256), -30.0)
    confident[0, torch.arange(4), targets[0, :4]] = 30.0
    assert bits_per_byte(confident, targets[:1, :4]).item() == pytest.approx(0.0, abs=1e-6)
