"""Run a long job off the GUI thread (or synchronously, for tests) with a progress bar and a Stop button.

A job is a generator function taking no arguments: it yields ``Progress`` between steps, checks the stop flag
between batches/planes and returns its result. Core functions that report through callbacks instead
(``segment_image(progress=...)``) get ``RunControls.report``, which is safe to call from the worker thread.
Synchronous mode: env ``SPERMMORPH_SYNC=1`` or ``use_thread=False``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

SYNC_ENV = "SPERMMORPH_SYNC"


@dataclass
class Progress:
    done: int
    total: int
    message: str = ""


class Cancelled(Exception):  # not a RuntimeError: superqt swallows those (see _Shielded)
    """Raised inside a job when the user pressed Stop."""


class _Shielded(Exception):
    """Carries a RuntimeError out of a superqt worker, which would otherwise drop it and never emit
    ``finished`` (superqt treats RuntimeError as 'the worker was deleted')."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


def _shield(func: Callable[[], Generator[Any, None, Any]]) -> Callable[[], Generator[Any, None, Any]]:
    def gen():
        try:
            return (yield from func())
        except RuntimeError as exc:
            raise _Shielded(exc) from exc

    return gen


def use_threads(use_thread: bool | None = None) -> bool:
    """Threads unless ``use_thread`` is False or the env switch ``SPERMMORPH_SYNC=1`` is set."""
    if use_thread is not None:
        return bool(use_thread)
    return os.environ.get(SYNC_ENV, "") not in ("1", "true", "yes")


class StopFlag:
    """Set by the Stop button, read by the job between batches (a plain bool: reads are atomic)."""

    def __init__(self) -> None:
        self._stop = False

    def set(self) -> None:
        self._stop = True

    def clear(self) -> None:
        self._stop = False

    def __call__(self) -> bool:
        return self._stop

    def check(self) -> None:
        if self._stop:
            raise Cancelled("Stopped by the user.")


def _is_cancel(exc: BaseException) -> bool:
    return isinstance(exc, Cancelled) or type(exc).__name__.endswith("Cancelled")


def run_generator(
    func: Callable[[], Generator[Any, None, Any]],
    on_yield: Callable[[Any], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[], None] | None = None,
    use_thread: bool | None = None,
):
    """Run ``func()`` in a napari ``thread_worker`` (returned, already started) or inline (returns None)."""
    if use_threads(use_thread):
        from napari.qt.threading import create_worker

        def errored(exc: BaseException) -> None:
            if on_error is not None:
                on_error(exc.original if isinstance(exc, _Shielded) else exc)

        connect = {"errored": errored}
        if on_yield:
            connect["yielded"] = on_yield
        if on_return:
            connect["returned"] = on_return
        if on_finish:
            connect["finished"] = on_finish
        return create_worker(_shield(func), _connect=connect, _start_thread=True)
    try:
        gen = func()
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                if on_return:
                    on_return(stop.value)
                break
            if on_yield:
                on_yield(item)
    except Exception as exc:  # noqa: BLE001 - handed to the caller, like the threaded errored signal
        if on_error is None:
            raise
        on_error(exc)
    finally:
        if on_finish:
            on_finish()
    return None


class _Relay(QObject):
    progressed = Signal(object)


class RunControls(QWidget):
    """Run and Stop buttons, a progress bar and a status label shared by the widgets."""

    def __init__(self, run_text: str = "Run", parent: QWidget | None = None):
        super().__init__(parent)
        self.stop_flag = StopFlag()
        self.run_button = QPushButton(run_text)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_flag.set)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.run_button)
        row.addWidget(self.stop_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self.worker = None
        self.busy = False

    # -- messages -------------------------------------------------------------------------------------
    def message(self, text: str, level: str = "info") -> None:
        """Show ``text`` in the status label and as a napari notification (info/warning/error)."""
        from napari.utils import notifications

        self.status.setText(text)
        {"warning": notifications.show_warning, "error": notifications.show_error}.get(
            level, notifications.show_info)(text)

    # -- progress -------------------------------------------------------------------------------------
    def report(self, done: int, total: int, message: str = "") -> None:
        """Thread-safe progress callback (``segment_image(progress=controls.report)``)."""
        self._relay.progressed.emit(Progress(int(done), int(total), message))

    def _on_progress(self, item: Any) -> None:
        if not isinstance(item, Progress):
            return
        self.progress.setRange(0, max(item.total, 1))
        self.progress.setValue(min(item.done, max(item.total, 1)))
        if item.message:
            self.status.setText(item.message)

    # -- running --------------------------------------------------------------------------------------
    def start(
        self,
        func: Callable[[], Generator[Any, None, Any]],
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
        use_thread: bool | None = None,
    ):
        """Disable Run, enable Stop, run the job; ``on_result`` runs on the GUI thread unless stopped."""
        if self.busy:
            self.message("Already running; press Stop first.", "warning")
            return None
        self.busy = True
        self.stop_flag.clear()
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy indicator until the first Progress

        def _result(value: Any) -> None:
            if self.stop_flag():
                self.message("Stopped: no layer was changed.", "info")
                return
            on_result(value)

        def _error(exc: BaseException) -> None:
            if _is_cancel(exc):
                self.message("Stopped: no layer was changed.", "info")
            elif on_error is not None:
                on_error(exc)
            else:
                self.message(f"{type(exc).__name__}: {exc}", "error")

        def _finish() -> None:
            self.busy = False
            self.worker = None
            self.run_button.setEnabled(True)
            self.stop_button.setEnabled(False)
            self.progress.setRange(0, 1)
            self.progress.setValue(1)

        self.worker = run_generator(func, on_yield=self._on_progress, on_return=_result, on_error=_error,
                                    on_finish=_finish, use_thread=use_thread)
        return self.worker
