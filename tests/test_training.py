"""Freeze-then-unfreeze training on small synthetic crops: it learns, it freezes, it stops when asked."""

import numpy as np
import pytest
import torch

from napari_spermmorph.core.evaluation import classification_metrics
from napari_spermmorph.core.inference import predict_logits
from napari_spermmorph.core.models import ModelSpec, build_model
from napari_spermmorph.core.preprocess import crops_to_tensor
from napari_spermmorph.core.synthetic import synthetic_head_crops
from napari_spermmorph.core.training import (
    BatchDone,
    EpochDone,
    PhaseStarted,
    TrainConfig,
    TrainingFinished,
    iter_training,
    train_classifier,
)

CLASSES = ("normal", "tapered", "amorphous")


@pytest.fixture(scope="module")
def data():
    x, y = synthetic_head_crops(n_per_class=24, classes=CLASSES, size=48, seed=1)
    xt, yt = synthetic_head_crops(n_per_class=15, classes=CLASSES, size=48, seed=2)
    return crops_to_tensor(x, 48), y, crops_to_tensor(xt, 48), yt


def test_a_few_epochs_beat_chance(data):
    x, y, xt, yt = data
    spec = ModelSpec(arch="simplecnn", cbam=False, num_classes=3, input_size=48)
    cfg = TrainConfig(spec=spec, pretrained=False, phase2_epochs=8, lr_phase1=3e-3, batch_size=16, seed=0,
                      patience=8)
    res = train_classifier(x, y, cfg)
    probs = predict_logits(res.model, xt, torch.device("cpu"))
    acc = classification_metrics(yt, probs.argmax(1).numpy(), list(CLASSES))["accuracy"]
    assert acc > 0.6, acc  # chance is 1/3


def test_phase1_really_freezes_the_backbone(data):
    """Phase 1 changes CBAM and head only; backbone weights and BatchNorm statistics stay put."""
    x, y, _, _ = data
    spec = ModelSpec(num_classes=3, input_size=48)
    for cache_views in (2, 0):  # cached features, and the frozen backbone run every batch
        net = build_model(spec, pretrained=False)
        feats_before = {k: v.clone() for k, v in net.features.state_dict().items()}
        head_before = {k: v.clone() for k, v in net.head.state_dict().items()}
        cfg = TrainConfig(spec=spec, phase1_epochs=2, phase2_epochs=0, cache_views=cache_views, batch_size=16)
        train_classifier(x, y, cfg, model=net)
        after = net.features.state_dict()
        assert all(torch.equal(feats_before[k], after[k]) for k in feats_before), cache_views
        assert any(not torch.equal(head_before[k], v) for k, v in net.head.state_dict().items())


def test_phase2_trains_the_backbone(data):
    x, y, _, _ = data
    spec = ModelSpec(num_classes=3, input_size=48)
    net = build_model(spec, pretrained=False)
    before = {k: v.clone() for k, v in net.features.named_parameters()}
    cfg = TrainConfig(spec=spec, phase1_epochs=0, phase2_epochs=1, batch_size=16, patience=5)
    train_classifier(x, y, cfg, model=net)
    assert any(not torch.equal(before[k], p) for k, p in net.features.named_parameters())


def test_updates_are_typed_and_stop_is_honoured(data):
    x, y, _, _ = data
    spec = ModelSpec(num_classes=3, input_size=48)
    cfg = TrainConfig(spec=spec, pretrained=False, phase1_epochs=1, phase2_epochs=3, batch_size=16)
    seen = []
    batches = 0

    def stop():
        return batches >= 6

    for upd in iter_training(x, y, cfg, should_stop=stop):
        seen.append(type(upd))
        if isinstance(upd, BatchDone):
            batches += 1
    assert seen[0] is PhaseStarted and seen[-1] is TrainingFinished
    assert EpochDone in seen
    assert batches == 6
    assert upd.stopped and upd.best  # the best epoch (of phase 1) is kept


def test_runs_are_repeatable(data):
    x, y, _, _ = data
    spec = ModelSpec(arch="simplecnn", cbam=False, num_classes=3, input_size=48)
    cfg = TrainConfig(spec=spec, phase2_epochs=1, batch_size=16, seed=3)
    a = train_classifier(x, y, cfg).model.state_dict()
    b = train_classifier(x, y, cfg).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_label_out_of_range_is_a_clear_error(data):
    x, y, _, _ = data
    cfg = TrainConfig(spec=ModelSpec(num_classes=2, input_size=48), pretrained=False, phase2_epochs=1)
    with pytest.raises(ValueError, match="classes"):
        train_classifier(x, np.asarray(y), cfg)


def test_without_validation_every_epoch_runs_on_every_image_and_the_final_weights_are_kept(data):
    """val_fraction 0: no hold-out, no early stopping (patience 1 would stop a validated run early)."""
    x, y, xt, yt = data
    spec = ModelSpec(arch="simplecnn", cbam=False, num_classes=3, input_size=48)
    cfg = TrainConfig(spec=spec, pretrained=False, phase2_epochs=8, lr_phase1=3e-3, batch_size=16, seed=0,
                      patience=1, val_fraction=0.0)
    updates = list(iter_training(x, y, cfg))
    started = [u for u in updates if isinstance(u, PhaseStarted)]
    epochs = [u for u in updates if isinstance(u, EpochDone)]
    final = updates[-1]
    assert started[0].n_train == len(y) and started[0].n_val == 0
    assert len(epochs) == 8 and not any(e.is_best for e in epochs)
    assert final.best == {"phase": 2, "epoch": 7, "final_weights": True}
    weights = {k: v.clone() for k, v in final.model.state_dict().items()}
    again = train_classifier(x, y, cfg).model.state_dict()  # repeatable
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    probs = predict_logits(final.model, xt, torch.device("cpu"))
    assert classification_metrics(yt, probs.argmax(1).numpy(), list(CLASSES))["accuracy"] > 0.6


def test_weight_averaging_keeps_the_mean_of_the_last_epochs_with_fresh_batchnorm_statistics(data):
    """swa_epochs 3 of 6: the weights are the mean of phase 2's last three end-of-epoch weights; BatchNorm
    statistics come from one pass over the training images, not from any epoch."""
    x, y, _, _ = data
    spec = ModelSpec(num_classes=3, input_size=48)
    net = build_model(spec, pretrained=False)
    cfg = TrainConfig(spec=spec, pretrained=False, phase1_epochs=0, phase2_epochs=6, batch_size=16, seed=0,
                      val_fraction=0.0, swa_epochs=3)
    snapshots = []
    for upd in iter_training(x, y, cfg, model=net):
        if isinstance(upd, EpochDone):
            snapshots.append({k: v.clone() for k, v in net.state_dict().items()})
    assert len(snapshots) == 6
    final = upd.model.state_dict()
    params = dict(upd.model.named_parameters())
    for k in params:
        mean = torch.stack([s[k] for s in snapshots[3:]]).mean(0)
        torch.testing.assert_close(final[k], mean, rtol=1e-5, atol=1e-6)
        assert not torch.equal(final[k], snapshots[-1][k]) or torch.equal(snapshots[3][k], snapshots[-1][k])
    stats = [k for k in final if k.endswith("running_mean")]
    assert stats and any(not torch.equal(final[k], snapshots[-1][k]) for k in stats)
    with pytest.raises(ValueError, match="without validation"):
        train_classifier(x, y, TrainConfig(spec=spec, pretrained=False, phase2_epochs=6, swa_epochs=3))
    with pytest.raises(ValueError, match="BatchNorm"):
        train_classifier(x, y, TrainConfig(spec=spec, pretrained=False, phase2_epochs=6, swa_epochs=3,
                                           val_fraction=0.0, phase2_frozen_batchnorm=True))


def test_phase2_can_keep_the_backbone_batchnorm_statistics(data):
    """phase2_frozen_batchnorm: the backbone's running statistics stay those of the start model while its weights
    (BatchNorm scale and shift included) train; without it they move."""
    x, y, _, _ = data
    spec = ModelSpec(num_classes=3, input_size=48)
    for frozen in (True, False):
        net = build_model(spec, pretrained=False)
        before = {k: v.clone() for k, v in net.features.state_dict().items()}
        cfg = TrainConfig(spec=spec, pretrained=False, phase1_epochs=0, phase2_epochs=1, batch_size=16,
                          val_fraction=0.0, phase2_frozen_batchnorm=frozen)
        train_classifier(x, y, cfg, model=net)
        after = net.features.state_dict()
        stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
        affine = [k for k in after if k.endswith("bn1.weight")]
        assert stats and affine
        assert all(torch.equal(before[k], after[k]) for k in stats) == frozen
        assert any(not torch.equal(before[k], after[k]) for k in affine)
