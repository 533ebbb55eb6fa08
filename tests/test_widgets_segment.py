"""Segment-and-crop widget in a real (offscreen) viewer, synchronous mode."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spermmorph._sample_data import load_field


@pytest.fixture(autouse=True)
def _sync(monkeypatch):
    monkeypatch.setenv("SPERMMORPH_SYNC", "1")


def _widget(viewer):
    from napari_spermmorph._widgets.segment_widget import SegmentHeadsWidget

    w = SegmentHeadsWidget(viewer)
    viewer.window.add_dock_widget(w)
    return w


def test_segment_synthetic_field(make_napari_viewer, field):
    viewer = make_napari_viewer()
    img = viewer.add_image(field.image, rgb=True, name="field", scale=(field.pixel_size_um,) * 2,
                           translate=(5.0, 7.0))
    before = img.data.copy()
    w = _widget(viewer)
    assert float(w.pixel_size.text()) == pytest.approx(field.pixel_size_um, rel=1e-3)
    w.run()
    heads = viewer.layers["field heads"]
    crops = viewer.layers["field head crops"]
    assert heads.data.shape == field.labels.shape
    assert tuple(heads.scale) == tuple(img.scale) and tuple(heads.translate) == tuple(img.translate)
    n = int(heads.data.max())
    assert n >= 0.7 * int(field.labels.max())
    assert set(heads.features["label"]) == set(np.unique(heads.data[heads.data > 0]))
    assert "area_um2" in heads.features.columns
    assert crops.data.ndim == 4 and crops.data.shape[-1] == 3
    assert len(crops.metadata["label_ids"]) == crops.data.shape[0] == len(heads.features)
    assert np.array_equal(img.data, before)  # the image is never modified
    assert "head(s) found" in w.status.text()
    # a second run never overwrites the first result
    w.run()
    assert "field heads [2]" in [layer.name for layer in viewer.layers]


def test_real_sample_field(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(load_field(), rgb=True, name="real", metadata={"pixel_size_um": 0.046})
    w = _widget(viewer)
    assert w.pixel_size.text() == "0.046"
    w.run()
    assert viewer.layers["real heads"].data.max() >= 5


def test_empty_field_message(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.full((200, 240, 3), 220, np.uint8), rgb=True, name="blank")
    w = _widget(viewer)
    w.run()
    heads = viewer.layers["blank heads"]
    assert heads.data.max() == 0 and len(heads.features) == 0
    assert "No heads found" in w.status.text()
    assert "blank head crops" not in [layer.name for layer in viewer.layers]


def test_non_image_layer_message(make_napari_viewer, field):
    viewer = make_napari_viewer()
    lab = viewer.add_labels(field.labels, name="lab")
    pts = viewer.add_points(np.zeros((1, 2)), name="pts")
    w = _widget(viewer)
    n_layers = len(viewer.layers)
    w.run()
    assert "Image layer" in w.status.text()
    w.run(image_layer=lab)
    assert "Labels layer" in w.status.text()
    w.run(image_layer=pts)
    assert "Points layer" in w.status.text()
    assert len(viewer.layers) == n_layers


def test_bad_pixel_size_message(make_napari_viewer, field):
    viewer = make_napari_viewer()
    viewer.add_image(field.image, rgb=True, name="f")
    w = _widget(viewer)
    w.pixel_size.setText("-3")
    w.run()
    assert "positive" in w.status.text()


def test_stack_with_progress_and_stop(make_napari_viewer, field):
    viewer = make_napari_viewer()
    stack = np.stack([field.image, field.image[:, ::-1]])
    viewer.add_image(stack, rgb=True, name="stack", scale=(1.0, field.pixel_size_um, field.pixel_size_um))
    w = _widget(viewer)
    w.run()
    heads = viewer.layers["stack heads"]
    assert heads.data.shape == stack.shape[:-1]
    ids = heads.features["label"].to_numpy()
    assert len(set(ids)) == len(ids)  # unique across planes
    assert set(heads.features["plane"]) == {0, 1}
    assert w.controls.progress.value() == w.controls.progress.maximum()
    # Stop pressed before the first plane: nothing is added
    n_layers = len(viewer.layers)
    w.controls.stop_flag.set()
    orig_clear = w.controls.stop_flag.clear
    w.controls.stop_flag.clear = lambda: None  # keep the flag set through start()
    w.run()
    w.controls.stop_flag.clear = orig_clear
    assert len(viewer.layers) == n_layers
    assert "Stopped" in w.status.text()


def test_recompute_from_edited_labels(make_napari_viewer, field):
    viewer = make_napari_viewer()
    img = viewer.add_image(field.image, rgb=True, name="field", scale=(field.pixel_size_um,) * 2)
    w = _widget(viewer)
    w.run()
    heads = viewer.layers["field heads"]
    first = int(heads.features["label"].iloc[0])
    edited = heads.data.copy()
    edited[edited == first] = 0  # the user erases a head
    heads.data = edited
    assert w.recompute(heads, img)
    assert first not in set(heads.features["label"])
    assert len(viewer.layers["field head crops"].metadata["label_ids"]) == len(heads.features)
    # a labels layer of the wrong shape: a message, nothing changed
    wrong = viewer.add_labels(np.zeros((10, 10), np.int32), name="wrong")
    assert not w.recompute(wrong, img)
    assert "shape" in w.status.text()
