"""What a training run is: ``TrainConfig``, the named recipes, and the workbench's choice of recipe per device.

``cpu``: 4 layers, 4 heads, 128 wide, block 128, batch 32; ReLU^2, RMSNorm, QK-norm, tied head; Muon for
the blocks' matrices (AdamW for the rest, peak LR 2e-3) with a warmup-stable-decay schedule, over a
10-minute time budget. Measured on the 2-core development machine on tiny-shakespeare (nanoGPT's split):
2.092 validation bits per byte after 10 minutes, where blm_lab 0.1's settings (``baseline``) reached
2.199 (benchmarks/bench_train.py; the curve and the ablation are in the README).
``gpu``: nanoGPT's shakespeare size (6 layers, 6 heads, 384 wide, block 256) in bf16.

``baseline``: blm_lab 0.1's settings (the dataclasses' defaults: AdamW, cosine, GELU, LayerNorm), for comparisons.

The training command (``blm-lab train``, ``python -m blm_lab.train_bytes``) takes a recipe's model and
optimiser settings as its defaults (``recipe_fields``; ``gpu`` on CUDA, ``cpu`` elsewhere, or ``--recipe``),
but not its time budget. ``workbench_configs`` is the training notebook's policy: the recipe of the device
found, shortened on CPU so that ``make run`` stays within about ten minutes, with the notebook's parameters
(``notebook_settings``) applied.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..flags import add_arguments, from_namespace
from ..gpt_config import BytesGPTConfig


OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


@dataclass
class TrainConfig:
    dataset: str = field(default="", metadata={"help": "file, directory or comma-separated list; empty = embedded default corpus"})
    output_dir: str = field(default="checkpoints", metadata={"help": "where best.pt, last.pt, metrics.jsonl and result.json go"})
    batch_size: int = field(default=32, metadata={"help": "sequences per optimizer step (per micro-step when grad_accum > 1)", "recipe": True})
    grad_accum: int = field(default=1, metadata={"help": "micro-steps per optimizer step; effective batch = batch_size * grad_accum on any number of processes"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training windows (fractions allowed)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = no limit)"})
    time_budget: float = field(default=0.0, metadata={"help": "stop after SECONDS of training; the LR schedule then anneals on time (0 = no limit)"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW's peak learning rate: every parameter under --optimizer adamw; under muon, the embeddings, head and norms only (--muon-lr sets the blocks' matrices)", "recipe": True})
    min_lr: float = field(default=2e-4, metadata={"help": "AdamW's learning rate at the end of the decay (Muon's ends at the same fraction of --muon-lr)", "recipe": True})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps", "recipe": True})
    weight_decay: float = field(default=0.1, metadata={"help": "weight decay on matrices (AdamW's and Muon's)", "recipe": True})
    beta1: float = field(default=0.9, metadata={"help": "AdamW's beta1", "recipe": True})
    beta2: float = field(default=0.99, metadata={"help": "AdamW's beta2", "recipe": True})
    optimizer: str = field(default="adamw", metadata={"help": "adamw, or muon: Muon (--muon-lr) for the blocks' weight matrices and AdamW (--lr) for the rest", "recipe": True})
    muon_lr: float = field(default=0.02, metadata={"help": "Muon's peak learning rate for the blocks' weight matrices (under --optimizer muon)", "recipe": True})
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon's Nesterov momentum", "recipe": True})
    schedule: str = field(default="cosine", metadata={"help": "learning rate after warmup: cosine (to min_lr), or wsd (flat, then linear to min_lr)", "recipe": True})
    decay_fraction: float = field(default=0.3, metadata={"help": "wsd: the last fraction of the run over which the learning rate decays", "recipe": True})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm (0 = off)", "recipe": True})
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
    force: bool = field(default=False, metadata={"help": "start afresh in a non-empty OUTPUT_DIR, replacing its checkpoints and metrics"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self):
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("epochs", "max_steps", "time_budget", "eval_interval", "eval_batches", "stride", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.epochs == 0 and self.max_steps == 0 and self.time_budget == 0:
            raise ConfigError("nothing bounds the run: give --epochs, --max-steps or --time-budget")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"--decay-fraction must be in (0, 1], got {self.decay_fraction}")
        if self.resume and self.force:
            raise ConfigError("--resume continues the run in OUTPUT_DIR and --force replaces it; give one of them")

    @property
    def device_preference(self) -> str:
        return "cpu" if self.cpu else self.device


TRAIN_DESCRIPTION = "Train a byte-level GPT on any files. Validation loss is reported in bits per byte."
TRAIN_INTERRUPTED = "interrupted; the last checkpoint written is intact"

MODEL_HELP = {
    "block_size": "bytes of context (training window and KV-cache length)",
    "n_layer": "transformer blocks",
    "n_head": "attention heads",
    "n_embd": "embedding width",
    "dropout": "dropout probability",
    "bias": "use biases in Linear and LayerNorm",
    "rope_base": "rotary embedding frequency base",
    "mlp_ratio": "MLP hidden width in multiples of n_embd",
    "mlp": "MLP activation: gelu or relu2 (ReLU squared)",
    "norm": "layernorm or rmsnorm",
    "qk_norm": "RMS-normalise each head's queries and keys",
    "tie_embeddings": "the output head shares the input embedding's weights",
    "value_residual": "later layers mix the first layer's values into their own",
}


# The command line's recipes: ``auto`` is ``gpu`` on CUDA and ``cpu`` elsewhere.
COMMAND_RECIPES = ("auto", "cpu", "gpu", "baseline")


def recipe_fields() -> tuple[set[str], set[str]]:
    """(TrainConfig fields, BytesGPTConfig fields) whose defaults on the command line come from a recipe: the
    model's every field (vocab_size aside) and the optimiser's (the TrainConfig fields marked ``recipe``).
    How long a run is (--epochs, --max-steps, --time-budget), where it runs and what it writes are the
    command's own: a recipe's time budget is the notebook's, not the command line's."""
    train = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("recipe")}
    model = {f.name for f in dataclasses.fields(BytesGPTConfig) if f.name != "vocab_size"}
    return train, model


def _recipe_values_text(name: str, which: int) -> str:
    """What --help gives as a recipe field's default: the recipes' values, e.g. ``cpu and baseline 128, gpu 256``."""
    by_value: dict[str, list[str]] = {}
    for recipe_name in ("cpu", "gpu", "baseline"):
        by_value.setdefault(str(getattr(RECIPES[recipe_name][which], name)), []).append(recipe_name)
    if len(by_value) == 1:
        return next(iter(by_value))
    return ", ".join(f"{' and '.join(names)} {value}" for value, names in by_value.items())


def add_train_arguments(parser: argparse.ArgumentParser, defaults: tuple | None = None) -> argparse.ArgumentParser:
    """The training command's arguments: DATASET, --recipe, then one flag per field of BytesGPTConfig and
    TrainConfig.

    Without ``defaults`` the model and optimiser flags default to None, and ``configs_from_args`` fills them
    from the recipe named by --recipe once the device is known; --help lists every recipe's values (without
    importing torch). ``defaults`` (a (TrainConfig, BytesGPTConfig) pair, e.g. a recipe) replaces the field
    defaults outright instead, and there is no --recipe.
    """
    parser.add_argument("dataset", nargs="?", default=None, metavar="DATASET",
                        help="file, directory or comma-separated list read as raw bytes (default: embedded corpus)")
    if defaults is None:
        parser.add_argument("--recipe", choices=COMMAND_RECIPES, default="auto",
                            help="whose model and optimiser settings are the defaults (each flag overrides its "
                                 "own): auto (default) is gpu on CUDA and cpu elsewhere; baseline is blm_lab 0.1's "
                                 "(AdamW, cosine, GELU, LayerNorm), for comparisons. --help shows each recipe's "
                                 "values; --epochs and --max-steps, not the recipe, decide how long a run is")
        train_fields, model_fields = recipe_fields()
        add_arguments(parser, BytesGPTConfig, skip=("vocab_size",), helps=MODEL_HELP,
                      defaults=dict.fromkeys(model_fields), shown={k: _recipe_values_text(k, 1) for k in model_fields})
        add_arguments(parser, TrainConfig, skip=("dataset",), defaults=dict.fromkeys(train_fields),
                      shown={k: _recipe_values_text(k, 0) for k in train_fields})
    else:
        train_defaults, model_defaults = defaults
        add_arguments(parser, BytesGPTConfig, skip=("vocab_size",), defaults=model_defaults, helps=MODEL_HELP)
        add_arguments(parser, TrainConfig, skip=("dataset",), defaults=train_defaults)
    parser.add_argument("--json", action="store_true", help="print a one-line JSON summary at the end")
    return parser


def configs_from_args(args: argparse.Namespace, on_cuda: bool = False) -> tuple[TrainConfig, BytesGPTConfig]:
    """The (TrainConfig, BytesGPTConfig) that ``add_train_arguments`` flags describe: the flags given, and for
    the rest the --recipe's values (``auto``: the ``gpu`` recipe when ``on_cuda``, else ``cpu``)."""
    name = getattr(args, "recipe", None)
    if name is not None:
        train_fields, model_fields = recipe_fields()
        train_recipe, model_recipe = recipe(("gpu" if on_cuda else "cpu") if name == "auto" else name)
        args = argparse.Namespace(**vars(args))
        for fields, source in ((train_fields, train_recipe), (model_fields, model_recipe)):
            for key in fields:
                if getattr(args, key) is None:
                    setattr(args, key, getattr(source, key))
    return from_namespace(TrainConfig, args, dataset=args.dataset or ""), from_namespace(BytesGPTConfig, args)


# The architecture and optimisation both recipes share: what the 5-minute CPU ablation kept
# (benchmarks/sweeps/cpu_ablation.yaml; the README has its table). Muon, WSD, ReLU^2 and QK-norm each paid;
# an untied head cost 0.018 bits/byte and value residuals bought nothing for 10% fewer steps, so both are
# off; RMSNorm and LayerNorm were level, and RMSNorm is the simpler.
RECIPE_MODEL = dict(mlp="relu2", norm="rmsnorm", qk_norm=True, tie_embeddings=True, value_residual=False)
RECIPE_TRAIN = dict(optimizer="muon", muon_lr=0.02, schedule="wsd", decay_fraction=0.3, weight_decay=0.1, beta2=0.99)

RECIPES: dict[str, tuple[TrainConfig, BytesGPTConfig]] = {
    "cpu": (
        TrainConfig(batch_size=32, lr=2e-3, min_lr=2e-4, warmup_steps=100, epochs=100.0, time_budget=600.0,
                    eval_interval=300, device="cpu", **RECIPE_TRAIN),
        BytesGPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0, **RECIPE_MODEL),
    ),
    "gpu": (
        TrainConfig(batch_size=256, lr=2e-3, min_lr=2e-4, warmup_steps=200, epochs=1000.0, time_budget=300.0,
                    eval_interval=250, amp=True, compile=True, device="cuda", **RECIPE_TRAIN),
        BytesGPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, **RECIPE_MODEL),
    ),
    # blm_lab 0.1's settings, the dataclasses' own defaults (AdamW, cosine, GELU, LayerNorm): for comparisons
    "baseline": (TrainConfig(), BytesGPTConfig()),
}


def recipe(name: str) -> tuple[TrainConfig, BytesGPTConfig]:
    """A fresh copy of a named recipe's (TrainConfig, BytesGPTConfig)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    train_cfg, model_cfg = RECIPES[name]
    return copy.deepcopy(train_cfg), copy.deepcopy(model_cfg)


# The workbench trains on CPU for this long, so that `make run` (all four notebooks) stays within about
# 10 minutes on a 2-core machine; 01, 03 and 04 take under 2 minutes together.
WORKBENCH_CPU_TIME_BUDGET_S = 240.0
WORKBENCH_CPU_EVAL_INTERVAL = 100  # a validation point every ~30-60 s on 2 cores: a curve, not a single dot


def workbench_configs(device: str, output_dir: str, overrides: dict | None = None) -> tuple[TrainConfig, BytesGPTConfig]:
    """(TrainConfig, BytesGPTConfig) for the training notebook on ``device`` ('cpu', 'cuda', 'cuda:N').

    The ``gpu`` recipe on CUDA; elsewhere the ``cpu`` recipe with a ``WORKBENCH_CPU_TIME_BUDGET_S`` budget.
    ``overrides`` maps field names of either dataclass to values; None keeps the recipe's value, and a
    name that is a field of neither is an error. A short ``max_steps`` run still reaches its peak LR
    (warmup is cut to a tenth of the steps).
    """
    on_cuda = device.startswith("cuda")
    train_cfg, model_cfg = recipe("gpu" if on_cuda else "cpu")
    if not on_cuda:
        train_cfg.time_budget, train_cfg.eval_interval = WORKBENCH_CPU_TIME_BUDGET_S, WORKBENCH_CPU_EVAL_INTERVAL
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    model_fields = {f.name for f in dataclasses.fields(BytesGPTConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(given) - model_fields - train_fields)
    if unknown:
        raise ConfigError(f"unknown training setting {', '.join(unknown)}: neither a BytesGPTConfig nor a TrainConfig field")
    model_cfg = dataclasses.replace(model_cfg, **{k: v for k, v in given.items() if k in model_fields})
    train_cfg = dataclasses.replace(train_cfg, **{**{k: v for k, v in given.items() if k in train_fields},
                                                  "device": device, "output_dir": str(output_dir)})
    if not on_cuda:
        train_cfg.amp = False
    if train_cfg.max_steps and train_cfg.warmup_steps >= train_cfg.max_steps:
        train_cfg.warmup_steps = max(1, train_cfg.max_steps // 10)
    return train_cfg, model_cfg


def notebook_settings(namespace: dict) -> dict:
    """The training settings a notebook's parameters name: every entry of ``namespace`` (the notebook's
    ``globals()``) named after a field of TrainConfig or BytesGPTConfig. A field added to either dataclass
    becomes a notebook parameter by adding its name to the parameters cell, nothing else."""
    fields = {f.name for cls in (TrainConfig, BytesGPTConfig) for f in dataclasses.fields(cls)}
    return {name: value for name, value in namespace.items() if name in fields}


def settings_frame(train_cfg: TrainConfig, model_cfg: BytesGPTConfig):
    """The settings that shape a run, as a one-column table (the training notebook shows it)."""
    import pandas as pd

    model_keys = ["n_layer", "n_head", "n_embd", "block_size", "mlp", "norm", "qk_norm", "tie_embeddings",
                  "value_residual", "dropout"]
    train_keys = ["device", "amp", "optimizer", "batch_size", "lr", "muon_lr", "min_lr", "schedule", "warmup_steps",
                  "weight_decay", "max_steps", "time_budget", "eval_interval"]
    values = {**{k: getattr(model_cfg, k) for k in model_keys}, **{k: getattr(train_cfg, k) for k in train_keys}}
    return pd.DataFrame({"value": [str(v) for v in values.values()]}, index=list(values))
