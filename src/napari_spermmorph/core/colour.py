"""Colour matching of crops to a model's training colours (Reinhard et al. 2001 colour transfer in CIE-Lab).

Stains differ between labs (HuSHeM's Diff-Quik crops are pink and purple, SMIDS and Sperm Parsing fields blue and
violet), and a network trained on one lab's colours reads another's as a different class. Moving each crop's Lab
mean and spread onto those of the training crops removes the global colour difference; shape is untouched.
``benchmarks/bench_cross_dataset.py`` measures what it buys across datasets.

The same statistics warn before a model reads another lab's colours: a checkpoint records its training crops'
reference, and ``stain_distance`` is how far the crops being classified are from it (CIE76 colour difference of
their average colour). The cross-dataset benchmark also measures that distance within and across datasets.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .images import as_float_rgb

_EPS = 1e-6


@dataclass(frozen=True)
class ColourReference:
    """Per-channel CIE-Lab mean and standard deviation (L, a, b), averaged over a set of crops."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"lab_mean": list(self.mean), "lab_std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> ColourReference:
        return cls(tuple(float(v) for v in d["lab_mean"]), tuple(float(v) for v in d["lab_std"]))


def _lab_stats(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = lab.reshape(-1, 3)
    return flat.mean(0), flat.std(0)


def colour_reference(images: Iterable[np.ndarray]) -> ColourReference:
    """The average per-crop Lab statistics of ``images`` (any gray/RGB dtype that ``as_float_rgb`` takes)."""
    from skimage.color import rgb2lab

    stats = [_lab_stats(rgb2lab(as_float_rgb(im))) for im in images]
    if not stats:
        raise ValueError("colour_reference needs at least one image")
    mean = np.mean([m for m, _ in stats], axis=0)
    std = np.mean([s for _, s in stats], axis=0)
    return ColourReference(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def stain_distance(images: Iterable[np.ndarray], reference: ColourReference) -> float:
    """CIE76 colour difference (Delta E) between the average Lab colour of ``images`` and the reference's.

    A median 1.2-1.3 (at most 7.6) for batches of ten crops from a shipped model's own training set, 13-32 for
    other labs' (the cross-dataset benchmark); ``defaults.STAIN_DELTA_E_LIMIT`` is where a warning starts.
    """
    return colour_distance(colour_reference(images), reference)


def colour_distance(a: ColourReference, b: ColourReference) -> float:
    """CIE76 Delta E between two references' average colours."""
    return float(np.linalg.norm(np.asarray(a.mean) - np.asarray(b.mean)))


def pooled_reference(parts: Iterable[tuple[ColourReference, int]]) -> ColourReference:
    """The reference of several sets of crops from each set's reference and size: for data read in chunks."""
    parts = list(parts)
    w = np.asarray([n for _, n in parts], dtype=float)
    if not w.sum():
        raise ValueError("pooled_reference needs at least one image")
    mean = (np.asarray([r.mean for r, _ in parts]) * w[:, None]).sum(0) / w.sum()
    std = (np.asarray([r.std for r, _ in parts]) * w[:, None]).sum(0) / w.sum()
    return ColourReference(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def stain_warning(delta_e: float, limit: float) -> str:
    """The sentence a user reads when crops are ``delta_e`` from the model's training colours ('' when close)."""
    if not delta_e > limit:
        return ""
    return (f"These heads' colours differ from the model's training images (Delta E {delta_e:.0f} > {limit:g}): "
            "another stain or microscope. Check the classes by eye; matching colours to the model helps only partly, "
            "fine-tuning on this lab's images is the fix.")


def match_colour(image: np.ndarray, reference: ColourReference) -> np.ndarray:
    """``image`` as float32 RGB in [0, 1] whose Lab mean and standard deviation are the reference's."""
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(as_float_rgb(image))
    mean, std = _lab_stats(lab)
    out = (lab - mean) / (std + _EPS) * np.asarray(reference.std) + np.asarray(reference.mean)
    with warnings.catch_warnings():  # Lab values outside sRGB are clipped, as they should be: no warning per crop
        warnings.filterwarnings("ignore", message="Conversion from CIE-LAB")
        rgb = lab2rgb(out)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)
