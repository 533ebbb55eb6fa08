"""Image normalisation shared by segmentation, cropping and classification.

Everything downstream works on float32 RGB in [0, 1] (``as_float_rgb``) or on a single
"stain" channel that is high on stained heads (``stain_channel``).  Bad input raises
``ImageInputError`` with a message meant for the user, not for a developer.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ImageInputError", "as_float_rgb", "stain_channel", "is_rgb_shape", "split_planes"]


class ImageInputError(ValueError):
    """Raised with a user-readable message when an image cannot be processed."""


def is_rgb_shape(shape: tuple[int, ...]) -> bool:
    """Heuristic used when the caller does not say: a trailing axis of 3 or 4 after >= 2 axes is colour."""
    return len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4 and shape[-3] > 4


def _check_basic(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.size == 0:
        raise ImageInputError("The image is empty (it has no pixels).")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageInputError(f"Unsupported pixel type {arr.dtype}; expected integers or floats.")
    return arr


def _white_level(arr: np.ndarray, type_max: int) -> int:
    """The camera's full scale: 10-, 12- and 14-bit sensors are stored in uint16 but never reach 65535, so
    dividing by the type's maximum would give a nearly black image. The smallest common bit depth that holds
    the data is taken as white (8-bit data keep 255)."""
    if type_max <= 255:
        return type_max
    top = int(arr.max()) if arr.size else 0
    for bits in (10, 12, 14, 16):
        if top <= (1 << bits) - 1:
            return min((1 << bits) - 1, type_max)
    return type_max


def _to_unit_float(arr: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]: integers by their type's range, floats kept when already in [0, 1].

    NaNs are treated as background: they are replaced by the median of the finite values of their
    channel (bright-field background is the commonest value), so they never become heads.
    """
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = arr.astype(np.float32)
        if info.min < 0:
            out = (out - info.min) / float(info.max - info.min)
        else:
            out /= float(_white_level(arr, info.max))
        return out
    out = arr.astype(np.float32, copy=True)
    finite = np.isfinite(out)
    if not finite.all():
        if not finite.any():
            raise ImageInputError("The image contains only NaN or infinite values.")
        if out.ndim == 3:
            for c in range(out.shape[-1]):
                ch = out[..., c]
                ok = finite[..., c]
                fill = float(np.median(ch[ok])) if ok.any() else float(np.median(out[finite]))
                ch[~ok] = fill
        else:
            out[~finite] = float(np.median(out[finite]))
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    return out


def as_float_rgb(image: np.ndarray) -> np.ndarray:
    """Return float32 (H, W, 3) in [0, 1] for a 2D gray, (H, W, 1), RGB or RGBA image.

    Gray becomes three equal channels; RGBA drops alpha; uint8 is divided by 255, uint16 by the full scale of
    the smallest camera bit depth (10/12/14/16) that holds its values; floats in [0, 1] are kept, other floats
    are min-max scaled; NaNs become background.
    """
    arr = _check_basic(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        g = _to_unit_float(arr)
        return np.repeat(g[..., None], 3, axis=-1)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return np.ascontiguousarray(_to_unit_float(arr[..., :3]))
    raise ImageInputError(
        f"Expected a 2D gray image or an (H, W, 3/4) colour image, got shape {arr.shape}."
    )


def stain_channel(image: np.ndarray) -> np.ndarray:
    """Float32 (H, W) channel that is high on stained heads and low on the light background.

    Bright-field stains absorb most in one colour band (purple/blue heads absorb green: in the Sperm
    Parsing fields green drops from ~220 on background to ~5 in nuclei and ~110 in acrosomes, while
    red and blue drop far less).  ``1 - min(R, G, B)`` follows the most absorbed band whatever the
    stain colour, and reduces to ``1 - intensity`` for gray images.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8:
        # fast path for the common case: no float RGB copy
        mn = np.minimum(np.minimum(arr[..., 0], arr[..., 1]), arr[..., 2])
        return (1.0 - mn.astype(np.float32) / 255.0).astype(np.float32)
    rgb = as_float_rgb(image)
    return (1.0 - rgb.min(axis=-1)).astype(np.float32)


def split_planes(image: np.ndarray, rgb: bool | None = None) -> tuple[np.ndarray, bool]:
    """Reshape an nD image to (P, H, W[, C]) planes; returns (planes, rgb)."""
    arr = _check_basic(image)
    if rgb is None:
        rgb = is_rgb_shape(arr.shape)
    spatial_nd = 3 if rgb else 2
    if arr.ndim < spatial_nd:
        raise ImageInputError(
            f"Expected at least {spatial_nd} dimensions for a {'colour' if rgb else 'gray'} image, "
            f"got shape {arr.shape}."
        )
    if rgb and arr.shape[-1] not in (3, 4):
        raise ImageInputError(f"A colour image needs 3 or 4 channels on the last axis, got {arr.shape[-1]}.")
    spatial = arr.shape[arr.ndim - spatial_nd:]
    if min(spatial[:2]) < 2:
        raise ImageInputError(f"The image is too small to segment (shape {arr.shape}).")
    return arr.reshape((-1,) + spatial), bool(rgb)
