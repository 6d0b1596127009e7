"""Sweeps on Dask: a real 2-worker local cluster with tiny points, a point that fails, a worker killed
mid-point, --resume after a killed sweep, seeds, and the engine's bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from blm_lab import cli
from blm_lab.errors import BlmError
from blm_lab.workbench import engine as engines
from blm_lab.workbench import runner
from blm_lab.workbench.watch import POINT_STATE, Watch, describe_record, read_state
from conftest import REPO_ROOT, write_text_corpus

# notebook 02 only (no compression), a model trained for a few steps: a point takes a kernel start and seconds
TINY = {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16, "batch_size": 4, "max_steps": 6,
        "eval_interval": 3, "lr": 5e-3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(write_text_corpus(tmp_path_factory.mktemp("sweep_corpus") / "corpus", n_files=2, words_per_file=400))


def wait_for(condition, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def kill_worker_running(client, run_dir: Path) -> str:
    """SIGKILL the worker process that runs the point in ``run_dir`` (as soon as its notebook started)."""
    wait_for(lambda: read_state(run_dir).get("state") == "running" and (run_dir / "02_train_gpu.ipynb").exists(),
             what=f"{run_dir.name} to start")
    name = read_state(run_dir)["worker"]
    address = next(a for a, w in client.scheduler_info(n_workers=-1)["workers"].items() if str(w["name"]) == name)
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)
    return name


@pytest.mark.slow  # a cluster start, 01 and four points on two workers: about a minute on 2 busy cores
def test_two_workers_run_every_point_mark_the_failure_and_retry_a_killed_worker(data_dir, tmp_path, capsys):
    root = tmp_path / "sweep"
    points = [{"name": "small"}, {"name": "wide", "n_embd": 32},
              {"name": "broken", "n_head": 3},  # 16 is not a multiple of 3 heads: the notebook raises
              {"name": "killed", "n_embd": 24}]
    engine = engines.Dask.local(2, gpus=[])
    killed = []
    killer = threading.Thread(target=lambda: killed.append(kill_worker_running(engine.client, root / "killed")))
    killer.start()
    table, curves = runner.sweep(points, {**TINY, "data_dir": data_dir}, root=root, compress=False, engine=engine)
    killer.join()
    assert killed and engine.client.status == "closed"

    assert list(table["point"]) == ["small", "wide", "broken", "killed"]
    status = dict(zip(table["point"], table["status"]))
    assert status == {"small": "done", "wide": "done", "broken": "failed", "killed": "done"}
    broken = table.set_index("point").loc["broken"]
    assert "02_train_gpu.ipynb failed" in broken["error"] and pd.isna(broken["val_bits_per_byte"])
    done = table[table["status"] == "done"]
    # each run says where it ran: a worker of the cluster, the CPU, and its share of the cores as torch threads
    share = max(1, engines._cpu_count() // 2)
    assert set(done["worker"]) <= {"0", "1"} and (done["device"] == "cpu").all() and (done["threads"] == share).all()
    assert (done["steps"] == TINY["max_steps"]).all() and (done["queued_s"] >= 0).all()
    assert set(curves["point"]) == {"small", "wide", "killed"}
    on_disk = pd.read_csv(root / "sweep.csv")
    assert list(on_disk["status"]) == list(table["status"])
    assert "failed" in (root / "sweep.md").read_text()
    out = capsys.readouterr().out
    assert "Dask dashboard: http" in out
    assert "points: 3 done, 0 running, 1 failed, 0 waiting (of 4)" in out
    assert "small: step 6, train " in out and " left" in out  # the training, followed as it ran


@pytest.mark.slow  # a sweep killed after its first point, then finished: about 40 s
def test_resume_finishes_a_killed_sweep(data_dir, tmp_path):
    root = tmp_path / "sweep"
    argv = ["sweep", "--grid", "n_embd=16,32", "--no-compress", "--run-dir", str(root), "--quiet",
            *[a for k, v in {**TINY, "data_dir": data_dir}.items() if k != "n_embd" for a in ("-p", k, str(v))]]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "blm_lab.cli", *argv], env=env, start_new_session=True)
    try:
        wait_for(lambda: read_state(root / "n_embd=16").get("state") == "done", what="the first point")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the kernel it runs
        proc.wait()
    first = read_state(root / "n_embd=16")
    assert not (root / "sweep.csv").exists()

    assert cli.main([*argv, "--resume"]) == 0
    table = pd.read_csv(root / "sweep.csv")
    assert list(table["status"]) == ["done", "done"] and (table["steps"] == TINY["max_steps"]).all()
    assert read_state(root / "n_embd=16") == first  # finished before the kill: not run again
    # a resume of other points is refused: it would mix two sweeps in one directory
    assert cli.main(["sweep", "--grid", "n_embd=8", "--no-compress", "--run-dir", str(root), "--resume",
                     "--quiet"]) == 2


@pytest.mark.slow  # 01 and two seeds of one point: about 25 s
def test_seeds_repeat_each_point_and_the_table_shows_mean_and_spread(data_dir, tmp_path):
    root = tmp_path / "sweep"
    table, curves = runner.sweep([{"name": "p"}], {**TINY, "data_dir": data_dir}, root=root, compress=False,
                                 seeds=2, progress=False, notebook_dir=REPO_ROOT / "notebooks")
    assert list(table["seed"]) == [1337, 1338] and list(table["point"]) == ["p", "p"]
    assert table["val_bits_per_byte"].nunique() == 2  # two initialisations, two results
    per_seed = pd.read_csv(root / runner.SWEEP_SEEDS)
    assert per_seed["seeds"].tolist() == [2]
    assert per_seed["val_bits_per_byte"].iloc[0] == pytest.approx(table["val_bits_per_byte"].mean())
    assert per_seed["val_bits_per_byte_std"].iloc[0] == pytest.approx(table["val_bits_per_byte"].std())
    assert "over 2 seeds" in (root / "sweep.md").read_text()
    assert sorted(curves["seed"].unique()) == [1337, 1338]


def test_an_unreachable_scheduler_is_one_error_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engines, "CONNECT_TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    code = cli.main(["sweep", "--grid", "n_layer=1", "--scheduler", "tcp://127.0.0.1:9", "--run-dir",
                     str(tmp_path / "s"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.monotonic() - t0 < 30
    assert len(err) == 1 and err[0].startswith("error: the Dask scheduler at 'tcp://127.0.0.1:9' did not answer")
    assert not (tmp_path / "s").exists()


def test_workers_share_the_cores_or_take_one_gpu_each(capsys):
    cpu = engines.worker_environments(2, [], cores=8)
    assert cpu == {name: {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "NUMBA_NUM_THREADS": "4"}
                   for name in ("0", "1")}
    assert engines.worker_environments(3, [], cores=2)["2"]["OMP_NUM_THREADS"] == "1"
    assert capsys.readouterr().err == ""
    gpus = engines.worker_environments(4, ["2", "5"], cores=8)
    assert gpus == {"0": {"CUDA_VISIBLE_DEVICES": "2"}, "1": {"CUDA_VISIBLE_DEVICES": "5"}}
    assert capsys.readouterr().err == "warning: --workers 4 but 2 GPUs; running one worker per GPU (2 workers)\n"
    with pytest.raises(BlmError, match="at least 1 worker"):
        engines.worker_environments(0, [], cores=2)


@pytest.mark.slow  # a 1-worker cluster start: a few seconds
def test_a_run_directory_the_workers_do_not_share_is_refused(tmp_path):
    with engines.Dask.local(1, gpus=[]) as engine:
        engine.check_shared(tmp_path)  # this machine's workers see it
        assert list(tmp_path.iterdir()) == []  # the check leaves nothing behind
        answers = engine.client.run(engines._probe, str(tmp_path), ".shared-check-the-client-never-wrote")
        assert all("does not see" in why for why in answers.values())
        elsewhere = tmp_path / "not-shared"
        elsewhere.mkdir()
        real_probe = engines._probe
        try:  # a worker elsewhere would look at its own disk: the token the client wrote is not there
            engines._probe = lambda path, token: real_probe(path, token + ".elsewhere")
            with pytest.raises(BlmError, match="not shared with 1 of 1 workers .*every worker mounts"):
                engine.check_shared(elsewhere)
        finally:
            engines._probe = real_probe


def test_watch_prints_each_evaluation_and_the_points_progress(tmp_path):
    lines = []
    run_dirs = {"a": tmp_path / "a", "b": tmp_path / "b"}
    for path in run_dirs.values():
        (path / "checkpoint").mkdir(parents=True)
    watch = Watch(run_dirs, lines.append, states=True)
    watch.poll()
    assert lines == ["points: 0 done, 0 running, 0 failed, 2 waiting (of 2)"]
    (tmp_path / "a" / POINT_STATE).write_text('{"state": "running"}')
    record = {"step": 100, "train_bpb": 3.25, "val_bpb": 3.5, "tokens_per_s": 12345.0, "elapsed_s": 30.0,
              "fraction_done": 0.25}
    (tmp_path / "a" / "checkpoint" / "metrics.jsonl").write_text(json.dumps(record) + "\n{\"step\"")
    watch.poll()
    assert lines[1:] == ["a: step 100, train 3.250, validation 3.500 bits/byte, 12.3k tokens/s, 1m30s left",
                         "points: 0 done, 1 running, 0 failed, 1 waiting (of 2)"]
    watch.poll()  # nothing new: nothing printed (the torn last line waits until it is whole)
    assert len(lines) == 3
    assert describe_record({**record, "train_bpb": None, "fraction_done": None}) == \
        "step 100, train -, validation 3.500 bits/byte, 12.3k tokens/s"


@pytest.mark.slow  # a 1-worker cluster whose worker dies twice: about 10 s
def test_a_point_whose_worker_dies_twice_is_failed_and_the_others_go_on():
    with engines.Dask.local(1, gpus=[]) as engine:
        # the task kills its own worker; the nanny starts a new one, which the retry kills again
        die = lambda task, where: os._exit(1) if task == "dies" else task  # noqa: E731
        # what a point's kernel inherits: its share of the cores, and not the nanny's malloc trim threshold
        # (under which torch's CPU training spends 40% of its time faulting freed pages back in)
        seen = engine.map(lambda task, where: {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",
                                                                            "MALLOC_TRIM_THRESHOLD_")}, [None])
        outcomes = engine.map(die, ["dies", "lives"], ["dies", "lives"])
    assert seen == [{"OMP_NUM_THREADS": str(engines._cpu_count()), "MALLOC_TRIM_THRESHOLD_": None}]
    assert isinstance(outcomes[0], engines.Outcome) and outcomes[0].error.startswith("its worker died 2 times")
    assert outcomes[1] == "lives"


def test_runs_under_a_time_budget_on_different_hardware_are_flagged():
    table = pd.DataFrame({"hardware": ["NVIDIA H100", "cpu x2 threads", None], "time_budget": [60.0, 60.0, None]})
    runner._flag_incomparable(table)
    assert list(table["comparable"]) == [False, False, False]
    same = pd.DataFrame({"hardware": ["NVIDIA H100", "NVIDIA H100"], "time_budget": [60.0, 60.0]})
    runner._flag_incomparable(same)
    assert "comparable" not in same
    fixed_steps = pd.DataFrame({"hardware": ["NVIDIA H100", "cpu x2 threads"], "time_budget": [0.0, 0.0]})
    runner._flag_incomparable(fixed_steps)  # the same steps everywhere: comparable
    assert "comparable" not in fixed_steps
