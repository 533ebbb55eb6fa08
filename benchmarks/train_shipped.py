"""Train a shipped model on all of a dataset's development images and register it in the package.

    python benchmarks/train_shipped.py --dataset hushem
    python benchmarks/train_shipped.py --dataset smids

The recipe is a row the cross-validation benchmark measured (bench_classifier.py: one network's recipe, with
seeds averaged, or an ensemble row whose members differ in backbone and start; freeze-then-unfreeze); its CV
figures, if present, are copied into the model's metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, data_dir, require_data  # noqa: E402
from bench_classifier import ENSEMBLES, MODELS, SEED_VARIANT_OF, START, START_MEMBER, start_model, train_kwargs  # noqa: E402

NAMES = {"hushem": "hushem-4class", "smids": "smids-3class"}
SCHEMES = {"hushem": "HuSHeM", "smids": "SMIDS"}
# The recipe each shipped model is trained with: the bench_classifier.py row that won in CV, both ensemble rows
# whose members are listed there. HuSHeM: one no-hold-out member per start (the earlier SMIDS Lite0 model, ImageNet
# Lite1, Lite1 from smids-3class's first member); SMIDS: no validation hold-out (all training images, fixed epochs,
# final weights), Lite1 seeds 0 and 1 and a Lite0.
RECIPE = {"hushem": "noval_mixed_nh_s0", "smids": "nohold_mixed_ens3"}
# Input size of each shipped model: the CV table (classifier_<dataset>_<size>) its recipe won in.
SIZE = {"hushem": 128, "smids": 128}
# Each trained member is kept here (fp32 safetensors + metadata, not committed): an interrupted run resumes, and
# members can train in parallel processes (``--member-index 1 --members-only``, ..., then the full run).
MEMBER_CACHE = Path(__file__).resolve().parent / "cache" / "shipped_members"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["hushem", "smids"], required=True)
    ap.add_argument("--size", type=int, default=None, help="input size (default: the shipped recipe's)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--members", type=int, default=None,
                    help="seeds to train and average (seed, seed+1, ...; default 1) when the recipe is a single row; "
                         "not for an ensemble row, whose members are fixed")
    ap.add_argument("--member-index", type=int, default=None,
                    help="with --members-only: train only this member (0-based), e.g. one per process")
    ap.add_argument("--members-only", action="store_true",
                    help="train the members into the cache and stop (nothing registered): for parallel processes")
    ap.add_argument("--refresh", action="store_true",
                    help="no training: put the shipped model's classes in canonical order and copy in the latest CV "
                         "metrics (the weights are only permuted, predictions are unchanged)")
    args = ap.parse_args(argv)
    args.size = args.size or SIZE[args.dataset]
    if args.member_index is not None and not args.members_only:
        raise SystemExit("--member-index trains one member into the cache: use it with --members-only")
    if args.refresh:
        return refresh(args.dataset, args.size)
    root = data_dir(args.data)
    require_data(root / args.dataset)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    from napari_spermmorph.core.checkpoints import save_checkpoint
    from napari_spermmorph.core.crops import DEFAULT_HEAD_FRACTION, normalise_crops
    from napari_spermmorph.core.datasets import load_class_folders
    from napari_spermmorph.core.models import ModelSpec, SeedEnsemble
    from napari_spermmorph.core.training import TrainConfig, checkpoint_meta, train_classifier

    ds = load_class_folders(root / args.dataset)
    crops, found = normalise_crops(ds.load_images(), args.size, DEFAULT_HEAD_FRACTION, align=True)
    images = crops.images
    members = recipe_members(args.dataset, args.seed, args.members)

    def show(u):
        if type(u).__name__ == "EpochDone":
            val = "" if math.isnan(u.val_macro_f1) else f" val f1 {u.val_macro_f1:.3f}"  # NaN: no validation
            print(f"phase {u.phase} epoch {u.epoch}: loss {u.train_loss:.3f}{val}", flush=True)

    results, starts, trained = [], [], []
    for index, (key, seed) in enumerate(members):
        if args.member_index is not None and index != args.member_index:
            continue
        spec = ModelSpec(num_classes=len(ds.class_names), input_size=args.size, **MODELS[key])
        cfg = TrainConfig(spec=spec, **train_kwargs(key, args.dataset, seed))
        starts.append(describe_start(key, spec.backbone))
        trained.append({"recipe": key, "seed": cfg.seed})
        row = SEED_VARIANT_OF.get(key, key)  # a seed variant row and its base row with that seed share a member
        cached = MEMBER_CACHE / f"{args.dataset}_{row}_{args.size}_seed{cfg.seed}.safetensors"
        res = load_member(cached, cfg, ds.class_names, len(ds), starts[-1])
        if res is None:
            print(f"member {index}: {key}, seed {cfg.seed}", flush=True)
            res = train_classifier(images, ds.labels, cfg, model=start_model(key, ds.class_names, args.size, cfg.seed),
                                   on_update=show)
            save_checkpoint(cached, res.model, checkpoint_meta(  # loadable as a model too: same crop geometry
                res, ds.class_names, cfg, n_images=len(ds), train_seconds=res.seconds, start_model=starts[-1],
                head_fraction=DEFAULT_HEAD_FRACTION, align_crops=True), half=False)
        results.append(res)
    if args.members_only:
        return 0
    res = results[0]
    model = res.model if len(results) == 1 else SeedEnsemble([r.model for r in results])
    head_fraction = DEFAULT_HEAD_FRACTION
    name = NAMES[args.dataset]
    meta = checkpoint_meta(
        res, ds.class_names, cfg, images, name=name, label_scheme=SCHEMES[args.dataset], head_fraction=head_fraction,
        align_crops=True,
        crops_with_head_found=float(found.mean()),
        training_data=f"{SCHEMES[args.dataset]} development portion, {len(ds)} images (folders {ds.folder_names})",
        protocol="all development images; "
        + (f"{cfg.val_fraction:.0%} stratified validation split for early stopping" if cfg.val_fraction > 0
           else "no validation split: every epoch on every image, final weights kept")
        + (f"; {len(results)} members, probabilities averaged" if len(results) > 1 else ""),
        recipe=RECIPE[args.dataset], recommended_tta=4,
        start_model=starts[0] if len(set(starts)) == 1 else "; ".join(f"member {i}: {s}" for i, s in enumerate(starts)),
        cv_metrics=cv_metrics(args.dataset, args.size, len(results)),
        train_seconds=sum(r.seconds for r in results),  # members reused from the cache count their own time
    )
    meta["spec"] = model.spec.to_dict()
    if len(results) > 1:
        meta["best_validation"] = [r.best for r in results]
        meta["epochs_run"] = [len(r.history) for r in results]
        meta["members"] = trained
    save_and_register(model, meta)
    return 0


def recipe_members(dataset: str, seed: int, n: int | None) -> list[tuple[str, int]]:
    """(bench_classifier row, seed) per member: an ensemble row's members (each row carries its seed), else the
    recipe row with seeds seed, seed+1, ... (``n`` of them, default 1; a SeedEnsemble when more)."""
    recipe = RECIPE[dataset]
    if recipe in ENSEMBLES:
        if n is not None or seed != 0:
            raise SystemExit(f"{recipe} is an ensemble row: its members and seeds are fixed")
        return [(key, 0) for key in ENSEMBLES[recipe]]
    return [(recipe, s) for s in range(seed, seed + (n or 1))]


def describe_start(key: str, backbone: str) -> str:
    """What a member starts from: ImageNet, or a model in this repository / the package (with its sha256)."""
    if key not in START:
        return f"ImageNet ({backbone}, offline weights)"
    from napari_spermmorph.core.checkpoints import file_sha256
    from napari_spermmorph.core.registry import resolve

    given = Path(START[key])  # a shipped model's name, or a checkpoint file in this repository
    label = str(given.resolve().relative_to(Path(__file__).resolve().parents[1])) if given.is_file() else START[key]
    member = f", member {START_MEMBER[key]}" if START_MEMBER.get(key) else ""  # of an ensemble start
    return f"{label}{member} (sha256 {file_sha256(resolve(START[key]))})"


def load_member(path: Path, cfg, class_names: list[str], n_images: int, start: str):
    """A member trained before with exactly this recipe, classes (in order), data size and start, else None."""
    from napari_spermmorph.core.inference import Classifier
    from napari_spermmorph.core.training import TrainingFinished

    if not path.is_file():
        return None
    clf = Classifier.load(path, device="cpu")
    meta = clf.meta
    same = (meta["train_config"] == json.loads(json.dumps(cfg.to_dict())) and meta.get("n_images") == n_images
            and meta["class_names"] == list(class_names) and meta.get("start_model") == start)
    if not same:
        print(f"{path.name}: trained with another recipe or data, training again", flush=True)
        return None
    print(f"member {path.name}: reused", flush=True)
    return TrainingFinished(clf.model.eval(), [{}] * meta["epochs_run"], meta["best_validation"], False,
                            meta["train_seconds"])


def cv_metrics(dataset: str, size: int, members: int = 1) -> dict:
    """The CV figures of the shipped recipe, plain and with TTA (its seed-ensemble row for an ensemble)."""
    cv_file = RESULTS / f"classifier_{dataset}_{size}.json"
    cv = json.loads(cv_file.read_text())["models"] if cv_file.exists() else {}
    keys = ("accuracy_mean", "accuracy_sd", "macro_f1_mean", "macro_f1_sd", "folds")
    recipe = RECIPE[dataset]
    row = recipe if members == 1 or recipe in ENSEMBLES else f"{recipe}_ens{members}"
    return {k: {m: v[m] for m in keys} for k, v in cv.items() if k.split("/")[0] == row}


def save_and_register(model, meta: dict) -> dict:
    from napari_spermmorph.core.checkpoints import save_checkpoint
    from napari_spermmorph.core.registry import WEIGHTS_DIR, register

    spec = model.spec
    path = save_checkpoint(WEIGHTS_DIR / f"{meta['name']}.safetensors", model, meta)
    entry = register(path, {
        "name": meta["name"], "classes": meta["class_names"], "label_scheme": meta["label_scheme"],
        "backbone": spec.backbone, "cbam": spec.cbam, "input_size": spec.input_size,
        "members": spec.members, "member_backbones": spec.member_backbones,
        "head_fraction": meta["head_fraction"], "cv_metrics": meta["cv_metrics"],
        "licence_note": "trained on public research data; see README",
    })
    print(json.dumps(entry, indent=1))
    return entry


def refresh(dataset: str, size: int) -> int:
    """Canonical class order ("normal" first) by permuting the last layer's rows, and the latest CV metrics."""
    import torch

    from napari_spermmorph.core.inference import Classifier
    from napari_spermmorph.core.models import networks

    clf = Classifier.load(NAMES[dataset], device="cpu")
    names = clf.class_names
    order = sorted(range(len(names)), key=lambda i: names[i] != "normal")
    with torch.no_grad():
        for net in networks(clf.model):
            lin = net.head[-1]
            lin.weight.copy_(lin.weight[order].clone())
            lin.bias.copy_(lin.bias[order].clone())
    meta = {k: v for k, v in clf.meta.items() if k not in ("path", "format", "package_version", "tensors_sha256")}
    meta["class_names"] = [names[i] for i in order]
    meta["cv_metrics"] = cv_metrics(dataset, size, clf.spec.members)
    save_and_register(clf.model.to(memory_format=torch.contiguous_format), meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
