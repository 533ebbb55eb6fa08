"""Classical sperm-head instance segmentation for stained bright-field fields.

Pipeline (one 2D plane): stain channel -> block-mean downsampling to a working pixel size ->
threshold -> opening with a disk sized from the head width (strips tails and midpieces) ->
hole filling -> distance-transform watershed (splits touching heads) -> size/shape filters in
physical units -> per-head boundary refinement at full resolution -> optional removal of heads
cut by the border.  All sizes are in micrometres so one parameter set works at any magnification.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from .images import ImageInputError, _check_basic, split_planes, stain_channel

__all__ = [
    "DEFAULT_PIXEL_SIZE_UM",
    "SegmentationParams",
    "SegmentationCancelled",
    "segment_heads",
    "segment_image",
]

#: Pixel size assumed when the caller gives none (um/px).  Derived from the Sperm Parsing training
#: fields (1280x1024 JPEG, no calibration shipped): the median major axis of the annotated heads
#: (Nucleus + Acrosome + Vacuole polygons per ``group_id``, 452 heads in every 4th field) is 90.5 px.
#: Taking the middle of the WHO normal head-length range (3.7-4.7 um -> 4.2 um) as that median gives
#: 4.2 / 90.5 = 0.046 um/px.  Morphometry in um is therefore only indicative without a calibration.
DEFAULT_PIXEL_SIZE_UM = 0.046


class SegmentationCancelled(RuntimeError):
    """Raised by ``segment_image`` when ``should_stop()`` returns True between planes."""


@dataclass
class SegmentationParams:
    """Segmentation parameters; sizes in micrometres (converted with the pixel size).

    threshold: None -> automatic (Otsu over the pixels darker than the background median, plus
    ``threshold_offset``); a float in stain units overrides.  Defaults were tuned on the first half
    of the Sperm Parsing training fields (benchmarks/bench_segmentation.py).
    """

    head_length_um: float = 4.2
    head_width_um: float = 2.8
    work_pixel_um: float = 0.09  # process at about this pixel size (speed); 0 = full resolution
    threshold: float | None = None
    threshold_offset: float = -0.1  # added to the automatic threshold (negative = larger heads)
    min_contrast: float = 0.08  # below this stain range the plane is treated as empty
    opening_radius_um: float = 0.75  # > half the midpiece width, < half the head width
    split_touching: bool = True
    split_h_um: float = 0.4  # h-maxima depth of the distance map that makes a new head seed
    split_max_solidity: float = 0.9  # blobs less convex than this are candidates for splitting ...
    split_min_area_um2: float = 14.0  # ... and so are blobs larger than this (side-by-side heads)
    split_min_piece_um2: float = 5.0  # a split is kept only if every piece is at least this large
    min_area_um2: float = 3.0
    max_area_um2: float = 25.0
    min_solidity: float = 0.80
    max_ellipticity: float = 3.5
    refine: bool = True  # re-draw each head's boundary at full resolution
    boundary_level: float | None = 0.25  # refine thr as a fraction background -> stain top; None = detection
    core_level: float = 0.7  # a head must hold >= core_min_um2 of stain above bg + core_level*(top - bg)
    core_min_um2: float = 0.5
    exclude_border: bool = False
    max_plane_pixels: int = 40_000_000  # larger planes are segmented in overlapping tiles
    tile_size_um: float = 400.0


# --------------------------------------------------------------------------------------------- helpers
def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img
    h, w = img.shape
    hh, ww = h // f * f, w // f * f
    out = img[:hh, :ww].reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))
    if hh < h or ww < w:  # keep the ragged edge by padding with the edge rows
        out = np.pad(out, ((0, int(hh < h)), (0, int(ww < w))), mode="edge")
    return out.astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values))


def auto_threshold(stain: np.ndarray, params: SegmentationParams) -> float | None:
    """Threshold in stain units, or None when the plane has no contrast worth segmenting.

    Otsu on a subsample, but computed only over pixels brighter than the background median so
    that the vast light background does not pull it down onto tails and debris.
    """
    if params.threshold is not None:
        return float(params.threshold)
    flat = stain.ravel()
    step = max(1, flat.size // 400_000)
    sample = flat[::step]
    bg = float(np.median(sample))
    hi = float(np.percentile(sample, 99.9))
    if hi - bg < params.min_contrast:
        return None
    above = sample[sample > bg]
    thr = _otsu(above) if above.size > 16 and above.max() > above.min() else (bg + hi) / 2
    return thr + params.threshold_offset


def _levels(stain: np.ndarray) -> tuple[float, float]:
    flat = stain.ravel()
    sample = flat[:: max(1, flat.size // 400_000)]
    return float(np.median(sample)), float(np.percentile(sample, 99.9))


def _open_disk(mask: np.ndarray, r: float) -> np.ndarray:
    """Binary opening with a disk of radius r via two distance transforms (cost independent of r)."""
    if r <= 0.5:
        return mask
    core = ndi.distance_transform_edt(mask) > r
    if not core.any():
        return core
    return (ndi.distance_transform_edt(~core) <= r) & mask


def _split(mask: np.ndarray, h_px: float, max_solidity: float, min_piece_px: float,
           big_px: float = np.inf) -> np.ndarray:
    """Split touching heads: watershed on the distance map, seeded by its h-maxima.

    Only components that are not convex enough (solidity < max_solidity) or too big (> big_px)
    are split, and a split is
    kept only when every piece is at least ``min_piece_px`` pixels, so a single pear-shaped head
    (acrosome + nucleus give two distance maxima) stays whole.
    """
    from skimage.measure import regionprops
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    lab, n = ndi.label(mask)
    lab = lab.astype(np.int32)
    nxt = n + 1
    for r in regionprops(lab):
        if (r.solidity >= max_solidity and r.area <= big_px) or r.area < 2 * min_piece_px:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in r.slice)
        m = lab[sl] == r.label
        dist = ndi.distance_transform_edt(m).astype(np.float32)
        # an oversize blob must hold several heads: look for shallower necks too
        hs = (h_px, h_px / 2, h_px / 4) if r.area > big_px else (h_px,)
        ws = None
        for hh in hs:
            seeds, nm = ndi.label(h_maxima(dist, max(hh, 0.5)).astype(bool) & m)
            if nm < 2:
                continue
            cand = watershed(-dist, seeds, mask=m)
            if np.bincount(cand.ravel())[1:].min() >= min_piece_px:
                ws = cand
                break
        if ws is None:
            continue
        sub = lab[sl]
        for k in range(2, nm + 1):
            sub[ws == k] = nxt
            nxt += 1
    return lab


def _filter(lab: np.ndarray, px: float, p: SegmentationParams) -> np.ndarray:
    from skimage.measure import regionprops

    keep = np.zeros(int(lab.max()) + 1, dtype=bool)
    a_px = px * px
    for r in regionprops(lab):
        area = r.area * a_px
        if not (p.min_area_um2 <= area <= p.max_area_um2):
            continue
        if r.solidity < p.min_solidity:
            continue
        minor = r.axis_minor_length
        if minor <= 0 or r.axis_major_length / minor > p.max_ellipticity:
            continue
        keep[r.label] = True
    out = np.where(keep[lab], lab, 0)
    return _relabel(out)


def _relabel(lab: np.ndarray) -> np.ndarray:
    ids = np.unique(lab)
    ids = ids[ids > 0]
    lut = np.zeros(int(lab.max()) + 1 if lab.size else 1, dtype=np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[lab]


def _refine(lab_small: np.ndarray, stain: np.ndarray, thr: float, f: int, r_px: float) -> np.ndarray:
    """Upsample labels and re-draw each head at full resolution inside a band of f pixels."""
    h, w = stain.shape
    up = np.repeat(np.repeat(lab_small, f, axis=0), f, axis=1)[:h, :w]
    if up.shape != (h, w):
        up = np.pad(up, ((0, h - up.shape[0]), (0, w - up.shape[1])), mode="edge")
    out = np.zeros((h, w), dtype=np.int32)
    pad = 2 * f + 1
    for i, sl in enumerate(ndi.find_objects(up), start=1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, h)
        x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, w)
        obj = up[y0:y1, x0:x1] == i
        near = ndi.binary_dilation(obj, iterations=2 * f)
        m = (stain[y0:y1, x0:x1] > thr) & near
        m = ndi.binary_fill_holes(_open_disk(m, r_px) | ndi.binary_erosion(obj, iterations=f))
        lab_m, n = ndi.label(m)
        if n > 1:  # keep the piece that overlaps the coarse head most
            counts = np.bincount(lab_m[obj], minlength=n + 1)
            counts[0] = 0
            m = lab_m == int(np.argmax(counts))
        region = out[y0:y1, x0:x1]
        region[m & (region == 0)] = i
    return out


def _require_core(lab: np.ndarray, core: np.ndarray, min_px: float) -> np.ndarray:
    """Drop objects without a dark core (pale debris, stain clouds): heads have a dense nucleus."""
    counts = np.bincount(lab[core].ravel(), minlength=int(lab.max()) + 1)
    keep = counts >= min_px
    keep[0] = False
    return np.where(keep[lab], lab, 0).astype(np.int32)


def _drop_border(lab: np.ndarray) -> np.ndarray:
    from skimage.segmentation import clear_border

    return _relabel(clear_border(lab))


# --------------------------------------------------------------------------------------------- 2D
def segment_heads(
    image2d: np.ndarray, pixel_size_um: float | None = None, params: SegmentationParams | None = None
) -> np.ndarray:
    """Segment sperm heads in one 2D plane (gray (H,W) or colour (H,W,3/4)); int32 labels, 0 = background.

    A constant (or nearly constant) plane returns all-zero labels without warning; the caller says
    "no heads found".  NaNs are treated as background (see ``images.as_float_rgb``).
    """
    p = params or SegmentationParams()
    px = float(pixel_size_um) if pixel_size_um else DEFAULT_PIXEL_SIZE_UM
    if not (px > 0 and math.isfinite(px)):
        raise ImageInputError(
            f"The pixel size must be a positive number of micrometres, got {pixel_size_um}."
        )
    arr = _check_basic(image2d)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise ImageInputError(
            f"segment_heads expects one 2D plane (H, W) or (H, W, 3/4); got shape {arr.shape}. "
            "Use segment_image for stacks."
        )
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    h, w = arr.shape[:2]
    if h * w > p.max_plane_pixels:
        return _segment_tiled(arr, px, p)
    stain = stain_channel(arr)
    thr = auto_threshold(stain, p)
    if thr is None:
        return np.zeros((h, w), dtype=np.int32)
    return _segment_plane(stain, px, p, thr)


def _segment_plane(
    stain: np.ndarray, px: float, p: SegmentationParams, thr: float,
    levels: tuple[float, float] | None = None,
) -> np.ndarray:
    h, w = stain.shape
    f = max(1, int(round(p.work_pixel_um / px))) if p.work_pixel_um > 0 else 1
    small = _block_mean(stain, f)
    wpx = px * f
    mask = small > thr
    mask = _open_disk(mask, p.opening_radius_um / wpx)
    mask = ndi.binary_fill_holes(mask)
    if p.split_touching:
        lab = _split(mask, p.split_h_um / wpx, p.split_max_solidity, p.split_min_piece_um2 / wpx**2,
                     p.split_min_area_um2 / wpx**2)
    else:
        lab = ndi.label(mask)[0].astype(np.int32)
    bg, top = levels if levels is not None else _levels(small)
    if p.core_level > 0:
        lab = _require_core(lab, small > bg + p.core_level * (top - bg), p.core_min_um2 / wpx**2)
    lab = _filter(lab, wpx, p)
    if f > 1:
        if p.refine:
            bthr = thr if p.boundary_level is None else bg + p.boundary_level * (top - bg)
            lab = _refine(lab, stain, bthr, f, p.opening_radius_um / px)
            lab = _filter(lab, px, p)
        else:
            lab = np.repeat(np.repeat(lab, f, axis=0), f, axis=1)[:h, :w]
            lab = np.pad(lab, ((0, h - lab.shape[0]), (0, w - lab.shape[1])), mode="edge")
    if p.exclude_border:
        lab = _drop_border(lab)
    return lab.astype(np.int32)


def _segment_tiled(arr: np.ndarray, px: float, p: SegmentationParams) -> np.ndarray:
    """Segment a huge plane in overlapping tiles with one global threshold.

    A head is kept from the tile whose core (tile minus half the overlap) holds its centroid; the
    overlap (3 head lengths) is larger than any head, so each head is whole in that tile.
    """
    h, w = arr.shape[:2]
    step = max(64, int(p.tile_size_um / px))
    ov = int(math.ceil(3 * p.head_length_um / px))
    # global threshold from a strided subsample
    s = max(1, int(math.sqrt(h * w / 1_000_000)))
    sub = stain_channel(arr[::s, ::s])
    thr = auto_threshold(sub, p)
    levels = _levels(sub)
    out = np.zeros((h, w), dtype=np.int32)
    if thr is None:
        return out
    nxt = 1
    for y in range(0, h, step):
        for x in range(0, w, step):
            y0, x0 = max(y - ov, 0), max(x - ov, 0)
            y1, x1 = min(y + step + ov, h), min(x + step + ov, w)
            tile = _segment_plane(stain_channel(arr[y0:y1, x0:x1]), px, p, thr, levels)
            for i, sl in enumerate(ndi.find_objects(tile), start=1):
                if sl is None:
                    continue
                m = tile[sl] == i
                cy, cx = (c.mean() for c in np.nonzero(m))
                cy, cx = cy + sl[0].start + y0, cx + sl[1].start + x0
                if not (y <= cy < y + step and x <= cx < x + step):
                    continue
                region = out[y0:y1, x0:x1][sl]
                region[m & (region == 0)] = nxt
                nxt += 1
    if p.exclude_border:
        out = _drop_border(out)
    return out


# --------------------------------------------------------------------------------------------- nD
def segment_image(
    image: np.ndarray,
    pixel_size_um: float | None = None,
    params: SegmentationParams | None = None,
    rgb: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Segment every 2D plane of an nD image (last two axes spatial, plus a trailing RGB axis).

    Returns int32 labels shaped like the image without its colour axis; ids are unique per plane.
    ``progress(done, total)`` is called after each plane and ``should_stop()`` before each one
    (True -> ``SegmentationCancelled``).  ``rgb=None`` guesses colour from a trailing axis of 3 or 4.
    """
    arr = np.asarray(image)
    planes, is_rgb = split_planes(arr, rgb)
    out_shape = arr.shape[:-1] if is_rgb else arr.shape
    out = np.zeros((planes.shape[0],) + planes.shape[1:3], dtype=np.int32)
    total = planes.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        for i in range(total):
            if should_stop is not None and should_stop():
                raise SegmentationCancelled(f"Segmentation cancelled after {i} of {total} planes.")
            out[i] = segment_heads(planes[i], pixel_size_um, params)
            if progress is not None:
                progress(i + 1, total)
    return out.reshape(out_shape)
