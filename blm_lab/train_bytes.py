"""Train a BytesGPT on raw bytes: ``python -m blm_lab.train_bytes DATASET [flags]``.

The flags are derived from the fields of BytesGPTConfig and TrainConfig, so they cannot drift from
what they set; each is accepted with dashes or underscores (``--n-layer`` and ``--n_layer``).
Multi-GPU / multi-node: ``torchrun --nproc_per_node N -m blm_lab.train_bytes DATASET ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from .errors import BlmError
from .gpt import BytesGPTConfig
from .train import TrainConfig, train

MODEL_HELP = {
    "block_size": "bytes of context (training window and KV-cache length)",
    "n_layer": "transformer blocks",
    "n_head": "attention heads",
    "n_embd": "embedding width",
    "dropout": "dropout probability",
    "bias": "use biases in Linear and LayerNorm",
    "vocab_size": "vocabulary size (256 byte values)",
    "rope_base": "rotary embedding frequency base",
    "mlp_ratio": "MLP hidden width in multiples of n_embd",
}


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip=(), helps=None) -> None:
    """One flag per dataclass field, spelled with dashes and with underscores; bools are switches."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        names = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            names.append(f"--{f.name}")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = (helps or {}).get(f.name) or f.metadata.get("help", "")
        kind = hints[f.name]
        if kind is bool:
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                               help=help_text)
        else:
            group.add_argument(*names, dest=f.name, type=kind, default=default, metavar=f.name.upper(),
                               help=f"{help_text} (default: {default})".strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m blm_lab.train_bytes",
        description="Train a byte-level GPT on any files. Validation loss is reported in bits per byte.",
    )
    parser.add_argument("dataset_pos", nargs="?", default=None, metavar="DATASET",
                        help="file, directory or comma-separated list read as raw bytes (default: embedded corpus)")
    add_dataclass_arguments(parser, BytesGPTConfig, skip=("vocab_size",), helps=MODEL_HELP)
    add_dataclass_arguments(parser, TrainConfig, skip=("dataset",))
    parser.add_argument("--json", action="store_true", help="print a one-line JSON summary at the end")
    return parser


def configs_from_args(args: argparse.Namespace) -> tuple[TrainConfig, BytesGPTConfig]:
    values = vars(args)
    model_cfg = BytesGPTConfig(**{f.name: values[f.name] for f in dataclasses.fields(BytesGPTConfig) if f.name in values})
    train_kwargs = {f.name: values[f.name] for f in dataclasses.fields(TrainConfig) if f.name in values}
    train_kwargs["dataset"] = args.dataset_pos or ""
    return TrainConfig(**train_kwargs), model_cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        train_cfg, model_cfg = configs_from_args(args)
        result = train(train_cfg, model_cfg)
    except (BlmError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint written is intact", file=sys.stderr)
        return 130
    import os
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"validation: {result.final_val_bpb:.4f} bits/byte (best {result.best_val_bpb:.4f}) after {result.steps} steps, "
              f"{result.elapsed_s:.0f} s, {result.tokens_per_s:,.0f} tokens/s; checkpoint: {result.checkpoint}")
        if args.json:
            print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
