"""Each shipped model on the other dataset's images: how far do its calls carry to another lab's stain?

hushem-4class reads SMIDS's normal and abnormal crops, smids-3class reads HuSHeM's crops; each is scored on what
both label schemes share, "normal" against everything else (the schemes' criteria differ, so this bounds what
transfers rather than grading either model). Each runs as given and with the crops colour-matched to the model's
own training crops (``core.colour``: Reinhard transfer in CIE-Lab), TTA as the product's default.

    python benchmarks/bench_cross_dataset.py [--data ../shared/data]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    args = ap.parse_args(argv)
    root = data_dir(args.data)
    for _, read, trained, _, _ in CASES:
        require_data(root / read)
        require_data(root / trained)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    from napari_spermmorph.core.colour import colour_reference, match_colour
    from napari_spermmorph.core.datasets import load_class_folders
    from napari_spermmorph.core.defaults import DEFAULT_TTA
    from napari_spermmorph.core.inference import Classifier

    @functools.cache
    def dataset(name: str):  # each dataset is read by one model and is the other's training set: load it once
        ds = load_class_folders(root / name)
        return ds, ds.load_images()

    rows, results = [], []
    for model_name, read, trained, normal_folder, left_out in CASES:
        clf = Classifier.load(model_name, device="cpu")
        ds, all_images = dataset(read)
        keep = np.array([f.parent.name not in left_out for f in ds.files])
        images = [im for im, k in zip(all_images, keep) if k]
        is_normal = np.array([f.parent.name == normal_folder for f in ds.files])[keep]
        reference = colour_reference(dataset(trained)[1])
        normal_index = clf.class_names.index("normal")
        for variant in ("as given", "colour-matched"):
            t0 = time.perf_counter()
            crops = images if variant == "as given" else [match_colour(im, reference) for im in images]
            probs = clf.predict_crops(crops, tta=DEFAULT_TTA)
            res = {"model": model_name, "reads": read, "variant": variant, "colour_reference": reference.to_dict(),
                   **score(probs, is_normal, normal_index, clf.class_names), "seconds": time.perf_counter() - t0}
            results.append(res)
            print(f"{model_name} on {read} ({variant}): balanced accuracy {res['balanced_accuracy']:.3f}", flush=True)
            rows.append([f"`{model_name}`", read, variant, res["n"], f"{100 * res['sensitivity']:.1f}",
                         f"{100 * res['specificity']:.1f}", f"{100 * res['balanced_accuracy']:.1f}",
                         ", ".join(f"{k} {v}" for k, v in res["predicted"].items())])
    md = ("### Across datasets: normal vs the rest, each model on the other dataset's crops\n\n"
          + md_table(["model", "reads", "crops", "n", "normal called normal %", "abnormal not called normal %",
                      "balanced accuracy %", "calls"], rows)
          + f"\n\nTTA x{DEFAULT_TTA}. SMIDS's non-sperm crops left out; HuSHeM's tapered, pyriform and amorphous "
          "count as abnormal. Colour-matched: each crop's CIE-Lab mean and SD set to the model's training crops' "
          f"(`core.colour`).\nMachine: {machine_description()}.\n"
          "Command: `python benchmarks/bench_cross_dataset.py`\n")
    write_results("cross_dataset", {"machine": machine_description(), "tta": DEFAULT_TTA, "results": results}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
