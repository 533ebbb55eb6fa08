"""Fine-tuning core: start models, new heads, atomic checkpoint that loads and classifies, Stop, bad folders."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_spermmorph.core.annotations import TrainingSet
from napari_spermmorph.core.checkpoints import read_metadata, save_checkpoint
from napari_spermmorph.core.datasets import stratified_split
from napari_spermmorph.core.finetune import (
    IMAGENET,
    FineTuneError,
    FineTuneResult,
    adapt_head,
    fine_tune,
    iter_finetune,
    load_start_model,
    output_path,
    start_info,
)
from napari_spermmorph.core.inference import Classifier
from napari_spermmorph.core.models import ModelSpec, build_model
from napari_spermmorph.core.synthetic import synthetic_head_crops
from napari_spermmorph.core.training import BatchDone, EpochDone, TrainConfig

NAMES = ["normal", "amorphous"]


def tiny_config(**kw) -> TrainConfig:
    base = dict(phase1_epochs=1, phase2_epochs=1, batch_size=8, cache_views=1, device="cpu", patience=5)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tset() -> TrainingSet:
    imgs, labels = synthetic_head_crops(n_per_class=8, classes=("normal", "amorphous"), size=64, seed=0)
    tr, va = stratified_split(labels, 0.25, 0)
    return TrainingSet(list(imgs), labels, list(NAMES), [f"crop {i}" for i in range(len(labels))], tr, va,
                       head_fraction=0.5, crop_size=64)


def test_imagenet_start_trains_saves_and_classifies(tset, tmp_path):
    updates = []
    res = fine_tune(tset, IMAGENET, tmp_path, "mine", tiny_config(), on_update=updates.append, pretrained=False)
    assert isinstance(res, FineTuneResult) and res.path is not None and res.path.is_file()
    assert [type(u).__name__ for u in updates].count("EpochDone") == 2
    meta = read_metadata(res.path)
    assert meta["class_names"] == NAMES and meta["head_fraction"] == 0.5
    assert meta["fine_tuned_from"] == "imagenet-lite0"
    assert meta["training_data"]["counts_train_val"] == {"normal": [6, 2], "amorphous": [6, 2]}
    clf = Classifier.load(res.path, device="cpu")
    assert clf.class_names == NAMES and clf.input_size == 64
    probs = clf.predict_proba(tset.images[:5])
    assert probs.shape == (5, 2) and np.allclose(probs.sum(1), 1, atol=1e-4)
    # the fine-tuned model records its training crops' colours: its own lab's crops are close to them
    assert set(meta["colour_reference"]) == {"lab_mean", "lab_std"}
    assert clf.stain_distance(tset.images) < 1.0
    # a second run never overwrites the first
    res2 = fine_tune(tset, IMAGENET, tmp_path, "mine", tiny_config(phase2_epochs=0), pretrained=False)
    assert res2.path.name == "mine-2.safetensors" and res.path.is_file()


def _start_checkpoint(path, names) -> None:
    spec = ModelSpec(num_classes=len(names), input_size=64)
    model = build_model(spec, pretrained=False)
    save_checkpoint(path, model, {"spec": spec.to_dict(), "class_names": names, "head_fraction": 0.6,
                                  "name": "start"})


def test_checkpoint_start_new_classes_keep_known_rows(tmp_path):
    start = tmp_path / "start.safetensors"
    _start_checkpoint(start, ["amorphous", "tapered", "normal"])
    info = start_info(start)
    assert info.class_names == ["amorphous", "tapered", "normal"] and info.head_fraction == 0.6
    model, _, kept = load_start_model(start, NAMES)
    assert kept == NAMES and model.spec.num_classes == 2
    ref, _, _ = load_start_model(start, ["amorphous", "tapered", "normal"])
    w_ref = ref.head[-1].weight.detach()
    assert torch.equal(model.head[-1].weight[0].detach(), w_ref[2])  # normal row moved
    assert torch.equal(model.head[-1].weight[1].detach(), w_ref[0])  # amorphous row moved
    fresh = build_model(ModelSpec(num_classes=2, input_size=64))
    assert adapt_head(fresh, ["x", "y"], ["z", "w", "v"]) == [] and fresh.head[-1].out_features == 3


def test_new_layers_come_from_the_seed_not_from_earlier_draws(tmp_path):
    """A new head (and ImageNet's new CBAM) must not depend on what the process drew before: seeded fine-tunes
    repeat exactly, whatever ran earlier (a benchmark's earlier folds did change them)."""
    start = tmp_path / "start.safetensors"
    _start_checkpoint(start, ["normal", "tapered"])
    new = ["normal", "pyriform", "amorphous"]
    torch.manual_seed(1)
    a = load_start_model(start, new)[0].state_dict()
    torch.rand(1000)  # other work in between
    b = load_start_model(start, new)[0].state_dict()
    c = load_start_model(start, new, seed=5)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    head = next(k for k in a if k.startswith("head.") and k.endswith("weight"))
    assert torch.equal(a[head][0], c[head][0]) and not torch.equal(a[head][1:], c[head][1:])  # kept row, new rows
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_start_model(start, new)
    assert torch.equal(torch.rand(3), expected)  # and the caller's random stream is left as it was
    imagenet = [load_start_model(IMAGENET, new, 64, pretrained=False)[0].state_dict() for _ in range(2)]
    assert all(torch.equal(imagenet[0][k], imagenet[1][k]) for k in imagenet[0])


def test_checkpoint_start_fine_tunes(tset, tmp_path):
    start = tmp_path / "start.safetensors"
    _start_checkpoint(start, ["normal", "tapered", "pyriform", "amorphous"])
    res = fine_tune(tset, start, tmp_path / "out", "ft", tiny_config(phase1_epochs=2, phase2_epochs=0))
    assert res.path is not None and Classifier.load(res.path, device="cpu").class_names == NAMES
    assert read_metadata(res.path)["fine_tuned_from"] == "start"


def test_stop_keeps_best_epoch(tset, tmp_path):
    seen = {"batches": 0}

    def stop() -> bool:
        return seen["batches"] >= 3  # phase 1 has 2 batches per epoch: stop inside its second epoch

    gen = iter_finetune(tset, IMAGENET, tmp_path, "stopped", tiny_config(phase1_epochs=3), should_stop=stop,
                        pretrained=False)
    epochs = []
    for upd in gen:
        if isinstance(upd, BatchDone):
            seen["batches"] += 1
        if isinstance(upd, EpochDone):
            epochs.append(upd)
        last = upd
    assert isinstance(last, FineTuneResult) and last.stopped
    assert len(epochs) == 1 and last.path is not None
    meta = read_metadata(last.path)
    assert meta["stopped_early_by_user"] is True and meta["best_validation"]["epoch"] == 0
    Classifier.load(last.path, device="cpu").predict_proba(tset.images[:2])


def test_stop_before_first_epoch_saves_nothing(tset, tmp_path):
    res = fine_tune(tset, IMAGENET, tmp_path, "none", tiny_config(), should_stop=lambda: True, pretrained=False)
    assert res.path is None and res.stopped and "nothing was saved" in res.message
    assert not list(tmp_path.glob("*.safetensors"))


def test_output_folder_checks(tmp_path):
    assert output_path(tmp_path / "new" / "sub", "m").parent.is_dir()
    with pytest.raises(FineTuneError, match="disk space"):
        output_path(tmp_path, "m", needed_bytes=1 << 62)
    with pytest.raises(FineTuneError, match="not allowed"):
        output_path(tmp_path, "a/b")
    with pytest.raises(FineTuneError, match="name"):
        output_path(tmp_path, "  ")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FineTuneError, match="Cannot write"):
        output_path(blocker / "sub", "m")  # a file where a folder should be
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(FineTuneError, match="Cannot write"):
                output_path(ro, "m")
        finally:
            ro.chmod(0o700)


def test_unloadable_start_model(tset, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FineTuneError, match="bad.safetensors"):
        next(iter_finetune(tset, bad, tmp_path, "x", tiny_config()))
    with pytest.raises(FineTuneError):
        start_info(tmp_path / "missing.safetensors")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_memory_is_given_back(tset, tmp_path):
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    res = fine_tune(tset, IMAGENET, tmp_path, "gpu", tiny_config(device="cuda"), pretrained=False)
    assert res.path is not None
    assert torch.cuda.memory_allocated() == before
    assert torch.cuda.memory_reserved() <= before + (2 << 20)
