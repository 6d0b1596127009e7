"""A real 2-process DistributedDataParallel training on CPU with gloo, launched by torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "workers" / "ddp_train.py"


def _launch(nproc: int, corpus: Path, out_dir: Path, weights_dir: Path, batch_size: int, *extra: str):
    weights_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(corpus), str(out_dir), str(weights_dir), str(batch_size), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    corpus = root / "corpus.txt"
    corpus.write_bytes((b"the quick brown fox jumps over the lazy dog. " * 40 + b"pack my box with five dozen liquor jugs! " * 40) * 3)
    _launch(2, corpus, root / "out2", root / "w2", batch_size=8)
    _launch(1, corpus, root / "out1", root / "w1", batch_size=8)
    # interrupted after 6 steps, then resumed to 12, both times with 2 processes
    _launch(2, corpus, root / "out_resumed", root / "w_first", 8, "6")
    _launch(2, corpus, root / "out_resumed", root / "w_resumed", 8, "12", "resume")
    return root


@pytest.mark.slow
def test_both_ranks_end_with_identical_weights(ddp_runs):
    w0 = torch.load(ddp_runs / "w2" / "rank0.pt", weights_only=True)
    w1 = torch.load(ddp_runs / "w2" / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k


@pytest.mark.slow
def test_only_rank_zero_writes_and_loss_falls(ddp_runs):
    out = ddp_runs / "out2"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl", "result.json"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one writer: evaluations at step 6 and 12, not twice each
    history = torch.load(ddp_runs / "w2" / "result0.pt", weights_only=True)["history"]
    assert history[-1]["val_bpb"] < history[0]["val_bpb"] < 8.0


@pytest.mark.slow
def test_two_processes_match_one_process_with_same_effective_batch(ddp_runs):
    two = torch.load(ddp_runs / "w2" / "rank0.pt", weights_only=True)
    one = torch.load(ddp_runs / "w1" / "rank0.pt", weights_only=True)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    r2 = torch.load(ddp_runs / "w2" / "result0.pt", weights_only=True)["final_val_bpb"]
    r1 = torch.load(ddp_runs / "w1" / "result0.pt", weights_only=True)["final_val_bpb"]
    assert abs(r2 - r1) < 1e-4


@pytest.mark.slow
def test_distributed_resume_continues_to_the_same_weights(ddp_runs):
    steps = [json.loads(line)["step"] for line in (ddp_runs / "out_resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [6, 12]
    resumed = torch.load(ddp_runs / "w_resumed" / "rank0.pt", weights_only=True)
    straight = torch.load(ddp_runs / "w2" / "rank0.pt", weights_only=True)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-4, atol=1e-5, msg=k)
