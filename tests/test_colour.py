"""Colour matching: a crop takes the reference's Lab statistics, keeps its shapes, and is left alone when it
already has them. Stain distance: another stain is flagged, from the checkpoint's reference to the summary."""

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.color import rgb2lab

from napari_spermmorph.core.colour import (
    ColourReference,
    colour_distance,
    colour_reference,
    match_colour,
    pooled_reference,
    stain_distance,
    stain_warning,
)
from napari_spermmorph.core.defaults import STAIN_DELTA_E_LIMIT
from napari_spermmorph.core.pipeline import add_class_columns


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


def test_stain_distance_and_warning():
    pinks = [_crop(**PINK, seed=s)[0] for s in range(6)]
    blues = [_crop(**BLUE, seed=s)[0] for s in range(6)]
    reference = colour_reference(pinks[:3])
    near, far = stain_distance(pinks[3:], reference), stain_distance(blues, reference)
    assert near < 1.0 and far > 2 * STAIN_DELTA_E_LIMIT  # other crops of the same stain vs another stain
    # the distance of a set is that of its average colour: the reference's own crops sit at 0
    assert stain_distance(pinks[:3], reference) == pytest.approx(0.0, abs=1e-6)
    assert stain_warning(near, STAIN_DELTA_E_LIMIT) == ""
    assert "differ from the model's training images" in stain_warning(far, STAIN_DELTA_E_LIMIT)
    assert ColourReference.from_dict(reference.to_dict()) == reference
    # a set read in chunks pools to the reference of the whole set
    pooled = pooled_reference([(colour_reference(pinks[:2]), 2), (colour_reference(pinks[2:]), 4)])
    np.testing.assert_allclose(pooled.mean, colour_reference(pinks).mean, rtol=1e-6)
    np.testing.assert_allclose(pooled.std, colour_reference(pinks).std, rtol=1e-6)
    assert colour_distance(colour_reference(blues), reference) == pytest.approx(far)


def test_classifier_flags_another_stain_through_checkpoint_and_summary(tmp_path):
    from napari_spermmorph.core.checkpoints import save_checkpoint
    from napari_spermmorph.core.inference import Classifier
    from napari_spermmorph.core.models import ModelSpec, build_model
    from napari_spermmorph.core.summary import sample_summary
    from napari_spermmorph.core.training import TrainConfig, TrainingFinished, checkpoint_meta

    torch.manual_seed(0)  # an untrained network's outputs barely move with its input: keep them repeatable
    spec = ModelSpec(arch="simplecnn", cbam=False, num_classes=2, input_size=64)
    model = build_model(spec, pretrained=False)
    pinks = [_crop(**PINK, seed=s)[0] for s in range(4)]
    meta = checkpoint_meta(TrainingFinished(model, [], {}, False, 0.0), ["normal", "amorphous"],
                           TrainConfig(spec=spec), pinks, head_fraction=0.5)
    assert meta["colour_reference"] == colour_reference(pinks).to_dict()
    path = save_checkpoint(tmp_path / "pink.safetensors", model, meta)
    clf = Classifier.load(path, device="cpu")
    blues = [_crop(**BLUE, seed=s)[0] for s in range(3)]
    assert clf.stain_distance(pinks) == pytest.approx(0.0, abs=1e-4)
    far = clf.stain_distance(blues)
    assert far > STAIN_DELTA_E_LIMIT and clf.stain_distance([]) is None
    # a model saved without a reference (older checkpoints) measures nothing rather than guessing
    del meta["colour_reference"]
    old = Classifier.load(save_checkpoint(tmp_path / "old.safetensors", model, meta), device="cpu")
    assert old.stain_distance(blues) is None
    # matching colours: the network reads each crop moved onto the training colours, and only then
    plain = clf.predict_proba(blues)
    clf.match_colours = True
    matched = clf.predict_proba(blues)
    by_hand = old.to_tensor([match_colour(b, clf.colour_reference) for b in blues])  # old matches nothing
    np.testing.assert_array_equal(clf.to_tensor(blues).numpy(), by_hand.numpy())
    assert np.abs(matched - plain).max() > 1e-6
    clf.match_colours = False
    np.testing.assert_allclose(clf.predict_proba(blues), plain, atol=1e-6)
    with pytest.raises(ValueError, match="records no training colours"):
        old.match_colours = True
    assert old.match_colours is False
    # the per-image value travels in the table; the sample summary turns it into a warning
    table = add_class_columns(pd.DataFrame({"label": [1, 2, 3]}), clf.predict_proba(blues), clf.class_names,
                              stain_delta_e=far)
    s = sample_summary(table, clf.class_names)
    assert s["stain_delta_e"] == pytest.approx(far) and "Delta E" in s["warning"] and "WHO" in s["warning"]
    table["stain_delta_e"] = 2.0
    assert "Delta E" not in sample_summary(table, clf.class_names)["warning"]


def test_each_head_is_colour_matched_once_for_classes_and_both_maps(tmp_path, monkeypatch, field):
    """Classification, Grad-CAM++ and CBAM attention read one converted input: each head of a field, and each
    ready-made crop, is matched once."""
    from napari_spermmorph.core import colour
    from napari_spermmorph.core.checkpoints import save_checkpoint
    from napari_spermmorph.core.inference import Classifier
    from napari_spermmorph.core.models import ModelSpec, build_model
    from napari_spermmorph.core.pipeline import classify_crops, classify_heads
    from napari_spermmorph.core.training import TrainConfig, TrainingFinished, checkpoint_meta

    torch.manual_seed(0)
    spec = ModelSpec(arch="simplecnn", cbam=True, num_classes=2, input_size=64)
    model = build_model(spec, pretrained=False)
    meta = checkpoint_meta(TrainingFinished(model, [], {}, False, 0.0), ["normal", "amorphous"],
                           TrainConfig(spec=spec), [_crop(**PINK, seed=s)[0] for s in range(4)], head_fraction=0.5)
    clf = Classifier.load(save_checkpoint(tmp_path / "pink.safetensors", model, meta), device="cpu")
    clf.match_colours = True
    calls = []

    def counted(crop, reference):
        calls.append(1)
        return match_colour(crop, reference)

    monkeypatch.setattr(colour, "match_colour", counted)
    res = classify_heads(field.image, field.labels, clf, field.pixel_size_um, explain=True, attention=True)
    n = len(res.table)
    assert n > 0 and res.heatmap is not None and res.attention is not None
    assert len(calls) == n
    calls.clear()
    crops = [_crop(**PINK, seed=s)[0] for s in range(5)]
    got = classify_crops(crops, clf, batch_size=2, maps=["gradcam++", "cbam"])
    assert len(got.table) == 5 and {len(m) for m in got.maps.values()} == {5}
    assert len(calls) == 5
