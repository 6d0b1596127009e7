"""The training CLI: the seed's flags and the new ones in a subprocess; bad input gives one clean line, exit code 2."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from blm_lab import train_bytes
from blm_lab.checkpoint import load_checkpoint
from blm_lab.gpt import BytesGPTConfig
from blm_lab.training.config import COMMAND_RECIPES, TrainConfig, configs_from_args, recipe, recipe_fields
from conftest import TINY_MODEL_FLAGS, finish_cli, run_cli, start_cli

VALIDATION_LINE = re.compile(r"^validation: (\d+\.\d+) bits/byte \(best (\d+\.\d+)\) after (\d+) steps", re.MULTILINE)


def validation(result) -> tuple[float, float, int]:
    match = VALIDATION_LINE.search(result.stdout)
    assert match, f"no validation line in stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return float(match[1]), float(match[2]), int(match[3])


@pytest.mark.slow
def test_original_seed_flags(corpus_dir, tmp_path):
    out = tmp_path / "out"
    result = run_cli([corpus_dir, "--block-size", "16", "--batch-size", "8", "--epochs", "0.05", "--output-dir", out,
                      "--cpu", "--amp", "--save-best", "--stride", "16", "--lr", "1e-3", "--n_layer", "2",
                      "--n_embd", "32"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    final, best, steps = validation(result)
    assert 0 < best <= final < 9
    # --epochs 0.05 with --stride 16 --batch-size 8: 5% of the training split's windows, in batches of 8
    n_train = int(sum(p.stat().st_size for p in corpus_dir.iterdir()) * 0.9)
    steps_per_epoch = ((n_train - 17) // 16 + 1) // 8
    assert steps == math.ceil(0.05 * steps_per_epoch)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "metrics.jsonl", "result.json"]
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["config"]["block_size"] == 16 and ckpt["config"]["n_layer"] == 2 and ckpt["config"]["n_embd"] == 32
    train_config = ckpt["train_config"]
    assert (train_config["batch_size"], train_config["lr"], train_config["stride"]) == (8, 1e-3, 16)
    assert train_config["cpu"] and train_config["amp"] and train_config["save_best"]
    assert train_config["epochs"] == 0.05


@pytest.mark.slow
def test_new_flags_and_resume(corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    flags = [str(corpus_dir), *TINY_MODEL_FLAGS, "--n_head", "2", "--dropout", "0.1", "--seed", "7", "--batch-size", "8",
             "--epochs", "100", "--time-budget", "120", "--eval-interval", "2", "--output-dir", str(out), "--cpu",
             "--no-progress"]
    # the first 3 steps in this process (the same parser and code path), the resumed run in a subprocess
    assert train_bytes.main([*flags, "--max-steps", "3"]) == 0
    assert "validation: " in capsys.readouterr().out
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 3
    assert ckpt["config"]["dropout"] == 0.1 and ckpt["config"]["n_head"] == 2
    assert (ckpt["train_config"]["seed"], ckpt["train_config"]["time_budget"]) == (7, 120.0)

    resumed = run_cli([*flags, "--max-steps", "5", "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step 3" in resumed.stdout + resumed.stderr
    assert validation(resumed)[2] == 5
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in records] == [2, 3, 4, 5]  # the resumed run appends to the first run's log


# The error cases only start Python and import torch, so they run side by side to save wall time
# (the slow part is that import: mark them slow, like the other subprocess tests).
ERROR_CASES = ("missing", "empty", "short")


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli_errors")
    (root / "empty").mkdir()
    (root / "empty" / "sub").mkdir()
    (root / "short.txt").write_bytes(b"x" * 10)
    datasets = {"missing": root / "no_such_corpus.txt", "empty": root / "empty", "short": root / "short.txt"}
    processes = {}
    for case in ERROR_CASES:
        out = root / f"out_{case}"
        processes[case] = (start_cli([datasets[case], *TINY_MODEL_FLAGS, "--output-dir", out, "--cpu", "--max-steps", "5"],
                                     cwd=root), out)
    return {case: (finish_cli(process), out) for case, (process, out) in processes.items()}


def assert_clean_error(result, out, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert not out.exists()  # nothing written on error


@pytest.mark.slow
def test_missing_path_error(error_runs):
    assert_clean_error(*error_runs["missing"], "does not exist", "no_such_corpus.txt")


@pytest.mark.slow
def test_empty_directory_error(error_runs):
    assert_clean_error(*error_runs["empty"], "contains no files")


@pytest.mark.slow
def test_short_corpus_error(error_runs):
    result, out = error_runs["short"]
    assert_clean_error(result, out, "error: Corpus is shorter than block_size + 1", "10 bytes", "17")


# More bad input, through main() in this process: an exception escaping main() is a traceback on the command line.


def run_main(argv, capsys) -> subprocess.CompletedProcess:
    try:
        code = train_bytes.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors exit 2 with a message; that is clean too
        code = exc.code
    except BaseException as exc:
        captured = capsys.readouterr()
        raise AssertionError(f"main() raised {type(exc).__name__}: {exc} (a traceback for the user)\n{captured.err}") from exc
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


def test_invalid_model_config_error(corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_main([corpus_dir, "--n-embd", "30", "--n-head", "4", "--output-dir", out, "--cpu"], capsys)
    assert_clean_error(result, out, "n_embd=30", "not divisible")


def test_zero_batch_size_error(corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_main([corpus_dir, *TINY_MODEL_FLAGS, "--batch-size", "0", "--output-dir", out, "--cpu"], capsys)
    assert_clean_error(result, out, "batch")


def test_eval_interval_zero_is_handled(corpus_dir, tmp_path, capsys):
    """0 means "off" for --max-steps and --time-budget; --eval-interval 0 must not crash with a traceback."""
    out = tmp_path / "out"
    result = run_main([corpus_dir, *TINY_MODEL_FLAGS, "--eval-interval", "0", "--batch-size", "8", "--max-steps", "3",
                       "--output-dir", out, "--cpu", "--no-progress"], capsys)
    if result.returncode == 2:
        assert_clean_error(result, out, "eval")
    else:
        assert result.returncode == 0
        validation(result)


def test_cuda_requested_without_cuda_error(corpus_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    out = tmp_path / "out"
    result = run_main([corpus_dir, *TINY_MODEL_FLAGS, "--device", "cuda", "--output-dir", out], capsys)
    assert_clean_error(result, out, "cuda", "cpu")


# ----------------------------------------------------------------------------- the tuned recipe as every default

def parse_configs(argv, on_cuda=False):
    return configs_from_args(train_bytes.build_parser().parse_args([str(a) for a in argv]), on_cuda=on_cuda)


def recipe_settings(train_cfg, model_cfg) -> dict:
    """The settings a recipe decides on the command line: the model's and the optimiser's."""
    train_fields, model_fields = recipe_fields()
    return {**{k: getattr(train_cfg, k) for k in train_fields}, **{k: getattr(model_cfg, k) for k in model_fields}}


@pytest.mark.parametrize("on_cuda, name", [(False, "cpu"), (True, "gpu")])
def test_the_devices_recipe_is_the_default(on_cuda, name):
    train_cfg, model_cfg = parse_configs([], on_cuda=on_cuda)
    assert recipe_settings(train_cfg, model_cfg) == recipe_settings(*recipe(name))
    assert recipe_settings(train_cfg, model_cfg) != recipe_settings(*recipe("baseline"))
    # not the notebook's time budget: how long a run is stays the command's own
    defaults = TrainConfig()
    assert (train_cfg.epochs, train_cfg.max_steps, train_cfg.time_budget) == (defaults.epochs, 0, 0.0)
    assert (train_cfg.device, train_cfg.amp, train_cfg.output_dir) == ("auto", False, "checkpoints")


def test_flags_override_the_recipe_and_baseline_is_blm_lab_0_1():
    train_cfg, model_cfg = parse_configs(["--block-size", "16", "--batch-size", "8", "--lr", "1e-3", "--n_layer", "2",
                                          "--n_embd", "32", "--muon-lr", "0.01", "--no-qk-norm",
                                          "--schedule", "cosine"])
    assert (model_cfg.block_size, model_cfg.n_layer, model_cfg.n_embd, model_cfg.qk_norm) == (16, 2, 32, False)
    assert (train_cfg.batch_size, train_cfg.lr, train_cfg.muon_lr, train_cfg.schedule) == (8, 1e-3, 0.01, "cosine")
    cpu_train, cpu_model = recipe("cpu")
    assert (train_cfg.optimizer, model_cfg.mlp) == (cpu_train.optimizer, cpu_model.mlp)
    assert model_cfg.n_head == cpu_model.n_head

    train_cfg, model_cfg = parse_configs(["--recipe", "baseline", "--n-layer", "3"], on_cuda=True)
    assert model_cfg == BytesGPTConfig(n_layer=3)  # blm_lab 0.1's model: GELU, LayerNorm, tied, no QK-norm
    assert recipe_settings(train_cfg, model_cfg) == recipe_settings(TrainConfig(), BytesGPTConfig(n_layer=3))
    assert (train_cfg.optimizer, train_cfg.schedule) == ("adamw", "cosine")
    train_cfg, model_cfg = parse_configs(["--recipe", "gpu"])  # a named recipe wins over the device's
    assert recipe_settings(train_cfg, model_cfg) == recipe_settings(*recipe("gpu"))


def test_a_short_run_trains_with_the_recipe_and_writes_a_loadable_checkpoint(corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert train_bytes.main([str(corpus_dir), *TINY_MODEL_FLAGS, "--batch-size", "4", "--max-steps", "2",
                             "--output-dir", str(out), "--cpu", "--no-progress"]) == 0
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert {"config", "model_state"} <= set(ckpt)
    cpu_train, cpu_model = recipe("cpu")
    config, train_config = ckpt["config"], ckpt["train_config"]
    assert (config["mlp"], config["norm"], config["qk_norm"]) == (cpu_model.mlp, cpu_model.norm, cpu_model.qk_norm)
    assert (train_config["optimizer"], train_config["schedule"]) == (cpu_train.optimizer, cpu_train.schedule)
    assert load_checkpoint(out / "best.pt")[0].config == BytesGPTConfig(**ckpt["config"])


# What --help and the model-free codec must not import: torch takes seconds to start.
STARTUP_PROBE = '''
import json, runpy, sys
sys.argv = [sys.argv[1], *json.loads(sys.argv[2])]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(json.dumps({"torch": "torch" in sys.modules}))
'''


@pytest.mark.parametrize("module, argv", [("blm_lab.cli", ["--help"]), ("blm_lab.cli", ["compress", "--help"]),
                                          ("blm_lab.cli", ["train", "--help"]), ("blm_lab.train_bytes", ["--help"])],
                         ids=["blm-lab", "compress", "train", "train_bytes"])
def test_help_does_not_import_torch(module, argv):
    result = subprocess.run([sys.executable, "-c", STARTUP_PROBE, module, json.dumps(argv)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *help_lines, probe = result.stdout.strip().splitlines()
    assert json.loads(probe) == {"torch": False}
    if "train" in module or argv[0] == "train":
        help_text = " ".join(" ".join(help_lines).split())  # argparse wraps lines
        gpu_train, gpu_model = recipe("gpu")
        cpu_train, cpu_model = recipe("cpu")
        assert f"--recipe {{{','.join(COMMAND_RECIPES)}}}" in help_text and "baseline" in help_text
        assert f"cpu and baseline {cpu_model.n_embd}, gpu {gpu_model.n_embd}" in help_text
        assert f"cpu and gpu {cpu_train.optimizer}, baseline adamw" in help_text
        assert "--muon-lr sets the blocks' matrices" in help_text


def test_the_packages_lazy_names_are_the_modules_own():
    import importlib

    import blm_lab

    for name in blm_lab.__all__:
        module = importlib.import_module(f"blm_lab.{blm_lab._EXPORTS[name]}")
        assert getattr(blm_lab, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="no attribute 'BytesGTP'"):
        blm_lab.BytesGTP
