"""napari widgets: thin Qt layers over ``napari_spermmorph.core`` (no science here, torch imported lazily)."""

from ._torch_guard import guard_triton

guard_triton()  # before any widget imports torch: see _torch_guard
