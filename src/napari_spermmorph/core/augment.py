"""Batch augmentation on tensors, suited to sperm heads: any rotation, flips, small affine, colour jitter.

Working on whole batches with one ``grid_sample`` is what makes CPU training fast enough here; per-image PIL
transforms cost more than the network's forward pass at 128 px.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    # uniform in [-r, r]. Crops are aligned first (major axis horizontal, core.crops.normalise_crops), so a small
    # rotation covers alignment error; use 180 (full rotations) for crops that are not aligned.
    rotation_deg: float = 20.0
    flips: bool = True
    # Crops oriented end for end (crops.extract_head_crops(orient=True)) keep their back on the right: only the
    # mirror across the major axis (top-bottom) is then a flip the model should see.
    keep_polarity: bool = False
    scale: tuple[float, float] = (0.9, 1.1)  # small: absolute head size is diagnostic
    translate: float = 0.05  # fraction of the crop
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """x: (N, 3, S, S) in [0, 1] -> augmented copy, same shape."""
    n = x.shape[0]

    def uni(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    angle = uni(-cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180.0)
    scale = uni(*cfg.scale)
    fx = torch.ones(n)
    fy = torch.ones(n)
    if cfg.flips:
        fx = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
        fy = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
        if cfg.keep_polarity:
            fx = torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin * fy
    theta[:, 1, 0], theta[:, 1, 1] = sin * fx, cos * fy
    theta[:, :, 2] = (torch.rand(n, 2, generator=gen) * 2 - 1) * cfg.translate * 2
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="border", align_corners=False)

    b = uni(1 - cfg.brightness, 1 + cfg.brightness).view(n, 1, 1, 1).to(x)
    c = uni(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1).to(x)
    s = uni(1 - cfg.saturation, 1 + cfg.saturation).view(n, 1, 1, 1).to(x)
    out = out * b
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * c + mean
    gray = out.mean(dim=1, keepdim=True)
    out = (out - gray) * s + gray
    return out.clamp_(0.0, 1.0)


def mixup(x: torch.Tensor, y_onehot: torch.Tensor, alpha: float, gen: torch.Generator | None = None):
    """MixUp (Zhang et al. 2018) with one Beta(alpha, alpha) weight per batch."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * y_onehot + (1 - lam) * y_onehot[perm]
