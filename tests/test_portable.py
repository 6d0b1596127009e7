"""Tests of the portable, bit-exact inference path (``blm_lab.codec.portable``).

The contract under test: the integer frequencies reaching the coder are a pure function of the weights
and the bytes coded so far -- independent of thread count, CPU ISA / kernels, batch composition,
process, and the float dtype of the checkpoint.

The cross-process checks (thread counts, ISA settings, the kernels compiled for a generic CPU) are in
test_portability.py, one worker per setting.
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


def save_ckpt(model: BytesGPT, path: Path) -> Path:
    torch.save({"config": model.config.to_dict(), "model_state": model.state_dict()}, path)
    return path


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

def test_from_float_deterministic():
    """(c) in this process; every worker of test_portability.py checks the fingerprints across settings."""
    model = tiny_model(seed=5)
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


def test_every_model_option_has_a_case_here():
    """Every kind and boolean option of gpt.py's config is a case of this file (the backends against each other
    and against the float model), so an option added there is never computed here as another one unnoticed."""
    from dataclasses import fields

    from blm_lab.gpt import MLP_KINDS, NORM_KINDS

    default = BytesGPTConfig()
    assert {cfg.get("mlp", default.mlp) for cfg in ARCH.values()} == set(MLP_KINDS)
    assert {cfg.get("norm", default.norm) for cfg in ARCH.values()} == set(NORM_KINDS)
    flags = {f.name for f in fields(BytesGPTConfig) if isinstance(getattr(default, f.name), bool)}
    changed = {name for cfg in ARCH.values() for name, value in cfg.items() if value != getattr(default, name)}
    assert flags <= changed, sorted(flags - changed)


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

def test_round_trip_in_process():
    """(d) encode and decode here; test_portability.py decodes files in a worker per compute setting."""
    pm = P.PortableModel.from_float(tiny_model(seed=9))
    data = TEXT[:300] + bytes(range(256)) + TEXT[-200:]
    seg = 100
    streams = lockstep_encode(data, pm, seg)
    assert lockstep_decode(streams, len(data), pm, seg) == data


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


def test_freqs_from_indices_is_the_exact_formula():
    """The frequencies are f = floor(e (2**24 - V) / sum e) + 1 with the leftover on the first largest f, in
    exact integers (numpy's floor division here, against the kernel's corrected estimate)."""
    pm = _shared_pm()
    table = pm._exp_logit_np
    rng = np.random.default_rng(5)
    for trial in range(400):
        B = int(rng.integers(1, 6))
        if trial % 3 == 0:
            ind = rng.integers(0, len(table), (B, 256))
        elif trial % 3 == 1:  # peaked rows, as a trained model's
            ind = np.minimum(rng.geometric(rng.uniform(0.001, 0.5), (B, 256)) - 1, len(table) - 1)
        else:  # ties at the top
            ind = rng.integers(0, 3, (B, 256))
        ind[:, int(rng.integers(0, 256))] = 0
        e = table[ind]
        f = (e * (2 ** 24 - 256)) // e.sum(axis=1, keepdims=True) + 1
        f[np.arange(B), f.argmax(axis=1)] += 2 ** 24 - f.sum(axis=1)
        assert np.array_equal(pm.freqs_from_indices(ind), f), trial


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


THREADS_WORKER = r"""
import sys
import torch
sys.path.insert(0, sys.argv[1])
import test_portable as T
torch.set_num_threads(1)
pm = T.P.PortableModel.from_float(T.tiny_model(seed=15))
T.run_steps(pm, T.streams_from(T.TEXT, 4, 3))  # starts numba's threads in this process
print("RESULT", torch.get_num_threads())
"""


def test_the_step_leaves_torch_thread_count_as_it_was():
    """The attention's rows run on numba's threads; under numba's OpenMP layer these can be torch's own libgomp,
    whose start sets the calling thread's count to numba's. In a fresh process (where numba's threads start),
    a caller's torch.set_num_threads(1) still holds after the step."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", THREADS_WORKER, str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("RESULT")[-1].split() == ["1"]


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
            assert any(op in code for op in ("mulss", "mulsd", "fmul")), name  # real machine code was inspected
            found = [op for op in fma if op in code.lower()]
            assert not found, (name, found)
