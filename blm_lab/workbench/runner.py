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

import contextlib
import importlib.resources
import itertools
import json
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
from ..files import atomic_write, check_output_dir
from .engine import Outcome, Sequential
from .rundir import RunDir, Summary
from .watch import POINT_STATE, Watch, read_state


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
    """A kernel manager that talks to its kernel over local IPC sockets in the Jupyter runtime directory:
    no TCP ports on loopback, and no plain-text-transport warning per kernel.

    Each kernel's sockets get their own name: jupyter_client's default, ``kernel-ipc-N`` in the working
    directory, is shared by every kernel started there, and two started at once (a sweep's workers) would
    pick the same N and talk to each other's kernel."""
    import uuid

    from jupyter_client import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "ipc"

        @default("ip")
        def _ip_default(self):
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True)
            return str(runtime / f"kernel-{uuid.uuid4().hex[:16]}-ipc")

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
    """Run ``notebooks`` in order into ``run_dir``; with ``progress``, a line per notebook and per evaluation
    of a training run (``watch.Watch`` follows its metrics), instead of papermill's cell counter."""
    ensure_kernel(kernel_name)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with Watch({"": run_dir}, _say) if progress else contextlib.nullcontext():
        for i, name in enumerate(notebooks, 1):
            if progress:
                _say(f"[{i}/{len(notebooks)}] {name} ...")
            timings[Path(name).stem] = run_notebook(name, run_dir, params, declared[name], notebook_dir, kernel_name)
            if progress:
                _say(f"[{i}/{len(notebooks)}] {name} done in {timings[Path(name).stem]:.1f} s")
    timings["total"] = time.perf_counter() - t0
    return RunDir(run_dir).write_summary(params, timings)


def _say(line: str) -> None:
    print(line, flush=True)


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


SWEEP_TABLE = "sweep"  # .csv and .md in the sweep's root: one row per run (point and seed)
SWEEP_CURVES = "sweep_curves.csv"  # every validation point of every run: minutes, tokens, FLOPs, bits/byte
SWEEP_SEEDS = "sweep_seeds.csv"  # with several seeds: each point's mean and spread over its seeds
SWEEP_PLAN = "sweep_plan.json"  # what the sweep runs: --resume reads it back
DATA_DIR = "data"  # 01's run, shared by every point
SEED_PARAM = "seed"


def sweep(points: list[dict], params: Mapping | None = None, root: str | os.PathLike | None = None,
          notebook_dir: str | os.PathLike | None = None, kernel_name: str = KERNEL_NAME,
          progress: bool = True, force: bool = False, compress: bool = True, engine=None, seeds: int = 1,
          resume: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train (and with ``compress``, evaluate as a compressor) one model per point and seed; returns (table, curves).

    ``points`` are parameter mappings (``grid_points`` makes them from a grid; a ``name`` key names the
    run directory). 01 runs once into ``ROOT/data``; every point gets its own ``ROOT/<name>/`` with a copy
    of the corpus description, then 02 (and 04) run there, on ``engine`` (``engine.Sequential()`` by
    default, or ``engine.Dask``; the engine is entered here). ``seeds`` > 1 repeats each point with seeds
    ``seed``, ``seed + 1``, ... in ``ROOT/<name>_seed=S/``. A point that fails (or whose worker dies
    twice) has its row marked ``failed`` with the error, and the others go on. ``resume`` reruns, in the
    existing ``root``, only the points that did not finish (``sweep_plan.json`` must match).

    The table (``sweep.csv``/``.md``) has one row per run, with the worker, host, device and torch
    threads it ran on; the curves (``sweep_curves.csv``) every validation point of every run, against
    minutes, training tokens and training FLOPs. ``viz.figures.plot_sweep`` draws them.
    """
    with engine or Sequential() as engine:  # a cluster is closed whatever happens; connected before anything is written
        return _sweep(points, params, root, notebook_dir, kernel_name, progress, force, compress, engine, seeds, resume)


def _sweep(points: list[dict], params, root, notebook_dir, kernel_name, progress: bool, force: bool, compress: bool,
           engine, seeds: int, resume: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    params = dict(params or {})
    if not points:
        raise ConfigError("the sweep has no points; give --grid NAME=V1,V2,... or a --plan with points")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1 seed per point")
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
    runs = _seeded_runs(points, names, params, seeds, swept)
    plan = {"points": points, "parameters": params, "seeds": seeds, "compress": compress}
    if resume and root is None:
        raise ConfigError("--resume needs --run-dir: the sweep directory to finish")

    root = _resumed_dir(root, plan) if resume else _fresh_dir(root or default_run_dir("sweep"), force,
                                                                 "sweep directory")
    try:
        engine.check_shared(root)
    except BlmError:
        if not resume and not any(root.iterdir()):
            root.rmdir()  # made a moment ago: nothing is left behind
        raise
    _write_plan(root, plan)
    if progress:
        _say(f"sweep of {len(runs)} runs on {engine.description}, in {root}")
        if engine.dashboard:
            _say(f"Dask dashboard: {engine.dashboard}")
    data_dir = root / DATA_DIR
    if not (resume and _finished(data_dir)):
        data_dir.mkdir(exist_ok=True)
        first = _point_task(data_dir, {k: v for k, v in params.items() if k in declared[NOTEBOOKS[0]]},
                            NOTEBOOKS[:1], declared, notebook_dir, kernel_name)
        outcome = engine.map(run_point, [first], [DATA_DIR])[0]
        if _failed(outcome):
            raise BlmError(f"{NOTEBOOKS[0]} failed for the sweep: {_error(outcome)}")
    todo = [run for run in runs if not (resume and _finished(root / run["name"]))]
    tasks = []
    for run in todo:
        run_dir = root / run["name"]
        run_dir.mkdir(exist_ok=True)
        (run_dir / POINT_STATE).unlink(missing_ok=True)
        for file in (RunDir.CORPUS, RunDir.MANIFEST):
            shutil.copy2(data_dir / file, run_dir / file)
        tasks.append(_point_task(run_dir, run["params"], notebooks, declared, notebook_dir, kernel_name))
    watched = {run["name"]: root / run["name"] for run in runs}
    with Watch(watched, _say, states=True) if progress else contextlib.nullcontext():
        outcomes = engine.map(run_point, tasks, [run["name"] for run in todo])
    for run, outcome in zip(todo, outcomes):
        if isinstance(outcome, Outcome):  # the engine gave up on it: say so where the row is read
            _write_state(root / run["name"], {"state": "failed", "error": outcome.error, **outcome.where})

    varied = list(dict.fromkeys(k for point in points for k in point if k != "name"))
    rows, curves = [], []
    for run in runs:
        row, curve = _sweep_row(root / run["name"], run, {k: run["point"].get(k, params.get(k)) for k in varied},
                                compress)
        rows.append(row)
        curves.extend(curve)
    table, curves = pd.DataFrame(rows), pd.DataFrame(curves)
    _flag_incomparable(table)
    per_seed = seed_summary(table) if seeds > 1 else None
    table.to_csv(root / f"{SWEEP_TABLE}.csv", index=False)
    curves.to_csv(root / SWEEP_CURVES, index=False)
    markdown = table.drop(columns=["run_dir"]).to_markdown(index=False, floatfmt=".4g") + "\n"
    if per_seed is not None:
        per_seed.to_csv(root / SWEEP_SEEDS, index=False)
        markdown += f"\nMean and standard deviation over {seeds} seeds:\n\n" + \
            per_seed.to_markdown(index=False, floatfmt=".4g") + "\n"
    if "comparable" in table:
        markdown += f"\n{INCOMPARABLE}\n"
    (root / f"{SWEEP_TABLE}.md").write_text(markdown)
    return table, curves


def _seeded_runs(points, names, params, seeds, swept) -> list[dict]:
    """One run per point and seed: its name (its run directory), its point, seed and parameters."""
    shared = {k: v for k, v in params.items() if k in swept}
    if seeds == 1:
        return [{"name": name, "point_name": name, "point": point, "seed": None,
                 "params": {**shared, **{k: v for k, v in point.items() if k != "name"}}}
                for point, name in zip(points, names)]
    if SEED_PARAM not in swept:
        raise ConfigError(f"--seeds {seeds}: the training notebook declares no {SEED_PARAM!r} parameter")
    from ..training.config import TrainConfig

    first = int(params.get(SEED_PARAM) or TrainConfig.seed)
    return [{"name": f"{name}_seed={first + i}", "point_name": name, "point": point, "seed": first + i,
             "params": {**shared, **{k: v for k, v in point.items() if k != "name"}, SEED_PARAM: first + i}}
            for point, name in zip(points, names) for i in range(seeds)]


def _write_plan(root: Path, plan: dict) -> None:
    (root / SWEEP_PLAN).write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")


def _resumed_dir(root, plan: dict) -> Path:
    """The sweep directory to finish: it must hold a sweep of the same points, parameters and seeds."""
    root = Path(root).expanduser().resolve()
    saved = root / SWEEP_PLAN
    if not saved.is_file():
        raise ConfigError(f"--resume: {root} holds no sweep ({SWEEP_PLAN} not found); "
                          "drop --resume to start one there, or give the sweep's --run-dir")
    if json.loads(saved.read_text()) != json.loads(json.dumps(plan, sort_keys=True)):
        raise ConfigError(f"--resume: the sweep in {root} has other points, parameters or seeds than these "
                          f"(see its {SWEEP_PLAN}); give the same --grid/--plan and -p, or another --run-dir")
    return root


def _point_task(run_dir: Path, params: dict, notebooks, declared, notebook_dir, kernel_name) -> dict:
    return {"run_dir": str(run_dir), "params": params, "notebooks": list(notebooks), "declared": dict(declared),
            "notebook_dir": str(notebook_dir) if notebook_dir else None, "kernel_name": kernel_name,
            "submitted_at": time.time()}


def _write_state(run_dir: Path, state: dict) -> None:
    atomic_write(Path(run_dir) / POINT_STATE, lambda f: f.write((json.dumps(state, indent=2) + "\n").encode()))


def run_point(task: dict, where: dict) -> dict:
    """One sweep run, where an engine runs it: the notebooks into its directory, its state in ``point.json``.

    The state says running, then done or failed (with the error), the worker, host, torch threads and
    GPU it ran on, and when it was submitted, started and finished. A failing notebook is a failed point,
    not an exception: the sweep goes on.
    """
    run_dir = Path(task["run_dir"])
    state = {"state": "running", **where, "submitted_at": task["submitted_at"], "started_at": time.time()}
    _write_state(run_dir, state)
    try:
        _execute(run_dir, task["params"], task["notebooks"], task["declared"], task["notebook_dir"],
                 task["kernel_name"], progress=False)
        state.update(state="done", error=None)
    except BlmError as exc:
        state.update(state="failed", error=str(exc))
    state["finished_at"] = time.time()
    _write_state(run_dir, state)
    return state


def _finished(run_dir: Path) -> bool:
    return read_state(run_dir).get("state") == "done" and (Path(run_dir) / RunDir.SUMMARY).is_file()


def _failed(outcome) -> bool:
    return isinstance(outcome, Outcome) or outcome.get("state") != "done"


def _error(outcome) -> str:
    return outcome.error if isinstance(outcome, Outcome) else outcome.get("error")


def _sweep_row(run_dir: Path, run: dict, settings: Mapping, compressed: bool) -> tuple[dict, list[dict]]:
    """A run's row of the table (where it ran; its figures, or the error that stopped it) and its curve."""
    state = read_state(run_dir)
    row = {"point": run["point_name"], **settings}
    if run["seed"] is not None:
        row[SEED_PARAM] = run["seed"]
    row.update(status=state.get("state") or "not run", error=state.get("error"), worker=state.get("worker"),
               host=state.get("host"))
    summary = RunDir(run_dir).summary() if state.get("state") == "done" else None
    training = summary.training if summary else None
    info = training.device_info if training else {}
    row.update(device=info.get("gpu") or info.get("device"), threads=info.get("cpu_threads"),
               hardware=_hardware(info), time_budget=training.train_config["time_budget"] if training else None)
    row.update({"num_params": training.num_params if training else math.nan,
                "train_s": training.elapsed_s if training else math.nan,
                "steps": training.steps if training else math.nan,
                "tokens": training.tokens if training else math.nan,
                "tokens_per_s": training.tokens_per_s if training else math.nan,
                "train_flops": training.tokens * training.flops_per_token if training else math.nan,
                "val_bits_per_byte": training.final_val_bpb if training else math.nan,
                "best_val_bits_per_byte": training.best_val_bpb if training else math.nan})
    if compressed:  # 04 ran: the point's model as a compressor of the held-out split
        row["blm_bits_per_byte"] = summary.compressed_bits_per_byte.get("blm", math.nan) if summary else math.nan
        row["blm_adjusted_bits_per_byte"] = summary.neural.adjusted_bits_per_byte if summary and summary.neural \
            else math.nan
    # the engine's own time per run: submission to start, and finish to this table
    row["queued_s"] = state["started_at"] - state["submitted_at"] if "started_at" in state else math.nan
    row["run_dir"] = str(run_dir)
    curve = _sweep_curve(run["point_name"], summary) if training else []
    if run["seed"] is not None:
        for record in curve:
            record[SEED_PARAM] = run["seed"]
    return row, curve


def _hardware(device_info: Mapping) -> str | None:
    """What a run's speed depends on: the GPU's name, or the CPU with its torch threads."""
    if not device_info:
        return None
    if device_info.get("gpu"):
        return str(device_info["gpu"])
    return f"{device_info.get('device', 'cpu')} x{device_info.get('cpu_threads')} threads"


INCOMPARABLE = ("Not comparable: these runs trained under a time budget on different hardware (the hardware "
                "column), so a faster device trained for more steps in the same time.")


def _flag_incomparable(table: pd.DataFrame) -> None:
    """Add ``comparable`` = False when runs under a time budget ran on different hardware."""
    timed = table[(table["time_budget"].fillna(0) > 0) & table["hardware"].notna()]
    if timed["hardware"].nunique() > 1:
        table["comparable"] = False


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Each point's mean and standard deviation over its seeds (finished runs only)."""
    done = table[table["status"] == "done"]
    figures = [c for c in ("val_bits_per_byte", "best_val_bits_per_byte", "blm_bits_per_byte", "train_s")
               if c in table]
    grouped = done.groupby("point", sort=False)
    out = grouped[figures].mean()
    for column in figures:
        out[f"{column}_std"] = grouped[column].std()
    out["num_params"] = grouped["num_params"].first()
    out["seeds"] = grouped.size()
    return out.reset_index()


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
