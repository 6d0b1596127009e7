"""Speed side by side with an earlier revision of this repository, in one run (``bench_compress.py --against``).

Both sides run the same command line, ``python -m blm_lab.cli compress|decompress ... --json``, in their own
subprocess with the same interpreter and packages: the working tree (``new``) and ``git archive REV``
unpacked into a temporary directory (``old``; the pins are the project's, so the installed packages serve
both). Runs alternate old/new, so drift in the shared machine's load falls on both sides alike. Per run:

- ``compress_KBps`` / ``decompress_KBps``: bytes over the ``--json`` ``seconds``, the coding time with
  start-up (imports, model load) aside; ``*_wall_s`` is the whole subprocess, start-up included;
- ``peak_MB``: the larger ``ru_maxrss`` of the two subprocesses (``os.wait4``: this child's own, not the
  largest child's so far);
- every decoded file is compared with the input, and the two sides' compressed files with each other
  (the issue's rule: for the same input, model and settings, today's file and the old one are identical).

Each side first codes the first 16 KB of the first file in every mode, untimed, so numba's cache (in each
tree's ``__pycache__``) is warm and compilation stays out of the figures. Each row keeps every run's figure
(``*_runs``, in run order) beside the median, so the spread on a busy machine shows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM_UP_BYTES = 16_384


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class Side:
    """One version of blm_lab: the tree its ``blm_lab`` is imported from, and the thread count it runs with
    (0: what the environment says)."""

    label: str
    root: Path
    threads: int = 0

    def env(self) -> dict:
        pinned = {name: str(self.threads) for name in THREAD_VARIABLES} if self.threads else {}
        return {**os.environ, **pinned, "PYTHONPATH": str(self.root)}


@dataclass(frozen=True)
class Mode:
    """What is coded: ``compress`` flags, and whether decompress needs the model."""

    label: str
    flags: tuple[str, ...]
    model: str | None = None

    def compress_flags(self) -> list[str]:
        return [*self.flags, *(["--model", self.model] if self.model else [])]

    def decompress_flags(self) -> list[str]:
        return ["--model", self.model] if self.model else []


def checkout(rev: str, into: Path, threads: int = 0) -> Side:
    """``git archive REV`` unpacked under ``into``: an earlier blm_lab, importable with PYTHONPATH."""
    git = ["git", "-C", str(ROOT)]
    sha = subprocess.run([*git, "rev-parse", "--short", f"{rev}^{{commit}}"], capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"error: --against {rev}: not a revision of {ROOT} ({sha.stderr.strip()}); "
                         f"give a commit, tag or branch, e.g. --against main")
    archive = subprocess.run([*git, "archive", "--format=tar", rev], capture_output=True, check=True)
    tree = into / f"blm_lab-{sha.stdout.strip()}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return Side(f"old ({rev} = {sha.stdout.strip()})", tree, threads)


def working_tree(threads: int = 0) -> Side:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return Side(f"new (working tree at {head.stdout.strip()}{', modified' if dirty else ''})", ROOT, threads)


def run_measured(argv: list[str], side: Side, cwd: Path) -> tuple[dict, float, float]:
    """Run one CLI command as ``side``; its ``--json`` record, wall seconds and peak RSS in MB.

    The command runs in ``cwd`` (a scratch directory), never in a source tree: ``python -m`` puts the
    working directory first on ``sys.path``, which would import that tree's blm_lab instead of ``side``'s.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "blm_lab.cli", *argv], env=side.env(), cwd=cwd,
                                 stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if child.returncode != 0:
        raise SystemExit(f"error: {side.label}: blm-lab {' '.join(argv)} exited with {child.returncode}:\n{stderr}")
    return json.loads(stdout.strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024  # ru_maxrss is in KiB


def code_once(side: Side, mode: Mode, src: Path, work: Path) -> dict:
    """Compress and decompress ``src`` once with ``side``'s code; speeds, peak memory, the file's hash."""
    blob, back = work / "file.blmz", work / "file.out"
    c, c_wall, c_rss = run_measured(["compress", str(src), str(blob), "--force", "--json", *mode.compress_flags()],
                                    side, work)
    d, d_wall, d_rss = run_measured(["decompress", str(blob), str(back), "--force", "--json",
                                     *mode.decompress_flags()], side, work)
    original = src.read_bytes()
    if back.read_bytes() != original:
        raise SystemExit(f"error: {side.label}, {mode.label}: the decoded file differs from {src}")
    n = len(original)
    return {"compress_KBps": n / 1024 / c["seconds"], "decompress_KBps": n / 1024 / d["seconds"],
            "compress_wall_s": c_wall, "decompress_wall_s": d_wall, "peak_MB": max(c_rss, d_rss),
            "compressed_bytes": blob.stat().st_size, "streams": c["segments"],
            "sha256": hashlib.sha256(blob.read_bytes()).hexdigest()}


def compare_sides(old: Side, new: Side, modes: list[Mode], files: dict[str, bytes], repeats: int,
                  emit) -> list[dict]:
    """Every mode on every file, ``repeats`` times per side, alternating old/new; one summary row each."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="blm_against_") as tmp:
        work = Path(tmp)
        warm = work / "warm.bin"
        warm.write_bytes(next(iter(files.values()))[:WARM_UP_BYTES])
        for side in (old, new):
            for mode in modes:
                code_once(side, mode, warm, work)
        for name, data in files.items():
            src = work / "input.bin"
            src.write_bytes(data)
            for mode in modes:
                runs = {old.label: [], new.label: []}
                for r in range(repeats):
                    for side in ((old, new) if r % 2 == 0 else (new, old)):
                        runs[side.label].append(code_once(side, mode, src, work))
                rows.append(summarise(name, len(data), mode, old, new, runs))
                emit(rows[-1])
    return rows


def summarise(name: str, n: int, mode: Mode, old: Side, new: Side, runs: dict[str, list[dict]]) -> dict:
    """Medians per side, new/old ratios (above 1: the new code is faster), peak memory, identical files."""
    def median(side, key):
        return statistics.median(r[key] for r in runs[side.label])

    row = {"file": name, "bytes": n, "mode": mode.label, "streams": runs[new.label][0]["streams"],
           "repeats": len(runs[new.label])}
    for key in ("compress_KBps", "decompress_KBps"):
        row[f"old_{key}"], row[f"new_{key}"] = round(median(old, key), 2), round(median(new, key), 2)
        row[f"{key.split('_')[0]}_speed_ratio_new_over_old"] = round(median(new, key) / median(old, key), 3)
        row[f"old_{key}_runs"] = [round(r[key], 2) for r in runs[old.label]]  # in run order: the spread
        row[f"new_{key}_runs"] = [round(r[key], 2) for r in runs[new.label]]
    for key in ("compress_wall_s", "decompress_wall_s"):
        row[f"old_{key}"], row[f"new_{key}"] = round(median(old, key), 2), round(median(new, key), 2)
    row["old_peak_MB"] = round(max(r["peak_MB"] for r in runs[old.label]), 1)
    row["new_peak_MB"] = round(max(r["peak_MB"] for r in runs[new.label]), 1)
    row["old_compressed_bytes"] = runs[old.label][0]["compressed_bytes"]
    row["new_compressed_bytes"] = runs[new.label][0]["compressed_bytes"]
    row["identical_files"] = len({r["sha256"] for side in runs.values() for r in side}) == 1
    return row


def scaling_corpus() -> tuple[bytes, str]:
    """One kind of data, never repeated, for every size up to 10 MB and beyond: the Python standard library's
    sources in path order (31 MB on CPython 3.11), present wherever the benchmark runs. A prefix of mixed
    files (text, then a spreadsheet, then a fax image) would measure how the data changes, not how the
    coder scales; a repeated corpus hands the match model long repeats from the second copy on."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in root.rglob("*.py") if "site-packages" not in f.parts)
    data = b"".join(f.read_bytes() for f in files)
    return data, f"the Python {platform.python_version()} standard library's .py files ({len(data):,} bytes)"


def scaling_input(n: int, corpus: bytes) -> bytes:
    """``n`` bytes of ``corpus``, repeated where it runs out (the rows say so: ``repeated_corpus``)."""
    return (corpus * (n // len(corpus) + 1))[:n]


def time_per_byte(new: Side, mode: Mode, sizes: list[int], corpus: bytes, emit) -> list[dict]:
    """The new code alone at sizes from small to large: microseconds per byte each way, peak memory."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="blm_scaling_") as tmp:
        work = Path(tmp)
        warm = work / "warm.bin"
        warm.write_bytes(scaling_input(WARM_UP_BYTES, corpus))
        code_once(new, mode, warm, work)
        for n in sizes:
            src = work / "input.bin"
            src.write_bytes(scaling_input(n, corpus))
            r = code_once(new, mode, src, work)
            rows.append({"bytes": n, "mode": mode.label, "streams": r["streams"],
                         "compress_us_per_byte": round(1e6 / (1024 * r["compress_KBps"]), 2),
                         "decompress_us_per_byte": round(1e6 / (1024 * r["decompress_KBps"]), 2),
                         "peak_MB": round(r["peak_MB"], 1), "repeated_corpus": n > len(corpus)})
            first = rows[0]
            rows[-1]["compress_per_byte_over_smallest"] = round(rows[-1]["compress_us_per_byte"] /
                                                                first["compress_us_per_byte"], 3)
            rows[-1]["decompress_per_byte_over_smallest"] = round(rows[-1]["decompress_us_per_byte"] /
                                                                  first["decompress_us_per_byte"], 3)
            emit(rows[-1])
    return rows
