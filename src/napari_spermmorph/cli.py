"""``spermmorph``: the plugin's core from the command line (models, evaluate, train, cv, analyze, demo).

User errors (missing model, bad folder, mismatched classes) print one clear line and exit with status 2;
``analyze`` exits 1 when any image failed. Heavy imports (torch) happen inside the subcommands, so ``--help``
is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .core.defaults import DEFAULT_TTA

DEMO_OUT = "spermmorph-demo-output"


TTA_HELP = (f"test-time augmentation views, 1-8 (default {DEFAULT_TTA}: flips keeping the head's axis; views 5-8 turn "
            "heads by 90 degrees, which models trained on aligned crops, the shipped ones included, never saw)")


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .core.batch import BatchInputError
    from .core.checkpoints import CheckpointError
    from .core.images import ImageInputError

    return (UserError, BatchInputError, CheckpointError, ImageInputError, FileNotFoundError)


def _write_json(path: str | Path, payload: dict) -> Path:
    from .core.files import atomic_write

    path = Path(path)
    atomic_write(path, lambda t: Path(t).write_text(json.dumps(payload, indent=2, default=float) + "\n"),
                 force=True)
    return path


def _set_threads() -> None:
    import torch

    n = os.environ.get("OMP_NUM_THREADS")
    if n and n.isdigit():
        torch.set_num_threads(int(n))


# ------------------------------------------------------------------------------------------------ models
def cmd_models(args: argparse.Namespace) -> int:
    from .core.registry import describe_backbones, shipped_models

    models = shipped_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("No shipped models are installed (src/napari_spermmorph/weights/registry.json is missing or empty).")
        return 0
    for m in models:
        metrics = m.get("cv_metrics") or m.get("metrics") or {}
        perf = "; ".join(
            f"CV accuracy {100 * v['accuracy_mean']:.1f}%, macro-F1 {v['macro_f1_mean']:.3f}"
            + (f" ({k.split('/')[-1].replace('tta', 'TTA x')})" if "/" in k else "")
            for k, v in metrics.items() if "accuracy_mean" in v
        ) or "no metrics recorded"
        members = int(m.get("members", 1))
        net = describe_backbones(m.get("member_backbones") or [m.get("backbone")])
        print(f"{m['name']}: classes {', '.join(m.get('classes', []))}; {net} "
              f"{'+ CBAM ' if m.get('cbam') else ''}{m.get('input_size')} px"
              f"{f', {members} members averaged' if members > 1 else ''}; {perf}\n    sha256 {m.get('sha256')}")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate
def _load_classifier(name_or_path: str, device: str = "auto"):
    from .core.inference import Classifier

    return Classifier.load(name_or_path, device)


def _load_dataset(root: str, class_names: list[str] | None = None):
    from .core.datasets import load_class_folders

    try:
        ds = load_class_folders(root, class_names)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    if len(ds) == 0:
        raise UserError(f"{root}: the class folders hold no images.")
    return ds


def evaluate_dataset(clf, ds, tta: int = 1, batch: int = 256) -> dict:
    """Metrics of a classifier on a class-folder dataset (images read in chunks to bound memory), with the crops'
    colour distance from the model's training crops (``stain_delta_e``) when the model records its colours."""
    import numpy as np

    from .core.colour import colour_distance, colour_reference, pooled_reference
    from .core.datasets import read_image
    from .core.evaluation import classification_metrics

    reference = clf.colour_reference  # None: the model records no colours, so none are measured here
    preds, colours = [], []
    for i in range(0, len(ds), batch):
        x = clf.prepare_crops([read_image(f) for f in ds.files[i : i + batch]]).images
        preds.append(clf.predict_proba(x, tta=tta).argmax(1))
        if reference is not None:
            colours.append((colour_reference(x), len(x)))
    y_pred = np.concatenate(preds)
    m = classification_metrics(ds.labels, y_pred, ds.class_names)
    if colours:  # how far these crops' colours are from the model's
        m["stain_delta_e"] = colour_distance(pooled_reference(colours), reference)
    return m


def _print_metrics(m: dict) -> None:
    print(f"n = {m['n']}, accuracy {100 * m['accuracy']:.1f}%, macro-F1 {m['macro_f1']:.3f}")
    if "stain_delta_e" in m:
        from .core.colour import stain_warning
        from .core.defaults import STAIN_DELTA_E_LIMIT

        print(f"colour distance from the model's training crops: Delta E {m['stain_delta_e']:.1f} "
              f"(warning above {STAIN_DELTA_E_LIMIT:g}) {stain_warning(m['stain_delta_e'], STAIN_DELTA_E_LIMIT)}"
              .rstrip())
    names = m["class_names"]
    w = max(len(n) for n in names) + 2
    print(f"{'class':<{w}}precision  recall  f1     support")
    for n in names:
        pc = m["per_class"][n]
        print(f"{n:<{w}}{pc['precision']:9.3f}  {pc['recall']:6.3f}  {pc['f1']:5.3f}  {pc['support']:7d}")
    print("confusion matrix (rows: true, columns: predicted):")
    print(" " * w + " ".join(f"{n[:6]:>6}" for n in names))
    for n, row in zip(names, m["confusion_matrix"]):
        print(f"{n:<{w}}" + " ".join(f"{v:6d}" for v in row))


def cmd_evaluate(args: argparse.Namespace) -> int:
    _set_threads()
    from .core.batch import model_info

    clf = _load_classifier(args.model, args.device)
    try:
        clf.match_colours = args.match_colours
    except ValueError as exc:
        raise UserError(f"--match-colours: {exc}") from exc
    ds = _load_dataset(args.dir, clf.class_names)
    t0 = time.perf_counter()
    m = evaluate_dataset(clf, ds, tta=args.tta)
    _print_metrics(m)
    if args.json:
        payload = dict(m, model=model_info(args.model), dataset=str(Path(args.dir).resolve()), tta=args.tta,
                       match_colours=args.match_colours, folders=ds.folder_names, seconds=time.perf_counter() - t0)
        print(f"wrote {_write_json(args.json, payload)}")
    return 0


# ------------------------------------------------------------------------------------------- train / cv
def _train_config(args: argparse.Namespace, num_classes: int):
    from .core.models import ModelSpec, default_normalisation
    from .core.training import TrainConfig

    mean, std = default_normalisation(args.backbone)
    spec = ModelSpec(arch=args.arch, backbone=args.backbone, cbam=not args.no_cbam, num_classes=num_classes,
                     input_size=args.size, mean=mean, std=std)
    return TrainConfig(spec=spec, phase1_epochs=args.epochs1, phase2_epochs=args.epochs2,
                       batch_size=args.batch_size, seed=args.seed, device=args.device,
                       val_fraction=args.val_fraction)


def _show_epoch(update) -> None:
    if type(update).__name__ == "EpochDone":
        val = ("" if math.isnan(update.val_acc) else
               f", val acc {100 * update.val_acc:.1f}%, val macro-F1 {update.val_macro_f1:.3f}")
        _err(f"  phase {update.phase} epoch {update.epoch + 1}/{update.epochs}: loss {update.train_loss:.3f}{val}"
             + (" (best)" if update.is_best else ""))


def cmd_train(args: argparse.Namespace) -> int:
    _set_threads()
    if args.from_model:
        return _fine_tune(args)
    from .core.checkpoints import save_checkpoint
    from .core.crops import DEFAULT_HEAD_FRACTION
    from .core.training import checkpoint_meta, train_classifier

    ds = _load_dataset(args.dir)
    cfg = _train_config(args, len(ds.class_names))
    images = ds.load_crops(cfg.spec.input_size, DEFAULT_HEAD_FRACTION)
    _err(f"training on {len(ds)} images, classes {ds.class_names}, {cfg.spec.input_size} px")
    res = train_classifier(images, ds.labels, cfg, on_update=_show_epoch)
    meta = checkpoint_meta(res, ds.class_names, cfg, images, name=args.name or Path(args.out).stem,
                           head_fraction=DEFAULT_HEAD_FRACTION, align_crops=True,
                           training_data=str(Path(args.dir).resolve()), train_seconds=res.seconds)
    path = save_checkpoint(args.out, res.model, meta)
    best = res.best or {}
    chosen = ("final weights, no validation" if best.get("final_weights")
              else f"best validation macro-F1 {best.get('val_macro_f1', float('nan')):.3f}")
    print(f"saved {path} ({chosen}, {len(res.history)} epochs, {res.seconds:.0f} s)")
    return 0


def _fine_tune(args: argparse.Namespace) -> int:
    """``train --from``: the same fine-tuning core as the napari widget (new head rows for new classes)."""
    from .core.annotations import AnnotationError, build_training_set
    from .core.finetune import FineTuneError, fine_tune, start_info

    try:
        info = start_info(args.from_model, args.size)
        names = _load_dataset(args.dir).class_names
        if sorted(names) == sorted(info.class_names):
            names = info.class_names  # keep the start model's class order
        ts = build_training_set([], names, crop_size=info.input_size, head_fraction=info.head_fraction,
                                folder=args.dir, seed=args.seed)
        cfg = _train_config(args, len(names))
        out = Path(args.out)
        _err(f"fine-tuning {info.name} on {len(ts)} images, classes {names}, {info.input_size} px")
        res = fine_tune(ts, args.from_model, out.parent, args.name or out.stem, cfg, on_update=_show_epoch)
    except (FineTuneError, AnnotationError) as exc:
        raise UserError(str(exc)) from exc
    print(res.message)
    return 0 if res.path is not None else 1


def cmd_cv(args: argparse.Namespace) -> int:
    _set_threads()
    import numpy as np
    import torch

    from .core.datasets import stratified_folds
    from .core.evaluation import classification_metrics, mean_std
    from .core.inference import predict_logits
    from .core.preprocess import crops_to_tensor
    from .core.training import train_classifier

    ds = _load_dataset(args.dir)
    counts = np.bincount(ds.labels, minlength=len(ds.class_names))
    if args.folds < 2 or counts.min() < args.folds:
        raise UserError(f"{args.folds}-fold CV needs at least {max(args.folds, 2)} images per class; the smallest "
                        f"class has {counts.min()} ({dict(zip(ds.class_names, counts.tolist()))}).")
    folds = stratified_folds(ds.labels, args.folds, seed=args.seed, groups=ds.groups())
    x = crops_to_tensor(ds.load_crops(args.size), args.size)
    y = ds.labels
    runs = []
    t0 = time.perf_counter()
    for k in range(args.folds):
        tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        cfg = _train_config(args, len(ds.class_names))
        _err(f"fold {k + 1}/{args.folds}: {len(tr)} train, {len(te)} test")
        res = train_classifier(x[tr], y[tr], cfg, on_update=_show_epoch)
        probs = predict_logits(res.model, x[te], torch.device("cpu"), tta=args.tta)
        m = classification_metrics(y[te], probs.argmax(1).numpy(), ds.class_names)
        m.update(fold=k, n_train=len(tr), train_seconds=res.seconds)
        runs.append(m)
        print(f"fold {k + 1}: accuracy {100 * m['accuracy']:.1f}%, macro-F1 {m['macro_f1']:.3f}", flush=True)
    (am, asd), (fm, fsd) = mean_std([r["accuracy"] for r in runs]), mean_std([r["macro_f1"] for r in runs])
    cm = np.sum([r["confusion_matrix"] for r in runs], axis=0).tolist()
    print(f"{args.folds}-fold CV: accuracy {100 * am:.1f} ± {100 * asd:.1f}%, macro-F1 {fm:.3f} ± {fsd:.3f}")
    if args.json:
        payload = {"dataset": str(Path(args.dir).resolve()), "class_names": ds.class_names, "n": len(ds),
                   "folds": args.folds, "accuracy_mean": am, "accuracy_sd": asd, "macro_f1_mean": fm,
                   "macro_f1_sd": fsd, "confusion_matrix": cm, "per_fold": runs, "tta": args.tta,
                   "config": _train_config(args, len(ds.class_names)).to_dict(),
                   "seconds": time.perf_counter() - t0}
        print(f"wrote {_write_json(args.json, payload)}")
    return 0


# ----------------------------------------------------------------------------------------------- analyze
def _default_model() -> str:
    from .core.checkpoints import CheckpointError
    from .core.registry import default_model

    try:
        return default_model()
    except CheckpointError as exc:
        raise UserError(f"{exc} Or pass --model PATH.") from exc


def _run_analysis(inputs: Sequence[str], out: str, model: str | None, argv: Sequence[str] | None, **kw):
    from .core.batch import run_batch

    res = run_batch(inputs, out, model or _default_model(), argv=argv, log=_err, **kw)
    c = res.counts()
    _err(f"{c['done']} analysed, {c['skipped']} skipped (already done), {c['error']} failed "
         f"in {res.seconds:.1f} s")
    for _, r in res.samples.iterrows():
        pct = r.get("percent_normal")
        extra = (f", normal {pct:.1f}% (95% CI {r['ci95_low']:.1f}-{r['ci95_high']:.1f}%)"
                 if isinstance(pct, float) and pct == pct else "")
        warn = f" [{r['warning']}]" if r.get("warning") else ""
        print(f"{r['sample']}: {int(r['n_heads'])} heads{extra}{warn}")
    if len(res.errors):
        _err(f"failed images are listed in {res.out_dir / 'errors.csv'}")
    print(f"report: {res.report_path}")
    return res


def cmd_analyze(args: argparse.Namespace) -> int:
    mode = "crops" if args.crops else "fields" if args.fields else "auto"
    res = _run_analysis(args.inputs, args.out, args.model, args.argv, pixel_size_um=args.pixel_size,
                        heatmaps=args.heatmaps, sample_sheet=args.sample_sheet, force=args.force,
                        scheduler=args.scheduler, workers=args.workers, tta=args.tta, mode=mode,
                        device=args.device, min_confidence=args.min_confidence, match_colours=args.match_colours,
                        progress=not args.no_progress)
    return res.exit_code


# -------------------------------------------------------------------------------------------------- demo
def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_demo(args: argparse.Namespace) -> int:
    from importlib.resources import as_file, files

    from .core.segmentation import DEFAULT_PIXEL_SIZE_UM

    model = args.model or _default_model()
    if _has_display() and not args.headless:
        return _demo_gui(model)
    with as_file(files("napari_spermmorph") / "sample_data" / "field.jpg") as field:
        res = _run_analysis([str(field)], args.out, model, args.argv, pixel_size_um=DEFAULT_PIXEL_SIZE_UM,
                            heatmaps=True, force=args.force, scheduler="sync", progress=True,
                            sample_sheet={"field.jpg": "demo (Sperm Parsing sample field)"})
    print(f"outputs in {res.out_dir.resolve()}")
    return res.exit_code


def _demo_gui(model: str) -> int:  # pragma: no cover - needs a display
    import napari
    import numpy as np

    from ._sample_data import load_field
    from .core.pipeline import analyze_field
    from .core.segmentation import DEFAULT_PIXEL_SIZE_UM
    from .core.summary import format_summary, sample_summary

    clf = _load_classifier(model)
    image = load_field()
    px = DEFAULT_PIXEL_SIZE_UM
    res = analyze_field(image, clf, px, explain=True)
    viewer = napari.Viewer(title="napari-spermmorph demo")
    scale = (px, px)
    viewer.add_image(image, name="field", rgb=True, scale=scale)
    viewer.add_labels(res.labels, name="heads", scale=scale, opacity=0.3, features=res.table)
    remap = np.zeros(int(res.labels.max()) + 1, dtype=np.int32)  # label id -> class index + 1
    for lab, c in zip(res.table["label"], res.table["class"]):
        remap[int(lab)] = clf.class_names.index(str(c)) + 1
    classes = remap[res.labels]
    viewer.add_labels(classes, name="classes", scale=scale, opacity=0.5)
    if res.heatmap is not None:
        viewer.add_image(res.heatmap, name="Grad-CAM++", colormap="inferno", blending="additive", opacity=0.6,
                         scale=scale)
    for widget in ("Segment and crop heads", "Classify and explain", "Results table"):
        try:
            viewer.window.add_plugin_dock_widget("napari-spermmorph", widget)
        except Exception as exc:  # noqa: BLE001 - a missing widget must not stop the demo
            _err(f"could not dock {widget!r}: {exc}")
    _err(format_summary(sample_summary(res.table, clf.class_names, clf.normal_class)))
    napari.run()
    return 0


# ------------------------------------------------------------------------------------------------ parser
def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=128, help="input size in pixels (default 128)")
    p.add_argument("--epochs1", type=int, default=25, help="phase-1 epochs, frozen backbone (default 25)")
    p.add_argument("--epochs2", type=int, default=20, help="phase-2 epochs, everything trains (default 20)")
    p.add_argument("--arch", choices=["efficientnet", "simplecnn"], default="efficientnet")
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm backbone (default Lite0, offline)")
    p.add_argument("--no-cbam", action="store_true", help="leave out the CBAM attention block")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="held out for early stopping (default 0.15); 0 trains on every image for all epochs and "
                        "keeps the final weights (small datasets). Fine-tuning (--from) keeps its own split")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="spermmorph", description="Sperm head segmentation, morphology "
                                 "classification and Grad-CAM++ explanations (napari-spermmorph).")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the shipped models")
    p.add_argument("--json", action="store_true", help="print the registry entries as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("evaluate", help="score a model on a class-folder dataset")
    p.add_argument("dir", help="folder with one sub-folder per class (named as the model's classes)")
    p.add_argument("--model", required=True, help="shipped model name or checkpoint path")
    p.add_argument("--json", metavar="OUT", help="write the metrics to this JSON file")
    p.add_argument("--tta", type=int, default=DEFAULT_TTA, help=TTA_HELP)
    p.add_argument("--match-colours", action="store_true",
                   help="colour-match each crop to the model's training colours first: does it help on your stain?")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train (or fine-tune with --from) a classifier on a class-folder dataset")
    p.add_argument("dir")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write (.safetensors)")
    p.add_argument("--from", dest="from_model", metavar="NAME_OR_PATH", help="start from this model")
    p.add_argument("--name", help="model name stored in the checkpoint (default: the file's stem)")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", help="stratified k-fold cross-validation on a class-folder dataset")
    p.add_argument("dir")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--json", metavar="OUT")
    p.add_argument("--tta", type=int, default=DEFAULT_TTA)
    _add_train_args(p)
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("analyze", help="segment, measure and classify many fields; write tables and a report")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--model", help="shipped model name or checkpoint path (default: the shipped model)")
    p.add_argument("--pixel-size", type=float, metavar="UM", help="micrometres per pixel (default: unknown; "
                   "segmentation assumes 0.046 and morphometry stays in pixels)")
    p.add_argument("--heatmaps", action="store_true", help="also write Grad-CAM++ heatmaps (PNG and float TIFF)")
    p.add_argument("--sample-sheet", metavar="CSV", help="CSV with columns image,sample (default: folder = sample)")
    p.add_argument("--force", action="store_true", help="redo and overwrite images already done")
    p.add_argument("--scheduler", default="threads", metavar="ADDRESS|threads|processes|sync",
                   help="dask scheduler: local threads (default), processes, sync, or a distributed address")
    p.add_argument("--workers", type=int, help="local dask workers (default: number of cores)")
    p.add_argument("--tta", type=int, default=DEFAULT_TTA, help=TTA_HELP)
    p.add_argument("--min-confidence", type=float, default=0.6, help="heads below it are flagged uncertain")
    p.add_argument("--match-colours", action="store_true",
                   help="move each head's colours onto the model's training colours before classifying (another "
                        "lab's stain; see the stain check in the report)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--crops", action="store_true",
                      help="treat every input folder as head crops (default: a folder whose images are all "
                           f"<= {256} px is a crop folder)")
    kind.add_argument("--fields", action="store_true", help="treat every image as a field")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("demo", help="run the main job on the built-in sample field")
    p.add_argument("--out", default=DEMO_OUT, help=f"output folder for the headless run (default ./{DEMO_OUT})")
    p.add_argument("--model", help="model (default: the shipped model)")
    p.add_argument("--headless", action="store_true", help="never open napari, even with a display")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = ["spermmorph", *argv]
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _err("interrupted; rerun the same command to resume (finished images are kept).")
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except _user_errors() as exc:
        _err(f"spermmorph {args.command}: error: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
