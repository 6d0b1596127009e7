"""The promise: a file compressed on one machine decodes on any other. Compress in one process and decompress
in another, under thread counts 1, 2 and 3, ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=SSE41,
NUMBA_CPU_NAME=generic (the portable CPU kernels compiled for a generic x86-64) and the native setting. Portable files must be byte-identical from every setting and decode in every other; a float
file must decode where only the (pinned) thread count differs and be refused up front anywhere else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blm_lab.checkpoint import save_checkpoint
from blm_lab.codec import container
from blm_lab.gpt import BytesGPTConfig
from conftest import train_briefly

pytestmark = pytest.mark.slow

SETTINGS = {  # name: (torch threads, environment)
    "native-1": (1, {}),
    "native-2": (2, {}),
    "native-3": (3, {}),
    "aten-default": (2, {"ATEN_CPU_CAPABILITY": "default"}),
    "onednn-sse41": (2, {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
    "numba-generic": (1, {"NUMBA_CPU_NAME": "generic"}),  # the portable CPU kernels built for generic x86-64
}
TEXT = (b"First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        b"First Citizen:\nYou are all resolved rather to die than to famish?\n") * 3

WORKER = r"""
import json, sys
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from blm_lab.checkpoint import load_checkpoint
from blm_lab.codec.neural import compress, decompress
from blm_lab.errors import BlmError
model, _ = load_checkpoint(args["model"])
out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
try:
    source = open(args["input"], "rb").read()
    if args["op"] == "compress":
        result = compress(source, model, numerics=args["numerics"], segments=3)
    else:
        result = decompress(source, model)
    open(args["output"], "wb").write(result)
    out["ok"] = True
except BlmError as exc:
    out["ok"], out["error"] = False, str(exc)
print("RESULT" + json.dumps(out))
"""


def run(op: str, setting: str, model: Path, src: Path, dst: Path, numerics: str = "portable") -> dict:
    threads, extra = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                            "NUMBA_CPU_NAME")}
    env.update(extra, OMP_NUM_THREADS=str(threads))
    args = dict(op=op, threads=threads, model=str(model), input=str(src), output=str(dst), numerics=numerics)
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.split("RESULT")[-1])
    assert result["threads"] == threads
    if extra.get("ATEN_CPU_CAPABILITY") == "default":
        assert result["capability"] == "DEFAULT"  # the setting really took effect
    return result


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("portability")
    # trained for a moment: the text is coded (not stored), with confident predictions
    model = train_briefly(TEXT, BytesGPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32), steps=80)
    ckpt = save_checkpoint(root / "model.pt", {"config": model.config.to_dict(), "model_state": model.state_dict()})
    (root / "input.txt").write_bytes(TEXT)
    return root, ckpt


def test_portable_files_are_identical_everywhere_and_decode_everywhere(files):
    root, ckpt = files
    names = list(SETTINGS)
    for name in names:
        assert run("compress", name, ckpt, root / "input.txt", root / f"{name}.blmz")["ok"]
    blobs = {name: (root / f"{name}.blmz").read_bytes() for name in names}
    assert len(set(blobs.values())) == 1, "the portable file depends on the compressing setting"
    header, _ = container.unpack(blobs["native-1"])
    assert not header.stored and header.numerics == "portable" and header.mixing == "cm" and len(blobs["native-1"]) < len(TEXT)
    for i, name in enumerate(names):  # each file decoded under the next setting (one round: all of them)
        other = names[(i + 1) % len(names)]
        result = run("decompress", other, ckpt, root / f"{name}.blmz", root / f"{name}.out")
        assert result["ok"], result
        assert (root / f"{name}.out").read_bytes() == TEXT


def test_float_files_pin_threads_and_refuse_any_other_difference_up_front(files):
    root, ckpt = files
    assert run("compress", "native-2", ckpt, root / "input.txt", root / "float.blmz", numerics="float")["ok"]
    header, _ = container.unpack((root / "float.blmz").read_bytes())
    assert not header.stored and header.numerics == "float" and header.setting["threads"] == "2"
    # another thread count: the decoder pins the file's, so it decodes
    assert run("decompress", "native-1", ckpt, root / "float.blmz", root / "float.out")["ok"]
    assert (root / "float.out").read_bytes() == TEXT
    for setting, named in (("aten-default", "cpu_capability"), ("onednn-sse41", "onednn_max_isa")):
        result = run("decompress", setting, ckpt, root / "float.blmz", root / f"float-{setting}.out")
        assert not result["ok"] and named in result["error"] and "another compute setting" in result["error"]
        assert not (root / f"float-{setting}.out").exists()
