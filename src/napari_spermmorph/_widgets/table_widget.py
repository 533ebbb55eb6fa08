"""Results table: the per-head features of a heads layer (or a classified crop stack), sortable and filterable;
a click selects the head and centres the camera on it; Export CSV writes morphometrics + classes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._layers import layer_combo, select_in_combo

if TYPE_CHECKING:
    import napari
    import pandas as pd

ALL = "all classes"
UNCERTAIN = "uncertain only"


def _has_table(layer) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels) or "spermmorph_table" in layer.metadata


def table_of(layer) -> pd.DataFrame:
    """The per-head table of a layer: Labels features, or a classified crop stack's table."""
    import pandas as pd

    if layer is None:
        return pd.DataFrame()
    if "spermmorph_table" in layer.metadata:
        return layer.metadata["spermmorph_table"]
    feats = getattr(layer, "features", None)
    if feats is None:
        return pd.DataFrame()
    return feats.drop(columns=["index"], errors="ignore")


class _Item(QTableWidgetItem):
    """Sorts numbers as numbers."""

    def __lt__(self, other):
        a, b = self.data(Qt.UserRole + 1), other.data(Qt.UserRole + 1)
        if isinstance(a, float) and isinstance(b, float):
            return a < b
        return super().__lt__(other)


class ResultsTableWidget(QWidget):
    """Per-head results of a heads layer: sort, filter by class, click to go to a head, export CSV."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self._layer = None
        self.layer_combo = layer_combo(napari_viewer, (Labels, Image), accept=_has_table)
        self.layer_combo.currentIndexChanged.connect(self._on_layer)
        self.class_filter = QComboBox()
        self.class_filter.currentIndexChanged.connect(self._apply_filter)
        self.table = QTableWidget()
        self.table.setSortingEnabled(True)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.cellClicked.connect(lambda row, _col: self.select_row(row))
        self.export_button = QPushButton("Export CSV...")
        self.export_button.clicked.connect(self._export_dialog)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("layer", self.layer_combo)
        form.addRow("show", self.class_filter)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.table)
        lay.addWidget(self.export_button)
        lay.addWidget(self.status)
        self._on_layer()

    # -- layer ----------------------------------------------------------------------------------------
    def set_layer(self, layer) -> None:
        """Show ``layer``'s table (called by the classify widget after a run)."""
        self.layer_combo.refresh()
        select_in_combo(self.layer_combo, layer)
        self._on_layer()

    def _on_layer(self, *_args) -> None:
        layer = self.layer_combo.currentData()
        if layer is self._layer:
            self.refresh()
            return
        if self._layer is not None and hasattr(self._layer, "features"):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                self._layer.events.features.disconnect(self.refresh)
        self._layer = layer
        if layer is not None and hasattr(layer.events, "features"):
            layer.events.features.connect(self.refresh)
        self.refresh()

    @property
    def data(self) -> pd.DataFrame:
        return table_of(self._layer)

    def refresh(self, *_args) -> None:
        df = self.data
        self.table.setSortingEnabled(False)
        self.table.clear()
        self.table.setRowCount(len(df))
        self.table.setColumnCount(len(df.columns))
        self.table.setHorizontalHeaderLabels([str(c) for c in df.columns])
        for j, col in enumerate(df.columns):
            values = df[col].to_numpy()
            for i, v in enumerate(values):
                item = _Item(_fmt(v))
                if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
                    item.setData(Qt.UserRole + 1, float(v))
                if j == 0:
                    item.setData(Qt.UserRole, i)  # row in the data frame, survives sorting
                self.table.setItem(i, j, item)
        self.table.setSortingEnabled(True)
        current = self.class_filter.currentText()
        self.class_filter.blockSignals(True)
        self.class_filter.clear()
        self.class_filter.addItem(ALL)
        if "class" in df:
            cats = list(df["class"].cat.categories) if hasattr(df["class"], "cat") else sorted(set(df["class"]))
            self.class_filter.addItems([str(c) for c in cats])
        if "uncertain" in df:
            self.class_filter.addItem(UNCERTAIN)
        idx = self.class_filter.findText(current)
        self.class_filter.setCurrentIndex(max(idx, 0))
        self.class_filter.blockSignals(False)
        self._apply_filter()
        name = self._layer.name if self._layer is not None else "no layer"
        self.status.setText(f"{len(df)} head(s) in '{name}'.")

    def _apply_filter(self, *_args) -> None:
        df = self.data
        choice = self.class_filter.currentText() or ALL
        for row in range(self.table.rowCount()):
            i = self._df_row(row)
            hide = False
            if i is not None and choice == UNCERTAIN:
                hide = not bool(df["uncertain"].iloc[i])
            elif i is not None and choice != ALL and "class" in df:
                hide = str(df["class"].iloc[i]) != choice
            self.table.setRowHidden(row, hide)

    def visible_labels(self) -> list[int]:
        """Labels of the rows shown now (in display order)."""
        df = self.data
        out = []
        for row in range(self.table.rowCount()):
            i = self._df_row(row)
            if not self.table.isRowHidden(row) and i is not None and "label" in df:
                out.append(int(df["label"].iloc[i]))
        return out

    def _df_row(self, row: int) -> int | None:
        item = self.table.item(row, 0)
        return None if item is None else item.data(Qt.UserRole)

    # -- selection ------------------------------------------------------------------------------------
    def select_row(self, row: int) -> None:
        i = self._df_row(row)
        if i is not None:
            self.select_head(int(self.data["label"].iloc[i]))

    def select_head(self, label: int) -> None:
        """Select ``label`` in its layer and centre the camera on it (world coordinates)."""
        from napari.layers import Labels

        df, layer = self.data, self._layer
        rows = df.index[df["label"] == label] if "label" in df else []
        if layer is None or len(rows) == 0:
            return
        r = df.loc[rows[0]]
        if isinstance(layer, Labels):
            layer.selected_label = int(label)
            if "centroid_y" in df:
                lead = [float(r["plane"])] if "plane" in df and layer.ndim > 2 else []
                lead = [0.0] * (layer.ndim - 2 - len(lead)) + lead
                world = np.asarray(layer.data_to_world([*lead, float(r["centroid_y"]), float(r["centroid_x"])]))
                if layer.ndim > 2:
                    for ax in range(layer.ndim - 2):
                        self.viewer.dims.set_point(ax, world[ax])
                self.viewer.camera.center = tuple(world[-2:])
        elif "frame" in df:  # a crop stack: go to that crop
            world = np.asarray(layer.data_to_world([float(r["frame"])] + [0.0] * (layer.ndim - 1)))
            self.viewer.dims.set_point(0, world[0])

    # -- export ---------------------------------------------------------------------------------------
    def export_csv(self, path: str | Path) -> Path:
        """Write the whole table (morphometrics + classes, all rows) to ``path``."""
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_suffix(".csv")
        self.data.to_csv(path, index=False)
        self.status.setText(f"Saved {len(self.data)} row(s) to {path}.")
        return path

    def _export_dialog(self) -> None:
        default = f"{self._layer.name}.csv" if self._layer is not None else "heads.csv"
        path, _ = QFileDialog.getSaveFileName(self, "Export results", default, "CSV (*.csv)")
        if path:
            self.export_csv(path)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)
