"""Where the classifier looks: Grad-CAM++ on the CBAM output, and the CBAM spatial gate itself.

Efficiency: one CAM object per call, crops in batches, and the graph is cut at the target layer (its output is
detached and made a leaf that requires grad), so the backward pass runs only through the small head
(CBAM -> pool -> linear), never through the backbone, and no parameter gradients are accumulated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .crops import HeadCrops, paste_to_field
from .inference import Classifier
from .models import networks
from .preprocess import normalise

__all__ = ["gradcam_pp", "cbam_attention", "target_layers", "class_indices"]


def target_layers(classifier: Classifier, layer: str | nn.Module | None = None) -> list[nn.Module]:
    """The layers Grad-CAM++ reads: each network's CBAM output (else its last feature map), or ``layer``.

    An ensemble gives one layer per member; Grad-CAM++ averages their maps. ``layer`` may be a module or a dotted
    name inside ``classifier.model`` (e.g. ``"features"``, or ``"members.0.cbam"`` in an ensemble).
    """
    model = classifier.model
    if isinstance(layer, nn.Module):
        return [layer]
    if isinstance(layer, str):
        try:
            return [model.get_submodule(layer)]
        except AttributeError as exc:
            raise ValueError(f"The model has no layer {layer!r}.") from exc
    out = []
    for net in networks(model):
        cbam = getattr(net, "cbam", None)
        out.append(cbam if cbam is not None and not isinstance(cbam, nn.Identity) else net.features)
    return out


def class_indices(classifier: Classifier, target: str | int | Sequence | None, n: int) -> list[int] | None:
    """Target class per crop: None -> the predicted class (decided inside the CAM); a name or index -> all."""
    if target is None:
        return None
    names = classifier.class_names
    if isinstance(target, (str, int, np.integer)):
        target = [target] * n
    out = []
    for t in target:
        if isinstance(t, str):
            if t not in names:
                raise ValueError(f"Unknown target class {t!r}; the model's classes are {names}.")
            out.append(names.index(t))
        else:
            if not 0 <= int(t) < len(names):
                raise ValueError(f"Target class index {t} is out of range for {len(names)} classes.")
            out.append(int(t))
    if len(out) != n:
        raise ValueError(f"{len(out)} targets given for {n} crops.")
    return out


def _crop_shape(crops) -> tuple[int, int]:
    """(H, W) of the crops: images (N, H, W[, C]), or the network's input (N, 3, S, S) from ``to_tensor``."""
    if isinstance(crops, torch.Tensor):
        return int(crops.shape[-2]), int(crops.shape[-1])
    first = crops[0]
    return int(first.shape[0]), int(first.shape[1])


def _to_crop_size(maps: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """(N, S', S') maps at the model's input size -> the crops' (H, W), undoing the pad-to-square."""
    h, w = hw
    side = max(h, w)
    x = maps[:, None].float()
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    y0, x0 = (side - h) // 2, (side - w) // 2
    x = x[:, 0, y0 : y0 + h, x0 : x0 + w]
    return x.clamp_(0, 1).cpu().numpy().astype(np.float32)


class _CutGraph:
    """Forward hook: the layer's output becomes a fresh leaf requiring grad, so backward stops there."""

    def __call__(self, module, args, output):
        return output.detach().requires_grad_(True)


def gradcam_pp(
    classifier: Classifier,
    crops: np.ndarray | Sequence[np.ndarray],
    target: str | int | Sequence | None = None,
    layer: str | nn.Module | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM++ maps (N, H, W) float32 in [0, 1] at the crops' own size (H = W = S for square crops).

    For an ensemble, the mean of the members' maps (each scaled to [0, 1] first, as pytorch-grad-cam does).

    ``target``: None explains each crop's predicted class; a class name (or index) explains that class.
    """
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    n = len(crops)
    if n == 0:
        return np.zeros((0, 0, 0), dtype=np.float32)
    hw = _crop_shape(crops)
    targets = class_indices(classifier, target, n)
    model = classifier.model
    spec = classifier.spec
    layers = target_layers(classifier, layer)
    x = classifier.to_tensor(crops)
    was_training = model.training
    grads_before = [p.requires_grad for p in model.parameters()]
    out = []
    with torch.inference_mode(False), torch.enable_grad():
        for p in model.parameters():
            p.requires_grad_(False)
        cuts = [mod.register_forward_hook(_CutGraph()) for mod in layers]
        cam = GradCAMPlusPlus(model=model, target_layers=layers)  # registers its hooks after ours
        try:
            for i in range(0, n, batch_size):
                xb = normalise(x[i : i + batch_size].to(classifier.device), spec.mean, spec.std)
                xb = xb.contiguous(memory_format=torch.channels_last)
                tb = None if targets is None else [ClassifierOutputTarget(t) for t in targets[i : i + batch_size]]
                maps = cam(input_tensor=xb, targets=tb)  # (B, S', S') numpy, each min-max scaled
                out.append(_to_crop_size(torch.from_numpy(np.nan_to_num(maps)), hw))
        finally:
            cam.activations_and_grads.release()
            for cut in cuts:
                cut.remove()
            for p, g in zip(model.parameters(), grads_before):
                p.requires_grad_(g)
            model.train(was_training)
    return np.concatenate(out)


def cbam_attention(classifier: Classifier, crops: np.ndarray | Sequence[np.ndarray],
                   batch_size: int = 64) -> np.ndarray:
    """The CBAM spatial gate (sigmoid, already in [0, 1], not rescaled) upsampled to the crops' size.

    For an ensemble, the mean of the members' gates.
    """
    model = classifier.model
    cbams = [getattr(net, "cbam", None) for net in networks(model)]
    if any(c is None or not hasattr(c, "spatial") for c in cbams):
        raise ValueError("This model has no CBAM block, so it has no spatial attention map to show.")
    n = len(crops)
    if n == 0:
        return np.zeros((0, 0, 0), dtype=np.float32)
    hw = _crop_shape(crops)
    spec = classifier.spec
    x = classifier.to_tensor(crops)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                xb = normalise(x[i : i + batch_size].to(classifier.device), spec.mean, spec.std)
                model(xb.contiguous(memory_format=torch.channels_last))
                gate = torch.stack([c.spatial.last_map[:, 0].float() for c in cbams]).mean(0)  # (B, h, w)
                # the gate sees only the crop's feature grid: interpolate to the model input, then to the crop
                up = F.interpolate(gate[:, None], size=(classifier.input_size,) * 2, mode="bilinear",
                                   align_corners=False)[:, 0]
                out.append(_to_crop_size(up, hw))
    finally:
        model.train(was_training)
    return np.concatenate(out)


MAP_METHODS = ("gradcam++", "cbam")


def check_map_methods(methods: Sequence[str]) -> None:
    """Refuse unknown map names before any work is done."""
    if unknown := [m for m in methods if m not in MAP_METHODS]:
        raise ValueError(f"unknown map method(s) {unknown}: use {', '.join(map(repr, MAP_METHODS))}")


def crop_maps(classifier: Classifier, crops: np.ndarray | Sequence[np.ndarray] | torch.Tensor,
              method: str = "gradcam++", target=None, batch_size: int = 32) -> np.ndarray:
    """One kind of map (``MAP_METHODS``) for crops already in the model's geometry, or for their network input
    (``Classifier.to_tensor``), which is then read as it is: (N, S, S) float32 in [0, 1]."""
    check_map_methods([method])
    if method == "cbam":
        return cbam_attention(classifier, crops)
    return gradcam_pp(classifier, crops, target=target, batch_size=batch_size)


def maps_onto_crops(maps: np.ndarray, prepared: HeadCrops, crops: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Maps made in the model's geometry (``prepared``), each warped back onto its original crop."""
    if not (len(maps) == len(prepared) == len(crops)):
        raise ValueError(f"{len(maps)} maps and {len(prepared)} prepared crops for {len(crops)} crops")
    return [paste_to_field(maps[i : i + 1], [tf], np.asarray(c).shape[:2], dilate_px=0)
            for i, (tf, c) in enumerate(zip(prepared.transforms, crops))]


def explain_crops(classifier: Classifier, crops: np.ndarray | Sequence[np.ndarray], target=None,
                  method: str = "gradcam++", batch_size: int = 32, prepared: HeadCrops | None = None
                  ) -> list[np.ndarray]:
    """Maps for ready-made crops, each returned in its own crop's geometry (same height and width).

    The crops are brought to the model's training geometry (``Classifier.prepare_crops``: centred, aligned,
    scaled; pass ``prepared`` when that was done already), explained there, and each map is warped back onto its
    original crop. To classify and explain crops from one converted input, use ``pipeline.iter_classify_crops``
    with ``maps``.
    """
    check_map_methods([method])
    if isinstance(crops, np.ndarray) and crops.ndim == 3 and crops.shape[-1] in (3, 4):
        crops = [crops]
    prep = classifier.prepare_crops(crops) if prepared is None else prepared
    if len(prep) != len(crops):
        raise ValueError(f"{len(prep)} prepared crops for {len(crops)} crops")
    return maps_onto_crops(crop_maps(classifier, prep.images, method, target, batch_size), prep, crops)
