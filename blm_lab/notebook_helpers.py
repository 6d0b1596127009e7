"""The few steps the workbench notebooks need that are more than one call: kept here, where tests reach them.

The four notebooks in ``notebooks/`` chain through files in one run directory:

* ``01_data_prep`` writes ``manifest.json`` (the corpus manifest) and ``corpus.json`` (where the
  corpus came from and how it is split: ``data_dir``, ``val_fraction``, ``block_size``, sizes, sha256);
* ``02_train_gpu`` reads ``corpus.json``, trains, and writes ``checkpoint/best.pt`` (plus
  ``checkpoint/metrics.jsonl``) and ``train.json`` (headline numbers);
* ``03_entropy_visualization`` and ``04_compression_ratios`` read the checkpoint and ``corpus.json``;
  04 writes ``compression.csv`` / ``compression.md``.

Every figure a notebook shows is also written to ``figures/<name>.png`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd

from .analysis import save_figure
from .data import Corpus, check_length, corpus_paths, load_corpus
from .errors import BlmError

CORPUS_FILE = "corpus.json"
MANIFEST_FILE = "manifest.json"
TRAIN_FILE = "train.json"
CHECKPOINT = Path("checkpoint") / "best.pt"
COMPRESSION_TABLE = "compression"  # .csv and .md
FIGURES = "figures"

# Training on CPU stops after this many seconds, so that `make run` (all four notebooks) stays within
# 10 minutes on a 2-core machine; 01, 03 and 04 take under 2 minutes together (100 s measured on one niced thread).
CPU_TIME_BUDGET_S = 240.0
CPU_EVAL_INTERVAL = 100  # a validation point every ~30-60 s on 2 cores: a curve, not a single dot


# ----------------------------------------------------------------------------- run directory

def run_path(run_dir: str | os.PathLike) -> Path:
    """The run directory as a Path, created if missing."""
    path = Path(run_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def figure_dir(run_dir: str | os.PathLike) -> Path:
    """``RUN_DIR/figures``, created if missing."""
    return run_path(Path(run_dir) / FIGURES)


def figure_path(run_dir: str | os.PathLike, name: str) -> Path:
    """Where a notebook's figure NAME goes: ``RUN_DIR/figures/NAME.png``."""
    return figure_dir(run_dir) / f"{name}.png"


def show_and_save(fig, run_dir: str | os.PathLike, name: str):
    """Write ``fig`` to ``RUN_DIR/figures/NAME.png`` and return it, so a cell ending in this call shows it (once)."""
    save_figure(fig, figure_path(run_dir, name))
    plt.close(fig)  # pyplot forgets it: the cell's value is the only display
    return fig


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_json(path: str | os.PathLike, what: str, fix: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BlmError(f"{path} not found: {what}; {fix}")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- 01: the corpus and its split

def load_data(data_dir: str = "") -> Corpus:
    """The corpus named by a notebook's ``data_dir``: a path, a comma-separated list, or empty for the default corpus."""
    return load_corpus(str(data_dir or ""))


def save_corpus_info(run_dir: str | os.PathLike, corpus: Corpus, data_dir: str, val_fraction: float,
                     block_size: int) -> dict:
    """Check both splits hold a window of ``block_size + 1`` bytes; write ``manifest.json`` and ``corpus.json``."""
    train_data, val_data = corpus.split(val_fraction)
    check_length(train_data, block_size, "Training split")
    check_length(val_data, block_size, "Validation split")
    manifest = corpus.manifest()
    # absolute paths, so that later notebooks find the corpus from any working directory (papermill or Lab)
    data_dir = ",".join(str(Path(p).expanduser().resolve()) for p in corpus_paths(str(data_dir or "")))
    info = {
        "data_dir": data_dir, "val_fraction": val_fraction, "block_size": block_size, "source": corpus.source,
        "total_bytes": len(corpus), "train_bytes": int(train_data.shape[0]), "val_bytes": int(val_data.shape[0]),
        "sha256": manifest["sha256"], "files": len(corpus.files),
    }
    run = run_path(run_dir)
    write_json(run / MANIFEST_FILE, manifest)
    write_json(run / CORPUS_FILE, info)
    return info


def split_frame(info: dict) -> pd.DataFrame:
    """The split as a two-row table: bytes and share of the corpus in each part."""
    rows = [("train", info["train_bytes"]), ("validation", info["val_bytes"])]
    return pd.DataFrame([{"split": name, "bytes": n, "share": n / info["total_bytes"]} for name, n in rows])


def load_run_corpus(run_dir: str | os.PathLike) -> tuple[Corpus, dict]:
    """The corpus 01 described in ``RUN_DIR/corpus.json``, checked against its sha256; returns (corpus, info)."""
    info = read_json(Path(run_dir) / CORPUS_FILE, "the run directory has no corpus description",
                     "run 01_data_prep.ipynb first with the same run_dir")
    corpus = load_data(info["data_dir"])
    sha = corpus.manifest()["sha256"]
    if sha != info["sha256"]:
        raise BlmError(f"the corpus at {info['data_dir'] or 'the embedded default'!r} changed since 01_data_prep ran "
                       f"(sha256 {sha[:12]}..., recorded {info['sha256'][:12]}...); run 01_data_prep.ipynb again")
    return corpus, info


# ----------------------------------------------------------------------------- 02: training

def train_configs(run_dir: str | os.PathLike, device: str = "auto", amp: bool = True, n_layer: int | None = None,
                  n_head: int | None = None, n_embd: int | None = None, batch_size: int | None = None,
                  block_size: int | None = None, max_steps: int = 0, time_budget: float | None = None,
                  lr: float | None = None, eval_interval: int | None = None, val_fraction: float = 0.1, seed: int = 1337):
    """(TrainConfig, BytesGPTConfig) for the training notebook: the device's recipe, then the given overrides.

    On CUDA the ``gpu`` recipe (mixed precision when ``amp``); elsewhere the ``cpu`` recipe's model with a
    ``CPU_TIME_BUDGET_S`` time budget. ``None`` keeps the recipe's value. The checkpoint goes to
    ``RUN_DIR/checkpoint/best.pt``.
    """
    from .device import pick_device
    from .recipes import recipe

    picked = pick_device(device)
    train_cfg, model_cfg = recipe("gpu" if picked.type == "cuda" else "cpu")
    if picked.type != "cuda":
        train_cfg.time_budget, train_cfg.eval_interval = CPU_TIME_BUDGET_S, CPU_EVAL_INTERVAL
    model_overrides = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block_size}
    train_overrides = {"batch_size": batch_size, "time_budget": time_budget, "lr": lr, "eval_interval": eval_interval}
    model_cfg = dataclasses.replace(model_cfg, **{k: v for k, v in model_overrides.items() if v is not None})
    train_cfg = dataclasses.replace(
        train_cfg, **{k: v for k, v in train_overrides.items() if v is not None},
        device=str(picked), amp=bool(amp) and picked.type == "cuda", max_steps=int(max_steps or 0),
        val_fraction=val_fraction, seed=seed, save_best=True,
        output_dir=str(run_path(run_dir) / CHECKPOINT.parent),
    )
    if train_cfg.max_steps and train_cfg.warmup_steps >= train_cfg.max_steps:
        train_cfg.warmup_steps = max(1, train_cfg.max_steps // 10)  # a short run still reaches the peak LR
    return train_cfg, model_cfg


def config_frame(train_cfg, model_cfg) -> pd.DataFrame:
    """The settings that shape a run, as a one-column table."""
    keys = ["device", "amp", "batch_size", "lr", "min_lr", "warmup_steps", "max_steps", "time_budget", "eval_interval"]
    values = {**{k: getattr(model_cfg, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")},
              **{k: getattr(train_cfg, k) for k in keys}}
    return pd.DataFrame({"value": [str(v) for v in values.values()]}, index=list(values))


def training_processes(nproc: int, device: str) -> int:
    """How many DDP processes a run gets: ``nproc`` (0 = every visible GPU) on CUDA with several GPUs, else 1."""
    import torch

    if device.startswith("cpu") or not torch.cuda.is_available():
        return 1
    count = torch.cuda.device_count()
    return max(1, min(count, nproc or count))


def torchrun_command(train_cfg, model_cfg, nproc: int) -> list[str]:
    """``torchrun --nproc_per_node N -m blm_lab.train_bytes ...`` reproducing the two configs flag for flag."""
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "blm_lab.train_bytes"]
    if train_cfg.dataset:
        cmd.append(train_cfg.dataset)
    for cfg, skip in ((model_cfg, ("vocab_size",)), (train_cfg, ("dataset", "device", "progress"))):
        for f in dataclasses.fields(cfg):
            if f.name in skip:
                continue
            value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                cmd.append(flag if value else "--no-" + flag[2:])
            else:
                cmd += [flag, str(value)]
    cmd += ["--device", "cuda", "--no-progress"]
    return cmd


def run_training(train_cfg, model_cfg, corpus: Corpus, callback: Callable[[dict], None] | None = None,
                 nproc: int = 1):
    """Train and return the TrainResult: in this process, or with DDP over several GPUs.

    With more than one GPU and ``nproc`` != 1, training runs as ``torchrun --nproc_per_node N -m
    blm_lab.train_bytes`` in a subprocess; its metrics.jsonl is followed so ``callback`` still sees every
    evaluation as it happens, and the result is read back from the checkpoint. Otherwise (CPU, one GPU)
    it trains here.
    """
    import subprocess
    import time

    from .checkpoint import load_checkpoint
    from .train import TrainResult, train

    n = training_processes(nproc, train_cfg.device)
    if n == 1:
        return train(train_cfg, model_cfg, corpus=corpus, callback=callback)
    train_cfg = dataclasses.replace(train_cfg, dataset="" if corpus.source == "default" else corpus.source)
    out = Path(train_cfg.output_dir)
    metrics = out / "metrics.jsonl"
    if metrics.exists() and not train_cfg.resume:
        metrics.unlink()
    start = time.perf_counter()
    proc = subprocess.Popen(torchrun_command(train_cfg, model_cfg, n))
    seen: list[dict] = []

    def follow():
        if metrics.exists():
            lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
            for line in lines[len(seen):]:
                seen.append(json.loads(line))
                if callback is not None:
                    callback(seen[-1])

    while proc.poll() is None:
        follow()
        time.sleep(2.0)
    follow()
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun with {n} processes failed (exit {proc.returncode}); see the log above")
    model, ckpt = load_checkpoint(out / "best.pt")
    tokens = int(seen[-1]["step"] * train_cfg.batch_size * train_cfg.grad_accum * model_cfg.block_size)
    elapsed = time.perf_counter() - start
    return TrainResult(best_val_bpb=min(r["val_bpb"] for r in seen), final_val_bpb=seen[-1]["val_bpb"],
                       steps=seen[-1]["step"], tokens=tokens, elapsed_s=elapsed, tokens_per_s=tokens / elapsed,
                       output_dir=str(out), checkpoint=str(out / "best.pt"), history=seen, model=model)


class LiveLossPlot:
    """Train and validation bits per byte against steps, redrawn in place after every evaluation.

    Pass the object as ``train(..., callback=plot)``. ``display()`` shows the figure once and keeps an
    IPython display handle, which every later record updates (live in JupyterLab; in a papermill run the
    stored output is the final curve). ``save(path)`` writes the PNG.
    """

    def __init__(self, title: str = "training curve"):
        self.title = title
        self.records: list[dict] = []
        self.fig, self.ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
        plt.close(self.fig)  # shown through the display handle only
        self._handle = None
        self._draw()

    def __call__(self, record: dict) -> None:
        self.records.append(dict(record))
        self._draw()
        if self._handle is not None:
            self._handle.update(self.fig)

    def display(self):
        from IPython.display import display

        self._handle = display(self.fig, display_id=True)
        return self._handle

    def _draw(self) -> None:
        ax = self.ax
        ax.clear()
        steps = [r["step"] for r in self.records]
        train = [(r["step"], r["train_bpb"]) for r in self.records if r.get("train_bpb") is not None]
        ax.plot(steps, [r["val_bpb"] for r in self.records], "o-", color="tab:red", label="validation")
        if train:
            ax.plot(*zip(*train), "s--", color="tab:blue", label="train (mean since last eval)")
        ax.set_xlabel("step")
        ax.set_ylabel("bits per byte")
        last = f": val {self.records[-1]['val_bpb']:.3f} bits/byte at step {steps[-1]}" if self.records else \
            " (waiting for the first evaluation)"
        ax.set_title(self.title + last)
        ax.grid(alpha=0.3)
        if self.records:
            ax.legend(loc="upper right")

    def save(self, path: str | os.PathLike) -> Path:
        return save_figure(self.fig, path)


def save_train_result(run_dir: str | os.PathLike, result, train_cfg, model_cfg, device_info: dict) -> dict:
    """Write ``train.json``: the TrainResult's numbers (not the history), parameter count, configs and device."""
    from .checkpoint import read_checkpoint

    ckpt = read_checkpoint(result.checkpoint)
    summary = result.summary()
    summary.update(num_params=int(ckpt["num_params"]), best_step=int(ckpt["step"]), device_info=device_info,
                   model_config=model_cfg.to_dict(), train_config=dataclasses.asdict(train_cfg))
    write_json(run_path(run_dir) / TRAIN_FILE, summary)
    return summary


def result_frame(summary: dict) -> pd.DataFrame:
    keys = ["best_val_bpb", "final_val_bpb", "steps", "best_step", "tokens", "elapsed_s", "tokens_per_s", "num_params",
            "checkpoint"]
    return pd.DataFrame({"value": [summary[k] for k in keys]}, index=keys)


# ----------------------------------------------------------------------------- 03 and 04: the trained model

def checkpoint_path(run_dir: str | os.PathLike, checkpoint: str = "") -> Path:
    """``checkpoint`` when given, else the run's ``checkpoint/best.pt``."""
    return Path(checkpoint).expanduser() if checkpoint else Path(run_dir) / CHECKPOINT


def entropy_input(run_dir: str | os.PathLike, text: str = "", file: str = "", max_bytes: int = 4096) -> dict:
    """Keyword arguments for ``make_explorer``: the text, else the file, else the start of the run's validation split.

    The validation sample is written to ``RUN_DIR/validation_sample.bin`` (the first ``max_bytes`` bytes),
    so the explorer's file field shows what was analysed.
    """
    if text:
        return {"text": text}
    if file:
        return {"file": file}
    corpus, info = load_run_corpus(run_dir)
    _, val_data = corpus.split(info["val_fraction"])
    sample = run_path(run_dir) / "validation_sample.bin"
    sample.write_bytes(val_data[:max_bytes].tobytes())
    return {"file": str(sample)}


def compression_inputs(run_dir: str | os.PathLike, files=None, max_bytes: int = 0) -> dict[str, bytes]:
    """What 04 compresses: ``files`` (a path, a comma-separated string or a list), else the validation split.

    ``max_bytes`` > 0 keeps only the first bytes of each input.
    """
    if isinstance(files, str):
        files = [f.strip() for f in files.split(",") if f.strip()]
    if files:
        missing = [f for f in files if not Path(f).expanduser().is_file()]
        if missing:
            raise BlmError(f"cannot read {', '.join(missing)}: not a file; check the files parameter")
        inputs = {Path(f).name: Path(f).expanduser().read_bytes() for f in files}
    else:
        corpus, info = load_run_corpus(run_dir)
        _, val_data = corpus.split(info["val_fraction"])
        inputs = {"validation split": val_data.tobytes()}
    return {name: data[:max_bytes] if max_bytes else data for name, data in inputs.items()}


def training_bytes(run_dir: str | os.PathLike) -> bytes:
    corpus, info = load_run_corpus(run_dir)
    return corpus.split(info["val_fraction"])[0].tobytes()


def compressor_registry(model, train_bytes: bytes, segments: int | None = None) -> dict:
    """The classic compressors, zstd with a dictionary trained on ``train_bytes``, and the model (``blm``).

    The dictionary is at most zstd's default 110 KiB and at most a tenth of the training bytes, since
    zstd needs many samples per dictionary byte; a corpus too small to train one leaves it out.
    """
    from .baselines import ZstdDictCompressor, classic_compressors
    from .compress import NeuralCompressor

    registry = dict(classic_compressors())
    dict_size = min(112_640, len(train_bytes) // 10)
    sample_size = max(256, min(4096, len(train_bytes) // 64))
    try:
        zstd_dict = ZstdDictCompressor.from_training(train_bytes, dict_size=dict_size, sample_size=sample_size)
        registry[zstd_dict.name] = zstd_dict
    except BlmError as exc:
        print(f"note: no zstd dictionary: {exc}")
    neural = NeuralCompressor(model, name="blm", segments=segments)
    registry[neural.name] = neural
    return registry


def neural_report(table: pd.DataFrame, compressor=None) -> pd.DataFrame:
    """The model's rows: actual vs ideal bits per byte, the coder's overhead, speed and the size-adjusted ratio."""
    if "ideal_bits_per_byte" not in table:  # no compressor in the table reported a model
        return pd.DataFrame()
    rows = table[table["ideal_bits_per_byte"].notna()]
    report = rows[["file", "compressor", "original_bytes", "bits_per_byte", "ideal_bits_per_byte",
                   "adjusted_bits_per_byte", "ratio", "adjusted_ratio", "compress_s", "decompress_s", "verified"]].copy()
    report["overhead_percent"] = 100 * (report["bits_per_byte"] / report["ideal_bits_per_byte"] - 1)
    report["compress_KBps"] = report["original_bytes"] / 1024 / report["compress_s"]
    report["decompress_KBps"] = report["original_bytes"] / 1024 / report["decompress_s"]
    return report.reset_index(drop=True)


def save_table(table: pd.DataFrame, run_dir: str | os.PathLike, name: str = COMPRESSION_TABLE) -> tuple[Path, Path]:
    """Write ``NAME.csv`` and ``NAME.md`` (Markdown, via ``baselines.table_markdown``) into the run directory."""
    from .baselines import table_markdown

    run = run_path(run_dir)
    csv_path, md_path = run / f"{name}.csv", run / f"{name}.md"
    table.to_csv(csv_path, index=False)
    md_path.write_text(table_markdown(table) + "\n")
    return csv_path, md_path


def bits_per_byte_by_compressor(table: pd.DataFrame) -> dict[str, float]:
    """Compressed bits per original byte for each compressor, over all files together."""
    totals = table.groupby("compressor", sort=False)[["compressed_bytes", "original_bytes"]].sum()
    return {name: 8.0 * row.compressed_bytes / row.original_bytes if row.original_bytes else math.nan
            for name, row in totals.iterrows()}
