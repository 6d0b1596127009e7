"""The research lab at file scale: analysing and patching ~1 MB with the CPU recipe model, its memory,
and the explorer's redraw time per position or slider change.

Measures, on the first ``--bytes`` of ``--file`` (default: the Canterbury large texts, concatenated):

* ``analyze_bytes`` (the model pass: surprisal, entropy, top guesses) and ``solve_rules`` (every BLT
  rule solved for a mean length, with its fixed-stride baseline), in seconds, and together;
* the peak resident memory the analysis added (ru_maxrss before and after: the process's high-water
  mark, so run this script alone) and the bytes the ByteAnalysis keeps;
* the explorer's redraws on that analysis: a position change (coloured text window, info line,
  next-byte bars), a threshold change with patch boundaries on, and a vmax change; median and max
  over ``--redraws`` random positions; and the load average, since the machine is shared;
* with ``--trace-bytes N``, what the per-byte trace costs: N bytes compressed by blm (the model and
  mixing, 28 streams) and by context mixing alone, each with and without ``trace=True``, alternating
  ``--trace-repeats`` times; median seconds of each and the ratio (target: at most 1.10), and the
  files compared (they must be identical).

The model is the ``cpu`` recipe's shape (``training.config.recipe("cpu")``) with the weights of
``--checkpoint`` when given, else random ones (the time and memory of a pass do not depend on the
weights; patch figures do, so they are printed only with a checkpoint).

    PYTHONPATH=. python benchmarks/bench_explorer.py --bytes 50000                 # recipe model: speed of the pass
    PYTHONPATH=. python benchmarks/bench_explorer.py --bytes 1000000 --model tiny   # 1 MB: memory and redraws
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from blm_lab.checkpoint import load_checkpoint
from blm_lab.gpt import BytesGPT, BytesGPTConfig
from blm_lab.patching import patch_table, solve_rules
from blm_lab.scoring import analyze_bytes
from blm_lab.training.config import recipe

CANTERBURY = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "canterbury"
LARGE = ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt", "E.coli", "bible.txt", "world192.txt")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load_text(path: str, n: int) -> bytes:
    if path:
        return Path(path).read_bytes()[:n]
    data = b""
    for name in LARGE:
        p = CANTERBURY / name
        if p.is_file():
            data += p.read_bytes()
        if len(data) >= n:
            break
    return data[:n]


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def trace_cost(model, data: bytes, repeats: int) -> None:
    """Compression time with and without the per-byte trace, alternating, for blm and cm alone."""
    from blm_lab.codec.neural import compress_with_stats

    for label, m, options in (("blm, 28 streams", model, {"segments": 28}), ("cm alone, 1 stream", None, {})):
        seconds = {False: [], True: []}
        blobs = set()
        compress_with_stats(data[:4096], m, trace=True, **options)  # compiled kernels loaded before timing
        for _ in range(repeats):
            for trace in (False, True):
                blob, stats = compress_with_stats(data, m, trace=trace, **options)
                seconds[trace].append(stats.seconds)
                blobs.add(blob)
        off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
        print(f"trace cost, {label}, {len(data):,} bytes: {off:.2f} s without, {on:.2f} s with "
              f"(ratio {on / off:.3f}; runs {[round(x, 2) for x in seconds[False]]} / "
              f"{[round(x, 2) for x in seconds[True]]}); files identical: {len(blobs) == 1}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=1_000_000)
    parser.add_argument("--file", default="", help="default: the Canterbury large texts, concatenated")
    parser.add_argument("--checkpoint", default="", help="a trained model (default: the cpu recipe, random weights)")
    parser.add_argument("--model", choices=("cpu", "tiny"), default="cpu",
                        help="tiny: 1 layer, 32 wide, block 16, for redraw and memory figures on a big file quickly")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--redraws", type=int, default=20)
    parser.add_argument("--target", type=float, default=4.5, help="mean patch length the rules are solved for")
    parser.add_argument("--trace-bytes", type=int, default=0, help="also time compression with and without the trace")
    parser.add_argument("--trace-repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, device="cpu")
    else:
        torch.manual_seed(0)
        model = BytesGPT(recipe("cpu")[1] if args.model == "cpu" else
                         BytesGPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32))
    model.eval()
    data = load_text(args.file, args.bytes)
    cfg = model.config
    print(f"model: {'checkpoint ' + args.checkpoint if args.checkpoint else args.model + ' shape, random weights'} "
          f"({cfg.n_layer} layers, {cfg.n_embd} wide, block {cfg.block_size}, {model.num_params():,} parameters); "
          f"{len(data):,} bytes; {torch.get_num_threads()} threads")

    if args.trace_bytes:
        trace_cost(model, data[:args.trace_bytes], args.trace_repeats)

    before = peak_mib()
    analysis, t_analysis = timed(analyze_bytes, model, data)
    after = peak_mib()
    kept = sum(a.nbytes for a in (analysis.surprisal, analysis.entropy, analysis.top_bytes, analysis.top_probs,
                                  analysis.rank)) + len(analysis.data)
    patchings, t_patch = timed(solve_rules, analysis.entropy_nats, analysis.surprisal, args.target)
    print(f"analysis (model pass): {t_analysis:.1f} s; patching, 3 rules solved + baselines: {t_patch:.2f} s; "
          f"together {t_analysis + t_patch:.1f} s ({len(data) / 1e3 / (t_analysis + t_patch):.1f} KB/s)")
    print(f"memory: the analysis keeps {kept / 2**20:.1f} MiB ({kept / len(data):.0f} bytes a byte); peak RSS "
          f"{before:.0f} -> {after:.0f} MiB (+{after - before:.0f} MiB during the pass)")
    if args.checkpoint:
        print(patch_table(patchings).to_string(index=False))

    import matplotlib

    matplotlib.use("Agg")
    from blm_lab.viz.explorer import EntropyExplorer

    explorer = EntropyExplorer(model, analysis=analysis, max_bytes=None)
    rng = np.random.default_rng(0)
    positions = rng.integers(1, len(analysis), size=args.redraws)
    times = {"position": [], "threshold (boundaries on)": [], "vmax": []}
    explorer.patches.value = True
    for i, position in enumerate(positions):
        times["position"].append(timed(setattr, explorer.position, "value", int(position))[1])
        times["threshold (boundaries on)"].append(timed(setattr, explorer.threshold, "value", 0.5 + 0.1 * (i % 30))[1])
        times["vmax"].append(timed(setattr, explorer.vmax, "value", 4.0 + 0.5 * (i % 8))[1])
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, values in times.items():
        print(f"redraw on {name} change: median {1e3 * statistics.median(values):.0f} ms, "
              f"max {1e3 * max(values):.0f} ms over {len(values)}")


if __name__ == "__main__":
    main()
