"""Benchmark: sperm-head instance segmentation on the Sperm Parsing training fields.

Ground truth head = union of the Nucleus, Acrosome and Vacuole polygons of one ``group_id``
(rasterised with skimage.draw.polygon).  Metrics: instance F1 at IoU >= 0.5 (one-to-one Hungarian
matching on IoU), mean IoU of matched heads, and median seconds per field (segmentation only,
image already decoded).  Parameters were tuned on the first half of the sorted fields; figures are
reported for that half, the second half and all fields.

    python benchmarks/bench_segmentation.py [--data DIR] [--limit N] [--exclude-border]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, machine_description, md_table, require_data, shown_path, write_results  # noqa: E402

HEAD_PARTS = ("Nucleus", "Acrosome", "Vacuole")


def load_gt(ann_path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels of heads (one id per group_id) from a gzip labelme JSON."""
    from skimage.draw import polygon

    with gzip.open(ann_path) as fh:
        d = json.load(fh)
    lab = np.zeros(shape, dtype=np.int32)
    ids: dict[int, int] = {}
    for s in d["shapes"]:
        if s["label"] not in HEAD_PARTS:
            continue
        gid = ids.setdefault(s["group_id"], len(ids) + 1)
        pts = np.asarray(s["points"], dtype=float)
        rr, cc = polygon(pts[:, 1], pts[:, 0], shape)
        lab[rr, cc] = gid
    return lab


def match(gt: np.ndarray, pred: np.ndarray, iou_thr: float = 0.5) -> tuple[int, int, int, list[float]]:
    """(tp, fp, fn, matched IoUs) by Hungarian matching on the IoU matrix."""
    from scipy.optimize import linear_sum_assignment

    ng, npred = int(gt.max()), int(pred.max())
    if ng == 0 or npred == 0:
        return 0, npred, ng, []
    both = (gt > 0) | (pred > 0)
    inter = np.zeros((ng + 1, npred + 1), dtype=np.int64)
    np.add.at(inter, (gt[both], pred[both]), 1)
    area_g = np.bincount(gt.ravel(), minlength=ng + 1)
    area_p = np.bincount(pred.ravel(), minlength=npred + 1)
    iou = inter / np.maximum(area_g[:, None] + area_p[None, :] - inter, 1)
    iou = iou[1:, 1:]
    iou = iou[area_g[1:] > 0][:, area_p[1:] > 0]
    r, c = linear_sum_assignment(-iou)
    ious = [float(iou[i, j]) for i, j in zip(r, c) if iou[i, j] >= iou_thr]
    tp = len(ious)
    return tp, iou.shape[1] - tp, iou.shape[0] - tp, ious


def evaluate(files: list[Path], ann_dir: Path, params=None, pixel_size_um=None) -> dict:
    from skimage.io import imread

    from napari_spermmorph.core.segmentation import segment_heads

    tp = fp = fn = 0
    ious: list[float] = []
    times: list[float] = []
    per_field = []
    for f in files:
        img = imread(f)
        gt = load_gt(ann_dir / (f.stem + ".json.gz"), img.shape[:2])
        t0 = time.perf_counter()
        pred = segment_heads(img, pixel_size_um, params)
        times.append(time.perf_counter() - t0)
        a, b, c, i = match(gt, pred)
        tp, fp, fn = tp + a, fp + b, fn + c
        ious += i
        per_field.append({"field": f.name, "tp": a, "fp": b, "fn": c})
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)
    return {
        "fields": len(files), "gt_heads": tp + fn, "pred_heads": tp + fp, "tp": tp, "fp": fp, "fn": fn,
        "precision": prec, "recall": rec, "f1": 2 * prec * rec / max(prec + rec, 1e-9),
        "mean_matched_iou": float(np.mean(ious)) if ious else 0.0,
        "median_s_per_field": float(np.median(times)) if times else 0.0,
        "per_field": per_field,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="data root (default $SPERMMORPH_DATA or ../shared/data)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N fields (0 = all)")
    ap.add_argument("--exclude-border", action="store_true", help="drop predicted heads touching the border")
    args = ap.parse_args(argv)

    root = data_dir(args.data) / "sperm_parsing" / "train"
    require_data(root)
    files = sorted((root / "images").glob("*.jpg"))
    if args.limit:
        files = files[: args.limit]
    from napari_spermmorph.core.segmentation import DEFAULT_PIXEL_SIZE_UM, SegmentationParams

    params = SegmentationParams(exclude_border=args.exclude_border)
    half = len(files) // 2
    splits = {"tuning half (first)": files[:half], "held-out half (second)": files[half:]}
    results = {k: evaluate(v, root / "annotations", params) for k, v in splits.items() if v}
    allr = list(results.values())
    tot = {k: sum(r[k] for r in allr) for k in ("tp", "fp", "fn", "fields")}
    p = tot["tp"] / max(tot["tp"] + tot["fp"], 1)
    r = tot["tp"] / max(tot["tp"] + tot["fn"], 1)
    n_iou = [x["tp"] for x in allr]
    results["all"] = {
        **tot, "precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-9),
        "mean_matched_iou": float(sum(x["mean_matched_iou"] * n for x, n in zip(allr, n_iou))
                                  / max(sum(n_iou), 1)),
        "median_s_per_field": float(np.median([x["median_s_per_field"] for x in allr])),
    }
    rows = [[k, v["fields"], v["tp"] + v["fn"], v["tp"], v["fp"], v["fn"], v["precision"], v["recall"],
             v["f1"], v["mean_matched_iou"], v["median_s_per_field"]] for k, v in results.items()]
    table = md_table(["split", "fields", "GT heads", "TP", "FP", "FN", "precision", "recall", "F1@0.5",
                      "mean matched IoU", "median s/field"], rows)
    machine = machine_description()
    md = (
        "# Segmentation benchmark (Sperm Parsing train fields)\n\n"
        f"Data: `{shown_path(root)}`; {len(files)} fields of 1280x1024. Default parameters "
        f"(pixel size {DEFAULT_PIXEL_SIZE_UM} um/px, exclude_border={args.exclude_border}); "
        "tuned on the first half only.\n"
        "Targets: F1 >= 0.95, mean matched IoU >= 0.85, <= 0.3 s per field.\n\n"
        f"{table}\n\nMachine: {machine}\n"
    )
    payload = {"machine": machine, "data": shown_path(root), "exclude_border": args.exclude_border,
               "params": params.__dict__, "results": results}
    write_results("segmentation", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
