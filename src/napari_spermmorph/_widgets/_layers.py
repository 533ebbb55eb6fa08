"""Layer helpers: result names, geometry copied from the source layer, class colours.

Results never overwrite a user's layer: a result goes to a new uniquely named layer, or replaces the data of
a layer this plugin made earlier for the same source and kind (tagged in ``metadata``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

TAG = "spermmorph"  # metadata key: {"kind": ..., "source": <source layer name>}

#: fixed colours per class position; "normal" is always green, whatever its position
_PALETTE = [
    (0.96, 0.26, 0.21), (0.13, 0.59, 0.95), (1.00, 0.76, 0.03), (0.61, 0.15, 0.69),
    (0.00, 0.74, 0.83), (1.00, 0.34, 0.13), (0.91, 0.12, 0.39), (0.47, 0.33, 0.28),
    (0.38, 0.49, 0.55), (0.80, 0.86, 0.22),
]
_NORMAL = (0.30, 0.69, 0.31)


def result_name(source_name: str, kind: str) -> str:
    return f"{source_name} {kind}"


def unique_name(viewer, name: str) -> str:
    """``name``, or ``name [2]``, ``name [3]``... if a layer already has it."""
    existing = {layer.name for layer in viewer.layers}
    if name not in existing:
        return name
    k = 2
    while f"{name} [{k}]" in existing:
        k += 1
    return f"{name} [{k}]"


def spatial_kwargs(source, ndim: int | None = None) -> dict[str, Any]:
    """scale/translate of ``source`` for a layer with ``ndim`` dims (leading extra dims get 1/0)."""
    scale = np.asarray(source.scale, dtype=float)
    translate = np.asarray(source.translate, dtype=float)
    ndim = len(scale) if ndim is None else ndim
    if ndim >= len(scale):
        pad = ndim - len(scale)
        scale = np.concatenate([np.ones(pad), scale])
        translate = np.concatenate([np.zeros(pad), translate])
    else:
        scale, translate = scale[-ndim:], translate[-ndim:]
    return {"scale": tuple(scale), "translate": tuple(translate)}


def tag(kind: str, source) -> dict:
    return {TAG: {"kind": kind, "source": getattr(source, "name", str(source))}}


def find_result(viewer, kind: str, source) -> Any | None:
    """The layer this plugin made earlier of ``kind`` for ``source`` (by tag, not by name)."""
    src = getattr(source, "name", str(source))
    for layer in viewer.layers:
        t = layer.metadata.get(TAG) if isinstance(layer.metadata, dict) else None
        if isinstance(t, dict) and t.get("kind") == kind and t.get("source") == src:
            return layer
    return None


def add_or_update(viewer, layer_type: str, data: np.ndarray, kind: str, source, replace: bool = True,
                  **kwargs) -> Any:
    """Put a result on our own earlier layer (same kind and source) or on a new, uniquely named one."""
    old = find_result(viewer, kind, source) if replace else None
    meta = dict(kwargs.pop("metadata", {}) or {})
    meta.update(tag(kind, source))
    if old is not None and old._type_string == layer_type and old.data.ndim == np.asarray(data).ndim:
        old.data = data
        for key, value in kwargs.items():
            if key not in ("name",):
                setattr(old, key, value)
        old.metadata = {**old.metadata, **meta}
        return old
    name = unique_name(viewer, kwargs.pop("name", result_name(source.name, kind)))
    add = getattr(viewer, f"add_{layer_type}")
    return add(data, name=name, metadata=meta, **kwargs)


def class_colors(class_names: list[str]) -> dict[str, tuple[float, float, float, float]]:
    """One fixed RGBA per class: 'normal' green, the others from a fixed palette in class order."""
    out = {}
    k = 0
    for name in class_names:
        if name.lower() in ("normal", "normal_sperm"):
            rgb = _NORMAL
        else:
            rgb = _PALETTE[k % len(_PALETTE)]
            k += 1
        out[name] = (*rgb, 1.0)
    return out


def class_colormap(class_names: list[str]):
    """DirectLabelColormap: value i + 1 -> colour of class i, background and unknown values transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = class_colors(class_names)
    color_dict: dict = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for i, name in enumerate(class_names):
        color_dict[i + 1] = colors[name]
    return DirectLabelColormap(color_dict=color_dict)


def layer_data(layer) -> np.ndarray:
    """The full-resolution data of a layer as a numpy array (multiscale -> level 0)."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return np.asarray(data)


def pixel_size_of(layer) -> float | None:
    """The layer's pixel size in um: its x scale when not 1, else ``metadata['pixel_size_um']``, else None."""
    sx = float(layer.scale[-1])
    if sx > 0 and not np.isclose(sx, 1.0):
        return sx
    px = layer.metadata.get("pixel_size_um") if isinstance(layer.metadata, dict) else None
    try:
        return float(px) if px else None
    except (TypeError, ValueError):
        return None


def layer_combo(viewer, types: tuple, none_text: str | None = None, accept=None):
    """A QComboBox of the viewer's layers of ``types`` (and ``accept(layer)``) that follows adds, removals
    and renames; ``combo.refresh()`` re-reads the list."""
    from qtpy.QtWidgets import QComboBox

    combo = QComboBox()

    def refresh(*_args) -> None:
        current = combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        if none_text is not None:
            combo.addItem(none_text, None)
        for layer in viewer.layers:
            if isinstance(layer, types) and (accept is None or accept(layer)):
                combo.addItem(layer.name, layer)
        idx = index_of(combo, current) if current is not None else -1
        combo.blockSignals(False)
        if idx >= 0:
            combo.setCurrentIndex(idx)
        else:
            combo.setCurrentIndex(-1 if combo.count() == 0 else 0)
            combo.currentIndexChanged.emit(combo.currentIndex())

    def watch(event=None) -> None:
        if event is not None and getattr(event, "value", None) is not None:
            event.value.events.name.connect(refresh)
        refresh()

    viewer.layers.events.inserted.connect(watch)
    viewer.layers.events.removed.connect(refresh)
    viewer.layers.events.reordered.connect(refresh)
    for layer in viewer.layers:
        layer.events.name.connect(refresh)
    refresh()
    combo.refresh = refresh  # type: ignore[attr-defined]
    return combo


def index_of(combo, obj) -> int:
    """Index of the item whose data *is* ``obj`` (findData compares Python objects unreliably)."""
    return next((i for i in range(combo.count()) if combo.itemData(i) is obj), -1)


def select_in_combo(combo, layer) -> None:
    idx = index_of(combo, layer)
    if idx >= 0:
        combo.setCurrentIndex(idx)


def as_features(table):
    """A per-head table as Labels ``features``: napari maps rows to label values through an 'index' column."""
    out = table.copy()
    if "label" in out and "index" not in out:
        out.insert(0, "index", out["label"].astype(int).to_numpy())
    return out
