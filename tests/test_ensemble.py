"""Seed ensembles: averaged probabilities, exact checkpoint round trip, explanations over all members."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_spermmorph.core.batch import model_info
from napari_spermmorph.core.checkpoints import save_checkpoint
from napari_spermmorph.core.explain import cbam_attention, gradcam_pp
from napari_spermmorph.core.finetune import FineTuneError, load_start_model
from napari_spermmorph.core.inference import Classifier
from napari_spermmorph.core.models import ModelSpec, SeedEnsemble, SpermClassifierNet, build_model

NAMES = ["normal", "tapered", "pyriform"]
SPEC = ModelSpec(arch="simplecnn", cbam=True, num_classes=3, input_size=48)


def _members(n: int = 2) -> list[SpermClassifierNet]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(build_model(SPEC).eval())
    return out


def _crops(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 48, 48, 3)).astype(np.float32)


def _clf(model) -> Classifier:
    return Classifier(model, {"class_names": NAMES, "head_fraction": 0.5}, device="cpu")


def test_probabilities_are_the_members_mean():
    a, b = _members()
    ens = SeedEnsemble([a, b])
    assert ens.spec.members == 2 and a.spec.members == 1 and ens.spec.num_classes == 3
    crops = _crops()
    for tta in (1, 4):
        p = _clf(ens).predict_proba(crops, tta=tta)
        pa = _clf(copy.deepcopy(a)).predict_proba(crops, tta=tta)
        pb = _clf(copy.deepcopy(b)).predict_proba(crops, tta=tta)
        np.testing.assert_allclose(p, (pa + pb) / 2, atol=1e-5)
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)


def test_members_must_share_a_spec():
    other = build_model(ModelSpec(arch="simplecnn", cbam=True, num_classes=4, input_size=48))
    with pytest.raises(ValueError, match="share one spec"):
        SeedEnsemble([_members(1)[0], other])
    with pytest.raises(ValueError, match="at least two"):
        SeedEnsemble(_members(1))


def test_checkpoint_round_trip_and_fine_tune_start(tmp_path):
    ens = SeedEnsemble(_members(3))
    path = save_checkpoint(tmp_path / "ens.safetensors", ens,
                           {"spec": ens.spec.to_dict(), "class_names": NAMES, "head_fraction": 0.5}, half=False)
    loaded = Classifier.load(path, device="cpu")
    assert isinstance(loaded.model, SeedEnsemble) and len(loaded.model.members) == 3
    crops = _crops(4, seed=1)
    np.testing.assert_allclose(loaded.predict_proba(crops, tta=1), _clf(ens).predict_proba(crops, tta=1), atol=1e-6)
    # fine-tuning starts from the first member: a single network with the first member's weights
    net, _, kept = load_start_model(path, NAMES, 48)
    assert isinstance(net, SpermClassifierNet) and kept == NAMES
    first = ens.members[0].state_dict()
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, first[key])
    # or from another member, by index; an index past the last member is refused
    net, _, _ = load_start_model(path, NAMES, 48, member=2)
    third = ens.members[2].state_dict()
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, third[key])
    name = next(k for k in third if k.startswith("head.") and k.endswith(".weight"))
    assert not torch.equal(third[name], first[name])
    with pytest.raises(FineTuneError, match="3 member"):
        load_start_model(path, NAMES, 48, member=3)


def test_explanations_average_over_members():
    a, b = _members()
    crops = _crops(3, seed=2)
    # the CBAM gate of an ensemble of two copies of one network is that network's gate
    same = cbam_attention(_clf(SeedEnsemble([a, copy.deepcopy(a)])), crops)
    np.testing.assert_allclose(same, cbam_attention(_clf(copy.deepcopy(a)), crops), atol=1e-6)
    # Grad-CAM++ reads every member: another member changes the map, the members' order does not
    ab = gradcam_pp(_clf(SeedEnsemble([a, b])), crops, target="normal")
    ba = gradcam_pp(_clf(SeedEnsemble([copy.deepcopy(b), copy.deepcopy(a)])), crops, target="normal")
    aa = gradcam_pp(_clf(SeedEnsemble([copy.deepcopy(a), copy.deepcopy(a)])), crops, target="normal")
    assert ab.shape == (3, 48, 48) and ab.min() >= 0 and ab.max() <= 1
    np.testing.assert_allclose(ab, ba, atol=1e-5)
    assert np.abs(ab - aa).max() > 0.05


@pytest.mark.parametrize("n_members", [1, 2])
def test_cpu_runner_gives_the_network_outputs(n_members):
    """The fast CPU stand-in (ONNX Runtime when installed) classifies exactly like the network."""
    from napari_spermmorph.core.runners import runner_kind

    nets = _members(n_members)
    model = nets[0] if n_members == 1 else SeedEnsemble(nets)
    fast, slow = _clf(model), _clf(copy.deepcopy(model))
    slow._runner = slow.model  # eager reference
    crops = _crops(7, seed=3)
    np.testing.assert_allclose(fast.predict_proba(crops, tta=4, batch_size=3), slow.predict_proba(crops, tta=4),
                               atol=1e-5)
    pytest.importorskip("onnxruntime")
    assert runner_kind(fast.runner()) == "onnxruntime"


def test_members_with_different_backbones_round_trip(tmp_path):
    """Members may differ in backbone only: the checkpoint records each member's, and it loads back exactly."""
    specs = [ModelSpec(backbone=b, num_classes=3, input_size=64)
             for b in ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite1")]
    torch.manual_seed(0)
    ens = SeedEnsemble([build_model(s).eval() for s in specs])
    assert ens.spec.member_backbones == [s.backbone for s in specs] and ens.spec.members == 3
    path = save_checkpoint(tmp_path / "mixed.safetensors", ens,
                           {"spec": ens.spec.to_dict(), "class_names": NAMES, "head_fraction": 0.5}, half=False)
    loaded = Classifier.load(path, device="cpu")
    assert [m.spec.backbone for m in loaded.model.members] == [s.backbone for s in specs]
    assert model_info(path)["backbone"] == "tf_efficientnet_lite0 / tf_efficientnet_lite1"  # report and run.json
    crops = np.random.default_rng(4).random((3, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_proba(crops, tta=1), _clf(ens).predict_proba(crops, tta=1), atol=1e-5)
    # anything else that differs is refused
    with pytest.raises(ValueError, match="only the backbone may differ"):
        SeedEnsemble([build_model(specs[0]), build_model(ModelSpec(num_classes=3, input_size=96))])
