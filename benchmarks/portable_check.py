"""Portable files across devices: compress on CUDA and on the CPU, check the two files are identical, and
decompress each on the other device (run by benchmarks/gpu_check.sh on a CUDA machine).

    python benchmarks/portable_check.py --model outputs/gpu_bench/best.pt [--bytes 50000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blm_lab.checkpoint import load_checkpoint  # noqa: E402
from blm_lab.codec.neural import compress_with_stats, decompress_with_stats  # noqa: E402
from blm_lab.data import split_bytes  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare" / "input.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--bytes", type=int, default=50_000, help="bytes of the validation split to compress")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device; this check compares CUDA with the CPU", file=sys.stderr)
        return 2
    _, val = split_bytes(np.frombuffer(Path(args.data).read_bytes(), dtype=np.uint8))
    data = val[:args.bytes].tobytes()
    models = {device: load_checkpoint(args.model, device=device)[0] for device in ("cpu", "cuda")}
    blobs = {}
    for device, model in models.items():
        t = time.perf_counter()
        blobs[device], stats = compress_with_stats(data, model)
        print(json.dumps({"compressed_on": device, "bytes": len(data), "file_bytes": len(blobs[device]),
                          "bits_per_byte": round(stats.bits_per_byte, 4), "segments": stats.segments,
                          "seconds": round(time.perf_counter() - t, 1),
                          "sha256": hashlib.sha256(blobs[device]).hexdigest()[:16]}), flush=True)
    identical = blobs["cpu"] == blobs["cuda"]
    print(json.dumps({"files_identical": identical}), flush=True)
    ok = identical
    for made, read in (("cuda", "cpu"), ("cpu", "cuda")):
        out, stats = decompress_with_stats(blobs[made], models[read])
        same = out == data
        ok &= same
        print(json.dumps({"compressed_on": made, "decompressed_on": read, "identical": same,
                          "seconds": round(stats.seconds, 1)}), flush=True)
    print("PORTABLE CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
