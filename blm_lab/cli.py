"""The ``blm-lab`` command (also ``python -m blm_lab``).

    blm-lab train [DATASET] [flags]               same as python -m blm_lab.train_bytes
    blm-lab compress IN OUT --model CKPT [--json]
    blm-lab decompress IN OUT --model CKPT [--json] [--ignore-compute-mismatch]
    blm-lab run [--run-dir DIR] [-p NAME VALUE ...] [--config params.yaml]
    blm-lab sweep --grid NAME=V1,V2 [NAME=V1,V2 ...] [--run-dir DIR] [-p NAME VALUE ...] [--config params.yaml]

Errors print one line, ``error: ...``, naming the problem and the fix, and exit with status 2.
Outputs are written atomically, never over the input, and over an existing file only with --force.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .checkpoint import atomic_write
from .errors import BlmError

EXIT_ERROR = 2


def _summary(stats) -> dict:
    """The one-line JSON summary of a compression or decompression."""
    keys = ("original_bytes", "compressed_bytes", "bits_per_byte", "ideal_bits", "overhead_percent", "seconds",
            "bytes_per_second", "segments")
    summary = {k: getattr(stats, k) for k in keys}
    summary["coder_share_percent"] = 100 * stats.coder_seconds / stats.seconds if stats.seconds else 0.0
    return summary


def _check_paths(src: Path, dst: Path, force: bool) -> None:
    if not src.is_file():
        raise BlmError(f"input file not found: {str(src)!r}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise BlmError(f"output {str(dst)!r} is the input file; choose another output path")
    if dst.exists() and not force:
        raise BlmError(f"output {str(dst)!r} already exists; pass --force to overwrite it")
    if not dst.parent.exists():
        raise BlmError(f"output directory {str(dst.parent)!r} does not exist; create it first")


def _load_model(path: str, device: str):
    from .checkpoint import load_checkpoint
    from .device import pick_device

    model, _ = load_checkpoint(path, device=pick_device(device))
    return model


def _transform_file(args, transform, describe) -> int:
    """Shared by compress and decompress: check paths, load the model, transform, write atomically, report."""
    src, dst = Path(args.input), Path(args.output)
    _check_paths(src, dst, args.force)
    model = _load_model(args.model, args.device)
    out, stats = transform(src.read_bytes(), model)
    atomic_write(dst, lambda f: f.write(out))
    if args.json:
        print(json.dumps(_summary(stats)))
    elif not args.quiet:
        print(describe(stats))
    return 0


def cmd_compress(args) -> int:
    from .compress import compress_with_stats

    def transform(data, model):
        return compress_with_stats(data, model, segments=args.segments, segment_bytes=args.segment_bytes,
                                   progress=not args.quiet)

    return _transform_file(args, transform, lambda stats: (
        f"{stats.original_bytes:,} -> {stats.compressed_bytes:,} bytes, {stats.bits_per_byte:.4f} bits/byte "
        f"(ideal {stats.ideal_bits / max(stats.original_bytes, 1):.4f}, overhead {stats.overhead_percent:.3f}%), "
        f"{stats.bytes_per_second / 1024:.1f} KB/s"))


def cmd_decompress(args) -> int:
    from .compress import decompress_with_stats

    def transform(blob, model):
        return decompress_with_stats(blob, model, progress=not args.quiet,
                                     allow_compute_mismatch=args.ignore_compute_mismatch)

    return _transform_file(args, transform, lambda stats: (
        f"{stats.compressed_bytes:,} -> {stats.original_bytes:,} bytes, checksum verified, "
        f"{stats.bytes_per_second / 1024:.1f} KB/s"))


def _notebook_params(args) -> dict:
    """--config first, then every -p NAME VALUE over it (values parsed as YAML: 3, 0.5, true, null, text)."""
    from .runner import load_config, parse_value

    params = load_config(args.config) if args.config else {}
    for name, value in args.param or []:
        params[name] = parse_value(value)
    return params


def _parse_grid(items: list[str]) -> dict[str, list]:
    from .runner import parse_value

    grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise BlmError(f"--grid item {item!r} is not NAME=V1,V2,...; for example n_layer=2,4")
        grid[name.strip()] = [parse_value(v) for v in values.split(",")]
    return grid


def cmd_run(args) -> int:
    from .runner import run_pipeline

    summary = run_pipeline(args.run_dir, _notebook_params(args), progress=not args.quiet)
    if not args.quiet:
        headline = {k: summary[k] for k in ("corpus_bytes", "val_bits_per_byte", "compressed_bits_per_byte", "timings_s")
                    if k in summary}
        print(json.dumps(headline, indent=2))
        print(f"outputs: {summary['run_dir']} (summary.json, executed notebooks, figures/, tables)")
    return 0


def cmd_sweep(args) -> int:
    from .runner import sweep

    table = sweep(_parse_grid(args.grid), _notebook_params(args), root=args.run_dir, progress=not args.quiet)
    if not args.quiet:
        print(table.drop(columns=["run_dir"]).to_string(index=False))
        print(f"outputs: {Path(table['run_dir'].iloc[0]).parent} (sweep.csv, sweep.md, sweep.png, one directory per point)")
    return 0


def _add_notebook_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default=None, help="output directory (default: outputs/<kind>-<date>-<time>)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="notebook parameter, for every notebook that declares it (repeatable; VALUE is YAML)")
    p.add_argument("--config", default=None, help="YAML file of parameters (-p wins over it)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blm-lab", description="Byte-level language modelling and neural compression.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("train", help="train a model (python -m blm_lab.train_bytes)", add_help=False)

    for name, helptext in (("compress", "compress a file with a trained model"),
                           ("decompress", "decompress a file made by `blm-lab compress`")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("input")
        p.add_argument("output")
        p.add_argument("--model", required=True, help="checkpoint (.pt) of the model")
        p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto; decoding needs the compressing setting")
        p.add_argument("--json", action="store_true", help="print a one-line JSON summary")
        p.add_argument("--force", action="store_true", help="overwrite an existing output file")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "compress":
            group = p.add_mutually_exclusive_group()
            group.add_argument("--segments", type=int, default=None, help="number of independent streams")
            group.add_argument("--segment-bytes", type=int, default=None, help="bytes per stream (default adapts to size)")
        else:
            p.add_argument("--ignore-compute-mismatch", action="store_true",
                           help="try to decode a file made under another device/dtype/torch version; the checksum decides")

    run = sub.add_parser("run", help="run the four notebooks in order with papermill into one run directory")
    _add_notebook_arguments(run)
    grid = sub.add_parser("sweep", help="train and evaluate one model per grid point (notebooks 02 and 04)")
    grid.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2",
                      help="parameter values to combine, e.g. --grid n_layer=2,4 n_embd=64,128")
    _add_notebook_arguments(grid)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .train_bytes import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    handlers = {"compress": cmd_compress, "decompress": cmd_decompress, "run": cmd_run, "sweep": cmd_sweep}
    try:
        return handlers[args.command](args)
    except BlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        written = "what the finished notebooks wrote is kept" if args.command in ("run", "sweep") else "no output was written"
        print(f"interrupted; {written}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
