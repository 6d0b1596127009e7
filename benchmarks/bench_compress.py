"""Neural compression, measured: real compressed sizes (every file written, decoded back and compared), speed
with the stream count next to it, portable against float numerics, mixing on and off, Canterbury.

    python benchmarks/bench_compress.py --model outputs/bench_train/best.pt [--skip PART,...] [--external SPEC ...]
    python benchmarks/bench_compress.py --model M --against REV [--bytes N] [--repeats R]
    python benchmarks/bench_compress.py --scaling 100K,1M,10M [--scaling-segments 28]

Parts:
  val          tiny-shakespeare's validation split (held out, 111,540 bytes), every compressor of notebook 04
               in one table: classic, primed on the training split, context mixing alone, the model alone
               (portable and float numerics) and the model mixed, with ideal and model-size-adjusted figures.
  numerics     portable against float numerics (model only, no mixing), size and KB/s each way, at the same
               stream count, on the validation split (28 streams) and on 1 MB of held-out English
               (the Canterbury texts, 245 streams).
  mixing       what mixing costs in speed and buys in size, at those stream counts.
  canterbury   each Canterbury file alone with the model: blm against PPMd (order 6), the best of the six
               classic compressors, and the better of gzip -9 and stored-raw; zpaq and --external programs
               measured beside them, and the reference columns.
  segments     the validation split at 8, 28 and 56 streams: context lost at segment starts against speed.

The tables carry zpaq -m5 where it is installed (``make bench`` installs it where it can) and every program
named with ``--external "[NAME=]COMPRESS | DECOMPRESS"`` (e.g. ``"paq8px-8=paq8px -8 {input} {output} |
paq8px -d {input} {output}"``), round trip verified, version line recorded. Beside the measured rows they
print issue 17's lpaq1 -6 and paq8px -8 figures as reference columns, each labelled with where it comes from
(REFERENCE_SOURCES): they are not measured in this run.

--against REV   speed side by side with an earlier revision (benchmarks/side_by_side.py): REV is unpacked
                with git archive and both run the same CLI in subprocesses, alternating old/new, on the
                validation split (or --files, each cut at --bytes, at most 1 MB): context mixing alone in one
                stream and at its default, and blm with --model at 28 streams. KB/s each way (coding time),
                the ratio new/old, peak memory (ru_maxrss of each subprocess) and whether the files are
                identical. Replaces the parts above.
--scaling SIZES the new code alone (context mixing, --scaling-segments streams) from small to large inputs:
                microseconds per byte each way and peak memory. Replaces the parts above; combines with
                --against.
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

from blm_lab.baselines import (classic_compressors, compare, external_compressors, primed_compressors,  # noqa: E402
                               table_markdown)
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
MAX_AGAINST_BYTES = 1_000_000

# Issue 17's reference figures, compressed bytes of each file alone: lpaq1 (Mahoney, 2007) option 6 and
# paq8px v216 -8 (portable build, -O3 -fno-fast-math -ffp-contract=off). Not measured in this run.
REFERENCE_SOURCES = {
    "lpaq1_-6": "lpaq1 -6: measured on these files (issue 17, built from its public source)",
    "paq8px_-8": "paq8px -8: the validation split measured on it (issue 17); the Canterbury files as published in "
                 "paq8px's README (six of them re-measured there, to the byte)",
}
REFERENCE_BYTES = {  # file: (lpaq1 -6, paq8px -8)
    "tinyshakespeare val": (31_796, 29_436),
    "alice29.txt": (37_206, 33_070), "asyoulik.txt": (34_373, 31_515), "cp.html": (6_418, 5_408),
    "fields.c": (2_554, 2_027), "grammar.lsp": (1_068, 861), "lcet10.txt": (89_842, 79_110),
    "plrabn12.txt": (126_910, 117_450), "xargs.1": (1_514, 1_295), "kennedy.xls": (37_943, 8_140),
    "ptt5": (43_690, 19_633), "sum": (10_614, 6_662),
}


def reference_columns(file: str, measured: dict[str, int]) -> dict:
    """The reference figures for ``file`` beside measured sizes: each reference's bytes, and each measured
    size over paq8px -8's."""
    lpaq1, paq8px = REFERENCE_BYTES[file]
    return {"ref_lpaq1_-6": lpaq1, "ref_paq8px_-8": paq8px,
            **{f"{name}_over_paq8px": round(size / paq8px, 4) for name, size in measured.items()}}


def print_reference_sources() -> None:
    print("reference columns (not measured in this run): " + "; ".join(REFERENCE_SOURCES.values()), flush=True)


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
    parser.add_argument("--external", action="append", default=[], metavar="SPEC",
                        help='an external compressor for the tables, "[NAME=]COMPRESS | DECOMPRESS" (repeatable)')
    parser.add_argument("--against", default=None, metavar="REV", help="speed side by side with git revision REV")
    parser.add_argument("--files", default="", help="--against: comma-separated files (default: the validation split)")
    parser.add_argument("--bytes", type=int, default=MAX_AGAINST_BYTES, help="--against: cut each file at N bytes")
    parser.add_argument("--repeats", type=int, default=3, help="--against: runs per side and mode, alternating (the median counts)")
    parser.add_argument("--modes", default="cm-1,cm,blm-28", help="--against: cm-1 (one stream), cm (default), "
                        "blm-28 (--model at 28 streams)")
    parser.add_argument("--threads", type=int, default=0, help="--against/--scaling: OMP/MKL/NUMBA threads of both "
                        "sides (0: the environment's); 1 keeps a busy machine's contention out of the ratio")
    parser.add_argument("--scaling", default="", metavar="SIZES", help="time per byte at these sizes, e.g. 100K,1M,10M")
    parser.add_argument("--scaling-segments", type=int, default=28, help="--scaling: the fixed stream count")
    args = parser.parse_args()
    if args.against or args.scaling:
        return speed(args)
    skip = set(filter(None, args.skip.split(",")))
    external = {}
    for spec in args.external:
        external.update(external_compressors([spec]))
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
        compressors = {**classic_compressors(), **external, **primed_compressors(train), **{m.name: m for m in models}}
        table = compare({"tinyshakespeare val": val}, compressors, progress=False)
        print(table_markdown(table.drop(columns=["file"])), flush=True)
        print_reference_sources()
        emit({"file": "tinyshakespeare val", **reference_columns("tinyshakespeare val", dict(zip(
            table["compressor"], table["compressed_bytes"].astype(int))))})
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
        table = compare(files, {**classic_compressors(), **external, "blm": NeuralCompressor(model, name="blm")},
                        progress=False)
        print_reference_sources()
        rows = []
        for name in files:
            t = table[table["file"] == name].set_index("compressor")["compressed_bytes"]
            classic = t.drop(["blm", "zpaq-m5", *external], errors="ignore")  # the classic six, as before
            floor = min(t["gzip-9"], len(files[name]))
            rows.append({"file": name, "kind": "text" if name in CANTERBURY_TEXT else "binary",
                         "bytes": len(files[name]), "blm": int(t["blm"]), "ppmd": int(t["ppmd"]),
                         "best_classic": classic.idxmin(), "best_classic_bytes": int(classic.min()),
                         "blm_over_ppmd": round(t["blm"] / t["ppmd"], 4),
                         "blm_over_best": round(t["blm"] / classic.min(), 4),
                         "blm_over_gzip_or_raw": round(t["blm"] / floor, 4),
                         **{f"{c}_bytes": int(t[c]) for c in ("zpaq-m5", *external) if c in t},
                         **reference_columns(name, {c: int(t[c]) for c in ("blm", "zpaq-m5", *external) if c in t})})
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


def parse_size(text: str) -> int:
    """100K, 1M, 10M or a plain number of bytes (K = 1,000, M = 1,000,000)."""
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def speed(args) -> int:
    """--against REV and --scaling: the CLI timed in subprocesses (benchmarks/side_by_side.py)."""
    from side_by_side import Mode, checkout, compare_sides, scaling_corpus, time_per_byte, working_tree
    import tempfile

    new = working_tree(args.threads)
    model = str(Path(args.model).resolve()) if Path(args.model).is_file() else None  # the sides run elsewhere
    if args.against:
        modes = {"cm-1": Mode("cm, one stream", ("--segments", "1")), "cm": Mode("cm, default streams", ()),
                 "blm-28": Mode("blm, 28 streams", ("--segments", "28"), model)}
        chosen = [m for m in args.modes.split(",") if m]
        unknown = [m for m in chosen if m not in modes]
        if unknown:
            print(f"error: --modes {','.join(unknown)}: choose from {','.join(modes)}", file=sys.stderr)
            return 2
        if "blm-28" in chosen and model is None:
            print(f"note: blm-28 left out: no model at {args.model} (train one with benchmarks/bench_train.py, "
                  f"or pass --model)", flush=True)
            chosen.remove("blm-28")
        cut = min(args.bytes, MAX_AGAINST_BYTES)
        if args.files:
            files = {Path(f).name: Path(f).read_bytes()[:cut] for f in args.files.split(",") if f}
        else:
            _, val_split = split_bytes(np.frombuffer(Path(args.data).read_bytes(), dtype=np.uint8))
            files = {"tinyshakespeare val": val_split.tobytes()[:cut]}
        with tempfile.TemporaryDirectory(prefix="blm_old_") as tmp:
            old = checkout(args.against, Path(tmp), args.threads)
            print(f"\n== against: {old.label} and {new.label}, {args.repeats} runs each, alternating, threads "
                  f"{args.threads or 'as the environment says'}; model "
                  f"{model}; files {', '.join(f'{k} ({len(v):,} bytes)' for k, v in files.items())} ==", flush=True)
            compare_sides(old, new, [modes[m] for m in chosen], files, args.repeats, emit)
    if args.scaling:
        sizes = sorted(parse_size(s) for s in args.scaling.split(",") if s.strip())
        corpus, what = scaling_corpus()
        mode = Mode(f"cm, {args.scaling_segments} streams", ("--segments", str(args.scaling_segments)))
        print(f"\n== scaling: {new.label}, {mode.label}, {', '.join(f'{n:,}' for n in sizes)} bytes of "
              f"{what} ==", flush=True)
        time_per_byte(new, mode, sizes, corpus, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
