"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def classification_metrics(y_true, y_pred, class_names: list[str]) -> dict:
    """Rows of the confusion matrix are true classes, columns predictions."""
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = cm.sum(1) > 0
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(cm[i].sum())}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def heatmap_peak_hits(heat: np.ndarray, labels: np.ndarray, near_px: int = 3,
                      search_px: int = 12) -> tuple[int, int, int]:
    """Does each head's heatmap peak fall on that head? Returns (heads, peaks inside the mask, peaks within
    ``near_px`` of it). The peak is searched in the head dilated by ``search_px``, excluding other heads."""
    from scipy import ndimage as ndi

    n = inside = near = 0
    for lab, sl in enumerate(ndi.find_objects(np.asarray(labels)), start=1):
        if sl is None:
            continue
        mask = labels == lab
        hood = ndi.binary_dilation(mask, iterations=search_px) & ((labels == 0) | mask)
        vals = np.where(hood, heat, -1.0)
        if vals.max() <= 0:
            continue
        n += 1
        peak = np.unravel_index(int(np.argmax(vals)), vals.shape)
        inside += bool(mask[peak])
        near += bool(ndi.binary_dilation(mask, iterations=near_px)[peak]) if near_px > 0 else bool(mask[peak])
    return n, inside, near
