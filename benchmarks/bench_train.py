"""Train for a fixed wall-clock budget on tiny-shakespeare (nanoGPT's split) and print the curve.

    python benchmarks/bench_train.py                      # the 10-minute CPU recipe
    python benchmarks/bench_train.py --time-budget 120 --n-layer 2

Prints train tokens/s, validation bits per byte against minutes, and the final validation bits per
byte on the last 10% of the file (111,540 bytes). On CUDA it also prints model FLOPs utilisation.
The time budget counts everything in the training loop, evaluations included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blm_lab.gpt import BytesGPT  # noqa: E402
from blm_lab.training.config import add_train_arguments, configs_from_args, recipe  # noqa: E402
from blm_lab.training.loop import train  # noqa: E402
from blm_lab.workbench.watch import describe_record  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare" / "input.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--recipe", default="cpu", help="recipe whose settings are the defaults (cpu or gpu)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="GPU peak for MFU (default: looked up by name)")
    known, rest = parser.parse_known_args()
    train_defaults, model_defaults = recipe(known.recipe)
    train_defaults.output_dir = "outputs/bench_train"
    train_cfg, model_cfg = configs_from_args(add_train_arguments(argparse.ArgumentParser(), (train_defaults, model_defaults)).parse_args(rest))
    if not Path(known.data).exists():
        print(f"error: {known.data} not found (the benchmark reads ../shared/corpora/tinyshakespeare/input.txt)", file=sys.stderr)
        return 2
    train_cfg.dataset = known.data
    print(f"model: {model_cfg}\ntrain: {train_cfg}", flush=True)
    callback = None
    if not sys.stdout.isatty():  # a log file: one line per evaluation instead of progress-bar frames
        train_cfg.progress = False
        callback = lambda record: print(describe_record(record), flush=True)  # noqa: E731
    result = train(train_cfg, model_cfg, callback=callback)
    print("\nminutes  step  val_bpb  train_bpb  tokens/s")
    for r in result.history:
        tb = f"{r['train_bpb']:.4f}" if r["train_bpb"] is not None else "   -  "
        print(f"{r['elapsed_s'] / 60:7.2f} {r['step']:5d}  {r['val_bpb']:.4f}  {tb}   {r['tokens_per_s']:,.0f}")
    summary = {
        "final_val_bpb": round(result.final_val_bpb, 4), "best_val_bpb": round(result.best_val_bpb, 4),
        "steps": result.steps, "minutes": round(result.elapsed_s / 60, 2),
        "train_tokens_per_s": round(result.tokens_per_s), "params": BytesGPT(model_cfg).num_params(),
        "checkpoint": result.checkpoint,
    }
    if torch.cuda.is_available():
        from blm_lab.device import peak_tflops
        peak = known.peak_tflops or peak_tflops(torch.cuda.get_device_name())
        flops = BytesGPT(model_cfg).flops_per_token() * result.tokens_per_s
        summary["achieved_tflops"] = round(flops / 1e12, 2)
        if peak:
            summary["mfu_percent"] = round(100 * flops / (peak * 1e12), 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
