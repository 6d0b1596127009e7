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
The torch ops of ``PortableModel`` are the reference, and the path on CUDA. On a CPU cache,
``step_indices`` runs ``portable_cpu`` instead: numba kernels that perform the same IEEE operations on
the same operands in the same order, between the same exact torch matmuls, without torch's dispatch of
about a hundred small ops per layer (at 28 streams, 2 threads: 1.2-1.5 ms a step against 3-4 ms).
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
import functools
import hashlib
import json
import math
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from . import portable_cpu

__all__ = ["PortableModel", "PortableCache", "DEFAULT_OPTIONS", "FORMAT"]

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
# Tables, from exact software arithmetic only (R4)
# ================================================================================================

def _dec_pi(prec: int) -> Decimal:
    """pi to ``prec`` digits (the decimal module's documented recipe)."""
    with localcontext() as ctx:
        ctx.prec = prec + 5
        lasts, t, s, n, na, d, da = 0, Decimal(3), Decimal(3), 1, 0, 0, 24
        while s != lasts:
            lasts = s
            n, na = n + na, na + 8
            d, da = d + da, da + 32
            t = (t * n) / d
            s += t
    with localcontext() as ctx:
        ctx.prec = prec
        return +s


def _dec_cos_sin(x: Decimal, prec: int) -> tuple[Decimal, Decimal]:
    """cos and sin of a small |x| <= 2 pi by their Taylor series, in ``decimal``."""
    with localcontext() as ctx:
        ctx.prec = prec + 10
        x2 = x * x
        c, s = Decimal(1), x
        tc, ts = Decimal(1), x
        n = 0
        eps = Decimal(10) ** (-(prec + 5))
        while abs(tc) > eps or abs(ts) > eps:
            n += 2
            tc = -tc * x2 / (n * (n - 1))
            ts = -ts * x2 / (n * (n + 1))
            c += tc
            s += ts
    return c, s


def _to_float(d: Decimal) -> float:
    """Decimal -> float64 via its exact decimal string (CPython's own correctly rounded dtoa)."""
    return float(str(d))


def exp_table(per_nat: int, scale_log2: int) -> list[int]:
    """[round_half_even(2**scale_log2 * exp(-i / per_nat)) for i = 0 ..] until the entries reach 0,
    plus one trailing 0 (the clamp target). ``Decimal.exp`` is correctly rounded."""
    out = []
    with localcontext() as ctx:
        ctx.prec = 50
        scale = Decimal(2) ** scale_log2
        i = 0
        while True:
            v = int(((Decimal(-i) / Decimal(per_nat)).exp() * scale).to_integral_value(ROUND_HALF_EVEN))
            out.append(v)
            if v == 0:
                return out
            i += 1


def gelu_table(log2_step: int, bound: int) -> list[float]:
    """GELU(x) = x Phi(x) on the grid x = j / 2**log2_step, |x| <= bound, as float64.

    Phi(x) - 1/2 = (1/sqrt(2 pi)) sum_n (-1)^n x^(2n+1) / (2^n n! (2n+1)), summed in 200-bit fixed
    point with Python integers (exact floor divisions); 1/sqrt(2 pi) from ``decimal``; the result
    num/den converted by CPython's correctly rounded integer true division.
    """
    FB = 200
    with localcontext() as ctx:
        ctx.prec = 80
        c = int((Decimal(1) / (2 * _dec_pi(80)).sqrt()) * (Decimal(2) ** FB))  # 1/sqrt(2 pi) in 2**-200 units
    n_half = bound << log2_step
    out = []
    for j in range(-n_half, n_half + 1):
        a = abs(j)
        # series in units of 2**-FB for x = a / 2**log2_step >= 0: t_n = x^(2n+1) / (2^n n!)
        t = (a << FB) >> log2_step
        acc = t
        n = 0
        a2 = a * a
        den2 = 1 << (2 * log2_step)
        while t:
            n += 1
            t = (t * a2) // (2 * n * den2)
            term = t // (2 * n + 1)
            acc = acc - term if n % 2 else acc + term
        phi_minus_half = (acc * c) >> FB  # units 2**-FB
        phi = (1 << (FB - 1)) + phi_minus_half  # Phi(|x|)
        if j < 0:
            phi = (1 << FB) - phi  # Phi(-x) = 1 - Phi(x)
        # gelu = x * Phi = j * phi / (2**log2_step * 2**FB)
        out.append((j * phi) / (1 << (FB + log2_step)))  # correctly rounded int / int
    return out


def rope_tables(head_size: int, base: float) -> tuple[list[int], list[float], list[float], list[float], list[float]]:
    """(F_i, cos1, sin1, cos2, sin2): F_i = round(2**64 * theta_i / (2 pi)) mod 2**64 for theta_i =
    base**(-2i/hs); cos1/sin1[j] = cos/sin(2 pi j / 2**10); cos2/sin2[k] = cos/sin(2 pi k / 2**20)."""
    prec = 60
    pi = _dec_pi(prec)
    F = []
    with localcontext() as ctx:
        ctx.prec = prec
        lnb = Decimal(base).ln()  # Decimal(float) is exact
        for i in range(head_size // 2):
            theta = (lnb * Decimal(-2 * i) / Decimal(head_size)).exp()
            turns = theta / (2 * pi)
            F.append(int((turns * (Decimal(2) ** 64)).to_integral_value(ROUND_HALF_EVEN)) % (1 << 64))
    c1, s1, c2, s2 = [], [], [], []
    for j in range(1024):
        with localcontext() as ctx:
            ctx.prec = prec
            c, s = _dec_cos_sin(2 * pi * j / Decimal(1024), prec)
        c1.append(_to_float(c)); s1.append(_to_float(s))
        with localcontext() as ctx:
            ctx.prec = prec
            c, s = _dec_cos_sin(2 * pi * j / Decimal(1 << 20), prec)
        c2.append(_to_float(c)); s2.append(_to_float(s))
    return F, c1, s1, c2, s2


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


MLP_KINDS = ("gelu", "relu2")
NORM_KINDS = ("layernorm", "rmsnorm")


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

class PortableCache:
    """Rolling K/V cache of integer-valued float32 and per-slot scales; slot = pos % block_size.

    Per layer: ``k`` (B*nh, hs, T) quantized keys, stored transposed (the score bmm is then a plain
    row-times-matrix product), ``v`` (B*nh, T, hs) quantized values, ``sk``/``sv`` (B*nh, 1, T) their
    scales (true value = integer * scale). Slots fill in order; after T bytes the oldest is overwritten.
    The CPU kernels keep their working buffers with the cache (``portable_cpu._workspace``).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, block_size: int, head_size: int, hidden: int,
                 device):
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        bh = batch_size * n_head
        z = lambda *shape: [torch.zeros(shape, dtype=torch.float32, device=self.device) for _ in range(n_layer)]
        self.k = z(bh, head_size, block_size)
        self.v = z(bh, block_size, head_size)
        self.sk = z(bh, 1, block_size)
        self.sv = z(bh, 1, block_size)
        # reusable int64 buffer for table indices (the largest user: the MLP hidden, B * hidden)
        self.ibuf = torch.empty(max(bh * block_size, batch_size * hidden), dtype=torch.int64, device=self.device)
        self.pos = 0


class _Runtime:
    """Per-device float32 copies of the stored integers and constants (derived, not stored)."""


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
        self._qkv_true_units = self.bias or self.qk_norm or self.value_residual
        self.n_layer, self.n_head, self.n_embd = c["n_layer"], c["n_head"], c["n_embd"]
        self.block_size, self.vocab_size = c["block_size"], c["vocab_size"]
        self.head_size = self.n_embd // self.n_head
        self.hidden = c.get("mlp_ratio", 4) * self.n_embd
        self._check_bounds()
        self._check_tensors()
        self._runtimes: dict[torch.device, _Runtime] = {}
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
        sd = {k: v.detach().to("cpu").to(torch.float32) for k, v in model.state_dict().items()}  # exact upcast
        C, nh = cfg["n_embd"], cfg["n_head"]
        hs = C // nh
        fold = opts["fold_ln_gain"]
        linear_bias = bool(cfg.get("bias", False))
        norm_bias = linear_bias and cfg.get("norm", "layernorm") == "layernorm"  # RMSNorm has no bias
        t: dict[str, torch.Tensor] = {}
        t["wte"] = _finite(sd["transformer.wte.weight"]).clone()

        def add_linear(name, key, gain=None, norm_beta=None):
            """Wq, s (and a float32 bias when the Linear has one or a LayerNorm bias is folded into it)."""
            w = sd[key + ".weight"]
            b = _finite(sd[key + ".bias"]) if linear_bias and key + ".bias" in sd else None
            if norm_beta is not None:  # Linear(z g + beta) = W (z g) + (W beta + b): exact fold (_fold_bias)
                b = _fold_bias(w, b, _finite(norm_beta))
            if gain is not None:
                w = w * gain[None, :]  # one correctly rounded multiply per weight
            q, s = quantize_weight(w)
            t[name + ".q"], t[name + ".s"] = q, s
            if b is not None:
                t[name + ".b"] = b.contiguous()

        for i in range(cfg["n_layer"]):
            p = f"transformer.h.{i}."
            g1, g2 = _finite(sd[p + "ln_1.weight"]), _finite(sd[p + "ln_2.weight"])
            be1 = sd[p + "ln_1.bias"] if norm_bias else None
            be2 = sd[p + "ln_2.bias"] if norm_bias else None
            if not fold:
                t[f"h.{i}.ln_1.g"], t[f"h.{i}.ln_2.g"] = g1.clone(), g2.clone()
            add_linear(f"h.{i}.attn.c_attn", p + "attn.c_attn", g1 if fold else None, be1)
            add_linear(f"h.{i}.attn.c_proj", p + "attn.c_proj")
            add_linear(f"h.{i}.mlp.c_fc", p + "mlp.c_fc", g2 if fold else None, be2)
            add_linear(f"h.{i}.mlp.c_proj", p + "mlp.c_proj")
            if cfg.get("qk_norm", False):  # per-head gains (hs,): applied after the normalization, not foldable
                t[f"h.{i}.attn.q_norm.g"] = _finite(sd[p + "attn.q_norm.weight"]).clone()
                t[f"h.{i}.attn.k_norm.g"] = _finite(sd[p + "attn.k_norm.weight"]).clone()
            if cfg.get("value_residual", False) and i > 0:
                t[f"h.{i}.attn.v_mix"] = _finite(sd[p + "attn.v_mix"]).reshape(1).clone()
        gf = _finite(sd["transformer.ln_f.weight"])
        if not fold:
            t["ln_f.g"] = gf.clone()
        add_linear("lm_head", "lm_head", gf if fold else None,
                   sd["transformer.ln_f.bias"] if norm_bias else None)  # untied or tied: its own quantized copy
        t.update(_build_tables(hs, float(cfg["rope_base"]), opts, gelu=cfg.get("mlp", "gelu") == "gelu"))
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
        self._dt = {"attn_in": self._mm_dtype(qa, self.n_embd), "attn_out": self._mm_dtype(qa, self.n_embd),
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

    def _runtime(self, device) -> _Runtime:
        device = torch.device(device)
        rt = self._runtimes.get(device)
        if rt is not None:
            return rt
        rt = _Runtime()
        f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=device)
        f64 = lambda v: torch.tensor(v, dtype=torch.float64, device=device)
        T = self.tensors

        def wT(name, dtype):  # int8 (N, K) -> integer-valued (K, N) for x @ W^T (exact conversion)
            return T[name + ".q"].to(dtype).t().contiguous().to(device), T[name + ".s"].to(device)

        nh, hs = self.n_head, self.head_size
        opt = lambda name: T[name].to(device) if name in T else None
        rt.layers = []
        for i in range(self.n_layer):
            L = _Runtime()
            L.w_attn, L.s_attn = wT(f"h.{i}.attn.c_attn", self._dt["attn_in"])
            L.w_aproj, L.s_aproj = wT(f"h.{i}.attn.c_proj", self._dt["attn_out"])
            L.w_fc, L.s_fc = wT(f"h.{i}.mlp.c_fc", self._dt["mlp_in"])
            L.w_mproj, L.s_mproj = wT(f"h.{i}.mlp.c_proj", self._dt["mlp_hidden"])
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
        rt.w_head, rt.s_head = wT("lm_head", self._dt["head_in"])
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
            c = _Runtime()
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

    def new_cache(self, batch_size: int, device="cpu") -> PortableCache:
        return PortableCache(self.n_layer, batch_size, self.n_head, self.block_size, self.head_size, self.hidden,
                            device)

    # ------------------------------------------------------------------ building blocks
    #
    # In-place ops (x.mul_(y), ...) are used on temporaries this code owns: an in-place op computes the
    # same correctly rounded result as its out-of-place form, and it avoids allocating a fresh
    # 0.5-1 MB buffer per op at large B (glibc then returns them to the OS and page-faults them back,
    # which cost ~8 ms per step at B=245). Inputs that belong to the caller (the residual x, the cache,
    # the weights) are never modified in place.

    @staticmethod
    def _quant_rows_(x: torch.Tensor, qmax: torch.Tensor, tiny: float):
        """Per-row (last dim) symmetric quantization, *in place* on x: returns (xq, scale), x ~ xq * scale.

        m = max|x| exact; inv = Q / m and scale = m / Q are single correctly rounded divisions (R2);
        x * inv rounds once and |x * inv| <= Q (1 + 2**-23), so round() lands in [-Q, Q] (R3).
        """
        m = x.abs().amax(dim=-1, keepdim=True).clamp_min_(tiny)
        return x.mul_(qmax / m).round_(), m / qmax

    def _norm_quant(self, x: torch.Tensor, g, rt: _Runtime, qmax: torch.Tensor):
        """LayerNorm(x) * g, or RMSNorm(x) * g, quantized per row: (zq integer-valued float32 (B, C), a (B, 1))
        with Norm(x) ~ zq * a. Integer statistics, exact in any summation order (module docstring)."""
        ln = rt.ln[x.shape[-1]]  # constants for this width
        m = x.abs().amax(dim=-1, keepdim=True).clamp_min_(rt.tiny)  # exact
        xi = (x * (ln.P / m)).round_()  # integers, |xi| <= 2**p (one rounding in P / m, one in x * .)
        if self.rms:
            # RMSNorm: no mean. E = sum xi^2 exact (R1, float64): <= C 2**2p <= 2**53
            xc = xi
            xd = xi.double()
            E = xd.mul_(xd).sum(dim=-1, keepdim=True)
            K1 = ln.K1r
        else:
            S = xi.sum(dim=-1, keepdim=True)  # exact (R1): |S| <= C 2**p <= 2**23
            xc = xi.mul_(ln.C).sub_(S)  # C xi - S = C (xi - mean xi): exact integers, |xc| <= 2**24
            xd = xc.double()
            E = xd.mul_(xd).sum(dim=-1, keepdim=True)  # exact (R1, float64): C^2 sum (xi - mean)^2 <= C^3 2**2p
            K1 = ln.K1
        if g is not None:
            xc.mul_(g)  # one rounding per element
        mz = xc.abs().amax(dim=-1, keepdim=True).clamp_min_(rt.tiny)
        inv = qmax / mz
        zq = xc.mul_(inv).round_()
        # With x ~ xi / r (r = 2**p / m):  LN: (x - mean) / sqrt(var + eps) = xc / sqrt(E / C + eps C^2 r^2),
        # eps C^2 r^2 = K1 / m^2 with K1 = eps C^2 2**2p;  RMS: x / sqrt(mean x^2 + eps) = xi / sqrt(E / C + eps r^2),
        # eps r^2 = K1r / m^2 with K1r = eps 2**2p. float64, correctly rounded ops (R2).
        md = m.double()
        v = E.mul_(ln.invC).add_(K1 / md.mul_(md))
        a = rt.one64 / v.sqrt_().mul_(inv.double())  # Norm(x) ~ zq * a
        return zq, a.float()

    @staticmethod
    def _qk_norm_(h: torch.Tensor, g: torch.Tensor, rt: _Runtime) -> torch.Tensor:
        """QK-norm, in place on h (B, 2 nh, hs), the true-unit queries and keys: h becomes y = xi * g with
        integer xi = round(h 2**p / max|h|) per (row, head); returns r (B, 2 nh, 1) float32 with
        rms_norm(h) * g ~ y * r. The same fixed point as ``_norm_quant`` over the head size, no mean:
        E = sum xi^2 <= hs 2**2p <= 2**53 is exact in float64 in any order (R1); r = 1 / sqrt(E / hs +
        eps 2**2p / m^2) in correctly rounded float64 ops (R2). y is not quantized here: the rotation
        follows (it commutes with the per-head factor r), then the per-(row, head) quantization."""
        ln = rt.ln[h.shape[-1]]
        m = h.abs().amax(dim=-1, keepdim=True).clamp_min_(rt.tiny)  # exact
        xi = h.mul_(ln.P / m).round_()  # integers, |xi| <= 2**p
        xd = xi.double()
        E = xd.mul_(xd).sum(dim=-1, keepdim=True)  # exact (R1, float64)
        md = m.double()
        v = E.mul_(ln.invC).add_(ln.K1r / md.mul_(md))
        xi.mul_(g)  # the gain: one rounding per element
        return (rt.one64 / v.sqrt_()).float()

    @staticmethod
    def _linear(xq, w, dtype):
        """Exact integer matmul (R1) in the dtype chosen by _mm_dtype; returns float32 (exact or one rounding)."""
        if dtype == torch.float32:
            return torch.mm(xq, w)
        return torch.mm(xq.to(dtype), w).float()

    @staticmethod
    def _table_(t: torch.Tensor, table: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
        """table[t] for a float tensor t >= 0 (R3): the float -> int64 conversion truncates (= floor for
        t >= 0), then a gather. Large index tensors go into a reusable buffer (no page faults)."""
        if t.numel() < 32768:
            idx = t.long()
        else:
            idx = buf[: t.numel()].view(t.shape)
            idx.copy_(t)
        return table.index_select(0, idx.view(-1)).view(t.shape)

    def _mlp_act(self, h: torch.Tensor, rt: _Runtime, buf: torch.Tensor) -> torch.Tensor:
        """The MLP activation, in place on h. ReLU^2: clamp (exact, R3), then one correctly rounded multiply
        (R2), as F.relu(h).square(). GELU by table (R4): nearest grid point, identity above the table range."""
        if self.relu2:
            h = h.clamp_min_(0.0)
            return h.mul_(h)
        tail = (h - rt.gelu_R).clamp_min_(0.0)  # h - R above the table, else +0
        t = h.mul_(rt.gelu_mul).add_(rt.gelu_off).clamp_(0.0, rt.gelu_hi)  # exact scale, one rounding
        y = self._table_(t, rt.gelu, buf)  # trunc(h 2**k + N + 1/2): the nearest grid point
        return y.add_(tail)  # GELU(R) = R in float32, so R + (h - R) continues the identity

    def _rope_cos_sin(self, pos: int) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin (hs/2,) float32 of the rotary angles pos * theta_i, from the tables (module doc)."""
        F, c1, s1, c2, s2 = self._rope
        turn = np.array([pos], dtype=np.uint64) * F  # exact mod 2**64 (uint64 wraps)
        j = (turn >> np.uint64(54)).astype(np.int64)
        k = ((turn >> np.uint64(44)) & np.uint64(1023)).astype(np.int64)
        ca, sa, cb, sb = c1[j], s1[j], c2[k], s2[k]
        cos = (ca * cb - sa * sb).astype(np.float32)  # float64 IEEE ops, one rounding each
        sin = (sa * cb + ca * sb).astype(np.float32)
        return cos, sin

    def _rope_vectors(self, pos: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cosF, sinF (3C,) float32 for the shared position: q, k heads rotated, v heads identity."""
        cos, sin = self._rope_cos_sin(pos)
        nh = self.n_head
        cos_h = np.concatenate([cos, cos])
        sin_h = np.concatenate([-sin, sin])
        cosF = np.concatenate([np.tile(cos_h, 2 * nh), np.ones(nh * self.head_size, np.float32)])
        sinF = np.concatenate([np.tile(sin_h, 2 * nh), np.zeros(nh * self.head_size, np.float32)])
        return torch.from_numpy(cosF).to(device), torch.from_numpy(sinF).to(device)

    def _attention(self, x, L, rt, cache, layer, rope, slot, filled, v_first):
        """One attention sub-block; returns (x + attn(x), v_first). v_first is the first layer's true-unit
        values (B, nh, hs) for value residuals (None otherwise, and on entry to the first layer)."""
        B, C, nh, hs = x.shape[0], self.n_embd, self.n_head, self.head_size
        zq, a = self._norm_quant(x, L.g1, rt, rt.q_act)
        h = self._linear(zq, L.w_attn, self._dt["attn_in"]).mul_(L.s_attn)  # (B, 3C)
        r_qk = None
        if self._qkv_true_units:
            h.mul_(a)  # true units: one rounding (the row scale a is then not applied again below)
            if L.b_attn is not None:
                h.add_(L.b_attn)  # Linear bias (plus the folded LayerNorm bias): one rounding
            heads = h.view(B, 3, nh, hs)
            if self.qk_norm:  # per-head RMS norm of q and k, before the rotation (as gpt.py)
                r_qk = self._qk_norm_(h.view(B, 3 * nh, hs)[:, : 2 * nh], L.g_qk, rt)
            if self.value_residual:
                v = heads[:, 2]  # (B, nh, hs) view into h
                if v_first is None:  # the first layer: its own values, unmixed
                    v_first = v.clone()
                else:  # v + v_mix (v_first - v): three correctly rounded ops, as gpt.py (no lerp / FMA, R2)
                    d = torch.sub(v_first, v).mul_(L.v_mix)
                    v.add_(d)
        # else: the row scale a is kept aside (it cancels in the per-head quantization) and applied to the scales
        cosF, sinF = rope
        sw = h.view(B, 3 * nh, hs).roll(hs // 2, -1).view(B, 3 * C).mul_(sinF)  # halves swapped (exact)
        rot = h.mul_(cosF).add_(sw)  # (x1 c - x2 s, x2 c + x1 s); v: x * 1 + y * 0 = x exactly
        rq, sc = self._quant_rows_(rot.view(B, 3 * nh, hs), rt.q_qkv, rt.tiny)  # per (row, head)
        if not self._qkv_true_units:
            sc = sc.mul_(a.view(B, 1, 1))  # true scale per (row, head)
        elif r_qk is not None:
            sc[:, : 2 * nh].mul_(r_qk)  # q, k: the QK-norm factor (the gain is already in y); one rounding
        sc = sc.view(B, 3, nh)
        rq = rq.view(B, 3, nh, hs)
        kc, vc, skc, svc = cache.k[layer], cache.v[layer], cache.sk[layer], cache.sv[layer]
        kc[:, :, slot] = rq[:, 1].reshape(B * nh, hs)  # exact copies into the rolling slot
        vc[:, slot] = rq[:, 2].reshape(B * nh, hs)  # with value residuals: the mixed values, as gpt.KVCache
        skc[:, 0, slot] = sc[:, 1].reshape(B * nh)
        svc[:, 0, slot] = sc[:, 2].reshape(B * nh)
        q = rq[:, 0].reshape(B * nh, 1, hs)
        lg = torch.bmm(q, kc[:, :, :filled])  # (B nh, 1, L) exact integers (R1): |.| <= 127^2 hs
        fq = sc[:, 0].reshape(B * nh, 1, 1).mul(rt.att_scale)  # s_q K_A / sqrt(hs), one rounding
        lg.mul_(skc[:, :, :filled]).mul_(fq)  # two roundings
        mx = lg.amax(dim=-1, keepdim=True)
        d = lg.neg_().add_(mx).round_().clamp_max_(rt.n_attn)  # max - l >= 0 (one rounding), index
        w = self._table_(d, rt.exp_attn, cache.ibuf)  # integers <= 2**15 (R4)
        wsum = w.sum(dim=-1, keepdim=True)  # exact (R1): <= 2**15 T <= 2**24
        # Per-key V scales are folded into the weights, which are then re-quantized in two exact stages:
        # u1 = round(u * U1 / max u) in [0, U1] with U1 T <= 2**24 so that s1 = sum u1 is exact (R1);
        # uq = round(u1 * U2 / s1), so sum uq <= U2 + 1 + T/2 and 127 * sum uq <= 2**24: the single-row
        # bmm with the integer V is exact (R1).
        u = w.mul_(svc[:, :, :filled])  # one rounding
        um = u.amax(dim=-1, keepdim=True).clamp_min_(rt.tiny)
        u1 = u.mul_(rt.u1 / um).round_()
        s1 = u1.sum(dim=-1, keepdim=True)  # exact, >= U1 > 0
        uq = u1.mul_(rt.u2 / s1).round_()
        o = torch.bmm(uq, vc[:, :filled])  # (B nh, 1, hs), exact (R1)
        # y = sum_j w_j s_v,j v_j / sum_j w_j = o * (max u * s1) / (U1 U2 sum w)
        y = o.mul_(um.mul_(s1).div_(wsum.mul_(rt.u12)))  # three roundings in the factor, one in the product
        yq, sy = self._quant_rows_(y.view(B, C), rt.q_act, rt.tiny)
        out = self._linear(yq, L.w_aproj, self._dt["attn_out"]).mul_(L.s_aproj).mul_(sy)
        if L.b_aproj is not None:
            out.add_(L.b_aproj)  # one rounding
        return out.add_(x), v_first  # x + out: one rounding (addition commutes exactly)

    def _mlp(self, x, L, rt, cache):
        zq, a = self._norm_quant(x, L.g2, rt, rt.q_act)
        h = self._linear(zq, L.w_fc, self._dt["mlp_in"]).mul_(L.s_fc).mul_(a)
        if L.b_fc is not None:
            h.add_(L.b_fc)  # Linear bias (plus the folded LayerNorm bias): one rounding
        g = self._mlp_act(h, rt, cache.ibuf)
        gq, sg = self._quant_rows_(g, rt.q_hidden, rt.tiny)
        out = self._linear(gq, L.w_mproj, self._dt["mlp_hidden"]).mul_(L.s_mproj).mul_(sg)
        if L.b_mproj is not None:
            out.add_(L.b_mproj)
        return out.add_(x)

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step_indices(self, idx: torch.Tensor, cache: PortableCache, reference: bool = False) -> torch.Tensor:
        """Feed one byte per stream; returns the (B, 256) int64 exp-table indices of the next-byte
        distribution (on the cache's device). ``step`` turns them into frequencies.

        A CPU cache runs the numba kernels of ``portable_cpu`` (the same arithmetic, op for op, without
        torch's per-op dispatch); ``reference=True`` or a CUDA cache runs the torch ops below. Both keep
        their state in the same cache tensors, so either may take any step."""
        device = cache.device
        rt = self._runtime(device)
        idx = idx.to(device=device, dtype=torch.long)
        if idx.shape != (cache.batch_size,):
            raise ValueError(f"idx must have shape ({cache.batch_size},), got {tuple(idx.shape)}")
        if device.type == "cpu" and not reference:
            return torch.from_numpy(portable_cpu.step_indices(self, rt, idx.numpy(), cache))
        pos = cache.pos
        slot = pos % cache.block_size
        filled = min(pos + 1, cache.block_size)
        rope = self._rope_vectors(pos, device)
        x = rt.wte.index_select(0, idx)  # (B, C) exact gather
        v_first = None
        for layer, L in enumerate(rt.layers):
            x, v_first = self._attention(x, L, rt, cache, layer, rope, slot, filled, v_first)
            x = self._mlp(x, L, rt, cache)
        zq, a = self._norm_quant(x, rt.gf, rt, rt.q_act)
        lg = self._linear(zq, rt.w_head, self._dt["head_in"]).mul_(rt.s_head).mul_(a.mul_(rt.logit_scale))
        if rt.b_head is not None:
            lg.add_(rt.b_head)  # the folded ln_f bias, times K_L: one rounding
        mx = lg.amax(dim=-1, keepdim=True)
        cache.pos = pos + 1
        return lg.neg_().add_(mx).round_().clamp_max_(rt.n_logit).long()

    def step(self, idx: torch.Tensor, cache: PortableCache, reference: bool = False) -> np.ndarray:
        """Feed one byte per stream (idx (B,)), return next-byte frequencies: int64 numpy (B, 256),
        each row totalling 2**24 with every entry >= 1. ``reference``: see ``step_indices``."""
        with ieee_fp32_matmuls():
            ind = self.step_indices(idx, cache, reference)
        return self.freqs_from_indices(ind.cpu().numpy())

    def freqs_from_indices(self, ind: np.ndarray) -> np.ndarray:
        """Exact int64 arithmetic (numpy): f = floor(e (2**24 - V) / sum e) + 1, leftover to the first max."""
        e = self._exp_logit_np[ind]  # (B, V) int64 <= 2**32; IndexError on NaN-derived indices
        V = e.shape[1]
        tot = e.sum(axis=1, keepdims=True)  # exact, >= 2**32 (the max entry has index 0)
        f = (e * (TOTAL - V)) // tot  # <= 2**56, exact floor division
        f += 1
        top = f.argmax(axis=1)  # first maximum
        rows = np.arange(f.shape[0])
        f[rows, top] += TOTAL - f.sum(axis=1)  # leftover in [0, V)
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


@functools.lru_cache(maxsize=32)
def _table_values(hs: int, rope_base: float, exp_attn_per_nat: int, exp_logit_per_nat: int, gelu_log2_step: int,
                  gelu_range: int, gelu: bool) -> tuple:
    """The tables' values (tuples: immutable, so the cache cannot be altered), computed once per process for
    each set of parameters: they are pure functions of them, and nearly all of ``from_float``'s time."""
    rope = tuple(tuple(v) for v in rope_tables(hs, rope_base))
    ea, el = tuple(exp_table(exp_attn_per_nat, 15)), tuple(exp_table(exp_logit_per_nat, 32))
    ge = tuple(gelu_table(gelu_log2_step, gelu_range)) if gelu else None
    with localcontext() as ctx:  # K_A / sqrt(hs), correctly rounded in decimal, then to float64 -> float32
        ctx.prec = 50
        att = _to_float(Decimal(exp_attn_per_nat) / Decimal(hs).sqrt())
    return rope, ea, el, ge, att


def _build_tables(hs: int, rope_base: float, opts: dict, gelu: bool = True) -> dict[str, torch.Tensor]:
    (F, c1, s1, c2, s2), ea, el, ge, att = _table_values(
        hs, rope_base, opts["exp_attn_per_nat"], opts["exp_logit_per_nat"], opts["gelu_log2_step"],
        opts["gelu_range"], gelu)
    t = {}
    t["rope.turns"] = torch.from_numpy(np.array(F, dtype=np.uint64).view(np.int64).copy())
    for name, v in (("cos1", c1), ("sin1", s1), ("cos2", c2), ("sin2", s2)):
        t["rope." + name] = torch.tensor(v, dtype=torch.float64)
    t["table.exp_attn"] = torch.tensor(ea, dtype=torch.float32)
    t["table.exp_logit"] = torch.tensor(el, dtype=torch.int64)
    if gelu:  # ReLU^2 needs no table
        t["table.gelu"] = torch.tensor(ge, dtype=torch.float64).float()
    t["const.att_scale"] = torch.tensor(att, dtype=torch.float64).float()
    t["const.logit_scale"] = torch.tensor(float(opts["exp_logit_per_nat"]), dtype=torch.float32)
    return t
