"""Tests of the portable, bit-exact inference path (portable.py).

The contract under test: the integer frequencies reaching the coder are a pure function of the weights
and the bytes coded so far -- independent of thread count, CPU ISA / kernels, batch composition,
process, and the float dtype of the checkpoint.

Cross-process tests save a float checkpoint once in the parent and run workers (fresh interpreters
with their own thread count and environment) that each quantize it with ``from_float`` and step it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import blm_lab.codec.portable.model as P
from blm_lab.codec.coder import BatchDecoder, BatchEncoder, quantize
from blm_lab.errors import CheckpointError, ConfigError
from blm_lab.gpt import BytesGPT, BytesGPTConfig
from conftest import ARCHITECTURE_OPTIONS

TEXT = (b"First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        b"First Citizen:\nYou are all resolved rather to die than to famish?\n") * 8
# every architecture option of BytesGPTConfig alone and all together, and with LayerNorm biases (which
# RMSNorm does not have)
ARCH = {
    **ARCHITECTURE_OPTIONS,
    "bias": dict(bias=True),
    "all_bias": dict(mlp="relu2", qk_norm=True, tie_embeddings=False, value_residual=True, bias=True),
    "all_rms_bias": dict(mlp="relu2", norm="rmsnorm", qk_norm=True, tie_embeddings=False, value_residual=True,
                         bias=True),
}
SETTINGS = [  # (threads, extra environment)
    (1, {}), (2, {}), (3, {}),
    (1, {"ATEN_CPU_CAPABILITY": "default"}), (3, {"ATEN_CPU_CAPABILITY": "default"}),
    (1, {"ONEDNN_MAX_CPU_ISA": "SSE41"}), (2, {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
    (2, {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
    # the CPU kernels compiled for a generic x86-64 / the host (numba's own cache is keyed by CPU)
    (1, {"NUMBA_CPU_NAME": "generic"}), (3, {"NUMBA_CPU_NAME": "generic", "ATEN_CPU_CAPABILITY": "default"}),
]


# ------------------------------------------------------------------------------------------ helpers

def tiny_model(seed=0, std=0.5, **cfg) -> BytesGPT:
    """A small random model with large weights (sharp softmaxes, large activations): a harder test
    than the default 0.02 init, whose outputs are nearly uniform."""
    torch.manual_seed(seed)
    config = BytesGPTConfig(**{"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, **cfg})
    model = BytesGPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
        for blk in model.transformer.h:  # LayerNorm gains around 1, not around 0
            for ln in (blk.ln_1, blk.ln_2):
                ln.weight.add_(1.0)
            if blk.attn.q_norm is not None:  # QK-norm gains too
                blk.attn.q_norm.weight.add_(1.0)
                blk.attn.k_norm.weight.add_(1.0)
            if blk.attn.v_mix is not None:  # value-residual weights around their initial 0.5
                blk.attn.v_mix.add_(0.5)
        model.transformer.ln_f.weight.add_(1.0)
    return model.eval()


def streams_from(data: bytes, B: int, n: int) -> np.ndarray:
    """(B, n) byte values: B overlapping windows of ``data``."""
    arr = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    return np.stack([arr[(7 * b) % (len(arr) - n):][:n] for b in range(B)])


def run_steps(pm: P.PortableModel, sym: np.ndarray, reference: bool = False) -> np.ndarray:
    """Freqs (n, B, 256) after feeding sym[:, t] for t < n (``reference``: the torch ops, not the CPU kernels)."""
    B, n = sym.shape
    cache = pm.new_cache(B, reference=reference)
    return np.stack([pm.step(torch.from_numpy(sym[:, t]), cache) for t in range(n)])


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def uniform(B: int) -> np.ndarray:
    return np.full((B, 256), 2 ** 16, dtype=np.int64)


def lockstep(pm, lengths: np.ndarray, code) -> np.ndarray:
    """The lock-step loop with portable frequencies: the first byte uniform, then pm.step."""
    B, steps = len(lengths), int(lengths.max())
    cache = pm.new_cache(B)
    sym = np.zeros((B, steps), dtype=np.int64)
    sym[:, 0] = code(uniform(B), lengths > 0)
    for t in range(1, steps):
        sym[:, t] = code(pm.step(torch.from_numpy(sym[:, t - 1]), cache), lengths > t)
    return sym


def lockstep_encode(data: bytes, pm, seg: int) -> list[bytes]:
    n = len(data)
    B = -(-n // seg)
    lengths = np.minimum(seg, n - np.arange(B) * seg)
    padded = np.zeros(B * seg, dtype=np.uint8)
    padded[:n] = np.frombuffer(data, dtype=np.uint8)
    known, enc, column = padded.reshape(B, seg).astype(np.int64), BatchEncoder(B), iter(range(seg))

    def code(freqs, active):
        symbols = known[:, next(column)]
        enc.encode(freqs, symbols, active)
        return symbols

    lockstep(pm, lengths, code)
    return enc.finish()


def lockstep_decode(streams: list[bytes], n: int, pm, seg: int) -> bytes:
    lengths = np.minimum(seg, n - np.arange(len(streams)) * seg)
    return lockstep(pm, lengths, BatchDecoder(streams).decode).astype(np.uint8).reshape(-1)[:n].tobytes()


def check_freqs(f: np.ndarray):
    assert f.dtype == np.int64 and f.shape[-1] == 256
    assert (f.sum(axis=-1) == 2 ** 24).all()
    assert f.min() >= 1


WORKER = r"""
import hashlib, json, sys
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
import blm_lab.codec.portable as P
from blm_lab.codec.coder import BatchDecoder
import numba
out = {"threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
       "numba_cpu": numba.config.CPU_NAME}
if args["mode"] == "steps":
    from blm_lab.checkpoint import load_checkpoint
    out["jobs"] = []
    for job in args.get("jobs", [args]):  # one job per checkpoint
        model, _ = load_checkpoint(job["ckpt"])
        pm = P.PortableModel.from_float(model, **job.get("options", {}))
        res = {"fingerprint": pm.fingerprint().hex()}
        sym = np.array(job["sym"], dtype=np.int64)
        cache, ref_cache = pm.new_cache(sym.shape[0]), pm.new_cache(sym.shape[0], reference=True)
        h, hr, hf = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
        with torch.inference_mode():
            fc = model.new_cache(sym.shape[0])
            for t in range(sym.shape[1]):
                h.update(pm.step(torch.from_numpy(sym[:, t]), cache).tobytes())
                if job.get("reference", False):  # the torch ops (the CUDA path) too
                    hr.update(pm.step(torch.from_numpy(sym[:, t]), ref_cache).tobytes())
                if job.get("float", True):
                    hf.update(model.step(torch.from_numpy(sym[:, t]), fc).numpy().tobytes())
        res["freqs_sha"] = h.hexdigest()
        if job.get("reference", False):
            res["reference_sha"] = hr.hexdigest()
        res["float_logits_sha"] = hf.hexdigest()  # the float path, for contrast (not required to match)
        out["jobs"].append(res)
    out.update(out["jobs"][0])
elif args["mode"] == "decode":
    state = torch.load(args["state"], weights_only=True)
    pm = P.PortableModel.from_state_dict(state)
    out["fingerprint"] = pm.fingerprint().hex()
    streams = [bytes.fromhex(s) for s in args["streams"]]
    B, seg, n = len(streams), args["segment_bytes"], args["n"]
    lengths = np.minimum(seg, n - np.arange(B) * seg)
    dec = BatchDecoder(streams)
    cache = pm.new_cache(B)
    sym = np.zeros((B, seg), dtype=np.int64)
    sym[:, 0] = dec.decode(np.full((B, 256), 2 ** 16, dtype=np.int64), lengths > 0)
    for t in range(1, seg):
        sym[:, t] = dec.decode(pm.step(torch.from_numpy(sym[:, t - 1]), cache), lengths > t)
    data = sym.astype(np.uint8).reshape(-1)[:n].tobytes()
    out["data"] = data.hex()
print("RESULT" + json.dumps(out))
"""


def run_worker(args: dict, threads: int, env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                            "NUMBA_CPU_NAME")}
    # idle OpenMP threads sleep instead of spinning: with as many threads as cores, spinning workers on a
    # shared machine run 5-10x slower; how threads wait does not change what they compute
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.update(env_extra)
    env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps({**args, "threads": threads})],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    assert res["threads"] == threads
    if env_extra.get("ATEN_CPU_CAPABILITY") == "default":
        assert res["capability"] == "DEFAULT"  # the setting really took effect
    assert res["numba_cpu"] == env_extra.get("NUMBA_CPU_NAME")
    return res


def save_ckpt(model: BytesGPT, path: Path) -> Path:
    torch.save({"config": model.config.to_dict(), "model_state": model.state_dict()}, path)
    return path


# ------------------------------------------------------------------------------------------ (a) cross-process determinism

def _cross_process(model, tmp_path, B, n, settings_list, options=None, reference=False):
    return _cross_process_many([(model, options)], tmp_path, B, n, [(t, e, [0]) for t, e in settings_list],
                               reference=reference)[0]


def _cross_process_many(cases, tmp_path, B, n, plan, float_path=True, reference=False):
    """cases: [(model, options)]; plan: [(threads, environment, indices of the cases to run)]. One worker per
    plan entry runs its cases; each case's fingerprint and sha256 of all freqs must equal this process's
    (1 thread, native ISA; the CPU kernels), and with ``reference`` so must the worker's torch-op path.
    Returns per case [(threads, environment, worker result)]."""
    sym = streams_from(TEXT, B, n)
    jobs = [{"ckpt": str(save_ckpt(model, tmp_path / f"model{i}.pt")), "sym": sym.tolist(), "options": options or {},
             "float": float_path, "reference": reference} for i, (model, options) in enumerate(cases)]
    results = [(t, e, which, run_worker({"mode": "steps", "jobs": [jobs[i] for i in which]}, t, e))
               for t, e, which in plan]
    out = []
    for i, (model, options) in enumerate(cases):
        pm = P.PortableModel.from_float(model, **(options or {}))
        h = hashlib.sha256()
        f = run_steps(pm, sym)
        check_freqs(f)
        for t in range(n):
            h.update(f[t].tobytes())
        mine = [(t, e, r["jobs"][which.index(i)]) for t, e, which, r in results if i in which]
        assert mine, i
        for t, e, r in mine:
            assert r["fingerprint"] == pm.fingerprint().hex(), (i, t, e)
            assert r["freqs_sha"] == h.hexdigest(), (i, t, e)
            if reference:
                assert r["reference_sha"] == h.hexdigest(), (i, t, e)
        out.append(mine)
    return out


def test_cross_process_threads_and_isa(tmp_path):
    """(a) same freqs (sha256 over all steps) for 1/2/3 threads x native / ATEN default / oneDNN SSE41."""
    model = tiny_model(seed=1)
    results = _cross_process(model, tmp_path, B=5, n=40, settings_list=SETTINGS,  # n > block_size: cache rolls
                             reference=True)
    print("float-path logits sha per setting:", {f"{t}{e}": r["float_logits_sha"][:12] for t, e, r in results})


def test_cross_process_real_size_random_init(tmp_path):
    """(a) on a real-size model (4 layers, 4 heads, 128 wide, block 128), default random init."""
    torch.manual_seed(123)
    model = BytesGPT(BytesGPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128)).eval()
    _cross_process(model, tmp_path, B=3, n=24,
                   settings_list=[(2, {}), (3, {"ATEN_CPU_CAPABILITY": "default"}), (1, {"ONEDNN_MAX_CPU_ISA": "SSE41"})])


def test_cross_process_options_and_odd_shapes(tmp_path):
    """(a) non-default options (unfolded LN gains, wider activations via float64 matmuls) and odd shapes
    (width 48 with 3 heads, MLP ratio 3, block 20: no powers of two) are exact too."""
    model = tiny_model(seed=4, n_embd=48, n_head=3, mlp_ratio=3, block_size=20)
    _cross_process(model, tmp_path, B=3, n=30, options={"fold_ln_gain": False, "act_bits": 12, "mlp_hidden_bits": 12},
                   settings_list=[(2, {}), (1, {"ATEN_CPU_CAPABILITY": "default"})])


def test_cross_process_architecture_options(tmp_path):
    """(a) every architecture option (ReLU^2, RMSNorm, QK-norm, untied head, value residuals, biases) alone,
    in this process against 2 other settings; all of them together (three models: RMSNorm; LayerNorm with
    biases in odd shapes with unfolded gains; RMSNorm with Linear biases) against 5 settings."""
    cases = [(tiny_model(seed=20 + i, **ARCH[name]), None)
             for i, name in enumerate(("relu2", "rmsnorm", "qk_norm", "untied", "value_residual", "bias"))]
    cases += [(tiny_model(seed=30, **ARCH["all"]), None),
              (tiny_model(seed=31, n_embd=48, n_head=3, mlp_ratio=3, block_size=20, **ARCH["all_bias"]),
               {"fold_ln_gain": False}),
              (tiny_model(seed=32, **ARCH["all_rms_bias"]), None)]
    every, together = list(range(len(cases))), list(range(6, len(cases)))
    _cross_process_many(cases, tmp_path, B=4, n=28, float_path=False,  # n > block_size: the caches roll
                        plan=[(2, {}, every),
                              (3, {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                                   "NUMBA_CPU_NAME": "generic"}, every),
                              (1, {"ATEN_CPU_CAPABILITY": "default"}, together), (3, {}, together),
                              (2, {"ONEDNN_MAX_CPU_ISA": "SSE41"}, together)])


# ------------------------------------------------------------------------------------------ (b) batch independence

@pytest.mark.parametrize("arch", ["default", "all", "all_bias"])
def test_batch_independence(arch):
    """(b) a stream's freqs are identical alone and inside a batch of 8 other streams (any slot)."""
    model = tiny_model(seed=2, **ARCH.get(arch, {}))
    pm = P.PortableModel.from_float(model)
    n = 40
    others = streams_from(TEXT[::-1] + TEXT, 8, n)
    target = streams_from(TEXT, 1, n)
    alone = run_steps(pm, target)[:, 0]
    for where in (0, 3, 8):
        batch = np.insert(others, where, target[0], axis=0)  # (9, n)
        f = run_steps(pm, batch)
        check_freqs(f)
        assert np.array_equal(f[:, where], alone), where


def test_batch_duplicate_rows_identical():
    """Rows with the same history in one batch give identical freqs (no cross-row reduction)."""
    pm = P.PortableModel.from_float(tiny_model(seed=3))
    sym = np.repeat(streams_from(TEXT, 1, 30), 6, axis=0)
    f = run_steps(pm, sym)
    assert all(np.array_equal(f[:, 0], f[:, b]) for b in range(6))


# ------------------------------------------------------------------------------------------ (c) from_float determinism and dtypes

def test_from_float_deterministic_across_processes(tmp_path):
    """(c) every worker in (a) checks the fingerprint too; here: two extra settings, default options."""
    model = tiny_model(seed=5)
    ckpt = save_ckpt(model, tmp_path / "m.pt")
    sym = streams_from(TEXT, 1, 2)
    fps = {run_worker({"mode": "steps", "ckpt": str(ckpt), "sym": sym.tolist()}, t, e)["fingerprint"]
           for t, e in [(3, {}), (1, {"ATEN_CPU_CAPABILITY": "default"})]}
    assert fps == {P.PortableModel.from_float(model).fingerprint().hex()}
    assert P.PortableModel.from_float(model).fingerprint() == P.PortableModel.from_float(model).fingerprint()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_checkpoints_quantize_like_their_float32_upcast(dtype):
    """(c) a float16/bfloat16 checkpoint quantizes identically to its (exact) float32 upcast."""
    model = tiny_model(seed=6)
    low = tiny_model(seed=6).to(dtype)
    up = tiny_model(seed=6)
    up.load_state_dict({k: v.float() for k, v in low.state_dict().items()})
    a, b = P.PortableModel.from_float(low), P.PortableModel.from_float(up)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != P.PortableModel.from_float(model).fingerprint()  # the rounding did change weights
    sym = streams_from(TEXT, 2, 12)
    assert np.array_equal(run_steps(a, sym), run_steps(b, sym))


@pytest.mark.parametrize("arch", ["default", "all", "all_bias"])
def test_state_dict_round_trip(tmp_path, arch):
    """state_dict() is plain data: torch.load(weights_only=True) restores the same fingerprint and freqs."""
    pm = P.PortableModel.from_float(tiny_model(seed=7, **ARCH.get(arch, {})))
    torch.save(pm.state_dict(), tmp_path / "p.pt")
    pm2 = P.PortableModel.from_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    assert pm2.fingerprint() == pm.fingerprint()
    sym = streams_from(TEXT, 2, 20)
    assert np.array_equal(run_steps(pm, sym), run_steps(pm2, sym))
    assert {v.dtype for k, v in pm.tensors.items() if k.endswith(".q")} == {torch.int8}


def test_fingerprint_sensitive_to_weights_and_options():
    model = tiny_model(seed=8)
    base = P.PortableModel.from_float(model).fingerprint()
    assert P.PortableModel.from_float(model, exp_attn_per_nat=128).fingerprint() != base
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[3, 4] *= 3
    assert P.PortableModel.from_float(model).fingerprint() != base


def test_fingerprint_covers_the_architecture_options():
    """Identical weights under another architecture (GELU vs ReLU^2, LayerNorm vs RMSNorm) give another
    fingerprint (the config is hashed, with the arithmetic revision), and other frequencies."""
    base = tiny_model(seed=8)
    fps, freqs = set(), set()
    sym = streams_from(TEXT, 2, 10)
    for arch in ({}, dict(mlp="relu2"), dict(norm="rmsnorm"), dict(mlp="relu2", norm="rmsnorm")):
        model = tiny_model(seed=8, **arch)
        model.load_state_dict(base.state_dict())  # the same parameter names and values
        pm = P.PortableModel.from_float(model)
        fps.add(pm.fingerprint())
        freqs.add(sha(run_steps(pm, sym)))
    assert len(fps) == 4 and len(freqs) == 4
    untied = tiny_model(seed=8, tie_embeddings=False).config.to_dict()
    assert P._arithmetic_revision(untied) == 1  # its arithmetic is the first version's
    assert all(P._arithmetic_revision(tiny_model(seed=8, **ARCH[n]).config.to_dict()) == 2
               for n in ARCH if n != "untied")


def test_option_tensors():
    """What each option stores: no GELU table for ReLU^2, QK gains and per-layer v_mix, the untied head
    quantized from lm_head (not from the embedding), biases only where the model has them."""
    pm = P.PortableModel.from_float(tiny_model(seed=15, **ARCH["all"]))
    t = pm.tensors
    assert "table.gelu" not in t and "table.gelu" in _shared_pm().tensors
    assert {k for k in t if "norm.g" in k or "v_mix" in k} == {
        "h.0.attn.q_norm.g", "h.0.attn.k_norm.g", "h.1.attn.q_norm.g", "h.1.attn.k_norm.g", "h.1.attn.v_mix"}
    assert not any(k.endswith(".b") for k in t)
    for tie in (True, False):
        model = tiny_model(seed=15, tie_embeddings=tie)
        pm = P.PortableModel.from_float(model, fold_ln_gain=False)
        q_head, _ = P.quantize_weight(model.lm_head.weight)
        q_wte, _ = P.quantize_weight(model.transformer.wte.weight)
        assert torch.equal(pm.tensors["lm_head.q"], q_head)
        assert torch.equal(pm.tensors["lm_head.q"], q_wte) == tie
        assert torch.equal(pm.tensors["wte"], model.transformer.wte.weight)
    ln = P.PortableModel.from_float(tiny_model(seed=15, bias=True)).tensors
    rms = P.PortableModel.from_float(tiny_model(seed=15, bias=True, norm="rmsnorm")).tensors
    assert {k for k in ln if k.endswith(".b")} == {"lm_head.b"} | {
        f"h.{i}.{n}.b" for i in range(2) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert "lm_head.b" not in rms and "h.0.attn.c_attn.b" in rms  # RMSNorm has no bias to fold into the head


def test_state_lacking_option_tensors_is_refused():
    """A portable state whose tensors do not match its config (e.g. written before the options existed)
    is refused when loaded, not computed as another architecture."""
    state = P.PortableModel.from_float(tiny_model(seed=16, **ARCH["all_bias"])).state_dict()
    for name in ("h.1.attn.v_mix", "h.0.attn.k_norm.g", "h.1.mlp.c_fc.b"):
        broken = {**state, "tensors": {k: v for k, v in state["tensors"].items() if k != name}}
        with pytest.raises(ValueError, match="lacks tensors"):
            P.PortableModel.from_state_dict(broken)
    gelu = P.PortableModel.from_float(tiny_model(seed=16)).state_dict()
    as_relu2 = {**gelu, "config": {**gelu["config"], "mlp": "relu2"}}
    P.PortableModel.from_state_dict(as_relu2)  # a spare table is harmless; a missing one is not:
    relu2 = P.PortableModel.from_float(tiny_model(seed=16, mlp="relu2")).state_dict()
    with pytest.raises(ValueError, match="table.gelu"):
        P.PortableModel.from_state_dict({**relu2, "config": {**relu2["config"], "mlp": "gelu"}})


def test_layernorm_bias_fold_is_exact_and_order_free():
    """b + W beta: exact float64 products, a correctly rounded fsum, one rounding to float32 -- equal to the
    exactly rounded value (fractions), whatever the order of the terms."""
    from fractions import Fraction
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 50, generator=g) * torch.logspace(-3, 3, 50)
    beta = torch.randn(50, generator=g)
    b = torch.randn(7, generator=g)
    got = P._fold_bias(w, b, beta)
    perm = torch.randperm(50, generator=g)
    assert torch.equal(got, P._fold_bias(w[:, perm], b, beta[perm]))
    for n in range(7):
        exact = Fraction(float(b[n])) + sum(Fraction(float(w[n, k])) * Fraction(float(beta[k])) for k in range(50))
        assert got[n].item() == np.float32(float(exact))  # float(Fraction) rounds correctly; then to float32
    assert torch.equal(P._fold_bias(w, None, beta), P._fold_bias(w, torch.zeros(7), beta))


@pytest.mark.parametrize("where", ["transformer.h.1.attn.q_norm.weight", "transformer.h.1.attn.v_mix",
                                   "transformer.h.0.attn.c_attn.bias", "transformer.ln_f.bias"])
def test_non_finite_option_parameters_rejected(where):
    model = tiny_model(seed=13, qk_norm=True, value_residual=True, bias=True)
    with torch.no_grad():
        model.get_parameter(where).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        P.PortableModel.from_float(model)


def test_golden_frequencies():
    """The frequencies are a pure function of the weights, so they can be pinned: models with exactly
    representable weights (legacy RandomState integers / 1024, stable across numpy versions and machines)
    give these sha256 prefixes on every machine. The default architecture's value is that of the first
    version of this module (files it compressed still decode); change a value only with a new FORMAT."""
    def model(arch, seed):
        m = tiny_model(seed=0, **arch)
        rs = np.random.RandomState(seed)
        with torch.no_grad():
            for name, p in m.named_parameters():
                ints = np.asarray(rs.randint(-512, 513, size=p.shape), dtype=np.float32)
                p.copy_(torch.from_numpy(np.asarray(ints / np.float32(1024 if p.dim() > 1 else 2048))))
                if p.dim() == 1 and "norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                    p.add_(1.0)
        return m.eval()

    got = {}
    for name, arch in (("default", {}), ("all", ARCH["all"]), ("all_bias", ARCH["all_bias"])):
        got[name] = sha(run_steps(P.PortableModel.from_float(model(arch, 7)), streams_from(TEXT, 3, 24)))[:16]
    assert got == GOLDEN, got


GOLDEN = {"default": "6ea0dcb761012915", "all": "71fb005fb138921d", "all_bias": "1dd09f13a3cd9cc8"}


# ------------------------------------------------------------------------------------------ (d) coding round trip

def test_round_trip_in_process_and_across_processes(tmp_path):
    """(d) encode here (1 thread); decode here, and in workers with 2 threads and with the default ISA."""
    pm = P.PortableModel.from_float(tiny_model(seed=9))
    data = TEXT[:300] + bytes(range(256)) + TEXT[-200:]
    seg = 100
    streams = lockstep_encode(data, pm, seg)
    assert lockstep_decode(streams, len(data), pm, seg) == data
    torch.save(pm.state_dict(), tmp_path / "p.pt")
    for threads, env in [(2, {}), (3, {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"})]:
        r = run_worker({"mode": "decode", "state": str(tmp_path / "p.pt"), "streams": [s.hex() for s in streams],
                        "n": len(data), "segment_bytes": seg}, threads, env)
        assert r["fingerprint"] == pm.fingerprint().hex()
        assert bytes.fromhex(r["data"]) == data


def test_round_trip_with_coder_directly():
    """(d) BatchEncoder/BatchDecoder driven by portable freqs, step by step (ragged segment lengths)."""
    pm = P.PortableModel.from_float(tiny_model(seed=10))
    sym = streams_from(TEXT, 4, 30)
    lengths = np.array([30, 17, 1, 29])
    enc = BatchEncoder(4)
    cache = pm.new_cache(4)
    enc.encode(uniform(4), sym[:, 0], lengths > 0)
    for t in range(1, 30):
        enc.encode(pm.step(torch.from_numpy(sym[:, t - 1]), cache), sym[:, t], lengths > t)
    streams = enc.finish()
    dec = BatchDecoder(streams)
    cache = pm.new_cache(4)
    out = np.zeros_like(sym)
    out[:, 0] = dec.decode(uniform(4), lengths > 0)
    for t in range(1, 30):
        out[:, t] = dec.decode(pm.step(torch.from_numpy(out[:, t - 1]), cache), lengths > t)
    for b in range(4):
        assert np.array_equal(out[b, :lengths[b]], sym[b, :lengths[b]])


# ------------------------------------------------------------------------------------------ numerics

@settings(max_examples=200, deadline=None)
@given(st.data())
def test_freqs_from_indices_contract(data):
    """Any index pattern (incl. all at the max, one max and the rest at the table end) gives valid freqs."""
    pm = _shared_pm()
    n_tab = len(pm._exp_logit_np)
    B = data.draw(st.integers(1, 4))
    kind = data.draw(st.sampled_from(["random", "zeros", "one_peak", "ties"]))
    if kind == "random":
        ind = np.array(data.draw(st.lists(st.integers(0, n_tab - 1), min_size=256 * B, max_size=256 * B))).reshape(B, 256)
    elif kind == "zeros":
        ind = np.zeros((B, 256), dtype=np.int64)
    elif kind == "one_peak":
        ind = np.full((B, 256), n_tab - 1, dtype=np.int64)
        ind[:, data.draw(st.integers(0, 255))] = 0
    else:
        ind = np.full((B, 256), data.draw(st.integers(1, n_tab - 1)), dtype=np.int64)
        ind[:, :data.draw(st.integers(1, 255))] = 0
    ind[:, data.draw(st.integers(0, 255))] = 0  # a real row always has an entry at the max (index 0)
    check_freqs(pm.freqs_from_indices(ind))


_PM = None


def _shared_pm():
    global _PM
    if _PM is None:
        _PM = P.PortableModel.from_float(tiny_model(seed=11))
    return _PM


def test_tables_are_accurate():
    """Tables from exact software arithmetic agree with libm to their own rounding."""
    pm = _shared_pm()
    t = pm.tensors
    K = pm.options["exp_attn_per_nat"]
    ea = t["table.exp_attn"].double().numpy()
    assert ea[0] == 2 ** 15 and ea[-1] == 0
    assert np.abs(ea - np.round(2 ** 15 * np.exp(-np.arange(len(ea)) / K))).max() <= 1
    el = t["table.exp_logit"].numpy()
    assert el[0] == 2 ** 32 and el[-1] == 0
    g = t["table.gelu"].double()
    k, R = pm.options["gelu_log2_step"], pm.options["gelu_range"]
    x = torch.arange(-R * 2 ** k, R * 2 ** k + 1, dtype=torch.float64) / 2 ** k
    assert (g - torch.nn.functional.gelu(x)).abs().max() < 1e-6
    assert g[-1] == R
    F = t["rope.turns"].numpy().view(np.uint64)
    hs = pm.head_size
    theta = pm.config["rope_base"] ** (-np.arange(0, hs, 2) / hs)
    assert np.allclose(F.astype(np.float64) / 2.0 ** 64 * 2 * math.pi, theta, rtol=1e-12)
    for pos in (0, 1, 7, 1000, 123457):
        cos, sin = pm.rope_cos_sin(pos)  # what both backends rotate q and k by
        ang = pos * theta
        assert cos.dtype == sin.dtype == np.float32 and cos.shape == (hs // 2,)
        assert np.abs(cos - np.cos(ang)).max() < 2e-5
        assert np.abs(sin - np.sin(ang)).max() < 2e-5


ODD = {"n_embd": 48, "n_head": 3, "mlp_ratio": 3, "block_size": 20}


@pytest.mark.parametrize("cfg", [{}, ODD, *ARCH.values(), {**ODD, **ARCH["all"]}, {**ODD, **ARCH["all_bias"]}],
                         ids=["default", "odd", *ARCH, "odd_all", "odd_all_bias"])
def test_close_to_float_model(cfg):
    """Quality sanity on a random model: portable freqs are close to the float path's (small KL), for every
    architecture option. (Computing a relu2 / rmsnorm / qk_norm / value-residual model as the default
    architecture gives KL 0.2 - 1.0 here; unit QK gains, zero value-residual weights or a zero head bias
    0.09 - 0.3; the portable path measures 0.0008 - 0.0035.)"""
    model = tiny_model(seed=12, std=0.3, **cfg)
    pm = P.PortableModel.from_float(model)
    sym = streams_from(TEXT, 3, 40)
    f = run_steps(pm, sym)
    cache = model.new_cache(3)
    kl = []
    with torch.inference_mode():
        for t in range(sym.shape[1]):
            p = torch.softmax(model.step(torch.from_numpy(sym[:, t]), cache), -1).double().numpy()
            q = f[t] / 2.0 ** 24
            kl.append((p * (np.log(p + 1e-300) - np.log(q))).sum(-1).mean())
    assert np.mean(kl) < 0.01, np.mean(kl)


def test_bounds_are_enforced():
    with pytest.raises(ConfigError, match="block_size 1024 > 512"):
        P.PortableModel.from_float(tiny_model(seed=0, block_size=1024))
    with pytest.raises(ValueError):
        P.PortableModel.from_float(tiny_model(seed=0), qk_bits=13)  # 4095^2 * 16 > 2**24
    with pytest.raises(ValueError):
        P.PortableModel.from_float(tiny_model(seed=0), v_bits=15)  # too few attention-weight levels
    for field, value in (("mlp", "swiglu"), ("norm", "batchnorm")):  # an architecture it does not compute
        model = tiny_model(seed=0)
        setattr(model.config, field, value)
        with pytest.raises(ConfigError, match="--numerics float"):
            P.PortableModel.from_float(model)
    with pytest.raises(ValueError):
        P.PortableModel.from_float(tiny_model(seed=0), no_such_option=1)


def test_non_finite_weights_rejected():
    model = tiny_model(seed=13)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="non-finite"):
        P.PortableModel.from_float(model)


@pytest.mark.parametrize("reference", [False, True], ids=["kernels", "torch"])
@pytest.mark.parametrize("where,arch", [("h.0.mlp.c_fc.s", "default"), ("h.0.attn.c_attn.s", "default"),
                                        ("h.1.attn.c_attn.s", "all"), ("h.0.mlp.c_proj.s", "all"),
                                        ("lm_head.s", "default")])
def test_nan_activations_raise_instead_of_diverging(where, arch, reference):
    """A non-finite value reaching a table index raises (deterministically) rather than giving
    machine-dependent freqs, on both paths, wherever it enters (MLP, attention, QK-norm, head)."""
    state = P.PortableModel.from_float(tiny_model(seed=13, **ARCH.get(arch, {}))).state_dict()
    state["tensors"][where][0] = float("inf")
    pm = P.PortableModel.from_state_dict(state)
    with pytest.raises((IndexError, RuntimeError)):
        run_steps(pm, streams_from(TEXT, 1, 3), reference)


def test_reduced_precision_matmul_settings_are_overridden_and_restored():
    """A caller that enabled bf16/TF32 fp32 matmuls gets identical freqs, and its setting back."""
    pm = P.PortableModel.from_float(tiny_model(seed=14))
    sym = streams_from(TEXT, 2, 20)
    ref = run_steps(pm, sym)
    mk = torch.backends.mkldnn.matmul
    prev = mk.fp32_precision
    try:
        mk.fp32_precision = "bf16"
        assert np.array_equal(run_steps(pm, sym), ref)
        assert mk.fp32_precision == "bf16"
    finally:
        mk.fp32_precision = prev


# ------------------------------------------------------------------------------------------ the CPU kernels

KERNEL_CASES = {  # name: (model config, portable options)
    **{name: (cfg, {}) for name, cfg in ARCH.items()},
    "default": ({}, {}),
    "gelu_layernorm_unfolded": ({}, {"fold_ln_gain": False}),
    "float64_matmuls": (dict(n_embd=48, n_head=3, mlp_ratio=3, block_size=20), {"act_bits": 12, "mlp_hidden_bits": 12}),
    "all_bias_odd_unfolded": (dict(n_embd=48, n_head=3, mlp_ratio=3, block_size=20, **ARCH["all_bias"]),
                              {"fold_ln_gain": False, "qk_bits": 6, "v_bits": 10}),
}


@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_cpu_kernels_equal_the_torch_reference(case):
    """The numba kernels (the CPU path) give the torch ops' indices bit for bit at every step, under every
    architecture option and portable option, for 1 and 5 streams, past the cache's first roll."""
    cfg, options = KERNEL_CASES[case]
    pm = P.PortableModel.from_float(tiny_model(seed=41, **cfg), **options)
    for B in (1, 5):
        sym = streams_from(TEXT, B, pm.block_size + 9)
        kern, ref = pm.new_cache(B), pm.new_cache(B, reference=True)
        with P.ieee_fp32_matmuls():
            for t in range(sym.shape[1]):
                idx = torch.from_numpy(sym[:, t])
                a, b = pm.step_indices(idx, kern), pm.step_indices(idx, ref)
                assert torch.equal(a, b), (case, B, t, int((a != b).sum()))
        assert kern.pos == ref.pos == sym.shape[1]
        mine, theirs = kern.state(), ref.state()  # the caches hold the same integers and scales too
        for name in ("k", "v", "sk", "sv"):
            for x, y in zip(mine[name], theirs[name], strict=True):
                assert np.array_equal(x, y), name


FMA_WORKER = r"""
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
import test_portable as T
from blm_lab.codec.portable import cpu as portable_cpu
for arch in ("default", "all_bias"):  # every kernel, and every branch of them, gets compiled
    T.run_steps(T.P.PortableModel.from_float(T.tiny_model(seed=42, **T.ARCH.get(arch, {}))), T.streams_from(T.TEXT, 2, 3))
out, top = {}, []
for name in dir(portable_cpu):
    kernel = getattr(portable_cpu, name)
    if hasattr(kernel, "inspect_asm"):
        out[name] = list(kernel.inspect_asm().values())
        if kernel.targetoptions.get("inline") != "always":  # the step calls it (inlined helpers live in callers)
            top.append(name)
print("RESULT" + json.dumps({"asm": out, "top": top}))
"""


def test_cpu_kernels_contain_no_fused_multiply_add(tmp_path):
    """R2: no kernel's machine code fuses a multiply and an add (which rounds once instead of twice). The
    kernels are compiled afresh in a worker (numba does not keep the machine code of cached kernels)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", FMA_WORKER, str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT")[-1])
    asm = result["asm"]
    fma = ("vfmadd", "vfmsub", "vfnmadd", "vfnmsub", "fmadd", "fmsub", "fmla", "fmls")
    compiled = {name: codes for name, codes in asm.items() if codes}
    assert {"_norm_rows", "_residual_norm", "_attention", "_mlp_act", "_head"} <= set(result["top"])
    assert set(result["top"]) <= set(compiled)  # every kernel the step calls was compiled and inspected
    for name, codes in compiled.items():
        for code in codes:
            assert "vmulss" in code or "mulss" in code or "fmul" in code, name  # real machine code was inspected
            found = [op for op in fma if op in code.lower()]
            assert not found, (name, found)
