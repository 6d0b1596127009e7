"""The portable model's tables (rule R4 of ``model.py``): exp, GELU and rotary values from exact software
arithmetic only (Python's ``decimal`` and integers), identical on every machine, stored with the model and
covered by its fingerprint; and the rotary lookup both backends take their cos/sin from."""

from __future__ import annotations

import functools
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import numpy as np
import torch


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


def build_tables(hs: int, rope_base: float, opts: dict, gelu: bool = True) -> dict[str, torch.Tensor]:
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


def rope_cos_sin(rope: tuple, pos: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (hs/2,) float32 of the rotary angles pos * theta_i from the stored tables ``rope`` = (F (uint64),
    cos1, sin1, cos2, sin2): turn = pos F mod 2**64, then the angle-addition formula over the top 10 and next
    10 bits of the turn, in float64 (one rounding each op), cast to float32."""
    F, c1, s1, c2, s2 = rope
    turn = np.array([pos], dtype=np.uint64) * F  # exact mod 2**64 (uint64 wraps)
    j = (turn >> np.uint64(54)).astype(np.int64)
    k = ((turn >> np.uint64(44)) & np.uint64(1023)).astype(np.int64)
    ca, sa, cb, sb = c1[j], s1[j], c2[k], s2[k]
    cos = (ca * cb - sa * sb).astype(np.float32)  # float64 IEEE ops, one rounding each
    sin = (sa * cb + ca * sb).astype(np.float32)
    return cos, sin
