"""The promise, across processes: a portable model's frequencies, and the files made with them, are the same
under every compute setting; a float file decodes only where just the (pinned) thread count differs.

One worker process per setting (``workers/portability.py``) does everything that setting must reproduce:
it quantizes and steps every model of ``STEP_CASES`` (fingerprints and sha256 of all frequencies equal to
this process's, the CPU kernels; the first case on the torch reference ops too), compresses the text with
portable numerics (byte-identical to this process's file), decompresses this process's portable file, and
decompresses this process's float file (1 thread) or refuses it up front. The settings: thread counts 1, 2
and 3, ``ATEN_CPU_CAPABILITY=default``, ``ONEDNN_MAX_CPU_ISA=SSE41`` and ``NUMBA_CPU_NAME=generic`` (the
portable CPU kernels compiled for a generic x86-64), alone and together. A narrow pair runs in the fast set;
the rest of the grid is marked slow. Each setting's worker runs once per session.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blm_lab.checkpoint import save_checkpoint
from blm_lab.codec import container
from blm_lab.codec.neural import compress
from blm_lab.codec.portable import PortableModel
from blm_lab.gpt import BytesGPT, BytesGPTConfig
from conftest import TORCH_THREADS, train_briefly
from test_portable import ARCH, TEXT, check_freqs, run_steps, save_ckpt, streams_from, tiny_model

WORKER = Path(__file__).parent / "workers" / "portability.py"
ATEN, ONEDNN, NUMBA = ("ATEN_CPU_CAPABILITY", "default"), ("ONEDNN_MAX_CPU_ISA", "SSE41"), ("NUMBA_CPU_NAME", "generic")
SETTINGS = {  # name: (torch threads, environment)
    "native-1": (1, {}),
    "native-2": (2, {}),
    "native-3": (3, {}),
    "aten-1": (1, dict([ATEN])),
    "aten-3": (3, dict([ATEN])),
    "onednn-1": (1, dict([ONEDNN])),
    "onednn-2": (2, dict([ONEDNN])),
    "aten-onednn-2": (2, dict([ATEN, ONEDNN])),
    "numba-1": (1, dict([NUMBA])),
    "numba-aten-3": (3, dict([NUMBA, ATEN])),
    "all-3": (3, dict([ATEN, ONEDNN, NUMBA])),
}
NARROW = ("native-2", "all-3")  # the fast set: another thread count, and every ISA setting at once

# the file checks' text: coded (not stored) by a model trained on it for a moment
FILE_TEXT = (b"First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
             b"First Citizen:\nYou are all resolved rather to die than to famish?\n") * 3


def step_cases() -> list[dict]:
    """The models every setting steps: (model, portable options, streams B, steps n, also on the reference ops).
    n > block_size everywhere, so the caches roll."""
    torch.manual_seed(123)
    real = BytesGPT(BytesGPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128)).eval()  # default init
    odd = dict(n_embd=48, n_head=3, mlp_ratio=3, block_size=20)  # no powers of two
    cases = [dict(model=tiny_model(seed=1), options={}, B=5, n=40, reference=True),
             dict(model=real, options={}, B=3, n=24, reference=False),
             dict(model=tiny_model(seed=4, **odd), options={"fold_ln_gain": False, "act_bits": 12, "mlp_hidden_bits": 12},
                  B=3, n=30, reference=False)]  # unfolded gains, wider activations (float64 matmuls)
    for i, name in enumerate(("relu2", "rmsnorm", "qk_norm", "untied", "value_residual", "bias", "all")):
        cases.append(dict(model=tiny_model(seed=20 + i, **ARCH[name]), options={}, B=4, n=28, reference=False))
    cases.append(dict(model=tiny_model(seed=31, **odd, **ARCH["all_bias"]), options={"fold_ln_gain": False}, B=4, n=28,
                      reference=False))
    cases.append(dict(model=tiny_model(seed=32, **ARCH["all_rms_bias"]), options={}, B=4, n=28, reference=False))
    return cases


class Grid:
    """The jobs, this process's expected results, and each setting's worker result (run at most once)."""

    def __init__(self, root: Path):
        self.root, self.results = root, {}
        self.jobs, self.expected = [], []
        for i, case in enumerate(step_cases()):
            sym = streams_from(TEXT, case["B"], case["n"])
            pm = PortableModel.from_float(case["model"], **case["options"])
            freqs = run_steps(pm, sym)  # the CPU kernels, in this process
            check_freqs(freqs)
            h = hashlib.sha256()
            for t in range(case["n"]):
                h.update(freqs[t].tobytes())
            self.jobs.append({"ckpt": str(save_ckpt(case["model"], root / f"model{i}.pt")), "sym": sym.tolist(),
                              "options": case["options"], "reference": case["reference"]})
            self.expected.append({"fingerprint": pm.fingerprint().hex(), "freqs_sha": h.hexdigest()})
        model = train_briefly(FILE_TEXT, BytesGPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32), steps=80)
        ckpt = save_checkpoint(root / "files.pt", {"config": model.config.to_dict(), "model_state": model.state_dict()})
        (root / "text").write_bytes(FILE_TEXT)
        self.portable = compress(FILE_TEXT, model, numerics="portable", segments=3)
        (root / "portable.blmz").write_bytes(self.portable)
        (root / "float.blmz").write_bytes(compress(FILE_TEXT, model, numerics="float", segments=3))
        self.files = {"ckpt": str(ckpt), "text": str(root / "text"), "portable": str(root / "portable.blmz"),
                      "float": str(root / "float.blmz")}

    def result(self, setting: str) -> dict:
        if setting not in self.results:
            threads, extra = SETTINGS[setting]
            env = {k: v for k, v in os.environ.items() if k not in (ATEN[0], ONEDNN[0], NUMBA[0])}
            # idle OpenMP threads sleep instead of spinning: with as many threads as cores, spinning workers on a
            # shared machine run 5-10x slower; how threads wait does not change what they compute
            env.update(extra, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads))
            args = {"threads": threads, "jobs": self.jobs, "files": self.files}
            proc = subprocess.run([sys.executable, str(WORKER), json.dumps(args)], env=env, capture_output=True,
                                  text=True, timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]
            self.results[setting] = json.loads(proc.stdout.split("RESULT")[-1])
        return self.results[setting]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Grid:
    return Grid(tmp_path_factory.mktemp("portability"))


def test_the_files_made_here(grid):
    """What the workers compare against: a coded portable file, and a float file that records 1 thread."""
    header, _ = container.unpack(grid.portable)
    assert not header.stored and header.numerics == "portable" and header.mixing == "cm"
    assert len(grid.portable) < len(FILE_TEXT)
    header, _ = container.unpack(Path(grid.files["float"]).read_bytes())
    assert not header.stored and header.numerics == "float" and header.setting["threads"] == str(TORCH_THREADS)


@pytest.mark.parametrize("setting", [s if s in NARROW else pytest.param(s, marks=pytest.mark.slow) for s in SETTINGS])
def test_a_setting_reproduces_frequencies_and_files(grid, setting):
    threads, extra = SETTINGS[setting]
    r = grid.result(setting)
    assert r["threads"] == threads and r["numba_cpu"] == extra.get(NUMBA[0])  # the settings really took effect
    if ATEN in extra.items():
        assert r["capability"] == "DEFAULT"
    for i, (job, mine, theirs) in enumerate(zip(grid.jobs, grid.expected, r["jobs"], strict=True)):
        assert theirs["fingerprint"] == mine["fingerprint"], (i, setting)
        assert theirs["freqs_sha"] == mine["freqs_sha"], (i, setting)
        if job["reference"]:
            assert theirs["reference_sha"] == mine["freqs_sha"], (i, setting)
    # portable: the same file from every setting, and it decodes in every setting
    assert bytes.fromhex(r["portable_file"]) == grid.portable
    assert r["portable_decoded"], r.get("portable_error")
    # float: decodes where only the thread count differs (the decoder pins the file's), else is refused up front
    if ATEN in extra.items() or ONEDNN in extra.items():
        named = "cpu_capability" if ATEN in extra.items() else "onednn_max_isa"
        assert not r["float_decoded"] and named in r["float_error"] and "another compute setting" in r["float_error"]
    else:
        assert r["float_decoded"], r.get("float_error")
