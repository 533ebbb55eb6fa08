"""Classify-and-explain widget in a real (offscreen) viewer, synchronous mode: field -> heads -> classes + maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # import torch (and through timm, triton) before Qt/OpenGL: see the report
import torchvision.ops  # noqa: F401
from scipy import ndimage as ndi

from napari_spermmorph._sample_data import load_field
from napari_spermmorph.core.evaluation import heatmap_peak_hits

CLASSES = ["normal", "tapered", "pyriform", "amorphous"]


@pytest.fixture(autouse=True)
def _sync(monkeypatch):
    monkeypatch.setenv("SPERMMORPH_SYNC", "1")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """An untrained small model saved as a real checkpoint (tests never need shipped weights)."""

    from napari_spermmorph.core.checkpoints import save_checkpoint
    from napari_spermmorph.core.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(input_size=64)
    model = build_model(spec, pretrained=False).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(path, model, {"class_names": CLASSES, "head_fraction": 0.5, "spec": spec.to_dict(),
                                         "name": "tiny"})


def _shipped() -> str | None:
    from napari_spermmorph.core.registry import resolve, shipped_models

    for entry in shipped_models():
        if entry["name"] == "hushem-4class":
            try:
                resolve("hushem-4class")
                return "hushem-4class"
            except Exception:  # noqa: BLE001 - weights file absent on a fresh clone
                return None
    return None


def _segmented(viewer, image, name="field", px=None):
    from napari_spermmorph._widgets.segment_widget import SegmentHeadsWidget

    kw = {} if px is None else {"scale": (px, px), "translate": (3.0, -2.0)}
    img = viewer.add_image(image, rgb=True, name=name, **kw)
    seg = SegmentHeadsWidget(viewer)
    seg.run(image_layer=img)
    return img, viewer.layers[f"{name} heads"]


def _classify_widget(viewer, tiny_ckpt, prefer_shipped=True):
    from napari_spermmorph._widgets.classify_widget import ClassifyWidget

    w = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.device_combo.setCurrentText("cpu")
    shipped = _shipped() if prefer_shipped else None
    if shipped:
        w.select_model("shipped", shipped)
    else:
        w.select_model("file", str(tiny_ckpt))
    return w


@pytest.mark.parametrize("prefer_shipped", [True, False], ids=["shipped-or-tiny", "checkpoint-file"])
def test_classify_real_field(make_napari_viewer, tiny_ckpt, prefer_shipped):
    viewer = make_napari_viewer()
    img, heads = _segmented(viewer, load_field(), px=0.046)
    image_before = img.data.copy()
    w = _classify_widget(viewer, tiny_ckpt, prefer_shipped)
    w.attention.setChecked(True)
    w.set_layers(img, heads)
    w.run()
    assert "Classified" in w.status.text(), w.status.text()
    feats = heads.features
    names = w.last_result["table"]["class"].cat.categories.tolist()
    for col in ["class", "confidence", "uncertain", *[f"p_{c}" for c in names]]:
        assert col in feats.columns
    probs = feats[[f"p_{c}" for c in names]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert "area_um2" in feats.columns  # morphometrics kept
    classes = viewer.layers["field classes"]
    assert tuple(classes.scale) == tuple(img.scale) and tuple(classes.translate) == tuple(img.translate)
    for _, row in feats.iterrows():
        inside = classes.data[heads.data == row["label"]]
        assert np.all(inside == names.index(row["class"]) + 1)
    assert np.all(classes.data[heads.data == 0] == 0)
    heat = viewer.layers["field Grad-CAM++"]
    assert heat.data.shape == heads.data.shape and heat.blending == "additive"
    assert heat.colormap.name == "inferno" and heat.opacity == pytest.approx(0.5)
    assert heat.data.min() >= 0.0 and heat.data.max() <= 1.0
    assert "field CBAM attention" in [layer.name for layer in viewer.layers]
    for grow in (3, 15):
        n, _, near = heatmap_peak_hits(heat.data, heads.data, near_px=grow)
        print(f"Grad-CAM++ peak inside head dilated {grow} px: {near} of {n} heads ({w.model_combo.currentText()})")
    assert heat.data[ndi.binary_dilation(heads.data > 0, iterations=30) == 0].max() == 0  # nothing far from heads
    assert np.array_equal(img.data, image_before)
    assert "heads" in w.summary.text() and "Uncertain heads" in w.summary.text()
    assert w.legend_layout.count() == len(names)
    # the results table dock opened on the heads layer
    table = viewer.window.dock_widgets["Results table (napari-spermmorph)"]
    assert table.table.rowCount() == len(feats)


def test_results_land_on_layers_chosen_at_run(make_napari_viewer, tiny_ckpt, field):
    viewer = make_napari_viewer()
    img, heads = _segmented(viewer, field.image, px=field.pixel_size_um)
    other = viewer.add_labels(np.zeros(heads.data.shape, np.int32), name="other")
    w = _classify_widget(viewer, tiny_ckpt, prefer_shipped=False)
    w.gradcam.setChecked(False)
    w.set_layers(img, heads)
    real_load = w._load

    def load_then_change_selection(*args):
        w.heads_combo.setCurrentIndex(w.heads_combo.findText("other"))
        return real_load(*args)

    w._load = load_then_change_selection
    w.run()
    assert "class" in heads.features.columns
    assert len(other.features.columns) == 0
    assert "field Grad-CAM++" not in [layer.name for layer in viewer.layers]


def test_crop_stack(make_napari_viewer, tiny_ckpt, field):
    viewer = make_napari_viewer()
    img, heads = _segmented(viewer, field.image, px=field.pixel_size_um)
    crops = viewer.layers["field head crops"]
    w = _classify_widget(viewer, tiny_ckpt, prefer_shipped=False)
    w.target_combo.setCurrentText("tapered")
    w.set_layers(crops, None)
    w.run()
    assert "Classified" in w.status.text(), w.status.text()
    table = crops.metadata["spermmorph_table"]
    assert list(table["label"]) == crops.metadata["label_ids"]
    heat = viewer.layers["field head crops Grad-CAM++"]
    assert heat.data.shape == crops.data.shape[:3]
    assert heat.data.min() >= 0 and heat.data.max() <= 1


def test_bad_inputs_leave_layers_unchanged(make_napari_viewer, tiny_ckpt, field, tmp_path):

    from napari_spermmorph.core.inference import Classifier
    from napari_spermmorph.core.models import ModelSpec, build_model

    viewer = make_napari_viewer()
    img, heads = _segmented(viewer, field.image, px=field.pixel_size_um)
    w = _classify_widget(viewer, tiny_ckpt, prefer_shipped=False)
    names_before = [layer.name for layer in viewer.layers]
    feats_before = heads.features.copy()

    def check(fragment):
        w.run()
        assert fragment in w.status.text(), w.status.text()
        assert [layer.name for layer in viewer.layers] == names_before
        assert heads.features.equals(feats_before)

    wrong = viewer.add_labels(np.zeros((50, 60), np.int32), name="wrong shape")
    empty = viewer.add_labels(np.zeros(heads.data.shape, np.int32), name="empty")
    names_before = [layer.name for layer in viewer.layers]
    w.set_layers(img, wrong)
    check("has shape")
    w.set_layers(img, empty)
    check("is empty")
    w.set_layers(img, None)
    check("not a stack of head crops")
    w.set_layers(img, heads)
    w.select_model("file", str(tmp_path / "missing.safetensors"))
    check("not a file")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(tiny_ckpt.read_bytes()[:5000])
    w.select_model("file", str(bad))
    check("Cannot use this model")
    model = build_model(ModelSpec(input_size=64), pretrained=False)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first.in_channels = 1
    first.weight = torch.nn.Parameter(first.weight[:, :1].clone())
    w.use_classifier(Classifier(model, {"class_names": CLASSES, "head_fraction": 0.5}, device="cpu"), "gray")
    check("1-channel")


def test_session_models_refresh_list(make_napari_viewer, tiny_ckpt):
    from napari_spermmorph._widgets import _models
    from napari_spermmorph._widgets.classify_widget import ClassifyWidget

    viewer = make_napari_viewer()
    w = ClassifyWidget(viewer)
    n = w.model_combo.count()
    _models.register_session_model("my fine-tune", tiny_ckpt)
    try:
        assert w.model_combo.count() == n + 1
        w.select_model("session", str(tiny_ckpt))
        assert [w.target_combo.itemText(i) for i in range(1, w.target_combo.count())] == CLASSES
    finally:
        _models.unregister_session_model("my fine-tune")
    assert w.model_combo.count() == n


def test_threaded_run_with_stop(make_napari_viewer, tiny_ckpt, field, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    img, heads = _segmented(viewer, field.image, px=field.pixel_size_um)
    monkeypatch.delenv("SPERMMORPH_SYNC")
    w = _classify_widget(viewer, tiny_ckpt, prefer_shipped=False)
    w.set_layers(img, heads)
    w.run()
    qtbot.waitUntil(lambda: not w.controls.busy, timeout=120_000)
    assert "Classified" in w.status.text(), w.status.text()
    n_layers = len(viewer.layers)
    w.run()
    w.controls.stop_flag.set()  # Stop right away: the result is discarded
    qtbot.waitUntil(lambda: not w.controls.busy, timeout=120_000)
    assert "Stopped" in w.status.text()
    assert len(viewer.layers) == n_layers


def test_another_stain_is_flagged(make_napari_viewer, tmp_path):
    """A model records its training crops' colours; classifying a field far from them warns, a field close to them
    does not (the sample field's own head crops as the 'training' colours)."""
    from napari_spermmorph._sample_data import load_head_crops
    from napari_spermmorph.core.checkpoints import save_checkpoint
    from napari_spermmorph.core.colour import colour_reference
    from napari_spermmorph.core.defaults import STAIN_DELTA_E_LIMIT
    from napari_spermmorph.core.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="simplecnn", cbam=False, num_classes=len(CLASSES), input_size=64)
    model = build_model(spec, pretrained=False).eval()
    own = colour_reference(load_head_crops()["images"]).to_dict()
    pink = {"lab_mean": [74.0, 33.6, -2.0], "lab_std": [10.3, 3.8, 4.7]}  # HuSHeM-like training colours
    viewer = make_napari_viewer()
    img, heads = _segmented(viewer, load_field(), px=0.046)
    seen = {}
    for name, ref in (("own", own), ("pink", pink)):
        path = save_checkpoint(tmp_path / f"{name}.safetensors", model, {
            "class_names": CLASSES, "head_fraction": 0.5, "spec": spec.to_dict(), "name": name,
            "colour_reference": ref})
        w = _classify_widget(viewer, path, prefer_shipped=False)
        w.gradcam.setChecked(False)
        w.set_layers(img, heads)
        w.run()
        seen[name] = (float(heads.features["stain_delta_e"].iloc[0]), w.status.text(), w.summary.text())
    assert seen["own"][0] < STAIN_DELTA_E_LIMIT < seen["pink"][0]
    assert "colours differ" not in seen["own"][1] and "colours differ" not in seen["own"][2]
    assert "colours differ" in seen["pink"][1] and "colours differ" in seen["pink"][2]
    # matching colours to the model: other probabilities, the same distance (of the field as given), said so
    before = heads.features[[f"p_{c}" for c in CLASSES]].to_numpy()
    w.match_colours.setChecked(True)
    w.run()
    assert "colours matched" in w.status.text()
    seen_after = heads.features["stain_delta_e"].to_numpy()
    assert float(heads.features["stain_delta_e"].iloc[0]) == pytest.approx(seen["pink"][0])
    assert np.abs(heads.features[[f"p_{c}" for c in CLASSES]].to_numpy() - before).max() > 1e-6
    # a model saved without its training colours cannot match them: said plainly, the layers stay as they were
    path = save_checkpoint(tmp_path / "none.safetensors", model, {
        "class_names": CLASSES, "head_fraction": 0.5, "spec": spec.to_dict(), "name": "none"})
    w = _classify_widget(viewer, path, prefer_shipped=False)
    w.match_colours.setChecked(True)
    w.set_layers(img, heads)
    w.run()
    assert "records no training colours" in w.status.text()
    np.testing.assert_array_equal(heads.features["stain_delta_e"], seen_after)
