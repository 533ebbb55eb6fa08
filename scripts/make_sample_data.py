"""Build the packaged sample data from the Sperm Parsing dataset (reproducible).

Reads ``$SPERMMORPH_DATA/sperm_parsing/train`` (default ``../shared/data`` from the repo root) and writes into
``src/napari_spermmorph/sample_data/``:

- ``field.jpg``: one whole stained field, the original JPEG bytes, unchanged (no re-encoding).
- ``field_heads.png``: uint8 instance labels of each head (Nucleus + Acrosome polygons, by ``group_id``).
- ``head_crops.npz``: the heads of that field cut out, centred on each head mask, resized to 128x128 RGB.

Only this one field goes into the repository: the licence (Academic Public License, non-commercial) allows
redistribution with credit, see ``sample_data/LICENSE-SpermParsing.md``.

Run: ``.venv/bin/python scripts/make_sample_data.py [--field NAME]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.draw import polygon as draw_polygon

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "src" / "napari_spermmorph" / "sample_data"
# Chosen by eye among fields with 6-10 heads far apart and away from the border: 8 heads, all annotated,
# plus debris (a round cell, bacteria) that a segmenter has to reject.
DEFAULT_FIELD = "Image__2022-10-29__10-01-32"
HEAD_PARTS = ("Nucleus", "Acrosome")
# A 160 px window around each head, resized to 128 px: the median Sperm Parsing head (~90 px long) then fills
# ~0.55 of the crop side, as in the plugin's own crops (``head_fraction=0.55``). One scale for all crops.
WINDOW_PX = 160
CROP_PX = 128


def data_root() -> Path:
    """Where the real data are: ``SPERMMORPH_DATA`` or ``../shared/data`` from the repo root."""
    return Path(os.environ.get("SPERMMORPH_DATA", REPO.parent / "shared" / "data"))


def head_labels(annotation: dict) -> np.ndarray:
    """Rasterise Nucleus + Acrosome polygons into uint8 instance labels 1..N (ordered by group_id)."""
    shape = (annotation["imageHeight"], annotation["imageWidth"])
    groups = sorted({s["group_id"] for s in annotation["shapes"] if s["label"] in HEAD_PARTS})
    if len(groups) > 255:
        raise ValueError("too many heads for uint8 labels")
    labels = np.zeros(shape, dtype=np.uint8)
    for new_id, gid in enumerate(groups, start=1):
        for s in annotation["shapes"]:
            if s["group_id"] == gid and s["label"] in HEAD_PARTS:
                pts = np.asarray(s["points"], dtype=float)
                rr, cc = draw_polygon(pts[:, 1], pts[:, 0], shape=shape)
                labels[rr, cc] = new_id
    return labels


def cut_crops(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a WINDOW_PX square centred on each head's mask centroid, resized to CROP_PX (edge-padded)."""
    half = WINDOW_PX // 2
    padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode="edge")
    crops, ids, centres = [], [], []
    for lab in range(1, int(labels.max()) + 1):
        rr, cc = np.nonzero(labels == lab)
        if rr.size == 0:
            continue
        cy, cx = int(round(rr.mean())), int(round(cc.mean()))
        window = padded[cy : cy + WINDOW_PX, cx : cx + WINDOW_PX]
        resized = Image.fromarray(window).resize((CROP_PX, CROP_PX), Image.Resampling.BICUBIC)
        crops.append(np.asarray(resized, dtype=np.uint8))
        ids.append(lab)
        centres.append((cy, cx))
    return np.stack(crops), np.asarray(ids, dtype=np.int32), np.asarray(centres, dtype=np.int32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--field", default=DEFAULT_FIELD, help="image stem in sperm_parsing/train/images")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)

    train = data_root() / "sperm_parsing" / "train"
    jpg = train / "images" / f"{args.field}.jpg"
    with gzip.open(train / "annotations" / f"{args.field}.json.gz") as fh:
        annotation = json.load(fh)
    args.out.mkdir(parents=True, exist_ok=True)

    shutil.copyfile(jpg, args.out / "field.jpg")
    image = np.asarray(Image.open(jpg).convert("RGB"))
    labels = head_labels(annotation)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"annotation size {labels.shape} != image size {image.shape[:2]}")
    Image.fromarray(labels).save(args.out / "field_heads.png", optimize=True)

    crops, ids, centres = cut_crops(image, labels)
    np.savez_compressed(
        args.out / "head_crops.npz",
        images=crops,
        label_ids=ids,
        centres_yx=centres,
        window_px=np.int32(WINDOW_PX),
        source_field=np.str_(f"{args.field}.jpg"),
    )
    for name in ("field.jpg", "field_heads.png", "head_crops.npz"):
        print(f"{name}: {(args.out / name).stat().st_size / 1024:.0f} KiB")
    print(f"{int(labels.max())} heads, crops {crops.shape}")


if __name__ == "__main__":
    main()
