"""Neural compression, measured: real compressed sizes (every file written, decoded back and compared), speed
with the stream count next to it, portable against float numerics, mixing on and off, Canterbury.

    python benchmarks/bench_compress.py --model outputs/bench_train/best.pt [--skip PART,...]

Parts:
  val          tiny-shakespeare's validation split (held out, 111,540 bytes), every compressor of notebook 04
               in one table: classic, primed on the training split, context mixing alone, the model alone
               (portable and float numerics) and the model mixed, with ideal and model-size-adjusted figures.
  numerics     portable against float numerics (model only, no mixing), size and KB/s each way, at the same
               stream count, on the validation split (28 streams) and on 1 MB of held-out English
               (the Canterbury texts, 245 streams).
  mixing       what mixing costs in speed and buys in size, at those stream counts.
  canterbury   each Canterbury file alone with the model: blm against PPMd (order 6), the best of the
               registry, and the better of gzip -9 and stored-raw.
  segments     the validation split at 8, 28 and 56 streams: context lost at segment starts against speed.
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

from blm_lab.baselines import classic_compressors, compare, primed_compressors, table_markdown  # noqa: E402
from blm_lab.checkpoint import load_checkpoint  # noqa: E402
from blm_lab.codec.neural import NeuralCompressor, compress_with_stats, decompress_with_stats  # noqa: E402
from blm_lab.data import split_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora"
DEFAULT_DATA = SHARED / "tinyshakespeare" / "input.txt"
CANTERBURY = SHARED / "canterbury"
CANTERBURY_TEXT = ("alice29.txt", "asyoulik.txt", "cp.html", "fields.c", "grammar.lsp", "lcet10.txt", "plrabn12.txt",
                   "xargs.1")
CANTERBURY_BINARY = ("kennedy.xls", "ptt5", "sum")


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def round_trip(data: bytes, model, label: str, **options) -> dict:
    """Compress and decompress for real; sizes, ideal bits and KB/s each way, with the stream count."""
    blob, c = compress_with_stats(data, model, **options)
    out, d = decompress_with_stats(blob, model)
    assert out == data, f"{label}: round trip failed"
    row = {"input": label, **{k: v for k, v in options.items()}, "numerics": c.numerics, "mixing": c.mixing,
           "original_bytes": len(data), "compressed_bytes": len(blob),
           "bits_per_byte": round(8 * len(blob) / len(data), 4), "ideal_bits_per_byte": round(c.ideal_bits / len(data), 4),
           "streams": c.segments, "stored_segments": c.stored_segments,
           "compress_KBps": round(c.bytes_per_second / 1024, 2), "decompress_KBps": round(d.bytes_per_second / 1024, 2),
           "model_share_percent": round(100 * c.model_seconds / c.seconds, 1),
           "coder_and_mixer_share_percent": round(c.coder_share_percent, 1), "verified": True}
    emit(row)
    return row


def held_out_megabyte() -> bytes:
    """1,000,000 bytes of English the tiny-shakespeare model never saw: the Canterbury texts, concatenated."""
    text = b"".join((CANTERBURY / name).read_bytes() for name in ("alice29.txt", "asyoulik.txt", "lcet10.txt",
                                                                  "plrabn12.txt"))
    return text[:1_000_000]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "outputs" / "bench_train" / "best.pt"))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the lock-step loop runs the model there)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: val,numerics,mixing,canterbury,segments")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    model, ckpt = load_checkpoint(args.model, device=args.device)
    train_split, val_split = split_bytes(np.frombuffer(Path(args.data).read_bytes(), dtype=np.uint8))
    train, val = train_split.tobytes(), val_split.tobytes()
    print(f"model: {ckpt['config']} ({model.num_params():,} parameters), val_bpb at save {ckpt.get('val_bpb')}, "
          f"torch threads {torch.get_num_threads()}, device {args.device}", flush=True)

    if "val" not in skip:
        print("\n== val: the validation split (held out), every compressor, decoded and compared ==", flush=True)
        models = [NeuralCompressor(None, name="cm"),
                  NeuralCompressor(model, name="blm (model only)", mixing="none"),
                  NeuralCompressor(model, name="blm (model only, float)", mixing="none", numerics="float"),
                  NeuralCompressor(model, name="blm")]
        compressors = {**classic_compressors(), **primed_compressors(train), **{m.name: m for m in models}}
        table = compare({"tinyshakespeare val": val}, compressors, progress=False)
        print(table_markdown(table.drop(columns=["file"])), flush=True)
        for m in models:
            s = m.last_stats
            emit({"compressor": m.name, "streams": s.segments, "compress_KBps": round(s.bytes_per_second / 1024, 2),
                  "overhead_percent": round(s.overhead_percent, 3)})

    inputs = {"validation split (held out)": val}
    if CANTERBURY.is_dir():
        inputs["1 MB of held-out English (Canterbury texts)"] = held_out_megabyte()
    if "numerics" not in skip:
        print("\n== numerics: portable against float (model only), same stream count ==", flush=True)
        for label, data in inputs.items():
            rows = {numerics: round_trip(data, model, label, numerics=numerics, mixing="none")
                    for numerics in ("float", "portable")}
            p, f = rows["portable"], rows["float"]
            emit({"input": label, "streams": p["streams"], "portable_over_float_size": round(p["compressed_bytes"] /
                  f["compressed_bytes"], 5), "compress_speed_ratio": round(p["compress_KBps"] / f["compress_KBps"], 3),
                  "decompress_speed_ratio": round(p["decompress_KBps"] / f["decompress_KBps"], 3)})

    if "mixing" not in skip:
        print("\n== mixing: the model mixed with the file's statistics against the model alone (portable) ==",
              flush=True)
        for label, data in inputs.items():
            alone = round_trip(data, model, label, mixing="none")
            mixed = round_trip(data, model, label, mixing="cm")
            emit({"input": label, "streams": mixed["streams"], "size_ratio": round(mixed["compressed_bytes"] /
                  alone["compressed_bytes"], 4), "compress_speed_ratio": round(mixed["compress_KBps"] /
                  alone["compress_KBps"], 3), "decompress_speed_ratio": round(mixed["decompress_KBps"] /
                  alone["decompress_KBps"], 3)})

    if "canterbury" not in skip and CANTERBURY.is_dir():
        print("\n== canterbury: each file alone, the tiny-shakespeare model mixed (blm) against the registry ==",
              flush=True)
        files = {name: (CANTERBURY / name).read_bytes() for name in CANTERBURY_TEXT + CANTERBURY_BINARY}
        table = compare(files, {**classic_compressors(), "blm": NeuralCompressor(model, name="blm")}, progress=False)
        rows = []
        for name in files:
            t = table[table["file"] == name].set_index("compressor")["compressed_bytes"]
            classic = t.drop("blm")
            floor = min(t["gzip-9"], len(files[name]))
            rows.append({"file": name, "kind": "text" if name in CANTERBURY_TEXT else "binary",
                         "bytes": len(files[name]), "blm": int(t["blm"]), "ppmd": int(t["ppmd"]),
                         "best_classic": classic.idxmin(), "best_classic_bytes": int(classic.min()),
                         "blm_over_ppmd": round(t["blm"] / t["ppmd"], 4),
                         "blm_over_best": round(t["blm"] / classic.min(), 4),
                         "blm_over_gzip_or_raw": round(t["blm"] / floor, 4)})
            emit(rows[-1])
        text_ok = all(r["blm_over_ppmd"] <= 1.0 for r in rows if r["kind"] == "text")
        binary_ok = all(r["blm_over_best"] <= 1.05 for r in rows if r["kind"] == "binary")
        floor_ok = all(r["blm_over_gzip_or_raw"] <= 1.0 for r in rows)
        emit({"text_files_at_or_below_ppmd": text_ok, "binary_files_within_5_percent_of_best": binary_ok,
              "never_worse_than_gzip_or_raw": floor_ok})

    if "segments" not in skip:
        print("\n== segments: the validation split at other stream counts (blm, mixing) ==", flush=True)
        for segments in (8, 28, 56):
            t = time.perf_counter()
            round_trip(val, model, "validation split (held out)", segments=segments)
            print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
