"""Grad-CAM++ and CBAM attention maps: shape, range, targets, model state, and where a trained model looks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_spermmorph.core.explain import cbam_attention, gradcam_pp
from napari_spermmorph.core.inference import Classifier
from napari_spermmorph.core.models import ModelSpec, build_model
from napari_spermmorph.core.preprocess import normalise
from napari_spermmorph.core.synthetic import synthetic_head_crops

NAMES = ["normal", "tapered"]


def _clf(spec: ModelSpec, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(build_model(spec), {"class_names": NAMES[: spec.num_classes], "head_fraction": 0.5},
                      device="cpu")


def _shifted_heads(n_per_class: int, seed: int, canvas: int = 64, head: int = 28):
    """Synthetic heads pasted at random places of a light canvas, with their masks (so 'inside' is known)."""
    imgs, y = synthetic_head_crops(n_per_class=n_per_class, classes=tuple(NAMES), size=head, seed=seed)
    rng = np.random.default_rng(seed)
    out = np.empty((len(imgs), canvas, canvas, 3), np.uint8)
    masks = np.zeros((len(imgs), canvas, canvas), bool)
    for i, im in enumerate(imgs):
        out[i] = np.median(im[0], axis=0).astype(np.uint8)
        y0, x0 = rng.integers(0, canvas - head, 2)
        out[i, y0 : y0 + head, x0 : x0 + head] = im
        masks[i, y0 : y0 + head, x0 : x0 + head] = (255 - im.min(-1)) > 60
    return out.astype(np.float32) / 255, y, masks


def test_shapes_range_and_crop_size():
    clf = _clf(ModelSpec(arch="simplecnn", input_size=64, num_classes=2))
    crops = np.random.default_rng(0).random((5, 80, 80, 3)).astype(np.float32)
    maps = gradcam_pp(clf, crops, batch_size=2)
    assert maps.shape == (5, 80, 80) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0.5
    att = cbam_attention(clf, crops)
    assert att.shape == (5, 80, 80) and att.min() >= 0 and att.max() <= 1
    assert gradcam_pp(clf, crops[:0]).shape[0] == 0


def test_targets_state_and_inference_mode():
    clf = _clf(ModelSpec(input_size=64, num_classes=2))  # EfficientNet-Lite0 + CBAM, untrained
    crops = np.random.default_rng(1).random((3, 64, 64, 3)).astype(np.float32)
    a = gradcam_pp(clf, crops, target="normal")
    b = gradcam_pp(clf, crops, target=1)
    assert a.shape == b.shape == (3, 64, 64) and not np.allclose(a, b)
    with torch.inference_mode():  # callers may hold inference mode: gradients must still work inside
        c = gradcam_pp(clf, crops, target="normal")
    np.testing.assert_allclose(a, c, atol=1e-5)
    # batches give the same maps as one batch (the CAM object is shared across batches)
    np.testing.assert_allclose(gradcam_pp(clf, crops, target="normal", batch_size=1), a, atol=1e-5)
    assert all(p.requires_grad for p in clf.model.parameters()) and not clf.model.training
    assert all(p.grad is None for p in clf.model.parameters())
    with pytest.raises(ValueError, match="Unknown target class"):
        gradcam_pp(clf, crops, target="giant")
    no_cbam = _clf(ModelSpec(input_size=64, num_classes=2, cbam=False))
    assert gradcam_pp(no_cbam, crops).shape == (3, 64, 64)  # falls back to the backbone's features
    with pytest.raises(ValueError, match="no CBAM"):
        cbam_attention(no_cbam, crops)


def test_matches_plain_grad_cam():
    """Cutting the graph at the target layer changes the cost, not the maps."""
    from pytorch_grad_cam import GradCAMPlusPlus

    clf = _clf(ModelSpec(arch="simplecnn", input_size=64, num_classes=2))
    crops = np.random.default_rng(2).random((4, 64, 64, 3)).astype(np.float32)
    x = normalise(clf.to_tensor(crops), clf.spec.mean, clf.spec.std)
    cam = GradCAMPlusPlus(model=clf.model, target_layers=[clf.model.cbam])
    try:
        ref = cam(input_tensor=x, targets=None)
    finally:
        cam.activations_and_grads.release()
    np.testing.assert_allclose(gradcam_pp(clf, crops), ref, atol=1e-4)


def test_trained_model_looks_at_the_head():
    spec = ModelSpec(arch="simplecnn", input_size=64, num_classes=2)
    clf = _clf(spec)
    untrained = _clf(spec, seed=1)
    x, y, _ = _shifted_heads(40, seed=0)
    xt = normalise(clf.to_tensor(x), spec.mean, spec.std)
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(clf.model.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    clf.model.train()
    for _ in range(40):
        idx = torch.randint(0, len(xt), (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(clf.model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.model.eval()
    xv, _, masks = _shifted_heads(10, seed=1)
    near = np.stack([ndi.binary_dilation(m, iterations=6) for m in masks])

    def inside(c):
        maps = gradcam_pp(c, xv)
        return float(((maps * near).sum((1, 2)) / np.maximum(maps.sum((1, 2)), 1e-9)).mean())

    area = float(near.mean())
    trained_in, untrained_in = inside(clf), inside(untrained)
    print(f"CAM energy near the head: trained {trained_in:.2f}, untrained {untrained_in:.2f}, area {area:.2f}")
    assert trained_in > 2.5 * area
    assert trained_in > untrained_in + 0.1


def test_crop_stacks_are_prepared_and_converted_once():
    """iter_classify_crops reports progress before each batch and classifies the crops in the model's geometry;
    explain_crops reuses those prepared crops (whole or one batch of them); a tensor goes through to_tensor as is."""
    from napari_spermmorph.core.explain import explain_crops
    from napari_spermmorph.core.pipeline import classify_crops, iter_classify_crops

    clf = _clf(ModelSpec(arch="simplecnn", input_size=64, num_classes=2))
    crops = list(_shifted_heads(3, seed=2)[0])  # 6 crops
    steps = iter_classify_crops(crops, clf, batch_size=4)
    assert next(steps) == (0, 6) and next(steps) == (4, 6)
    with pytest.raises(StopIteration) as done:
        next(steps)
    res = done.value.value
    prepared = clf.prepare_crops(crops)
    np.testing.assert_allclose(res.probs, clf.predict_proba(prepared.images), atol=1e-6)
    assert res.table["label"].tolist() == [1, 2, 3, 4, 5, 6] and {"class", "p_normal", "uncertain"} <= set(res.table)
    assert classify_crops(crops, clf).table.equals(res.table)
    x = clf.to_tensor(prepared.images)
    assert clf.to_tensor(x) is x
    own = explain_crops(clf, crops)
    reused = explain_crops(clf, crops, prepared=res.prepared)
    batch = explain_crops(clf, crops[2:4], prepared=res.prepared[2:4])
    for a, b in zip(reused + batch, own + own[2:4]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="2 prepared crops for 6"):
        explain_crops(clf, crops, prepared=res.prepared[:2])


def test_crops_are_classified_and_explained_from_one_input_per_batch():
    """iter_classify_crops with ``maps``: the same classes, and per map the same maps as explain_crops gives
    (in the model's geometry; maps_onto_crops warps them back onto the crops), batch by batch."""
    from napari_spermmorph.core.explain import explain_crops, maps_onto_crops
    from napari_spermmorph.core.pipeline import classify_crops

    clf = _clf(ModelSpec(arch="simplecnn", cbam=True, input_size=64, num_classes=2))
    crops = list(_shifted_heads(3, seed=4)[0])  # 6 crops
    plain = classify_crops(crops, clf)
    res = classify_crops(crops, clf, batch_size=4, maps=["gradcam++", "cbam"], target="normal")
    assert plain.maps == {} and set(res.maps) == {"gradcam++", "cbam"}
    np.testing.assert_allclose(res.probs, plain.probs, atol=1e-6)
    for method, kw in (("gradcam++", {"target": "normal"}), ("cbam", {})):
        assert res.maps[method].shape == (6, 64, 64)
        alone = explain_crops(clf, crops, method=method, **kw)
        for a, b in zip(maps_onto_crops(res.maps[method], res.prepared, crops), alone):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="unknown map"):
        classify_crops(crops, clf, maps=["lime"])
    with pytest.raises(ValueError, match="2 maps"):
        maps_onto_crops(res.maps["cbam"][:2], res.prepared, crops)
