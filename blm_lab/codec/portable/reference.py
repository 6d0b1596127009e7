"""The portable step as torch ops: the reference arithmetic, and the path on CUDA.

Each op below is one correctly rounded IEEE operation or an exact one, named by the rule it relies on
(R1-R5 in ``model.py``'s docstring, which also derives the bounds). ``cpu.py`` computes the same
operations in numba kernels; ``tests/test_portable.py`` holds the two equal bit for bit.

A backend takes the model's public plan (its flags, widths, ``matmul_dtypes``, ``qkv_true_units``,
``rope_cos_sin``) and its ``Runtime`` for the device (the stored integers and constants as tensors), owns
its caches, and answers ``new_cache`` and ``step_indices``. It imports nothing from ``model.py``.
"""

from __future__ import annotations

import numpy as np
import torch


class PortableCache:
    """Rolling K/V cache of integer-valued float32 and per-slot scales; slot = pos % block_size.

    Per layer: ``k`` (B*nh, hs, T) quantized keys, stored transposed (the score bmm is then a plain
    row-times-matrix product), ``v`` (B*nh, T, hs) quantized values, ``sk``/``sv`` (B*nh, 1, T) their
    scales (true value = integer * scale). Slots fill in order; after T bytes the oldest is overwritten.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, block_size: int, head_size: int, hidden: int,
                 device):
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        bh = batch_size * n_head
        z = lambda *shape: [torch.zeros(shape, dtype=torch.float32, device=self.device) for _ in range(n_layer)]
        self.k = z(bh, head_size, block_size)  # (B nh, hs, T)
        self.v = z(bh, block_size, head_size)  # (B nh, T, hs)
        self.sk = z(bh, 1, block_size)  # (B nh, 1, T)
        self.sv = z(bh, 1, block_size)
        # reusable int64 buffer for table indices (the largest user: the MLP hidden, B * hidden)
        self.ibuf = torch.empty(max(bh * block_size, batch_size * hidden), dtype=torch.int64, device=self.device)
        self.pos = 0

    def state(self) -> dict[str, list[np.ndarray]]:
        """The cached integers and scales per layer as numpy arrays (for comparing backends)."""
        return {name: [t.cpu().numpy() for t in getattr(self, name)] for name in ("k", "v", "sk", "sv")}


class TorchBackend:
    """The torch ops of the portable step on one device (see the module docstring)."""

    def __init__(self, pm, rt):
        self.pm, self.rt = pm, rt
        self.rms, self.relu2, self.qk_norm, self.value_residual = pm.rms, pm.relu2, pm.qk_norm, pm.value_residual
        self.n_head, self.head_size, self.n_embd = pm.n_head, pm.head_size, pm.n_embd
        self._dt, self._qkv_true_units, self._rope_cos_sin = pm.matmul_dtypes, pm.qkv_true_units, pm.rope_cos_sin

    def new_cache(self, batch_size: int) -> PortableCache:
        pm = self.pm
        return PortableCache(pm.n_layer, batch_size, pm.n_head, pm.block_size, pm.head_size, pm.hidden, self.rt.device)

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

    def _norm_quant(self, x: torch.Tensor, g, rt, qmax: torch.Tensor):
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
    def _qk_norm_(h: torch.Tensor, g: torch.Tensor, rt) -> torch.Tensor:
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

    def _mlp_act(self, h: torch.Tensor, rt, buf: torch.Tensor) -> torch.Tensor:
        """The MLP activation, in place on h. ReLU^2: clamp (exact, R3), then one correctly rounded multiply
        (R2), as F.relu(h).square(). GELU by table (R4): nearest grid point, identity above the table range."""
        if self.relu2:
            h = h.clamp_min_(0.0)
            return h.mul_(h)
        tail = (h - rt.gelu_R).clamp_min_(0.0)  # h - R above the table, else +0
        t = h.mul_(rt.gelu_mul).add_(rt.gelu_off).clamp_(0.0, rt.gelu_hi)  # exact scale, one rounding
        y = self._table_(t, rt.gelu, buf)  # trunc(h 2**k + N + 1/2): the nearest grid point
        return y.add_(tail)  # GELU(R) = R in float32, so R + (h - R) continues the identity

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
    def step_indices(self, idx: torch.Tensor, cache: PortableCache) -> torch.Tensor:
        """Feed one byte per stream (idx (B,) int64 on the cache's device); returns the (B, 256) int64
        exp-table indices of the next-byte distribution."""
        rt, device = self.rt, cache.device
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
