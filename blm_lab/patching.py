"""Entropy patches as the Byte Latent Transformer draws them (Pagnoni et al. 2024, facebookresearch/blt).

A small byte model's next-byte entropy decides where a patch starts. Entropy is indexed as BLT does:
``H[t]`` is the entropy, in nats, of the prediction *for* byte t made from the bytes before it
(``scoring.ByteAnalysis.entropy`` is the same thing in bits; byte 0 is predicted by the uniform
distribution, ln 256 nats). Byte 0 always starts a patch (BLT: the first byte after BOS), and so does
nothing else by fiat. For t >= 1 the rules are BLT's ``patcher.py``:

* ``global``: H[t] > theta (BLT's default theta = 1.3354 nats);
* ``monotonic`` (approximate monotonicity): H[t] - H[t-1] > theta_r;
* ``combined``: H[t] - H[t-1] > theta_r and H[t] > theta and byte t-1 did not start a patch. BLT's
  ``patch_start_mask_global_and_monotonicity`` tests the last clause against the mask before it is
  filled (so in its code it only ever blocks the second position); here it is the rule as stated, on
  the final starts: in a run of bytes that pass both tests, every other one starts a patch.

``max_length`` then splits any longer patch into pieces of at most that many bytes (BLT's
``split_large_numbers``). ``fixed_stride`` is the baseline: patches of one length, chosen so their
mean matches a patching's mean. ``solve_threshold`` finds the threshold whose mean patch length is
nearest a target; the mean is a step function of the threshold, so it reports how far it landed.

Everything here is numpy on per-byte arrays, so it runs on any model's entropies (and on hand-made
ones in tests). Figures are ``viz.figures``; the notebook is 05.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import ConfigError

__all__ = ["RULES", "BLT_THRESHOLD", "Patching", "patch_starts", "patching", "fixed_stride", "solve_threshold",
           "solve_rules", "ThresholdSolution", "patch_table"]

RULES = ("global", "monotonic", "combined")
BLT_THRESHOLD = 1.3354  # nats: BLT's default global threshold
LN2 = math.log(2.0)


def _as_entropy(entropy_nats) -> np.ndarray:
    h = np.asarray(entropy_nats, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(h)):
        raise ConfigError("entropies contain NaN or inf; pass the finite per-byte entropies of a model's predictions")
    return h


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ConfigError(f"unknown patching rule {rule!r}; use one of {', '.join(RULES)}")


def _alternate_runs(passes: np.ndarray) -> np.ndarray:
    """starts[t] = passes[t] and not starts[t-1], with passes[0] forced (byte 0 starts): every other byte of a run."""
    n = passes.shape[0]
    t = np.arange(n)
    run_start = np.where(passes & ~np.concatenate(([False], passes[:-1])), t, 0)
    run_start = np.maximum.accumulate(run_start)  # (n,) where the run holding t began
    return passes & ((t - run_start) % 2 == 0)


def _split_long(starts: np.ndarray, n: int, max_length: int | None) -> np.ndarray:
    """Add starts so that no patch is longer than ``max_length`` (each long patch cut from its left)."""
    if max_length is None or starts.shape[0] == 0:
        return starts
    lengths = np.diff(np.append(starts, n))
    if lengths.max() <= max_length:
        return starts
    pieces = -(-lengths // max_length)  # (P,) ceil
    owner = np.repeat(np.arange(starts.shape[0]), pieces)  # (P',) which patch each piece comes from
    within = np.arange(owner.shape[0]) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    return starts[owner] + within * max_length


def patch_starts(entropy_nats, rule: str = "global", threshold: float = BLT_THRESHOLD,
                 relative_threshold: float = 0.0, max_length: int | None = None) -> np.ndarray:
    """Sorted int64 positions where patches start (see the module docstring for each rule).

    ``threshold`` is theta (global, combined) and ``relative_threshold`` theta_r (monotonic, combined),
    both in nats. An empty input has no patches.
    """
    _check_rule(rule)
    h = _as_entropy(entropy_nats)
    n = h.shape[0]
    if max_length is not None and int(max_length) < 1:
        raise ConfigError(f"max_length must be at least 1 byte, got {max_length}; pass None for no limit")
    if not (math.isfinite(threshold) and math.isfinite(relative_threshold)):
        raise ConfigError(f"thresholds must be finite numbers of nats, got {threshold} and {relative_threshold}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rose = np.concatenate(([True], np.diff(h) > relative_threshold))  # (n,) byte 0 counts as a rise: it starts
    if rule == "global":
        mask = h > threshold
    elif rule == "monotonic":
        mask = rose
    else:
        mask = _alternate_runs(rose & (h > threshold) | (np.arange(n) == 0))
    mask[0] = True
    starts = np.flatnonzero(mask).astype(np.int64)
    return _split_long(starts, n, None if max_length is None else int(max_length))


@dataclass
class Patching:
    """One patching of N bytes: where patches start and what they cost.

    ``lengths`` (P,) are the patch lengths in bytes; ``bits`` (P,) the model's surprisal summed over
    each patch (None when no surprisal was given); ``first_byte_share`` the share of all bits spent on
    the bytes that start a patch.
    """

    rule: str  # "global", "monotonic", "combined" or "fixed"
    threshold: float | None  # theta (nats), or the stride for "fixed"
    relative_threshold: float | None  # theta_r (nats)
    max_length: int | None
    n: int
    starts: np.ndarray  # (P,) int64
    bits: np.ndarray | None  # (P,) float64
    first_bits: float = 0.0  # surprisal summed over the patch-first bytes

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(np.append(self.starts, self.n))

    @property
    def count(self) -> int:
        return int(self.starts.shape[0])

    @property
    def mean_length(self) -> float:
        return self.n / self.count if self.count else 0.0

    @property
    def median_length(self) -> float:
        return float(np.median(self.lengths)) if self.count else 0.0

    def histogram(self) -> np.ndarray:
        """Patches of each length: int64 (max length + 1,), index = length in bytes."""
        return np.bincount(self.lengths, minlength=1).astype(np.int64) if self.count else np.zeros(1, np.int64)

    @property
    def first_byte_share(self) -> float | None:
        if self.bits is None or self.count == 0:
            return None
        total = float(self.bits.sum())
        return self.first_bits / total if total > 0 else 0.0

    @property
    def mask(self) -> np.ndarray:
        """(N,) bool, True where a patch starts."""
        out = np.zeros(self.n, dtype=bool)
        out[self.starts] = True
        return out

    def summary(self) -> dict:
        """The headline figures of this patching (one row of ``patch_table``)."""
        fixed = self.rule == "fixed"
        row = {"rule": self.rule, "threshold_nats": None if fixed else self.threshold, "threshold_bits": None,
               "relative_threshold_nats": self.relative_threshold, "stride": self.threshold if fixed else None,
               "max_length": self.max_length,
               "patches": self.count, "mean_length": self.mean_length, "median_length": self.median_length,
               "max_patch": int(self.lengths.max()) if self.count else 0,
               "bits_per_patch": float(self.bits.mean()) if self.bits is not None and self.count else None,
               "first_byte_share": self.first_byte_share}
        if not fixed and self.threshold is not None:
            row["threshold_bits"] = self.threshold / LN2
        return row


def _measure(rule, threshold, relative, max_length, n, starts, surprisal_bits) -> Patching:
    bits = None
    first = 0.0
    if surprisal_bits is not None:
        s = np.asarray(surprisal_bits, dtype=np.float64).reshape(-1)
        if s.shape[0] != n:
            raise ConfigError(f"surprisal has {s.shape[0]} values for {n} entropies; pass one per byte of the same text")
        bits = np.add.reduceat(s, starts) if starts.shape[0] else np.zeros(0)
        first = float(s[starts].sum())
    return Patching(rule, threshold, relative, max_length, n, starts, bits, first)


def patching(entropy_nats, surprisal_bits=None, rule: str = "global", threshold: float = BLT_THRESHOLD,
             relative_threshold: float = 0.0, max_length: int | None = None) -> Patching:
    """Patch the bytes whose prediction entropies are ``entropy_nats`` (N,); see ``patch_starts``.

    ``surprisal_bits`` (N,), the model's surprisal of each actual byte, gives bits per patch and the
    first-byte share. An empty input gives a patching with no patches.
    """
    h = _as_entropy(entropy_nats)
    starts = patch_starts(h, rule, threshold, relative_threshold, max_length)
    used_theta = None if rule == "monotonic" else float(threshold)
    used_rel = None if rule == "global" else float(relative_threshold)
    return _measure(rule, used_theta, used_rel, max_length, h.shape[0], starts, surprisal_bits)


def fixed_stride(n: int, mean_length: float, surprisal_bits=None) -> Patching:
    """The baseline: as many patches as a mean of ``mean_length`` gives, evenly spaced (starts at
    floor(k * stride), stride = n / count), so the mean is a patching's own even when it is not a whole
    number of bytes (a mean of 4.5 is patches of 4 and 5 in turn). ``threshold`` holds the stride."""
    count = min(n, max(1, int(round(n / mean_length)))) if n and mean_length > 0 else 0
    stride = n / count if count else 0.0
    starts = (np.arange(count, dtype=np.int64) * n) // max(count, 1)  # exact integer floor(k * n / count)
    return _measure("fixed", float(stride), None, None, int(n), starts, surprisal_bits)


@dataclass
class ThresholdSolution:
    """What ``solve_threshold`` found: the threshold, the mean it gives, and how far that is from the target."""

    rule: str
    threshold: float  # theta for global and combined, theta_r for monotonic (nats)
    target_mean: float
    mean_length: float
    patching: Patching

    @property
    def error(self) -> float:
        """mean_length - target_mean, in bytes (the mean moves in steps, so it is rarely exactly 0)."""
        return self.mean_length - self.target_mean


def solve_threshold(entropy_nats, target_mean: float, rule: str = "global", relative_threshold: float = 0.0,
                    max_length: int | None = None, surprisal_bits=None) -> ThresholdSolution:
    """The threshold whose mean patch length is nearest ``target_mean`` bytes.

    global: solves theta; monotonic: solves theta_r; combined: solves theta with ``relative_threshold``
    (theta_r) given. The mean only changes where the threshold crosses one of the tested values (an
    entropy, or a rise), and never falls as the threshold rises, so the candidates are those values
    and a bisection finds the nearest mean. A target outside the achievable means is refused with the
    range. Ties in the mean go to the lower threshold.
    """
    _check_rule(rule)
    h = _as_entropy(entropy_nats)
    n = h.shape[0]
    if not (isinstance(target_mean, (int, float)) and math.isfinite(target_mean)):
        raise ConfigError(f"target mean patch length must be a finite number of bytes, got {target_mean!r}")
    if n == 0:
        raise ConfigError("the text is empty: no patching has a mean length; pass some text")
    tested = np.diff(h) if rule == "monotonic" else h[1:]
    values = np.unique(tested)  # ascending; a threshold at values[i] keeps exactly the tested values above it
    # candidate thresholds: below everything (every tested byte passes), then each distinct value
    candidates = np.concatenate(([values[0] - 1.0] if values.size else [0.0], values))

    def run(theta: float, bits=None) -> Patching:  # bits only for the answer: the bisection needs counts
        if rule == "monotonic":
            return patching(h, bits, rule, relative_threshold=theta, max_length=max_length)
        return patching(h, bits, rule, threshold=theta, relative_threshold=relative_threshold, max_length=max_length)

    low, high = run(candidates[0]), run(candidates[-1])
    if not low.mean_length <= target_mean <= high.mean_length:
        extra = f", max_length {max_length}" if max_length is not None else ""
        raise ConfigError(f"target mean patch length {target_mean:g} bytes is out of reach for {n} bytes with the "
                          f"{rule} rule{extra}: achievable means are {low.mean_length:.4g} to {high.mean_length:.4g} bytes; "
                          "pick a target in that range")
    lo, hi = 0, candidates.shape[0] - 1  # invariant: mean(lo) <= target <= mean(hi)
    found = {lo: low, hi: high}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found[mid] = run(candidates[mid])
        if found[mid].mean_length <= target_mean:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda i: (abs(found[i].mean_length - target_mean), i))
    answer = run(candidates[best], surprisal_bits)
    return ThresholdSolution(rule, float(candidates[best]), float(target_mean), answer.mean_length, answer)


def solve_rules(entropy_nats, surprisal_bits, target_mean: float, relative_threshold: float = 0.0,
                max_length: int | None = None) -> list[Patching]:
    """Each rule solved for ``target_mean`` (combined with ``relative_threshold`` given), each followed by
    its fixed-stride baseline of the same mean: [global, fixed, monotonic, fixed, combined, fixed]."""
    h = _as_entropy(entropy_nats)
    out = []
    for rule in RULES:
        solved = solve_threshold(h, target_mean, rule, relative_threshold, max_length, surprisal_bits).patching
        out += [solved, fixed_stride(h.shape[0], solved.mean_length, surprisal_bits)]
    return out


def patch_table(patchings) -> pd.DataFrame:
    """One row per patching (``Patching.summary``): rule, thresholds in nats and bits, count, mean and median
    length, longest patch, mean bits per patch and the share of bits on patch-first bytes."""
    return pd.DataFrame([p.summary() for p in patchings])
