"""napari-spermmorph: sperm head segmentation, morphology classification and Grad-CAM++ in napari.

The scripting API (``segment``, ``measure``, ``crop``, ``load_model``, ``classify``, ``explain``, ``fine_tune``,
``analyze``, ...) is re-exported lazily from ``napari_spermmorph.api``: importing the package, as napari does
when it reads the plugin manifest, stays cheap and does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = (
    "segment", "measure", "crop", "load_model", "list_models", "classify", "classify_crops", "explain",
    "fine_tune", "analyze", "summarize", "wilson_interval",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
