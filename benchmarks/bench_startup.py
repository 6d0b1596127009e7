"""Start-up of the ``blm-lab`` command, this checkout against another tree, side by side in one run.

    git archive e99ffd3 | tar -x -C /tmp/oldtree
    python benchmarks/bench_startup.py --against /tmp/oldtree --repeats 5

Times, in fresh processes, ``blm-lab --help``, ``blm-lab train --help`` and ``blm-lab compress`` of a
3-byte file without a model, alternating between the two trees (each imported through PYTHONPATH). One
untimed run of each first fills both trees' numba caches, so the figures are warm-cache start-up. Prints
the median seconds of each and the ratio new/old, and whether each command imported torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# run the command's main() as the console script does, then report whether torch was imported
PROBE = ("import json, sys\nimport blm_lab\nfrom blm_lab.cli import main\ntry:\n    main(json.loads(sys.argv[1]))\n"
         "except SystemExit:\n    pass\n"
         "print(json.dumps({'torch': 'torch' in sys.modules, 'file': blm_lab.__file__}), file=sys.stderr)\n")


def run(tree: Path, argv: list[str], cwd: Path) -> tuple[float, bool]:
    """Seconds for one fresh process to run ``blm-lab ARGV`` from ``tree``, and whether it imported torch."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.perf_counter()  # cwd: not a checkout, or `python -c` would import the blm_lab found there
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not done.stderr.strip():
        raise SystemExit(f"error: {argv} failed under {tree}:\n{done.stderr}")
    probe = json.loads(done.stderr.strip().splitlines()[-1])
    if not Path(probe["file"]).resolve().is_relative_to(tree):
        raise SystemExit(f"error: imported {probe['file']}, not the blm_lab in {tree}")
    return seconds, probe["torch"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the other tree (a directory holding blm_lab/)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each command in each tree")
    args = parser.parse_args()
    old = Path(args.against).resolve()
    if not (old / "blm_lab" / "__init__.py").is_file():
        print(f"error: {old} holds no blm_lab/; extract a revision there (git archive REV | tar -x -C DIR)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "three.txt", Path(tmp) / "three.blm"
        src.write_bytes(b"abc")
        commands = {"--help": ["--help"], "train --help": ["train", "--help"],
                    "compress 3 bytes": ["compress", str(src), str(out), "--force", "--quiet"]}
        for argv in commands.values():  # warm both numba caches (and the OS file cache)
            run(old, argv, Path(tmp)), run(REPO, argv, Path(tmp))
        print(f"{'command':<18} {'old s':>7} {'new s':>7} {'new/old':>8}  torch old/new")
        for name, argv in commands.items():
            times, torch_loaded = {"old": [], "new": []}, {}
            for _ in range(args.repeats):
                for label, tree in (("old", old), ("new", REPO)):
                    seconds, torch_loaded[label] = run(tree, argv, Path(tmp))
                    times[label].append(seconds)
            old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
            imported = f"{torch_loaded['old']}/{torch_loaded['new']}"
            print(f"{name:<18} {old_s:7.2f} {new_s:7.2f} {new_s / old_s:8.2f}  {imported}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
