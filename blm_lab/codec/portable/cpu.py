"""The portable step on the CPU: numba kernels that compute ``reference.py``'s arithmetic, op for op.

Why
===
The torch step (``reference.py``) is ~100 small tensor ops per layer (norm statistics, quantization,
rotation, the attention weights), each a few microseconds of dispatch at 28 streams: together more
than the matmuls. Here each stretch of elementwise and per-row work between two matrix products is
one kernel, so a layer is 6 kernels, 4 matmuls and 2 batched matmuls (the attention scores and P.V).
The loops are written so that LLVM can vectorize them (the attention weights' integer sums are kept
in int64), and the non-finite checks come before the clamps (which would hide a NaN).

The contract
============
The kernels perform the *same* IEEE operations as the torch ops in ``reference.py``, on the same
operands, in the same order, so the bits are the same (``tests/test_portable.py`` checks the two
paths equal under every architecture option, and the golden files decode through this path):
- every float32 op is written with float32 operands only (``np.float32`` constants; no Python float
  literal enters float32 arithmetic, which numba would widen to float64), so it rounds once (R2);
- the norm statistics are float64 exactly where reference.py's are (R1, R2);
- sums of integer-valued floats are exact in any order (R1), so loop order does not matter for them;
- no fused multiply-add: numba compiles without fast-math, so LLVM never contracts a multiply and an
  add (``tests/test_portable.py`` checks the kernels' machine code for FMA instructions);
- round() is ``np.rint``: round half to even under the default rounding mode, like ``torch.round``.
A non-finite value reaching a table index raises ``IndexError`` (as the torch path's ``index_select``
does) instead of indexing out of bounds.

The matrix products stay in torch (``torch.mm``, ``torch.bmm``), on integer-valued float32: exact in
any order (R1). CUDA caches use the torch path in ``reference.py``, which stays the reference.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

F32 = np.float32

_kernel = njit(cache=True, error_model="numpy", nogil=True)


# ================================================================================================
# Kernels (each mirrors a named function of reference.py; the comments give its ops)
# ================================================================================================

@njit(cache=True, error_model="numpy", inline="always")
def _absmax(v, floor):
    """max(max|v|, floor) of a 1-D view: exact (R3)."""
    m = floor
    for j in range(v.shape[0]):
        m = max(m, abs(v[j]))
    return m


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


@_kernel
def _qkv(h, s_col, a, bias, true_units, qk_norm, g_qk, P_hs, invC_hs, K1r_hs, value_residual, v_mix, first_layer,
         v_first, cos, sin, q_qkv, tiny, kc, vc, skc, svc, slot, q, q_scale):
    """``TorchBackend._attention`` from the c_attn matmul output h (B, 3C) (changed in place) to the
    quantized queries q (B nh, 1, hs) and their scales (B nh,); this token's keys and values go into the
    cache slot: kc (B nh, hs, T) transposed, vc (B nh, T, hs), scales skc, svc (B nh, 1, T).

    Per row: column scale (true units: times a, plus bias); per q/k head QK-norm (``_qk_norm_``); per
    v head the value residual; the rotation x1 c + x2 (-s), x2 c + x1 s (v heads: c = 1, s = 0); the
    per-head quantization rint(x (Q / m)), scale m / Q, times a (or, with QK-norm, times r)."""
    B = h.shape[0]
    nh, half = q_qkv.shape[0] // 3, cos.shape[0]
    hs = 2 * half
    zero, one = F32(0.0), F32(1.0)
    nsin = -sin
    for b in range(B):
        hb = h[b]
        if true_units:  # (acc * s_col) * a (+ bias)
            _dequant(hb, s_col, a[b], bias)
        else:  # acc * s_col (* 1, exact): the row scale a is applied to the per-head scales below
            _dequant(hb, s_col, one, bias)  # no bias without true units
        for hd in range(3 * nh):  # q heads, k heads, v heads
            x = hb[hd * hs:(hd + 1) * hs]
            is_qk = hd < 2 * nh
            r_qk = one
            if qk_norm and is_qk:  # ``_qk_norm_``: rms_norm(x) g ~ (rint(x P / m) g) r
                m = _absmax(x, tiny)
                if not m < np.inf:
                    raise IndexError("non-finite activation in the portable step")
                pm = P_hs / m
                E = 0.0
                for d in range(hs):
                    xi = np.rint(x[d] * pm)
                    E += np.float64(xi) * np.float64(xi)  # exact (R1)
                    x[d] = xi * g_qk[hd, d]
                md = np.float64(m)
                r_qk = F32(1.0 / np.sqrt(E * invC_hs + K1r_hs / (md * md)))
            if value_residual and not is_qk:
                vf = v_first[b, hd - 2 * nh]
                if first_layer:
                    for d in range(hs):
                        vf[d] = x[d]
                else:  # v + (v_first - v) v_mix: three roundings, gpt.py's order
                    for d in range(hs):
                        x[d] = x[d] + (vf[d] - x[d]) * v_mix
            if is_qk:
                for d in range(half):
                    x1, x2 = x[d], x[half + d]
                    x[d] = x1 * cos[d] + x2 * nsin[d]
                    x[half + d] = x2 * cos[d] + x1 * sin[d]
            else:
                for d in range(half):
                    x1, x2 = x[d], x[half + d]
                    x[d] = x1 * one + x2 * zero
                    x[half + d] = x2 * one + x1 * zero
            m = _absmax(x, tiny)
            qm = q_qkv[hd]
            _round_scaled(x, qm / m, x)
            sc = m / qm
            if not true_units:
                sc = sc * a[b]
            elif qk_norm and is_qk:
                sc = sc * r_qk
            row = b * nh + hd % nh
            if hd < nh:
                qr = q[row, 0]
                for d in range(hs):
                    qr[d] = x[d]
                q_scale[row] = sc
            elif is_qk:
                for d in range(hs):
                    kc[row, d, slot] = x[d]
                skc[row, 0, slot] = sc
            else:
                vr = vc[row, slot]
                for d in range(hs):
                    vr[d] = x[d]
                svc[row, 0, slot] = sc


@_kernel
def _attn_weights(lg, sk, sv, q_scale, att_scale, exp_attn, n_attn, u1c, u2c, u12, tiny, factor):
    """``_attention``'s softmax weights, in place on the exact scores lg (B nh, 1, L): l = (lg s_k)
    (s_q att_scale); w = EXP_A[min(rint(max l - l), N_A)]; u = w s_v; u1 = rint(u (U1 / max u));
    lg becomes uq = rint(u1 (U2 / sum u1)), and factor (B nh,) = (max u sum u1) / (sum w U1 U2).
    The sums are of integers (exact, R1): they are kept in int64, which lets the loops vectorize."""
    R, L = lg.shape[0], lg.shape[2]
    zero = F32(0.0)
    for r in range(R):
        l = lg[r, 0]
        skr, svr = sk[r, 0], sv[r, 0]
        fq = q_scale[r] * att_scale
        for t in range(L):
            l[t] = l[t] * skr[t] * fq
        mx = F32(-np.inf)
        for t in range(L):
            mx = max(mx, l[t])
        bad = 0
        for t in range(L):
            d = np.rint(-l[t] + mx)
            bad += not d >= zero  # NaN (checked before the clamp, which would hide it)
            l[t] = min(d, n_attn)
        if bad:
            raise IndexError("non-finite activation in the portable step")
        wsum = 0
        um = tiny
        for t in range(L):
            w = exp_attn[np.int64(l[t])]
            wsum += np.int64(w)  # exact: integers <= 2**15
            u = w * svr[t]
            l[t] = u
            um = max(um, u)
        f1 = u1c / um
        s1 = 0
        for t in range(L):
            u = np.rint(l[t] * f1)
            l[t] = u
            s1 += np.int64(u)  # exact: sum <= 2**24
        s1f = F32(s1)
        f2 = u2c / s1f
        for t in range(L):
            l[t] = np.rint(l[t] * f2)
        factor[r] = (um * s1f) / (F32(wsum) * u12)


@_kernel
def _attn_out(o, factor, qmax, tiny, yq, sy):
    """y = o * factor per (row, head) (one rounding; o (B nh, 1, hs) is P.V, exact), then ``_quant_rows``
    of y (B, C) into yq, sy."""
    B = yq.shape[0]
    nh, hs = o.shape[0] // B, o.shape[2]
    for b in range(B):
        yb = yq[b]
        for hd in range(nh):
            orow = o[b * nh + hd, 0]
            f = factor[b * nh + hd]
            for d in range(hs):
                yb[hd * hs + d] = orow[d] * f
    _quant_rows(yq, qmax, tiny, yq, sy)


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


class CpuCache:
    """A CPU backend's cache: the K/V cache in ``reference.PortableCache``'s layout (numpy arrays) and the
    step's working buffers (numpy arrays and torch views of the same memory, for torch.mm's out=)."""

    def __init__(self, pm, batch_size: int):
        self.batch_size, self.block_size, self.pos = batch_size, pm.block_size, 0
        self.device = torch.device("cpu")
        B, C, H, V = batch_size, pm.n_embd, pm.hidden, pm.vocab_size
        R, hs, T = B * pm.n_head, pm.head_size, pm.block_size
        z = lambda *shape: [np.zeros(shape, np.float32) for _ in range(pm.n_layer)]
        self.k, self.v = z(R, hs, T), z(R, T, hs)  # (B nh, hs, T) keys transposed, (B nh, T, hs) values
        self.sk, self.sv = z(R, 1, T), z(R, 1, T)  # their scales
        self.k_t = [torch.from_numpy(a) for a in self.k]
        self.v_t = [torch.from_numpy(a) for a in self.v]
        for name, shape in (("x", (B, C)), ("zq", (B, C)), ("a", (B,)), ("h", (B, 3 * C)),
                            ("yq", (B, C)), ("sy", (B,)), ("acc", (B, C)), ("hid", (B, H)), ("gq", (B, H)),
                            ("sg", (B,)), ("logits", (B, V)), ("q", (R, 1, hs)), ("q_scale", (R,)),
                            ("scores", (R * T,)), ("factor", (R,)), ("o", (R, 1, hs))):
            arr = np.zeros(shape, np.float32)
            setattr(self, name, arr)
            setattr(self, name + "_t", torch.from_numpy(arr))
        self.ind = np.zeros((B, V), np.int64)
        self.v_first = np.zeros((B, pm.n_head, pm.head_size), np.float32) if pm.value_residual else _EMPTY3

    def state(self) -> dict[str, list[np.ndarray]]:
        """The cached integers and scales per layer in the reference layout (for comparing backends)."""
        return {"k": self.k, "v": self.v, "sk": self.sk, "sv": self.sv}


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
        return CpuCache(self.pm, batch_size)

    def step_indices(self, idx: torch.Tensor, cache: CpuCache) -> torch.Tensor:
        """The (B, 256) int64 exp-table indices after feeding idx (B,) (a new tensor)."""
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
            kc, vc, skc, svc = w.k[layer], w.v[layer], w.sk[layer], w.sv[layer]
            _qkv(w.h, L.s_attn, w.a, L.b_attn, pm.qkv_true_units, pm.qk_norm, L.g_qk, self.P_hs, self.invC_hs,
                 self.K1r_hs, pm.value_residual, L.v_mix, layer == 0, w.v_first, cos, sin, self.q_qkv, self.tiny,
                 kc, vc, skc, svc, slot, w.q, w.q_scale)
            R = w.q.shape[0]
            scores_t = w.scores_t[: R * filled].view(R, 1, filled)
            torch.bmm(w.q_t, w.k_t[layer][:, :, :filled], out=scores_t)  # (B nh, 1, L) exact integers (R1)
            _attn_weights(scores_t.numpy(), skc, svc, w.q_scale, self.att_scale, self.exp_attn, self.n_attn,
                          self.u1, self.u2, self.u12, self.tiny, w.factor)
            torch.bmm(scores_t, w.v_t[layer][:, :filled], out=w.o_t)  # (B nh, 1, hs) exact (R1)
            _attn_out(w.o, w.factor, self.q_act, self.tiny, w.yq, w.sy)
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
