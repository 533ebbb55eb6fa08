"""Head crops for the classifier and the inverse warp of per-crop maps back into the field.

Each crop is a similarity transform of the field: centred on the head, optionally rotated so the
head's major axis is horizontal, optionally turned end for end so the head's back (tail side, darker
post-acrosomal half) is on the right, and scaled so the head length is ``head_fraction`` of the crop
side (the same head-to-crop ratio as the model's training crops).  Pixels outside the field are
filled by reflection, so crops near the border show no black wedges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage as ndi

from .images import as_float_rgb, stain_channel

#: Head length / crop side for every crop a model sees: field crops, training crops and ready-made crops
#: (normalise_crops) are all cut to it, so the classifier always sees heads at the same relative size.
DEFAULT_HEAD_FRACTION = 0.5

__all__ = [
    "CropTransform", "HeadCrops", "extract_head_crops", "paste_to_field", "estimate_head_fraction", "normalise_crops",
    "head_polarity",
]


@dataclass(frozen=True)
class CropTransform:
    """Crop pixel (r, c) -> field (y, x) = centre + scale * R(angle) @ (r - m, c - m), m = (S - 1) / 2.

    ``angle_deg`` is the direction of the crop's +c axis in the field (counter-clockwise as
    displayed, i.e. y down); ``scale`` is field pixels per crop pixel.
    """

    center_y: float
    center_x: float
    angle_deg: float
    scale: float
    crop_size: int
    label: int = 0

    def _axes(self) -> tuple[np.ndarray, np.ndarray]:
        a = math.radians(self.angle_deg)
        e_c = np.array([-math.sin(a), math.cos(a)])  # field (dy, dx) of one crop column step
        e_r = np.array([e_c[1], -e_c[0]])  # one crop row step: e_c turned so that det = +1
        return e_r * self.scale, e_c * self.scale

    def crop_to_field(self, rc: np.ndarray) -> np.ndarray:
        """(..., 2) crop (r, c) coordinates -> (..., 2) field (y, x)."""
        m = (self.crop_size - 1) / 2
        er, ec = self._axes()
        rc = np.asarray(rc, dtype=np.float64)
        return (np.array([self.center_y, self.center_x]) + (rc[..., :1] - m) * er + (rc[..., 1:] - m) * ec)

    def field_to_crop(self, yx: np.ndarray) -> np.ndarray:
        """(..., 2) field (y, x) -> (..., 2) crop (r, c); inverse of ``crop_to_field``."""
        m = (self.crop_size - 1) / 2
        er, ec = self._axes()
        d = np.asarray(yx, dtype=np.float64) - np.array([self.center_y, self.center_x])
        s2 = self.scale * self.scale
        return np.stack([d @ er / s2 + m, d @ ec / s2 + m], axis=-1)


@dataclass
class HeadCrops:
    images: np.ndarray  # (N, S, S, 3) float32 in [0, 1]
    label_ids: np.ndarray  # (N,) int
    transforms: list[CropTransform] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.label_ids.shape[0])

    def __getitem__(self, part: slice) -> HeadCrops:
        """A run of the crops (a slice), e.g. one batch, with their transforms."""
        if not isinstance(part, slice):
            raise TypeError("HeadCrops takes a slice, e.g. crops[0:32]")
        return HeadCrops(self.images[part], self.label_ids[part], self.transforms[part])


def _head_geometry(mask: np.ndarray, y0: int, x0: int) -> tuple[float, float, float, float]:
    """(cy, cx, length_px, angle_deg of the major axis, CCW as displayed) from second moments."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    vy, vx = ((ys - cy) ** 2).mean(), ((xs - cx) ** 2).mean()
    cov = ((ys - cy) * (xs - cx)).mean()
    common = math.sqrt(((vx - vy) / 2) ** 2 + cov**2)
    length = 4 * math.sqrt((vx + vy) / 2 + common)
    theta = 0.5 * math.atan2(2 * cov, vx - vy)  # x right, y down
    return cy + y0, cx + x0, max(length, 1.0), -math.degrees(theta)


def extract_head_crops(
    image: np.ndarray,
    labels: np.ndarray,
    crop_size: int = 128,
    head_fraction: float = DEFAULT_HEAD_FRACTION,
    align: bool = True,
    orient: bool = False,
) -> HeadCrops:
    """Crop every labelled head: centred, rotated (``align``) and scaled so length = head_fraction * S.

    ``orient`` (with ``align``) turns a crop by 180 degrees when ``head_polarity`` finds the head's back on the
    left, so every head points the same way and a model need not learn both.
    """
    rgb = as_float_rgb(image)
    lab = np.asarray(labels)
    if lab.shape != rgb.shape[:2]:
        raise ValueError(f"labels shape {lab.shape} does not match the image plane {rgb.shape[:2]}.")
    if not 0 < head_fraction <= 1:
        raise ValueError(f"head_fraction must be in (0, 1], got {head_fraction}.")
    s = int(crop_size)
    grid = np.stack(np.mgrid[0:s, 0:s], axis=-1).astype(np.float64)
    images, ids, tfs = [], [], []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        cy, cx, length, ang = _head_geometry(lab[sl] == i, sl[0].start, sl[1].start)
        tf = CropTransform(cy, cx, ang if align else 0.0, length / (head_fraction * s), s, i)
        yx = tf.crop_to_field(grid)
        coords = [yx[..., 0], yx[..., 1]]
        crop = np.stack(
            [ndi.map_coordinates(rgb[..., c], coords, order=1, mode="mirror") for c in range(3)], axis=-1
        )
        if align and orient and head_polarity(crop) < 0:
            crop = np.ascontiguousarray(crop[::-1, ::-1])  # = the transform turned by 180 degrees
            tf = replace(tf, angle_deg=tf.angle_deg + 180.0)
        images.append(np.clip(crop, 0, 1).astype(np.float32))
        ids.append(i)
        tfs.append(tf)
    imgs = np.stack(images) if images else np.zeros((0, s, s, 3), np.float32)
    return HeadCrops(imgs, np.asarray(ids, dtype=np.int64), tfs)


def paste_to_field(
    maps: np.ndarray,
    transforms: list[CropTransform],
    field_shape: tuple[int, ...],
    labels: np.ndarray | None = None,
    dilate_px: int = 10,
    *,
    masks: np.ndarray | None = None,
) -> np.ndarray:
    """Inverse-warp per-crop maps (N, S, S) into a float32 (H, W) field map (max where they overlap).

    With ``labels`` (alias ``masks``), each map is kept only on its own head dilated by ``dilate_px``
    pixels, so an explanation cannot spill onto neighbours.
    """
    if labels is None:
        labels = masks
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != len(transforms):
        raise ValueError(f"maps must be (N, S, S) with N = {len(transforms)} transforms, got {maps.shape}.")
    h, w = int(field_shape[0]), int(field_shape[1])
    out = np.zeros((h, w), dtype=np.float32)
    for mp, tf in zip(maps, transforms):
        s = mp.shape[0]
        corners = tf.crop_to_field(np.array([[0, 0], [0, s - 1], [s - 1, 0], [s - 1, s - 1]], float))
        y0, x0 = np.floor(corners.min(0)).astype(int)
        y1, x1 = np.ceil(corners.max(0)).astype(int) + 1
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if y1 <= y0 or x1 <= x0:
            continue
        yx = np.stack(np.mgrid[y0:y1, x0:x1], axis=-1).astype(np.float64)
        rc = tf.field_to_crop(yx)
        vals = ndi.map_coordinates(mp, [rc[..., 0], rc[..., 1]], order=1, mode="constant", cval=0.0)
        if labels is not None and tf.label:
            own = np.asarray(labels)[y0:y1, x0:x1] == tf.label
            if dilate_px > 0:
                own = ndi.binary_dilation(own, iterations=int(dilate_px))
            vals = np.where(own, vals, 0.0)
        region = out[y0:y1, x0:x1]
        np.maximum(region, vals.astype(np.float32), out=region)
    return out


def _central_object_mask(crop: np.ndarray) -> np.ndarray | None:
    """Mask of the dark object nearest the crop centre, tails removed (None when there is none)."""
    from skimage.filters import threshold_otsu

    st = stain_channel(crop)
    if st.max() - st.min() < 0.05:
        return None
    m = st > threshold_otsu(st)
    side = min(st.shape[:2])
    # strip tails/midpieces: opening radius ~ 4 % of the side (a head is ~ 1/3 to 2/3 of a crop)
    r = max(1.0, 0.04 * side)
    core = ndi.distance_transform_edt(m) > r
    m = ndi.binary_fill_holes((ndi.distance_transform_edt(~core) <= r) & m)
    lab, n = ndi.label(m)
    if n == 0:
        return None
    c = (np.array(st.shape[:2]) - 1) / 2
    best, bestd = 0, np.inf
    for i, (sl, area) in enumerate(zip(ndi.find_objects(lab), ndi.sum(m, lab, range(1, n + 1))), start=1):
        if area < 0.002 * st.size:
            continue
        ys, xs = np.nonzero(lab[sl] == i)
        d = float(np.hypot(ys.mean() + sl[0].start - c[0], xs.mean() + sl[1].start - c[1]))
        if d < bestd:
            best, bestd = i, d
    return (lab == best) if best else None


def head_polarity(crop: np.ndarray, tail_margin: float = 0.2) -> int:
    """Which end of an aligned head (major axis horizontal) is its back: +1 right, -1 left, 0 undecided.

    The tail leaves from the back: stained pixels beyond each end of the head, in a band along the axis, are
    counted, and a clear majority (relative difference above ``tail_margin``) decides. Otherwise the darker half
    of the head decides: the acrosome at the front takes up less stain than the nucleus behind it.
    """
    from skimage.filters import threshold_otsu

    head = _central_object_mask(crop)
    if head is None:
        return 0
    st = stain_channel(crop)
    side = st.shape[1]
    mid = (st.shape[0] - 1) / 2
    cols = np.flatnonzero(head.any(axis=0))
    c0, c1 = int(cols[0]), int(cols[-1])
    beyond = (st > threshold_otsu(st)) & ~ndi.binary_dilation(head, iterations=2)
    band = beyond[int(mid - 0.1 * side): int(mid + 0.1 * side) + 1]
    reach = int(0.2 * side)
    left, right = float(band[:, max(0, c0 - reach):c0].sum()), float(band[:, c1 + 1:c1 + 1 + reach].sum())
    if abs(right - left) > tail_margin * max(1.0, right + left):
        return 1 if right > left else -1
    right_half = head & (np.arange(side)[None, :] >= (c0 + c1) / 2)
    left_half = head & ~right_half
    if not (right_half.any() and left_half.any()):
        return 0
    return int(np.sign(st[right_half].mean() - st[left_half].mean()))


def _central_object_length(crop: np.ndarray) -> float | None:
    """Major-axis length (px) of the dark object nearest the crop centre, tails removed."""
    mask = _central_object_mask(crop)
    return None if mask is None else _head_geometry(mask, 0, 0)[2]


def normalise_crops(
    crops, crop_size: int, head_fraction: float, align: bool = True, find_head: bool = True, orient: bool = False
) -> tuple[HeadCrops, np.ndarray]:
    """Give ready-made crops (HuSHeM/SMIDS style, any size) the geometry of field crops.

    The central head is found, then cut with ``extract_head_crops``: centred, aligned and scaled to
    ``head_fraction``, exactly as heads in a field are. Crops without a findable head (or all, when
    ``find_head`` is False) are padded to a square and resized instead. Each crop's transform maps the
    result back onto the original crop (``paste_to_field``), e.g. for heatmaps.
    Returns (HeadCrops with ``label_ids`` = crop index, found (N,) bool).
    """
    from .preprocess import pad_to_square

    n, s = len(crops), int(crop_size)
    out = np.empty((n, s, s, 3), np.float32)
    found = np.zeros(n, bool)
    tfs: list[CropTransform] = []
    for k, crop in enumerate(crops):
        crop = np.asarray(crop)
        mask = _central_object_mask(crop) if find_head else None
        if mask is not None:
            got = extract_head_crops(crop, mask.astype(np.int32), s, head_fraction, align, orient)
            out[k], found[k] = got.images[0], True
            tfs.append(got.transforms[0])
            continue
        sq = pad_to_square(as_float_rgb(crop))
        side = sq.shape[0]
        zoom = (s / side, s / side, 1)
        out[k] = np.clip(ndi.zoom(sq, zoom, order=1, grid_mode=True, mode="nearest"), 0, 1)[:s, :s]
        h, w = crop.shape[:2]
        tfs.append(CropTransform((h - 1) / 2, (w - 1) / 2, 0.0, side / s, s, 0))
    return HeadCrops(out, np.arange(n, dtype=np.int64), tfs), found


def estimate_head_fraction(crops: list[np.ndarray]) -> float:
    """Median (head major axis / crop side) over training-style crops (one stained head near the centre).

    The crop side is the geometric mean of height and width, for crops that are not square.
    """
    vals = []
    for crop in crops:
        arr = np.asarray(crop)
        length = _central_object_length(arr)
        if length is not None:
            vals.append(length / math.sqrt(arr.shape[0] * arr.shape[1]))
    if not vals:
        raise ValueError("No head found in any crop; cannot estimate the head fraction.")
    return float(np.median(vals))
