"""bench_compress.py --against REV: an earlier revision unpacked with git archive and timed side by side
with the working tree through the same CLI; the same code on both sides gives identical files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_compress.py"

needs_git = pytest.mark.skipif(subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
                               .returncode != 0, reason="not a git checkout: --against needs the repository's history")


def bench(*args, timeout=600):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout)


@needs_git
@pytest.mark.slow
def test_against_head_times_both_sides_and_finds_identical_files(tmp_path):
    text = tmp_path / "text.txt"
    text.write_bytes(b"the quick brown fox jumps over the lazy dog; " * 100)
    done = bench("--against", "HEAD", "--modes", "cm", "--repeats", "1", "--files", str(text),
                 "--model", str(tmp_path / "no-model.pt"))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1
    row = rows[0]
    assert row["file"] == "text.txt" and row["bytes"] == 4500 and row["mode"] == "cm, default streams"
    assert row["identical_files"] and row["old_compressed_bytes"] == row["new_compressed_bytes"] < 4500
    assert row["old_compress_KBps"] > 0 and row["new_decompress_KBps"] > 0
    assert row["compress_speed_ratio_new_over_old"] == pytest.approx(row["new_compress_KBps"] / row["old_compress_KBps"],
                                                                     rel=0.01)
    assert 0 < row["old_peak_MB"] < 4096 and 0 < row["new_peak_MB"] < 4096


@needs_git
@pytest.mark.slow  # the benchmark imports torch before it reads its arguments
def test_against_an_unknown_revision_says_so():
    done = bench("--against", "no-such-revision-blm", timeout=120)
    assert done.returncode != 0
    assert "--against no-such-revision-blm: not a revision of" in done.stderr
