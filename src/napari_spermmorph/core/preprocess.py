"""Preprocessing shared by training and inference: pad to square, resize, normalise.

Padding (not stretching) keeps the head's length/width ratio, which is diagnostic. The pad colour is the
median of the crop's border, i.e. the local background, so no dark frame appears that a network could learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .images import as_float_rgb


def pad_to_square(rgb: np.ndarray) -> np.ndarray:
    """Centre a float (H, W, 3) image on a square canvas filled with its border's median colour."""
    h, w = rgb.shape[:2]
    if h == w:
        return rgb
    side = max(h, w)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)
    out = np.empty((side, side, 3), dtype=np.float32)
    out[:] = np.median(border, axis=0)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = rgb
    return out


def crops_to_tensor(crops: Sequence[np.ndarray] | np.ndarray, size: int) -> torch.Tensor:
    """Any crops (gray/RGB/RGBA; uint8/uint16/float; any size) -> float tensor (N, 3, size, size) in [0, 1]."""
    if isinstance(crops, np.ndarray) and crops.ndim in (2, 3) and not _is_stack(crops):
        crops = [crops]
    out = torch.empty((len(crops), 3, size, size), dtype=torch.float32)
    for i, crop in enumerate(crops):
        sq = torch.from_numpy(pad_to_square(as_float_rgb(crop))).permute(2, 0, 1)[None]
        if sq.shape[-1] != size:
            sq = F.interpolate(sq, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i] = sq[0].clamp_(0, 1)
    return out


def _is_stack(arr: np.ndarray) -> bool:
    """(N, H, W) gray stacks are ambiguous with (H, W, 3): only a trailing 3/4 axis means colour."""
    return arr.ndim == 3 and arr.shape[-1] not in (3, 4)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
