"""Public scripting API: the widgets' steps as functions (thin wrappers over ``napari_spermmorph.core``).

    import napari_spermmorph as sm
    labels = sm.segment(image, pixel_size_um=0.05)
    table = sm.measure(labels, pixel_size_um=0.05)
    model = sm.load_model("hushem-4class")
    result = sm.classify(image, labels, model, explain=True)   # FieldResult: table, probs, heatmap
    sm.analyze(["fields/"], "results/", model="hushem-4class")  # the CLI's batch run

Importing this module does not import torch; each function imports what it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.defaults import DEFAULT_TTA

if TYPE_CHECKING:
    import pandas as pd

    from .core.batch import BatchResult
    from .core.crops import HeadCrops
    from .core.finetune import FineTuneResult
    from .core.inference import Classifier
    from .core.pipeline import FieldResult
    from .core.segmentation import SegmentationParams

__all__ = ["segment", "measure", "crop", "load_model", "list_models", "classify", "classify_crops", "explain",
           "fine_tune", "analyze", "summarize", "wilson_interval"]



def _classifier(model: Classifier | str | Path | None, device: str = "auto") -> Classifier:
    if model is None:
        from .core.registry import default_model

        model = default_model()
    if isinstance(model, str | Path):
        return load_model(model, device)
    return model


def segment(image: np.ndarray, pixel_size_um: float | None = None, params: SegmentationParams | None = None,
            rgb: bool | None = None) -> np.ndarray:
    """Instance labels of the sperm heads (int32); nD images are segmented plane by plane."""
    from .core.segmentation import segment_heads, segment_image

    arr = np.asarray(image)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4) and rgb is not False):
        return segment_heads(arr, pixel_size_um, params)
    return segment_image(arr, pixel_size_um, params, rgb=rgb)


def measure(labels: np.ndarray, pixel_size_um: float | None = None) -> pd.DataFrame:
    """Morphometrics and WHO flags per head (units in the column names)."""
    from .core.morphometry import measure_heads

    return measure_heads(labels, pixel_size_um)


def crop(image: np.ndarray, labels: np.ndarray, crop_size: int = 128, head_fraction: float | None = None,
         align: bool = True) -> HeadCrops:
    """Centred, aligned head crops (``HeadCrops``: images, label_ids, transforms); head_fraction defaults to the
    ratio every shipped model was trained at."""
    from .core.crops import DEFAULT_HEAD_FRACTION, extract_head_crops

    return extract_head_crops(image, labels, crop_size, head_fraction or DEFAULT_HEAD_FRACTION, align)


def load_model(name_or_path: str | Path, device: str = "auto") -> Classifier:
    """A shipped model's name or a checkpoint path -> ``Classifier``."""
    from .core.inference import Classifier

    return Classifier.load(name_or_path, device)


def list_models() -> list[dict]:
    """Registry entries of the shipped models (empty when none are installed)."""
    from .core.registry import shipped_models

    return shipped_models()


def classify(image: np.ndarray, labels: np.ndarray | None = None, model: Classifier | str | Path | None = None,
             pixel_size_um: float | None = None, tta: int = DEFAULT_TTA, explain: bool = False,
             min_confidence: float = 0.6, **kwargs: Any) -> FieldResult:
    """Classify every head of a 2D field; without ``labels`` the field is segmented first (as in the CLI).

    Another lab's stain: pass a loaded ``Classifier`` with ``match_colours = True`` to colour-match each head to
    the model's training colours first (the table's ``stain_delta_e`` says how far the field's colours are).
    """
    from .core.pipeline import analyze_field, classify_heads

    clf = _classifier(model)
    if labels is None:
        return analyze_field(image, clf, pixel_size_um, tta=tta, explain=explain, min_confidence=min_confidence,
                             **kwargs)
    return classify_heads(image, labels, clf, pixel_size_um, tta=tta, explain=explain,
                          min_confidence=min_confidence, **kwargs)


def classify_crops(crops: np.ndarray | Sequence[np.ndarray], model: Classifier | str | Path | None = None,
                   tta: int = DEFAULT_TTA, min_confidence: float = 0.6) -> pd.DataFrame:
    """One row per crop: class, confidence, p_<class> and the uncertain flag."""
    from .core.pipeline import classify_crops as classify_prepared_crops

    return classify_prepared_crops(crops, _classifier(model), tta, min_confidence).table


def explain(crops: np.ndarray | Sequence[np.ndarray], model: Classifier | str | Path | None = None,
            target: str | int | None = None, method: str = "gradcam++") -> np.ndarray:
    """Grad-CAM++ maps in [0, 1], one per crop in that crop's geometry (``method="cbam"``: CBAM attention)."""
    from .core.explain import explain_crops

    return explain_crops(_classifier(model), crops, target=target, method=method)


def fine_tune(training_set, source: str | Path, out_folder: str | Path, name: str, config=None,
              on_update: Callable | None = None, **kwargs: Any) -> FineTuneResult:
    """Fine-tune ``source`` (shipped name, checkpoint or ``core.finetune.IMAGENET``) on a
    ``core.annotations.TrainingSet`` (see ``core.annotations.build_training_set``); saves a checkpoint."""
    from .core.finetune import fine_tune as _fine_tune
    from .core.training import TrainConfig

    return _fine_tune(training_set, source, out_folder, name, config or TrainConfig(), on_update=on_update,
                      **kwargs)


def analyze(inputs: Sequence[str | Path], out_dir: str | Path, model: str | Path | None = None,
            **kwargs: Any) -> BatchResult:
    """The CLI's ``analyze``: per-image outputs, samples.csv, errors.csv, report.html and run.json."""
    from .core.batch import run_batch
    from .core.registry import default_model

    return run_batch(inputs, out_dir, model or default_model(), **kwargs)


def summarize(table: pd.DataFrame, class_names: list[str], normal_class: str | None = "normal") -> dict:
    """Counts per class, % normal with its 95% Wilson interval and the WHO 200-head warning."""
    from .core.summary import sample_summary

    return sample_summary(table, class_names, normal_class)


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    from .core.summary import wilson_interval as _wilson

    return _wilson(k, n)
