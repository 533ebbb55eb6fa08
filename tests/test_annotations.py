"""Annotated fields -> training set: both annotation forms, the split, and the messages for bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_spermmorph.core.annotations import (
    MIN_PER_CLASS,
    AnnotationError,
    build_training_set,
    check_shapes,
    class_counts,
    field_from_class_paint,
    field_from_heads,
    parse_class_names,
)
from napari_spermmorph.core.synthetic import synthetic_field


@pytest.fixture(scope="module")
def field():
    return synthetic_field(shape=(320, 320), n_heads=8, seed=1, touching_pairs=0)


def _head_classes(labels: np.ndarray, k: int) -> dict[int, int]:
    """Head i gets class 1 + (i mod k)."""
    return {int(i): 1 + (int(i) - 1) % k for i in np.unique(labels) if i}


def test_class_paint_regions_become_examples(field):
    classes = _head_classes(field.labels, 2)
    paint = np.zeros_like(field.labels)
    for lab, c in classes.items():
        paint[field.labels == lab] = c
    f = field_from_class_paint(field.image, paint, n_classes=2)
    assert len(f.classes) == 8  # eight separated heads -> eight connected regions
    assert sorted(class_counts([f], 2).tolist()) == [4, 4]
    # every region holds one class only and matches the painted value
    for inst, c in f.classes.items():
        assert set(np.unique(paint[f.labels == inst]).tolist()) == {c + 1}


def test_heads_features_and_dict_agree(field):
    classes = _head_classes(field.labels, 2)
    classes[1] = 0  # head 1 not annotated
    table = pd.DataFrame({"label": list(classes), "annotated_class": list(classes.values())})
    a = field_from_heads(field.image, field.labels, table, n_classes=2)
    b = field_from_heads(field.image, field.labels, classes, n_classes=2)
    assert a.classes == b.classes
    assert 1 not in a.classes and len(a.classes) == 7
    assert all(0 <= c < 2 for c in a.classes.values())


def test_training_set_split_is_stratified(field):
    classes = _head_classes(field.labels, 2)
    f1 = field_from_heads(field.image, field.labels, classes, n_classes=2, name="a")
    f2 = field_from_heads(field.image, field.labels, classes, n_classes=2, name="b")
    ts = build_training_set([f1, f2], ["normal", "amorphous"], crop_size=48, head_fraction=0.5, val_fraction=0.25)
    assert len(ts) == 16
    assert ts.images[0].shape == (48, 48, 3) and ts.images[0].dtype == np.float32
    counts = ts.counts()
    assert counts == {"normal": (6, 2), "amorphous": (6, 2)}
    assert not set(ts.train_idx) & set(ts.val_idx)
    assert sorted({s.split(" head ")[0] for s in ts.sources}) == ["a", "b"]
    tr_x, tr_y, va_x, va_y = ts.split()
    assert len(tr_x) == 12 and len(va_x) == 4 and set(va_y.tolist()) == {0, 1}


def test_class_folder_dataset_is_added(field, tmp_path):
    from PIL import Image

    for cls in ("normal", "amorphous"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((30, 40, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    f = field_from_heads(field.image, field.labels, {1: 1, 2: 2}, n_classes=2)
    ts = build_training_set([f], ["normal", "amorphous"], crop_size=32, folder=tmp_path)
    assert len(ts) == 8 and np.bincount(ts.labels).tolist() == [4, 4]
    summary = ts.summary()
    assert summary["folder_images"] == 6 and summary["folders"] == [str(tmp_path)] and len(summary["fields"]) == 1
    ts2 = build_training_set([], ["normal", "amorphous"], folder=tmp_path, folder_max_per_class=3)
    assert len(ts2) == 6
    with pytest.raises(AnnotationError, match="not among"):
        build_training_set([f], ["normal", "tapered"], folder=tmp_path)


def test_bad_input_messages(field):
    f = field_from_heads(field.image, field.labels, _head_classes(field.labels, 2), n_classes=2)
    with pytest.raises(AnnotationError, match="at least 2 classes"):
        build_training_set([f], ["normal"])
    empty = field_from_heads(field.image, field.labels, {}, n_classes=2)
    with pytest.raises(AnnotationError, match="No annotated examples"):
        build_training_set([empty], ["normal", "amorphous"])
    few = field_from_heads(field.image, field.labels, {1: 1, 2: 1, 3: 1, 4: 2}, n_classes=2)
    with pytest.raises(AnnotationError, match=rf"at least {MIN_PER_CLASS} examples.*amorphous \(1\)"):
        build_training_set([few], ["normal", "amorphous"])
    with pytest.raises(AnnotationError, match="does not match"):
        check_shapes(field.image, field.labels[:-1])
    with pytest.raises(AnnotationError, match="does not match"):
        field_from_class_paint(field.image, np.zeros((10, 10), np.int32), 2)
    with pytest.raises(AnnotationError, match="exceed"):
        field_from_class_paint(field.image, np.full(field.labels.shape, 3, np.int32), 2)
    with pytest.raises(AnnotationError, match="only 2 classes"):
        field_from_heads(field.image, field.labels, {1: 5}, n_classes=2)
    with pytest.raises(AnnotationError, match="annotated_class"):
        field_from_heads(field.image, field.labels, pd.DataFrame({"label": [1]}), n_classes=2)


def test_parse_class_names():
    assert parse_class_names(" normal, tapered;pyriform ,") == ["normal", "tapered", "pyriform"]
    with pytest.raises(AnnotationError, match="repeated: a"):
        parse_class_names("a, b, a")
