"""Annotated fields -> a training set of head crops with an explicit, stratified validation split.

Two ways to annotate a field, both reduced here to (instance labels, class per instance):

* a class-painted labels image: pixel value c in 1..K means class c; each connected region is one example;
* a heads labels image (from segmentation) plus a per-head class: ``features['annotated_class']`` with
  values 1..K (0 or missing = not annotated), set in napari with the click-and-key annotator.

Crops are cut exactly as classification cuts them (``crops.extract_head_crops`` with the model's input size
and head fraction), so a model is fine-tuned on what it will later see. The split is made here, before
training, so that the widget can show it and the trainer uses exactly it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .crops import DEFAULT_HEAD_FRACTION

MIN_PER_CLASS = 3  # two to train on and one to validate on
ANNOTATED_CLASS = "annotated_class"  # features column of a heads layer: class 1..K, 0 = not annotated


class AnnotationError(ValueError):
    """The annotations cannot make a training set; the message says what to fix."""


@dataclass
class AnnotatedField:
    """One field: its image, instance labels and the class (0-based) of each annotated instance."""

    image: np.ndarray
    labels: np.ndarray  # int (H, W) instance labels
    classes: dict[int, int]  # instance label -> class index 0..K-1 (unannotated instances absent)
    name: str = "field"


@dataclass
class TrainingSet:
    images: list[np.ndarray]  # crops (S, S, 3) float32 from fields, any-size images from class folders
    labels: np.ndarray  # int64 class index per image
    class_names: list[str]
    sources: list[str]  # where each example came from: "<field> head <id>" or a file path
    train_idx: np.ndarray
    val_idx: np.ndarray
    head_fraction: float = DEFAULT_HEAD_FRACTION
    crop_size: int = 128
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, tuple[int, int]]:
        """Class name -> (train count, validation count)."""
        tr = np.bincount(self.labels[self.train_idx], minlength=len(self.class_names))
        va = np.bincount(self.labels[self.val_idx], minlength=len(self.class_names))
        return {n: (int(tr[i]), int(va[i])) for i, n in enumerate(self.class_names)}

    def split(self) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray]:
        """(train images, train labels, validation images, validation labels)."""
        return ([self.images[i] for i in self.train_idx], self.labels[self.train_idx],
                [self.images[i] for i in self.val_idx], self.labels[self.val_idx])

    def summary(self) -> dict:
        """A JSON-able description, stored in the fine-tuned checkpoint's metadata."""
        files = [s for s in self.sources if " head " not in s]
        return {"n_images": len(self), "counts_train_val": {k: list(v) for k, v in self.counts().items()},
                "fields": sorted({s.split(" head ")[0] for s in self.sources if " head " in s}),
                "folder_images": len(files), "folders": sorted({str(Path(f).parent.parent) for f in files}),
                "notes": list(self.notes)}


def parse_class_names(text: str) -> list[str]:
    """'normal, tapered,  pyriform' -> ['normal', 'tapered', 'pyriform']; duplicates are an error."""
    names = [n.strip() for n in text.replace(";", ",").split(",") if n.strip()]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AnnotationError(f"Class names must be unique; repeated: {', '.join(dup)}.")
    return names


def check_class_names(class_names: Sequence[str]) -> list[str]:
    """At least two distinct, non-empty class names (a classifier of one class learns nothing)."""
    names = [str(n).strip() for n in class_names]
    if len(names) < 2 or not all(names):
        raise AnnotationError(f"Fine-tuning needs at least 2 classes; {len(names)} given ({names}).")
    if len(set(names)) != len(names):
        raise AnnotationError(f"Class names must be unique: {names}.")
    return names


def check_shapes(image: np.ndarray, labels: np.ndarray, name: str = "field") -> None:
    """The labels must cover the image's two spatial axes exactly (an RGB image has a trailing axis)."""
    image, labels = np.asarray(image), np.asarray(labels)
    if labels.ndim != 2:
        raise AnnotationError(f"{name}: the labels layer must be 2D, it has shape {labels.shape}.")
    spatial = image.shape[:2] if image.ndim == 3 and image.shape[-1] in (3, 4) else image.shape
    if tuple(spatial) != tuple(labels.shape):
        raise AnnotationError(f"{name}: the labels layer's shape {labels.shape} does not match the image's "
                              f"spatial shape {tuple(spatial)}; use a labels layer made for this image.")


def field_from_class_paint(image: np.ndarray, class_paint: np.ndarray, n_classes: int,
                           name: str = "field") -> AnnotatedField:
    """A labels image painted with class values 1..K: each connected region of one value is one example."""
    from scipy import ndimage as ndi

    check_shapes(image, class_paint, name)
    paint = np.asarray(class_paint)
    too_high = np.unique(paint[paint > n_classes])
    if too_high.size:
        raise AnnotationError(f"{name}: painted values {too_high.tolist()} exceed the {n_classes} classes; "
                              f"paint class c with label value c (1..{n_classes}).")
    instances = np.zeros(paint.shape, dtype=np.int32)
    classes: dict[int, int] = {}
    nxt = 1
    for c in range(1, n_classes + 1):
        comp, n = ndi.label(paint == c)
        if n:
            mask = comp > 0
            instances[mask] = comp[mask] + (nxt - 1)
            classes.update({nxt + i: c - 1 for i in range(n)})
            nxt += n
    return AnnotatedField(np.asarray(image), instances, classes, name)


def field_from_heads(image: np.ndarray, heads: np.ndarray, annotated: Mapping[int, int] | Sequence,
                     n_classes: int, name: str = "field") -> AnnotatedField:
    """A heads labels image and each head's class 1..K (0/NaN = not annotated).

    ``annotated``: {label id: class} or a features table with columns ``label`` and ``annotated_class``.
    """
    check_shapes(image, heads, name)
    if hasattr(annotated, "columns"):  # a pandas DataFrame (layer.features)
        if "label" not in annotated.columns or ANNOTATED_CLASS not in annotated.columns:
            raise AnnotationError(f"{name}: the heads layer has no '{ANNOTATED_CLASS}' per head yet; "
                                  "set classes with the annotator (click a head, press 1..K).")
        col = annotated[ANNOTATED_CLASS].fillna(0).astype(int)
        annotated = dict(zip(annotated["label"].astype(int), col, strict=True))
    present = set(np.unique(np.asarray(heads)).tolist()) - {0}
    classes: dict[int, int] = {}
    for lab, c in dict(annotated).items():
        c = int(c)
        if c <= 0 or int(lab) not in present:
            continue
        if c > n_classes:
            raise AnnotationError(f"{name}: head {lab} has class {c} but there are only {n_classes} classes.")
        classes[int(lab)] = c - 1
    return AnnotatedField(np.asarray(image), np.asarray(heads), classes, name)


def class_counts(fields: Sequence[AnnotatedField], n_classes: int) -> np.ndarray:
    """Annotated examples per class over all fields (before cropping)."""
    counts = np.zeros(n_classes, dtype=int)
    for f in fields:
        for c in f.classes.values():
            counts[c] += 1
    return counts


def build_training_set(
    fields: Sequence[AnnotatedField],
    class_names: Sequence[str],
    crop_size: int = 128,
    head_fraction: float = DEFAULT_HEAD_FRACTION,
    folder: str | Path | None = None,
    folder_max_per_class: int | None = None,
    val_fraction: float = 0.2,
    min_per_class: int = MIN_PER_CLASS,
    seed: int = 0,
) -> TrainingSet:
    """Crops of the annotated heads of all fields (plus a class-folder dataset) and a stratified split.

    Raises ``AnnotationError`` with the fix when there are fewer than 2 classes, no annotations, or a class
    with fewer than ``min_per_class`` examples.
    """
    names = check_class_names(class_names)
    images: list[np.ndarray] = []
    labels: list[int] = []
    sources: list[str] = []
    notes: list[str] = []
    for f in fields:
        if not f.classes:
            continue
        crops = _crops(f, crop_size, head_fraction)
        for img, lab in zip(crops.images, crops.label_ids, strict=True):
            if int(lab) in f.classes:
                images.append(np.asarray(img, dtype=np.float32))
                labels.append(f.classes[int(lab)])
                sources.append(f"{f.name} head {int(lab)}")
        lost = set(f.classes) - {int(v) for v in crops.label_ids}
        if lost:
            notes.append(f"{f.name}: {len(lost)} annotated region(s) could not be cropped (too small or "
                         f"at the border): {sorted(lost)[:10]}")
    if folder:
        ds_images, ds_labels, ds_files = _folder_examples(folder, names, crop_size, head_fraction,
                                                          folder_max_per_class, seed)
        images += ds_images
        labels += ds_labels
        sources += ds_files
    if not images:
        raise AnnotationError("No annotated examples: paint heads with class values 1..K, or set head "
                              "classes with the annotator, or add a class-folder dataset.")
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=len(names))
    short = [f"{n} ({counts[i]})" for i, n in enumerate(names) if counts[i] < min_per_class]
    if short:
        raise AnnotationError(f"Each class needs at least {min_per_class} examples (so that training and "
                              f"validation both get some); too few: {', '.join(short)}. Annotate more heads "
                              "or remove the class.")
    from .datasets import stratified_split

    train_idx, val_idx = stratified_split(y, val_fraction, seed)
    return TrainingSet(images, y, names, sources, train_idx, val_idx, head_fraction, crop_size, notes)


def _crops(f: AnnotatedField, crop_size: int, head_fraction: float):
    from .crops import extract_head_crops

    # crop only annotated instances: the others would be cut and thrown away
    keep = np.isin(f.labels, np.fromiter(f.classes, dtype=np.int64))
    return extract_head_crops(f.image, np.where(keep, f.labels, 0), crop_size=crop_size,
                              head_fraction=head_fraction, align=True)


def _folder_examples(folder: str | Path, names: list[str], crop_size: int, head_fraction: float,
                     max_per_class: int | None = None,
                     seed: int = 0) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Images of a class-folder dataset whose classes are among ``names`` (matched by canonical name), cut to the
    geometry of field crops (``crops.normalise_crops``) so both kinds of example look alike to the model."""
    from .datasets import canonical_class_name, load_class_folders

    try:
        ds = load_class_folders(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise AnnotationError(str(exc)) from exc
    ours = {canonical_class_name(n): i for i, n in enumerate(names)}
    unknown = [n for n in ds.class_names if n not in ours]
    if unknown:
        raise AnnotationError(f"The dataset folder {folder} has classes {unknown} that are not among the "
                              f"class names {names}; rename the folders or add the classes.")
    idx = np.arange(len(ds))
    if max_per_class is not None:
        rng = np.random.default_rng(seed)
        idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(ds.labels == c))[:max_per_class]
                                      for c in np.unique(ds.labels)]))
    from .crops import normalise_crops
    from .datasets import read_image

    imgs = list(normalise_crops([read_image(ds.files[i]) for i in idx], crop_size, head_fraction)[0].images)
    labels = [ours[ds.class_names[int(ds.labels[i])]] for i in idx]
    return imgs, labels, [str(ds.files[i]) for i in idx]
