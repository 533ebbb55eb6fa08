"""Models fine-tuned since napari started, so the classify widget can offer them at once.

The fine-tune widget calls ``register_session_model``; the classify widget listens to ``models_changed``.
"""

from __future__ import annotations

from pathlib import Path

from psygnal import Signal


class _SessionModels:
    changed = Signal()

    def __init__(self) -> None:
        self.models: dict[str, Path] = {}


_SESSION = _SessionModels()

#: emitted (no arguments) whenever a session model is added or removed
models_changed = _SESSION.changed


def register_session_model(name: str, path: str | Path) -> None:
    """Offer the checkpoint at ``path`` as ``name`` in every classify widget (a later call replaces it)."""
    _SESSION.models[str(name)] = Path(path)
    models_changed.emit()


def unregister_session_model(name: str) -> None:
    if _SESSION.models.pop(str(name), None) is not None:
        models_changed.emit()


def session_models() -> dict[str, Path]:
    """Name -> checkpoint path, in the order they were registered."""
    return dict(_SESSION.models)
