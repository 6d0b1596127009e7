"""Run the workbench notebooks with papermill: the whole pipeline into one run directory, or a sweep of them.

``run_pipeline(run_dir, params)`` executes ``notebooks/01..04`` in order into ``run_dir`` (executed
notebooks, figures, tables, checkpoint) and writes ``summary.json`` with the headline numbers.
Parameters apply to every notebook that declares them; a name no notebook declares is an error.
``sweep(grid, params)`` runs 01 once, then 02 and 04 for every point of the grid, each in its own run
directory, and aggregates one table and one plot.

Notebooks run in the ``blm_lab`` Jupyter kernel (this interpreter), installed on first use.
"""

from __future__ import annotations

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

from . import notebook_helpers as nh
from .errors import BlmError

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ("01_data_prep.ipynb", "02_train_gpu.ipynb", "03_entropy_visualization.ipynb",
             "04_compression_ratios.ipynb")
SWEEP_NOTEBOOKS = ("02_train_gpu.ipynb", "04_compression_ratios.ipynb")
KERNEL_NAME = "blm_lab"
KERNEL_DISPLAY_NAME = "Python (blm_lab)"
RUN_DIR_PARAM = "run_dir"  # set by the runner for every notebook, never by -p
SUMMARY_FILE = "summary.json"
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")  # 1e-3: a string to YAML 1.1, a float here


class NotebookError(BlmError):
    """A notebook cell raised: names the notebook, the cell (its In [N] in the executed notebook) and the error."""

    def __init__(self, notebook: str, cell: int, ename: str, evalue: str, executed: Path | None = None):
        self.notebook, self.cell, self.ename, self.evalue, self.executed = notebook, cell, ename, evalue, executed
        first_line = (evalue or "").strip().splitlines()[0] if (evalue or "").strip() else ""
        where = f"; the executed notebook is {executed}" if executed else ""
        super().__init__(f"notebook {notebook} failed in cell {cell}: {ename}: {first_line}{where}")


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


def notebook_parameters(notebooks: Iterable[str], notebook_dir: Path = NOTEBOOK_DIR) -> dict[str, dict]:
    """For each notebook, its declared parameters (papermill's ``inspect_notebook``): name -> {default, help, ...}."""
    import papermill as pm

    declared = {}
    for name in notebooks:
        path = Path(notebook_dir) / name
        if not path.is_file():
            raise BlmError(f"notebook not found: {path}; check notebook_dir or the notebook names")
        declared[name] = pm.inspect_notebook(str(path))
    return declared


def check_parameters(params: Mapping, declared: Mapping[str, dict]) -> None:
    """Every name must be declared by at least one notebook (and ``run_dir`` is the runner's)."""
    if RUN_DIR_PARAM in params:
        raise BlmError("run_dir is set by the runner; pass --run-dir DIR instead of -p run_dir")
    valid = sorted({p for names in declared.values() for p in names} - {RUN_DIR_PARAM})
    unknown = [name for name in params if name not in valid]
    if unknown:
        raise BlmError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                       f"the notebooks declare: {', '.join(valid)}")


def default_run_dir(prefix: str = "run") -> Path:
    return Path("outputs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


# ----------------------------------------------------------------------------- one notebook, one pipeline

def run_notebook(name: str, run_dir: Path, params: Mapping, declared: Mapping, notebook_dir: Path = NOTEBOOK_DIR,
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
        pm.execute_notebook(str(Path(notebook_dir) / name), str(executed), parameters=mine, kernel_name=kernel_name,
                            progress_bar=progress, cwd=os.getcwd())
    except PapermillExecutionError as exc:
        raise NotebookError(name, exc.exec_count or exc.cell_index, exc.ename, exc.evalue, executed) from None
    return time.perf_counter() - t0


def run_pipeline(run_dir: str | os.PathLike | None = None, params: Mapping | None = None,
                 notebooks: Iterable[str] = NOTEBOOKS, notebook_dir: str | os.PathLike = NOTEBOOK_DIR,
                 kernel_name: str = KERNEL_NAME, progress: bool = True) -> dict:
    """Execute ``notebooks`` in order into ``run_dir`` and write ``summary.json``; returns the summary.

    ``params`` go to every notebook that declares them (unknown names raise BlmError listing the valid
    ones). A failing cell raises ``NotebookError`` naming the notebook and cell; the executed notebook
    with the traceback is in ``run_dir``.
    """
    params = dict(params or {})
    notebooks = list(notebooks)
    notebook_dir = Path(notebook_dir)
    declared = notebook_parameters(notebooks, notebook_dir)
    check_parameters(params, declared)
    run_dir = nh.run_path(run_dir or default_run_dir()).resolve()
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
    summary = summarize(run_dir, params, timings)
    nh.write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(run_dir: Path, params: Mapping, timings: Mapping[str, float]) -> dict:
    """Headline numbers from what the notebooks wrote; parts whose notebook did not run are left out."""
    summary: dict = {"run_dir": str(run_dir), "parameters": dict(params)}
    corpus = _read(run_dir / nh.CORPUS_FILE)
    if corpus:
        summary["corpus"] = {k: corpus[k] for k in ("source", "total_bytes", "train_bytes", "val_bytes", "sha256")}
        summary["corpus_bytes"] = corpus["total_bytes"]
    train = _read(run_dir / nh.TRAIN_FILE)
    if train:
        summary["val_bits_per_byte"] = train["final_val_bpb"]
        summary["best_val_bits_per_byte"] = train["best_val_bpb"]
        summary["model"] = {"num_params": train["num_params"], **train["model_config"]}
        summary["training"] = {k: train[k] for k in ("steps", "best_step", "tokens", "elapsed_s", "tokens_per_s", "checkpoint")}
        summary["device"] = train["device_info"]
    table_path = run_dir / f"{nh.COMPRESSION_TABLE}.csv"
    if table_path.is_file():
        table = pd.read_csv(table_path)
        summary["compressed_bits_per_byte"] = nh.bits_per_byte_by_compressor(table)
        summary["compression_input_bytes"] = int(table.groupby("compressor")["original_bytes"].sum().iloc[0])
        summary["all_round_trips_verified"] = bool(table["verified"].all())
        neural = nh.neural_report(table)
        if len(neural):
            summary["neural"] = {
                "ideal_bits_per_byte": _weighted(neural, "ideal_bits_per_byte"),
                "adjusted_bits_per_byte": _weighted(neural, "adjusted_bits_per_byte"),
                "compress_KBps": float(neural["original_bytes"].sum() / 1024 / neural["compress_s"].sum()),
                "decompress_KBps": float(neural["original_bytes"].sum() / 1024 / neural["decompress_s"].sum()),
            }
    summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    if train:
        summary["timings_s"]["training"] = round(train["elapsed_s"], 2)
    return summary


def _weighted(rows: pd.DataFrame, column: str) -> float:
    return float((rows[column] * rows["original_bytes"]).sum() / rows["original_bytes"].sum())


# ----------------------------------------------------------------------------- sweeps

def grid_points(grid: Mapping[str, Iterable]) -> list[dict]:
    """Every combination of the grid's values, in order (the last name varies fastest)."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(list(grid[n]) for n in names))]


def point_name(point: Mapping) -> str:
    """A directory name for a grid point: ``n_layer=2_n_embd=64``."""
    text = "_".join(f"{k}={v}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", text)


def sweep(grid: Mapping[str, Iterable], params: Mapping | None = None, root: str | os.PathLike | None = None,
          notebook_dir: str | os.PathLike = NOTEBOOK_DIR, kernel_name: str = KERNEL_NAME,
          progress: bool = True) -> pd.DataFrame:
    """Train and evaluate one model per grid point; returns (and writes as ``sweep.csv``/``.md``/``.png``) the table.

    01 runs once into ``ROOT/data`` (skipped when it is already there); every point gets its own
    ``ROOT/<name>/`` with a copy of the corpus description, then 02 and 04 run there.
    """
    params = dict(params or {})
    notebook_dir = Path(notebook_dir)
    if not grid:
        raise BlmError("the grid is empty; give at least one NAME=V1,V2,... (e.g. --grid n_layer=2,4)")
    declared = notebook_parameters(NOTEBOOKS, notebook_dir)
    check_parameters(params, declared)
    swept = sorted({p for nb in SWEEP_NOTEBOOKS for p in declared[nb]} - {RUN_DIR_PARAM})
    bad = [name for name in grid if name not in swept]
    if bad:
        raise BlmError(f"cannot sweep {', '.join(map(repr, bad))}: a sweep varies parameters of "
                       f"{' and '.join(SWEEP_NOTEBOOKS)}: {', '.join(swept)}")
    root = nh.run_path(root or default_run_dir("sweep")).resolve()
    data_dir = root / "data"
    if not (data_dir / nh.CORPUS_FILE).is_file():
        run_pipeline(data_dir, {k: v for k, v in params.items() if k in declared[NOTEBOOKS[0]]}, notebooks=NOTEBOOKS[:1],
                     notebook_dir=notebook_dir, kernel_name=kernel_name, progress=progress)

    rows = []
    for i, point in enumerate(grid_points(grid), 1):
        run_dir = nh.run_path(root / point_name(point))
        for name in (nh.CORPUS_FILE, nh.MANIFEST_FILE):
            shutil.copy2(data_dir / name, run_dir / name)
        if progress:
            print(f"sweep point {i}: {point}", flush=True)
        summary = run_pipeline(run_dir, {**{k: v for k, v in params.items() if k in swept}, **point},
                               notebooks=SWEEP_NOTEBOOKS, notebook_dir=notebook_dir, kernel_name=kernel_name,
                               progress=progress)
        rows.append(_sweep_row(point, summary))
    table = pd.DataFrame(rows)
    table.to_csv(root / "sweep.csv", index=False)
    (root / "sweep.md").write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n")
    nh.save_figure(plot_sweep(table), root / "sweep.png")
    return table


def _sweep_row(point: Mapping, summary: dict) -> dict:
    neural = summary.get("neural", {})
    return {
        **point,
        "num_params": summary["model"]["num_params"],
        "train_s": summary["training"]["elapsed_s"],
        "steps": summary["training"]["steps"],
        "val_bits_per_byte": summary["val_bits_per_byte"],
        "blm_bits_per_byte": summary["compressed_bits_per_byte"].get("blm", math.nan),
        "blm_adjusted_bits_per_byte": neural.get("adjusted_bits_per_byte", math.nan),
        "run_dir": summary["run_dir"],
    }


def plot_sweep(table: pd.DataFrame):
    """Bits per byte (validation and actually compressed) against model size and against training time."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    grid_columns = list(table.columns[:list(table.columns).index("num_params")])
    varying = [c for c in grid_columns if table[c].nunique() > 1] or grid_columns
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained", sharey=True)
    for ax, x, label in ((axes[0], "num_params", "parameters"), (axes[1], "train_s", "training time (s)")):
        ax.scatter(table[x], table["val_bits_per_byte"], color="tab:red", label="validation (model)")
        ax.scatter(table[x], table["blm_bits_per_byte"], color="tab:blue", marker="s", label="compressed (blm)")
        for _, row in table.iterrows():
            ax.annotate(" ".join(f"{c}={row[c]}" for c in varying), (row[x], row["blm_bits_per_byte"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.margins(x=0.2, y=0.15)
    axes[0].set_xscale("log")
    axes[0].xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[0].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k"))
    axes[0].xaxis.set_minor_formatter(NullFormatter())
    axes[0].set_ylabel("bits per byte")
    axes[0].legend(fontsize="small")
    fig.suptitle(f"sweep of {len(table)} runs")
    plt.close(fig)
    return fig
