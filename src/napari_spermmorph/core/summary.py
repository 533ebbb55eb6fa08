"""Per-sample summary a clinician reads: counts per class, % normal with a Wilson interval, WHO minimum."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .colour import stain_warning
from .defaults import STAIN_DELTA_E_LIMIT

WHO_MIN_HEADS = 200


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion k/n (well behaved for small n and for 0% or 100%)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: no rounding residue at 0% or 100%
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def uncertain_mask(probs: np.ndarray, min_confidence: float = 0.6, max_entropy: float | None = None) -> np.ndarray:
    """Heads to review: top probability below ``min_confidence`` or normalised entropy above ``max_entropy``."""
    probs = np.asarray(probs, dtype=float)
    if probs.size == 0:
        return np.zeros(len(probs), dtype=bool)
    flag = probs.max(1) < min_confidence
    if max_entropy is not None and probs.shape[1] > 1:
        ent = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1) / np.log(probs.shape[1])
        flag |= ent > max_entropy
    return flag


def sample_summary(table: pd.DataFrame, class_names: list[str], normal_class: str | None = "normal",
                   class_col: str = "class", uncertain_col: str = "uncertain") -> dict:
    """Counts per class, % normal with its 95% Wilson interval, and the WHO 200-head warning."""
    n = int(len(table))
    counts = {c: int((table[class_col] == c).sum()) for c in class_names} if n else dict.fromkeys(class_names, 0)
    out: dict = {"n_heads": n, "counts": counts}
    if normal_class is not None and normal_class in class_names:
        k = counts[normal_class]
        lo, hi = wilson_interval(k, n)
        out.update(percent_normal=100.0 * k / n if n else float("nan"), ci95_low=100.0 * lo, ci95_high=100.0 * hi)
    if uncertain_col in table:
        out["uncertain_labels"] = [int(v) for v in table.loc[table[uncertain_col].astype(bool), "label"]]
    warnings = []
    if n < WHO_MIN_HEADS:
        warnings.append(f"Only {n} heads assessed; WHO recommends at least {WHO_MIN_HEADS} per sample.")
    if "stain_delta_e" in table and n:
        # per head, its image's value: the mean weights each image by its heads
        out["stain_delta_e"] = float(table["stain_delta_e"].astype(float).mean())
        warnings.append(stain_warning(out["stain_delta_e"], STAIN_DELTA_E_LIMIT))
    out["warning"] = " ".join(w for w in warnings if w)
    return out


def format_summary(summary: dict) -> str:
    """One human line, used by the widget and the CLI."""
    parts = [f"{summary['n_heads']} heads"]
    parts += [f"{c}: {k}" for c, k in summary["counts"].items()]
    if "percent_normal" in summary and summary["n_heads"]:
        parts.append(f"normal {summary['percent_normal']:.1f}% (95% CI {summary['ci95_low']:.1f}-"
                     f"{summary['ci95_high']:.1f}%)")
    text = ", ".join(parts)
    if summary.get("warning"):
        text += f". {summary['warning']}"
    return text
