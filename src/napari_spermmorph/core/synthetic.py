"""Seeded synthetic data: stained bright-field fields with known heads, and class-shaped head crops.

Used by tests and demos so that nothing depends on the licensed real data.  The look follows the
Sperm Parsing fields: light, slightly uneven lilac background; dark blue-purple nuclei with a paler
acrosome cap; thin pale midpieces and long tails; small dark debris; sensor noise and a little blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["SyntheticField", "synthetic_field", "synthetic_head_crops", "SYNTHETIC_CLASSES"]

SYNTHETIC_CLASSES = ("normal", "tapered", "pyriform", "amorphous")

_BG = np.array([222, 222, 232], dtype=np.float32)
_NUCLEUS = np.array([70, 10, 180], dtype=np.float32)
_ACROSOME = np.array([150, 105, 215], dtype=np.float32)
_TAIL = np.array([175, 170, 222], dtype=np.float32)


@dataclass
class SyntheticField:
    image: np.ndarray  # uint8 (H, W, 3) or (H, W)
    labels: np.ndarray  # int32 (H, W), ground-truth heads, 0 = background
    pixel_size_um: float


def _ellipse_coords(shape, cy, cx, a, b, theta):
    """(u, v) normalised ellipse coordinates: u along the major axis (-1..1 inside), v across."""
    yy, xx = np.mgrid[0: shape[0], 0: shape[1]].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    return u, v


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float | np.ndarray = 1.0) -> None:
    a = (mask.astype(np.float32) * alpha)[..., None]
    img[:] = img * (1 - a) + colour * a


def _line_mask(shape, pts: np.ndarray, width_px: float) -> np.ndarray:
    """Mask of a polyline with a given width (distance transform of the rasterised centre line)."""
    from skimage.draw import line

    centre = np.zeros(shape, dtype=bool)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        rr, cc = line(int(round(y0)), int(round(x0)), int(round(y1)), int(round(x1)))
        ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        centre[rr[ok], cc[ok]] = True
    if not centre.any():
        return centre
    return ndi.distance_transform_edt(~centre) <= width_px / 2


def synthetic_field(
    shape: tuple[int, int] = (512, 512),
    n_heads: int = 8,
    seed: int = 0,
    touching_pairs: int = 1,
    rgb: bool = True,
    pixel_size_um: float = 0.1,
    debris: bool = True,
) -> SyntheticField:
    """A stained bright-field field with ``n_heads`` heads (``touching_pairs`` pairs of them touching).

    Heads are ~4.5 x 3 um ellipses (jittered); tails (midpiece + tail) never cross another head;
    the ground truth holds only heads (nucleus + acrosome), as in the real annotations.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    px = pixel_size_um
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # uneven illumination: a gentle gradient and a broad bump
    bump = np.exp(-((xx - w * 0.4) ** 2 + (yy - h * 0.6) ** 2) / (2 * (0.4 * max(h, w)) ** 2))
    illum = 1.0 - 0.05 * (xx / w) - 0.03 * (yy / h) + 0.03 * bump
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = _BG
    labels = np.zeros((h, w), dtype=np.int32)

    a_px, b_px = 2.25 / px, 1.5 / px  # semi-axes
    margin = a_px * 1.6
    heads: list[tuple[float, float, float, float, float]] = []  # cy, cx, a, b, theta
    n_pairs = min(touching_pairs, n_heads // 2)
    tries = 0
    while len(heads) < n_heads and tries < 5000:
        tries += 1
        a = a_px * rng.uniform(0.9, 1.1)
        b = b_px * rng.uniform(0.9, 1.1)
        th = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
        group = [(cy, cx, a, b, th)]
        if len(heads) < 2 * n_pairs:  # partner side by side, overlapping by ~10 % of the width
            d = 2 * b * 0.9
            group.append((cy + d * np.cos(th), cx - d * np.sin(th), a, b, th + rng.uniform(-0.15, 0.15)))
        ok = True
        for gy, gx, ga, _, _ in group:
            if not (margin <= gy <= h - margin and margin <= gx <= w - margin):
                ok = False
            for hy, hx, ha, _, _ in heads:
                if np.hypot(gy - hy, gx - hx) < 2.6 * max(ga, ha):
                    ok = False
        if ok:
            heads.extend(group)

    # tails first so heads are painted over them
    for cy, cx, a, _b, th in heads:
        direction = np.array([np.sin(th), np.cos(th)])  # (dy, dx) along the major axis
        start = np.array([cy, cx]) + direction * a * 0.95
        pts = [start]
        ang = th
        seg = 1.0 / px
        for _ in range(40):  # 40 um of midpiece + tail in 1 um steps
            ang += rng.normal(0, 0.08)
            pts.append(pts[-1] + seg * np.array([np.sin(ang), np.cos(ang)]))
        pts = np.array(pts)
        mid = _line_mask((h, w), pts[:6], 0.9 / px)
        tail = _line_mask((h, w), pts[5:], 0.45 / px)
        _paint(img, tail, _TAIL, 0.8)
        _paint(img, mid, _TAIL * 0.85, 0.9)

    if debris:
        for _ in range(int(rng.integers(6, 14))):
            r = rng.uniform(0.3, 0.8) / px
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            _paint(img, m, np.array([60, 40, 170], np.float32), rng.uniform(0.6, 0.95))
        for _ in range(int(rng.integers(2, 5))):  # pale pink stain clouds
            r = rng.uniform(1.5, 3.0) / px
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            _paint(img, m > 0.05, np.array([200, 160, 215], np.float32), m * 0.6)

    # heads: overlapping pixels of a touching pair go to the nearer centre
    best = np.full((h, w), np.inf, dtype=np.float32)
    for i, (cy, cx, a, b, th) in enumerate(heads, start=1):
        u, v = _ellipse_coords((h, w), cy, cx, a, b, th)
        r2 = u * u + v * v
        inside = r2 <= 1.0
        closer = inside & (r2 < best)
        labels[closer] = i
        best[closer] = r2[closer]
        nucleus = inside & (u > -0.35 + 0.15 * v * v)
        _paint(img, inside, _ACROSOME)
        _paint(img, nucleus, _NUCLEUS)

    img *= illum[..., None]
    img = ndi.gaussian_filter(img, sigma=(0.8, 0.8, 0))
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if not rgb:
        out = (out.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    return SyntheticField(image=out, labels=labels, pixel_size_um=pixel_size_um)


# ------------------------------------------------------------------------------------------ crops
def _class_mask(cls: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Head mask and nucleus mask for one class, centred, head length ~0.55 * size, random angle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2 + rng.normal(0, size * 0.01, 2)
    th = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - c[0], xx - c[1]
    u = (dx * np.cos(th) + dy * np.sin(th)) / (0.55 * size / 2 * rng.uniform(0.92, 1.08))
    v = (-dx * np.sin(th) + dy * np.cos(th)) / (0.55 * size / 2)
    if cls == "normal":  # oval, length/width ~1.55
        half_w = 1 / 1.55 * np.sqrt(np.clip(1 - u * u, 0, None))
    elif cls == "tapered":  # long and thin, cigar-like, length/width ~2.3
        half_w = 1 / 2.3 * np.sqrt(np.clip(1 - u * u, 0, None)) * (1 - 0.25 * np.clip(u, 0, 1))
    elif cls == "pyriform":  # pear: wide front, narrow base
        t = np.clip((u + 1) / 2, 0, 1)
        half_w = (0.75 * (1 - t) ** 0.8 * np.sqrt(np.clip(1 - u * u, 0, None)) * 1.5 + 0.08) / 1.55
        half_w = np.where(np.abs(u) <= 1, half_w, 0)
    elif cls == "amorphous":  # irregular outline from random radial harmonics
        ang = np.arctan2(v, u)
        rad = np.hypot(u * 0.85, v * 1.1)
        k = rng.uniform(0.12, 0.22, 3)
        ph = rng.uniform(0, 2 * np.pi, 3)
        bound = 0.85 + sum(k[i] * np.cos((i + 2) * ang + ph[i]) for i in range(3))
        mask = rad <= bound
        return mask, mask & (u > -0.3)
    else:
        raise ValueError(f"Unknown synthetic class {cls!r}; known: {SYNTHETIC_CLASSES}")
    mask = (np.abs(u) <= 1) & (np.abs(v) <= half_w)
    return mask, mask & (u > -0.35)


def synthetic_head_crops(
    n_per_class: int = 20,
    classes: tuple[str, ...] | list[str] = SYNTHETIC_CLASSES,
    size: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Training-style crops (one stained head centred on light background) whose shape depends on class.

    Returns (images uint8 (N, size, size, 3), labels int64 (N,) indexing ``classes``), shuffled.
    """
    rng = np.random.default_rng(seed)
    imgs, labs = [], []
    for ci, cls in enumerate(classes):
        for _ in range(n_per_class):
            mask, nuc = _class_mask(cls, size, rng)
            img = np.empty((size, size, 3), np.float32)
            img[:] = _BG * rng.uniform(0.95, 1.02)
            jitter = rng.normal(0, 8, 3).astype(np.float32)
            _paint(img, mask, np.clip(_ACROSOME + jitter, 0, 255))
            _paint(img, nuc, np.clip(_NUCLEUS + jitter, 0, 255))
            img = ndi.gaussian_filter(img, sigma=(0.7, 0.7, 0))
            img += rng.normal(0, 3.0, img.shape).astype(np.float32)
            imgs.append(np.clip(img, 0, 255).astype(np.uint8))
            labs.append(ci)
    order = rng.permutation(len(imgs))
    return np.stack(imgs)[order], np.asarray(labs, dtype=np.int64)[order]
