"""A 4-point CPU sweep, one point after another (2 torch threads) and on a local Dask cluster of 2
workers (1 thread each), both in this one run: the wall-clock ratio and the engine's overhead per point.

    python benchmarks/bench_sweep.py                   # the issue's setting: 360 steps a point (~90 s alone)
    python benchmarks/bench_sweep.py --max-steps 60 -p n_embd 64   # a shorter measurement

Every point trains the CPU recipe's model for a fixed number of steps (no time budget, so both engines
do the same work) on tiny-shakespeare; the four points differ only in the learning rate. Notebook 01
runs once per sweep, in both. Target: the Dask sweep in at most 0.65x the sequential one's time.

The engine's overhead per point is the time its worker sat idle before the point started (submission,
or the worker's previous point's end, to the point's start), plus, once, the time from the last point's
end to the table (gathering, writing, closing the cluster). Target: at most 10 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blm_lab.workbench.engine import Dask, Sequential  # noqa: E402
from blm_lab.workbench.runner import parse_value, sweep  # noqa: E402
from blm_lab.workbench.watch import read_state  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare" / "input.txt"
LEARNING_RATES = (1e-3, 2e-3, 3e-3, 4e-3)


def timed_sweep(engine, root: Path, params: dict) -> tuple[float, list[dict], float, list[int]]:
    """(wall seconds, each point's point.json, seconds from the last point's end to the table, the torch
    threads each point's training used)."""
    points = [{"name": f"lr={lr:g}", "lr": lr} for lr in LEARNING_RATES]
    t0 = time.time()
    table, _ = sweep(points, params, root=root, compress=False, engine=engine, progress=False, force=True)
    end = time.time()
    states = [read_state(Path(d)) for d in table["run_dir"]]
    failed = table[table["status"] != "done"]
    if len(failed):
        raise SystemExit(f"error: points failed: {failed[['point', 'error']].to_dict('records')}")
    return end - t0, states, end - max(s["finished_at"] for s in states), sorted(set(table["threads"]))


def idle_before_start(states: list[dict]) -> list[float]:
    """Each point's wait that no point's work explains: from submission, or from its worker's previous
    point's end, whichever is later, to its start."""
    out = []
    for state in states:
        earlier = [s["finished_at"] for s in states if s["worker"] == state["worker"]
                   and s["finished_at"] <= state["started_at"]]
        out.append(state["started_at"] - max([state["submitted_at"], *earlier]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--max-steps", type=int, default=360, help="training steps per point (default: 360, "
                        "about 90 s alone with 2 threads on the README's machine)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench_sweep")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter for every point, e.g. -p n_embd 64 for a smaller measurement")
    args = parser.parse_args()
    if not Path(args.data).exists():
        print(f"error: {args.data} not found (the benchmark reads ../shared/corpora/tinyshakespeare/input.txt)",
              file=sys.stderr)
        return 2
    params = {"data_dir": str(Path(args.data).resolve()), "device": "cpu", "max_steps": args.max_steps,
              "time_budget": 0, "eval_interval": max(1, args.max_steps // 3),
              **{name: parse_value(value) for name, value in args.param}}
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)

    print(f"4 points x {args.max_steps} steps, sequential (this process, 2 threads) ...", flush=True)
    seq_s, _, _, seq_threads = timed_sweep(Sequential(), out / "sequential", params)
    print(f"  {seq_s:.1f} s", flush=True)
    print(f"4 points x {args.max_steps} steps, Dask, {args.workers} local workers ...", flush=True)
    t0 = time.time()
    engine = Dask.local(args.workers, gpus=[])
    start_s = time.time() - t0
    dask_s, dask_states, after_last, dask_threads = timed_sweep(engine, out / "dask", params)
    dask_s += start_s
    idle = idle_before_start(dask_states)
    per_point = [i + after_last / len(idle) for i in idle]
    print(f"  {dask_s:.1f} s (cluster start {start_s:.1f} s included)", flush=True)
    result = {
        "max_steps": args.max_steps, "sequential_s": round(seq_s, 1), "dask_s": round(dask_s, 1),
        "ratio": round(dask_s / seq_s, 3), "target_ratio": 0.65,
        "torch_threads": {"sequential": seq_threads, "dask": dask_threads},
        "cluster_start_s": round(start_s, 2),
        "idle_before_start_s": [round(i, 2) for i in idle],
        "after_last_point_s": round(after_last, 2),
        "engine_overhead_per_point_s": round(max(per_point), 2), "target_overhead_s": 10.0,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
