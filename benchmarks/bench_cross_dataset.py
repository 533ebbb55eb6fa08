"""Each shipped model on the other dataset's images: how far do its calls carry to another lab's stain?

hushem-4class reads SMIDS's normal and abnormal crops, smids-3class reads HuSHeM's crops; each is scored on what
both label schemes share, "normal" against everything else (the schemes' criteria differ, so this bounds what
transfers rather than grading either model). Each runs as given and with the crops colour-matched to the model's
own training crops (``core.colour``: Reinhard transfer in CIE-Lab, to the colours its checkpoint records), TTA as the
product's default.

Second table, the stain check's calibration: the colour distance (``Classifier.stain_distance``, CIE76 Delta E of
the average colour) from each model's recorded training colours to batches of ten crops of its own training set,
of the other dataset, and to whole Sperm Parsing fields (a third lab) as the plugin segments them.

    python benchmarks/bench_cross_dataset.py [--data ../shared/data] [--fields 20]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, machine_description, md_table, require_data, write_results  # noqa: E402

# (model, dataset it reads, dataset it was trained on, folders of the read dataset that are "normal" / left out)
CASES = [
    ("hushem-4class", "smids", "hushem", "normal_sperm", ("non_sperm",)),
    ("smids-3class", "hushem", "smids", "01_Normal", ()),
]


def score(probs: np.ndarray, is_normal: np.ndarray, normal_index: int, class_names: list[str]) -> dict:
    called = probs.argmax(1) == normal_index
    sens = float(called[is_normal].mean())
    spec = float((~called[~is_normal]).mean())
    return {"n": int(len(called)), "n_normal": int(is_normal.sum()), "accuracy": float((called == is_normal).mean()),
            "sensitivity": sens, "specificity": spec, "balanced_accuracy": (sens + spec) / 2,
            "predicted": dict(zip(class_names, np.bincount(probs.argmax(1), minlength=len(class_names)).tolist()))}


def batch_distances(clf, crops: np.ndarray, size: int = 10, n: int = 200, seed: int = 0) -> np.ndarray:
    """Stain distance of ``n`` random batches of ``size`` prepared crops (a field holds about ten heads)."""
    rng = np.random.default_rng(seed)
    return np.array([clf.stain_distance(crops[rng.choice(len(crops), size, replace=False)]) for _ in range(n)])


def stain_row(model: str, what: str, d: np.ndarray, unit: str, limit: float) -> tuple[list, dict]:
    res = {"model": model, "crops": what, "unit": unit, "n": int(len(d)), "median": float(np.median(d)),
           "p95": float(np.percentile(d, 95)), "min": float(d.min()), "max": float(d.max()),
           "above_limit": float((d > limit).mean())}
    return ([f"`{model}`", what, f"{len(d)} {unit}", f"{res['median']:.1f}", f"{res['p95']:.1f}",
             f"{res['min']:.1f}-{res['max']:.1f}", f"{100 * res['above_limit']:.0f}"], res)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--fields", type=int, default=20, help="Sperm Parsing fields for the stain table")
    args = ap.parse_args(argv)
    root = data_dir(args.data)
    for _, read, trained, _, _ in CASES:
        require_data(root / read)
        require_data(root / trained)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    from napari_spermmorph.core.datasets import load_class_folders, read_image
    from napari_spermmorph.core.defaults import DEFAULT_TTA, STAIN_DELTA_E_LIMIT
    from napari_spermmorph.core.inference import Classifier
    from napari_spermmorph.core.pipeline import analyze_field

    @functools.cache
    def dataset(name: str):  # each dataset is read by one model and is the other's training set: load it once
        ds = load_class_folders(root / name)
        return ds, ds.load_images()

    prepared_cache: dict = {}

    def prepared(clf, name: str) -> np.ndarray:
        """A dataset's crops as the plugin prepares a crop folder for ``clf`` (once per crop geometry)."""
        key = (name, clf.input_size, clf.head_fraction, clf.align_crops)
        if key not in prepared_cache:
            prepared_cache[key] = clf.prepare_crops(dataset(name)[1]).images
        return prepared_cache[key]

    models = {case[0]: Classifier.load(case[0], device="cpu") for case in CASES}
    rows, results = [], []
    for model_name, read, _, normal_folder, left_out in CASES:
        clf = models[model_name]
        ds = dataset(read)[0]
        keep = np.array([f.parent.name not in left_out for f in ds.files])
        images = prepared(clf, read)[keep]
        is_normal = np.array([f.parent.name == normal_folder for f in ds.files])[keep]
        normal_index = clf.class_names.index("normal")
        for variant in ("as given", "colour-matched"):
            t0 = time.perf_counter()
            # the product's option: each crop moved onto the training colours its checkpoint records
            clf.match_colours = variant == "colour-matched"
            probs = clf.predict_proba(images, tta=DEFAULT_TTA)
            res = {"model": model_name, "reads": read, "variant": variant,
                   "colour_reference": clf.colour_reference.to_dict(),
                   **score(probs, is_normal, normal_index, clf.class_names), "seconds": time.perf_counter() - t0}
            results.append(res)
            print(f"{model_name} on {read} ({variant}): balanced accuracy {res['balanced_accuracy']:.3f}", flush=True)
            rows.append([f"`{model_name}`", read, variant, res["n"], f"{100 * res['sensitivity']:.1f}",
                         f"{100 * res['specificity']:.1f}", f"{100 * res['balanced_accuracy']:.1f}",
                         ", ".join(f"{k} {v}" for k, v in res["predicted"].items())])
        clf.match_colours = False
    md = ("### Across datasets: normal vs the rest, each model on the other dataset's crops\n\n"
          + md_table(["model", "reads", "crops", "n", "normal called normal %", "abnormal not called normal %",
                      "balanced accuracy %", "calls"], rows)
          + f"\n\nTTA x{DEFAULT_TTA}. SMIDS's non-sperm crops left out; HuSHeM's tapered, pyriform and amorphous "
          "count as abnormal. Colour-matched: each crop's CIE-Lab mean and SD set to the model's recorded training "
          "colours (`Classifier.match_colours`: the option \"match colours\", `--match-colours`).\n"
          f"Machine: {machine_description()}.\n")
    fields = sorted((root / "sperm_parsing" / "train" / "images").glob("*.jpg"))
    fields = fields[:: max(1, len(fields) // args.fields)][: args.fields]
    stain_rows, stain = [], []
    for model_name, read, trained, _, _ in CASES:
        clf = models[model_name]
        for name in (trained, read):
            crops = prepared(clf, name)
            what = f"{name} ({'its training set' if name == trained else 'other lab'})"
            row, res = stain_row(model_name, what, batch_distances(clf, crops), "batches of 10", STAIN_DELTA_E_LIMIT)
            stain_rows.append(row)
            stain.append(res)
        if fields:  # whole fields from a third lab, segmented and cropped by the plugin
            d = np.array([analyze_field(read_image(f), clf).table["stain_delta_e"].iloc[0] for f in fields])
            row, res = stain_row(model_name, "Sperm Parsing fields (third lab)", d, "fields", STAIN_DELTA_E_LIMIT)
            stain_rows.append(row)
            stain.append(res)
    md += ("\n### Stain distance: Delta E from each model's training colours (the stain check)\n\n"
           + md_table(["model", "crops", "n", "median", "95th percentile", "range", f"% above {STAIN_DELTA_E_LIMIT:g}"],
                      stain_rows)
           + "\n\nCIE76 Delta E between the average CIE-Lab colour of the crops and the model's recorded training "
           "colours (`Classifier.stain_distance`); batches of 10 crops drawn at random (200 per row), fields with "
           "the heads the plugin segments. The summary warns above the limit (`defaults.STAIN_DELTA_E_LIMIT`).\n"
           f"Command: `python benchmarks/bench_cross_dataset.py --fields {args.fields}`\n")
    write_results("cross_dataset", {"machine": machine_description(), "tta": DEFAULT_TTA, "results": results,
                                    "stain_limit": STAIN_DELTA_E_LIMIT, "stain": stain}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
