"""Per-head morphometrics and WHO-style size/shape flags.

Axes come from the second moments of each head mask (the ellipse with the same moments), which is
robust to jagged outlines.  Units are in the column names: ``_um``/``_um2`` when the pixel size is
known, ``_px``/``_px2`` otherwise; the WHO size flags need micrometres and are missing (None) without.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["WhoThresholds", "measure_heads"]


@dataclass
class WhoThresholds:
    """Normal ranges for head length, width (um) and length/width (WHO 6th edition, 2021)."""

    length_um: tuple[float, float] = (3.7, 4.7)
    width_um: tuple[float, float] = (2.5, 3.2)
    ratio: tuple[float, float] = (1.3, 1.8)


def _orientation_deg(var_x: float, var_y: float, cov: float) -> float:
    """Angle of the major axis from the +x (column) axis, counter-clockwise as displayed, in (-90, 90]."""
    theta = 0.5 * math.atan2(2 * cov, var_x - var_y)  # x right, y down
    deg = -math.degrees(theta)  # y points down on screen: flip to counter-clockwise
    if deg <= -90:
        deg += 180
    if deg > 90:
        deg -= 180
    return deg


def measure_heads(
    labels2d: np.ndarray, pixel_size_um: float | None = None, thresholds: WhoThresholds | None = None
) -> pd.DataFrame:
    """One row per head: label, centroid_y/x, bbox, area, perimeter, length, width, ellipticity,
    orientation_deg, solidity, and WHO flags (``who_length_ok``, ``who_width_ok``, ``who_ratio_ok``,
    ``who_shape_normal``).  Centroids and bbox are always in pixels (they index the image)."""
    from skimage.measure import regionprops

    lab = np.asarray(labels2d)
    if lab.ndim != 2:
        raise ValueError(f"measure_heads expects a 2D label image, got shape {lab.shape}.")
    th = thresholds or WhoThresholds()
    known = pixel_size_um is not None and pixel_size_um > 0
    s = float(pixel_size_um) if known else 1.0
    lu, au = ("um", "um2") if known else ("px", "px2")
    rows = []
    for r in regionprops(lab.astype(np.int32, copy=False)):
        mu = r.moments_central
        m00 = mu[0, 0]
        # skimage moments_central[p, q] = sum row^p col^q: [2, 0] is the y (row) variance
        var_y, var_x, cov = mu[2, 0] / m00, mu[0, 2] / m00, mu[1, 1] / m00
        common = math.sqrt(max(((var_x - var_y) / 2) ** 2 + cov**2, 0.0))
        l1 = (var_x + var_y) / 2 + common
        l2 = max((var_x + var_y) / 2 - common, 0.0)
        length = 4 * math.sqrt(l1) * s
        width = 4 * math.sqrt(l2) * s
        ratio = length / width if width > 0 else float("nan")
        y0, x0, y1, x1 = r.bbox
        row = {
            "label": int(r.label),
            "centroid_y": float(r.centroid[0]),
            "centroid_x": float(r.centroid[1]),
            "bbox_y0": int(y0), "bbox_x0": int(x0), "bbox_y1": int(y1), "bbox_x1": int(x1),
            f"area_{au}": float(r.area) * s * s,
            f"perimeter_{lu}": float(r.perimeter) * s,
            f"length_{lu}": length,
            f"width_{lu}": width,
            "ellipticity": ratio,
            "orientation_deg": _orientation_deg(var_x, var_y, cov),
            "solidity": float(r.solidity),
        }
        ratio_ok = bool(th.ratio[0] <= ratio <= th.ratio[1]) if math.isfinite(ratio) else False
        if known:
            len_ok = bool(th.length_um[0] <= length <= th.length_um[1])
            wid_ok = bool(th.width_um[0] <= width <= th.width_um[1])
            normal = len_ok and wid_ok and ratio_ok
        else:
            len_ok = wid_ok = normal = None
        row.update(who_length_ok=len_ok, who_width_ok=wid_ok, who_ratio_ok=ratio_ok, who_shape_normal=normal)
        rows.append(row)
    cols = ["label", "centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", f"area_{au}",
            f"perimeter_{lu}", f"length_{lu}", f"width_{lu}", "ellipticity", "orientation_deg", "solidity",
            "who_length_ok", "who_width_ok", "who_ratio_ok", "who_shape_normal"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("who_length_ok", "who_width_ok", "who_shape_normal"):
        df[c] = df[c].astype(object if not known else bool)
    df["who_ratio_ok"] = df["who_ratio_ok"].astype(bool)
    return df
