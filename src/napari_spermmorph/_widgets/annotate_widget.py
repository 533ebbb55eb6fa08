"""Annotate head classes for fine-tuning, two ways.

* Heads layer (from segmentation): click a head (or set the layer's selected label), press 1..K; the class goes
  to ``layer.features['annotated_class']`` (0 = not annotated, key 0 clears) and the head takes its class
  colour (unannotated heads are pale grey).
* Class-painted layer: paint with label value c for class c; each connected region is one example.

The class names live in the labels layer's ``metadata['class_names']``, which the fine-tune widget reads.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.annotations import ANNOTATED_CLASS, AnnotationError, class_counts, field_from_class_paint, parse_class_names
from ._layers import (
    TAG,
    as_features,
    class_colormap,
    class_colors,
    layer_combo,
    layer_data,
    spatial_kwargs,
    unique_name,
)
from ._models import models_changed, session_models

HEADS = "Heads layer: click a head, press 1..K"
PAINTED = "Class-painted layer (value c = class c)"
CLASS_NAMES_KEY = "class_names"
KIND_KEY = "annotation_kind"
UNANNOTATED = (0.85, 0.85, 0.85, 0.45)
MAX_KEYS = 9


def default_class_names() -> list[str]:
    """The HuSHeM scheme when that model ships, else a two-class scheme."""
    from ..core.registry import shipped_models

    for m in shipped_models():
        if m["name"] == "hushem-4class":
            return list(m["classes"])
    return ["normal", "abnormal"]


def annotation_kind(layer) -> str:
    """HEADS or PAINTED: the user's choice in the annotator if made, else heads when the layer has a per-head
    ``label`` table or was made by segmentation, else class-painted."""
    meta = layer.metadata if isinstance(layer.metadata, dict) else {}
    if meta.get(KIND_KEY) in (HEADS, PAINTED):
        return meta[KIND_KEY]
    feats = getattr(layer, "features", None)
    if feats is not None and "label" in getattr(feats, "columns", ()):
        return HEADS
    tag = meta.get(TAG)
    return HEADS if isinstance(tag, dict) and tag.get("kind") == "heads" else PAINTED


class AnnotateClassesWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self._active = None  # the heads layer being annotated
        self._saved_keys: dict[str, object] = {}
        self.layer_combo = layer_combo(napari_viewer, (Labels,))
        self.image_combo = layer_combo(napari_viewer, (Image,))
        self.kind_combo = QComboBox()
        self.kind_combo.addItems([HEADS, PAINTED])
        self.classes_edit = QLineEdit(", ".join(default_class_names()))
        self.model_combo = QComboBox()
        self.use_model_button = QPushButton("Use its classes")
        self.start_button = QPushButton("Start annotating")
        self.start_button.setCheckable(True)
        self.new_layer_button = QPushButton("New class-paint layer for image")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["key", "class", "examples"])
        self.table.verticalHeader().setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Labels layer", self.layer_combo)
        form.addRow("Annotation", self.kind_combo)
        form.addRow("Classes", self.classes_edit)
        row = QHBoxLayout()
        row.addWidget(self.model_combo)
        row.addWidget(self.use_model_button)
        form.addRow("Classes of model", row)
        form.addRow("Image", self.image_combo)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.new_layer_button)
        lay.addWidget(self.start_button)
        lay.addWidget(self.table)
        lay.addWidget(self.status)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self.refresh)
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        self.kind_combo.currentIndexChanged.connect(self._on_kind_changed)
        self.classes_edit.editingFinished.connect(self._on_names_edited)
        self.use_model_button.clicked.connect(self._use_model_classes)
        self.start_button.toggled.connect(self._on_start_toggled)
        self.new_layer_button.clicked.connect(self.new_paint_layer)
        self._fill_models()
        models_changed.connect(self._fill_models)
        self._watched = None
        self._on_layer_changed()

    # -- class names ----------------------------------------------------------------------------------
    def class_names(self) -> list[str]:
        return parse_class_names(self.classes_edit.text())

    def set_class_names(self, names: list[str]) -> None:
        self.classes_edit.setText(", ".join(names))
        self._on_names_edited()

    def _on_names_edited(self) -> None:
        try:
            names = self.class_names()
        except AnnotationError as exc:
            self.status.setText(str(exc))
            return
        layer = self.layer()
        if layer is not None:
            layer.metadata = {**layer.metadata, CLASS_NAMES_KEY: names}
        if self._active is not None:
            self._bind_keys(self._active)
        self.refresh()

    def _fill_models(self) -> None:
        from ..core.registry import shipped_models

        self.model_combo.clear()
        for m in shipped_models():
            self.model_combo.addItem(m["name"], m["name"])
        for name, path in session_models().items():
            self.model_combo.addItem(f"{name} (this session)", str(path))
        self.use_model_button.setEnabled(self.model_combo.count() > 0)

    def _use_model_classes(self) -> None:
        from ..core.finetune import FineTuneError, start_info

        source = self.model_combo.currentData()
        if source is None:
            return
        try:
            self.set_class_names(start_info(source).class_names)
        except FineTuneError as exc:
            self.status.setText(str(exc))

    def _on_kind_changed(self, *_args) -> None:
        layer = self.layer()
        if layer is not None and annotation_kind(layer) != self.kind_combo.currentText():
            layer.metadata = {**layer.metadata, KIND_KEY: self.kind_combo.currentText()}
        self.refresh()

    def _schedule_refresh(self, event=None) -> None:
        """Counts follow painting, at most every 300 ms (counting regions of a big layer is not free)."""
        self._debounce.start()

    # -- layers ---------------------------------------------------------------------------------------
    def layer(self):
        return self.layer_combo.currentData()

    def _on_layer_changed(self, *_args) -> None:
        layer = self.layer()
        if self._active is not None and self._active is not layer:
            self.start_button.setChecked(False)
        if self._watched is not None:
            try:
                self._watched.events.paint.disconnect(self._schedule_refresh)
                self._watched.events.data.disconnect(self._schedule_refresh)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._watched = layer
        if layer is None:
            self.refresh()
            return
        layer.events.paint.connect(self._schedule_refresh)
        layer.events.data.connect(self._schedule_refresh)
        self.kind_combo.blockSignals(True)
        self.kind_combo.setCurrentText(annotation_kind(layer))
        self.kind_combo.blockSignals(False)
        names = layer.metadata.get(CLASS_NAMES_KEY) if isinstance(layer.metadata, dict) else None
        if names:
            self.classes_edit.setText(", ".join(names))
        else:
            layer.metadata = {**layer.metadata, CLASS_NAMES_KEY: self.class_names()}
        self.refresh()

    def new_paint_layer(self):
        """An empty labels layer on the chosen image, coloured by class, ready to paint class values."""
        image = self.image_combo.currentData()
        if image is None:
            self.status.setText("Open an image first.")
            return None
        data = layer_data(image)
        shape = data.shape[:-1] if image.rgb else data.shape
        layer = self.viewer.add_labels(np.zeros(shape[-2:], np.uint8), name=unique_name(self.viewer,
                                       f"{image.name} classes"), **spatial_kwargs(image, 2),
                                       metadata={CLASS_NAMES_KEY: self.class_names()})
        layer.colormap = class_colormap(self.class_names())
        self.layer_combo.setCurrentIndex(self.layer_combo.findText(layer.name))
        self.kind_combo.setCurrentText(PAINTED)
        layer.metadata = {**layer.metadata, KIND_KEY: PAINTED}
        layer.mode = "paint"
        layer.selected_label = 1
        return layer

    # -- heads annotator ------------------------------------------------------------------------------
    def _on_start_toggled(self, on: bool) -> None:
        if on:
            self.start()
        else:
            self.stop()

    def start(self) -> None:
        """Make the chosen heads layer answer clicks (select a head) and keys 1..K (set its class)."""
        layer = self.layer()
        try:
            k = len(self.class_names())
        except AnnotationError as exc:
            self.status.setText(str(exc))
            self.start_button.setChecked(False)
            return
        if layer is None or self.kind_combo.currentText() != HEADS:
            self.status.setText("Choose a heads labels layer (annotation: heads) to annotate by clicking.")
            self.start_button.setChecked(False)
            return
        if self._active is not None and self._active is not layer:
            self.stop()
        self._active = layer
        _ensure_features(layer)
        layer.mode = "pan_zoom"  # a click must select, not paint
        if self._on_click not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self._on_click)
        self._bind_keys(layer)
        self.viewer.layers.selection.active = layer
        self.start_button.setText("Stop annotating")
        if not self.start_button.isChecked():
            self.start_button.setChecked(True)
        self.status.setText(f"Click a head, then press 1..{min(k, MAX_KEYS)} for its class (0 clears).")
        self.refresh()

    def stop(self) -> None:
        layer, self._active = self._active, None
        if layer is not None:
            if self._on_click in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._on_click)
            for key in [str(i) for i in range(MAX_KEYS + 1)]:
                layer.bind_key(key, self._saved_keys.get(key), overwrite=True)
            self._saved_keys = {}
        self.start_button.setText("Start annotating")
        if self.start_button.isChecked():
            self.start_button.setChecked(False)

    def _bind_keys(self, layer) -> None:
        k = min(len(self.class_names()), MAX_KEYS)
        for i in range(MAX_KEYS + 1):
            key = str(i)
            if key not in self._saved_keys:
                self._saved_keys[key] = layer.keymap.get(_keybinding(key))
            if i <= k:
                layer.bind_key(key, _key_action(self, i), overwrite=True)
            else:
                layer.bind_key(key, self._saved_keys.get(key), overwrite=True)

    def _on_click(self, layer, event) -> None:
        value = layer.get_value(event.position, view_direction=event.view_direction,
                                dims_displayed=event.dims_displayed, world=True)
        if value is None or int(value) <= 0:
            return
        layer.selected_label = int(value)
        cls = self.class_of(int(value))
        names = self.class_names()
        now = names[cls - 1] if 0 < cls <= len(names) else "not annotated"
        self.status.setText(f"Head {int(value)} selected ({now}); press 1..{min(len(names), MAX_KEYS)}.")

    def class_of(self, label: int) -> int:
        layer = self._active or self.layer()
        feats = layer.features
        if ANNOTATED_CLASS not in feats.columns:
            return 0
        hit = feats.loc[feats["label"] == label, ANNOTATED_CLASS]
        return int(hit.iloc[0]) if len(hit) else 0

    def annotate(self, label: int, cls: int) -> None:
        """Set head ``label``'s class to ``cls`` (1..K; 0 clears) in the active heads layer."""
        layer = self._active or self.layer()
        try:
            names = self.class_names()
        except AnnotationError as exc:
            self.status.setText(str(exc))
            return
        if layer is None or label <= 0 or not 0 <= cls <= len(names):
            return
        if not np.any(layer_data(layer) == label):
            self.status.setText(f"There is no head {label} in {layer.name}; click a head first.")
            return
        feats = _ensure_features(layer)
        if not (feats["label"] == label).any():
            row = {c: [label] if c in ("label", "index") else [pd.NA] for c in feats.columns}
            row[ANNOTATED_CLASS] = [0]
            feats = pd.concat([feats, pd.DataFrame(row)], ignore_index=True)
        feats.loc[feats["label"] == label, ANNOTATED_CLASS] = cls
        layer.features = feats
        self.status.setText(f"Head {label}: {names[cls - 1] if cls else 'not annotated'}.")
        self.refresh()

    # -- counts and colours ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Annotated examples per class in the chosen layer."""
        layer = self.layer()
        names = self.class_names()
        if layer is None or not names:
            return dict.fromkeys(names, 0)
        if self.kind_combo.currentText() == HEADS:
            feats = layer.features
            if ANNOTATED_CLASS not in feats.columns:
                return dict.fromkeys(names, 0)
            present = set(np.unique(layer_data(layer)).tolist())
            vals = [int(c) for lab, c in zip(feats["label"], feats[ANNOTATED_CLASS].fillna(0), strict=True)
                    if int(lab) in present]
            return {n: vals.count(i + 1) for i, n in enumerate(names)}
        data = layer_data(layer)
        field = field_from_class_paint(np.zeros(data.shape, np.uint8), np.where(data <= len(names), data, 0),
                                       len(names))
        return dict(zip(names, class_counts([field], len(names)).tolist(), strict=True))

    def refresh(self) -> None:
        try:
            names = self.class_names()
        except AnnotationError as exc:
            self.status.setText(str(exc))
            return
        counts = self.counts()
        colors = class_colors(names)
        self.table.setRowCount(len(names))
        for i, n in enumerate(names):
            key = QTableWidgetItem(str(i + 1) if i < MAX_KEYS else "")
            key.setBackground(QColor.fromRgbF(*colors[n]))
            self.table.setItem(i, 0, key)
            self.table.setItem(i, 1, QTableWidgetItem(n))
            self.table.setItem(i, 2, QTableWidgetItem(str(counts.get(n, 0))))
        layer = self.layer()
        if layer is None:
            return
        if self.kind_combo.currentText() == HEADS and ANNOTATED_CLASS in layer.features.columns:
            self._colour_heads(layer, names)
        elif self.kind_combo.currentText() == PAINTED:
            layer.colormap = class_colormap(names)

    def _colour_heads(self, layer, names: list[str]) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        colors = class_colors(names)
        cdict: dict = {None: UNANNOTATED, 0: (0.0, 0.0, 0.0, 0.0)}
        feats = layer.features
        for lab, c in zip(feats["label"], feats[ANNOTATED_CLASS].fillna(0), strict=True):
            c = int(c)
            cdict[int(lab)] = colors[names[c - 1]] if 0 < c <= len(names) else UNANNOTATED
        layer.colormap = DirectLabelColormap(color_dict=cdict)


def _key_action(widget: AnnotateClassesWidget, cls: int):
    """Key ``cls`` on the annotated layer: class ``cls`` for its selected head (0 clears)."""

    def set_class(layer) -> None:
        widget.annotate(int(layer.selected_label), cls)

    set_class.__name__ = set_class.__qualname__ = f"spermmorph_set_class_{cls}"
    set_class.__doc__ = f"Set the selected head's class to {cls}" if cls else "Clear the selected head's class"
    return set_class


def _keybinding(key: str):
    from napari.utils.key_bindings import coerce_keybinding

    return coerce_keybinding(key)


def _ensure_features(layer) -> pd.DataFrame:
    """A features table with one ``label`` row per head and an ``annotated_class`` column (0 = none)."""
    feats = layer.features.copy()
    if "label" not in feats.columns:
        ids = np.unique(layer_data(layer))
        feats = as_features(pd.DataFrame({"label": ids[ids > 0].astype(int)}))
    if ANNOTATED_CLASS not in feats.columns:
        feats[ANNOTATED_CLASS] = 0
    feats[ANNOTATED_CLASS] = feats[ANNOTATED_CLASS].fillna(0).astype(int)
    layer.features = feats
    return layer.features.copy()
