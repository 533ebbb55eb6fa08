"""The one path from a field to per-head results: segment -> measure -> crop -> classify -> explain.

Widgets, the CLI's ``analyze`` and the public API all call these functions (``classify_heads`` for fields,
``classify_crops`` for ready-made crops), so a head gets the same class wherever it is analysed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .crops import HeadCrops, extract_head_crops, paste_to_field
from .inference import Classifier
from .morphometry import measure_heads
from .segmentation import SegmentationParams, segment_heads
from .summary import uncertain_mask


@dataclass
class FieldResult:
    labels: np.ndarray  # (H, W) int32 instance labels
    table: pd.DataFrame  # morphometrics + class, confidence, p_<class>, uncertain
    crops: HeadCrops
    probs: np.ndarray  # (N, K), rows in table order
    heatmap: np.ndarray | None = None  # (H, W) Grad-CAM++ in [0, 1], aligned with the field
    attention: np.ndarray | None = None  # (H, W) CBAM spatial attention, aligned with the field
    crop_heatmaps: np.ndarray | None = None  # (N, S, S)


def add_class_columns(table: pd.DataFrame, probs: np.ndarray, class_names: list[str],
                      min_confidence: float = 0.6, max_entropy: float | None = None,
                      stain_delta_e: float | None = None) -> pd.DataFrame:
    """class, confidence, one p_<class> column per class, the uncertain flag (a new frame), and the crops' colour
    distance from the model's training crops (``Classifier.stain_distance``, one value per image) when known."""
    out = table.copy()
    k = len(class_names)
    probs = np.asarray(probs, dtype=float).reshape(-1, k)
    top = probs.argmax(1) if len(probs) else np.zeros(0, dtype=int)
    out["class"] = pd.Categorical([class_names[i] for i in top], categories=class_names)
    out["confidence"] = probs.max(1) if len(probs) else np.zeros(0)
    for i, name in enumerate(class_names):
        out[f"p_{name}"] = probs[:, i]
    out["uncertain"] = uncertain_mask(probs, min_confidence, max_entropy)
    if stain_delta_e is not None:
        out["stain_delta_e"] = float(stain_delta_e)
    return out


def classify_heads(
    image: np.ndarray,
    labels: np.ndarray,
    classifier: Classifier,
    pixel_size_um: float | None = None,
    tta: int = 1,
    min_confidence: float = 0.6,
    explain: bool = False,
    attention: bool = False,
    target: str | None = None,
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
) -> FieldResult:
    """Classify every head of a labels image (from segmentation or painted by hand) in a 2D field."""
    labels = np.asarray(labels)
    if labels.shape != np.asarray(image).shape[: labels.ndim] or labels.ndim != 2:
        raise ValueError(f"The labels layer's shape {labels.shape} does not match the image's spatial shape "
                         f"{np.asarray(image).shape[:2]}.")
    table = measure_heads(labels, pixel_size_um)
    crops = extract_head_crops(image, labels, crop_size=classifier.input_size,
                               head_fraction=classifier.head_fraction, align=True)
    order = {int(v): i for i, v in enumerate(crops.label_ids)}
    table = table[table["label"].isin(list(order))].reset_index(drop=True)
    idx = np.array([order[int(v)] for v in table["label"]], dtype=int)
    x = classifier.to_tensor(crops.images)  # once: classification and both maps read the same input
    probs = classifier.predict_proba(x, batch_size=batch_size, tta=tta) if len(crops.images) else \
        np.zeros((0, len(classifier.class_names)))
    probs = probs[idx] if len(idx) else probs
    table = add_class_columns(table, probs, classifier.class_names, min_confidence,
                              stain_delta_e=classifier.stain_distance(crops.images))
    result = FieldResult(labels=labels, table=table, crops=crops, probs=probs)
    if (explain or attention) and len(crops.images) and not (should_stop and should_stop()):
        from .explain import cbam_attention, gradcam_pp

        field_shape = labels.shape
        if explain:
            maps = gradcam_pp(classifier, x, target=target, batch_size=batch_size)
            result.crop_heatmaps = maps
            result.heatmap = paste_to_field(maps, crops.transforms, field_shape, labels=labels)
        if attention and classifier.spec.cbam:
            att = cbam_attention(classifier, x)
            result.attention = paste_to_field(att, crops.transforms, field_shape, labels=labels)
    return result


@dataclass
class CropsResult:
    prepared: HeadCrops  # the crops in the model's geometry; its transforms map results back onto the originals
    table: pd.DataFrame  # the given table (default: label 1..N) + class, confidence, p_<class>, uncertain, stain
    probs: np.ndarray  # (N, K), in crop order
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (N, S, S), in the prepared geometry


def iter_classify_crops(crops: Sequence[np.ndarray] | np.ndarray, classifier: Classifier, tta: int = 1,
                        min_confidence: float = 0.6, table: pd.DataFrame | None = None, batch_size: int = 32,
                        maps: Sequence[str] = (), target: str | int | None = None
                        ) -> Generator[tuple[int, int], None, CropsResult]:
    """Classify ready-made crops (one head each, any size), and make the ``maps`` asked for ("gradcam++",
    "cbam"; ``explain.crop_maps``): prepared once in the model's geometry (centred, aligned, scaled), then read in
    batches, each batch converted (and colour-matched) once for its classes and every map. Yields (crops done,
    total) before each batch, so a caller can report progress and stop between batches; returns the
    ``CropsResult`` (``explain.maps_onto_crops`` warps its maps back onto the original crops)."""
    from .explain import check_map_methods, crop_maps

    check_map_methods(maps)
    prepared = classifier.prepare_crops(crops)
    n, s = len(prepared), classifier.input_size
    parts: list[np.ndarray] = []
    made: dict[str, list[np.ndarray]] = {m: [] for m in maps}
    for i in range(0, n, batch_size):
        yield i, n
        x = classifier.to_tensor(prepared.images[i : i + batch_size])
        parts.append(classifier.predict_proba(x, batch_size=batch_size, tta=tta))
        for m in maps:
            made[m].append(crop_maps(classifier, x, m, target, batch_size))
    probs = np.concatenate(parts) if parts else np.zeros((0, len(classifier.class_names)))
    base = pd.DataFrame({"label": np.arange(1, n + 1)}) if table is None else table
    table = add_class_columns(base, probs, classifier.class_names, min_confidence,
                              stain_delta_e=classifier.stain_distance(prepared.images))
    out_maps = {m: np.concatenate(v) if v else np.zeros((0, s, s), np.float32) for m, v in made.items()}
    return CropsResult(prepared, table, probs, out_maps)


def classify_crops(crops: Sequence[np.ndarray] | np.ndarray, classifier: Classifier, tta: int = 1,
                   min_confidence: float = 0.6, table: pd.DataFrame | None = None, batch_size: int = 32,
                   maps: Sequence[str] = (), target: str | int | None = None) -> CropsResult:
    """``iter_classify_crops`` run to the end, for callers without progress to report."""
    steps = iter_classify_crops(crops, classifier, tta, min_confidence, table, batch_size, maps, target)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def analyze_field(image: np.ndarray, classifier: Classifier, pixel_size_um: float | None = None,
                  seg_params: SegmentationParams | None = None, **kwargs) -> FieldResult:
    """Segment a 2D field, then ``classify_heads``."""
    labels = segment_heads(image, pixel_size_um, seg_params)
    return classify_heads(image, labels, classifier, pixel_size_um, **kwargs)
