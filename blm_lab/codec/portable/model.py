"""Portable, bit-exact inference for BytesGPT: integer frequencies that are a pure function of the weights.

Why
===
The float path (``quantize(softmax(model.step(...)))``) gives logits whose last bits depend on the thread
count, the CPU instruction set (AVX-512 / AVX2 / scalar kernels), the BLAS or oneDNN kernel a shape
happens to pick, and the device. A file compressed under one setting then fails to decode under
another. Here every value that influences the coder's integer frequencies is either *exact* or *one
correctly rounded IEEE 754 operation on operands that are themselves bit-identical*, so every correct
IEEE implementation (any thread count, any kernel, any batch size, CPU or CUDA) yields the same bits.

The rules (each op in the code names the rule it relies on)
============================================================
R1  Exact integer sums. A sum of integer-valued floats whose partial sums all stay within 2**24 in
    magnitude (float32; 2**53 for float64) is exact in *any* order and any blocking, because every
    partial result is representable. So a float32 mm/bmm/sum of such tensors is exact on any kernel.
    Every matmul here multiplies integers |a| <= qa, |b| <= qb over K terms and is used only where
    qa * qb * K <= 2**24 (float32) or 2**53 (float64); the bounds are checked when the model is built.
    (int8 x int8 products would even survive TF32 or bf16 inputs, but the attention weights reach
    2**17, so ``step`` forces IEEE float32 matmuls if the caller enabled TF32/bf16: ``ieee_fp32_matmuls``.)
R2  Correctly rounded elementwise ops. IEEE 754 requires + - * / sqrt to be correctly rounded, so each
    such op, run as its *own* torch call, gives identical bits everywhere. Nothing is fused (no
    addcmul/addmm/lerp/alpha=/torch.compile: an FMA rounds once instead of twice). No tensor is divided
    by a Python scalar (CUDA turns that into a multiply by a reciprocal); divisions are tensor / tensor;
    Python-scalar multiplies use powers of two or small integers, which are exact. No rsqrt.
    In-place forms (x.mul_(y)) compute the same correctly rounded results as out-of-place ones; they are
    used on temporaries this code owns, to avoid allocating (and page-faulting) a new buffer per op.
R3  Exact ops: max/amax, abs, neg, comparisons, clamp, round (half to even), float -> int64 truncation
    of values in range, index_select, roll/copies, multiplication by a power of two (no under- or
    overflow at these magnitudes), and the sums of R1.
R4  No libm. exp (softmaxes), erf (GELU), cos/sin (rotary) are never evaluated by the platform: they
    are tables built here with Python's ``decimal`` module and Python integers (software arithmetic,
    identical on every machine), stored with the quantized model and covered by its fingerprint (computed
    once per process for each set of table parameters: ``_table_values``).
R5  Row independence. Every op is elementwise, reduces within one stream's row, or is an exact matmul,
    so a stream's results do not depend on the other streams in the batch or on B.

The computation
===============
Weights (``from_float``, on CPU in float32; float16/bfloat16 checkpoints are upcast first, exactly):
    per output channel n:  s_n = max_k |W[n,k]| / 127 (amax exact, one rounded division, R3/R2),
    Wq[n,k] = round(W[n,k] / s_n) in [-127, 127] (int8; s_n = 1 for an all-zero row). With
    ``fold_ln_gain`` the LayerNorm gain g is first folded into the next weight (W * g, one rounding).
    Non-finite weights are rejected. The embedding is the float32 table itself (a gather, exact).
Activation quantization, ``_quant_rows_``: per row x (per token, or per (token, head)):
    m = max(max|x|, 2**-100), xq = round(x * (Q / m)) in [-Q, Q], scale = m / Q, Q = 2**(bits-1) - 1.
    |x * (Q/m)| <= Q (1 + 2**-23) < Q + 1/2, so the round never leaves [-Q, Q].
Linear: acc = xq @ Wq^T, exact (R1): 127 * 127 * K <= 2**24 holds for K <= 1040 with int8 activations;
    wider activations (``act_bits`` > 8) switch that matmul to float64 (exact below 2**53). The output
    is (acc * s_col) * scale_row: two correctly rounded multiplies.
LayerNorm with integer statistics (``_norm_quant``; RMSNorm and biases below), C = width,
p = min(23 - ceil(log2 C), floor((53 - 3 ceil(log2 C)) / 2)):
    m = max|x|, r = 2**p / m, xi = round(x * r)              integers, |xi| <= 2**p
    S = sum xi         (float32, exact: |S| <= C 2**p <= 2**23, R1)
    xc = xi * C - S    (= C (xi - mean xi); exact integers, |xc| <= 2**24)
    Q2 = sum xi^2      (float64, exact: <= C 2**2p <= 2**39)
    D = C Q2 - S^2     (float64, exact: both terms <= C^2 2**2p <= 2**46; D = C^2 var(xi) >= 0)
    zq = quant_rows(xc * g)  (or of xc when g is folded): the rounding decisions depend on integers only
    a = 1 / (sqrt(D + eps (C r)^2) * (Q / m_z))   (float64, R2): LN(x) ~ zq * a, because
        (x - mean) / sqrt(var + eps) = xc / sqrt(D + eps (C r)^2) when x = xi / r.
    The only approximation is x ~ xi / r: 2**-p relative to the row max (2**-16 for C = 128).
Attention, per layer (nh heads of size hs, one shared position pos):
    h = (zq @ Wqkv^T) * s_col (the per-row LN scale a is kept aside: it cancels in per-head quantization;
    see "True units" below for the options that need it applied).
    Rotary: theta_i = base**(-2i/hs); F_i = round(2**64 theta_i / 2pi) mod 2**64 (``decimal``, stored);
    turn = pos * F_i mod 2**64 (exact uint64 arithmetic); cos/sin(2 pi turn / 2**64) from two 1024-entry
    tables (top 10 bits and next 10 bits of the turn; ``decimal`` Taylor series) by the angle-addition
    formula in float64 (4 multiplies, 2 adds), then cast to float32. Angle error <= 2 pi 2**-20.
    rot = h * cosF + roll(h, hs/2) * sinF per head (2 multiplies, 1 add); the v part has cos = 1,
    sin = 0, so it passes exactly. q, k, v are quantized per (row, head) (``qk_bits``, ``v_bits``),
    scales times a. Cache: K stored transposed (B*nh, hs, T), V (B*nh, T, hs), integer-valued float32,
    per-slot scales; slot = pos % T (rolling, like gpt.KVCache), the first min(pos + 1, T) slots valid.
    scores = q . k (exact, R1: 127^2 hs <= 2**24 for hs <= 1040)
    l_j = (score_j * s_k,j) * (s_q * K_A / sqrt(hs))     (2 roundings; K_A / sqrt(hs) via ``decimal``)
    w_j = EXP_A[min(round(max l - l_j), N_A)], EXP_A[i] = round(2**15 exp(-i / K_A)) (0 at the end):
        integers <= 2**15; wsum = sum w <= 2**15 T <= 2**24 for T <= 512: exact (R1).
    V's per-key scales are folded into the weights, which are re-quantized in two exact stages:
        u = w * s_v (1 rounding), u1 = round(u * U1 / max u) in [0, U1] with U1 = 2**24 // T, so
        s1 = sum u1 <= 2**24 is exact; uq = round(u1 * U2 / s1), so sum uq <= U2 (1 + 2**-23)^2 + T/2
        < U2 + 1 + T/2, with U2 = 2**24 // Qv - 2 - T/2 (132038 for 8-bit V, T = 128): Qv * sum uq <= 2**24,
        so the single-row bmm o = uq @ V is exact (R1).
    y = o * ((max u * s1) / (wsum * U1 U2))   (~ sum_j w_j s_v,j v_j / sum_j w_j; 4 roundings)
    then c_proj on quant_rows(y) and the residual add (one rounding).
MLP: h = (zq @ Wfc^T) * s_col * a; GELU (ReLU^2 below) from a table on the grid 2**-k over [-R, R] (GELU(x) = x Phi(x),
    Phi by an exact integer series): index = trunc(h 2**k + R 2**k + 1/2) clamped to the table (the
    nearest grid point; h 2**k is exact), plus max(h - R, 0) so that above R (where GELU(R) = R in
    float32) it continues as the identity; below -R the table end (~ -5e-15). quant_rows, c_proj, add.
Head: l = (zq @ Wq_head^T) * s_col * (a * K_L); i = min(round(max l - l), N_L) (int64);
    e = EXP_L[i], EXP_L[i] = round(2**32 exp(-i / K_L)) (int64, 0 at the end); then in int64 numpy
    (exact): f = floor(e (2**24 - 256) / sum e) + 1, the leftover 2**24 - sum f (in [0, 256)) to the
    first largest f. Every f >= 1 and each row totals exactly 2**24, the coder's contract.
Failure mode: a NaN/inf in the activations turns into an invalid table index, which raises (it never
silently gives machine-dependent frequencies).

Two implementations of one arithmetic
=====================================
The torch ops of ``reference.TorchBackend`` are the reference, and the path on CUDA. A CPU cache is
stepped by ``cpu.CpuBackend`` instead: numba kernels that perform the same IEEE operations on the same
operands in the same order, with the same exact integer products, without torch's dispatch of about a
hundred small ops per layer. ``PortableModel.new_cache`` picks the backend by device (``reference=True`` asks
for the torch ops on a CPU); the cache belongs to that backend, which alone steps it. A backend reads
the model's public plan (flags, widths, ``matmul_dtypes``, ``qkv_true_units``, ``rope_cos_sin``) and the
device's ``Runtime``; it imports neither ``model`` nor the other backend.
``tests/test_portable.py`` holds the two equal bit for bit under every architecture and portable option,
and checks the kernels' machine code for fused multiply-adds; the cross-process tests run the kernels
compiled for the host and for a generic x86-64 (``NUMBA_CPU_NAME=generic``).

Bounds (checked in ``_check_bounds``): int8 linear layers in float32 for K <= 1040 (else float64),
head size <= 1040 for int8 q/k, block_size <= 512 (attention weight sums), U2 >= 1024 attention-weight
levels (v_bits <= 13 at T = 128). The architecture options below add none: their integer sums are the
norm statistics, exact for every width by the choice of p (``_ln_fixed_point_bits``, also for hs).

Architecture options
====================
``BytesGPTConfig`` selects them; the config is hashed into the fingerprint (with an arithmetic revision,
``_arithmetic_revision``), and an ``mlp`` or ``norm`` value not listed here is refused. Each option is
elementwise or reduces within one row or one (row, head), so R5 holds for every combination.
norm="rmsnorm" (ln_1, ln_2, ln_f): the LayerNorm fixed point above without the mean: xi = round(x r),
    E = sum xi^2 (float64, exact: E <= C 2**2p <= 2**53, R1), zq = quant_rows(xi * g) (or of xi with g
    folded into the next weight), a = 1 / (sqrt(E / C + eps 2**2p / m^2) * (Q / m_z)) (float64, R2),
    because x / sqrt(mean x^2 + eps) = xi / sqrt(E / C + eps r^2) when x = xi / r. Same 2**-p error.
mlp="relu2": g = clamp_min(h, 0) (exact, R3), then g * g (one correctly rounded multiply, R2): the float
    F.relu(h).square() of the same h. No table (none is stored). Then quant_rows, c_proj, as for GELU.
qk_norm: per head over hs, on q and k before the rotation, as gpt.py. From the true-unit h (below), per
    (row, head): m = max|h|, xi = round(h 2**p' / m) with p' = p for width hs (|xi| <= 2**p'), E = sum
    xi^2 (float64, exact: <= hs 2**2p' <= 2**53, R1), y = xi * g (stored gains q_norm.g / k_norm.g, one
    rounding), r = 1 / sqrt(E / hs + eps 2**2p' / m^2) (float64, R2): rms_norm(h) * g ~ y * r. y is
    rotated as above (the rotation commutes with the per-head factor r), quantized per (row, head), and
    its scale times r (one rounding) is the true scale.
value_residual: each layer after the first stores its v_mix (float32). Its true-unit v (per head, not
    rotated: the v heads have cos = 1, sin = 0) becomes v + v_mix * (v_first - v): a subtraction, a
    multiply and an add, each its own correctly rounded op (R2) in gpt.py's order (no lerp / FMA).
    v_first is the first layer's true-unit v of the same token (float32, before its quantization). The
    cache stores the quantized mixed v, as gpt.KVCache stores the mixed v.
tie_embeddings=False: nothing changes in the arithmetic: the head always is its own quantized tensor
    ``lm_head`` (from lm_head.weight), apart from the float embedding ``wte`` (transformer.wte.weight);
    a tied model just has the same weights under both names.
bias=True: a Linear's bias b is added after the output scaling, (acc * s_col) * scale_row + b (one more
    rounding). A LayerNorm bias beta is folded into the next Linear, W (z g + beta) + b = W (z g) + b' with
    b' = W beta + b from exact float64 products and CPython's correctly rounded ``math.fsum`` (no platform
    summation order), rounded once to float32 (``_fold_bias``); ln_f's beta becomes a head bias, added to
    the logits as b' K_L. RMSNorm has no bias.
True units: with qk_norm, value_residual or bias, q/k/v leave c_attn with the norm's row scale applied,
    h = (acc * s_col) * a (+ b) (one or two roundings), so that QK-norm's eps, the mixing and the bias see
    the true values; the default architecture keeps a aside (its bits are those of the first version).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math

import numpy as np
import torch

from ...errors import CheckpointError, ConfigError
from ...gpt import MLP_KINDS, NORM_KINDS
from . import cpu
from . import reference as reference_ops
from .reference import PortableCache
from .tables import build_tables, rope_cos_sin

__all__ = ["PortableModel", "PortableCache", "DEFAULT_OPTIONS", "FORMAT", "ieee_fp32_matmuls"]

FORMAT = "blm_portable_v1"
PRECISION = 24
TOTAL = 1 << PRECISION
TINY = 2.0 ** -100  # lower bound on every max|x| before a division (keeps Q / m finite in float32)
F32_EXACT = 2 ** 24
F64_EXACT = 2 ** 53

DEFAULT_OPTIONS = {
    "act_bits": 8,  # activations before linear layers (attn_in, attn_out, mlp_in, mlp_hidden, head_in)
    "mlp_hidden_bits": 8,  # activations entering the MLP down-projection (GELU output)
    "qk_bits": 8,  # q and k per (row, head)
    "v_bits": 8,  # v per (row, head)
    "fold_ln_gain": True,  # fold LayerNorm gains into the next weights before quantizing them (measured better)
    "exp_attn_per_nat": 64,  # attention exp table resolution K_A (entries per nat)
    "exp_logit_per_nat": 256,  # final exp table resolution K_L
    "gelu_log2_step": 9,  # GELU table grid 2**-k
    "gelu_range": 8,  # GELU table covers [-R, R]
}


# ================================================================================================
# Weight quantization (deterministic, CPU, float32)
# ================================================================================================

def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float32 -> (int8 (N, K), float32 scales (N,)); s = max|w|/127 (R3, R2), q = round(w / s)."""
    w = w.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(w).all():
        raise CheckpointError("the checkpoint has non-finite weights (NaN or inf); it cannot be quantized")
    m = w.abs().amax(dim=1, keepdim=True)  # exact
    s = m / torch.tensor(127.0)  # one correctly rounded division
    s = torch.where(m > 0, s, torch.ones_like(s))  # a zero row: q = 0, any scale
    q = torch.round(w / s)  # correctly rounded division, then exact round-half-even
    assert q.abs().max() <= 127
    return q.to(torch.int8), s[:, 0].contiguous()


def _finite(t: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise CheckpointError("the checkpoint has non-finite weights (NaN or inf); it cannot be quantized")
    return t


def _fold_bias(w: torch.Tensor, b: torch.Tensor | None, beta: torch.Tensor) -> torch.Tensor:
    """b'[n] = b[n] + sum_k W[n,k] beta[k] (a LayerNorm bias folded into the next Linear), as float32.

    Every product of two float32 values is exact in float64 (24 + 24 significand bits <= 53), so the
    float64 elementwise multiply is exact on any kernel; ``math.fsum`` then returns the correctly rounded
    sum of the exact terms (CPython's software algorithm), and the cast to float32 rounds once more.
    No platform-dependent summation order is involved (R1/R2)."""
    w = _finite(w).double()
    prod = (w * beta.double()[None, :]).numpy()  # exact products
    base = b.double().tolist() if b is not None else [0.0] * w.shape[0]
    return torch.tensor([math.fsum([base[n], *prod[n].tolist()]) for n in range(w.shape[0])],
                        dtype=torch.float64).float()


def _check_architecture(c: dict):
    """Refuse any architecture this module does not compute (rather than silently computing another one)."""
    if c.get("mlp", "gelu") not in MLP_KINDS:
        raise ConfigError(f"mlp={c.get('mlp')!r} is not supported by the portable numerics (only "
                          f"{', '.join(MLP_KINDS)}); compress with --numerics float")
    if c.get("norm", "layernorm") not in NORM_KINDS:
        raise ConfigError(f"norm={c.get('norm')!r} is not supported by the portable numerics (only "
                          f"{', '.join(NORM_KINDS)}); compress with --numerics float")


def _arithmetic_revision(c: dict) -> int:
    """1 for the default architecture (and untied heads), whose arithmetic is unchanged since the first
    version; 2 when an option is on that the first version ignored (it computed GELU / LayerNorm / no
    QK-norm / no value residual regardless). Hashed into the fingerprint for revision 2 only, so that a
    file compressed by the first version under the same config is refused as 'a different model'
    instead of decoding to garbage, while default-architecture fingerprints stay as they were."""
    options_on = (c.get("mlp", "gelu") != "gelu" or c.get("norm", "layernorm") != "layernorm"
                  or c.get("qk_norm", False) or c.get("value_residual", False) or c.get("bias", False))
    return 2 if options_on else 1


# ================================================================================================
# The model
# ================================================================================================

class Runtime:
    """Per-device float32 copies of the stored integers and constants (derived, not stored): what a backend
    computes with. Built once per device by ``PortableModel.runtime``; the backends only read it."""


class PortableModel:
    """Quantized BytesGPT whose ``step`` frequencies are bit-identical on every machine (see module doc)."""

    def __init__(self, config: dict, options: dict, tensors: dict[str, torch.Tensor]):
        self.config = dict(config)
        self.options = {**DEFAULT_OPTIONS, **options}
        self.tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        c = self.config
        _check_architecture(c)
        self.relu2 = c.get("mlp", "gelu") == "relu2"
        self.rms = c.get("norm", "layernorm") == "rmsnorm"
        self.qk_norm = bool(c.get("qk_norm", False))
        self.value_residual = bool(c.get("value_residual", False))
        self.bias = bool(c.get("bias", False))
        # q, k, v leave the c_attn matmul in true units (row scale applied, bias added) when an option
        # needs them there; the default keeps the LayerNorm row scale aside (it cancels per head)
        self.qkv_true_units = self.bias or self.qk_norm or self.value_residual
        self.n_layer, self.n_head, self.n_embd = c["n_layer"], c["n_head"], c["n_embd"]
        self.block_size, self.vocab_size = c["block_size"], c["vocab_size"]
        self.head_size = self.n_embd // self.n_head
        self.hidden = c.get("mlp_ratio", 4) * self.n_embd
        self._check_bounds()
        self._check_tensors()
        self._runtimes: dict[torch.device, Runtime] = {}
        self._backends: dict[tuple, object] = {}
        rope_F = self.tensors["rope.turns"].numpy().view(np.uint64)
        self._rope = (rope_F, self.tensors["rope.cos1"].numpy(), self.tensors["rope.sin1"].numpy(),
                      self.tensors["rope.cos2"].numpy(), self.tensors["rope.sin2"].numpy())
        self._exp_logit_np = self.tensors["table.exp_logit"].numpy()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_float(cls, model, **options) -> "PortableModel":
        """Quantize a float BytesGPT deterministically (any float dtype; computed on CPU in float32)."""
        opts = {**DEFAULT_OPTIONS, **options}
        unknown = set(opts) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}")
        cfg = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
        _check_architecture(cfg)
        f32 = lambda p: _finite(p.detach().to("cpu").to(torch.float32))  # exact upcast
        opt32 = lambda p: None if p is None else f32(p)  # a parameter the architecture may not have
        C, nh = cfg["n_embd"], cfg["n_head"]
        hs = C // nh
        fold = opts["fold_ln_gain"]
        t: dict[str, torch.Tensor] = {}
        t["wte"] = f32(model.transformer.wte.weight).clone()

        def add_linear(name, linear, gain=None, norm_beta=None):
            """Wq, s (and a float32 bias when the Linear has one or a LayerNorm bias is folded into it)."""
            w, b = f32(linear.weight), opt32(linear.bias)
            if norm_beta is not None:  # Linear(z g + beta) = W (z g) + (W beta + b): exact fold (_fold_bias)
                b = _fold_bias(w, b, norm_beta)
            if gain is not None:
                w = w * gain[None, :]  # one correctly rounded multiply per weight
            q, s = quantize_weight(w)
            t[name + ".q"], t[name + ".s"] = q, s
            if b is not None:
                t[name + ".b"] = b.contiguous()

        # the parameters by gpt.py's module tree (a Norm has a bias only as a LayerNorm with bias=True)
        for i, blk in enumerate(model.transformer.h):
            g1, g2 = f32(blk.ln_1.weight), f32(blk.ln_2.weight)
            if not fold:
                t[f"h.{i}.ln_1.g"], t[f"h.{i}.ln_2.g"] = g1.clone(), g2.clone()
            add_linear(f"h.{i}.attn.c_attn", blk.attn.c_attn, g1 if fold else None, opt32(blk.ln_1.bias))
            add_linear(f"h.{i}.attn.c_proj", blk.attn.c_proj)
            add_linear(f"h.{i}.mlp.c_fc", blk.mlp.c_fc, g2 if fold else None, opt32(blk.ln_2.bias))
            add_linear(f"h.{i}.mlp.c_proj", blk.mlp.c_proj)
            if blk.attn.q_norm is not None:  # per-head gains (hs,): applied after the normalization, not foldable
                t[f"h.{i}.attn.q_norm.g"] = f32(blk.attn.q_norm.weight).clone()
                t[f"h.{i}.attn.k_norm.g"] = f32(blk.attn.k_norm.weight).clone()
            if blk.attn.v_mix is not None:  # value residuals, layers after the first
                t[f"h.{i}.attn.v_mix"] = f32(blk.attn.v_mix).reshape(1).clone()
        ln_f = model.transformer.ln_f
        gf = f32(ln_f.weight)
        if not fold:
            t["ln_f.g"] = gf.clone()
        add_linear("lm_head", model.lm_head, gf if fold else None, opt32(ln_f.bias))  # tied or not: its own copy
        t.update(build_tables(hs, float(cfg["rope_base"]), opts, gelu=cfg.get("mlp", "gelu") == "gelu"))
        return cls(cfg, opts, t)

    def state_dict(self) -> dict:
        """Plain data: loads with ``torch.load(weights_only=True)``."""
        return {"format": FORMAT, "config": dict(self.config), "options": dict(self.options),
                "tensors": {k: v.clone() for k, v in self.tensors.items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PortableModel":
        if state.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} state dict (format {state.get('format')!r})")
        return cls(state["config"], state["options"], state["tensors"])

    def fingerprint(self) -> bytes:
        """sha256 of the format, config (which includes the architecture options), options, the arithmetic
        revision where it is not 1 (``_arithmetic_revision``) and every stored tensor (name, dtype, shape,
        bytes)."""
        h = hashlib.sha256()
        head = {"format": FORMAT, "config": self.config, "options": self.options}
        if _arithmetic_revision(self.config) > 1:
            head["revision"] = _arithmetic_revision(self.config)
        h.update(json.dumps(head, sort_keys=True).encode())
        for name in sorted(self.tensors):
            v = self.tensors[name]
            h.update(json.dumps([name, str(v.dtype), list(v.shape)]).encode())
            a = v.contiguous().numpy()
            h.update(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())  # little-endian bytes
        return h.digest()

    # ------------------------------------------------------------------ checks and runtime

    def _bits(self, name):
        b = self.options[name]
        if not 2 <= b <= 16:
            raise ValueError(f"{name} must be in [2, 16], got {b}")
        return (1 << (b - 1)) - 1

    def _mm_dtype(self, qmax: int, K: int):
        bound = qmax * 127 * K
        if bound <= F32_EXACT:
            return torch.float32
        if bound <= F64_EXACT:
            return torch.float64
        raise ValueError(f"integer matmul bound {bound} exceeds 2**53")

    def _check_bounds(self):
        qa, qh = self._bits("act_bits"), self._bits("mlp_hidden_bits")
        qk, qv = self._bits("qk_bits"), self._bits("v_bits")
        hs, T = self.head_size, self.block_size
        if qk * qk * hs > F32_EXACT:
            raise ConfigError(f"scores bound {qk}*{qk}*{hs} exceeds 2**24: head size {hs} is beyond the portable "
                              "numerics; compress with --numerics float")
        if T * (1 << 15) > F32_EXACT:
            raise ConfigError(f"block_size {T} > 512 is beyond the portable numerics (attention weight sums would "
                              "exceed 2**24); compress with --numerics float")
        # P.V: weights renormalized to sum <= U2 + 1 + T/2 (see _attention); need qv * that <= 2**24
        self._u1 = F32_EXACT // T  # U1 T <= 2**24: the first-stage sum is exact
        self._u2 = F32_EXACT // qv - 2 - T // 2  # qv (U2 + 1 + T/2) <= 2**24
        if self._u2 < 1024:
            raise ValueError(f"v_bits={self.options['v_bits']} leaves only {self._u2} levels for attention weights")
        self.matmul_dtypes = {"attn_in": self._mm_dtype(qa, self.n_embd), "attn_out": self._mm_dtype(qa, self.n_embd),
                    "mlp_in": self._mm_dtype(qa, self.n_embd), "mlp_hidden": self._mm_dtype(qh, self.hidden),
                    "head_in": self._mm_dtype(qa, self.n_embd)}

    def _check_tensors(self):
        """Every tensor the config's arithmetic needs is there (a state dict is refused up front, not at
        the first step, and never computed as another architecture)."""
        need = ["wte", "lm_head.q", "lm_head.s", "table.exp_attn", "table.exp_logit", "rope.turns"]
        need += ["table.gelu"] if not self.relu2 else []
        for i in range(self.n_layer):
            for lin in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                need += [f"h.{i}.{lin}.q", f"h.{i}.{lin}.s"] + ([f"h.{i}.{lin}.b"] if self.bias else [])
            need += [f"h.{i}.attn.q_norm.g", f"h.{i}.attn.k_norm.g"] if self.qk_norm else []
            need += [f"h.{i}.attn.v_mix"] if self.value_residual and i > 0 else []
        missing = [name for name in need if name not in self.tensors]
        if missing:
            raise ValueError(f"the portable state lacks tensors {missing[:6]} that its config needs")

    def runtime(self, device) -> Runtime:
        """The stored integers and constants as tensors on ``device`` (built once per device)."""
        device = torch.device(device)
        rt = self._runtimes.get(device)
        if rt is not None:
            return rt
        rt = Runtime()
        rt.device = device
        f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=device)
        f64 = lambda v: torch.tensor(v, dtype=torch.float64, device=device)
        T = self.tensors

        def wT(name, dtype):  # int8 (N, K) -> integer-valued (K, N) for x @ W^T (exact conversion)
            return T[name + ".q"].to(dtype).t().contiguous().to(device), T[name + ".s"].to(device)

        nh, hs = self.n_head, self.head_size
        opt = lambda name: T[name].to(device) if name in T else None
        rt.layers = []
        for i in range(self.n_layer):
            L = Runtime()
            L.w_attn, L.s_attn = wT(f"h.{i}.attn.c_attn", self.matmul_dtypes["attn_in"])
            L.w_aproj, L.s_aproj = wT(f"h.{i}.attn.c_proj", self.matmul_dtypes["attn_out"])
            L.w_fc, L.s_fc = wT(f"h.{i}.mlp.c_fc", self.matmul_dtypes["mlp_in"])
            L.w_mproj, L.s_mproj = wT(f"h.{i}.mlp.c_proj", self.matmul_dtypes["mlp_hidden"])
            L.g1 = T[f"h.{i}.ln_1.g"].to(device) if f"h.{i}.ln_1.g" in T else None
            L.g2 = T[f"h.{i}.ln_2.g"].to(device) if f"h.{i}.ln_2.g" in T else None
            for attr, name in (("b_attn", "attn.c_attn"), ("b_aproj", "attn.c_proj"), ("b_fc", "mlp.c_fc"),
                               ("b_mproj", "mlp.c_proj")):
                setattr(L, attr, opt(f"h.{i}.{name}.b"))
            L.g_qk = None
            if self.qk_norm:  # (2 nh, hs): q gains for the q heads, then k gains for the k heads
                L.g_qk = torch.cat([T[f"h.{i}.attn.q_norm.g"][None].expand(nh, hs),
                                    T[f"h.{i}.attn.k_norm.g"][None].expand(nh, hs)]).contiguous().to(device)
            L.v_mix = opt(f"h.{i}.attn.v_mix")  # (1,) float32, layers after the first
            rt.layers.append(L)
        rt.w_head, rt.s_head = wT("lm_head", self.matmul_dtypes["head_in"])
        rt.gf = opt("ln_f.g")
        rt.wte = T["wte"].to(device)
        rt.exp_attn = T["table.exp_attn"].to(device)
        rt.exp_logit = T["table.exp_logit"].to(device)
        rt.gelu = opt("table.gelu")
        rt.n_attn = float(T["table.exp_attn"].numel() - 1)
        rt.n_logit = float(T["table.exp_logit"].numel() - 1)
        # constants as tensors (R2: never divide by a Python scalar)
        rt.q_act, rt.q_hidden = (f32(float(self._bits(n))) for n in ("act_bits", "mlp_hidden_bits"))
        rt.q_qkv = f32([[float(self._bits("qk_bits"))]] * (2 * nh) + [[float(self._bits("v_bits"))]] * nh)  # (3nh, 1)
        rt.ln = {}
        for w in (self.n_embd, self.head_size):
            c = Runtime()
            p = _ln_fixed_point_bits(w)
            c.P, c.C = f32(float(2 ** p)), f32(float(w))
            c.invC = f64(1.0 / w)  # Python division, correctly rounded (exact for powers of two)
            c.K1 = f64(1e-5 * float(w) ** 2 * 4.0 ** p)  # eps C^2 2**2p, LayerNorm's eps = 1e-5
            c.K1r = f64(1e-5 * 4.0 ** p)  # eps 2**2p (RMSNorm, QK-norm: no mean, no factor C); exact scaling
            rt.ln[w] = c
        rt.one64 = f64(1.0)
        rt.att_scale = T["const.att_scale"].to(device)  # K_A / sqrt(hs), float32
        rt.logit_scale = T["const.logit_scale"].to(device)  # K_L, float32
        rt.b_head = opt("lm_head.b")  # a folded ln_f bias (LayerNorm with bias=True)
        if rt.b_head is not None:
            rt.b_head = rt.b_head * rt.logit_scale  # b K_L: one rounding (exact for a power-of-two K_L)
        rt.u1 = f32(float(self._u1))  # U1 T <= 2**24
        rt.u2 = f32(float(self._u2))  # qmax_v (U2 + 1 + T/2) <= 2**24
        rt.u12 = f32(float(self._u1) * float(self._u2))  # exact in float64 (< 2**53), rounded once to float32
        rt.tiny = TINY
        gk = self.options["gelu_log2_step"]
        rt.gelu_mul = f32(float(2 ** gk))  # power of two: exact multiply
        rt.gelu_off = f32(float(self.options["gelu_range"] * 2 ** gk) + 0.5)  # exact in float32
        rt.gelu_hi = float(2 * self.options["gelu_range"] * 2 ** gk) + 0.5
        rt.gelu_R = f32(float(self.options["gelu_range"]))
        self._runtimes[device] = rt
        return rt

    def rope_cos_sin(self, pos: int) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin (hs/2,) float32 of the rotary angles at position ``pos`` (``tables.rope_cos_sin``)."""
        return rope_cos_sin(self._rope, pos)

    # ------------------------------------------------------------------ the step, by a backend

    def _backend(self, device, reference: bool):
        """The backend for ``device``: the numba kernels on a CPU, the torch ops on CUDA or when asked for."""
        device = torch.device(device)
        use_torch = reference or device.type != "cpu"
        backend = self._backends.get((device, use_torch))
        if backend is None:
            backend = (reference_ops.TorchBackend if use_torch else cpu.CpuBackend)(self, self.runtime(device))
            self._backends[(device, use_torch)] = backend
        return backend

    def new_cache(self, batch_size: int, device="cpu", reference: bool = False):
        """A cache for ``batch_size`` streams on ``device``; it belongs to the backend that steps it (on a CPU
        the numba kernels, or with ``reference=True`` the torch ops, which are the CUDA path)."""
        return self._backend(device, reference).new_cache(batch_size)

    def step_indices(self, idx: torch.Tensor, cache) -> torch.Tensor:
        """Feed one byte per stream; returns the (B, 256) int64 exp-table indices of the next-byte
        distribution (on the cache's device). ``step`` turns them into frequencies."""
        idx = idx.to(device=cache.device, dtype=torch.long)
        if idx.shape != (cache.batch_size,):
            raise ValueError(f"idx must have shape ({cache.batch_size},), got {tuple(idx.shape)}")
        return self._backend(cache.device, isinstance(cache, PortableCache)).step_indices(idx, cache)

    def step(self, idx: torch.Tensor, cache) -> np.ndarray:
        """Feed one byte per stream (idx (B,)), return next-byte frequencies: int64 numpy (B, 256),
        each row totalling 2**24 with every entry >= 1."""
        with ieee_fp32_matmuls():
            ind = self.step_indices(idx, cache)
        return self.freqs_from_indices(ind.cpu().numpy())

    def freqs_from_indices(self, ind: np.ndarray) -> np.ndarray:
        """Exact int64 arithmetic: f = floor(e (2**24 - V) / sum e) + 1, leftover to the first max
        (``cpu.freqs_from_indices``, for the indices of every backend)."""
        ind = np.ascontiguousarray(ind, dtype=np.int64)
        f = np.empty(ind.shape, np.int64)
        cpu.freqs_from_indices(ind, self._exp_logit_np, TOTAL, f)
        return f


def _ln_fixed_point_bits(C: int) -> int:
    """p for LayerNorm's fixed point xi = round(x 2**p / max|x|): C 2**p <= 2**23 (S exact in float32,
    |C xi - S| <= 2**24) and C^3 2**2p <= 2**53 (sum of (C xi - S)^2 exact in float64). 16 for C = 128."""
    lc = math.ceil(math.log2(C))
    return min(23 - lc, (53 - 3 * lc) // 2)


@contextlib.contextmanager
def ieee_fp32_matmuls():
    """Force IEEE float32 matmuls (no TF32 / bf16 inputs) for the duration; restore the caller's setting.

    The int8 x int8 products would survive TF32 (11-bit significand) and even bf16, but the attention
    weights reach 2**17, so the P.V bmm needs true float32 inputs. Nothing is touched when the
    setting already is IEEE (the default), so there is no side effect in the common case.
    """
    saved = []
    generic = getattr(torch.backends, "fp32_precision", None)  # what "none" below inherits
    for mod in (getattr(torch.backends.cuda, "matmul", None), getattr(torch.backends.mkldnn, "matmul", None)):
        prev = getattr(mod, "fp32_precision", None)
        effective = generic if prev == "none" else prev
        if effective not in (None, "ieee", "none"):
            mod.fp32_precision = "ieee"
            saved.append((mod, "fp32_precision", prev))
    if not saved and hasattr(torch.backends.cuda, "matmul") and not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        if torch.backends.cuda.matmul.allow_tf32:  # older torch: the legacy flag
            torch.backends.cuda.matmul.allow_tf32 = False
            saved.append((torch.backends.cuda.matmul, "allow_tf32", True))
    try:
        yield
    finally:
        for mod, attr, prev in saved:
            setattr(mod, attr, prev)


