"""Does a morphometric shape prior add to the CNNs? Head-shape descriptors + logistic regression, fused with every
cross-validated CNN row's test probabilities, with the fusion weight chosen without the test fold.

The CNN rows confuse tapered and pyriform heads most (HuSHeM); both are defined by shape (a thin head against a
head that narrows towards its base), which a few measured descriptors of the segmented head state directly. This
experiment measures whether they add to the networks, honestly nested:

* descriptors come from the aligned crops the networks see (``normalise_crops``): the central head's mask, turned
  so that its long axis is horizontal and its wide end first; its width profile along the axis, elongation,
  solidity, eccentricity, extent, circularity, bending, Hu moments and the stain profile along the axis (the
  acrosome is paler). All are free of scale, so they do not depend on the crop's pixel size;
* per outer fold, a standardised logistic regression on the four training folds (C by inner 4-fold CV, log-loss);
* fusion: softmax((1 - w) log p_cnn + w log p_shape). Per outer fold, w is the value in 0, 0.05, ..., 0.6 that
  gives the best accuracy on the other four folds, where both probabilities are out-of-fold (the CNN's from the
  cached fold runs of ``bench_classifier.py``, the shape model's refitted without the outer fold). The outer fold's
  labels choose nothing.

    python benchmarks/bench_shape_prior.py --dataset hushem
    python benchmarks/bench_shape_prior.py --dataset smids

Reads the cached fold JSONs (run ``bench_classifier.py`` first) and the images; takes a minute or two on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_classifier as bc  # noqa: E402
from _common import RESULTS, data_dir, machine_description, md_table, require_data, write_results  # noqa: E402

WEIGHTS = np.round(np.arange(0.0, 0.601, 0.05), 2)
PROFILE_POINTS = 16
C_GRID = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]


def shape_descriptors(crop: np.ndarray) -> np.ndarray | None:
    """Scale-free descriptors of the central head of a crop (None when no head is found)."""
    from scipy import ndimage as ndi
    from skimage.measure import regionprops

    from napari_spermmorph.core.crops import _central_object_mask
    from napari_spermmorph.core.images import stain_channel

    mask = _central_object_mask(crop)
    if mask is None or mask.sum() < 10:
        return None
    stain = stain_channel(crop).astype(np.float64)
    angle = np.degrees(regionprops(mask.astype(np.uint8))[0].orientation)
    m = ndi.rotate(mask.astype(float), 90 - angle, order=1, reshape=True) > 0.5
    st = ndi.rotate(stain, 90 - angle, order=1, reshape=True)
    lab, n = ndi.label(m)
    m = lab == (np.argmax(ndi.sum(m, lab, range(1, n + 1))) + 1)
    if m.any(0).sum() < m.any(1).sum():  # long axis horizontal
        m, st = m.T, st.T
    cols = np.flatnonzero(m.any(0))
    length = len(cols)
    widths = m[:, cols].sum(0).astype(float)
    centre_rows = np.array([np.flatnonzero(m[:, c]).mean() for c in cols])
    along = np.arange(length)
    profile = np.interp(np.linspace(0, length - 1, PROFILE_POINTS), along, widths) / widths.max()
    inside = st[m]
    level, spread = inside.mean(), inside.std()
    stain_profile = np.interp(np.linspace(0, length - 1, 8), along, [st[m[:, c], c].mean() for c in cols])
    half = PROFILE_POINTS // 2
    if profile[:half].sum() < profile[half:].sum():  # wide end first
        profile, stain_profile, widths = profile[::-1], stain_profile[::-1], widths[::-1]
    r = regionprops(m.astype(np.uint8))[0]
    hu = r.moments_hu[:5]
    feats = [r.axis_major_length / max(r.axis_minor_length, 1.0), r.solidity, r.eccentricity, r.extent,
             r.perimeter**2 / (4 * np.pi * r.area), np.argmax(widths) / length,
             profile[:half].sum() / profile[half:].sum(), widths.max() / length,
             np.abs(np.diff(centre_rows)).mean() if length > 1 else 0.0, np.std(centre_rows) / length,
             spread / (level + 1e-6), float((inside < level - spread).mean())]
    feats += list(profile) + list((stain_profile - level) / (spread + 1e-6))
    feats += list(-np.sign(hu) * np.log10(np.abs(hu) + 1e-12))
    return np.asarray(feats, np.float64)


def descriptor_matrix(crops: np.ndarray) -> np.ndarray:
    """(N, D + 1): descriptors and a found flag (zeros and 0 where no head is found)."""
    rows = [shape_descriptors(c) for c in crops]
    dim = len(next(r for r in rows if r is not None))
    return np.array([np.r_[r, 1.0] if r is not None else np.r_[np.zeros(dim), 0.0] for r in rows])


def fit_shape_model(x: np.ndarray, y: np.ndarray):
    """Standardised multinomial logistic regression, C by inner 4-fold CV on log-loss."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return GridSearchCV(pipe, {"logisticregression__C": C_GRID}, scoring="neg_log_loss",
                        cv=StratifiedKFold(4, shuffle=True, random_state=0)).fit(x, y)


def fuse(p_cnn: np.ndarray, p_shape: np.ndarray, w: float) -> np.ndarray:
    """softmax((1 - w) log p_cnn + w log p_shape): a weighted geometric mean of the two distributions."""
    z = (1 - w) * np.log(p_cnn + 1e-9) + w * np.log(p_shape + 1e-9)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def shape_probabilities(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Out-of-fold shape probabilities for the outer folds, and per outer fold those of the other folds refitted
    without it (for choosing w without the outer fold's labels)."""
    k = int(y.max()) + 1
    outer = np.zeros((len(y), k))
    inner: dict[int, np.ndarray] = {}
    for f in range(5):
        outer[folds == f] = fit_shape_model(x[folds != f], y[folds != f]).predict_proba(x[folds == f])
        q = np.zeros((len(y), k))
        for g in range(5):
            if g != f:
                tr = (folds != f) & (folds != g)
                q[folds == g] = fit_shape_model(x[tr], y[tr]).predict_proba(x[folds == g])
        inner[f] = q
    return outer, inner


def cnn_probabilities(cache: Path, members: tuple[str, ...], folds: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """A row's stored TTA x4 test probabilities, averaged over its members, placed per image (None if incomplete)."""
    out = np.zeros((len(y), int(y.max()) + 1))
    for f in range(5):
        parts = []
        for m in members:
            p = cache / f"{m}_fold{f}.json"
            if not p.exists():
                return None
            run = json.loads(p.read_text())
            if "probs" not in run.get("tta4", {}):
                return None
            if not np.array_equal(run["labels"], y[folds == f]):
                raise SystemExit(f"{p}: its labels are not this fold's images in order")
            parts.append(np.asarray(run["tta4"]["probs"]))
        out[folds == f] = np.mean(parts, axis=0)
    return out


def nested_fusion(p_cnn, p_shape, inner, y, folds, class_names) -> dict:
    """Per outer fold: w chosen on the other folds, then the fused test fold scored."""
    from napari_spermmorph.core.evaluation import classification_metrics, mean_std

    accs, f1s, chosen, base = [], [], [], []
    for f in range(5):
        o, te = folds != f, folds == f
        scores = [(fuse(p_cnn[o], inner[f][o], w).argmax(1) == y[o]).mean() for w in WEIGHTS]
        w = float(WEIGHTS[int(np.argmax(scores))])  # ties: the smallest weight
        m = classification_metrics(y[te], fuse(p_cnn[te], p_shape[te], w).argmax(1), class_names)
        b = classification_metrics(y[te], p_cnn[te].argmax(1), class_names)
        accs.append(m["accuracy"]), f1s.append(m["macro_f1"]), chosen.append(w), base.append(b)
    (am, asd), (fm, fsd) = mean_std(accs), mean_std(f1s)
    (bam, bsd), (bfm, _) = mean_std([b["accuracy"] for b in base]), mean_std([b["macro_f1"] for b in base])
    return {"accuracy_mean": am, "accuracy_sd": asd, "macro_f1_mean": fm, "macro_f1_sd": fsd,
            "accuracy_per_fold": accs, "weight_per_fold": chosen, "cnn_accuracy_mean": bam, "cnn_accuracy_sd": bsd,
            "cnn_macro_f1_mean": bfm}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["hushem", "smids"], required=True)
    ap.add_argument("--size", type=int, default=128, help="the CNN table's input size (crops are cut at it)")
    ap.add_argument("--data", default=None)
    args = ap.parse_args(argv)
    root = data_dir(args.data)
    require_data(root / args.dataset)
    from napari_spermmorph.core.crops import DEFAULT_HEAD_FRACTION, normalise_crops
    from napari_spermmorph.core.evaluation import classification_metrics, mean_std

    cache = RESULTS / "classifier_folds" / f"{args.dataset}_{args.size}"
    ds, folds = bc.load_dataset(root, args.dataset)
    y = np.asarray(ds.labels)
    t0 = time.perf_counter()
    crops, _ = normalise_crops(ds.load_images(), args.size, DEFAULT_HEAD_FRACTION, align=True)
    x = descriptor_matrix(crops.images)
    p_shape, inner = shape_probabilities(x, y, folds)
    print(f"descriptors and shape models: {time.perf_counter() - t0:.0f}s; no head in {int((x[:, -1] == 0).sum())}",
          flush=True)
    alone = [classification_metrics(y[folds == f], p_shape[folds == f].argmax(1), ds.class_names) for f in range(5)]
    (sa, ssd), (sf, sfsd) = mean_std([m["accuracy"] for m in alone]), mean_std([m["macro_f1"] for m in alone])
    rows = [["shape descriptors alone (logistic regression)", "-", "-", f"{sa * 100:.1f} ± {ssd * 100:.1f}",
             f"{sf:.3f}", "-"]]
    payload = {"dataset": args.dataset, "input_size": args.size, "machine": machine_description(),
               "descriptors": int(x.shape[1]), "weights_grid": WEIGHTS.tolist(), "c_grid": C_GRID,
               "shape_alone": {"accuracy_mean": sa, "accuracy_sd": ssd, "macro_f1_mean": sf, "macro_f1_sd": sfsd},
               "rows": {}}
    gains = []
    for key in [*bc.MODELS, *bc.ENSEMBLES]:
        if key == "simplecnn":
            continue
        members = bc.ENSEMBLES.get(key, (key,))
        p_cnn = cnn_probabilities(cache, members, folds, y)
        if p_cnn is None:
            continue
        r = nested_fusion(p_cnn, p_shape, inner, y, folds, ds.class_names)
        payload["rows"][key] = {"label": bc.LABELS[key] + " + TTA x4", "members": list(members), **r}
        gains.append(r["accuracy_mean"] - r["cnn_accuracy_mean"])
        rows.append([bc.LABELS[key] + " + TTA x4",
                     f"{r['cnn_accuracy_mean'] * 100:.1f} ± {r['cnn_accuracy_sd'] * 100:.1f}",
                     f"{r['cnn_macro_f1_mean']:.3f}", f"{r['accuracy_mean'] * 100:.1f} ± {r['accuracy_sd'] * 100:.1f}",
                     f"{r['macro_f1_mean']:.3f}", ", ".join(f"{w:g}" for w in r["weight_per_fold"])])
    g = np.asarray(gains) * 100
    payload["gain_points"] = {"mean": float(g.mean()), "min": float(g.min()), "max": float(g.max()),
                              "rows": len(g), "rows_gaining": int((g > 0).sum()), "rows_losing": int((g < 0).sum())}
    size_arg = f" --size {args.size}" if args.size != 128 else ""
    md = (f"### Shape prior on {args.dataset.upper()}, {args.size} px crops: CNN rows with and without it "
          "(5-fold CV, nested fusion weight)\n\n"
          + md_table(["CNN row", "CNN accuracy %", "CNN macro-F1", "fused accuracy %", "fused macro-F1",
                      "w per fold"], rows)
          + f"\n\nAccuracy gain over {len(g)} rows: mean {g.mean():+.1f} points (min {g.min():+.1f}, max "
          f"{g.max():+.1f}); {(g > 0).sum()} rows gain, {(g < 0).sum()} lose. {x.shape[1] - 1} descriptors per head. "
          f"Machine: {payload['machine']}.\n"
          f"Command: `python benchmarks/bench_shape_prior.py --dataset {args.dataset}{size_arg}`\n")
    write_results(f"shape_prior_{args.dataset}_{args.size}", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
