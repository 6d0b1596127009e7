"""Training: AdamW with warmup and cosine decay, bits-per-byte validation, atomic checkpoints, resume, DDP.

One process or many: under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in
DistributedDataParallel, every rank reads its own shard of the windows (DistributedSampler,
reshuffled per epoch), validation loss is summed across ranks, and only rank 0 writes checkpoints,
metrics and progress bars. ``batch_size * grad_accum`` sequences make one optimizer step whatever
the number of processes, so a run gives the same result on 1 or N processes (up to float rounding).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import read_checkpoint, save_checkpoint
from .data import ByteWindows, Corpus, check_length, load_corpus
from .device import autocast_dtype, pick_device
from .errors import BlmError
from .gpt import BytesGPT, BytesGPTConfig

LN2 = math.log(2.0)


@dataclass
class TrainConfig:
    dataset: str = field(default="", metadata={"help": "file, directory or comma-separated list; empty = embedded default corpus"})
    output_dir: str = field(default="checkpoints", metadata={"help": "where best.pt, last.pt and metrics.jsonl go"})
    batch_size: int = field(default=32, metadata={"help": "sequences per optimizer step (per micro-step when grad_accum > 1)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-steps per optimizer step; effective batch = batch_size * grad_accum on any number of processes"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training windows (fractions allowed)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = no limit)"})
    time_budget: float = field(default=0.0, metadata={"help": "stop after SECONDS of training; the LR schedule then anneals on time (0 = no limit)"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=2e-4, metadata={"help": "learning rate at the end of the cosine decay"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on matrices"})
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm (0 = off)"})
    stride: int = field(default=0, metadata={"help": "bytes between window starts (0 = block_size)"})
    val_fraction: float = field(default=0.1, metadata={"help": "last fraction of the bytes used for validation"})
    eval_interval: int = field(default=250, metadata={"help": "steps between validations (and checkpoints)"})
    eval_batches: int = field(default=0, metadata={"help": "validation batches per evaluation (0 = the whole validation split)"})
    seed: int = 1337
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    cpu: bool = field(default=False, metadata={"help": "force CPU (same as --device cpu)"})
    amp: bool = field(default=False, metadata={"help": "mixed precision on CUDA (bf16, or fp16 with a grad scaler); ignored on CPU"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    save_best: bool = field(default=False, metadata={"help": "keep only best.pt (no last.pt)"})
    resume: bool = field(default=False, metadata={"help": "continue from OUTPUT_DIR/last.pt (or best.pt)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


    def __post_init__(self):
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise BlmError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("epochs", "max_steps", "time_budget", "eval_interval", "eval_batches", "stride", "warmup_steps"):
            if getattr(self, name) < 0:
                raise BlmError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.epochs == 0 and self.max_steps == 0 and self.time_budget == 0:
            raise BlmError("nothing bounds the run: give --epochs, --max-steps or --time-budget")
        if not 0.0 < self.val_fraction < 1.0:
            raise BlmError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")


@dataclass
class TrainResult:
    best_val_bpb: float
    final_val_bpb: float
    steps: int
    tokens: int
    elapsed_s: float
    tokens_per_s: float
    output_dir: str
    checkpoint: str
    history: list[dict]
    model: BytesGPT | None = field(default=None, repr=False, compare=False)  # the trained model (final weights)

    def summary(self) -> dict:
        """The headline numbers, JSON-ready."""
        return {k: getattr(self, k) for k in ("best_val_bpb", "final_val_bpb", "steps", "tokens", "elapsed_s",
                                              "tokens_per_s", "output_dir", "checkpoint")}


def bits_per_byte(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of next-byte predictions in bits per byte (the seed's train.py loss helper)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)) / LN2


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to min_lr as ``progress`` goes 0 -> 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# ----------------------------------------------------------------------------- distributed helpers

@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        use_cuda = device_pref != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def _all_reduce(values: list[float], device, op=None) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, data: np.ndarray, block_size: int, batch_size: int, device,
                 max_batches: int = 0, dist_info: DistInfo | None = None, amp_dtype=None) -> float:
    """Mean bits per byte over non-overlapping windows of ``data`` (sharded over ranks, summed exactly)."""
    dist_info = dist_info or DistInfo()
    ds = ByteWindows(data, block_size, stride=block_size, what="Validation split")
    n_windows = len(ds)
    if max_batches:
        n_windows = min(n_windows, max_batches * batch_size)
    mine = range(dist_info.rank, n_windows, dist_info.world_size)
    was_training = model.training
    model.eval()
    total_nats, total_count = 0.0, 0
    ids = list(mine)
    for s in range(0, len(ids), batch_size):
        x, y = ds.__getitems__(ids[s:s + batch_size])
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            logits, _ = model(x)
        total_nats += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="sum").item()
        total_count += y.numel()
    if dist_info.enabled:
        total_nats, total_count = _all_reduce([total_nats, total_count], device if device.type == "cuda" else "cpu")
    model.train(was_training)
    return total_nats / max(total_count, 1) / LN2


# ----------------------------------------------------------------------------- training

def train(cfg: TrainConfig, model_cfg: BytesGPTConfig, corpus: Corpus | None = None,
          callback: Callable[[dict], None] | None = None) -> TrainResult:
    """Train a BytesGPT on a corpus; returns the best and final validation bits per byte.

    ``callback(record)`` is called on rank 0 after every evaluation with the metrics record (the
    notebook's live loss curve uses it).
    """
    dist_info = init_distributed("cpu" if cfg.cpu else cfg.device)
    device = pick_device("cpu" if cfg.cpu else cfg.device)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    amp_dtype = autocast_dtype(device, cfg.amp)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    corpus = corpus if corpus is not None else load_corpus(cfg.dataset)
    train_data, val_data = corpus.split(cfg.val_fraction)
    bs = model_cfg.block_size
    check_length(corpus.data, bs, "Corpus")
    check_length(train_data, bs, "Training split")
    check_length(val_data, bs, "Validation split")

    # how many sequences each rank handles per optimizer step, and in how many micro-steps
    global_batch = cfg.batch_size * cfg.grad_accum
    if global_batch % dist_info.world_size:
        raise BlmError(f"batch_size * grad_accum = {global_batch} is not divisible by the {dist_info.world_size} processes; "
                       "change --batch-size or --grad-accum")
    per_rank = global_batch // dist_info.world_size
    micro = math.gcd(per_rank, cfg.batch_size)
    accum = per_rank // micro

    torch.manual_seed(cfg.seed)
    model = BytesGPT(model_cfg).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda",
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    out_dir = Path(cfg.output_dir)
    step, epoch, batch_in_epoch, best_val, elapsed_before = 0, 0, 0, float("inf"), 0.0
    history: list[dict] = []
    if cfg.resume:
        ckpt_path = out_dir / "last.pt" if (out_dir / "last.pt").exists() else out_dir / "best.pt"
        ckpt = read_checkpoint(ckpt_path, device)
        if ckpt["config"] != model_cfg.to_dict():
            raise BlmError(f"--resume: {ckpt_path} was trained with config {ckpt['config']}, not {model_cfg.to_dict()}; "
                           "pass the same model flags or a new --output-dir")
        if "optimizer_state" not in ckpt:
            raise BlmError(f"--resume: {ckpt_path} has no optimizer state; it cannot be resumed")
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        best_val, elapsed_before = ckpt.get("best_val_bpb", float("inf")), ckpt.get("elapsed_s", 0.0)
        torch.set_rng_state(ckpt["rng_state"].cpu())
        metrics_path = out_dir / "metrics.jsonl"
        if metrics_path.exists():
            history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            history = [r for r in history if r["step"] <= step]
            if dist_info.is_main:  # drop records logged after the checkpoint we resume from
                metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    windows = ByteWindows(train_data, bs, stride=cfg.stride or bs, seed=cfg.seed, what="Training split")
    sampler = torch.utils.data.DistributedSampler(windows, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                                  shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = (len(sampler) // micro) // accum
    if steps_per_epoch == 0:
        raise BlmError(f"the training split has {len(windows)} windows, fewer than one batch of {global_batch}; "
                       "lower --batch-size or --block-size, or add data")
    total_steps = math.ceil(cfg.epochs * steps_per_epoch) if cfg.epochs else 0
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps) if total_steps else cfg.max_steps
    time_bound_only = total_steps == 0  # only --time-budget bounds the run
    if time_bound_only:
        total_steps = 2**62

    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    def progress_of(now_elapsed: float) -> float:
        p = step / max(total_steps, 1)
        if cfg.time_budget:
            p = max(p, now_elapsed / cfg.time_budget)
        return p

    def make_checkpoint(val_bpb: float) -> dict:
        return {
            "config": model_cfg.to_dict(),
            "model_state": raw_model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "rng_state": torch.get_rng_state(),
            "best_val_bpb": best_val, "val_bpb": val_bpb,
            "elapsed_s": elapsed_before + (time.perf_counter() - t0),
            "train_config": asdict(cfg),
            "corpus": {"source": corpus.source, "total_bytes": len(corpus)},
            "num_params": raw_model.num_params(),
        }

    bar = tqdm(total=None if time_bound_only else total_steps, initial=step, desc="train", unit="step", disable=not (cfg.progress and dist_info.is_main),
               dynamic_ncols=True)
    t0 = time.perf_counter()
    t_last, tokens_since, train_nats_since, train_count_since = t0, 0, 0.0, 0
    tokens_total = 0
    eval_seconds = 0.0
    model.train()
    stop = False
    last_val = float("nan")

    def run_eval():
        nonlocal best_val, t_last, tokens_since, train_nats_since, train_count_since, last_val, eval_seconds
        t_eval = time.perf_counter()
        val_bpb = evaluate_bpb(raw_model, val_data, bs, cfg.batch_size, device, cfg.eval_batches, dist_info, amp_dtype)
        last_val = val_bpb
        if dist_info.enabled:  # the train loss of every rank, not only rank 0's
            train_nats_since, train_count_since = _all_reduce([train_nats_since, train_count_since],
                                                              device if device.type == "cuda" else "cpu")
        now = time.perf_counter()
        record = {
            "step": step, "epoch": round(step / steps_per_epoch, 4),
            "train_bpb": train_nats_since / max(train_count_since, 1) / LN2 if train_count_since else None,
            "val_bpb": val_bpb,
            "tokens_per_s": tokens_since * dist_info.world_size / max(t_eval - t_last, 1e-9),  # training only
            "lr": optimizer.param_groups[0]["lr"],
            "elapsed_s": elapsed_before + (now - t0),
        }
        improved = val_bpb < best_val
        best_val = min(best_val, val_bpb)
        if dist_info.is_main:
            ckpt = make_checkpoint(val_bpb)
            if improved:
                save_checkpoint(out_dir / "best.pt", ckpt)
            if not cfg.save_best:
                save_checkpoint(out_dir / "last.pt", ckpt)
            history.append(record)  # logged after the checkpoint it describes is safely on disk
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(val_bpb=f"{val_bpb:.3f}", best=f"{best_val:.3f}")
            if callback is not None:
                callback(record)
        if dist_info.enabled:
            dist.barrier()
        t_last, tokens_since, train_nats_since, train_count_since = time.perf_counter(), 0, 0.0, 0
        eval_seconds += t_last - t_eval

    if cfg.resume and dist_info.is_main:
        bar.write(f"resumed from step {step} (epoch {epoch}, best val {best_val:.4f} bits/byte)")

    while step < total_steps and not stop:
        windows.set_epoch(epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)
        n_batches = steps_per_epoch * accum
        for b in range(batch_in_epoch * accum, n_batches, accum):
            lr = lr_at(cfg, step, progress_of(elapsed_before + time.perf_counter() - t0))
            for group in optimizer.param_groups:
                group["lr"] = lr
            for a in range(accum):
                ids = order[(b + a) * micro:(b + a + 1) * micro]
                x, y = windows.__getitems__(ids)
                if device.type == "cuda":
                    x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
                sync = contextlib.nullcontext() if (a == accum - 1 or not dist_info.enabled) else model.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                        _, loss = model(x, y)
                    scaler.scale(loss / accum).backward()
                train_nats_since += loss.item() * y.numel()
                train_count_since += y.numel()
                tokens_since += y.numel()
                tokens_total += y.numel()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            batch_in_epoch = (b // accum) + 1
            bar.update(1)
            if cfg.time_budget:
                over = float(elapsed_before + time.perf_counter() - t0 >= cfg.time_budget)
                if dist_info.enabled:  # every rank stops at the same step
                    over = _all_reduce([over], device if device.type == "cuda" else "cpu", dist.ReduceOp.MAX)[0]
                stop = over > 0
            if cfg.eval_interval and step % cfg.eval_interval == 0 and step < total_steps and not stop:
                run_eval()
            if step >= total_steps or stop:
                break
        else:
            epoch += 1
            batch_in_epoch = 0
            continue
        if batch_in_epoch == steps_per_epoch:
            epoch += 1
            batch_in_epoch = 0
    run_eval()
    bar.close()
    elapsed = elapsed_before + time.perf_counter() - t0
    result = TrainResult(
        best_val_bpb=best_val, final_val_bpb=last_val, steps=step, tokens=tokens_total * dist_info.world_size,
        elapsed_s=elapsed,
        tokens_per_s=tokens_total * dist_info.world_size / max(time.perf_counter() - t0 - eval_seconds, 1e-9),
        output_dir=str(out_dir), checkpoint=str(out_dir / "best.pt"), history=history, model=raw_model,
    )
    if dist_info.enabled:
        dist.destroy_process_group()
    return result
