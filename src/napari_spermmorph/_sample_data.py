"""Sample data for napari's File > Open Sample menu (npe2 ``sample_data`` contributions).

The real samples are one Sperm Parsing field and the heads cut from it (see ``sample_data/README.md``);
they are small enough to ship and their licence allows redistribution with credit (non-commercial).
Each function returns napari layer-data tuples ``(data, kwargs, layer_type)``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np
from PIL import Image

from napari_spermmorph.core.segmentation import DEFAULT_PIXEL_SIZE_UM

SAMPLE_DIR = files("napari_spermmorph") / "sample_data"
FIELD_FILE = "field.jpg"
FIELD_LABELS_FILE = "field_heads.png"
CROPS_FILE = "head_crops.npz"
SOURCE = (
    "Sperm Parsing dataset (W. Chen et al., CP-Net), training field Image__2022-10-29__10-01-32.jpg; "
    "github.com/tad34s/Sperm-Parsing (fork of the authors' CP-Net repository)"
)
LICENCE = "Academic Public License: non-commercial use only, credit the authors; see LICENSE-SpermParsing.md"

LayerData = tuple[Any, dict[str, Any], str]


def _field_pixel_size_um() -> float:
    """The source states no pixel size: use the plugin's estimate (see ``core.segmentation``)."""
    return float(DEFAULT_PIXEL_SIZE_UM)


def _scale(pixel_size_um: float | None) -> tuple[float, float]:
    return (1.0, 1.0) if pixel_size_um is None else (pixel_size_um, pixel_size_um)


def load_field() -> np.ndarray:
    """The shipped stained field as uint8 RGB (H, W, 3)."""
    with Image.open(SAMPLE_DIR / FIELD_FILE) as im:
        return np.asarray(im.convert("RGB"))


def load_field_head_labels() -> np.ndarray:
    """Annotated heads (Nucleus + Acrosome) of the shipped field as uint8 instance labels (H, W)."""
    with Image.open(SAMPLE_DIR / FIELD_LABELS_FILE) as im:
        return np.asarray(im)


def load_head_crops() -> dict[str, np.ndarray]:
    """Head crops: ``images`` (N,128,128,3) uint8, ``label_ids``, ``centres_yx`` and ``window_px``."""
    with np.load(SAMPLE_DIR / CROPS_FILE) as npz:
        return {k: npz[k] for k in npz.files}


def sample_field() -> list[LayerData]:
    """A real stained smear field with eight sperm and some debris."""
    px = _field_pixel_size_um()
    meta = {"source": SOURCE, "licence": LICENCE, "pixel_size_um": px}
    kwargs = {"name": "Sperm Parsing field", "rgb": True, "scale": _scale(px), "metadata": meta}
    return [(load_field(), kwargs, "image")]


def sample_head_crops() -> list[LayerData]:
    """The heads of the sample field, cut out and centred, as an RGB stack (N, 128, 128, 3)."""
    crops = load_head_crops()
    field_px = _field_pixel_size_um()
    # Each crop is a window_px square of the field resized to the crop side.
    side = crops["images"].shape[1]
    px = None if field_px is None else field_px * float(crops["window_px"]) / side
    meta = {
        "source": SOURCE,
        "licence": LICENCE,
        "pixel_size_um": px,
        "label_ids": crops["label_ids"].tolist(),
        "centres_yx": crops["centres_yx"].tolist(),
    }
    kwargs = {"name": "Sperm head crops", "rgb": True, "scale": (1.0, *_scale(px)), "metadata": meta}
    return [(crops["images"], kwargs, "image")]


def sample_synthetic_field() -> list[LayerData]:
    """A seeded synthetic smear (no licence limits) with its ground-truth head labels."""
    from napari_spermmorph.core.synthetic import synthetic_field

    field = synthetic_field(seed=0)
    px = field.pixel_size_um
    meta = {
        "source": "napari_spermmorph.core.synthetic.synthetic_field(seed=0)",
        "licence": "BSD-3-Clause",
        "pixel_size_um": px,
    }
    image = np.asarray(field.image)
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    image_kwargs = {"name": "Synthetic field", "rgb": rgb, "scale": _scale(px), "metadata": meta}
    labels_kwargs = {
        "name": "Synthetic heads (truth)",
        "scale": _scale(px),
        "metadata": dict(meta),
        "opacity": 0.4,
    }
    return [(image, image_kwargs, "image"), (np.asarray(field.labels), labels_kwargs, "labels")]
