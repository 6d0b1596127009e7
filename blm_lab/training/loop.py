"""Training, as one flat loop: AdamW (or Muon) with warmup and cosine or WSD decay, bits-per-byte validation, atomic
checkpoints, resume, mixed precision, DDP.

Read ``train()`` top to bottom: devices; data; model and optimizers; resume (or a fresh output
directory); then the loop, where each optimizer step sets the learning rates (``optim.lr_scale``), runs
``grad_accum`` micro-batches, steps, and every ``eval_interval`` steps evaluates (``estimate_loss``)
and checkpoints (``checkpoint_dict``). All of the run's changing state is one ``TrainState``.

One process or many: under ``torchrun`` the entry point joins the process group and passes a
``DistInfo``; the model is wrapped in DistributedDataParallel, every rank reads its own shard of the
windows (DistributedSampler, reshuffled per epoch), validation bits are summed across ranks, and
only rank 0 writes checkpoints, metrics and progress bars. ``batch_size * grad_accum`` sequences
make one optimizer step whatever the number of processes, so 1 or N processes give the same result
(up to float rounding).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..checkpoint import read_checkpoint, save_checkpoint
from ..data import ByteWindows, Corpus, check_length, load_corpus
from ..device import autocast_dtype, pick_device
from ..errors import CheckpointError, ConfigError
from ..files import check_output_dir
from ..gpt import BytesGPT, BytesGPTConfig
from ..scoring import LN2, sum_bits
from .config import TrainConfig, configs_from_args
from .distributed import DistInfo, all_reduce, barrier, process_group
from .optim import lr_scale, make_optimizers
from .state import RESULT_FILE, TrainResult, TrainState

METRICS_FILE = "metrics.jsonl"
RUN_FILES = ("best.pt", "last.pt", METRICS_FILE, RESULT_FILE)  # what a run writes into its output directory
RESUME_KEYS = ("optimizer_state", "step", "epoch", "batch_in_epoch", "rng_state")


def get_lr(cfg: TrainConfig, step: int, progress: float) -> float:
    """AdamW's learning rate at ``step`` (``optim.lr_scale`` times ``lr``; Muon's is the same factor times ``muon_lr``)."""
    return cfg.lr * lr_scale(cfg, step, progress)


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, data: np.ndarray, block_size: int, batch_size: int, device,
                  max_batches: int = 0, dist_info: DistInfo = DistInfo(), amp_dtype=None) -> float:
    """Mean bits per byte over non-overlapping windows of ``data`` (sharded over ranks, summed exactly)."""
    windows = ByteWindows(data, block_size, stride=block_size, what="Validation split")
    n_windows = len(windows) if not max_batches else min(len(windows), max_batches * batch_size)
    mine = list(range(dist_info.rank, n_windows, dist_info.world_size))
    was_training = model.training
    model.eval()
    total_bits, total_count = 0.0, 0
    for s in range(0, len(mine), batch_size):
        x, y = windows.__getitems__(mine[s:s + batch_size])
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            logits, _ = model(x)
        total_bits += sum_bits(logits, y)
        total_count += y.numel()
    if dist_info.enabled:
        total_bits, total_count = all_reduce([total_bits, total_count], device)
    model.train(was_training)
    return total_bits / max(total_count, 1)


def checkpoint_dict(model: BytesGPT, optimizers: list, state: TrainState, cfg: TrainConfig, corpus: Corpus,
                    val_bpb: float, elapsed_s: float) -> dict:
    """What best.pt and last.pt hold (see ``blm_lab.checkpoint``): AdamW's state under ``optimizer_state``,
    Muon's (when used) under ``muon_state``."""
    extra = {"muon_state": optimizers[1].state_dict()} if len(optimizers) > 1 else {}
    return {
        "config": model.config.to_dict(),
        "model_state": model.state_dict(),
        "optimizer_state": optimizers[0].state_dict(),
        **extra,
        "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
        "rng_state": torch.get_rng_state(),
        "best_val_bpb": state.best_val_bpb, "best_step": state.best_step, "val_bpb": val_bpb,
        "elapsed_s": elapsed_s,
        "train_config": asdict(cfg),
        "corpus": {"source": corpus.source, "total_bytes": len(corpus)},
        "num_params": model.num_params(),
    }


def _resume(out_dir: Path, model: BytesGPT, optimizers: list, model_cfg: BytesGPTConfig, dist_info: DistInfo,
            device) -> TrainState:
    """Load last.pt (or best.pt) into model and optimizer; the TrainState to continue from."""
    ckpt_path = out_dir / "last.pt" if (out_dir / "last.pt").exists() else out_dir / "best.pt"
    if not ckpt_path.exists():
        raise CheckpointError(f"--resume: {str(out_dir)!r} has no last.pt or best.pt to resume from; "
                              "drop --resume to start a new run")
    ckpt = read_checkpoint(ckpt_path, device)
    if ckpt["config"] != model_cfg.to_dict():
        raise ConfigError(f"--resume: {ckpt_path} was trained with config {ckpt['config']}, not {model_cfg.to_dict()}; "
                          "pass the same model flags (--recipe baseline for a run begun with blm_lab 0.1's defaults) "
                          "or a new --output-dir")
    missing = [key for key in RESUME_KEYS + (("muon_state",) if len(optimizers) > 1 else ()) if key not in ckpt]
    if missing:
        raise CheckpointError(f"--resume: {ckpt_path} lacks {', '.join(missing)}, which resuming needs; it was saved "
                              "for inference only; start a new run in another --output-dir")
    model.load_state_dict(ckpt["model_state"])
    optimizers[0].load_state_dict(ckpt["optimizer_state"])
    if len(optimizers) > 1:
        optimizers[1].load_state_dict(ckpt["muon_state"])
    torch.set_rng_state(ckpt["rng_state"].cpu())
    state = TrainState(step=ckpt["step"], epoch=ckpt["epoch"], batch_in_epoch=ckpt["batch_in_epoch"],
                       best_val_bpb=ckpt.get("best_val_bpb", math.inf), best_step=ckpt.get("best_step", ckpt["step"]),
                       elapsed_before=ckpt.get("elapsed_s", 0.0))
    metrics_path = out_dir / METRICS_FILE
    if metrics_path.exists():
        records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        state.history = [r for r in records if r["step"] <= state.step]
        if dist_info.is_main:  # drop records logged after the checkpoint we resume from
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in state.history))
    return state


def train(cfg: TrainConfig, model_cfg: BytesGPTConfig, corpus: Corpus | None = None,
          callback: Callable[[dict], None] | None = None, dist_info: DistInfo = DistInfo()) -> TrainResult:
    """Train a BytesGPT on a corpus; returns the best and final validation bits per byte.

    ``callback(record)`` is called on rank 0 after every evaluation with the metrics record (the
    notebook's live loss curve uses it). ``dist_info`` says which process this is under torchrun; the
    caller owns the process group (``training.distributed.process_group``).
    """
    out_dir = check_output_dir(cfg.output_dir, keep=cfg.resume, force=cfg.force, what="--output-dir",
                               fix="pass --resume to continue its run, --force to replace it, or another --output-dir")
    device = pick_device(cfg.device_preference)
    amp_dtype = autocast_dtype(device, cfg.amp)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # data: the training and validation splits, and how many windows each rank takes per optimizer step
    corpus = corpus if corpus is not None else load_corpus(cfg.dataset)
    train_data, val_data = corpus.split(cfg.val_fraction)
    bs = model_cfg.block_size
    check_length(corpus.data, bs, "Corpus")
    check_length(train_data, bs, "Training split")
    check_length(val_data, bs, "Validation split")
    global_batch = cfg.batch_size * cfg.grad_accum
    if global_batch % dist_info.world_size:
        raise ConfigError(f"batch_size * grad_accum = {global_batch} is not divisible by the {dist_info.world_size} "
                          "processes; change --batch-size or --grad-accum")
    per_rank = global_batch // dist_info.world_size
    micro = math.gcd(per_rank, cfg.batch_size)  # windows per forward pass
    accum = per_rank // micro  # forward passes per optimizer step
    windows = ByteWindows(train_data, bs, stride=cfg.stride or bs, seed=cfg.seed, what="Training split")
    sampler = torch.utils.data.DistributedSampler(windows, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                                  shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = (len(sampler) // micro) // accum
    if steps_per_epoch == 0:
        raise ConfigError(f"the training split has {len(windows)} windows, fewer than one batch of {global_batch}; "
                          "lower --batch-size or --block-size, or add data")
    total_steps = math.ceil(cfg.epochs * steps_per_epoch) if cfg.epochs else 0
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps) if total_steps else cfg.max_steps
    if total_steps == 0:  # only the time budget bounds the run
        total_steps = 2**62

    # model and optimizer
    torch.manual_seed(cfg.seed)
    model = BytesGPT(model_cfg).to(device)
    optimizers = make_optimizers(model, cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # where the run starts: a checkpoint to resume, or an empty output directory
    if cfg.resume:
        state = _resume(out_dir, model, optimizers, model_cfg, dist_info, device)
    else:
        state = TrainState()
        if dist_info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in RUN_FILES:  # only with --force can any of these exist: that run is replaced
                (out_dir / name).unlink(missing_ok=True)
    barrier(dist_info)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # progress: seconds of the budget when a time budget is set (it is what ends such a run), else steps
    timed = cfg.time_budget > 0
    bar = tqdm(total=cfg.time_budget if timed else total_steps, initial=0 if timed else state.step,
               desc="train", unit="s" if timed else "step", disable=not (cfg.progress and dist_info.is_main),
               dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s {postfix}" if timed else None)
    if cfg.resume and dist_info.is_main:
        bar.write(f"resumed from step {state.step} (epoch {state.epoch}, best val {state.best_val_bpb:.4f} bits/byte)")
    t0 = t_last = time.perf_counter()

    def elapsed() -> float:
        return state.elapsed_before + time.perf_counter() - t0

    model.train()
    start_step, stop, order, order_epoch = state.step, False, None, None
    while True:
        finished = stop or state.step >= total_steps
        if finished or (cfg.eval_interval and state.step % cfg.eval_interval == 0 and state.step > start_step):
            # evaluate; then best.pt (when better), last.pt, and the metrics record that describes them
            t_eval = time.perf_counter()
            val_bpb = estimate_loss(raw_model, val_data, bs, cfg.batch_size, device, cfg.eval_batches, dist_info,
                                    amp_dtype)
            if dist_info.enabled:  # the train loss of every rank, not only rank 0's
                state.train_bits, state.train_count = all_reduce([state.train_bits, state.train_count], device)
            record = {
                "step": state.step, "epoch": round(state.step / steps_per_epoch, 4),
                "train_bpb": state.train_bits / state.train_count if state.train_count else None,
                "val_bpb": val_bpb,
                "tokens_per_s": state.tokens_since * dist_info.world_size / max(t_eval - t_last, 1e-9),  # training only
                "lr": optimizers[0].param_groups[0]["lr"],
                "elapsed_s": elapsed(),
                # how far the run is towards its end (steps or time budget, whichever ends it first): time left
                "fraction_done": min(1.0, max(state.step / total_steps,
                                              elapsed() / cfg.time_budget if timed else 0.0)),
            }
            improved = val_bpb < state.best_val_bpb
            if improved:
                state.best_val_bpb, state.best_step = val_bpb, state.step
            state.last_val_bpb = val_bpb
            if dist_info.is_main:
                ckpt = checkpoint_dict(raw_model, optimizers, state, cfg, corpus, val_bpb, record["elapsed_s"])
                if improved:
                    save_checkpoint(out_dir / "best.pt", ckpt)
                if not cfg.save_best:
                    save_checkpoint(out_dir / "last.pt", ckpt)
                state.history.append(record)  # logged after the checkpoint it describes is safely on disk
                with open(out_dir / METRICS_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(step=state.step, val_bpb=f"{val_bpb:.3f}", best=f"{state.best_val_bpb:.3f}")
                if callback is not None:
                    callback(record)
            barrier(dist_info)
            t_last = time.perf_counter()
            state.train_bits, state.train_count, state.tokens_since = 0.0, 0, 0
            state.eval_seconds += t_last - t_eval
        if finished:
            break

        # the next batch of this epoch's shuffled windows (a new order at each epoch)
        if state.batch_in_epoch == steps_per_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if order_epoch != state.epoch:
            windows.set_epoch(state.epoch)
            sampler.set_epoch(state.epoch)
            order, order_epoch = list(sampler), state.epoch
        progress = state.step / total_steps
        if timed:
            progress = max(progress, elapsed() / cfg.time_budget)
        scale = lr_scale(cfg, state.step, progress)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        for a in range(accum):
            first = (state.batch_in_epoch * accum + a) * micro
            x, y = windows.__getitems__(order[first:first + micro])
            if device.type == "cuda":
                x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            sync = model.no_sync() if dist_info.enabled and a < accum - 1 else contextlib.nullcontext()
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                    _, loss = model(x, y)
                scaler.scale(loss / accum).backward()
            state.train_bits += loss.item() / LN2 * y.numel()
            state.train_count += y.numel()
            state.tokens_since += y.numel()
            state.tokens += y.numel()
        if cfg.grad_clip:
            for opt in optimizers:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for opt in optimizers:
            scaler.step(opt)
        scaler.update()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        state.step += 1
        state.batch_in_epoch += 1
        if timed:
            over = float(elapsed() >= cfg.time_budget)
            if dist_info.enabled:  # every rank stops at the same step
                over = all_reduce([over], device, dist.ReduceOp.MAX)[0]
            stop = over > 0
            bar.n = min(elapsed(), cfg.time_budget)
            bar.refresh()
        else:
            bar.update(1)
    bar.close()

    result = TrainResult(
        best_val_bpb=state.best_val_bpb, final_val_bpb=state.last_val_bpb, best_step=state.best_step,
        num_params=raw_model.num_params(), flops_per_token=raw_model.flops_per_token(), steps=state.step,
        tokens=state.tokens * dist_info.world_size, elapsed_s=elapsed(),
        tokens_per_s=state.tokens * dist_info.world_size / max(time.perf_counter() - t0 - state.eval_seconds, 1e-9),
        output_dir=str(out_dir), checkpoint=str(out_dir / "best.pt"), history=state.history, model=raw_model,
    )
    if dist_info.is_main:
        result.save(out_dir)
    return result


def run_from_args(args) -> int:
    """The training command (``blm-lab train``, ``python -m blm_lab.train_bytes``): flags from
    ``config.add_train_arguments`` -> configs (the recipe for the device found fills the flags not given);
    join the process group under torchrun; train; print."""
    on_cuda = pick_device("cpu" if args.cpu else args.device).type == "cuda"
    train_cfg, model_cfg = configs_from_args(args, on_cuda=on_cuda)
    with process_group(train_cfg.device_preference) as dist_info:
        result = train(train_cfg, model_cfg, dist_info=dist_info)
    if dist_info.is_main:
        print(f"validation: {result.final_val_bpb:.4f} bits/byte (best {result.best_val_bpb:.4f}) after {result.steps} "
              f"steps, {result.elapsed_s:.0f} s, {result.tokens_per_s:,.0f} tokens/s; checkpoint: {result.checkpoint}")
        if args.json:
            print(json.dumps(result.summary()))
    return 0
