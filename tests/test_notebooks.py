"""The workbench notebooks: committed clean, and the whole pipeline (and a sweep) executed with papermill.

The pipeline runs once per module (tiny model, small corpus, CPU) through ``blm_lab.runner``; the
tests below check what each notebook left in the run directory.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from blm_lab.baselines import classic_compressors, primed_compressors
from blm_lab.checkpoint import load_checkpoint
from blm_lab.data import load_corpus
from blm_lab.viz.figures import plot_sweep
from blm_lab.workbench import runner
from blm_lab.workbench.rundir import RunDir
from conftest import write_text_corpus

NOTEBOOK_PATHS = [runner.notebooks_dir() / name for name in runner.NOTEBOOKS]

# A model and corpus small enough that the four notebooks take ~30 s together on one core.
TINY_PARAMS = {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32, "batch_size": 8, "max_steps": 20,
               "eval_interval": 10, "lr": 5e-3, "max_bytes": 512}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


# ----------------------------------------------------------------------------- the committed notebooks

@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = read(path)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs; clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.name)
def test_parameters_cell_first_and_kernel(path):
    nb = read(path)
    assert nb.metadata.kernelspec.name == runner.KERNEL_NAME
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    assert not any("parameters" in c.metadata.get("tags", []) for c in nb.cells[1:])
    # papermill must see every assignment of the cell (it skips lines it cannot parse, e.g. '=' in a comment)
    assigned = [node.targets[0].id for node in ast.parse(first.source).body if isinstance(node, ast.Assign)]
    import papermill as pm

    assert list(pm.inspect_notebook(str(path))) == assigned
    assert "run_dir" in assigned


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.name)
def test_logic_lives_in_the_package(path):
    """No function or class longer than a few lines is defined in a notebook; markdown explains the code."""
    nb = read(path)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 4, f"{path.name}: {node.name} belongs in blm_lab"
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 3


def test_a_new_training_field_reaches_the_run_through_the_parameters_cell_alone(monkeypatch, tmp_path):
    """Notebook 02 derives its settings from its parameters: give TrainConfig a new field, name it in the
    parameters cell (nothing else in the notebook changes), and the run gets its value."""
    import dataclasses

    from blm_lab.data import load_corpus as read_corpus
    from blm_lab.training import config, launch

    extended = dataclasses.make_dataclass("TrainConfig", [("label_smoothing", float, dataclasses.field(default=0.0))],
                                          bases=(config.TrainConfig,))
    monkeypatch.setattr(config, "TrainConfig", extended)
    monkeypatch.setattr(config, "RECIPES", {name: (extended(**dataclasses.asdict(train_cfg)), model_cfg)
                                            for name, (train_cfg, model_cfg) in config.RECIPES.items()})
    reached = {}

    class Started(Exception):
        pass

    def run_training(train_cfg, model_cfg, corpus, **kwargs):
        reached.update(train_cfg=train_cfg, model_cfg=model_cfg)
        raise Started  # the run has its configs; training itself is the pipeline test's business

    monkeypatch.setattr(launch, "run_training", run_training)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_dir = tmp_path / "run"
    corpus_dir = write_text_corpus(tmp_path / "corpus", n_files=1, words_per_file=400)
    RunDir(run_dir).write_corpus(read_corpus(str(corpus_dir)), str(corpus_dir), 0.1, 32)

    cells = [c.source for c in read(runner.notebooks_dir() / "02_train_gpu.ipynb").cells if c.cell_type == "code"]
    cells[0] += "\nlabel_smoothing = 0.1  # the new field\n"
    injected = f"run_dir = {str(run_dir)!r}\nn_layer = 1\nn_embd = 32\ndevice = 'cpu'\n"  # as papermill would
    namespace = {}
    with pytest.raises(Started):
        for source in [cells[0], injected, *cells[1:]]:
            exec(compile(source, "02_train_gpu.ipynb", "exec"), namespace)
    assert reached["train_cfg"].label_smoothing == 0.1
    assert (reached["model_cfg"].n_layer, reached["model_cfg"].n_embd) == (1, 32)
    assert (reached["train_cfg"].device, reached["train_cfg"].save_best) == ("cpu", True)


# ----------------------------------------------------------------------------- the pipeline, executed once

@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("nb_corpus") / "corpus")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, corpus_dir) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("nb_run") / "run"
    summary = runner.run_pipeline(run_dir, {**TINY_PARAMS, "data_dir": str(corpus_dir)}, progress=False)
    return run_dir, summary


def test_every_notebook_executed(pipeline):
    run_dir, summary = pipeline
    for name in runner.NOTEBOOKS:
        nb = read(run_dir / name)
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        assert ["injected-parameters"] in tags, f"{name}: papermill did not inject the parameters"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code), f"{name}: not every cell ran"
        assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert set(summary.timings_s) >= {Path(n).stem for n in runner.NOTEBOOKS} | {"total", "training"}
    assert RunDir(run_dir).summary() == summary


def test_data_prep_writes_manifest_and_split(pipeline, corpus_dir):
    run_dir, summary = pipeline
    manifest = json.loads((run_dir / RunDir.MANIFEST).read_text())
    expected = load_corpus(str(corpus_dir)).manifest()
    assert manifest == json.loads(json.dumps(expected))
    info = RunDir(run_dir).corpus_record()
    assert (info.data_dir, info.val_fraction, info.block_size) == (str(corpus_dir), 0.1, 32)
    assert info.train_bytes + info.val_bytes == info.total_bytes == summary.corpus.total_bytes
    # the notebook shows the manifest, the entropy table and the classic compressors as tables
    html = "".join(o.get("data", {}).get("text/html", "") for c in read(run_dir / "01_data_prep.ipynb").cells
                   if c.cell_type == "code" for o in c.outputs)
    assert "sha256" in html and "bits_per_byte" in html and "ppmd" in html


def test_training_writes_a_checkpoint_that_loads(pipeline):
    run_dir, summary = pipeline
    model, ckpt = load_checkpoint(RunDir(run_dir).checkpoint())
    assert (model.config.n_layer, model.config.n_embd, model.config.block_size) == (1, 32, 32)
    train = RunDir(run_dir).train_record()
    assert train.steps == 20 and train.num_params == model.num_params()
    assert train.device_info["device"] == "cpu"
    assert summary.training.steps == 20
    records = [json.loads(line) for line in (run_dir / "checkpoint" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]
    # it learned: the last evaluation beats the first (a fixed bound like "below 8.5" passes untrained)
    assert summary.training.final_val_bpb == records[-1]["val_bpb"] < records[0]["val_bpb"]


def test_every_figure_is_saved(pipeline):
    run_dir, _ = pipeline
    figures = run_dir / RunDir.FIGURES
    # every run.figure("NAME") whose cell ran it (showed an image: 05 skips a figure whose input it was not
    # given), and every static view of the explorer that its cell reports saving
    expected, shown, saved = [], {}, {}
    for name in runner.NOTEBOOKS:
        cells = [c for c in read(run_dir / name).cells if c.cell_type == "code"]
        shown[name] = sum("image/png" in o.get("data", {}) for c in cells for o in c.outputs)
        saved[name] = 0
        for cell in cells:
            images = any("image/png" in o.get("data", {}) for o in cell.outputs)
            for figure, folder in re.findall(r'run\.figure\("([^"]+)"\)(\.with_suffix\(""\))?', cell.source):
                if folder:  # a folder of views: the paths the cell returned
                    text = "".join(o.get("data", {}).get("text/plain", "") for o in cell.outputs)
                    expected += [Path(p).relative_to(figures).with_suffix("").as_posix()
                                 for p in re.findall(r"'([^']+\.png)'", text)]
                elif images:
                    expected.append(figure)
                    saved[name] += 1
    assert "loss_curve" in expected and any(name.startswith("explorer/") for name in expected)
    for name in expected:
        path = figures / f"{name}.png"
        assert path.is_file(), f"missing figure {path}"
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    # each notebook shows as many images as it saves (the explorer's static views are extra files)
    assert shown == saved and all(shown.values())


def test_entropy_notebook_keeps_the_explorer(pipeline):
    run_dir, _ = pipeline
    nb = read(run_dir / "03_entropy_visualization.ipynb")
    views = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, "the explorer widget was not displayed"
    assert nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    assert (run_dir / "figures" / "explorer" / "surprisal_text.html").is_file()
    # the default input is the start of the validation split, cut at max_bytes
    assert len((run_dir / "validation_sample.bin").read_bytes()) == TINY_PARAMS["max_bytes"]


def test_compression_table_has_every_compressor_verified(pipeline):
    run_dir, summary = pipeline
    table = pd.read_csv(run_dir / "compression.csv")
    # the package's classic and primed compressors (primed on this run's training split), and the
    # neural compressors notebook 04 builds
    source = "".join(c.source for c in read(run_dir / "04_compression_ratios.ipynb").cells if c.cell_type == "code")
    neural = re.findall(r'NeuralCompressor\([^)]*name="([^"]+)"', source)
    assert "blm" in neural
    present = {name for name, c in classic_compressors().items() if not getattr(c, "missing", None)}
    names = present | set(primed_compressors(RunDir(run_dir).splits()[0])) | set(neural)
    assert set(table["compressor"]) == names
    assert table["verified"].all() and summary.all_round_trips_verified
    assert (table["original_bytes"] == TINY_PARAMS["max_bytes"]).all()
    blm = table[table["compressor"] == "blm"].iloc[0]
    assert math.isfinite(blm["ideal_bits_per_byte"]) and blm["bits_per_byte"] >= blm["ideal_bits_per_byte"]
    assert blm["adjusted_bits_per_byte"] > blm["bits_per_byte"]
    markdown = (run_dir / "compression.md").read_text()
    assert all(name in markdown for name in names)
    assert set(summary.compressed_bits_per_byte) == names
    assert summary.compressed_bits_per_byte["blm"] == pytest.approx(blm["bits_per_byte"])
    assert summary.neural.adjusted_bits_per_byte == pytest.approx(blm["adjusted_bits_per_byte"])


def test_bits_and_patches_notebook_records_its_figures(pipeline):
    run_dir, summary = pipeline
    lab = RunDir(run_dir).lab_record()
    assert lab is not None and summary.lab == lab
    assert lab.bytes == TINY_PARAMS["max_bytes"] and "validation split (held out)" in lab.measured_on
    rules = [row["rule"] for row in lab.patches]
    assert rules == ["global", "fixed", "monotonic", "fixed", "combined", "fixed"]
    for row in lab.patches:
        assert row["patches"] * row["mean_length"] == pytest.approx(lab.bytes)
    assert abs(lab.patches[0]["mean_length"] - 4.5) < 1.0  # the solved global threshold lands near the target
    assert 0 < lab.patches[0]["first_byte_share"] < 1
    # without 04's traces (the codec on this branch records none) the model's surprisal stands in
    traced = RunDir(run_dir).traces()
    assert lab.traced_bytes == (len(next(iter(traced.values())).data) if traced else None)
    sources = list(lab.bits_by_kind)
    assert sources and lab.bits_by_kind[sources[0]]["all"] > 0
    if not traced:
        assert lab.bits_by_kind[sources[0]]["all"] == pytest.approx(lab.model_bits_per_byte)
    nb = read(run_dir / "05_bits_and_patches.ipynb")
    views = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, "the patch view widget was not displayed"


def test_bits_and_patches_compares_a_checkpoint_and_reports_an_empty_input(pipeline, tmp_path):
    run_dir = tmp_path / "run"  # a copy: the shared run directory stays as the pipeline left it
    shutil.copytree(pipeline[0], run_dir)
    ckpt = str(RunDir(run_dir).checkpoint())
    declared = runner.notebook_parameters(["05_bits_and_patches.ipynb"])
    runner.run_notebook("05_bits_and_patches.ipynb", run_dir, {"run_dir": str(run_dir), "compare_checkpoint": ckpt,
                                                               "max_bytes": 256}, declared["05_bits_and_patches.ipynb"])
    lab = RunDir(run_dir).lab_record()
    assert lab.compare_checkpoint == ckpt and lab.compare_net_bits == pytest.approx(0.0, abs=1e-6)  # itself: no difference
    assert (run_dir / "figures" / "checkpoint_difference.png").is_file()
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    runner.run_notebook("05_bits_and_patches.ipynb", run_dir, {"run_dir": str(run_dir), "file": str(empty)},
                        declared["05_bits_and_patches.ipynb"])
    text = "".join(o.get("text", "") for c in read(run_dir / "05_bits_and_patches.ipynb").cells
                   if c.cell_type == "code" for o in c.outputs)
    assert "is empty: nothing to patch" in text
    assert RunDir(run_dir).lab_record().bytes == 0


# ----------------------------------------------------------------------------- a sweep over two tiny models

@pytest.mark.slow  # about 30 s: two kernels per point
def test_sweep_two_points(pipeline, tmp_path):
    run_dir, _ = pipeline
    params = {k: v for k, v in TINY_PARAMS.items() if k != "n_embd"}
    points = runner.grid_points({"n_embd": [16, 32]})
    table, curves = runner.sweep(points, {**params, "max_steps": 10, "data_dir": RunDir(run_dir).corpus_record().data_dir},
                                 root=tmp_path / "sweep", progress=False)
    assert list(table["n_embd"]) == [16, 32] and list(table["point"]) == ["n_embd=16", "n_embd=32"]
    assert table["num_params"].is_monotonic_increasing
    assert (table["steps"] == 10).all() and table["blm_bits_per_byte"].notna().all()
    root = tmp_path / "sweep"
    assert pd.read_csv(root / "sweep.csv").shape[0] == 2
    # one curve point per evaluation (eval_interval 10: step 10), FLOPs = tokens x the model's FLOPs per token
    assert list(curves["point"]) == ["n_embd=16", "n_embd=32"] and (curves["step"] == 10).all()
    assert (curves["tokens"] == 10 * TINY_PARAMS["batch_size"] * TINY_PARAMS["block_size"]).all()
    assert (curves["train_flops"] > curves["tokens"]).all() and curves["train_flops"].is_monotonic_increasing
    assert "n_embd" in (root / "sweep.md").read_text()
    assert (root / "data" / RunDir.CORPUS).is_file()  # 01 ran once, for every point
    assert [ax.get_xlabel() for ax in plot_sweep(table, curves).axes] == ["parameters", "training FLOPs",
                                                                        "wall-clock minutes"]
    for point in ("n_embd=16", "n_embd=32"):
        assert (root / point / "02_train_gpu.ipynb").is_file() and (root / point / "compression.csv").is_file()
        assert not (root / point / "03_entropy_visualization.ipynb").exists()
