"""The shipped sample data load, look like what they claim, and open in a real napari viewer."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from napari_spermmorph import _sample_data as sd


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


SYNTHETIC = "napari_spermmorph.core.synthetic"
needs_synthetic = pytest.mark.xfail(
    not _module_present(SYNTHETIC), reason=f"module {SYNTHETIC} not written yet", strict=False
)


def _check_meta(kwargs: dict) -> None:
    meta = kwargs["metadata"]
    assert {"source", "licence", "pixel_size_um"} <= set(meta)
    px = meta["pixel_size_um"]
    expected = (1.0, 1.0) if px is None else (px, px)
    assert tuple(kwargs["scale"][-2:]) == pytest.approx(expected)


def test_sample_field():
    ((data, kwargs, layer_type),) = sd.sample_field()
    assert layer_type == "image"
    assert data.dtype == np.uint8 and data.shape == (1024, 1280, 3)
    assert kwargs["rgb"] is True and kwargs["name"]
    _check_meta(kwargs)
    assert "non-commercial" in kwargs["metadata"]["licence"]


def test_field_labels_sit_on_dark_stained_heads():
    field = sd.load_field().astype(float).mean(axis=-1)
    labels = sd.load_field_head_labels()
    assert labels.shape == field.shape
    ids = np.unique(labels[labels > 0])
    assert len(ids) == 8
    background = np.median(field[labels == 0])
    for i in ids:
        # Heads are stained dark purple on a pale background.
        assert np.median(field[labels == i]) < background - 60, i


def test_sample_head_crops_are_centred_heads():
    ((data, kwargs, layer_type),) = sd.sample_head_crops()
    assert layer_type == "image" and kwargs["rgb"] is True
    n_heads = int(sd.load_field_head_labels().max())
    assert data.dtype == np.uint8 and data.shape == (n_heads, 128, 128, 3)
    _check_meta(kwargs)
    assert len(kwargs["metadata"]["label_ids"]) == n_heads
    gray = data.astype(float).mean(axis=-1)
    centre = gray[:, 48:80, 48:80].mean(axis=(1, 2))
    border = np.concatenate([gray[:, :8].reshape(n_heads, -1), gray[:, -8:].reshape(n_heads, -1)], 1).mean(1)
    assert np.all(centre < border - 40), (centre, border)


def test_head_crops_match_the_field():
    """Each crop is the field around that head's centroid (resized), so the colours agree."""
    crops = sd.load_head_crops()
    field = sd.load_field().astype(float)
    half = int(crops["window_px"]) // 2
    for crop, (cy, cx) in zip(crops["images"], crops["centres_yx"], strict=True):
        window = field[cy - half : cy + half, cx - half : cx + half]
        assert window.shape[:2] == (2 * half, 2 * half)
        assert abs(window.mean() - crop.astype(float).mean()) < 3


@needs_synthetic
def test_sample_synthetic_field_is_seeded():
    first = sd.sample_synthetic_field()
    second = sd.sample_synthetic_field()
    (image, image_kwargs, image_type), (labels, labels_kwargs, labels_type) = first
    assert (image_type, labels_type) == ("image", "labels")
    assert labels.shape == image.shape[:2] and np.issubdtype(labels.dtype, np.integer)
    assert labels.max() > 0
    _check_meta(image_kwargs)
    np.testing.assert_array_equal(image, second[0][0])
    np.testing.assert_array_equal(labels, second[1][0])


@pytest.mark.gui
@pytest.mark.parametrize(
    ("key", "n_layers"),
    [("field", 1), ("head_crops", 1), pytest.param("synthetic_field", 2, marks=needs_synthetic)],
)
def test_open_sample_in_viewer(make_napari_viewer, key, n_layers):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-spermmorph", key)
    assert len(viewer.layers) == n_layers
    image = viewer.layers[0]
    assert image.rgb
    assert image.metadata["source"]
