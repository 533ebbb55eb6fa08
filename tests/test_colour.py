"""Colour matching: a crop takes the reference's Lab statistics, keeps its shapes, and is left alone when it
already has them."""

import numpy as np
import pytest
from skimage.color import rgb2lab

from napari_spermmorph.core.colour import colour_reference, match_colour


def _crop(background, head, seed=0, size=64):
    """A stained head (dark ellipse) on a plain background, with a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    inside = ((yy - size / 2) / 10) ** 2 + ((xx - size / 2) / 16) ** 2 <= 1
    img = np.where(inside[..., None], np.asarray(head, float), np.asarray(background, float))
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1).astype(np.float32), inside


PINK = dict(background=(0.95, 0.75, 0.8), head=(0.45, 0.2, 0.4))  # HuSHeM-like
BLUE = dict(background=(0.85, 0.88, 0.95), head=(0.25, 0.2, 0.7))  # SMIDS / field-like


def test_matched_crop_takes_the_reference_statistics_and_keeps_the_head():
    reference = colour_reference([_crop(**PINK, seed=s)[0] for s in range(4)])
    blue, inside = _crop(**BLUE, seed=9)
    out = match_colour(blue, reference)
    assert out.shape == blue.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    lab = rgb2lab(out).reshape(-1, 3)
    np.testing.assert_allclose(lab.mean(0), reference.mean, atol=1.5)
    np.testing.assert_allclose(lab.std(0), reference.std, rtol=0.1, atol=0.5)
    before = rgb2lab(blue)[..., 0]
    after = rgb2lab(out)[..., 0]
    # the head stays the dark object, and the pixel order of lightness is kept
    assert after[inside].mean() < after[~inside].mean() - 20
    assert np.corrcoef(before.ravel(), after.ravel())[0, 1] > 0.99
    # and the blue crop now reads pink: a* (red-green) moves towards the reference's
    assert abs(lab[:, 1].mean() - reference.mean[1]) < abs(rgb2lab(blue)[..., 1].mean() - reference.mean[1])


def test_a_crop_with_the_reference_colours_is_left_as_it_is():
    crop, _ = _crop(**PINK, seed=1)
    out = match_colour(crop, colour_reference([crop]))
    np.testing.assert_allclose(out, crop, atol=2e-3)


def test_gray_uint8_input_and_empty_reference():
    gray = (_crop(**PINK)[0].mean(-1) * 255).astype(np.uint8)
    reference = colour_reference([_crop(**PINK)[0]])
    out = match_colour(gray, reference)
    assert out.shape == gray.shape + (3,) and out.dtype == np.float32
    with pytest.raises(ValueError, match="at least one image"):
        colour_reference([])
