"""The lab workflow, measured: fine-tune a start model on a few SMIDS images (a new 3-class head).

A lab with its own scheme annotates a handful of heads per class and fine-tunes. Here the "lab" is SMIDS
(normal / abnormal / non-sperm): ``--per-class`` images per class are the annotations (split 80/20 into train
and validation exactly as the widget does), and a fixed held-out set of ``--test-per-class`` images per class,
pixel-disjoint from them, measures the result. Repeated over ``--seeds`` (different annotation subsets).

The start model must never have seen SMIDS (the held-out images come from it): by default the first shipped
model whose training data and start model are SMIDS-free, else the ImageNet backbone. "Before" cannot be the
start model itself (its head predicts other classes), so the baseline is a linear probe: logistic regression
fitted on the start model's frozen (CBAM-pooled) features of the same annotated images. The same probe on the
ImageNet Lite0 backbone is given for context. "After" is the
fine-tuned checkpoint, saved and reloaded with ``Classifier.load`` like in napari.

    OMP_NUM_THREADS=2 python benchmarks/bench_finetune.py                # defaults: 20/class, 100/class test
    OMP_NUM_THREADS=2 python benchmarks/bench_finetune.py --seeds 0 --per-class 10
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, machine_description, md_table, require_data, write_results  # noqa: E402

TEST_SEED = 1234  # the held-out set is the same for every seed


def split_files(root: Path, per_class: int, test_per_class: int, seed: int):
    """(train files, train labels, test files, test labels, class names); no pixel duplicate straddles."""
    from napari_spermmorph.core.datasets import canonical_class_name

    with open(root / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({canonical_class_name(r["label"]) for r in rows}, key=lambda n: (n != "normal", n))
    by_class = {n: [r for r in rows if canonical_class_name(r["label"]) == n] for n in names}
    rng_test = np.random.default_rng(TEST_SEED)
    test = {n: [by_class[n][i] for i in rng_test.permutation(len(by_class[n]))[:test_per_class]] for n in names}
    test_md5 = {r["pixel_md5"] for rs in test.values() for r in rs}
    rng = np.random.default_rng(seed)
    train = {}
    for n in names:
        pool = [r for r in by_class[n] if r["pixel_md5"] not in test_md5]
        train[n] = [pool[i] for i in rng.permutation(len(pool))[:per_class]]

    def flat(d):
        files = [root / r["file"] for n in names for r in d[n]]
        labels = np.array([names.index(n) for n in names for _ in d[n]], dtype=np.int64)
        return files, labels

    return (*flat(train), *flat(test), names)


def smids_free(model_name: str) -> bool:
    """True when neither the model's training data nor its start model (as its metadata records) is SMIDS."""
    from napari_spermmorph.core.checkpoints import read_metadata
    from napari_spermmorph.core.registry import resolve

    meta = read_metadata(resolve(model_name, verify=False))
    return "smids" not in f"{meta.get('training_data', '')} {meta.get('start_model', '')}".lower()


def pooled_features(model, images, size: int, cbam: bool = True, batch: int = 32) -> np.ndarray:
    """What a linear head sees: the (trained) CBAM output globally averaged; the bare backbone's features for
    the ImageNet start, whose CBAM is still random."""
    import torch

    from napari_spermmorph.core.preprocess import crops_to_tensor, normalise

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = normalise(crops_to_tensor(images[i : i + batch], size), model.spec.mean, model.spec.std)
            f = model.features(x)
            out.append((model.cbam(f) if cbam else f).mean(dim=(2, 3)).numpy())
    return np.concatenate(out)


def linear_probe(f_train, y_train, f_test, y_test, names) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from napari_spermmorph.core.evaluation import classification_metrics

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.1))
    clf.fit(f_train, y_train)
    return classification_metrics(y_test, clf.predict(f_test), names)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--start", default=None, help="start model (default: a SMIDS-free shipped model, else ImageNet)")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--phase1", type=int, default=40, help="frozen-backbone epochs (widget default)")
    ap.add_argument("--phase2", type=int, default=15, help="all-layer epochs (widget default)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default="finetune_smids", help="results name under benchmarks/results/")
    args = ap.parse_args(argv)
    root = data_dir(args.data) / "smids"
    require_data(root)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    from napari_spermmorph.core.annotations import TrainingSet
    from napari_spermmorph.core.datasets import read_image, stratified_split
    from napari_spermmorph.core.evaluation import classification_metrics
    from napari_spermmorph.core.finetune import IMAGENET, fine_tune, load_start_model, start_info
    from napari_spermmorph.core.inference import Classifier
    from napari_spermmorph.core.registry import shipped_models
    from napari_spermmorph.core.training import TrainConfig

    t_all = time.perf_counter()
    start = args.start or next((m["name"] for m in shipped_models() if smids_free(m["name"])), IMAGENET)
    info = start_info(start)
    seeds = [int(s) for s in args.seeds.split(",")]
    _, _, test_files, y_test, names = split_files(root, args.per_class, args.test_per_class, seeds[0])
    test_images = [read_image(f) for f in test_files]
    probes = {"start": load_start_model(start, names, info.input_size)[0]}
    if start != IMAGENET:
        probes["imagenet"] = load_start_model(IMAGENET, names, info.input_size)[0]
    with_cbam = {"start": start != IMAGENET, "imagenet": False}
    test_feats = {k: pooled_features(m, test_images, info.input_size, with_cbam[k]) for k, m in probes.items()}
    runs = []
    for seed in seeds:
        files, y, _, _, _ = split_files(root, args.per_class, args.test_per_class, seed)
        images = [read_image(f) for f in files]
        run = {"seed": seed, "n_annotated": len(files)}
        for k, m in probes.items():
            t0 = time.perf_counter()
            f = pooled_features(m, images, info.input_size, with_cbam[k])
            run[f"probe_{k}"] = linear_probe(f, y, test_feats[k], y_test, names)
            run[f"probe_{k}_seconds"] = time.perf_counter() - t0
        tr, va = stratified_split(y, 0.2, seed)
        ts = TrainingSet(images, y, names, [str(f) for f in files], tr, va, info.head_fraction, info.input_size)
        cfg = TrainConfig(phase1_epochs=args.phase1, phase2_epochs=args.phase2, batch_size=args.batch,
                          patience=max(args.phase1, args.phase2), seed=seed, device="cpu")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = fine_tune(ts, start, tmp, f"smids-ft-{seed}", cfg)
            run["finetune_seconds"] = time.perf_counter() - t0
            clf = Classifier.load(res.path, device="cpu")
            t0 = time.perf_counter()
            pred = clf.predict_proba(test_images).argmax(1)
            run["predict_seconds"] = time.perf_counter() - t0
        run["after"] = classification_metrics(y_test, pred, names)
        run["best_validation"] = res.best
        run["epochs_run"] = len(res.history)
        runs.append(run)
        print(f"seed {seed}: probe(start) acc {run['probe_start']['accuracy']:.3f} -> fine-tuned acc "
              f"{run['after']['accuracy']:.3f} (macro-F1 {run['after']['macro_f1']:.3f}), "
              f"fine-tune {run['finetune_seconds']:.0f} s", flush=True)

    def summary(key: str) -> dict:
        acc = [r[key]["accuracy"] for r in runs]
        f1 = [r[key]["macro_f1"] for r in runs]
        return {"accuracy_mean": float(np.mean(acc)), "accuracy_sd": float(np.std(acc, ddof=1)) if len(acc) > 1
                else 0.0, "macro_f1_mean": float(np.mean(f1)),
                "macro_f1_sd": float(np.std(f1, ddof=1)) if len(f1) > 1 else 0.0}

    rows_def = [("probe_start", f"before: linear probe on frozen {info.name} features"),
                ("probe_imagenet", "context: linear probe on frozen ImageNet Lite0 backbone features"),
                ("after", f"after: fine-tuned from {info.name} (new 3-class head)")]
    rows_def = [(k, label) for k, label in rows_def if k in runs[0]]
    summ = {k: summary(k) for k, _ in rows_def}
    total = time.perf_counter() - t_all
    cmd = "OMP_NUM_THREADS={} python benchmarks/bench_finetune.py {}".format(
        os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv[1:] if argv is None else argv)).strip()
    payload = {
        "command": cmd, "machine": machine_description(), "start_model": start, "start_name": info.name,
        "class_names": names, "per_class": args.per_class, "test_per_class": args.test_per_class,
        "n_test": int(len(y_test)), "seeds": seeds, "config": cfg.to_dict(), "summary": summ, "runs": runs,
        "finetune_seconds_mean": float(np.mean([r["finetune_seconds"] for r in runs])),
        "total_seconds": total,
    }
    table = md_table(["model", "accuracy (mean ± sd)", "macro-F1 (mean ± sd)"],
                     [[label, f"{summ[k]['accuracy_mean']:.3f} ± {summ[k]['accuracy_sd']:.3f}",
                       f"{summ[k]['macro_f1_mean']:.3f} ± {summ[k]['macro_f1_sd']:.3f}"] for k, label in rows_def])
    md = f"""# Fine-tuning on a few annotated SMIDS images

Start model: `{start}`. Annotated: {args.per_class} SMIDS images per class ({len(names)} classes: {', '.join(names)}),
split 80/20 train/validation (stratified); held-out test: {len(y_test)} SMIDS images ({args.test_per_class} per
class, fixed, pixel-disjoint from the annotated ones). Seeds {seeds} draw different annotated subsets.
Recipe: the widget's defaults ({args.phase1} frozen-backbone + {args.phase2} all-layer epochs, batch {args.batch}),
CPU.

{table}

"Before" is a SMIDS-free baseline: the start model's head does not predict SMIDS classes, so a logistic
regression fitted on its frozen features (pooled; CBAM output when the start has a trained CBAM) of the same
annotated images stands in for "the start model on SMIDS". Fine-tuning took
{payload['finetune_seconds_mean']:.0f} s per run on average; the whole benchmark {total / 60:.1f} min.

Command: `{cmd}`

Machine: {payload['machine']}
"""
    jpath, mpath = write_results(args.out, payload, md)
    print(md)
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
