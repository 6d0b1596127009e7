"""Entropy patching (blm_lab.patching): BLT's three rules on hand-computed entropies, the solver, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from blm_lab.errors import ConfigError
from blm_lab.patching import BLT_THRESHOLD, fixed_stride, patch_starts, patch_table, patching, solve_threshold

# H[t] in nats: the entropy of the prediction for byte t; byte 0 is the uniform ln 256
H = [5.5, 0.5, 2.0, 1.0, 1.5, 3.0, 0.2, 0.3]
# rises H[t] - H[t-1]: t1 -5.0, t2 +1.5, t3 -1.0, t4 +0.5, t5 +1.5, t6 -2.8, t7 +0.1


def starts(*args, **kwargs) -> list[int]:
    return patch_starts(*args, **kwargs).tolist()


def test_global_rule_starts_where_entropy_is_above_theta():
    assert starts(H, "global") == [0, 2, 4, 5]  # 2.0, 1.5, 3.0 > 1.3354
    assert starts(H, "global", threshold=2.5) == [0, 5]
    assert starts(H, "global", threshold=10.0) == [0]  # byte 0 always starts a patch


def test_monotonic_rule_starts_where_entropy_rose_by_more_than_theta_r():
    assert starts(H, "monotonic", relative_threshold=0.0) == [0, 2, 4, 5, 7]
    assert starts(H, "monotonic", relative_threshold=1.0) == [0, 2, 5]
    assert starts(H, "monotonic", relative_threshold=1.5) == [0]  # strictly more than theta_r


def test_combined_rule_needs_both_and_no_start_just_before():
    # pass both tests: t2, t4, t5 (t7 rose but 0.3 < theta); t5 follows t4's start, so it does not start
    assert starts(H, "combined", threshold=BLT_THRESHOLD, relative_threshold=0.0) == [0, 2, 4]
    # a run of four passing bytes after byte 0: every other one starts, byte 1 blocked by byte 0
    assert starts([1.0, 2.0, 3.0, 4.0, 5.0], "combined", threshold=0.5, relative_threshold=0.0) == [0, 2, 4]
    assert starts([6.0, 1.0, 2.0, 3.0, 4.0, 5.0], "combined", threshold=0.5) == [0, 2, 4]


def test_max_length_splits_long_patches_from_their_left():
    assert starts(H, "global", max_length=2) == [0, 2, 4, 5, 7]
    assert starts(H, "global", threshold=10.0, max_length=3) == [0, 3, 6]
    assert starts(H, "global", threshold=10.0, max_length=1) == list(range(8))


def test_patching_measures_lengths_bits_and_first_byte_share():
    surprisal = np.arange(8, dtype=np.float64)  # bits
    p = patching(H, surprisal, "global")
    assert p.lengths.tolist() == [2, 2, 1, 3]
    assert p.count == 4 and p.mean_length == 2.0 and p.median_length == 2.0
    assert p.histogram().tolist() == [0, 1, 2, 1]
    assert p.bits.tolist() == [1.0, 5.0, 4.0, 18.0]
    assert p.first_byte_share == pytest.approx((0 + 2 + 4 + 5) / 28)
    assert p.mask.tolist() == [True, False, True, False, True, True, False, False]
    row = patch_table([p]).iloc[0]
    assert row["threshold_bits"] == pytest.approx(BLT_THRESHOLD / np.log(2))
    assert row["bits_per_patch"] == pytest.approx(7.0)


def test_fixed_stride_matches_a_mean_length():
    base = fixed_stride(8, 2.0, np.arange(8.0))
    assert base.starts.tolist() == [0, 2, 4, 6] and base.mean_length == 2.0
    assert base.bits.tolist() == [1.0, 5.0, 9.0, 13.0]
    uneven = fixed_stride(9, 4.5)  # two patches of 4 and 5 bytes: the same mean, not a stride of 4
    assert uneven.starts.tolist() == [0, 4] and uneven.mean_length == 4.5 and uneven.threshold == 4.5
    assert fixed_stride(10, 2.6).starts.tolist() == [0, 2, 5, 7]  # 4 patches: stride 2.5


def test_solver_finds_the_known_threshold():
    h = [5.5, 3.0, 1.0, 2.0, 0.5, 4.0, 0.1, 0.2]
    exact = solve_threshold(h, 4.0)  # two patches: only 4.0 may pass, so theta in [3, 4): the lowest is 3
    assert exact.threshold == 3.0 and exact.mean_length == 4.0 and exact.error == 0.0
    assert exact.patching.starts.tolist() == [0, 5]
    near = solve_threshold(h, 3.0)  # means are 8/k: 8/3 is nearest 3
    assert near.mean_length == pytest.approx(8 / 3) and near.error == pytest.approx(8 / 3 - 3)
    assert near.threshold == 2.0 and near.patching.starts.tolist() == [0, 1, 5]
    mono = solve_threshold(H, 8 / 3, rule="monotonic")  # three starts: theta_r in [0.5, 1.5) -> 0.5
    assert mono.threshold == 0.5 and mono.patching.starts.tolist() == [0, 2, 5]
    combined = solve_threshold(H, 4.0, rule="combined", relative_threshold=0.0)
    assert combined.patching.count == 2 and combined.mean_length == 4.0


def test_unreachable_targets_name_the_range():
    with pytest.raises(ConfigError, match=r"achievable means are 1 to 8 bytes"):
        solve_threshold(H, 9.0)
    with pytest.raises(ConfigError, match=r"out of reach"):
        solve_threshold(H, 0.5)
    with pytest.raises(ConfigError, match=r"achievable means are 1 to 2\.667 bytes"):
        solve_threshold(H, 4.0, max_length=3)
    with pytest.raises(ConfigError, match="empty"):
        solve_threshold([], 2.0)
    with pytest.raises(ConfigError, match="unknown patching rule"):
        patch_starts(H, "entropy")
    with pytest.raises(ConfigError, match="NaN"):
        patch_starts([1.0, float("nan")])
    with pytest.raises(ConfigError, match="one per byte"):
        patching(H, np.zeros(3))


def test_empty_text_gives_an_empty_patching():
    p = patching([], [], "combined")
    assert p.count == 0 and p.mean_length == 0.0 and p.bits.tolist() == [] and p.first_byte_share is None
    assert fixed_stride(0, 4.0).count == 0
