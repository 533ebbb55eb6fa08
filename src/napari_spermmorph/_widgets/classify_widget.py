"""Classify and explain: heads (Labels) or a crop stack -> classes, probabilities, Grad-CAM++ and CBAM maps.

All science goes through ``core.pipeline.classify_heads`` (fields) or the same ``Classifier`` + ``explain``
calls (crop stacks). Layers are captured when Run is pressed, so results land on them even if the selection
changes meanwhile; the user's layers are changed only by adding result columns to the heads layer's features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.defaults import DEFAULT_TTA, STAIN_DELTA_E_LIMIT
from . import _models
from ._layers import (
    add_or_update,
    as_features,
    class_colormap,
    class_colors,
    layer_combo,
    layer_data,
    pixel_size_of,
    select_in_combo,
    spatial_kwargs,
)
from ._workers import Progress, RunControls

if TYPE_CHECKING:
    import napari

CROPS_ITEM = "none: the image is a stack of head crops"
FILE_ITEM = "checkpoint file..."


def model_in_channels(model) -> int | None:
    """Input channels of the first convolution (the plugin always feeds RGB crops)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return int(m.in_channels)
    return None


def _merge_features(old, new):
    """New result columns replace old ones; the user's other columns (e.g. annotations) are kept by label."""
    if old is None or len(old.columns) == 0 or "label" not in old:
        return new
    keep = [c for c in old.columns if c not in new.columns and c != "index"]
    if not keep:
        return new
    extra = old[["label", *keep]].drop_duplicates("label")
    return new.merge(extra, on="label", how="left")


class ClassifyWidget(QWidget):
    """Classify every head and show where the model looked."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self._memory_models: dict[str, Any] = {}  # name -> Classifier handed over in-process
        self._cache: dict[tuple[str, str], Any] = {}
        self.last_result: Any = None

        self.image_combo = layer_combo(napari_viewer, (Image,))
        self.heads_combo = layer_combo(napari_viewer, (Labels,), none_text=CROPS_ITEM)
        self.image_combo.currentIndexChanged.connect(self._guess_heads)
        self.model_combo = QComboBox()
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("path to a .safetensors checkpoint")
        self.browse = QPushButton("Browse...")
        self.browse.clicked.connect(self._browse)
        self.device_combo = QComboBox()
        self.tta = QCheckBox(f"test-time augmentation ({DEFAULT_TTA} flips)")
        self.tta.setChecked(True)
        self.match_colours = QCheckBox("match colours to the model's training stain")
        self.match_colours.setToolTip(
            "Move each head's colours onto the model's training colours before it reads them. For another lab's "
            "stain (the summary warns when the field's colours are far from the model's); it helps only partly: "
            "fine-tune on your own images to trust the classes.")
        self.min_conf = QDoubleSpinBox()
        self.min_conf.setRange(0.0, 1.0)
        self.min_conf.setSingleStep(0.05)
        self.min_conf.setValue(0.6)
        self.min_conf.setToolTip("Heads whose top probability is below this are flagged 'uncertain'")
        self.gradcam = QCheckBox("Grad-CAM++ heatmap")
        self.gradcam.setChecked(True)
        self.target_combo = QComboBox()
        self.attention = QCheckBox("CBAM attention layer")

        ck_row = QHBoxLayout()
        ck_row.addWidget(self.checkpoint)
        ck_row.addWidget(self.browse)
        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("heads", self.heads_combo)
        form.addRow("model", self.model_combo)
        form.addRow("checkpoint", ck_row)
        form.addRow("device", self.device_combo)
        form.addRow(self.tta)
        form.addRow(self.match_colours)
        form.addRow("uncertain below", self.min_conf)
        form.addRow(self.gradcam)
        form.addRow("explain class", self.target_combo)
        form.addRow(self.attention)

        self.controls = RunControls("Classify")
        self.controls.run_button.clicked.connect(lambda: self.run())
        self.legend = QWidget()
        self.legend_layout = QHBoxLayout(self.legend)
        self.legend_layout.setContentsMargins(0, 0, 0, 0)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.controls)
        lay.addWidget(self.legend)
        lay.addWidget(self.summary)
        lay.addStretch(1)

        self._fill_devices()
        self.refresh_models()
        _models.models_changed.connect(self.refresh_models)
        self._guess_heads()

    # -- model list -----------------------------------------------------------------------------------
    @property
    def status(self) -> QLabel:
        return self.controls.status

    def _fill_devices(self) -> None:
        from ..core.inference import available_devices

        self.device_combo.addItems(available_devices())

    def refresh_models(self) -> None:
        """Shipped models, then models fine-tuned in this session, then in-memory ones, then a file."""
        from ..core.registry import shipped_models

        try:
            current = self.model_combo.currentData()
        except RuntimeError:  # the widget was deleted; psygnal may still call us once
            return
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for entry in shipped_models():
            self.model_combo.addItem(f"{entry['name']} (shipped)", ("shipped", entry["name"]))
        for name, path in _models.session_models().items():
            self.model_combo.addItem(f"{name} (this session)", ("session", str(path)))
        for name in self._memory_models:
            self.model_combo.addItem(f"{name} (in memory)", ("memory", name))
        self.model_combo.addItem(FILE_ITEM, ("file", ""))
        idx = next((i for i in range(self.model_combo.count()) if self.model_combo.itemData(i) == current), 0)
        self.model_combo.blockSignals(False)
        self.model_combo.setCurrentIndex(idx)
        self._on_model_changed()

    def use_classifier(self, classifier, name: str = "model") -> None:
        """Offer an already loaded ``Classifier`` (e.g. just fine-tuned) and select it."""
        self._memory_models[name] = classifier
        self.refresh_models()
        self.select_model("memory", name)

    def select_model(self, kind: str, value: str) -> None:
        for i in range(self.model_combo.count()):
            if self.model_combo.itemData(i) == (kind, value):
                self.model_combo.setCurrentIndex(i)
                return
        if kind == "file":
            self.model_combo.setCurrentIndex(self.model_combo.count() - 1)
            self.checkpoint.setText(value)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a checkpoint", "", "Checkpoints (*.safetensors)")
        if path:
            self.select_model("file", path)

    def _model_source(self) -> tuple[str, str]:
        kind, value = self.model_combo.currentData() or ("file", "")
        if kind == "file":
            value = self.checkpoint.text().strip()
        return kind, value

    def _class_names(self) -> list[str]:
        """The chosen model's classes without loading its weights (for the target list)."""
        from ..core.checkpoints import read_metadata
        from ..core.registry import shipped_models

        kind, value = self._model_source()
        try:
            if kind == "memory":
                return self._memory_models[value].class_names
            if kind == "shipped":
                entry = next(m for m in shipped_models() if m["name"] == value)
                return list(entry.get("classes", []))
            if value:
                return list(read_metadata(value).get("class_names", []))
        except Exception:  # noqa: BLE001 - the list just stays empty; Run reports the real problem
            return []
        return []

    def _on_model_changed(self, *_args) -> None:
        kind, _ = self.model_combo.currentData() or ("file", "")
        self.checkpoint.setEnabled(kind == "file")
        self.browse.setEnabled(kind == "file")
        self.target_combo.clear()
        self.target_combo.addItem("predicted class", None)
        for name in self._class_names():
            self.target_combo.addItem(name, name)

    def set_layers(self, image_layer, heads_layer=None) -> None:
        """Choose the image and its heads layer (None: the image is a crop stack)."""
        select_in_combo(self.image_combo, image_layer)
        if heads_layer is None:
            self.heads_combo.setCurrentIndex(0)
        else:
            select_in_combo(self.heads_combo, heads_layer)

    def _guess_heads(self, *_args) -> None:
        """A crops layer made by the segment widget needs no heads layer."""
        layer = self.image_combo.currentData()
        if layer is not None and "label_ids" in layer.metadata:
            self.heads_combo.setCurrentIndex(0)
        elif self.heads_combo.currentData() is None and self.heads_combo.count() > 1:
            self.heads_combo.setCurrentIndex(1)

    def _load(self, kind: str, value: str, device: str):
        from ..core.inference import Classifier

        if kind == "memory":
            return self._memory_models[value]
        if not value:
            from ..core.checkpoints import CheckpointError

            raise CheckpointError("Choose a model, or a checkpoint file with Browse.")
        key = (value, device)
        if key not in self._cache:
            self._cache[key] = Classifier.load(value, device=device)
        return self._cache[key]

    # -- run ------------------------------------------------------------------------------------------
    def _check_inputs(self, image_layer, heads_layer) -> str | None:
        from napari.layers import Image, Labels

        if not isinstance(image_layer, Image):
            return "Choose an Image layer: the stained field, or a stack of head crops."
        data_shape = layer_data(image_layer).shape
        spatial = data_shape[:-1] if image_layer.rgb else data_shape
        if heads_layer is None:
            if len(spatial) != 3:
                return (f"'{image_layer.name}' is a single field, not a stack of head crops: choose its heads "
                        "Labels layer (from 'Segment and crop heads').")
            return None
        if not isinstance(heads_layer, Labels):
            return "Choose a heads Labels layer."
        labels = layer_data(heads_layer)
        if labels.shape != spatial:
            return (f"The heads layer '{heads_layer.name}' has shape {labels.shape} but the image "
                    f"'{image_layer.name}' has {spatial}: choose the heads segmented from this image.")
        if not labels.any():
            return f"The heads layer '{heads_layer.name}' is empty: segment or paint some heads first."
        return None

    def run(self, use_thread: bool | None = None):
        """Classify with the current settings; results land on the layers chosen now."""
        image_layer = self.image_combo.currentData()
        heads_layer = self.heads_combo.currentData()
        problem = self._check_inputs(image_layer, heads_layer)
        if problem:
            self.controls.message(problem, "warning")
            return None
        kind, value = self._model_source()
        device = self.device_combo.currentText() or "auto"
        opts = {
            "tta": DEFAULT_TTA if self.tta.isChecked() else 1,
            "match_colours": self.match_colours.isChecked(),
            "min_confidence": float(self.min_conf.value()),
            "explain": self.gradcam.isChecked(),
            "attention": self.attention.isChecked(),
            "target": self.target_combo.currentData(),
        }
        image = layer_data(image_layer)
        labels = None if heads_layer is None else layer_data(heads_layer)
        rgb = bool(image_layer.rgb)
        px = pixel_size_of(heads_layer) if heads_layer is not None else None
        px = px or pixel_size_of(image_layer)
        stop = self.controls.stop_flag
        ids = image_layer.metadata.get("label_ids") if heads_layer is None else None

        def job():
            yield Progress(0, 1, "Loading the model...")
            clf = self._load(kind, value, device)
            self._check_model(clf, opts["target"])
            clf.match_colours = opts["match_colours"]  # refused for a model without recorded colours
            if labels is None:
                return clf, (yield from _classify_crops(clf, image, ids, opts, stop))
            return clf, (yield from _classify_fields(clf, image, labels, rgb, px, opts, stop))

        def done(res):
            self._show(image_layer, heads_layer, *res)

        return self.controls.start(job, done, self._on_error, use_thread)

    def _check_model(self, clf, target) -> None:
        cin = model_in_channels(clf.model)
        if cin is not None and cin != 3:
            raise ValueError(f"The model '{clf.name}' expects {cin}-channel input, but heads are classified as "
                             "RGB crops (3 channels): choose a model trained on RGB crops.")
        if target is not None and target not in clf.class_names:
            raise ValueError(f"The model has no class {target!r} (its classes: {', '.join(clf.class_names)}).")

    def _on_error(self, exc: BaseException) -> None:
        from ..core.checkpoints import CheckpointError

        if isinstance(exc, CheckpointError):
            self.controls.message(f"Cannot use this model: {exc}", "warning")
        else:
            self.controls.message(f"Classification failed: {exc}", "warning")

    # -- results --------------------------------------------------------------------------------------
    def _show(self, image_layer, heads_layer, clf, res: dict) -> None:
        self.last_result = res
        names = clf.class_names
        table = res["table"]
        if heads_layer is not None:
            old = heads_layer.features if len(heads_layer.features.columns) else None
            heads_layer.features = as_features(_merge_features(old, table))
            labels = layer_data(heads_layer)
            lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
            codes = table["class"].cat.codes.to_numpy() if len(table) else np.zeros(0, int)
            lut[table["label"].to_numpy(dtype=int)] = codes + 1
            geo = spatial_kwargs(image_layer, labels.ndim)
            add_or_update(self.viewer, "labels", lut[labels], "classes", heads_layer,
                          name=f"{image_layer.name} classes", colormap=class_colormap(names), opacity=0.6,
                          metadata={"class_names": names}, **geo)
            table_layer = heads_layer
        else:
            image_layer.metadata["spermmorph_table"] = table
            image_layer.metadata["class_names"] = names
            geo = spatial_kwargs(image_layer, image_layer.ndim)
            table_layer = image_layer
        src = heads_layer if heads_layer is not None else image_layer
        if res.get("heatmap") is not None:
            add_or_update(self.viewer, "image", res["heatmap"], "gradcam", src, name=f"{image_layer.name} Grad-CAM++",
                          colormap="inferno", blending="additive", opacity=0.5, contrast_limits=(0.0, 1.0), **geo)
        if res.get("attention") is not None:
            add_or_update(self.viewer, "image", res["attention"], "attention", src,
                          name=f"{image_layer.name} CBAM attention", colormap="viridis", blending="additive",
                          opacity=0.5, contrast_limits=(0.0, 1.0), **geo)
        self._show_legend(names)
        self._show_summary(table, clf)
        self._open_table(table_layer)

    def _show_legend(self, names: list[str]) -> None:
        while self.legend_layout.count():
            item = self.legend_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for name, rgba in class_colors(names).items():
            r, g, b = (int(255 * c) for c in rgba[:3])
            lab = QLabel(name)
            lab.setStyleSheet(f"background-color: rgb({r},{g},{b}); color: black; padding: 2px;")
            self.legend_layout.addWidget(lab)

    def _show_summary(self, table, clf) -> None:
        from ..core.colour import stain_warning
        from ..core.summary import format_summary, sample_summary

        s = sample_summary(table, clf.class_names, normal_class=clf.normal_class)
        text = format_summary(s)
        unc = s.get("uncertain_labels", [])
        text += f"\nUncertain heads ({len(unc)}): {', '.join(map(str, unc)) if unc else 'none'}."
        self.summary.setText(text)
        stain = stain_warning(s.get("stain_delta_e", 0.0), STAIN_DELTA_E_LIMIT)
        matched = " (colours matched to its training stain)" if clf.match_colours else ""
        self.controls.message(f"Classified {s['n_heads']} head(s) with '{clf.name}'{matched}."
                              + (f" {stain}" if stain else ""), "warning" if stain else "info")

    def _open_table(self, layer) -> None:
        try:
            _, table = self.viewer.window.add_plugin_dock_widget("napari-spermmorph", "Results table")
        except Exception:  # noqa: BLE001 - no window (ViewerModel) or the plugin is not registered
            return
        if hasattr(table, "set_layer"):
            table.set_layer(layer)


# --------------------------------------------------------------------------------------------- jobs
def _classify_fields(clf, image, labels, rgb, px, opts, stop):
    """classify_heads plane by plane (one plane for a 2D field); yields Progress, returns a result dict."""
    import pandas as pd

    from ..core.pipeline import classify_heads

    spatial = labels.shape[-2:]
    lab_planes = labels.reshape((-1,) + spatial)
    img_planes = image.reshape((-1,) + image.shape[-3:]) if rgb else image.reshape((-1,) + spatial)
    tables, heat, att = [], [], []
    n = len(lab_planes)
    for i, (lab, img) in enumerate(zip(lab_planes, img_planes)):
        stop.check()
        yield Progress(i, n, f"Classifying plane {i + 1} of {n}...")
        if not lab.any():
            continue
        r = classify_heads(img, lab, clf, px, tta=opts["tta"], min_confidence=opts["min_confidence"],
                           explain=opts["explain"], attention=opts["attention"], target=opts["target"],
                           should_stop=stop)
        t = r.table
        if n > 1:
            t.insert(1, "plane", i)
        tables.append(t)
        if r.heatmap is not None:
            heat.append((i, r.heatmap))
        if r.attention is not None:
            att.append((i, r.attention))
    stop.check()
    yield Progress(n, n, "Done.")
    table = pd.concat(tables, ignore_index=True)
    table["class"] = pd.Categorical(table["class"].astype(str), categories=clf.class_names)

    def stack(maps):
        if not maps:
            return None
        out = np.zeros((n,) + spatial, np.float32)
        for i, m in maps:
            out[i] = m
        return out.reshape(labels.shape)

    return {"table": table, "heatmap": stack(heat), "attention": stack(att)}


def _classify_crops(clf, crops, label_ids, opts, stop, batch_size: int = 32):
    """A crop stack (N, H, W[, C]): probabilities and the optional maps, batch by batch, maps aligned with the
    crops."""
    import pandas as pd

    from ..core.explain import maps_onto_crops
    from ..core.pipeline import iter_classify_crops

    n = len(crops)
    yield Progress(0, n, "Preparing crops (centre, align, scale)...")
    ids = np.asarray(label_ids, dtype=int) if label_ids is not None and len(label_ids) == n else np.arange(1, n + 1)
    maps = (["gradcam++"] if opts["explain"] else []) + (["cbam"] if opts["attention"] and clf.spec.cbam else [])
    doing = "Classifying" + (" and explaining" if maps else "")
    steps = iter_classify_crops(list(crops), clf, opts["tta"], opts["min_confidence"],
                                table=pd.DataFrame({"label": ids, "frame": np.arange(n)}), batch_size=batch_size,
                                maps=maps, target=opts["target"])
    while True:
        try:
            i, _ = next(steps)
        except StopIteration as done:
            res = done.value
            break
        stop.check()
        yield Progress(i, n, f"{doing} crops {i + 1}-{min(i + batch_size, n)} of {n}...")
    out: dict = {"table": res.table, "heatmap": None, "attention": None}
    for method, key in (("gradcam++", "heatmap"), ("cbam", "attention")):
        if method in res.maps:
            out[key] = np.stack(maps_onto_crops(res.maps[method], res.prepared, list(crops)))
    yield Progress(n, n, "Done.")
    return out
