"""Image normalisation: bit depths, gray, RGBA and NaNs reach the models as the same float RGB."""

import numpy as np
import pytest

from napari_spermmorph.core.images import ImageInputError, as_float_rgb


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 16])
def test_camera_bit_depths_map_to_the_same_floats(bits):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (16, 16, 3)).astype(np.float64) / 255.0
    base[0, 0] = 1.0  # the sensor saturates somewhere, as real fields do
    full = (1 << bits) - 1
    img = np.round(base * full).astype(np.uint8 if bits == 8 else np.uint16)
    np.testing.assert_allclose(as_float_rgb(img), base, atol=1.0 / 255)


def test_gray_and_rgba_become_rgb():
    gray = np.full((8, 8), 128, np.uint8)
    out = as_float_rgb(gray)
    assert out.shape == (8, 8, 3) and np.allclose(out, 128 / 255)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    assert as_float_rgb(rgba).shape == (8, 8, 3)


def test_nan_becomes_background_and_all_nan_is_refused():
    img = np.full((8, 8), 0.8, np.float32)
    img[2, 3] = np.nan
    assert np.allclose(as_float_rgb(img), 0.8)
    with pytest.raises(ImageInputError):
        as_float_rgb(np.full((4, 4), np.nan))
