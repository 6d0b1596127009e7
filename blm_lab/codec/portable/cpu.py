"""The portable step on the CPU: numba kernels that compute ``reference.py``'s arithmetic, op for op.

Why
===
The torch step (``reference.py``) is ~100 small tensor ops per layer (norm statistics, quantization,
rotation, the attention weights), each a few microseconds of dispatch at 28 streams: together more
than the matmuls. Here each stretch of elementwise and per-row work between two of the Linear layers'
matrix products is one kernel, so a layer is 4 kernels and 4 matmuls. The attention is one kernel, row
by row: q, k, v into the cache, then per head the scores, the weights and P.V, then the output's
quantization; the rows are shared among numba's threads (as many as torch's, for its matmuls), each row
computed whole by one thread, so the split cannot change a bit (R5). Its cache keeps the quantized keys and values as int8 (int16 above 8 bits), so at many
streams, where reading the cache is the step's main cost, it moves a quarter of float32's bytes.
The loops are written so that LLVM can vectorize them (the products run along the cache's contiguous
dimension, the attention weights' integer sums are kept in int64), maxima keep four running values,
and the non-finite checks come before the clamps (which would hide a NaN).

Profiled before this layout (28 streams, CPU recipe shape, each kernel of a step timed, 1 and 2 threads):
the attention's 3 kernels and 2 torch bmm calls took 44-52% of the step, the Linear matmuls 16-20%, the
MLP and norm kernels 12-15%, Python and the frequencies the rest; at 245 streams the attention took 64%.

The contract
============
The kernels perform the *same* IEEE operations as the torch ops in ``reference.py``, on the same
operands, in the same order, so the bits are the same (``tests/test_portable.py`` checks the two
paths equal under every architecture option, and the golden files decode through this path):
- every float32 op is written with float32 operands only (``np.float32`` constants; no Python float
  literal enters float32 arithmetic, which numba would widen to float64), so it rounds once (R2);
- the norm statistics are float64 exactly where reference.py's are (R1, R2);
- sums of integer-valued floats are exact in any order and grouping (R1), so loop order does not matter
  for them (the attention's products sum four terms at a time; the norm statistics are float64);
- no fused multiply-add: numba compiles without fast-math, so LLVM never contracts a multiply and an
  add (``tests/test_portable.py`` checks the kernels' machine code for FMA instructions);
- round() is ``np.rint``: round half to even under the default rounding mode, like ``torch.round``.
A non-finite value reaching a table index raises ``IndexError`` (as the torch path's ``index_select``
does) instead of indexing out of bounds.

The Linear layers' matrix products stay in torch (``torch.mm``), on integer-valued float32: exact in any
order (R1). CUDA caches use the torch path in ``reference.py``, which stays the reference.
"""

from __future__ import annotations

import numpy as np
import torch
import numba
from numba import njit, prange

F32 = np.float32

_kernel = njit(cache=True, error_model="numpy", nogil=True)


# ================================================================================================
# Kernels (each mirrors a named function of reference.py; the comments give its ops)
# ================================================================================================

@njit(cache=True, error_model="numpy", inline="always")
def _absmax(v, floor):
    """max(max|v|, floor) of a 1-D view: exact (R3). Four running maxima (max is exact in any order; each
    starts at floor and keeps it on a NaN element, as one running maximum does), for instruction-level
    parallelism."""
    m0 = m1 = m2 = m3 = floor
    n = v.shape[0]
    n4 = n - n % 4
    for j in range(0, n4, 4):
        m0 = max(m0, abs(v[j]))
        m1 = max(m1, abs(v[j + 1]))
        m2 = max(m2, abs(v[j + 2]))
        m3 = max(m3, abs(v[j + 3]))
    for j in range(n4, n):
        m0 = max(m0, abs(v[j]))
    return max(max(m0, m1), max(m2, m3))


@njit(cache=True, error_model="numpy", inline="always")
def _max(v, floor):
    """max(max v, floor) of a 1-D view: exact, NaN elements skipped (as ``_absmax``, without the abs)."""
    m0 = m1 = m2 = m3 = floor
    n = v.shape[0]
    n4 = n - n % 4
    for j in range(0, n4, 4):
        m0 = max(m0, v[j])
        m1 = max(m1, v[j + 1])
        m2 = max(m2, v[j + 2])
        m3 = max(m3, v[j + 3])
    for j in range(n4, n):
        m0 = max(m0, v[j])
    return max(max(m0, m1), max(m2, m3))


@njit(cache=True, error_model="numpy", inline="always")
def _round_scaled(v, inv, out):
    """out = rint(v * inv): one rounding, then round half to even (R2, R3)."""
    for j in range(v.shape[0]):
        out[j] = np.rint(v[j] * inv)


@njit(cache=True, error_model="numpy", inline="always")
def _dequant(acc, s_col, s_row, bias):
    """acc = (acc * s_col) * s_row (+ bias), in place on a 1-D view: a Linear's integer output in true
    units (``TorchBackend._linear``'s callers), one rounding per op (R2)."""
    for j in range(acc.shape[0]):
        acc[j] = acc[j] * s_col[j] * s_row
    if bias.shape[0] > 0:
        for j in range(acc.shape[0]):
            acc[j] = acc[j] + bias[j]


@_kernel
def _norm_rows(x, g, rms, P, Cf, invC, K1, qmax, tiny, zq, a):
    """``TorchBackend._norm_quant`` per row of x (B, C): zq (B, C) integer-valued, a (B,) float32.

    m = max(max|x|, tiny); xi = rint(x * (P / m)); RMS: E = sum xi^2 (float64); LN: S = sum xi,
    xc = xi * C - S, E = sum xc^2 (float64); xc *= g; zq = rint(xc * (qmax / max(max|xc|, tiny)));
    a = float32(1 / (sqrt(E * invC + K1 / (m * m)) * inv)) in float64."""
    B, C = x.shape
    for b in range(B):
        z = zq[b]
        m = _absmax(x[b], tiny)
        if not m < np.inf:
            raise IndexError("non-finite activation in the portable step")
        _round_scaled(x[b], P / m, z)  # xi, |xi| <= 2**p
        E = 0.0
        if not rms:
            S = F32(0.0)
            for c in range(C):
                S += z[c]  # exact (R1): |S| <= C 2**p <= 2**23
            for c in range(C):
                z[c] = z[c] * Cf - S  # C (xi - mean xi): exact integers
        for c in range(C):
            E += np.float64(z[c]) * np.float64(z[c])  # exact (R1, float64)
        if g.shape[0] > 0:
            for c in range(C):
                z[c] = z[c] * g[c]  # one rounding
        inv = qmax / _absmax(z, tiny)
        _round_scaled(z, inv, z)
        md = np.float64(m)
        a[b] = F32(1.0 / (np.sqrt(E * invC + K1 / (md * md)) * np.float64(inv)))


@_kernel
def _quant_rows(x, qmax, tiny, xq, s):
    """``TorchBackend._quant_rows_`` per row of x (B, N): xq = rint(x * (qmax / m)), s = m / qmax."""
    for b in range(x.shape[0]):
        m = _absmax(x[b], tiny)
        _round_scaled(x[b], qmax / m, xq[b])
        s[b] = m / qmax


@_kernel
def _residual_norm(acc, s_col, s_row, bias, x, g, rms, P, Cf, invC, K1, qmax, tiny, zq, a):
    """x += (acc * s_col) * s_row (+ bias): a sub-block's output projection and residual add (one
    rounding each, in ``_attention`` / ``_mlp``'s order); then ``_norm_rows`` of the new x."""
    B, C = x.shape
    for b in range(B):
        _dequant(acc[b], s_col, s_row[b], bias)
        for c in range(C):
            x[b, c] = acc[b, c] + x[b, c]
    _norm_rows(x, g, rms, P, Cf, invC, K1, qmax, tiny, zq, a)


@_kernel
def _mlp_act(acc, s_col, a, bias, relu2, gelu, gelu_mul, gelu_off, gelu_hi, gelu_R, qmax, tiny, gq, sg):
    """``_mlp`` from the c_fc matmul to the quantized hidden: h = (acc * s_col) * a (+ bias); ReLU^2
    (max(h, 0), then h * h) or GELU by table (``_mlp_act``); then ``_quant_rows`` into gq, sg."""
    B, H = acc.shape
    zero = F32(0.0)
    n_gelu = gelu.shape[0]
    for b in range(B):
        _dequant(acc[b], s_col, a[b], bias)
        for j in range(H):
            h = acc[b, j]
            if relu2:
                if h < zero:
                    h = zero
                h = h * h
            else:
                tail = h - gelu_R
                if tail < zero:
                    tail = zero
                t = h * gelu_mul + gelu_off
                if t < zero:
                    t = zero
                if t > gelu_hi:
                    t = gelu_hi
                if not (t >= zero and t < n_gelu):
                    raise IndexError("non-finite activation in the portable step")
                h = gelu[np.int64(t)] + tail
            gq[b, j] = h
    _quant_rows(gq, qmax, tiny, gq, sg)


@njit(cache=True, error_model="numpy", inline="always")
def _qkv_row(hb, s_col, a, bias, true_units, qk_norm, g_qk, P_hs, invC_hs, K1r_hs, value_residual, v_mix,
             first_layer, vf, cos, sin, q_qkv, tiny, kc, vc, skc, svc, row0, slot, q, q_scale):
    """``TorchBackend._attention`` for one row, from the c_attn matmul output hb (3C,) (changed in place)
    to the quantized queries q (nh, hs) (integers) and their scales q_scale (nh,); this token's keys and
    values go into the cache slot: kc (B nh, hs, T) and vc (B nh, T, hs) integers, skc, svc (B nh, T) scales.

    Column scale (true units: times a, plus bias); per q/k head QK-norm (``_qk_norm_``); per v head the
    value residual; the rotation x1 c + x2 (-s), x2 c + x1 s (v heads: c = 1, s = 0); the per-head
    quantization rint(x (Q / m)), scale m / Q, times a (or, with QK-norm, times r)."""
    nh, half = q_qkv.shape[0] // 3, cos.shape[0]
    hs = 2 * half
    zero, one = F32(0.0), F32(1.0)
    if true_units:  # (acc * s_col) * a (+ bias)
        _dequant(hb, s_col, a, bias)
    else:  # acc * s_col (* 1, exact): the row scale a is applied to the per-head scales below
        _dequant(hb, s_col, one, bias)  # no bias without true units
    for hd in range(3 * nh):  # q heads, k heads, v heads
        x = hb[hd * hs:(hd + 1) * hs]
        is_qk = hd < 2 * nh
        r_qk = one
        if qk_norm and is_qk:  # ``_qk_norm_``: rms_norm(x) g ~ (rint(x P / m) g) r
            m = _absmax(x, tiny)
            if not m < np.inf:
                return 1  # non-finite: the caller raises
            pm = P_hs / m
            E = 0.0
            for d in range(hs):
                xi = np.rint(x[d] * pm)
                E += np.float64(xi) * np.float64(xi)  # exact (R1)
                x[d] = xi * g_qk[hd, d]
            md = np.float64(m)
            r_qk = F32(1.0 / np.sqrt(E * invC_hs + K1r_hs / (md * md)))
        if value_residual and not is_qk:
            v0 = vf[hd - 2 * nh]
            if first_layer:
                for d in range(hs):
                    v0[d] = x[d]
            else:  # v + (v_first - v) v_mix: three roundings, gpt.py's order
                for d in range(hs):
                    x[d] = x[d] + (v0[d] - x[d]) * v_mix
        if is_qk:
            for d in range(half):
                x1, x2 = x[d], x[half + d]
                x[d] = x1 * cos[d] + x2 * -sin[d]
                x[half + d] = x2 * cos[d] + x1 * sin[d]
        else:
            for d in range(half):
                x1, x2 = x[d], x[half + d]
                x[d] = x1 * one + x2 * zero
                x[half + d] = x2 * one + x1 * zero
        m = _absmax(x, tiny)
        qm = q_qkv[hd]
        _round_scaled(x, qm / m, x)  # integers, |x| <= qm
        sc = m / qm
        if not true_units:
            sc = sc * a
        elif qk_norm and is_qk:
            sc = sc * r_qk
        if hd < nh:
            for d in range(hs):
                q[hd, d] = x[d]
            q_scale[hd] = sc
        elif is_qk:
            kr = kc[row0 + hd - nh]
            for d in range(hs):
                kr[d, slot] = x[d]  # exact: an integer within the cache's integer type
            skc[row0 + hd - nh, slot] = sc
        else:
            vr = vc[row0 + hd - 2 * nh, slot]
            for d in range(hs):
                vr[d] = x[d]
            svc[row0 + hd - 2 * nh, slot] = sc
    return 0


@njit(cache=True, error_model="numpy", inline="always")
def _add_products(acc, n, coef, rows, count):
    """acc[j] += sum_i coef[i] rows[i][j] for i < count, j < n; vectorized over j, four i at a time, then one
    at a time. Exact only where every partial sum is an integer below 2**24 (R1): then the grouping cannot
    change the result, and the callers' products are such."""
    c4 = count - count % 4
    for i in range(0, c4, 4):
        a0, a1, a2, a3 = coef[i], coef[i + 1], coef[i + 2], coef[i + 3]
        r0, r1, r2, r3 = rows[i], rows[i + 1], rows[i + 2], rows[i + 3]
        for j in range(n):
            acc[j] = acc[j] + ((a0 * F32(r0[j]) + a1 * F32(r1[j])) + (a2 * F32(r2[j]) + a3 * F32(r3[j])))
    for i in range(c4, count):
        ai, ri = coef[i], rows[i]
        for j in range(n):
            acc[j] = acc[j] + ai * F32(ri[j])


@njit(cache=True, error_model="numpy", inline="always")
def _attend_head(qr, kr, vr, skr, svr, fq, exp_attn, n_attn, u1c, u2c, u12, tiny, filled, l, o, y):
    """One (row, head) of ``_attention`` after the cache write, over the filled slots: the exact scores
    q . k (|.| <= Q^2 hs <= 2**24, R1), l = (score s_k) (s_q att_scale); w = EXP_A[min(rint(max l - l),
    N_A)]; u = w s_v; u1 = rint(u (U1 / max u)); uq = rint(u1 (U2 / sum u1)); o = uq . V (exact, R1);
    y = o * ((max u sum u1) / (sum w U1 U2)). The weight sums are kept in int64, which lets the loops vectorize;
    the two products run over the cache's contiguous dimension (keys are stored transposed), so they vectorize
    without reassociating anything."""
    hs = qr.shape[0]
    zero = F32(0.0)
    for t in range(filled):
        l[t] = zero
    _add_products(l, filled, qr, kr, hs)  # l[t] = sum_d q[d] k[d, t]: integers below 2**24 (R1)
    for t in range(filled):
        l[t] = l[t] * skr[t] * fq
    mx = _max(l[:filled], F32(-np.inf))
    bad = 0
    for t in range(filled):
        d = np.rint(-l[t] + mx)
        bad += not d >= zero  # NaN (checked before the clamp, which would hide it)
        l[t] = min(d, n_attn)
    if bad:
        return 1  # before any index: the caller raises
    wsum = 0
    for t in range(filled):
        w = exp_attn[np.int64(l[t])]
        wsum += np.int64(w)  # exact: integers <= 2**15
        l[t] = w * svr[t]
    um = _max(l[:filled], tiny)
    f1 = u1c / um
    s1 = 0
    for t in range(filled):
        u = np.rint(l[t] * f1)
        l[t] = u
        s1 += np.int64(u)  # exact: sum <= 2**24
    s1f = F32(s1)
    f2 = u2c / s1f
    for d in range(hs):
        o[d] = zero
    for t in range(filled):
        l[t] = np.rint(l[t] * f2)  # uq: integers <= U2 + 1
    _add_products(o, hs, l, vr, filled)  # o = uq . V: integers of magnitude at most Q_v sum uq <= 2**24 (R1)
    factor = (um * s1f) / (F32(wsum) * u12)
    for d in range(hs):
        y[d] = o[d] * factor  # one rounding
    return 0


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def _attention(h, s_col, a, bias, true_units, qk_norm, g_qk, P_hs, invC_hs, K1r_hs, value_residual, v_mix, first_layer,
               v_first, cos, sin, q_qkv, tiny, kc, vc, skc, svc, slot, filled, att_scale, exp_attn, n_attn, u1c, u2c,
               u12, qmax, q, q_scale, l, o, yq, sy):
    """``TorchBackend._attention`` from the c_attn matmul output h (B, 3C) (changed in place) to the
    quantized attention output yq (B, C), sy (B,), ready for c_proj: per row, the q/k/v heads into the
    cache (``_qkv_row``), then each head's attention (``_attend_head``), then ``_quant_rows`` of the row.
    Rows are independent (R5), so each row runs start to end, and the rows are shared among numba's threads
    (``numba.set_num_threads``): the bits do not depend on which thread ran a row. q (B, nh, hs), q_scale
    (B, nh), l (B, T), o (B, hs): each row's scratch."""
    B = h.shape[0]
    nh = q_qkv.shape[0] // 3
    hs = h.shape[1] // (3 * nh)
    bad = np.zeros(B, np.int64)  # a row that met a non-finite value stops there; the error comes after the loop
    for b in prange(B):
        vf = v_first[b] if value_residual else v_first[0]
        qb, sb = q[b], q_scale[b]
        bad[b] = _qkv_row(h[b], s_col, a[b], bias, true_units, qk_norm, g_qk, P_hs, invC_hs, K1r_hs, value_residual,
                          v_mix, first_layer, vf, cos, sin, q_qkv, tiny, kc, vc, skc, svc, b * nh, slot, qb, sb)
        yb = yq[b]
        for hd in range(nh):
            if bad[b] == 0:
                r = b * nh + hd
                bad[b] = _attend_head(qb[hd], kc[r], vc[r], skc[r], svc[r], sb[hd] * att_scale, exp_attn, n_attn, u1c,
                                      u2c, u12, tiny, filled, l[b], o[b], yb[hd * hs:(hd + 1) * hs])
        if bad[b] == 0:
            _quant_rows(yq[b:b + 1], qmax, tiny, yq[b:b + 1], sy[b:b + 1])
    if bad.any():
        raise IndexError("non-finite activation in the portable step")


@_kernel
def _head(acc, s_col, a, logit_scale, bias, n_logit, ind):
    """The head after its matmul: l = (acc * s_col) * (a * K_L) (+ b K_L); ind = min(rint(max l - l), N_L)."""
    B, V = acc.shape
    for b in range(B):
        _dequant(acc[b], s_col, a[b] * logit_scale, bias)
        mx = F32(-np.inf)
        for j in range(V):
            mx = max(mx, acc[b, j])
        for j in range(V):
            d = np.rint(-acc[b, j] + mx)
            if d > n_logit:
                d = n_logit
            if not d >= 0:
                raise IndexError("non-finite activation in the portable step")
            ind[b, j] = np.int64(d)


@_kernel
def freqs_from_indices(ind, exp_logit, total, f):
    """The coder's frequencies f (B, V) int64 from the head's exp-table indices ind (B, V), for every backend
    (the indices come to the CPU from any device): e = EXP_L[ind] (IndexError on an index off the table, as a
    NaN-derived one is), f = floor(e (total - V) / sum e) + 1 (int64, exact: e (total - V) <= 2**56), and
    the leftover total - sum f (in [0, V)) to the first largest f. Each row totals ``total``, every f >= 1."""
    B, V = ind.shape
    n = exp_logit.shape[0]
    for b in range(B):
        fb = f[b]
        tot = 0
        for j in range(V):
            i = ind[b, j]
            if i < 0 or i >= n:
                raise IndexError("non-finite activation in the portable step")
            fb[j] = exp_logit[i]
            tot += fb[j]  # exact, >= 2**32 (the max entry has index 0)
        top, s = 0, 0
        inv = 1.0 / np.float64(tot)
        for j in range(V):
            x = fb[j] * (total - V)
            q = np.int64(np.float64(x) * inv)  # floor(x / tot) within 1 (x <= 2**56, q < 2**24) ...
            if q * tot > x:  # ... made exact in int64 (a hardware division per entry is slower)
                q -= 1
            elif (q + 1) * tot <= x:
                q += 1
            fb[j] = q + 1
            s += fb[j]
            if fb[j] > fb[top]:
                top = j
        fb[top] += total - s


# ================================================================================================
# The step
# ================================================================================================

_EMPTY1 = np.zeros(0, np.float32)
_EMPTY2 = np.zeros((0, 0), np.float32)
_EMPTY3 = np.zeros((0, 0, 0), np.float32)


class _Arrays:
    """numpy views and float32 scalars of a runtime's tensors, for the kernels."""


def _np(t, empty=_EMPTY1):
    return empty if t is None else t.detach().contiguous().numpy()


def _f32(t) -> np.float32:
    return F32(t.item() if isinstance(t, torch.Tensor) else t)


def _norm_consts(ln) -> tuple:
    return F32(ln.P.item()), F32(ln.C.item()), np.float64(ln.invC.item())


def _int_type(qmax: int):
    """The narrowest integer type that holds [-qmax, qmax] exactly (the cache's quantized keys or values)."""
    return np.int8 if qmax <= 127 else np.int16


class CpuCache:
    """A CPU backend's cache: per layer the quantized keys and values as integers, ``k`` (B nh, hs, T) (stored
    transposed, as the reference's), ``v`` (B nh, T, hs) (int8, or int16 for more than 8 bits: a quarter of float32's memory traffic, which is what the attention
    costs at many streams), their scales ``sk``, ``sv`` (B nh, T) float32; and the step's working buffers
    (numpy arrays, with torch views of the same memory for torch.mm's out=)."""

    def __init__(self, pm, batch_size: int, qk_max: int, v_max: int):
        self.batch_size, self.block_size, self.pos = batch_size, pm.block_size, 0
        self.device = torch.device("cpu")
        B, C, H, V = batch_size, pm.n_embd, pm.hidden, pm.vocab_size
        nh, hs, T = pm.n_head, pm.head_size, pm.block_size
        z = lambda dtype, *shape: [np.zeros(shape, dtype) for _ in range(pm.n_layer)]
        self.k, self.v = z(_int_type(qk_max), B * nh, hs, T), z(_int_type(v_max), B * nh, T, hs)
        self.sk, self.sv = z(np.float32, B * nh, T), z(np.float32, B * nh, T)
        for name, shape in (("x", (B, C)), ("zq", (B, C)), ("a", (B,)), ("h", (B, 3 * C)), ("yq", (B, C)),
                            ("sy", (B,)), ("acc", (B, C)), ("hid", (B, H)), ("gq", (B, H)), ("sg", (B,)),
                            ("logits", (B, V))):
            arr = np.zeros(shape, np.float32)
            setattr(self, name, arr)
            setattr(self, name + "_t", torch.from_numpy(arr))
        # each row's scratch in the attention: its queries and their scales, one head's weights and P.V
        self.q, self.q_scale = np.zeros((B, nh, hs), np.float32), np.zeros((B, nh), np.float32)
        self.l, self.o = np.zeros((B, T), np.float32), np.zeros((B, hs), np.float32)
        self.ind = np.zeros((B, V), np.int64)
        self.v_first = np.zeros((B, nh, hs), np.float32)  # the first layer's values (value residuals)

    def state(self) -> dict[str, list[np.ndarray]]:
        """The cached integers and scales per layer in ``reference.PortableCache``'s layout (float32; keys
        scales (B nh, 1, T)), for comparing backends."""
        f32 = lambda arrays, f: [f(x).astype(np.float32) for x in arrays]
        return {"k": f32(self.k, lambda x: x), "v": f32(self.v, lambda x: x),
                "sk": f32(self.sk, lambda x: x[:, None]), "sv": f32(self.sv, lambda x: x[:, None])}


def _numba_threads(n: int) -> None:
    """numba's thread count for this thread's parallel kernels, torch's left as it was. Under numba's OpenMP
    layer both can be one libgomp's count (torch's wheel ships libgomp.so.1): starting numba's threads, or
    setting their number, would change torch's too."""
    threads = torch.get_num_threads()
    numba.set_num_threads(n)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _mm(xq_t, weight, dtype, out_t):
    """The exact integer matmul into a preallocated buffer: float32 (R1), or float64 rounded once."""
    if dtype == torch.float32:
        torch.mm(xq_t, weight, out=out_t)
    else:
        out_t.copy_(torch.mm(xq_t.to(dtype), weight))


class CpuBackend:
    """The numba kernels of the portable step on the CPU (the torch ops' arithmetic, op for op). Built from
    the model's public plan and its CPU ``Runtime``, whose weights and constants it keeps as numpy arrays."""

    def __init__(self, pm, rt):
        self.pm, self.rt = pm, rt
        C, hs = pm.n_embd, pm.head_size
        ln = rt.ln[C]
        self.P, self.Cf, self.invC = _norm_consts(ln)
        self.K1 = np.float64((ln.K1r if pm.rms else ln.K1).item())
        lh = rt.ln[hs]
        self.P_hs, _, self.invC_hs = _norm_consts(lh)
        self.K1r_hs = np.float64(lh.K1r.item())
        self.q_act, self.q_hidden, self.tiny = _f32(rt.q_act), _f32(rt.q_hidden), F32(rt.tiny)
        self.q_qkv = rt.q_qkv.reshape(-1).contiguous().numpy()
        self.att_scale, self.logit_scale = _f32(rt.att_scale), _f32(rt.logit_scale)
        self.exp_attn, self.n_attn = rt.exp_attn.numpy(), F32(rt.n_attn)
        self.n_logit = F32(rt.n_logit)
        self.u1, self.u2, self.u12 = _f32(rt.u1), _f32(rt.u2), _f32(rt.u12)
        self.gelu = _np(rt.gelu)
        self.gelu_mul, self.gelu_off, self.gelu_hi, self.gelu_R = (_f32(rt.gelu_mul), _f32(rt.gelu_off),
                                                                   F32(rt.gelu_hi), _f32(rt.gelu_R))
        self.wte = rt.wte.numpy()
        self.s_head, self.b_head, self.gf = rt.s_head.numpy(), _np(rt.b_head), _np(rt.gf)
        self.layers = []
        for L in rt.layers:
            a = _Arrays()
            a.s_attn, a.s_aproj, a.s_fc, a.s_mproj = (t.numpy() for t in (L.s_attn, L.s_aproj, L.s_fc, L.s_mproj))
            a.b_attn, a.b_aproj, a.b_fc, a.b_mproj = (_np(t) for t in (L.b_attn, L.b_aproj, L.b_fc, L.b_mproj))
            a.g1, a.g2 = _np(L.g1), _np(L.g2)
            a.g_qk = _np(L.g_qk, _EMPTY2)
            a.v_mix = F32(0.0) if L.v_mix is None else _f32(L.v_mix[0])
            a.w_attn, a.w_aproj, a.w_fc, a.w_mproj = L.w_attn, L.w_aproj, L.w_fc, L.w_mproj
            self.layers.append(a)

    def new_cache(self, batch_size: int) -> CpuCache:
        return CpuCache(self.pm, batch_size, int(self.q_qkv[0]), int(self.q_qkv[-1]))

    def step_indices(self, idx: torch.Tensor, cache: CpuCache) -> torch.Tensor:
        """The (B, 256) int64 exp-table indices after feeding idx (B,) (a new tensor). The attention's rows run
        on as many of numba's threads as torch has (the matmuls' threads)."""
        threads = torch.get_num_threads()
        _numba_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        pm, rt, w = self.pm, self.rt, cache
        dt = pm.matmul_dtypes
        pos = cache.pos
        slot = pos % cache.block_size
        filled = min(pos + 1, cache.block_size)
        cos, sin = pm.rope_cos_sin(pos)
        x = w.x
        np.take(self.wte, idx.numpy(), axis=0, out=x)  # exact gather
        norm = (pm.rms, self.P, self.Cf, self.invC, self.K1, self.q_act, self.tiny)
        _norm_rows(x, self.layers[0].g1, *norm, w.zq, w.a)
        for layer, L in enumerate(self.layers):
            _mm(w.zq_t, L.w_attn, dt["attn_in"], w.h_t)
            _attention(w.h, L.s_attn, w.a, L.b_attn, pm.qkv_true_units, pm.qk_norm, L.g_qk, self.P_hs, self.invC_hs,
                       self.K1r_hs, pm.value_residual, L.v_mix, layer == 0, w.v_first, cos, sin, self.q_qkv,
                       self.tiny, w.k[layer], w.v[layer], w.sk[layer], w.sv[layer], slot, filled, self.att_scale,
                       self.exp_attn, self.n_attn, self.u1, self.u2, self.u12, self.q_act, w.q, w.q_scale, w.l, w.o,
                       w.yq, w.sy)
            _mm(w.yq_t, L.w_aproj, dt["attn_out"], w.acc_t)
            _residual_norm(w.acc, L.s_aproj, w.sy, L.b_aproj, x, L.g2, *norm, w.zq, w.a)
            _mm(w.zq_t, L.w_fc, dt["mlp_in"], w.hid_t)
            _mlp_act(w.hid, L.s_fc, w.a, L.b_fc, pm.relu2, self.gelu, self.gelu_mul, self.gelu_off, self.gelu_hi,
                     self.gelu_R, self.q_hidden, self.tiny, w.gq, w.sg)
            _mm(w.gq_t, L.w_mproj, dt["mlp_hidden"], w.acc_t)
            g_next = self.layers[layer + 1].g1 if layer + 1 < len(self.layers) else self.gf
            _residual_norm(w.acc, L.s_mproj, w.sg, L.b_mproj, x, g_next, *norm, w.zq, w.a)
        _mm(w.zq_t, rt.w_head, dt["head_in"], w.logits_t)
        _head(w.logits, self.s_head, w.a, self.logit_scale, self.b_head, self.n_logit, w.ind)
        cache.pos = pos + 1
        return torch.from_numpy(w.ind.copy())
