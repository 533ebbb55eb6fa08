"""Checkpoints: safetensors weights with JSON metadata in the file's header. No pickle anywhere.

The metadata records what is needed to rebuild and trust a model (class names, backbone, CBAM, input size,
normalisation, head-to-crop ratio, training data and protocol, metrics, package version) and a sha256 over the
tensors, so that a truncated, edited or foreign file is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from .files import atomic_write

FORMAT = "napari-spermmorph/1"
META_KEY = "spermmorph"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or not one of ours."""


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict, half: bool = True) -> Path:
    """Write weights (fp16 floats when ``half``) and metadata atomically: a crash never leaves half a file."""
    from safetensors.torch import save_file

    from .. import __version__

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        v = v.half() if (half and v.is_floating_point()) else v
        state[k] = v.contiguous(memory_format=torch.contiguous_format)
    meta = dict(meta, format=FORMAT, package_version=__version__, tensors_sha256=tensors_sha256(state))
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={META_KEY: json.dumps(meta)}), force=True)
    return path


def read_metadata(path: str | Path) -> dict:
    """Read only the JSON metadata (cheap: the header, not the tensors)."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc}).") from exc
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not a napari-spermmorph checkpoint (no metadata).")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its metadata is not valid JSON ({exc}).") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT!r}).")
    return meta


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (float32 state dict, metadata) after checking the tensors' hash."""
    from safetensors.torch import load_file

    path = _existing(path)
    meta = read_metadata(path)
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: the weights could not be read, the file may be truncated ({exc}).") from exc
    if tensors_sha256(state) != meta.get("tensors_sha256"):
        raise CheckpointError(f"{path}: the weights do not match their recorded sha256; the file is corrupted.")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return state, meta


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}")
    return path
