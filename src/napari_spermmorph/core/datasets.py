"""Class-folder datasets and cross-validation splits.

A dataset is a folder of class sub-folders; the label always comes from the folder, never the file name.
Images are read by content (Pillow sniffs the format), so a PNG named ``.bmp`` still loads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".npy"}


@dataclass
class ClassFolderDataset:
    files: list[Path]
    labels: np.ndarray  # int64 index into class_names
    class_names: list[str]
    folder_names: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def load_images(self) -> list[np.ndarray]:
        return [read_image(f) for f in self.files]

    def load_crops(self, size: int, head_fraction: float | None = None) -> np.ndarray:
        """The images as a model sees them: head centred, aligned and scaled (``crops.normalise_crops``)."""
        from .crops import DEFAULT_HEAD_FRACTION, normalise_crops

        return normalise_crops(self.load_images(), size, head_fraction or DEFAULT_HEAD_FRACTION)[0].images

    def groups(self) -> np.ndarray:
        """Group id per file: pixel-identical images share one, so CV keeps them in one fold."""
        ids: dict[str, int] = {}
        return np.array([ids.setdefault(pixel_md5(f), len(ids)) for f in self.files])


def read_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "RGB", "RGBA", "I;16", "I"):
            im = im.convert("RGB")
        return np.asarray(im)


def pixel_md5(path: str | Path) -> str:
    return hashlib.md5(np.ascontiguousarray(read_image(path)).tobytes()).hexdigest()


def canonical_class_name(folder: str) -> str:
    """'01_Normal' -> 'normal', 'normal_sperm' -> 'normal', 'non_sperm' stays 'non_sperm'."""
    name = folder.lower()
    if len(name) > 3 and name[:2].isdigit() and name[2] in "_- ":
        name = name[3:]
    if name.endswith("_sperm") and name != "non_sperm":
        name = name[: -len("_sperm")]
    return name.replace(" ", "_").replace("-", "_")


def load_class_folders(root: str | Path, class_names: list[str] | None = None) -> ClassFolderDataset:
    """List ``root/<class>/*``. With ``class_names`` the folders must match them (canonical names)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {canonical_class_name(p.name): p for p in folders}
    if not found:
        raise ValueError(f"{root} has no class sub-folders (expected {root}/<class>/<image files>).")
    if class_names is None:
        class_names = sorted(found, key=lambda n: n != "normal")  # folder order, "normal" first (for % normal)
    elif set(class_names) != set(found):
        raise ValueError(
            f"The dataset's class folders {sorted(found)} do not match the model's classes {list(class_names)}."
        )
    files, labels = [], []
    for idx, name in enumerate(class_names):
        for f in sorted(found[name].iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(idx)
    return ClassFolderDataset(files, np.array(labels, dtype=np.int64), list(class_names),
                              [found[n].name for n in class_names])


def stratified_folds(labels: np.ndarray, k: int = 5, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold index per sample; stratified, and grouped when ``groups`` is given (duplicates never straddle)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    folds = np.full(len(labels), -1, dtype=np.int64)
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)), labels)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)), labels, groups)
    for fold, (_, test_idx) in enumerate(splits):
        folds[test_idx] = fold
    return folds


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) with ``fraction`` of each class held out (at least one each)."""
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        held.extend(idx[:n].tolist())
    held_arr = np.array(sorted(held), dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), held_arr)
    return train, held_arr
