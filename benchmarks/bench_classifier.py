"""Reproduce the paper's comparison with 5-fold cross-validation: SimpleCNN vs EfficientNet vs EfficientNet+CBAM.

Same recipe for every model (freeze-then-unfreeze for the pretrained ones, see core/training.py); the shipped
recipe adds test-time augmentation, measured on the same folds. Resumable: each finished (model, fold) is cached
as JSON under benchmarks/results/classifier_folds/, and a rerun skips it.

    python benchmarks/bench_classifier.py --dataset hushem --size 128
    python benchmarks/bench_classifier.py --dataset smids --size 128
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, data_dir, machine_description, md_table, require_data, write_results  # noqa: E402

MODELS = {
    "simplecnn": dict(arch="simplecnn", cbam=False),
    "effnet": dict(arch="efficientnet", cbam=False),
    "effnet_cbam": dict(arch="efficientnet", cbam=True),
    "effnet_cbam_long": dict(arch="efficientnet", cbam=True),
    "effnet_cbam_lowlr": dict(arch="efficientnet", cbam=True),
    "effnet_cbam_smids": dict(arch="efficientnet", cbam=True),
    "lite1_cbam": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite1"),
    "lite2_cbam": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite2"),
    "lite1_cbam_long": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite1"),
    "lite2_cbam_long": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite2"),
    "lite1_cbam_smids": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite1"),
    "effnet_cbam_smids_noval": dict(arch="efficientnet", cbam=True),
    "lite1_cbam_noval": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite1"),
    "lite1_cbam_smids_noval": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite1"),
    "lite1_cbam_nohold": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite1"),
    "effnet_cbam_nohold": dict(arch="efficientnet", cbam=True),
    "effnet_cbam_nohold_mix": dict(arch="efficientnet", cbam=True),
    "lite1_cbam_smidsnh_noval": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite1"),
    "lite1_cbam_smidsnh1_noval": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite1"),
    "effnet_cbam_smidsnh2_noval": dict(arch="efficientnet", cbam=True),
    "effnet_cbam_smids224_noval": dict(arch="efficientnet", cbam=True),
    "lite1_cbam_smids224_noval": dict(arch="efficientnet", cbam=True, backbone="tf_efficientnet_lite1"),
}
# Recipe variants measured on the same folds (same model): candidates for the shipped recipe. Per dataset, on top
# of dataset_config(); a variant without an entry for a dataset runs the base recipe there.
_LONG = dict(phase2_epochs=40, patience=10)  # phase 2 x2 (HuSHeM)
_LOW_LR = dict(lr_phase2_head=1e-4, lr_phase2_backbone=1e-5)  # the close paper's phase 2 rates (Kilic 2025)
TRAIN_OVERRIDES = {
    "effnet_cbam_long": {"hushem": _LONG},
    "effnet_cbam_lowlr": {"hushem": {**_LONG, **_LOW_LR}, "smids": _LOW_LR},
    "effnet_cbam_smids": {"hushem": _LONG},
    "lite1_cbam_long": {"hushem": _LONG},
    "lite2_cbam_long": {"hushem": _LONG},
    "lite1_cbam_smids": {"hushem": _LONG},
    # No validation hold-out: early stopping on HuSHeM's ~22 validation images picked epochs by noise (see the
    # "Validation split vs test fold" lines under the table); all training images, every epoch, final weights.
    "effnet_cbam_smids_noval": {"hushem": {**_LONG, "val_fraction": 0.0}},
    "lite1_cbam_noval": {"hushem": {**_LONG, "val_fraction": 0.0}},
    "lite1_cbam_smids_noval": {"hushem": {**_LONG, "val_fraction": 0.0}},
    "lite1_cbam_nohold": {"hushem": {"val_fraction": 0.0}, "smids": {"val_fraction": 0.0}},
    "effnet_cbam_nohold": {"hushem": {"val_fraction": 0.0}, "smids": {"val_fraction": 0.0}},
    # ... and with HuSHeM's regularisers (MixUp 0.2, label smoothing 0.1) on SMIDS: a third member trained otherwise
    "effnet_cbam_nohold_mix": {"smids": {"val_fraction": 0.0, "mixup_alpha": 0.2, "label_smoothing": 0.1}},
    "lite1_cbam_smidsnh_noval": {"hushem": {**_LONG, "val_fraction": 0.0}},
    "lite1_cbam_smidsnh1_noval": {"hushem": {**_LONG, "val_fraction": 0.0}},
    "effnet_cbam_smidsnh2_noval": {"hushem": {**_LONG, "val_fraction": 0.0}},
    "effnet_cbam_smids224_noval": {"hushem": {**_LONG, "val_fraction": 0.0}},
    "lite1_cbam_smids224_noval": {"hushem": {**_LONG, "val_fraction": 0.0}},
}
# Start models other than ImageNet: a shipped model trained on another dataset (no images of this one), new head.
# Both are SMIDS models shipped earlier, kept here so the rows (and hushem-4class's members) rerun from the same
# weights: the Lite0 rows used the Lite0 model shipped before SMIDS moved to Lite1 (sha256 a61aef79...), the Lite1
# rows the two-seed Lite1 model trained with the validation split (sha256 fe93e195...; its first member).
_START_DIR = Path(__file__).resolve().parent / "start_models"
SMIDS_LITE0 = str(_START_DIR / "smids-3class-lite0.safetensors")
SMIDS_LITE1 = str(_START_DIR / "smids-3class-lite1-split.safetensors")
START = {"effnet_cbam_smids": SMIDS_LITE0, "lite1_cbam_smids": SMIDS_LITE1, "effnet_cbam_smids_noval": SMIDS_LITE0,
         "lite1_cbam_smids_noval": SMIDS_LITE1}
# Does a better SMIDS start help HuSHeM? The three-member smids-3class shipped in session 6 (sha256 6ee20a89...; Lite1
# seeds 0 and 1 and a Lite0, each without the hold-out, on all 2550 crops), copied here when later releases added
# metadata to the shipped file; its first member ...
SMIDS_NOHOLD = str(_START_DIR / "smids-3class-nohold.safetensors")
START["lite1_cbam_smidsnh_noval"] = SMIDS_NOHOLD
# ... and its other two members (Lite1 seed 1, Lite0): each HuSHeM network from one smids-3class member.
START["lite1_cbam_smidsnh1_noval"] = START["effnet_cbam_smidsnh2_noval"] = SMIDS_NOHOLD
# At 224 px the rows started from those 128 px SMIDS models lost what they had at 128 px while ImageNet starts gained:
# starts trained at 224 px, the smids-3class recipe's Lite1 seed 0 and Lite0 members trained on all SMIDS crops at 224
# px on a GPU (train_shipped.py --dataset smids --size 224 --members-only), stored fp16.
START["lite1_cbam_smids224_noval"] = str(_START_DIR / "smids-3class-224-lite1.safetensors")
START["effnet_cbam_smids224_noval"] = str(_START_DIR / "smids-3class-224-lite0.safetensors")
# The member of an ensemble start a row trains from (default: the first).
START_MEMBER = {"lite1_cbam_smidsnh1_noval": 1, "effnet_cbam_smidsnh2_noval": 2}
LABELS = {
    "simplecnn": "SimpleCNN (scratch)",
    "effnet": "EfficientNet-Lite0",
    "effnet_cbam": "EfficientNet-Lite0 + CBAM",
    "effnet_cbam_long": "EfficientNet-Lite0 + CBAM, phase 2 x2",
    "effnet_cbam_lowlr": "EfficientNet-Lite0 + CBAM, phase 2 at lr 1e-4 / 1e-5",
    "effnet_cbam_smids": "EfficientNet-Lite0 + CBAM from the SMIDS Lite0 model, phase 2 x2",
    "lite1_cbam": "EfficientNet-Lite1 + CBAM",
    "lite2_cbam": "EfficientNet-Lite2 + CBAM",
    "lite1_cbam_long": "EfficientNet-Lite1 + CBAM, phase 2 x2",
    "lite2_cbam_long": "EfficientNet-Lite2 + CBAM, phase 2 x2",
    "lite1_cbam_smids": "EfficientNet-Lite1 + CBAM from the SMIDS Lite1 model, phase 2 x2",
    "effnet_cbam_smids_noval":
        "EfficientNet-Lite0 + CBAM from the SMIDS Lite0 model, phase 2 x2, no validation hold-out",
    "lite1_cbam_noval": "EfficientNet-Lite1 + CBAM, phase 2 x2, no validation hold-out",
    "lite1_cbam_smids_noval":
        "EfficientNet-Lite1 + CBAM from the SMIDS Lite1 model, phase 2 x2, no validation hold-out",
    "lite1_cbam_nohold": "EfficientNet-Lite1 + CBAM, no validation hold-out",
    "effnet_cbam_nohold": "EfficientNet-Lite0 + CBAM, no validation hold-out",
    "effnet_cbam_nohold_mix": "EfficientNet-Lite0 + CBAM, no validation hold-out, MixUp 0.2 + label smoothing 0.1",
    "lite1_cbam_smidsnh_noval":
        "EfficientNet-Lite1 + CBAM from the no-hold-out SMIDS Lite1 model, phase 2 x2, no validation hold-out",
    "lite1_cbam_smidsnh1_noval":
        "EfficientNet-Lite1 + CBAM from smids-3class's 2nd member (Lite1 seed 1), phase 2 x2, no validation hold-out",
    "effnet_cbam_smidsnh2_noval":
        "EfficientNet-Lite0 + CBAM from smids-3class's 3rd member (Lite0), phase 2 x2, no validation hold-out",
    "effnet_cbam_smids224_noval":
        "EfficientNet-Lite0 + CBAM from a 224 px SMIDS Lite0, phase 2 x2, no validation hold-out",
    "lite1_cbam_smids224_noval":
        "EfficientNet-Lite1 + CBAM from a 224 px SMIDS Lite1, phase 2 x2, no validation hold-out",
}
# Seed ensembles: these variants rerun with seeds 1 and 2 (rows "<key>_s1", "<key>_s2"), and the three models'
# softmax outputs averaged per test image (row "<key>_ens3"; only folds where every member stored them).
ENSEMBLES: dict[str, tuple[str, ...]] = {}
# Each seed variant's row it copies ("<key>_s<seed>" -> "<key>"): the same network for one seed, whichever row names it.
SEED_VARIANT_OF: dict[str, str] = {}


def _seed_variant(key: str, seed: int) -> str:
    """Register row "<key>_s<seed>": the same model, recipe and start with another seed."""
    k = f"{key}_s{seed}"
    SEED_VARIANT_OF[k] = key
    MODELS[k] = MODELS[key]
    TRAIN_OVERRIDES[k] = {ds: {**TRAIN_OVERRIDES.get(key, {}).get(ds, {}), "seed": seed} for ds in ("hushem", "smids")}
    LABELS[k] = f"{LABELS[key]}, seed {seed}"
    if key in START:
        START[k] = START[key]
    if key in START_MEMBER:
        START_MEMBER[k] = START_MEMBER[key]
    return k


for _key in ("effnet_cbam_long", "effnet_cbam_smids", "lite1_cbam_long", "lite1_cbam_smids", "lite1_cbam",
             "effnet_cbam_smids_noval"):
    ENSEMBLES[f"{_key}_ens3"] = (_key, *(_seed_variant(_key, s) for s in (1, 2)))
    LABELS[f"{_key}_ens3"] = f"{LABELS[_key]}, 3 seeds averaged"
# The HuSHeM recipes that shipped (with and without a validation hold-out) also ran seeds 3 and 4: were seeds 0-2
# a lucky draw, and does averaging five seeds beat three?
for _key in ("effnet_cbam_smids", "effnet_cbam_smids_noval"):
    ENSEMBLES[f"{_key}_ens5"] = ENSEMBLES[f"{_key}_ens3"] + tuple(_seed_variant(_key, s) for s in (3, 4))
    LABELS[f"{_key}_ens5"] = f"{LABELS[_key]}, 5 seeds averaged"
# One no-hold-out member per start (SMIDS Lite0, ImageNet Lite1, SMIDS Lite1), averaged: do different backbones and
# starts add more than seeds of one? Seeds 0 and 1 of each, as two separate three-member ensembles; then the same
# mix with the third member started from the no-hold-out SMIDS Lite1 model ("_nh") instead of the earlier one.
for _key in ("lite1_cbam_noval", "lite1_cbam_smids_noval", "lite1_cbam_smidsnh_noval"):
    _seed_variant(_key, 1)
for _tag, _third, _from in (("", "lite1_cbam_smids_noval", "SMIDS"),
                            ("_nh", "lite1_cbam_smidsnh_noval", "the no-hold-out SMIDS model")):
    for _s in (0, 1):
        _row = f"noval_mixed{_tag}_s{_s}"
        ENSEMBLES[_row] = tuple(k + ("" if _s == 0 else f"_s{_s}")
                                for k in ("effnet_cbam_smids_noval", "lite1_cbam_noval", _third))
        LABELS[_row] = ("no validation hold-out, one member per start (Lite0 from SMIDS, Lite1, Lite1 from "
                        f"{_from}), seed {_s} each")
# The shipped mix (noval_mixed_nh_s0) was picked after its folds were seen and its seed-1 replicate scored lower: a
# third draw (its Lite0 member's seed 2 ran for the five-seed rows above) says which of the two is typical.
for _key in ("lite1_cbam_noval", "lite1_cbam_smidsnh_noval"):
    _seed_variant(_key, 2)
ENSEMBLES["noval_mixed_nh_s2"] = ("effnet_cbam_smids_noval_s2", "lite1_cbam_noval_s2", "lite1_cbam_smidsnh_noval_s2")
LABELS["noval_mixed_nh_s2"] = LABELS["noval_mixed_nh_s1"].replace("seed 1 each", "seed 2 each")
# smids-3class fine-tuned on HuSHeM member by member: each of its three networks (Lite1 seeds 0 and 1, Lite0) starts
# one HuSHeM member, so every member starts from sperm images rather than one from ImageNet. Seeds 0 and 1 again.
for _key in ("lite1_cbam_smidsnh1_noval", "effnet_cbam_smidsnh2_noval"):
    _seed_variant(_key, 1)
for _s in (0, 1):
    _row = f"smids_members_noval_s{_s}"
    ENSEMBLES[_row] = tuple(k + ("" if _s == 0 else f"_s{_s}") for k in
                            ("lite1_cbam_smidsnh_noval", "lite1_cbam_smidsnh1_noval", "effnet_cbam_smidsnh2_noval"))
    LABELS[_row] = f"no validation hold-out, one member per smids-3class member (Lite1, Lite1, Lite0), seed {_s} each"
# The shipped mix (noval_mixed_nh_s0) with only its Lite0 member started from smids-3class's Lite0 (its 3rd member)
# rather than the earlier SMIDS Lite0 model: the start change that helped the Lite1 member.
ENSEMBLES["noval_mixed_nh_l0nh_s0"] = ("effnet_cbam_smidsnh2_noval", "lite1_cbam_noval", "lite1_cbam_smidsnh_noval")
LABELS["noval_mixed_nh_l0nh_s0"] = ("no validation hold-out, one member per start (Lite0 from smids-3class's Lite0, "
                                    "Lite1, Lite1 from the no-hold-out SMIDS model), seed 0 each")
# The shipped mix's recipe with both SMIDS starts trained at 224 px (for the 224 px table).
ENSEMBLES["noval_mixed_224s_s0"] = ("effnet_cbam_smids224_noval", "lite1_cbam_noval", "lite1_cbam_smids224_noval")
LABELS["noval_mixed_224s_s0"] = ("no validation hold-out, one member per start (Lite0 from a 224 px SMIDS Lite0, "
                                 "Lite1, Lite1 from a 224 px SMIDS Lite1), seed 0 each")
def _hushem_variant(key: str, suffix: str, overrides: dict, label: str) -> str:
    """Register row "<key>_<suffix>": row ``key`` (model, start, HuSHeM recipe) with ``overrides`` on its recipe."""
    k = f"{key}_{suffix}"
    MODELS[k] = MODELS[key]
    TRAIN_OVERRIDES[k] = {"hushem": {**TRAIN_OVERRIDES[key]["hushem"], **overrides}}
    LABELS[k] = f"{LABELS[key]}, {label}"
    if key in START:
        START[k] = START[key]
    return k


# Two training changes on the shipped mix's three members (seeds 0 and 1), and the mixes they make. The draws above
# differ by up to 4.5 points between seeds:
# - "swa", stochastic weight averaging (TrainConfig.swa_epochs): phase 2's last 10 of 40 epochs at 0.2x the learning
#   rates, their end-of-epoch weights averaged. Does it make a member (and the mix) better and steadier?
# - "fbn", the backbone's BatchNorm statistics frozen in phase 2 (TrainConfig.phase2_frozen_batchnorm): phase 2 runs
#   batches of 16 mixed-up crops, whose statistics are noisy; the SMIDS starts already hold sperm-image statistics.
# - "rot", rotations over the full circle in training (the paper's augmentation) instead of +-20 degrees around the
#   aligned axis: do members that see every orientation differ more, or learn more, than the aligned ones?
_VARIANTS = {"swa": (dict(swa_epochs=10, swa_lr_scale=0.2), "SWA over the last 10 epochs"),
             "fbn": (dict(phase2_frozen_batchnorm=True), "BatchNorm statistics frozen"),
             "rot": (dict(augment=dict(rotation_deg=180.0)), "full rotations in training")}
for _tag, (_overrides, _label) in _VARIANTS.items():
    for _key in ENSEMBLES["noval_mixed_nh_s0"]:
        _seed_variant(_hushem_variant(_key, _tag, _overrides, _label), 1)
    for _s in (0, 1):
        _sfx = "" if _s == 0 else f"_s{_s}"
        ENSEMBLES[f"noval_mixed_nh_{_tag}_s{_s}"] = tuple(f"{k}_{_tag}{_sfx}" for k in ENSEMBLES["noval_mixed_nh_s0"])
        LABELS[f"noval_mixed_nh_{_tag}_s{_s}"] = f"{LABELS[f'noval_mixed_nh_s{_s}']}, {_label}"
# SMIDS folds take ~12 minutes each here, so the SMIDS model got one extra seed: a two-seed average.
ENSEMBLES["lite1_cbam_ens2"] = ("lite1_cbam", "lite1_cbam_s1")
LABELS["lite1_cbam_ens2"] = f"{LABELS['lite1_cbam']}, 2 seeds averaged"
# SMIDS without the validation hold-out (15% more training images, final weights), two seeds: against the row above.
ENSEMBLES["lite1_cbam_nohold_ens2"] = ("lite1_cbam_nohold", _seed_variant("lite1_cbam_nohold", 1))
LABELS["lite1_cbam_nohold_ens2"] = f"{LABELS['lite1_cbam_nohold']}, 2 seeds averaged"
# A third SMIDS member that still fits the 25 MiB file limit in fp16 (two Lite1 + one Lite0, where a third Lite1 does
# not): does another backbone add what a third seed would?
ENSEMBLES["nohold_mixed_ens3"] = ("lite1_cbam_nohold", "lite1_cbam_nohold_s1", "effnet_cbam_nohold")
LABELS["nohold_mixed_ens3"] = f"{LABELS['lite1_cbam_nohold']}, 2 seeds, + Lite0 + CBAM (same recipe), averaged"
# SMIDS phase 2 runs 8 epochs (dataset_config) and keeps the final weights: is that short of a plateau? The shipped
# mix's first member with phase 2 doubled.
MODELS["lite1_cbam_nohold_p2x2"] = MODELS["lite1_cbam_nohold"]
TRAIN_OVERRIDES["lite1_cbam_nohold_p2x2"] = {"smids": {"val_fraction": 0.0, "phase2_epochs": 16}}
LABELS["lite1_cbam_nohold_p2x2"] = f"{LABELS['lite1_cbam_nohold']}, phase 2 x2"
# The same with the Lite0 member trained with MixUp and label smoothing: does a member trained otherwise add more?
ENSEMBLES["nohold_mixed_mix_ens3"] = ("lite1_cbam_nohold", "lite1_cbam_nohold_s1", "effnet_cbam_nohold_mix")
LABELS["nohold_mixed_mix_ens3"] = (f"{LABELS['lite1_cbam_nohold']}, 2 seeds, + Lite0 + CBAM with MixUp 0.2 and label "
                                   "smoothing 0.1, averaged")
PAPER = {"hushem": (0.939, 0.948), "smids": (0.902, 0.913)}


def dataset_config(name: str) -> dict:
    """Recipe differences per dataset follow the paper: MixUp + label smoothing on HuSHeM only.

    SMIDS has 14x more images per epoch, so fewer epochs (and cached views) reach a plateau; this also keeps a
    fold within ~15 minutes on 2 CPU cores.
    """
    if name == "hushem":
        return dict(mixup_alpha=0.2, label_smoothing=0.1, batch_size=16)
    return dict(mixup_alpha=0.0, label_smoothing=0.0, batch_size=32, phase1_epochs=15, phase2_epochs=8,
                patience=3, cache_views=2)


def train_kwargs(model_key: str, ds_name: str, seed: int = 0) -> dict:
    """TrainConfig arguments (all but the spec) of a benchmark row: dataset recipe, then the variant's changes."""
    kwargs = {"seed": seed, **dataset_config(ds_name), **TRAIN_OVERRIDES.get(model_key, {}).get(ds_name, {})}
    if "augment" in kwargs:  # a row's AugmentConfig fields (a dict here, so that this module imports no torch)
        from napari_spermmorph.core.augment import AugmentConfig

        kwargs["augment"] = AugmentConfig(**kwargs["augment"])
    return kwargs


def start_model(model_key: str, class_names, size: int, seed: int = 0):
    """The network a row starts from when it is not ImageNet (a shipped model with a new head), else None."""
    if model_key not in START:
        return None
    from napari_spermmorph.core.finetune import load_start_model

    model = load_start_model(START[model_key], class_names, size, member=START_MEMBER.get(model_key, 0), seed=seed)[0]
    if model.spec.input_size != size:  # convolutions and global pooling take any size: fine-tune at this one
        print(f"{model_key}: the start model was trained at {model.spec.input_size} px, fine-tuned here at {size} px",
              flush=True)
        model.spec.input_size = size
    want = MODELS[model_key].get("backbone", "tf_efficientnet_lite0")
    if model.spec.backbone != want:
        raise SystemExit(f"{model_key}: the start model {START[model_key]} is a {model.spec.backbone}, not {want}")
    return model


def scratch_epochs(name: str) -> tuple[int, int]:
    """(epochs, patience) for the from-scratch SimpleCNN, which has no frozen phase."""
    return (40, 8) if name == "hushem" else (15, 4)


def load_dataset(root: Path, name: str):
    from napari_spermmorph.core.datasets import load_class_folders, stratified_folds

    ds = load_class_folders(root / name)
    if name == "hushem":
        # published partition (SHMC-Net), restricted to the development images here
        with open(root / "hushem" / "splits_5fold.csv") as fh:
            fold_of = {Path(r["file"]).name + "|" + r["label"]: int(r["fold_shmcnet"]) for r in csv.DictReader(fh)}
        folds = np.array([fold_of[f.name + "|" + f.parent.name] for f in ds.files])
        folds = folds - folds.min()
    else:
        with open(root / "smids" / "manifest.csv") as fh:
            md5 = {r["label"] + "/" + Path(r["file"]).name: r["pixel_md5"] for r in csv.DictReader(fh)}
        keys = [md5[f.parent.name + "/" + f.name] for f in ds.files]
        ids: dict[str, int] = {}
        groups = np.array([ids.setdefault(k, len(ids)) for k in keys])
        folds = stratified_folds(ds.labels, 5, seed=0, groups=groups)
    return ds, folds


ORIENTED_SUFFIX = "_or"  # cache (and table) name of --orient runs


def is_oriented(cache: Path) -> bool:
    return cache.name.endswith(ORIENTED_SUFFIX)


def tta_key(cache: Path) -> str:
    """The TTA variant a cache holds: x4 (the flips and 180 degrees that keep an aligned head's axis), or x2 for
    oriented crops (``--orient``: identity and the top-bottom mirror, the views that keep the head's back right)."""
    return "tta2" if is_oriented(cache) else "tta4"


def run_fold(x, y, folds, fold: int, model_key: str, ds_name: str, class_names, size: int, seed: int,
             device: str = "auto", orient: bool = False) -> dict:
    from napari_spermmorph.core.evaluation import classification_metrics
    from napari_spermmorph.core.inference import predict_logits, resolve_device
    from napari_spermmorph.core.models import ModelSpec
    from napari_spermmorph.core.training import TrainConfig, train_classifier

    spec = ModelSpec(num_classes=len(class_names), input_size=size, **MODELS[model_key])
    cfg = TrainConfig(spec=spec, **train_kwargs(model_key, ds_name, seed), device=device)
    if orient:
        cfg.augment = replace(cfg.augment, keep_polarity=True)
    if model_key == "simplecnn":
        cfg.phase2_epochs, cfg.patience = scratch_epochs(ds_name)
    tr = np.flatnonzero(folds != fold)
    te = np.flatnonzero(folds == fold)
    model = start_model(model_key, class_names, size, cfg.seed)
    t0 = time.perf_counter()
    res = train_classifier(x[tr], y[tr], cfg, model=model)
    train_s = time.perf_counter() - t0
    dev = resolve_device(device)
    out = {"fold": fold, "model": model_key, "n_train": len(tr), "n_test": len(te), "train_seconds": train_s,
           "best": res.best, "epochs_run": len(res.history), "labels": y[te].tolist(), "device": device_name(dev),
           "machine": machine_description()}
    for tta in (1, 2 if orient else 4):
        t1 = time.perf_counter()
        probs = predict_logits(res.model, x[te], dev, batch_size=64, tta=tta)
        m = classification_metrics(y[te], probs.argmax(1).numpy(), class_names)
        m["eval_seconds"] = time.perf_counter() - t1
        m["probs"] = np.round(probs.numpy(), 5).tolist()  # per test image, in fold order: for seed ensembles
        out["plain" if tta == 1 else f"tta{tta}"] = m
    return out


def device_name(dev) -> str:
    """"cpu", or "cuda (<GPU name>)": a table may mix rows trained on different machines."""
    import torch

    return f"cuda ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else dev.type


# Folds cached before they recorded their machine: every table written while they ran names this CPU (git history
# of benchmarks/results/classifier_*.md); their GPU folds recorded the device.
_UNRECORDED_CPU = ("cpu=Intel(R) Xeon(R) Processor, cores=2 (named by the tables of the time; the folds predate "
                   "the record)")


def trained_where(run: dict) -> str:
    """Where one cached fold trained: its GPU, else its machine line (CPU model, cores, versions)."""
    device = run.get("device", "cpu")
    if device != "cpu":
        return device
    return run.get("machine", _UNRECORDED_CPU)


def device_note(trained_on: dict[str, list[str]]) -> str:
    """The table's line saying where its rows (single networks; mixes are theirs) trained and were tested."""
    by_place: dict[str, list[str]] = {}
    for label, places in trained_on.items():
        by_place.setdefault(" and ".join(places), []).append(label)
    if len(by_place) == 1:
        return f"Every row was trained and tested on {next(iter(by_place))}.\n"
    return ("Trained and tested on " + "; ".join(f"{d}: " + ", ".join(f'\"{x}\"' for x in labels)
                                                 for d, labels in by_place.items()) + ".\n")


def _in_order(metrics: dict, class_names) -> np.ndarray:
    """A fold's confusion matrix with rows and columns in ``class_names`` order (folds may differ in order)."""
    idx = [metrics["class_names"].index(n) for n in class_names]
    return np.asarray(metrics["confusion_matrix"])[np.ix_(idx, idx)]


def _ensemble_runs(cache: Path, members: tuple[str, ...], class_names) -> list[dict]:
    """Per fold, the members' stored test probabilities averaged; folds where a member is missing are skipped."""
    from napari_spermmorph.core.evaluation import classification_metrics

    runs = []
    for fold in range(5):
        paths = [cache / f"{m}_fold{fold}.json" for m in members]
        if not all(p.exists() for p in paths):
            continue
        parts = [json.loads(p.read_text()) for p in paths]
        if not all("labels" in r for r in parts):
            continue
        run = {"fold": fold, "train_seconds": sum(r["train_seconds"] for r in parts)}
        for var in ("plain", tta_key(cache)):
            probs = np.mean([np.asarray(r[var]["probs"]) for r in parts], axis=0)
            run[var] = classification_metrics(np.asarray(parts[0]["labels"]), probs.argmax(1), class_names)
        runs.append(run)
    return runs


def validation_vs_test(cache: Path, members: tuple[str, ...]) -> dict | None:
    """Does the validation split pick good epochs? Over every (member, fold) run of a seed ensemble: the chosen
    epoch's validation macro-F1 against the test fold's accuracy (no TTA), and their correlation."""
    runs = [json.loads(p.read_text()) for m in members for p in sorted(cache.glob(f"{m}_fold*.json"))]
    pairs = [(r["best"]["val_macro_f1"], r["plain"]["accuracy"]) for r in runs if "val_macro_f1" in r.get("best", {})]
    if len(pairs) < 3:
        return None
    val, test = np.array(pairs).T
    return {"runs": len(pairs), "val_macro_f1_mean": float(val.mean()), "test_accuracy_mean": float(test.mean()),
            "pearson_r": float(np.corrcoef(val, test)[0, 1])}


def aggregate(ds_name: str, size: int, cache: Path, class_names, head_fraction: float) -> None:
    from napari_spermmorph.core.evaluation import mean_std
    from napari_spermmorph.core.training import TrainConfig

    recipe = {**TrainConfig().to_dict(), **dataset_config(ds_name),
              "simplecnn_epochs_patience": scratch_epochs(ds_name)}
    recipe.pop("spec")
    rows = []
    trained_on: dict[str, list[str]] = {}  # row label -> where its folds trained (trained_where)
    payload = {"dataset": ds_name, "input_size": size, "machine": machine_description(), "recipe": recipe, "models": {}}
    for key in [*MODELS, *ENSEMBLES]:
        runs = (_ensemble_runs(cache, ENSEMBLES[key], class_names) if key in ENSEMBLES
                else [json.loads(p.read_text()) for p in sorted(cache.glob(f"{key}_fold*.json"))])
        if not runs:
            continue
        variants = ["plain", tta_key(cache)] if key != "simplecnn" else ["plain"]
        for var in variants:
            accs = [r[var]["accuracy"] for r in runs]
            f1s = [r[var]["macro_f1"] for r in runs]
            (am, asd), (fm, fsd) = mean_std(accs), mean_std(f1s)
            label = LABELS[key] + (f" + TTA x{var[3:]}" if var.startswith("tta") else "")
            cm = np.sum([_in_order(r[var], class_names) for r in runs], axis=0).tolist()
            payload["models"][f"{key}/{var}"] = {
                "label": label, "folds": len(runs), "accuracy_mean": am, "accuracy_sd": asd, "macro_f1_mean": fm,
                "macro_f1_sd": fsd, "accuracy_per_fold": accs, "macro_f1_per_fold": f1s, "confusion_matrix": cm,
                "train_seconds_mean": float(np.mean([r["train_seconds"] for r in runs])),
            }
            rows.append([label, f"{len(runs)}/5", f"{am * 100:.1f} ± {asd * 100:.1f}", f"{fm:.3f} ± {fsd:.3f}",
                         f"{np.mean([r['train_seconds'] for r in runs]) / 60:.1f}"])
        if key not in ENSEMBLES:
            trained_on[LABELS[key]] = sorted({trained_where(r) for r in runs})
    checks = {k: v for k in ENSEMBLES if (v := validation_vs_test(cache, ENSEMBLES[k]))}
    payload["validation_vs_test"] = checks
    payload["trained_on"] = trained_on
    devices = device_note(trained_on)
    notes = "".join(f"Validation split vs test fold, {c['runs']} runs of \"{LABELS[k]}\": chosen epoch's validation "
                    f"macro-F1 {c['val_macro_f1_mean']:.2f}, test accuracy {c['test_accuracy_mean']:.2f}, "
                    f"r = {c['pearson_r']:.2f}.\n" for k, c in checks.items())
    pa, pf = PAPER[ds_name]
    payload["class_names"] = list(class_names)
    rows.append(["paper (B0 + CBAM, one 15% hold-out)", "-", f"{pa * 100:.1f}", f"{pf:.3f}", "-"])
    oriented = is_oriented(cache)
    hf_arg = f" --head-fraction {head_fraction:g}" if f"_hf{head_fraction:g}" in cache.name else ""
    hf_arg += " --orient" if oriented else ""
    payload["head_fraction"] = head_fraction
    turned = ", oriented (head's back right)" if oriented else ""
    md = (f"### {ds_name.upper()}, {size} px, head {head_fraction:g} of the crop{turned}, 5-fold CV "
          "(mean ± SD over folds)\n\n"
          + md_table(["model", "folds", "accuracy %", "macro-F1", "train min/fold"], rows)
          + f"\n\nClasses: {', '.join(class_names)}. Aggregated on: {payload['machine']}.\n"
          + devices
          + f"Recipe: phase 1 {recipe['phase1_epochs']} epochs (frozen, {recipe['cache_views']} cached views), phase 2 "
          + f"{recipe['phase2_epochs']} epochs, patience {recipe['patience']}, MixUp {recipe['mixup_alpha']}, label "
          + f"smoothing {recipe['label_smoothing']}; SimpleCNN {recipe['simplecnn_epochs_patience'][0]} epochs.\n"
          + notes
          + f"Command: `python benchmarks/bench_classifier.py --dataset {ds_name} --size {size}{hf_arg}`\n")
    write_results(f"classifier_{cache.name}", payload, md)
    print(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["hushem", "smids"], required=True)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--data", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head-fraction", type=float, default=None,
                    help="head length / crop side (default: the package's); results go to their own cache and table")
    ap.add_argument("--orient", action="store_true",
                    help="crops turned end for end so the head's back is right (crops.head_polarity), training "
                         "without left-right flips, TTA x2; results go to their own cache and table")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda: training and evaluation")
    ap.add_argument("--aggregate-only", action="store_true")
    args = ap.parse_args(argv)
    root = data_dir(args.data)
    require_data(root / args.dataset)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    from napari_spermmorph.core.crops import DEFAULT_HEAD_FRACTION, normalise_crops
    from napari_spermmorph.core.preprocess import crops_to_tensor

    ds, folds = load_dataset(root, args.dataset)
    hf = DEFAULT_HEAD_FRACTION if args.head_fraction is None else args.head_fraction
    tag = (f"{args.dataset}_{args.size}" + ("" if hf == DEFAULT_HEAD_FRACTION else f"_hf{hf:g}")
           + (ORIENTED_SUFFIX if args.orient else ""))
    cache = RESULTS / "classifier_folds" / tag
    cache.mkdir(parents=True, exist_ok=True)
    if not args.aggregate_only:
        t0 = time.perf_counter()
        crops, found = normalise_crops(ds.load_images(), args.size, hf, align=True, orient=args.orient)
        print(f"head found and aligned in {found.mean():.1%} of crops", flush=True)
        x = crops_to_tensor(crops.images, args.size)
        y = ds.labels
        print(f"loaded {len(y)} images in {time.perf_counter() - t0:.0f}s", flush=True)
        for fold in (int(f) for f in args.folds.split(",")):  # fold-major: a partial run covers every model
            for key in args.models.split(","):
                out_path = cache / f"{key}_fold{fold}.json"
                if out_path.exists():
                    continue
                res = run_fold(x, y, folds, fold, key, args.dataset, ds.class_names, args.size, args.seed,
                               args.device, args.orient)
                tmp = out_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(res, indent=1))
                tmp.replace(out_path)
                print(f"{key} fold {fold}: acc {res['plain']['accuracy']:.3f} f1 {res['plain']['macro_f1']:.3f}"
                      f" tta {res[tta_key(cache)]['accuracy']:.3f} ({res['train_seconds']:.0f}s)", flush=True)
                aggregate(args.dataset, args.size, cache, ds.class_names, hf)
    aggregate(args.dataset, args.size, cache, ds.class_names, hf)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
