"""The ``blm-lab`` command: one parser for every subcommand.

    blm-lab train [DATASET] [flags]               the same as python -m blm_lab.train_bytes
    blm-lab compress IN OUT [--model CKPT] [--mixing cm|none] [--numerics portable|float] [--json]
    blm-lab decompress IN OUT [--model CKPT] [--json] [--ignore-compute-mismatch]
    blm-lab run [--run-dir DIR] [-p NAME VALUE ...] [--config params.yaml] [--force]
    blm-lab sweep --grid NAME=V1,V2 [NAME=V1,V2 ...] [--run-dir DIR] [-p NAME VALUE ...] [--config params.yaml]
                  [--workers N | --scheduler ADDRESS] [--seeds K] [--resume]

Errors print one line, ``error: ...``, naming the problem and the fix, and exit with status 2; every
path is checked before any work starts. Outputs are written atomically, never over the input, and
over an existing file only with --force.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .codec.container import MAX_OUTPUT_BYTES, MIXING, NUMERICS
from .errors import ConfigError, exit_status
from .files import check_input_file, check_output_file, read_input, write_bytes
from .training.config import TRAIN_DESCRIPTION, TRAIN_INTERRUPTED, add_train_arguments


# ----------------------------------------------------------------------------- compress / decompress

def _load_model(path: str, device: str):
    from .checkpoint import load_checkpoint
    from .device import pick_device

    model, _ = load_checkpoint(path, device=pick_device(device))
    return model


def _transform_file(args, transform, describe) -> int:
    """Shared by compress and decompress: check paths, load the model, transform, write atomically, report."""
    src = check_input_file(args.input)
    dst = check_output_file(args.output, force=args.force, inputs=[src])
    data = read_input(src)
    model = _load_model(args.model, args.device) if args.model else None
    out, stats = transform(data, model)
    write_bytes(dst, out)
    if args.json:
        print(json.dumps(stats.to_dict()))
    elif not args.quiet:
        print(describe(stats))
    return 0


def cmd_compress(args) -> int:
    from .codec.neural import compress_with_stats

    def transform(data, model):
        revision = {} if args.mixer_revision is None else {"mixer_revision": args.mixer_revision}
        return compress_with_stats(data, model, numerics=args.numerics, mixing=args.mixing, segments=args.segments,
                                   segment_bytes=args.segment_bytes, progress=not args.quiet, **revision)

    return _transform_file(args, transform, lambda stats: (
        f"{stats.original_bytes:,} -> {stats.compressed_bytes:,} bytes, {stats.bits_per_byte:.4f} bits/byte "
        f"(ideal {stats.ideal_bits / max(stats.original_bytes, 1):.4f}, overhead {stats.overhead_percent:.3f}%), "
        f"numerics {stats.numerics}, mixing {stats.mixing}, {stats.bytes_per_second / 1024:.1f} KB/s with "
        f"{stats.segments} streams"
        + (f", {stats.stored_segments} segments stored as they are" if stats.stored_segments else "")))


def cmd_decompress(args) -> int:
    from .codec.neural import decompress_with_stats

    def transform(blob, model):
        return decompress_with_stats(blob, model, progress=not args.quiet,
                                     allow_compute_mismatch=args.ignore_compute_mismatch,
                                     max_output_bytes=args.max_output_bytes)

    return _transform_file(args, transform, lambda stats: (
        f"{stats.compressed_bytes:,} -> {stats.original_bytes:,} bytes, checksum verified, "
        f"{stats.bytes_per_second / 1024:.1f} KB/s with {stats.segments} streams"))


# ----------------------------------------------------------------------------- run / sweep

def _notebook_params(args) -> dict:
    """--config first, then every -p NAME VALUE over it (values parsed as YAML: 3, 0.5, true, null, text)."""
    from .workbench.runner import load_config, parse_value

    params = load_config(args.config) if args.config else {}
    for name, value in args.param or []:
        params[name] = parse_value(value)
    return params


def _parse_grid(items: list[str]) -> dict[str, list]:
    from .workbench.runner import parse_value

    grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise ConfigError(f"--grid item {item!r} is not NAME=V1,V2,...; for example n_layer=2,4")
        grid[name.strip()] = [parse_value(v) for v in values.split(",")]
    return grid


def cmd_run(args) -> int:
    from .workbench.runner import run_pipeline

    summary = run_pipeline(args.run_dir, _notebook_params(args), progress=not args.quiet, force=args.force)
    if not args.quiet:
        print(json.dumps(summary.headline(), indent=2))
        print(f"outputs: {summary.run_dir} (summary.json, executed notebooks, figures/, tables)")
    return 0


def _sweep_engine(args):
    """Sequential unless --workers N (a local Dask cluster) or --scheduler ADDRESS (an existing one)."""
    from .workbench.engine import Dask, Sequential

    if args.workers is not None and args.scheduler:
        raise ConfigError("give --workers N (a local cluster) or --scheduler ADDRESS (an existing one), not both")
    if args.scheduler:
        return Dask.connect(args.scheduler)
    if args.workers is not None:
        return Dask.local(args.workers)
    return Sequential()


def cmd_sweep(args) -> int:
    from .viz.figures import plot_sweep, save_figure
    from .workbench.runner import SEED_PARAM, grid_points, load_plan, seed_summary, sweep

    if bool(args.grid) == bool(args.plan):
        raise ConfigError("give --grid NAME=V1,V2 ... or --plan FILE.yaml (one of them)")
    if args.plan:
        params, points, compress = load_plan(args.plan)
    else:
        params, points, compress = {}, grid_points(_parse_grid(args.grid)), True
    params.update(_notebook_params(args))
    table, curves = sweep(points, params, root=args.run_dir, progress=not args.quiet, force=args.force,
                          compress=compress and not args.no_compress, engine=_sweep_engine(args), seeds=args.seeds,
                          resume=args.resume)
    root = Path(table["run_dir"].iloc[0]).parent
    per_seed = seed_summary(table) if SEED_PARAM in table else None
    save_figure(plot_sweep(table, curves, per_seed), root / "sweep.png")
    failed = table[table["status"] != "done"]
    if not args.quiet:
        print(table.drop(columns=["run_dir"]).to_string(index=False))
        print(f"outputs: {root} (sweep.csv, sweep_curves.csv, sweep.md, sweep.png, one directory per point)")
    if len(failed):
        print(f"{len(failed)} of {len(table)} runs failed: {', '.join(failed['point'].astype(str))} (the error column "
              f"of {root / 'sweep.csv'}); blm-lab sweep --resume --run-dir {root} with the same points reruns them",
              file=sys.stderr)
        return 1
    return 0


def cmd_train(args) -> int:
    from .training.loop import run_from_args

    return run_from_args(args)


# ----------------------------------------------------------------------------- the parser

def _add_notebook_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default=None, help="output directory (default: outputs/<kind>-<date>-<time>)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="notebook parameter, for every notebook that declares it (repeatable; VALUE is YAML)")
    p.add_argument("--config", default=None, help="YAML file of parameters (-p wins over it)")
    p.add_argument("--force", action="store_true", help="write into a run directory that already holds a run")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blm-lab", description="Byte-level language modelling and neural compression.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (the same as python -m blm_lab.train_bytes)",
                           description=TRAIN_DESCRIPTION)
    add_train_arguments(train)
    train.set_defaults(handler=cmd_train)

    for name, helptext, handler in (("compress", "compress a file with a trained model", cmd_compress),
                                    ("decompress", "decompress a file made by `blm-lab compress`", cmd_decompress)):
        p = sub.add_parser(name, help=helptext)
        p.set_defaults(handler=handler)
        p.add_argument("input")
        p.add_argument("output")
        p.add_argument("--model", default=None, help="checkpoint (.pt) of the model (compress without one: context "
                                                      "mixing alone; decompress needs the one that compressed)")
        p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto (portable files decode on any of them)")
        p.add_argument("--json", action="store_true", help="print a one-line JSON summary")
        p.add_argument("--force", action="store_true", help="overwrite an existing output file")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "compress":
            p.add_argument("--mixing", choices=MIXING, default="cm",
                           help="cm (default): mix the model with the file's own statistics, bit by bit; none: code "
                                "the model's byte distributions as they are")
            p.add_argument("--mixer-revision", type=int, default=None,
                           help="with --mixing cm: the context mixer's revision (default 1; 2: more models, about "
                                "twice as slow); the file records it, decompress needs nothing")
            p.add_argument("--numerics", choices=NUMERICS[:2], default="portable",
                           help="portable (default): bit-exact, decodes on any machine; float: the model's own float "
                                "arithmetic, decodes only under the same compute setting")
            group = p.add_mutually_exclusive_group()
            group.add_argument("--segments", type=int, default=None, help="number of independent streams")
            group.add_argument("--segment-bytes", type=int, default=None, help="bytes per stream (default adapts to size)")
        else:
            p.add_argument("--ignore-compute-mismatch", action="store_true",
                           help="float-numerics files: try to decode under another compute setting; the checksum decides")
            p.add_argument("--max-output-bytes", type=int, default=MAX_OUTPUT_BYTES,
                           help="refuse files that claim to decode to more than this (default: 4 GiB)")

    run = sub.add_parser("run", help="run the four notebooks in order with papermill into one run directory")
    run.set_defaults(handler=cmd_run)
    _add_notebook_arguments(run)
    grid = sub.add_parser("sweep", help="train (and evaluate) one model per point (notebooks 02 and 04)")
    grid.set_defaults(handler=cmd_sweep)
    grid.add_argument("--grid", nargs="+", metavar="NAME=V1,V2",
                      help="parameter values to combine, e.g. --grid n_layer=2,4 n_embd=64,128")
    grid.add_argument("--plan", default=None, help="YAML sweep plan: parameters, and points or grid (see benchmarks/sweeps/)")
    grid.add_argument("--no-compress", action="store_true", help="train only (skip notebook 04)")
    grid.add_argument("--workers", type=int, default=None, metavar="N",
                      help="run the points on a local Dask cluster of N workers: one per GPU, or the CPU cores "
                           "shared between them (default: one point after another in this process)")
    grid.add_argument("--scheduler", default=None, metavar="ADDRESS",
                      help="run the points on an existing Dask cluster (tcp://HOST:8786); --run-dir must be a "
                           "path every worker can write")
    grid.add_argument("--seeds", type=int, default=1, metavar="K",
                      help="repeat each point with K seeds; the table and plot show mean and spread")
    grid.add_argument("--resume", action="store_true",
                      help="in the existing --run-dir, rerun only the points that did not finish")
    _add_notebook_arguments(grid)
    return parser


INTERRUPTED = {"train": TRAIN_INTERRUPTED,
               "run": "interrupted; what the finished notebooks wrote is kept",
               "sweep": "interrupted; what the finished notebooks wrote is kept"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return exit_status(lambda: args.handler(args), INTERRUPTED.get(args.command, "interrupted; no output was written"))


if __name__ == "__main__":
    sys.exit(main())
