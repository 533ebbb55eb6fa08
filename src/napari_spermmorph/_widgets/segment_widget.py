"""Segment and crop heads: image layer -> `<image> heads` Labels (with morphometrics) + `<image> head crops`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._layers import (
    add_or_update,
    as_features,
    layer_combo,
    layer_data,
    pixel_size_of,
    select_in_combo,
    spatial_kwargs,
    unique_name,
)
from ._workers import RunControls

if TYPE_CHECKING:
    import napari

CROP_SIZE = 128


def _spin(lo: float, hi: float, value: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setDecimals(decimals)
    s.setSingleStep(step)
    s.setValue(value)
    return s


def heads_and_crops(image: np.ndarray, labels: np.ndarray, rgb: bool, pixel_size_um: float | None,
                    crop_size: int = CROP_SIZE):
    """Morphometrics and head crops for 2D labels or a stack of them (ids made unique across planes).

    Returns (labels, table, crops (N,S,S,3), crop label ids).
    """
    import pandas as pd

    from ..core.crops import extract_head_crops
    from ..core.morphometry import measure_heads

    spatial = labels.shape[-2:]
    lab_planes = labels.reshape((-1,) + spatial)
    img_planes = image.reshape((-1,) + image.shape[labels.ndim - 2:]) if not rgb else \
        image.reshape((-1,) + image.shape[-3:])
    if len(lab_planes) > 1:  # unique ids over the whole stack: features are indexed by label value
        lab_planes = lab_planes.copy()
        offset = 0
        for plane in lab_planes:
            nz = plane > 0
            plane[nz] += offset
            offset = max(offset, int(plane.max()))
    tables, crops, ids = [], [], []
    for i, (lab, img) in enumerate(zip(lab_planes, img_planes)):
        t = measure_heads(lab, pixel_size_um)
        if len(lab_planes) > 1:
            t.insert(1, "plane", i)
        tables.append(t)
        if lab.any():
            hc = extract_head_crops(img, lab, crop_size=crop_size)
            crops.append(hc.images)
            ids.append(np.asarray(hc.label_ids))
    table = pd.concat(tables, ignore_index=True) if tables else measure_heads(np.zeros((2, 2), np.int32))
    images = np.concatenate(crops) if crops else np.zeros((0, crop_size, crop_size, 3), np.float32)
    label_ids = np.concatenate(ids) if ids else np.zeros(0, int)
    return lab_planes.reshape(labels.shape), table, images, label_ids


class SegmentHeadsWidget(QWidget):
    """Find sperm heads in an image layer, measure them and cut one aligned crop per head."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self.image_combo = layer_combo(napari_viewer, (Image,))
        self.image_combo.currentIndexChanged.connect(self._prefill_pixel_size)
        self.pixel_size = QLineEdit()
        self.pixel_size.setPlaceholderText("default (um/px)")
        self.auto_threshold = QCheckBox("automatic")
        self.auto_threshold.setChecked(True)
        self.threshold = _spin(0.0, 1.0, 0.5, 0.02)
        self.threshold.setEnabled(False)
        self.auto_threshold.toggled.connect(lambda on: self.threshold.setEnabled(not on))
        self.min_area = _spin(0.0, 1000.0, 3.0, 0.5)
        self.max_area = _spin(0.1, 10000.0, 25.0, 1.0)
        self.split_touching = QCheckBox("split touching heads")
        self.split_touching.setChecked(True)
        self.exclude_border = QCheckBox("exclude heads cut by the border")

        thr_row = QHBoxLayout()
        thr_row.addWidget(self.auto_threshold)
        thr_row.addWidget(self.threshold)
        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("pixel size (um)", self.pixel_size)
        form.addRow("threshold", thr_row)
        form.addRow("min head area (um²)", self.min_area)
        form.addRow("max head area (um²)", self.max_area)
        form.addRow(self.split_touching)
        form.addRow(self.exclude_border)

        self.controls = RunControls("Segment")
        self.controls.run_button.clicked.connect(lambda: self.run())
        self.labels_combo = layer_combo(napari_viewer, (Labels,))
        self.recompute_button = QPushButton("Recompute from labels")
        self.recompute_button.setToolTip("Measure and crop again from a heads Labels layer you edited")
        self.recompute_button.clicked.connect(lambda: self.recompute())
        rec = QFormLayout()
        rec.addRow("edited labels", self.labels_combo)
        rec.addRow(self.recompute_button)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.controls)
        lay.addLayout(rec)
        lay.addStretch(1)
        self._prefill_pixel_size()

    # -- inputs ---------------------------------------------------------------------------------------
    @property
    def status(self):
        return self.controls.status

    def _prefill_pixel_size(self, *_args) -> None:
        layer = self.image_combo.currentData()
        px = pixel_size_of(layer) if layer is not None else None
        self.pixel_size.setText("" if px is None else f"{px:.4g}")

    def set_image_layer(self, layer) -> None:
        select_in_combo(self.image_combo, layer)

    def params(self):
        from ..core.segmentation import SegmentationParams

        return SegmentationParams(
            threshold=None if self.auto_threshold.isChecked() else float(self.threshold.value()),
            min_area_um2=float(self.min_area.value()),
            max_area_um2=float(self.max_area.value()),
            split_touching=self.split_touching.isChecked(),
            exclude_border=self.exclude_border.isChecked(),
        )

    def _pixel_size(self) -> float | None:
        text = self.pixel_size.text().strip()
        if not text:
            return None
        try:
            px = float(text)
        except ValueError:
            px = -1.0
        if not px > 0:
            raise ValueError(f"The pixel size must be a positive number of micrometres, got {text!r}.")
        return px

    def _check_image(self, layer) -> str | None:
        from napari.layers import Image

        if layer is None:
            return "Open or choose an Image layer to segment."
        if not isinstance(layer, Image):
            return (f"'{layer.name}' is a {type(layer).__name__} layer; choose an Image layer "
                    "(the stained field) to segment.")
        return None

    # -- segment --------------------------------------------------------------------------------------
    def run(self, image_layer=None, use_thread: bool | None = None):
        """Segment the chosen (or given) image layer; results land on new layers."""
        layer = image_layer if image_layer is not None else self.image_combo.currentData()
        problem = self._check_image(layer)
        if problem:
            self.controls.message(problem, "warning")
            return None
        if self.min_area.value() >= self.max_area.value():
            self.controls.message("The minimum head area must be smaller than the maximum.", "warning")
            return None
        try:
            px = self._pixel_size()
        except ValueError as exc:
            self.controls.message(str(exc), "warning")
            return None
        params = self.params()
        data = layer_data(layer)
        rgb = bool(layer.rgb)
        controls = self.controls

        def job():
            from ..core.segmentation import segment_image

            n_planes = int(np.prod(data.shape[: data.ndim - (3 if rgb else 2)], dtype=int))
            yield _progress(0, n_planes, f"Segmenting {n_planes} plane(s)...")
            labels = segment_image(data, px, params, rgb=rgb, progress=controls.report,
                                   should_stop=controls.stop_flag)
            controls.stop_flag.check()
            yield _progress(n_planes, n_planes, "Measuring and cropping heads...")
            return heads_and_crops(data, labels, rgb, px)

        return self.controls.start(job, lambda res: self._show(layer, res, px), self._on_error, use_thread)

    def _on_error(self, exc: BaseException) -> None:
        self.controls.message(f"Segmentation failed: {exc}", "warning")

    def _show(self, image_layer, result, px) -> None:
        labels, table, crops, label_ids = result
        meta = {"pixel_size_um": px, "source_image": image_layer.name}
        heads = self.viewer.add_labels(
            labels, name=unique_name(self.viewer, f"{image_layer.name} heads"),
            features=as_features(table), metadata={**meta, "spermmorph": {"kind": "heads",
                                                                          "source": image_layer.name}},
            opacity=0.5, **spatial_kwargs(image_layer, labels.ndim),
        )
        n = len(table)
        if n == 0:
            self.controls.message(f"No heads found in '{image_layer.name}'. Check the pixel size and the "
                                  "threshold, or paint heads by hand in the empty labels layer.", "warning")
            return
        self._show_crops(image_layer, heads, crops, label_ids)
        select_in_combo(self.labels_combo, heads)
        self.controls.message(f"{n} head(s) found in '{image_layer.name}'.")

    def _show_crops(self, image_layer, heads, crops, label_ids) -> None:
        if len(crops) == 0:
            return
        add_or_update(
            self.viewer, "image", crops, "crops", heads, name=f"{image_layer.name} head crops", rgb=True,
            visible=False, metadata={"label_ids": [int(v) for v in label_ids], "source_image": image_layer.name,
                                     "heads_layer": heads.name},
        )

    # -- recompute ------------------------------------------------------------------------------------
    def recompute(self, labels_layer=None, image_layer=None) -> bool:
        """Measure and crop again from a heads Labels layer the user edited (its features are rewritten)."""
        from napari.layers import Labels

        labels_layer = labels_layer if labels_layer is not None else self.labels_combo.currentData()
        image_layer = image_layer if image_layer is not None else self.image_combo.currentData()
        problem = self._check_image(image_layer)
        if problem:
            self.controls.message(problem, "warning")
            return False
        if not isinstance(labels_layer, Labels):
            self.controls.message("Choose the heads Labels layer you edited.", "warning")
            return False
        data, labels = layer_data(image_layer), layer_data(labels_layer)
        spatial = data.shape[:-1] if image_layer.rgb else data.shape
        if labels.shape != spatial:
            self.controls.message(f"The labels layer '{labels_layer.name}' has shape {labels.shape}, but the image "
                                  f"'{image_layer.name}' has {spatial}: choose the matching pair.", "warning")
            return False
        try:
            px = self._pixel_size()
        except ValueError as exc:
            self.controls.message(str(exc), "warning")
            return False
        lab, table, crops, ids = heads_and_crops(data, labels.astype(np.int32), bool(image_layer.rgb), px)
        if labels.ndim > 2 and not np.array_equal(lab, labels):
            labels_layer.data = lab  # stacks: ids made unique across planes so features stay indexable
        labels_layer.features = as_features(table)
        self._show_crops(image_layer, labels_layer, crops, ids)
        self.controls.message(f"Recomputed {len(table)} head(s) from '{labels_layer.name}'.")
        return True


def _progress(done: int, total: int, message: str):
    from ._workers import Progress

    return Progress(done, total, message)
