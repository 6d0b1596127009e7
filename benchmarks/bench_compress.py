"""Neural compression, measured: real compressed sizes, speed, coder share, segmentation cost, flat cost per byte.

    python benchmarks/bench_compress.py --model outputs/bench_train/best.pt

1. The tiny-shakespeare validation split (last 10%, 111,540 bytes) compressed for real at the default
   segmentation, decoded back and compared; one table with the classic compressors, a zstd dictionary
   trained on the training split, and the model (ideal bits and the ratio adjusted for model size).
2. A 1 MB text (the first 1,000,000 bytes of the file) compressed and decompressed at the default
   segmentation: KB/s each way and the share of the time spent in the coder (quantise + range coding).
3. What segmentation costs against one stream, on 100 KB and 1 MB, from full-sequence estimates of the
   ideal code length (a single stream over 1 MB would take an hour one byte at a time; the estimate
   agrees with the coder's own ideal bits to 1e-4, see tests/test_compress.py).
4. Cost per byte against input length (10x longer input, same number of streams): flat, because the
   rolling KV cache keeps exactly block_size bytes of context.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blm_lab.baselines import ZstdDictCompressor, classic_compressors, compare, table_markdown  # noqa: E402
from blm_lab.checkpoint import load_checkpoint  # noqa: E402
from blm_lab.codec.neural import (NeuralCompressor, compress_with_stats, decompress_with_stats,  # noqa: E402
                                  default_segment_bytes)
from blm_lab.data import split_bytes  # noqa: E402
from blm_lab.scoring import window_bits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "corpora" / "tinyshakespeare" / "input.txt"


def round_trip(data: bytes, model, label: str, **kw) -> dict:
    blob, c = compress_with_stats(data, model, **kw)
    out, d = decompress_with_stats(blob, model)
    assert out == data, f"{label}: round trip failed"
    row = {
        "input": label, "original_bytes": len(data), "compressed_bytes": len(blob),
        "bits_per_byte": round(8 * len(blob) / len(data), 4), "ideal_bits_per_byte": round(c.ideal_bits / len(data), 4),
        "overhead_percent": round(c.overhead_percent, 3), "segments": c.segments,
        "compress_KBps": round(c.bytes_per_second / 1024, 1), "decompress_KBps": round(d.bytes_per_second / 1024, 1),
        "coder_share_compress_percent": round(c.coder_share_percent, 1),
        "coder_share_decompress_percent": round(d.coder_share_percent, 1),
        "verified": True,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "outputs" / "bench_train" / "best.pt"))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the lock-step coder loop runs the model there)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: val,1mb,segmentation,flat")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    model, ckpt = load_checkpoint(args.model, device=args.device)
    text = Path(args.data).read_bytes()
    train_split, val_split = split_bytes(np.frombuffer(text, dtype=np.uint8))
    train, val = train_split.tobytes(), val_split.tobytes()
    print(f"model: {ckpt['config']} ({model.num_params():,} parameters), val_bpb at save {ckpt.get('val_bpb')}, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    if "val" not in skip:
        print("\n== 1. validation split, compressed for real, against the registry ==")
        neural = NeuralCompressor(model, name="blm (this model)")
        compressors = {**classic_compressors(), "zstd-19+dict": ZstdDictCompressor.from_training(train), neural.name: neural}
        table = compare({"tinyshakespeare val": val}, compressors, progress=False)
        print(table_markdown(table.drop(columns=["file"])))
        stats = neural.last_stats
        print(json.dumps({"neural_segments": stats.segments, "overhead_percent": round(stats.overhead_percent, 3),
                          "compress_KBps": round(stats.bytes_per_second / 1024, 1),
                          "coder_share_percent": round(stats.coder_share_percent, 1)}), flush=True)

    if "1mb" not in skip:
        print("\n== 2. 1 MB text, default segmentation ==")
        round_trip(text[:1_000_000], model, "first 1,000,000 bytes")

    if "segmentation" not in skip:
        print("\n== 3. segmentation cost against one stream (full-sequence estimates) ==")
        for n in (100_000, 1_000_000):
            data = text[:n]
            one = window_bits(data, model, segment_bytes=n)
            seg = default_segment_bytes(n)
            many = window_bits(data, model, segment_bytes=seg)
            print(json.dumps({"bytes": n, "segment_bytes": seg, "segments": -(-n // seg),
                              "one_stream_bpb": round(one / n, 4), "segmented_bpb": round(many / n, 4),
                              "cost_percent": round(100 * (many - one) / one, 3)}), flush=True)

    if "flat" not in skip:
        print("\n== 4. time per byte as the input grows 10x (8 streams) ==")
        for n in (8 * 1024, 80 * 1024):
            t = time.perf_counter()
            blob, c = compress_with_stats(text[:n], model, segments=8)
            dt = time.perf_counter() - t
            print(json.dumps({"bytes": n, "segments": 8, "steps": -(-n // 8), "seconds": round(dt, 2),
                              "microseconds_per_byte": round(1e6 * dt / n, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
