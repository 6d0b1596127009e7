"""Context mixing alone (no model) against lpaq1, side by side in one run, and how its cost scales.

Each measurement runs in a fresh process (``compress_with_stats``; its ``seconds`` are the coding time,
start-up and kernel compilation aside: a warm-up compression runs first in the same process) and reports
its peak resident memory. lpaq1 (Mahoney, 2007) is a reference program built outside the repository
(``g++ -O2 lpaq1.cpp``); its whole run (``lpaq1 6 in out``, wall clock) is timed alternately with ours.

    python benchmarks/bench_mixing.py --lpaq1 /work/ref/lpaq1/lpaq1 --corpora ../shared/corpora
    python benchmarks/bench_mixing.py --scaling 100000,1000000,10000000 --scaling-streams 1
    python benchmarks/bench_mixing.py --segments 1,2,4,8,28,0   # 0: the default segmentation
    python benchmarks/bench_mixing.py --mixer-revision 1,2       # each mixer revision against lpaq1

Sections: ``vs-lpaq1`` (one stream, on alice29+asyoulik+lcet10+plrabn12 concatenated and on the
tiny-shakespeare validation split), ``segments`` (size and time by stream count) and ``scaling`` (time
per byte and peak memory by input size at a fixed stream count; inputs are the text repeated and then
lightly mutated, so that they do not collapse into one long match).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
from blm_lab.codec.neural import compress_with_stats, decompress
path, segments, check, revision = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
data = open(path, "rb").read()
kw = ({} if segments == 0 else {"segments": segments}) | {"mixer_revision": revision}
compress_with_stats(data[:20000], **kw)  # compile / load the kernels outside the timing
blob, stats = compress_with_stats(data, **kw)
out = {"revision": revision, "bytes": len(data), "compressed": len(blob), "seconds": stats.seconds, "segments": stats.segments,
       "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
if check:
    t = time.perf_counter()
    out["roundtrip"] = decompress(blob) == data
    out["decompress_seconds"] = time.perf_counter() - t
print(json.dumps(out))
"""


def ours(path: Path, segments: int, check: bool = False, revision: int = 0) -> dict:
    """``revision`` 0: the default mixer revision."""
    if revision == 0:
        from blm_lab.codec.mixing import DEFAULT_REVISION
        revision = DEFAULT_REVISION
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), str(segments), "1" if check else "0", str(revision)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def lpaq1(binary: str, path: Path, tmp: Path) -> dict:
    out = tmp / (path.name + ".lpaq1")
    t = time.perf_counter()
    subprocess.run([binary, "6", str(path), str(out)], capture_output=True, check=True)
    return {"seconds": time.perf_counter() - t, "compressed": out.stat().st_size}


def scaled_input(text: bytes, n: int) -> bytes:
    """n bytes of text repeated, every 64th byte of each repetition after the first xor-ed with its index."""
    import numpy as np

    reps = -(-n // len(text))
    data = np.frombuffer(text * reps, dtype=np.uint8)[:n].copy()
    idx = np.arange(len(text), n, 61)
    data[idx] ^= (idx // len(text) % 7 + 1).astype(np.uint8)
    return data.tobytes()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lpaq1", default="/work/ref/lpaq1/lpaq1", help="lpaq1 binary ('' to skip)")
    p.add_argument("--corpora", default=str(Path(__file__).resolve().parents[2] / "shared" / "corpora"))
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the fastest is reported")
    p.add_argument("--segments", default="", help="comma-separated stream counts for the segments table (0 = default)")
    p.add_argument("--scaling", default="", help="comma-separated input sizes for the time-per-byte table")
    p.add_argument("--scaling-streams", type=int, default=1)
    p.add_argument("--skip-lpaq1-table", action="store_true")
    p.add_argument("--mixer-revision", default="0", help="comma-separated mixer revisions for vs-lpaq1 (0: the default)")
    args = p.parse_args()
    corpora = Path(args.corpora)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cant = tmp / "alice_asyoulik_lcet10_plrabn12.txt"
        cant.write_bytes(b"".join((corpora / "canterbury" / f).read_bytes()
                                  for f in ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt")))
        shakespeare = (corpora / "tinyshakespeare" / "input.txt").read_bytes()
        val = tmp / "tinyshakespeare_val.txt"
        val.write_bytes(shakespeare[int(len(shakespeare) * 0.9):])
        if not args.skip_lpaq1_table:
            print("## vs-lpaq1: one stream, coding seconds (ours) against lpaq1 -6's whole run")
            revisions = [int(r) for r in args.mixer_revision.split(",")]
            for path in (cant, val):
                best_ours, best_ref = {}, None
                for _ in range(args.repeats):
                    for rev in revisions:  # alternating with lpaq1, side by side
                        o = ours(path, 1, check=rev not in best_ours, revision=rev)  # the first run also decodes
                        best = best_ours.get(rev)
                        best_ours[rev] = o if best is None else {**best, "seconds": min(best["seconds"], o["seconds"])}
                    if args.lpaq1:
                        r = lpaq1(args.lpaq1, path, tmp)
                        best_ref = r if best_ref is None or r["seconds"] < best_ref["seconds"] else best_ref
                for o in best_ours.values():
                    line = {"file": path.name, **o}
                    if best_ref:
                        line.update(lpaq1_seconds=best_ref["seconds"], lpaq1_compressed=best_ref["compressed"],
                                    time_ratio=o["seconds"] / best_ref["seconds"])
                    print(json.dumps(line))
        if args.segments:
            print("## segments: stream count against size and coding time")
            for path in (val, cant):
                for s in (int(x) for x in args.segments.split(",")):
                    print(json.dumps({"file": path.name, "requested": s or "default", **ours(path, s)}))
        if args.scaling:
            print(f"## scaling: time per byte at {args.scaling_streams} stream(s)")
            for n in (int(x) for x in args.scaling.split(",")):
                path = tmp / f"scaled_{n}.bin"
                path.write_bytes(scaled_input(cant.read_bytes(), n))
                o = ours(path, args.scaling_streams)
                print(json.dumps({**o, "us_per_byte": 1e6 * o["seconds"] / o["bytes"]}))


if __name__ == "__main__":
    main()
