"""The portable model's step on the CPU against a previous revision's, side by side in one run.

The model has the CPU recipe's shape (``recipe("cpu")``: 4 layers, 4 heads, 128 wide, block 128), freshly
initialised (the step's speed does not depend on training) and quantized the same way by both revisions.
``--against REV`` exports ``blm_lab`` at REV (``git archive``) into a temporary directory; a worker process
per revision times ``PortableModel.step`` (frequencies included) for each stream count, and the workers
alternate for ``--rounds`` rounds, so that both see the same machine load. Each worker also hashes every
step's frequencies: the two revisions must agree bit for bit, or the run stops. Printed: the median time
per step of each revision and the ratio new / old, per stream count (the median of the per-round ratios).

    python benchmarks/bench_portable_step.py --against e99ffd3 --streams 28 245 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WORKER = r"""
import hashlib, json, sys, time
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from blm_lab.codec.portable import PortableModel
from blm_lab.gpt import BytesGPT
from blm_lab.training.config import recipe
torch.manual_seed(0)
pm = PortableModel.from_float(BytesGPT(recipe("cpu")[1]).eval())
out = {}
for B in args["streams"]:
    rng = np.random.default_rng(B)
    idx = [torch.from_numpy(rng.integers(0, 256, B)) for _ in range(args["warmup"] + args["steps"])]
    cache = pm.new_cache(B)
    h = hashlib.sha256()
    for i in idx[: args["warmup"]]:  # compiles (or loads) the kernels, fills the cache past a roll
        h.update(pm.step(i, cache).tobytes())
    t = time.perf_counter()
    for i in idx[args["warmup"]:]:
        h.update(pm.step(i, cache).tobytes())
    out[str(B)] = {"step_s": (time.perf_counter() - t) / args["steps"], "sha": h.hexdigest()}
print("RESULT" + json.dumps(out))
"""


def run_worker(root: Path, args: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(args["threads"])}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], env=env, capture_output=True, text=True,
                          cwd=root, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"error: the worker for {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT")[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the git revision to compare with (e.g. e99ffd3)")
    parser.add_argument("--streams", type=int, nargs="+", default=[28, 245])
    parser.add_argument("--steps", type=int, default=150, help="timed steps per stream count and round")
    parser.add_argument("--warmup", type=int, default=140, help="untimed steps first (past the block's roll)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()
    args = {"streams": opts.streams, "steps": opts.steps, "warmup": opts.warmup, "threads": opts.threads}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", opts.against, "blm_lab"], capture_output=True)
        if archive.returncode != 0:
            sys.exit(f"error: cannot export revision {opts.against!r}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        runs = {"old": [], "new": []}
        for r in range(opts.rounds):  # alternate, so both revisions see the same load
            for name, root in (("old", old), ("new", REPO)) if r % 2 == 0 else (("new", REPO), ("old", old)):
                runs[name].append(run_worker(root, args))
    print(f"portable step, CPU recipe shape, {opts.threads} thread(s), {opts.steps} steps x {opts.rounds} rounds, "
          f"against {opts.against}")
    for B in map(str, opts.streams):
        shas = {run[B]["sha"] for name in runs for run in runs[name]}
        if len(shas) != 1:
            sys.exit(f"error: the frequencies differ between revisions at {B} streams")
        old_s = statistics.median(run[B]["step_s"] for run in runs["old"])
        new_s = statistics.median(run[B]["step_s"] for run in runs["new"])
        ratio = statistics.median(n[B]["step_s"] / o[B]["step_s"] for n, o in zip(runs["new"], runs["old"]))
        print(json.dumps({"streams": int(B), "old_ms": round(old_s * 1e3, 3), "new_ms": round(new_s * 1e3, 3),
                          "new_over_old": round(ratio, 3), "freqs_identical": True}))


if __name__ == "__main__":
    main()
