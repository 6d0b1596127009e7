"""Run the workbench notebooks with papermill: the whole pipeline into one run directory, or a sweep of them.

``run_pipeline(run_dir, params)`` executes the notebooks 01..04 in order into ``run_dir`` (executed
notebooks, figures, tables, checkpoint) and writes ``summary.json`` with the headline numbers.
Parameters apply to every notebook that declares them; a name no notebook declares is an error.
``sweep(grid, params)`` runs 01 once, then 02 and 04 for every point of the grid, each in its own run
directory, and aggregates one table (``blm-lab sweep`` also draws it).

The notebooks ship inside the package (``blm_lab.notebooks``, the repository's ``notebooks/``), so
an installed blm_lab finds them anywhere. They run in the ``blm_lab`` Jupyter kernel (this
interpreter), installed on first use.
"""

from __future__ import annotations

import importlib.resources
import itertools
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from ..errors import BlmError, ConfigError, NotebookError
from ..files import check_output_dir
from .rundir import RunDir, Summary


def notebooks_dir() -> Path:
    """Where the workbench notebooks are: inside the installed package (or the checkout, when editable)."""
    return Path(str(importlib.resources.files("blm_lab.notebooks")))


NOTEBOOKS = ("01_data_prep.ipynb", "02_train_gpu.ipynb", "03_entropy_visualization.ipynb",
             "04_compression_ratios.ipynb", "05_bits_and_patches.ipynb")
SWEEP_NOTEBOOKS = ("02_train_gpu.ipynb", "04_compression_ratios.ipynb")
KERNEL_NAME = "blm_lab"
KERNEL_DISPLAY_NAME = "Python (blm_lab)"
RUN_DIR_PARAM = "run_dir"  # set by the runner for every notebook, never by -p
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")  # 1e-3: a string to YAML 1.1, a float here


# ----------------------------------------------------------------------------- kernel and parameters

def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Make sure the ``blm_lab`` kernel exists (install it into sys.prefix, for this interpreter, if not)."""
    from jupyter_client.kernelspec import find_kernel_specs

    if name not in find_kernel_specs():
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix, kernel_name=name, display_name=KERNEL_DISPLAY_NAME)
    return name


def parse_value(text: str):
    """A ``-p`` value: YAML (ints, floats, bools, null, lists), with ``1e-3``-style floats that YAML 1.1 leaves as text."""
    import yaml

    if not text.strip():
        return ""
    if _FLOAT.match(text.strip()):
        return float(text)
    return yaml.safe_load(text)


def load_config(path: str | os.PathLike) -> dict:
    """Parameters from a YAML file: a mapping of parameter name to value."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise BlmError(f"config file not found: {str(path)!r}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise BlmError(f"config file {str(path)!r} must be a YAML mapping of parameter names to values, "
                       f"not a {type(values).__name__}")
    return values


def notebook_parameters(notebooks: Iterable[str], notebook_dir: Path | None = None) -> dict[str, dict]:
    """For each notebook, its declared parameters (papermill's ``inspect_notebook``): name -> {default, help, ...}."""
    import papermill as pm

    notebook_dir = Path(notebook_dir or notebooks_dir())
    declared = {}
    for name in notebooks:
        path = notebook_dir / name
        if not path.is_file():
            raise BlmError(f"notebook not found: {path}; check notebook_dir or the notebook names")
        declared[name] = pm.inspect_notebook(str(path))
    return declared


def check_parameters(params: Mapping, declared: Mapping[str, dict]) -> None:
    """Every name must be declared by at least one notebook (and ``run_dir`` is the runner's)."""
    if RUN_DIR_PARAM in params:
        raise ConfigError("run_dir is set by the runner; pass --run-dir DIR instead of -p run_dir")
    valid = sorted({p for names in declared.values() for p in names} - {RUN_DIR_PARAM})
    unknown = [name for name in params if name not in valid]
    if unknown:
        raise ConfigError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"the notebooks declare: {', '.join(valid)}")


def default_run_dir(prefix: str = "run") -> Path:
    return Path("outputs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _fresh_dir(path: str | os.PathLike, force: bool, what: str) -> Path:
    """A run directory that is new or empty (or, with ``force``, whose earlier run may be replaced)."""
    path = check_output_dir(path, force=force, what=what,
                            fix="pass --force to replace the run there, or choose another --run-dir")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


# ----------------------------------------------------------------------------- one notebook, one pipeline

def _ipc_kernel_manager():
    """A kernel manager that talks to its kernel over local IPC sockets (beside its connection file in the
    Jupyter runtime directory): no TCP ports on loopback, and no plain-text-transport warning per kernel."""
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "ipc"

    return IPCKernelManager


def run_notebook(name: str, run_dir: Path, params: Mapping, declared: Mapping, notebook_dir: Path | None = None,
                 kernel_name: str = KERNEL_NAME, progress: bool = False) -> float:
    """Execute one notebook into ``run_dir/NAME`` with the parameters it declares; returns wall seconds."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    mine = {k: v for k, v in params.items() if k in declared}
    if RUN_DIR_PARAM in declared:
        mine[RUN_DIR_PARAM] = str(run_dir)
    executed = run_dir / name
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(Path(notebook_dir or notebooks_dir()) / name), str(executed), parameters=mine,
                            kernel_name=kernel_name, progress_bar=progress, cwd=os.getcwd(),
                            kernel_manager_class=_ipc_kernel_manager())
    except PapermillExecutionError as exc:
        raise NotebookError(name, exc.exec_count or exc.cell_index, exc.ename, exc.evalue, executed) from None
    return time.perf_counter() - t0


def run_pipeline(run_dir: str | os.PathLike | None = None, params: Mapping | None = None,
                 notebooks: Iterable[str] = NOTEBOOKS, notebook_dir: str | os.PathLike | None = None,
                 kernel_name: str = KERNEL_NAME, progress: bool = True, force: bool = False) -> Summary:
    """Execute ``notebooks`` in order into ``run_dir`` and write ``summary.json``; returns the summary.

    ``params`` go to every notebook that declares them (unknown names raise ConfigError listing the valid
    ones). A run directory that holds files is refused unless ``force``. A failing cell raises
    ``NotebookError`` naming the notebook and cell; the executed notebook with the traceback is in ``run_dir``.
    """
    params = dict(params or {})
    notebooks = list(notebooks)
    declared = notebook_parameters(notebooks, notebook_dir)
    check_parameters(params, declared)
    run_dir = _fresh_dir(run_dir or default_run_dir(), force, "run directory")
    return _execute(run_dir, params, notebooks, declared, notebook_dir, kernel_name, progress)


def _execute(run_dir: Path, params: dict, notebooks: list[str], declared: Mapping, notebook_dir, kernel_name: str,
             progress: bool) -> Summary:
    ensure_kernel(kernel_name)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, name in enumerate(notebooks, 1):
        if progress:
            print(f"[{i}/{len(notebooks)}] {name} ...", flush=True)
        timings[Path(name).stem] = run_notebook(name, run_dir, params, declared[name], notebook_dir, kernel_name,
                                                progress)
        if progress:
            print(f"[{i}/{len(notebooks)}] {name} done in {timings[Path(name).stem]:.1f} s", flush=True)
    timings["total"] = time.perf_counter() - t0
    return RunDir(run_dir).write_summary(params, timings)


# ----------------------------------------------------------------------------- sweeps

def grid_points(grid: Mapping[str, Iterable]) -> list[dict]:
    """Every combination of the grid's values, in order (the last name varies fastest)."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(list(grid[n]) for n in names))]


def point_name(point: Mapping) -> str:
    """A directory name for a point: its ``name``, else ``n_layer=2_n_embd=64``."""
    text = str(point["name"]) if "name" in point else "_".join(f"{k}={v}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", text)


def load_plan(path: str | os.PathLike) -> tuple[dict, list[dict], bool]:
    """A sweep plan (YAML): ``parameters`` every point shares, ``points`` (a list of parameter mappings,
    each with an optional ``name``) or ``grid`` (NAME: [values], every combination), and ``compress``
    (default true: run 04 after 02). Returns (parameters, points, compress)."""
    plan = load_config(path)
    unknown = sorted(set(plan) - {"parameters", "points", "grid", "compress"})
    if unknown:
        raise ConfigError(f"sweep plan {str(path)!r} has unknown keys {', '.join(unknown)}; "
                          "it takes parameters, points or grid, and compress")
    if ("points" in plan) == ("grid" in plan):
        raise ConfigError(f"sweep plan {str(path)!r} needs exactly one of points (a list) and grid (a mapping)")
    points = plan["points"] if "points" in plan else grid_points(plan["grid"])
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ConfigError(f"sweep plan {str(path)!r}: points must be a list of parameter mappings")
    return dict(plan.get("parameters") or {}), [dict(p) for p in points], bool(plan.get("compress", True))


SWEEP_TABLE = "sweep"  # .csv and .md in the sweep's root
SWEEP_CURVES = "sweep_curves.csv"  # every validation point of every run: minutes, tokens, FLOPs, bits/byte


def sweep(points: list[dict], params: Mapping | None = None, root: str | os.PathLike | None = None,
          notebook_dir: str | os.PathLike | None = None, kernel_name: str = KERNEL_NAME,
          progress: bool = True, force: bool = False, compress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train (and with ``compress``, evaluate as a compressor) one model per point; returns (table, curves).

    ``points`` are parameter mappings (``grid_points`` makes them from a grid; a ``name`` key names the
    run directory). 01 runs once into ``ROOT/data``; every point gets its own ``ROOT/<name>/`` with a copy
    of the corpus description, then 02 (and 04) run there. The table (``sweep.csv``/``.md``) has one row
    per point; the curves (``sweep_curves.csv``) every validation point of every run, against minutes,
    training tokens and training FLOPs. ``viz.figures.plot_sweep`` draws them.
    """
    params = dict(params or {})
    if not points:
        raise ConfigError("the sweep has no points; give --grid NAME=V1,V2,... or a --plan with points")
    notebooks = list(SWEEP_NOTEBOOKS if compress else SWEEP_NOTEBOOKS[:1])
    declared = notebook_parameters(NOTEBOOKS, notebook_dir)
    check_parameters(params, declared)
    swept = sorted({p for nb in notebooks for p in declared[nb]} - {RUN_DIR_PARAM})
    bad = sorted({name for point in points for name in point if name not in swept and name != "name"})
    if bad:
        raise ConfigError(f"cannot sweep {', '.join(map(repr, bad))}: a sweep varies parameters of "
                          f"{' and '.join(notebooks)}: {', '.join(swept)}")
    names = [point_name(p) for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"two sweep points share a run directory name ({', '.join(sorted(names))}); name them")
    root = _fresh_dir(root or default_run_dir("sweep"), force, "sweep directory")
    data_dir = root / "data"
    data_dir.mkdir(exist_ok=True)
    _execute(data_dir, {k: v for k, v in params.items() if k in declared[NOTEBOOKS[0]]}, list(NOTEBOOKS[:1]),
             declared, notebook_dir, kernel_name, progress)

    # every row names every varied setting: the point's own value, else the sweep's common one
    varied = list(dict.fromkeys(k for point in points for k in point if k != "name"))
    rows, curves = [], []
    for i, (point, name) in enumerate(zip(points, names), 1):
        run_dir = root / name
        run_dir.mkdir(exist_ok=True)
        for file in (RunDir.CORPUS, RunDir.MANIFEST):
            shutil.copy2(data_dir / file, run_dir / file)
        if progress:
            print(f"sweep point {i}/{len(points)}: {point}", flush=True)
        settings = {k: v for k, v in point.items() if k != "name"}
        summary = _execute(run_dir, {**{k: v for k, v in params.items() if k in swept}, **settings}, notebooks,
                           declared, notebook_dir, kernel_name, progress)
        rows.append(_sweep_row(name, {k: point.get(k, params.get(k)) for k in varied}, summary, compress))
        curves.extend(_sweep_curve(name, summary))
    table, curves = pd.DataFrame(rows), pd.DataFrame(curves)
    table.to_csv(root / f"{SWEEP_TABLE}.csv", index=False)
    (root / f"{SWEEP_TABLE}.md").write_text(table.drop(columns=["run_dir"]).to_markdown(index=False, floatfmt=".4g") + "\n")
    curves.to_csv(root / SWEEP_CURVES, index=False)
    return table, curves


def _sweep_row(name: str, settings: Mapping, summary: Summary, compressed: bool) -> dict:
    training, neural = summary.training, summary.neural
    row = {
        "point": name,
        **settings,
        "num_params": training.num_params,
        "train_s": training.elapsed_s,
        "steps": training.steps,
        "tokens": training.tokens,
        "tokens_per_s": training.tokens_per_s,
        "train_flops": training.tokens * training.flops_per_token,
        "val_bits_per_byte": training.final_val_bpb,
        "best_val_bits_per_byte": training.best_val_bpb,
    }
    if compressed:  # 04 ran: the point's model as a compressor of the held-out split
        row["blm_bits_per_byte"] = summary.compressed_bits_per_byte.get("blm", math.nan)
        row["blm_adjusted_bits_per_byte"] = neural.adjusted_bits_per_byte if neural else math.nan
    return {**row, "run_dir": summary.run_dir}


def _sweep_curve(name: str, summary: Summary) -> list[dict]:
    """Every validation record of a point's run, with the tokens and FLOPs spent to reach it."""
    training = summary.training
    cfg = training.train_config
    tokens_per_step = cfg["batch_size"] * cfg["grad_accum"] * training.model_config["block_size"]
    out = []
    for record in training.history:
        tokens = record["step"] * tokens_per_step
        out.append({"point": name, "step": record["step"], "minutes": record["elapsed_s"] / 60, "tokens": tokens,
                    "train_flops": tokens * training.flops_per_token, "val_bits_per_byte": record["val_bpb"],
                    "train_bits_per_byte": record["train_bpb"]})
    return out
