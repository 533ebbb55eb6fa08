"""Headless batch analysis of many fields (or folders of head crops), scaled with dask.

Each image is one dask task that runs the same ``pipeline.analyze_field`` the widgets use and writes its own
outputs atomically (temp file + ``os.replace``), so a killed run leaves no half files and a rerun skips what is
done. The classifier is loaded lazily once per worker thread or process (``get_classifier``), never shipped
through the scheduler. Per-sample summaries, ``errors.csv``, ``report.html`` and ``run.json`` are rebuilt at the
end from the per-image tables on disk, so they also cover images done by earlier (resumed) runs.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .datasets import IMAGE_SUFFIXES
from .defaults import DEFAULT_TTA
from .files import atomic_write

if TYPE_CHECKING:  # torch stays unimported until a worker needs the model
    from .inference import Classifier

LABELS_SUFFIX = ".heads.tif"
TABLE_SUFFIX = ".heads.csv"
HEATMAP_TIF_SUFFIX = ".heatmap.tif"
HEATMAP_PNG_SUFFIX = ".heatmap.png"
CROPS_TABLE_SUFFIX = ".crops.csv"
CROPS_HEATMAP_TIF_SUFFIX = ".crops_heatmaps.tif"
CROPS_HEATMAP_PNG_SUFFIX = ".crops_heatmaps.png"
THUMBS_DIR = "thumbs"
#: A folder whose readable images are all at most this many pixels on each side holds head crops, not fields.
CROP_MAX_SIDE = 256
LOCAL_SCHEDULERS = {"threads": "threads", "processes": "processes", "sync": "sync", "synchronous": "sync"}
MODES = ("auto", "fields", "crops")


class BatchInputError(ValueError):
    """A user error in the batch's inputs or settings (message meant for the user)."""


@dataclass(frozen=True)
class Job:
    """One unit of work: a field image, or a folder of head crops classified together."""

    kind: str  # "field" | "crops"
    path: Path
    stem: str  # output file names start with it
    sample: str
    files: tuple[Path, ...] = ()  # the crop files of a "crops" job


@dataclass(frozen=True)
class BatchSettings:
    """Everything a worker needs; small and picklable (the model travels as a path, not as weights)."""

    model: str  # checkpoint path (already resolved) or shipped name
    out_dir: str
    device: str = "auto"
    pixel_size_um: float | None = None
    heatmaps: bool = False
    tta: int = DEFAULT_TTA
    force: bool = False
    min_confidence: float = 0.6
    torch_threads: int | None = None
    max_thumbs: int = 8  # uncertain heads kept per image for the report
    report_heatmaps: bool = True  # Grad-CAM++ for the report's uncertain heads even without --heatmaps
    match_colours: bool = False  # crops moved onto the model's training colours before it reads them


@dataclass
class Outcome:
    job: Job
    status: str  # "done" | "skipped" | "error"
    reason: str = ""
    n_heads: int = 0
    seconds: float = 0.0
    file_errors: list[tuple[str, str]] = field(default_factory=list)  # unreadable crops inside a crops job


@dataclass
class BatchResult:
    outcomes: list[Outcome]
    samples: pd.DataFrame
    errors: pd.DataFrame
    out_dir: Path
    report_path: Path
    run_json_path: Path
    seconds: float

    @property
    def exit_code(self) -> int:
        """0 when every image succeeded, 1 when any failed."""
        return 1 if len(self.errors) else 0

    def counts(self) -> dict[str, int]:
        out = {"done": 0, "skipped": 0, "error": 0}
        for o in self.outcomes:
            out[o.status] += 1
        return out


# ------------------------------------------------------------------------------------------------ inputs
def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _within(p: Path, parent: Path | None) -> bool:
    if parent is None:
        return False
    try:
        p.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def image_side(path: Path) -> int | None:
    """Largest spatial side from the file header (no pixel decoding); None if unreadable."""
    try:
        suffix = path.suffix.lower()
        if suffix == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return int(max(shape[:2]))
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.pages[0].shape
            spatial = shape[:2] if len(shape) == 2 or shape[-1] in (1, 3, 4) else shape[-2:]
            return int(max(spatial))
        from PIL import Image

        with Image.open(path) as im:
            return int(max(im.size))
    except Exception:  # noqa: BLE001 - any unreadable header: undecided
        return None


def read_sample_sheet(path: str | Path) -> dict[str, str]:
    """CSV with an image column (``image``, ``file`` or ``path``) and a ``sample`` column.

    Keys are the resolved path (relative entries are relative to the sheet), the file name and the stem, so a
    sheet may name images any of these ways.
    """
    path = Path(path)
    if not path.is_file():
        raise BatchInputError(f"Sample sheet not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        img_col = next((cols[c] for c in ("image", "file", "path", "filename") if c in cols), None)
        if img_col is None or "sample" not in cols:
            raise BatchInputError(f"Sample sheet {path} needs columns 'image' and 'sample'; found "
                                  f"{reader.fieldnames}.")
        mapping: dict[str, str] = {}
        for row in reader:
            img, sample = (row.get(img_col) or "").strip(), (row.get(cols["sample"]) or "").strip()
            if not img or not sample:
                continue
            p = Path(img).expanduser()
            full = p if p.is_absolute() else path.parent / p
            for key in (str(full.resolve()), p.name, p.stem):
                mapping.setdefault(key, sample)
    if not mapping:
        raise BatchInputError(f"Sample sheet {path} has no rows with both an image and a sample.")
    return mapping


def _sample_of(p: Path, sheet: dict[str, str] | None) -> str:
    if sheet:
        for key in (str(p.resolve()), p.name, p.stem):
            if key in sheet:
                return sheet[key]
    return p.parent.name or "sample"


def expand_inputs(inputs: Sequence[str | Path], mode: str = "auto",
                  sample_sheet: str | Path | Mapping[str, str] | None = None,
                  exclude: str | Path | None = None) -> list[Job]:
    """Files, folders (searched recursively) or glob patterns -> jobs.

    ``mode``: "fields" treats every image as a field; "crops" treats every folder of images as one crop set;
    "auto" treats a folder as a crop set when all its readable images are at most ``CROP_MAX_SIDE`` px.
    The sample of a field is its sample-sheet entry, else its folder's name. ``exclude`` (the output folder)
    is never read as input. ``sample_sheet`` may also be a mapping (file name, stem or path -> sample).
    """
    if mode not in MODES:
        raise BatchInputError(f"Unknown input mode {mode!r}; use one of {', '.join(MODES)}.")
    if isinstance(sample_sheet, Mapping):
        sheet: dict[str, str] | None = {str(k): str(v) for k, v in sample_sheet.items()}
    else:
        sheet = read_sample_sheet(sample_sheet) if sample_sheet else None
    excl = Path(exclude) if exclude else None
    by_dir: dict[Path, list[Path]] = {}
    explicit: list[Path] = []
    seen: set[Path] = set()

    def add_dir(d: Path) -> None:
        for f in sorted(d.rglob("*")):
            if _is_image_file(f) and not _within(f, excl) and f.resolve() not in seen:
                if any(part.startswith(".") for part in f.relative_to(d).parts):
                    continue
                seen.add(f.resolve())
                by_dir.setdefault(f.parent, []).append(f)

    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            add_dir(p)
        elif p.is_file():
            if p.resolve() not in seen:
                seen.add(p.resolve())
                explicit.append(p)
        elif glob.has_magic(str(item)):
            matches = sorted(glob.glob(os.path.expanduser(str(item)), recursive=True))
            if not matches:
                raise BatchInputError(f"No files match {item!r}.")
            for m in map(Path, matches):
                if m.is_dir():
                    add_dir(m)
                elif _is_image_file(m) and m.resolve() not in seen:
                    seen.add(m.resolve())
                    explicit.append(m)
        else:
            raise BatchInputError(f"Input not found: {item}")
    if not by_dir and not explicit:
        raise BatchInputError("No images found in the inputs (looked for "
                              f"{', '.join(sorted(IMAGE_SUFFIXES))}).")

    jobs: list[Job] = [Job("field", f, f.stem, _sample_of(f, sheet)) for f in explicit]
    for d, files in by_dir.items():
        if mode == "crops" or (mode == "auto" and _is_crop_folder(files)):
            sample = sheet.get(str(d.resolve()), sheet.get(d.name, d.name)) if sheet else d.name
            jobs.append(Job("crops", d, d.name, sample, tuple(files)))
        else:
            jobs.extend(Job("field", f, f.stem, _sample_of(f, sheet)) for f in files)
    return _unique_stems(jobs)


def _is_crop_folder(files: list[Path]) -> bool:
    sides = [s for s in (image_side(f) for f in files) if s is not None]
    return bool(sides) and max(sides) <= CROP_MAX_SIDE


def _unique_stems(jobs: list[Job]) -> list[Job]:
    """Images with the same name in different folders get their folder's name as a prefix."""
    from collections import Counter

    counts = Counter((j.kind, j.stem) for j in jobs)
    out, used = [], set()
    for j in jobs:
        stem = j.stem if counts[(j.kind, j.stem)] == 1 else f"{j.path.parent.name}__{j.stem}"
        base, i = stem, 1
        while (j.kind, stem) in used:
            i += 1
            stem = f"{base}_{i}"
        used.add((j.kind, stem))
        out.append(Job(j.kind, j.path, stem, j.sample, j.files))
    return out


# ----------------------------------------------------------------------------------------------- outputs
def outputs_for(job: Job, out_dir: str | Path, heatmaps: bool) -> list[Path]:
    """The files that make a job done (all must exist)."""
    out = Path(out_dir)
    if job.kind == "crops":
        paths = [out / f"{job.stem}{CROPS_TABLE_SUFFIX}"]
        if heatmaps:
            paths += [out / f"{job.stem}{CROPS_HEATMAP_TIF_SUFFIX}", out / f"{job.stem}{CROPS_HEATMAP_PNG_SUFFIX}"]
        return paths
    paths = [out / f"{job.stem}{LABELS_SUFFIX}", out / f"{job.stem}{TABLE_SUFFIX}"]
    if heatmaps:
        paths += [out / f"{job.stem}{HEATMAP_TIF_SUFFIX}", out / f"{job.stem}{HEATMAP_PNG_SUFFIX}"]
    return paths


def table_path(job: Job, out_dir: str | Path) -> Path:
    return Path(out_dir) / f"{job.stem}{CROPS_TABLE_SUFFIX if job.kind == 'crops' else TABLE_SUFFIX}"


def is_done(job: Job, out_dir: str | Path, heatmaps: bool) -> bool:
    return all(p.is_file() for p in outputs_for(job, out_dir, heatmaps))


def _write_png(path: Path, rgb: np.ndarray, force: bool) -> None:
    from PIL import Image

    atomic_write(path, lambda t: Image.fromarray(rgb).save(t, format="PNG"), force)


def _write_tif(path: Path, array: np.ndarray, force: bool) -> None:
    import tifffile

    atomic_write(path, lambda t: tifffile.imwrite(t, array, compression="zlib"), force)


def _write_csv(path: Path, table: pd.DataFrame, force: bool) -> None:
    atomic_write(path, lambda t: table.to_csv(t, index=False), force)


def _write_npz(path: Path, arrays: dict[str, np.ndarray], force: bool) -> None:
    def write(t: str) -> None:
        with open(t, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    atomic_write(path, write, force)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6, cmap: str = "inferno") -> np.ndarray:
    """uint8 RGB: the field with the heatmap blended in where it is non-zero (for people, not analysis)."""
    from matplotlib import colormaps

    from .images import as_float_rgb

    rgb = as_float_rgb(image)
    h = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0, 1)
    colour = colormaps[cmap](h)[..., :3].astype(np.float32)
    a = (alpha * h)[..., None]
    return np.round(255 * ((1 - a) * rgb + a * colour)).astype(np.uint8)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.round(255 * np.clip(np.asarray(a, dtype=np.float32), 0, 1)).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- workers
_CLASSIFIERS: dict[tuple[str, str, int], Classifier] = {}
_CACHE_LOCK = threading.Lock()


def get_classifier(model: str | Path, device: str = "auto", torch_threads: int | None = None) -> Classifier:
    """The classifier for this worker thread, loaded on first use and kept (one model per thread/process:
    Grad-CAM hooks and CBAM's stored attention map are per-model state, so threads must not share one)."""
    key = (str(model), str(device), threading.get_ident())
    with _CACHE_LOCK:
        clf = _CLASSIFIERS.get(key)
    if clf is None:
        import torch

        from .inference import Classifier

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        clf = Classifier.load(model, device)
        with _CACHE_LOCK:
            _CLASSIFIERS[key] = clf
    return clf


def clear_classifier_cache() -> None:
    with _CACHE_LOCK:
        _CLASSIFIERS.clear()


def read_field(path: Path) -> np.ndarray:
    """One 2D field (gray or colour); stacks and odd channel counts are refused with a clear reason."""
    from .datasets import read_image
    from .images import ImageInputError

    arr = np.asarray(read_image(path))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ImageInputError(f"expected one 2D field (H, W) or (H, W, 3/4), got an array of shape {arr.shape}; "
                              "split stacks into single fields first.")
    if min(arr.shape[:2]) < 16:
        raise ImageInputError(f"the image is too small to be a field (shape {arr.shape}).")
    return arr


def process_job(job: Job, settings: BatchSettings) -> Outcome:
    """Run one job and write its outputs; never raises (failures come back as ``status='error'``)."""
    t0 = time.perf_counter()
    try:
        clf = get_classifier(settings.model, settings.device, settings.torch_threads)
        clf.match_colours = settings.match_colours
        run = _process_crops if job.kind == "crops" else _process_field
        out = run(job, settings, clf)
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the run
        out = Outcome(job, "error", _reason(exc))
    out.seconds = time.perf_counter() - t0
    return out


def _reason(exc: BaseException) -> str:
    from .images import ImageInputError

    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, ImageInputError):
        return msg
    if isinstance(exc, OSError | SyntaxError) or type(exc).__name__ in ("UnidentifiedImageError", "TiffFileError"):
        return f"unreadable image ({type(exc).__name__}: {msg})"
    return f"{type(exc).__name__}: {msg}"


def _uncertain_thumbs(table: pd.DataFrame, label_ids: np.ndarray, crops: np.ndarray,
                      heatmaps: np.ndarray | None, clf: Classifier, settings: BatchSettings,
                      stem: str) -> dict[str, np.ndarray] | None:
    """The least confident uncertain heads of an image, as small uint8 arrays for the report."""
    unc = table[table["uncertain"].astype(bool)].sort_values("confidence").head(settings.max_thumbs)
    if unc.empty:
        return None
    index = {int(v): i for i, v in enumerate(label_ids)}
    sel = np.array([index[int(v)] for v in unc["label"]], dtype=int)
    imgs = crops[sel]
    maps = heatmaps[sel] if heatmaps is not None else None
    if maps is None and settings.report_heatmaps:
        try:
            from .explain import gradcam_pp

            maps = gradcam_pp(clf, imgs)
        except ImportError:
            maps = None
    out = {"images": _to_uint8(imgs), "labels": unc["label"].to_numpy(dtype=np.int64),
           "classes": unc["class"].astype(str).to_numpy(dtype=str),
           "confidence": unc["confidence"].to_numpy(dtype=np.float32), "stem": np.array(stem)}
    if maps is not None:
        out["heatmaps"] = _to_uint8(maps)
    return out


def _process_field(job: Job, s: BatchSettings, clf: Classifier) -> Outcome:
    from .pipeline import analyze_field

    out_dir = Path(s.out_dir)
    image = read_field(job.path)
    res = analyze_field(image, clf, s.pixel_size_um, tta=s.tta, min_confidence=s.min_confidence,
                        explain=s.heatmaps)
    table = res.table.copy()
    table.insert(0, "sample", job.sample)
    table.insert(0, "image", job.stem)
    labels = np.asarray(res.labels, dtype=np.int32)
    _write_tif(out_dir / f"{job.stem}{LABELS_SUFFIX}", labels, s.force)
    if s.heatmaps:
        heat = res.heatmap if res.heatmap is not None else np.zeros(labels.shape, np.float32)
        heat = np.asarray(heat, dtype=np.float32)
        _write_tif(out_dir / f"{job.stem}{HEATMAP_TIF_SUFFIX}", heat, s.force)
        _write_png(out_dir / f"{job.stem}{HEATMAP_PNG_SUFFIX}", heatmap_overlay(image, heat), s.force)
    thumbs = _uncertain_thumbs(res.table, res.crops.label_ids, res.crops.images, res.crop_heatmaps, clf, s,
                               job.stem)
    thumbs_file = out_dir / THUMBS_DIR / f"{job.stem}.npz"
    if thumbs is not None:
        _write_npz(thumbs_file, thumbs, s.force)
    elif s.force and thumbs_file.exists():
        thumbs_file.unlink()
    _write_csv(out_dir / f"{job.stem}{TABLE_SUFFIX}", table, s.force)  # last: the table marks the image done
    return Outcome(job, "done", n_heads=len(table))


def _process_crops(job: Job, s: BatchSettings, clf: Classifier) -> Outcome:
    from .datasets import read_image
    from .pipeline import classify_crops

    out_dir = Path(s.out_dir)
    images, names, errors = [], [], []
    for f in job.files:
        try:
            img = np.asarray(read_image(f))
            if not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] in (1, 3, 4))):
                raise ValueError(f"expected one 2D crop, got shape {img.shape}")
            images.append(img)
            names.append(f)
        except Exception as exc:  # noqa: BLE001
            errors.append((str(f), _reason(exc)))
    if not images:
        return Outcome(job, "error", "no readable crops in the folder", file_errors=errors)
    base = pd.DataFrame({"image": job.stem, "sample": job.sample, "label": np.arange(1, len(names) + 1),
                         "file": [str(f) for f in names]})
    res = classify_crops(images, clf, s.tta, s.min_confidence, table=base, maps=["gradcam++"] if s.heatmaps else [])
    table, x = res.table, res.prepared.images  # x: (N, S, S, 3) in the model's crop geometry
    maps = res.maps.get("gradcam++")  # (N, S, S) in the same geometry, from the same converted input
    if maps is not None:
        _write_tif(out_dir / f"{job.stem}{CROPS_HEATMAP_TIF_SUFFIX}", maps, s.force)
        _write_png(out_dir / f"{job.stem}{CROPS_HEATMAP_PNG_SUFFIX}", _montage(x, maps, table), s.force)
    thumbs = _uncertain_thumbs(table, table["label"].to_numpy(), x, maps, clf, s, job.stem)
    if thumbs is not None:
        _write_npz(out_dir / THUMBS_DIR / f"{job.stem}.npz", thumbs, s.force)
    _write_csv(out_dir / f"{job.stem}{CROPS_TABLE_SUFFIX}", table, s.force)
    return Outcome(job, "done", n_heads=len(table), file_errors=errors)


def _montage(x: np.ndarray, maps: np.ndarray, table: pd.DataFrame, cols: int = 8, limit: int = 64) -> np.ndarray:
    """Crops with their heatmaps blended in, on a grid (the first ``limit``)."""
    n = min(len(x), limit)
    s = x.shape[1]
    rows = (n + cols - 1) // cols
    grid = np.full((rows * s, min(cols, n) * s, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * s:(r + 1) * s, c * s:(c + 1) * s] = heatmap_overlay(x[i], maps[i])
    return grid


# ---------------------------------------------------------------------------------------------- dispatch
def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_jobs(jobs: Sequence[Job], settings: BatchSettings, scheduler: str = "threads", workers: int | None = None,
             progress: bool = True) -> list[Outcome]:
    """Process jobs in parallel with dask: a local scheduler (threads, processes, sync) or the address of a
    dask.distributed scheduler. Outcomes come back in job order."""
    if not jobs:
        return []
    from tqdm.auto import tqdm

    with tqdm(total=len(jobs), desc="analyse", unit="image", file=sys.stderr, disable=not progress) as bar:
        if scheduler in LOCAL_SCHEDULERS:
            return _run_local(list(jobs), settings, LOCAL_SCHEDULERS[scheduler], workers, bar)
        return _run_distributed(list(jobs), settings, scheduler, bar)


def _run_local(jobs: list[Job], settings: BatchSettings, scheduler: str, workers: int | None, bar) -> list[Outcome]:
    import dask
    from dask.callbacks import Callback

    keys = {f"spermmorph-job-{i}" for i in range(len(jobs))}

    class _Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: D401 - dask hook
            if key in keys:
                bar.update(1)

    tasks = [dask.delayed(process_job, pure=False)(job, settings, dask_key_name=f"spermmorph-job-{i}")
             for i, job in enumerate(jobs)]
    kwargs = {} if scheduler == "sync" else {"num_workers": workers or default_workers()}
    with _Progress():
        return list(dask.compute(*tasks, scheduler=scheduler, **kwargs))


def _run_distributed(jobs: list[Job], settings: BatchSettings, address: str, bar) -> list[Outcome]:
    """Workers must see the same file system (inputs, model and output folder) as this process."""
    if "://" not in address and ":" not in address:
        raise BatchInputError(f"Unknown scheduler {address!r}: use threads, processes, sync or a dask "
                              "scheduler address such as tcp://host:8786.")
    from distributed import Client, as_completed

    try:
        client = Client(address, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise BatchInputError(f"Could not connect to the dask scheduler at {address}: {exc}") from exc
    try:
        with client.as_current():
            futures = client.map(process_job, jobs, settings=settings, pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            results: list[Outcome | None] = [None] * len(jobs)
            for fut in as_completed(futures):
                i = index[fut.key]
                try:
                    results[i] = fut.result()
                except Exception as exc:  # noqa: BLE001 - a lost worker fails its images, not the run
                    results[i] = Outcome(jobs[i], "error", f"dask worker failed: {_reason(exc)}")
                bar.update(1)
            return [r for r in results if r is not None]
    finally:
        client.close()


# --------------------------------------------------------------------------------------------- summaries
def summarise_samples(jobs: Sequence[Job], outcomes: Sequence[Outcome], out_dir: str | Path,
                      class_names: list[str], normal_class: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples table, all heads) from the per-image tables on disk (done now or by an earlier run)."""
    from .summary import sample_summary

    failed = {o.job.stem for o in outcomes if o.status == "error"}
    tables, n_images, n_failed = [], {}, {}
    for job in jobs:
        n_images.setdefault(job.sample, 0)
        n_failed.setdefault(job.sample, 0)
        p = table_path(job, out_dir)
        if job.stem in failed or not p.is_file():
            n_failed[job.sample] += 1
            continue
        df = pd.read_csv(p)
        df["sample"] = job.sample  # the current sample sheet wins over the one of an earlier run
        tables.append(df)
        n_images[job.sample] += 1 if job.kind == "field" else len(df)
    heads = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["sample", "label", "class"])
    rows = []
    for sample in n_images:
        sub = heads[heads["sample"] == sample]
        summ = sample_summary(sub, class_names, normal_class)
        row = {"sample": sample, "n_images": n_images[sample], "n_failed": n_failed[sample],
               "n_heads": summ["n_heads"]}
        row.update({f"n_{c}": summ["counts"][c] for c in class_names})
        for key in ("percent_normal", "ci95_low", "ci95_high"):
            row[key] = summ.get(key, float("nan"))
        row["n_uncertain"] = int(sub["uncertain"].astype(bool).sum()) if "uncertain" in sub and len(sub) else 0
        row["stain_delta_e"] = summ.get("stain_delta_e", float("nan"))
        row["warning"] = summ["warning"]
        rows.append(row)
    return pd.DataFrame(rows), heads


def errors_table(outcomes: Iterable[Outcome]) -> pd.DataFrame:
    rows = []
    for o in outcomes:
        if o.status == "error":
            rows.append({"image": str(o.job.path), "sample": o.job.sample, "reason": o.reason})
        rows.extend({"image": f, "sample": o.job.sample, "reason": r} for f, r in o.file_errors)
    return pd.DataFrame(rows, columns=["image", "sample", "reason"])


def load_thumbnails(jobs: Sequence[Job], out_dir: str | Path, limit: int = 48) -> list[dict]:
    """Uncertain-head thumbnails saved by the workers, least confident first across the run."""
    thumbs: list[dict] = []
    for job in jobs:
        p = Path(out_dir) / THUMBS_DIR / f"{job.stem}.npz"
        if not p.is_file():
            continue
        with np.load(p, allow_pickle=False) as z:
            for i in range(len(z["labels"])):
                thumbs.append({"image": job.stem, "sample": job.sample, "label": int(z["labels"][i]),
                               "class": str(z["classes"][i]), "confidence": float(z["confidence"][i]),
                               "crop": z["images"][i],
                               "heatmap": z["heatmaps"][i] if "heatmaps" in z.files else None})
    thumbs.sort(key=lambda t: t["confidence"])
    return thumbs[:limit]


def versions() -> dict[str, str]:
    import dask

    from .. import __version__

    out = {"python": platform.python_version(), "napari_spermmorph": __version__, "numpy": np.__version__,
           "pandas": pd.__version__, "dask": dask.__version__, "platform": platform.platform()}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        out["torch"] = "not installed"
    return out


def model_info(model: str | Path) -> dict:
    """Name, path, sha256 and metadata of a checkpoint (for the report and run.json)."""
    from .checkpoints import file_sha256, read_metadata
    from .models import ModelSpec
    from .registry import describe_backbones, resolve

    path = resolve(model)
    meta = read_metadata(path)
    spec = meta.get("spec", {})
    backbone = describe_backbones(ModelSpec.from_dict(spec).member_backbones) if spec else None
    return {"name": meta.get("name", path.stem), "requested": str(model), "path": str(path),
            "sha256": file_sha256(path), "version": str(meta.get("version", meta.get("package_version", "?"))),
            "class_names": list(meta.get("class_names", [])), "backbone": backbone,
            "cbam": spec.get("cbam"), "input_size": spec.get("input_size"),
            "label_scheme": meta.get("label_scheme")}


def _check_previous_run(out_dir: Path, info: dict, settings: BatchSettings) -> list[dict]:
    """Refuse to mix results of different models or settings in one folder without --force; returns the
    history of earlier runs."""
    prev_file = out_dir / "run.json"
    if not prev_file.is_file():
        return []
    try:
        prev = json.loads(prev_file.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    history = list(prev.get("history", [])) + [{k: prev.get(k) for k in ("started", "finished", "counts")}]
    if settings.force:
        return history
    old = prev.get("settings", {})
    checks = {"model sha256": (prev.get("model", {}).get("sha256"), info["sha256"]),
              "pixel size": (old.get("pixel_size_um"), settings.pixel_size_um),
              "tta": (old.get("tta"), settings.tta), "min_confidence": (old.get("min_confidence"),
                                                                          settings.min_confidence),
              "match_colours": (old.get("match_colours", False), settings.match_colours)}
    diff = [f"{k} {a!r} -> {b!r}" for k, (a, b) in checks.items() if a != b]
    if diff:
        raise BatchInputError(f"{out_dir} holds results of an earlier run with other settings ({'; '.join(diff)}). "
                              "Use --force to redo every image, or choose another --out folder.")
    return history


def run_batch(inputs: Sequence[str | Path], out_dir: str | Path, model: str | Path, *,
              pixel_size_um: float | None = None, heatmaps: bool = False,
              sample_sheet: str | Path | Mapping[str, str] | None = None,
              force: bool = False, scheduler: str = "threads", workers: int | None = None, tta: int = DEFAULT_TTA,
              mode: str = "auto", device: str = "auto", min_confidence: float = 0.6, match_colours: bool = False,
              progress: bool = True, argv: Sequence[str] | None = None,
              log: Callable[[str], None] | None = None) -> BatchResult:
    """Analyse every input and write per-image outputs, ``samples.csv``, ``errors.csv``, ``report.html`` and
    ``run.json`` into ``out_dir``. Images already done are skipped unless ``force``."""
    from datetime import datetime, timezone

    from .report import write_report

    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    say = log or (lambda msg: None)
    if pixel_size_um is not None and not (pixel_size_um > 0):
        raise BatchInputError(f"--pixel-size must be a positive number of micrometres, got {pixel_size_um}.")
    if tta < 1 or tta > 8:
        raise BatchInputError(f"--tta must be between 1 and 8 views, got {tta}.")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise BatchInputError(f"--out {out} exists and is not a folder.")
    jobs = expand_inputs(inputs, mode, sample_sheet, exclude=out)
    info = model_info(model)  # resolves a shipped name and checks the file before any worker starts
    n_workers = workers or min(default_workers(), max(1, len(jobs)))
    local = scheduler in LOCAL_SCHEDULERS
    threads = None
    if local:  # split the cores between workers; an explicit OMP_NUM_THREADS caps it
        threads = max(1, default_workers() // (n_workers if LOCAL_SCHEDULERS[scheduler] != "sync" else 1))
        omp = os.environ.get("OMP_NUM_THREADS", "")
        if omp.isdigit() and int(omp) > 0:
            threads = min(threads, int(omp))
    settings = BatchSettings(model=info["path"], out_dir=str(out), device=device, pixel_size_um=pixel_size_um,
                             heatmaps=heatmaps, tta=int(tta), force=force, min_confidence=min_confidence,
                             torch_threads=threads, match_colours=bool(match_colours))
    out.mkdir(parents=True, exist_ok=True)
    history = _check_previous_run(out, info, settings)
    # Load once here: a broken checkpoint fails now with one clear message, not once per image.
    clf = get_classifier(settings.model, device, threads)
    try:
        clf.match_colours = match_colours
    except ValueError as exc:
        raise BatchInputError(f"--match-colours: {exc}") from exc
    todo = [j for j in jobs if force or not is_done(j, out, heatmaps)]
    skipped = [Outcome(j, "skipped") for j in jobs if j not in todo]
    n_crops = sum(j.kind == "crops" for j in jobs)
    say(f"{len(jobs)} inputs ({n_crops} crop folders); {len(skipped)} already done, {len(todo)} to analyse "
        f"with {info['name']} on {scheduler}" + (f" x{n_workers}" if local and scheduler != "sync" else ""))
    done = run_jobs(todo, settings, scheduler, n_workers, progress)
    by_stem = {(o.job.kind, o.job.stem): o for o in done + skipped}
    outcomes = [by_stem[(j.kind, j.stem)] for j in jobs]

    samples, _ = summarise_samples(jobs, outcomes, out, clf.class_names, clf.normal_class)
    errors = errors_table(outcomes)
    _write_csv(out / "samples.csv", samples, force=True)
    _write_csv(out / "errors.csv", errors, force=True)
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    counts = {"done": 0, "skipped": 0, "error": 0}
    for o in outcomes:
        counts[o.status] += 1
    sheet_record = dict(sample_sheet) if isinstance(sample_sheet, Mapping) else \
        (str(sample_sheet) if sample_sheet else None)
    run = {
        "command": list(argv) if argv is not None else None,
        "started": started, "finished": finished, "seconds": round(time.perf_counter() - t0, 2),
        "inputs": [str(p) for p in inputs], "out_dir": str(out.resolve()),
        "settings": {"model": str(model), "pixel_size_um": pixel_size_um, "heatmaps": heatmaps, "tta": int(tta),
                     "min_confidence": min_confidence, "match_colours": bool(match_colours), "mode": mode,
                     "sample_sheet": sheet_record,
                     "scheduler": scheduler, "workers": n_workers, "device": device, "force": force},
        "model": info, "versions": versions(), "counts": counts,
        "images": [{"input": str(o.job.path), "kind": o.job.kind, "stem": o.job.stem, "sample": o.job.sample,
                    "status": o.status, "reason": o.reason, "n_heads": o.n_heads,
                    "seconds": round(o.seconds, 3)} for o in outcomes],
        "history": history,
    }
    report_path = out / "report.html"
    write_report(report_path, samples=samples, class_names=clf.class_names, normal_class=clf.normal_class,
                 model=info, pixel_size_um=pixel_size_um, run=run, errors=errors,
                 thumbnails=load_thumbnails(jobs, out))
    run_path = out / "run.json"
    atomic_write(run_path, lambda t: Path(t).write_text(json.dumps(run, indent=2, default=str) + "\n"), force=True)
    return BatchResult(outcomes, samples, errors, out, report_path, run_path, time.perf_counter() - t0)


def settings_dict(settings: BatchSettings) -> dict:
    return asdict(settings)
