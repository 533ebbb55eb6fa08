"""Per-sample summary: Wilson intervals against published values, counts, the WHO 200-head warning."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from napari_spermmorph.core.summary import (
    WHO_MIN_HEADS,
    format_summary,
    sample_summary,
    uncertain_mask,
    wilson_interval,
)


@pytest.mark.parametrize("k, n, low, high", [
    (31, 33, 0.8039, 0.9832),  # 93.9% of 33
    (0, 10, 0.0, 0.2775),  # upper bound z^2 / (n + z^2)
    (10, 10, 0.7225, 1.0),
    (50, 100, 0.4038, 0.5962),
    (1, 20, 0.0089, 0.2361),
])
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert (lo == 0.0) == (k == 0) and (hi == 1.0) == (k == n)  # exact at 0% and 100%, never past k/n


def test_wilson_interval_empty_and_symmetry():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    lo, hi = wilson_interval(7, 40)
    lo2, hi2 = wilson_interval(33, 40)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    # more heads, narrower interval at the same proportion
    assert np.diff(wilson_interval(70, 400)) < np.diff(wilson_interval(7, 40))


def _table(classes: list[str], uncertain: list[bool] | None = None) -> pd.DataFrame:
    t = pd.DataFrame({"label": np.arange(1, len(classes) + 1), "class": classes})
    if uncertain is not None:
        t["uncertain"] = uncertain
    return t


def test_sample_summary_counts_percent_and_warning():
    names = ["normal", "tapered", "amorphous"]
    t = _table(["normal"] * 31 + ["tapered", "amorphous"], uncertain=[False] * 32 + [True])
    s = sample_summary(t, names, "normal")
    assert s["n_heads"] == 33 and s["counts"] == {"normal": 31, "tapered": 1, "amorphous": 1}
    assert s["percent_normal"] == pytest.approx(100 * 31 / 33)
    assert (s["ci95_low"], s["ci95_high"]) == pytest.approx((80.39, 98.32), abs=0.01)
    assert s["uncertain_labels"] == [33]
    assert str(WHO_MIN_HEADS) in s["warning"] and "33" in s["warning"]
    text = format_summary(s)
    assert "normal 93.9%" in text and "80.4-98.3%" in text


def test_no_warning_from_200_heads_and_no_normal_class():
    s = sample_summary(_table(["a"] * 120 + ["b"] * 80), ["a", "b"], normal_class="normal")
    assert s["warning"] == "" and "percent_normal" not in s and s["counts"] == {"a": 120, "b": 80}
    empty = sample_summary(_table([]), ["normal", "b"])
    assert empty["n_heads"] == 0 and math.isnan(empty["percent_normal"]) and empty["warning"]


def test_uncertain_mask_confidence_and_entropy():
    probs = np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.61, 0.39, 0.0]])
    assert uncertain_mask(probs, 0.6).tolist() == [False, True, False]
    assert uncertain_mask(probs, 0.6, max_entropy=0.5).tolist() == [False, True, True]
    assert uncertain_mask(np.zeros((0, 3))).shape == (0,)
