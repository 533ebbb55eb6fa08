"""Fine-tune a classifier on heads annotated in napari, with live curves, Stop, and the new model at once in
the classify widget.

The widget only gathers inputs and shows progress: the training set comes from ``core.annotations``, the
training from ``core.finetune`` (which runs the core trainer), in a worker thread so that napari stays usable.
The validation split is computed and shown before training starts and is exactly the one used.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.annotations import (
    AnnotationError,
    build_training_set,
    check_class_names,
    field_from_class_paint,
    field_from_heads,
    parse_class_names,
)
from ..core.finetune import IMAGENET, IMAGENET_LABEL, FineTuneError, FineTuneResult, output_path, start_info
from ._layers import layer_combo, layer_data
from ._models import models_changed, register_session_model, session_models
from ._workers import StopFlag, run_generator
from .annotate_widget import CLASS_NAMES_KEY, HEADS, annotation_kind, default_class_names

CHECKPOINT_FILE = "Checkpoint file..."
DEFAULT_FOLDER = Path.home() / "spermmorph-models"


class CurvesCanvas(QWidget):
    """Loss and accuracy per epoch (train and validation), phase boundaries dashed.

    Painted with QPainter rather than matplotlib: a matplotlib redraw (ticks, text layout, legend) took
    0.3-0.8 s of GUI-thread time per epoch on a busy 2-core machine, which froze napari; this takes ~1 ms.
    """

    SERIES = (("loss", (("train_loss", "train"), ("val_loss", "validation"))),
              ("accuracy", (("train_acc", "train"), ("val_acc", "validation"), ("val_macro_f1", "val F1"))))
    COLOURS = ("#4fc3f7", "#ffb74d", "#81c784")

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(150)
        self.clear()

    def clear(self) -> None:
        self.epochs: list[dict] = []
        self.update()

    def add(self, update) -> None:
        self.epochs.append({"phase": update.phase, "train_loss": update.train_loss, "val_loss": update.val_loss,
                            "train_acc": update.train_acc, "val_acc": update.val_acc,
                            "val_macro_f1": update.val_macro_f1})
        self.update()  # a repaint is scheduled, never done inside the signal handler

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        from qtpy.QtCore import QPointF, QRectF, Qt
        from qtpy.QtGui import QColor, QPainter, QPen

        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        w, h = self.width(), self.height()
        fg = self.palette().color(self.foregroundRole())
        half = w / 2
        for k, (title, series) in enumerate(self.SERIES):
            box = QRectF(k * half + 34, 16, half - 44, h - 36)
            values = [e[key] for e in self.epochs for key, _ in series]
            lo, hi = (0.0, 1.0) if title == "accuracy" else (0.0, max(values, default=1.0) * 1.05 or 1.0)
            p.setPen(QPen(fg))
            p.drawRect(box)
            p.drawText(QRectF(k * half, 0, half, 16), Qt.AlignCenter, title)
            p.drawText(QRectF(k * half, box.top() - 6, 32, 14), Qt.AlignRight, f"{hi:.2g}")
            p.drawText(QRectF(k * half, box.bottom() - 8, 32, 14), Qt.AlignRight, f"{lo:.2g}")
            p.drawText(QRectF(box.left(), box.bottom() + 2, box.width(), 16), Qt.AlignCenter,
                       f"epoch ({len(self.epochs)})")
            n = max(len(self.epochs), 2)

            def pt(i: int, v: float, box=box, lo=lo, hi=hi, n=n) -> QPointF:
                return QPointF(box.left() + box.width() * i / (n - 1),
                               box.bottom() - box.height() * (min(max(v, lo), hi) - lo) / ((hi - lo) or 1.0))

            dash = QPen(QColor("grey"))
            dash.setStyle(Qt.DashLine)
            for i in range(1, len(self.epochs)):
                if self.epochs[i]["phase"] != self.epochs[i - 1]["phase"]:
                    p.setPen(dash)
                    x = pt(i, lo).x() - box.width() / (2 * (n - 1))
                    p.drawLine(QPointF(x, box.top()), QPointF(x, box.bottom()))
            for j, (key, label) in enumerate(series):
                pen = QPen(QColor(self.COLOURS[j]))
                pen.setWidthF(1.5)
                p.setPen(pen)
                pts = [pt(i, e[key]) for i, e in enumerate(self.epochs)]
                for a, b in zip(pts, pts[1:], strict=False):
                    p.drawLine(a, b)
                for q in pts:
                    p.drawEllipse(q, 1.5, 1.5)
                p.drawText(QPointF(box.left() + 4, box.top() + 12 + 12 * j), label)
        p.end()


class FineTuneWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image, Labels

        from ..core.inference import available_devices

        self.viewer = napari_viewer
        self.pretrained = True  # ImageNet weights for the ImageNet start (tests may switch off for speed)
        self.use_thread: bool | None = None  # None: threads unless SPERMMORPH_SYNC=1
        self.stop_flag = StopFlag()
        self.worker = None
        self.running = False
        self.training_set = None
        self.last_result: FineTuneResult | None = None
        self.fields: list[tuple] = []  # (image layer, labels layer)

        # data
        self.image_combo = layer_combo(napari_viewer, (Image,))
        self.labels_combo = layer_combo(napari_viewer, (Labels,))
        self.add_field_button = QPushButton("Add field")
        self.remove_field_button = QPushButton("Remove")
        self.field_list = QListWidget()
        self.field_list.setMaximumHeight(70)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("optional: folder of class sub-folders")
        self.folder_button = QPushButton("...")
        self.folder_max = QSpinBox()
        self.folder_max.setRange(0, 100000)
        self.folder_max.setSpecialValueText("all")
        # classes and start model
        self.classes_edit = QLineEdit(", ".join(default_class_names()))
        self.start_combo = QComboBox()
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("checkpoint .safetensors (for 'Checkpoint file...')")
        self.checkpoint_button = QPushButton("...")
        self.use_start_classes = QPushButton("Use start model's classes")
        # settings
        self.input_size = _spin(32, 512, 128, step=32)
        # 40 + 15: on 20 SMIDS images per class, 40 cheap frozen epochs (cached features) + 15 full ones beat
        # 10 + 10 by ~4 points of accuracy (benchmarks/bench_finetune.py)
        self.phase1_epochs = _spin(0, 500, 40)
        self.phase2_epochs = _spin(0, 500, 15)
        self.batch_size = _spin(2, 512, 16)
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.05, 0.5)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(0.2)
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        # output
        self.out_edit = QLineEdit(str(DEFAULT_FOLDER))
        self.out_button = QPushButton("...")
        self.name_edit = QLineEdit("finetuned")
        # run
        self.prepare_button = QPushButton("Prepare split")
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.split_table = QTableWidget(0, 3)
        self.split_table.setHorizontalHeaderLabels(["class", "train", "validation"])
        self.split_table.verticalHeader().setVisible(False)
        self.split_table.setMaximumHeight(140)
        self.phase_label = QLabel("")
        self.epoch_bar = QProgressBar()
        self.batch_bar = QProgressBar()
        self.curves = CurvesCanvas()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._layout()

        self.add_field_button.clicked.connect(self.add_field)
        self.remove_field_button.clicked.connect(self._remove_field)
        self.folder_button.clicked.connect(lambda: self._pick_dir(self.folder_edit))
        self.out_button.clicked.connect(lambda: self._pick_dir(self.out_edit))
        self.checkpoint_button.clicked.connect(self._pick_checkpoint)
        self.labels_combo.currentIndexChanged.connect(self._labels_changed)
        self.start_combo.currentIndexChanged.connect(self._start_changed)
        self.use_start_classes.clicked.connect(self._use_start_classes)
        self.prepare_button.clicked.connect(self.prepare)
        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.stop)
        models_changed.connect(self._fill_start_models)
        stop = self.stop_flag
        self.destroyed.connect(lambda *_: stop.set())  # closing the widget ends a running training cleanly
        self._fill_start_models()
        self._labels_changed()

    def _layout(self) -> None:
        data = QFormLayout()
        data.addRow("Image", self.image_combo)
        data.addRow("Annotated labels", self.labels_combo)
        row = QHBoxLayout()
        row.addWidget(self.add_field_button)
        row.addWidget(self.remove_field_button)
        data.addRow(row)
        data.addRow("Fields", self.field_list)
        data.addRow("Dataset folder", _row(self.folder_edit, self.folder_button))
        data.addRow("Max per class", self.folder_max)
        data_box = QGroupBox("Training data")
        data_box.setLayout(data)
        model = QFormLayout()
        model.addRow("Start from", self.start_combo)
        model.addRow("", _row(self.checkpoint_edit, self.checkpoint_button))
        model.addRow("Classes", self.classes_edit)
        model.addRow("", self.use_start_classes)
        model.addRow("Input size", self.input_size)
        model.addRow("Epochs frozen / all", _row(self.phase1_epochs, self.phase2_epochs))
        model.addRow("Batch size", self.batch_size)
        model.addRow("Validation fraction", self.val_fraction)
        model.addRow("Device", self.device_combo)
        model.addRow("Save to folder", _row(self.out_edit, self.out_button))
        model.addRow("Model name", self.name_edit)
        model_box = QGroupBox("Model")
        model_box.setLayout(model)
        lay = QVBoxLayout(self)
        lay.addWidget(data_box)
        lay.addWidget(model_box)
        lay.addWidget(self.prepare_button)
        lay.addWidget(self.split_table)
        lay.addWidget(_row(self.train_button, self.stop_button))
        lay.addWidget(self.phase_label)
        lay.addWidget(self.epoch_bar)
        lay.addWidget(self.batch_bar)
        lay.addWidget(self.curves)
        lay.addWidget(self.status)

    # -- inputs ---------------------------------------------------------------------------------------
    def add_field(self) -> None:
        """Add the chosen (image, labels) pair to the fields used for training."""
        image, labels = self.image_combo.currentData(), self.labels_combo.currentData()
        if image is None or labels is None:
            self._message("Choose an image and its annotated labels layer first.", "warning")
            return
        if any(i is image and lab is labels for i, lab in self.fields):
            return
        self.fields.append((image, labels))
        self.field_list.addItem(f"{image.name} / {labels.name} ({annotation_kind(labels).split(':')[0]})")

    def _remove_field(self) -> None:
        row = self.field_list.currentRow()
        if 0 <= row < len(self.fields):
            self.fields.pop(row)
            self.field_list.takeItem(row)

    def _labels_changed(self, *_args) -> None:
        labels = self.labels_combo.currentData()
        names = labels.metadata.get(CLASS_NAMES_KEY) if labels is not None else None
        if names:
            self.classes_edit.setText(", ".join(names))

    def _fill_start_models(self) -> None:
        from ..core.registry import shipped_models

        current = self.start_combo.currentData()
        self.start_combo.blockSignals(True)
        self.start_combo.clear()
        for m in shipped_models():
            self.start_combo.addItem(m["name"], m["name"])
        for name, path in session_models().items():
            self.start_combo.addItem(f"{name} (this session)", str(path))
        self.start_combo.addItem(IMAGENET_LABEL, IMAGENET)
        self.start_combo.addItem(CHECKPOINT_FILE, CHECKPOINT_FILE)
        idx = self.start_combo.findData(current) if current is not None else -1
        self.start_combo.setCurrentIndex(max(idx, 0))
        self.start_combo.blockSignals(False)
        self._start_changed()

    def set_start(self, source: str) -> None:
        """Select a start model by registry name, checkpoint path or ``IMAGENET``."""
        idx = self.start_combo.findData(source)
        if idx < 0:
            self.start_combo.setCurrentIndex(self.start_combo.findData(CHECKPOINT_FILE))
            self.checkpoint_edit.setText(str(source))
        else:
            self.start_combo.setCurrentIndex(idx)

    def source(self) -> str:
        data = self.start_combo.currentData()
        return self.checkpoint_edit.text().strip() if data == CHECKPOINT_FILE else str(data)

    def _start_changed(self, *_args) -> None:
        data = self.start_combo.currentData()
        self.input_size.setEnabled(data == IMAGENET)
        self.checkpoint_edit.setEnabled(data == CHECKPOINT_FILE)
        self.checkpoint_button.setEnabled(data == CHECKPOINT_FILE)
        self.use_start_classes.setEnabled(data != IMAGENET)

    def _use_start_classes(self) -> None:
        try:
            self.classes_edit.setText(", ".join(start_info(self.source()).class_names))
        except FineTuneError as exc:
            self._message(str(exc), "error")

    def _pick_dir(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder", edit.text())
        if path:
            edit.setText(path)

    def _pick_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Start checkpoint", "", "Checkpoints (*.safetensors)")
        if path:
            self.checkpoint_edit.setText(path)

    # -- training set ---------------------------------------------------------------------------------
    def _annotated_fields(self, n_classes: int) -> list:
        pairs = list(self.fields)
        if not pairs and self.image_combo.currentData() is not None and self.labels_combo.currentData() is not None:
            pairs = [(self.image_combo.currentData(), self.labels_combo.currentData())]
        out = []
        for image, labels in pairs:
            img, lab = layer_data(image), layer_data(labels)
            name = f"{image.name} / {labels.name}"
            if annotation_kind(labels) == HEADS:
                out.append(field_from_heads(img, lab, labels.features, n_classes, name=name))
            else:
                out.append(field_from_class_paint(img, lab, n_classes, name=name))
        return out

    def prepare(self):
        """Build the training set and show its split; returns it, or None with the reason in the status."""
        self.training_set = None
        self.split_table.setRowCount(0)
        try:
            names = check_class_names(parse_class_names(self.classes_edit.text()))
            info = start_info(self.source(), self.input_size.value())
            fields = self._annotated_fields(len(names))
            folder = self.folder_edit.text().strip() or None
            if not fields and folder is None:
                raise AnnotationError("Choose an image and its annotated labels layer (or add fields), or a "
                                      "dataset folder.")
            ts = build_training_set(fields, names, crop_size=info.input_size, head_fraction=info.head_fraction,
                                    folder=folder, folder_max_per_class=self.folder_max.value() or None,
                                    val_fraction=self.val_fraction.value())
        except (AnnotationError, FineTuneError) as exc:
            self._message(str(exc), "error")
            return None
        counts = ts.counts()
        self.split_table.setRowCount(len(counts) + 1)
        for i, (name, (tr, va)) in enumerate([*counts.items(), ("total", (len(ts.train_idx), len(ts.val_idx)))]):
            for j, v in enumerate((name, str(tr), str(va))):
                self.split_table.setItem(i, j, QTableWidgetItem(v))
        notes = (" " + " ".join(ts.notes)) if ts.notes else ""
        self.status.setText(f"{len(ts)} examples: {len(ts.train_idx)} to train, {len(ts.val_idx)} to validate "
                            f"(stratified).{notes}")
        self.training_set = ts
        return ts

    # -- training -------------------------------------------------------------------------------------
    def train(self):
        """Check everything, then fine-tune in a worker; returns the worker (None when run synchronously)."""
        if self.running:
            self._message("Training is already running; press Stop first.", "warning")
            return None
        ts = self.prepare()
        if ts is None:
            return None
        from ..core.finetune import iter_finetune
        from ..core.training import TrainConfig

        folder, name, source = self.out_edit.text().strip(), self.name_edit.text().strip(), self.source()
        try:
            output_path(folder, name)
        except FineTuneError as exc:
            self._message(str(exc), "error")
            return None
        config = TrainConfig(phase1_epochs=self.phase1_epochs.value(), phase2_epochs=self.phase2_epochs.value(),
                             batch_size=self.batch_size.value(), device=self.device_combo.currentText(),
                             patience=max(self.phase1_epochs.value(), self.phase2_epochs.value(), 1))
        self.stop_flag.clear()
        self.last_result = None
        self.curves.clear()
        self.epoch_bar.setValue(0)
        self.batch_bar.setValue(0)
        self._set_running(True)
        self.status.setText(f"Loading {source} ...")
        pretrained, stop = self.pretrained, self.stop_flag

        def job():
            yield from iter_finetune(ts, source, folder, name, config, should_stop=stop, pretrained=pretrained)

        self.worker = run_generator(job, on_yield=self._on_update, on_error=self._on_error,
                                    on_finish=self._on_finish, use_thread=self.use_thread)
        return self.worker

    def stop(self) -> None:
        if self.running:
            self.stop_flag.set()
            self.status.setText("Stopping after this batch; the best epoch so far will be saved ...")

    def _set_running(self, running: bool) -> None:
        self.running = running
        self.train_button.setEnabled(not running)
        self.prepare_button.setEnabled(not running)
        self.stop_button.setEnabled(running)

    def _on_update(self, upd) -> None:
        kind = type(upd).__name__
        if kind == "PhaseStarted":
            what = "backbone frozen" if upd.phase == 1 else "all layers"
            self.phase_label.setText(f"Phase {upd.phase} ({what}): {upd.epochs} epochs, {upd.n_train} train / "
                                     f"{upd.n_val} validation")
            self.epoch_bar.setRange(0, max(upd.epochs, 1))
            self.epoch_bar.setValue(0)
        elif kind == "BatchDone":
            self.batch_bar.setRange(0, max(upd.n_batches, 1))
            self.batch_bar.setValue(upd.batch + 1)
        elif kind == "EpochDone":
            self.epoch_bar.setValue(upd.epoch + 1)
            self.curves.add(upd)
            best = " (best so far)" if upd.is_best else ""
            self.status.setText(f"Phase {upd.phase} epoch {upd.epoch + 1}: loss {upd.train_loss:.3f}, validation "
                                f"accuracy {upd.val_acc:.2f}, macro-F1 {upd.val_macro_f1:.2f}{best}")
        elif isinstance(upd, FineTuneResult):
            self._on_result(upd)

    def _on_result(self, res: FineTuneResult) -> None:
        self.last_result = res
        if res.path is None:
            self._message(res.message, "warning")
            return
        name = Path(res.path).stem
        register_session_model(name, res.path)
        self._message(f"{res.message}. '{name}' can be chosen now in Classify and explain.")

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, (FineTuneError, AnnotationError)):
            self._message(f"{exc} Annotations and previous models are unchanged.", "error")
        else:
            self._message(f"Fine-tuning failed ({type(exc).__name__}: {exc}); annotations and previous models are "
                          "unchanged.", "error")

    def _on_finish(self) -> None:
        self.worker = None
        self._set_running(False)

    def _message(self, text: str, level: str = "info") -> None:
        from napari.utils import notifications

        self.status.setText(text)
        {"warning": notifications.show_warning, "error": notifications.show_error}.get(
            level, notifications.show_info)(text)


def _spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setValue(value)
    return s


def _row(*widgets) -> QWidget:
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        lay.addWidget(x)
    return w
