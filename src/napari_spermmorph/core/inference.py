"""Run a trained classifier on head crops: batched, channels_last, inference mode, optional TTA."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .checkpoints import CheckpointError, load_checkpoint
from .crops import DEFAULT_HEAD_FRACTION
from .models import ModelSpec, SpermClassifierNet, build_model
from .preprocess import _is_stack, crops_to_tensor, normalise


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; anything else is passed to torch (and validated)."""
    if str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use 'cpu' or 'auto'.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    devs = ["auto", "cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devs.append("mps")
    return devs


def tta_views(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Up to 8 dihedral views (rotations by 90 degrees, with and without a flip): heads have no up."""
    views = []
    for k in range(8):
        v = torch.rot90(x, k % 4, dims=(2, 3))
        views.append(torch.flip(v, dims=(3,)) if k >= 4 else v)
    order = [0, 6, 2, 4, 1, 3, 5, 7]  # spread: identity, flip-rot180-ish, rot180, flip, ...
    return [views[i] for i in order[: max(1, min(n, 8))]]


def predict_logits(model: SpermClassifierNet, x: torch.Tensor, device: torch.device,
                   batch_size: int = 64, tta: int = 1, runner: torch.nn.Module | None = None) -> torch.Tensor:
    """x: (N, 3, S, S) in [0, 1] on CPU -> averaged softmax probabilities (N, K) (not logits when tta > 1).

    ``runner`` is an optimised stand-in for ``model`` (a frozen TorchScript graph on CPU); same outputs.
    """
    spec = model.spec
    model.eval()
    runner = model if runner is None else runner
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            xb = normalise(x[i : i + batch_size].to(device), spec.mean, spec.std)
            probs = 0
            views = tta_views(xb, tta)
            for v in views:
                v = v.contiguous(memory_format=torch.channels_last)
                with _autocast(device):
                    probs = probs + torch.softmax(runner(v).float(), dim=1)
            out.append((probs / len(views)).cpu())
    return torch.cat(out) if out else torch.empty((0, spec.num_classes))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class Classifier:
    """A loaded model with its metadata: the one object widgets, CLI and scripts use to classify crops."""

    def __init__(self, model: SpermClassifierNet, meta: dict, device: str | torch.device = "auto"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        self.meta = meta
        self.name = meta.get("name", "model")
        self._runner: torch.nn.Module | None = None
        self._match_colours = False

    @classmethod
    def load(cls, name_or_path: str | Path, device: str | torch.device = "auto") -> Classifier:
        """A shipped model's name or a checkpoint path."""
        from .registry import resolve

        path = resolve(name_or_path)
        state, meta = load_checkpoint(path)
        model = build_model(ModelSpec.from_dict(meta["spec"]), pretrained=False)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the model described in its metadata ({exc}).") from exc
        meta = dict(meta, path=str(path))
        meta.setdefault("name", Path(path).stem)
        return cls(model, meta, device)

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def input_size(self) -> int:
        return int(self.spec.input_size)

    @property
    def head_fraction(self) -> float:
        """Head length / crop side of the training crops: field crops are cut to match it."""
        return float(self.meta.get("head_fraction", DEFAULT_HEAD_FRACTION))

    @property
    def normal_class(self) -> str | None:
        return next((c for c in self.class_names if c.lower() in ("normal", "normal_sperm")), None)

    @property
    def align_crops(self) -> bool:
        """Whether the model was trained on aligned crops (major axis horizontal, see crops.normalise_crops)."""
        return bool(self.meta.get("align_crops", False))

    @property
    def match_colours(self) -> bool:
        """Move each crop's colours onto the model's training colours before it is read (``to_tensor``): another
        lab's stain, partly undone. Off by default; the stain check says when it is worth trying. Switching it on
        for a model that records no training colours raises ValueError."""
        return self._match_colours

    @match_colours.setter
    def match_colours(self, on: bool) -> None:
        if on and self.colour_reference is None:
            raise ValueError(f"The model '{self.name}' records no training colours (saved before they were "
                             "recorded): colours cannot be matched to it; classify without colour matching.")
        self._match_colours = bool(on)

    @property
    def colour_reference(self):
        """The training crops' colours (``colour.ColourReference``) recorded in the checkpoint, else None."""
        from .colour import ColourReference

        ref = self.meta.get("colour_reference")
        return None if ref is None else ColourReference.from_dict(ref)

    def stain_distance(self, crops: Sequence[np.ndarray] | np.ndarray) -> float | None:
        """Colour difference between these crops, as given, and the model's training crops
        (``colour.stain_distance``); None for a model that records no colours (older checkpoints) or no crops.
        """
        from .colour import stain_distance

        ref = self.colour_reference
        return None if ref is None or len(crops) == 0 else stain_distance(crops, ref)

    def prepare_crops(self, crops: Sequence[np.ndarray] | np.ndarray):
        """Ready-made crops (one head each, any size) -> ``HeadCrops`` in the model's training geometry.

        Field crops from ``extract_head_crops`` already have it; this is for crop folders and crop stacks.
        The transforms map per-crop results (heatmaps) back onto the original crops.
        """
        from .crops import normalise_crops

        if isinstance(crops, np.ndarray) and crops.ndim in (2, 3) and not _is_stack(crops):
            crops = [crops]
        return normalise_crops(crops, self.input_size, self.head_fraction, align=True, find_head=self.align_crops)[0]

    def to_tensor(self, crops: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """The network's input for field-geometry crops: classification and every explanation go through here.

        A tensor is taken as this method's own output and passed through, so a caller that classifies and explains
        the same crops converts (and colour-matches) them once.
        """
        if isinstance(crops, torch.Tensor):
            return crops
        if self.match_colours and len(crops):
            from .colour import match_colour

            ref = self.colour_reference
            crops = [match_colour(c, ref) for c in crops]
        return crops_to_tensor(crops, self.input_size)

    def predict_proba(self, crops: Sequence[np.ndarray] | np.ndarray | torch.Tensor, batch_size: int = 8,
                      tta: int | bool = 1) -> np.ndarray:
        """(N, K) class probabilities of field-geometry crops. ``tta``: dihedral views averaged (True = 4).

        The first 4 views (identity, flips, 180 degrees) keep an aligned head's axis horizontal.
        """
        views = 4 if tta is True else max(1, int(tta))
        x = self.to_tensor(crops)
        return predict_logits(self.model, x, self.device, batch_size, views, runner=self.runner()).numpy()

    def runner(self) -> torch.nn.Module:
        """On CPU the fastest stand-in for the network (``runners.cpu_runner``: ONNX Runtime, else TorchScript);
        else the network itself. Built once, lazily; Grad-CAM++ keeps using ``self.model`` (it needs hooks).
        """
        if self._runner is None:
            self._runner = self.model
            if self.device.type == "cpu":
                from .runners import cpu_runner

                self._runner = cpu_runner(self.model, self.input_size)
        return self._runner
