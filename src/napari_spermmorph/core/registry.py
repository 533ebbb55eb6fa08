"""Models shipped inside the package, registered with their sha256 (weights/registry.json)."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoints import CheckpointError, file_sha256

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
REGISTRY_FILE = WEIGHTS_DIR / "registry.json"


def shipped_models() -> list[dict]:
    """Registry entries: name, file, sha256, classes, backbone, input size, metrics."""
    if not REGISTRY_FILE.is_file():
        return []
    return json.loads(REGISTRY_FILE.read_text())["models"]


def default_model() -> str:
    """The shipped model used when none is named: one whose classes include "normal" (% normal is the headline)."""
    models = shipped_models()
    if not models:
        raise CheckpointError("No shipped model is installed; pass a checkpoint path (train one with "
                              "`spermmorph train`).")
    with_normal = [m for m in models if any(c.lower().startswith("normal") for c in m.get("classes", []))]
    return (with_normal or models)[0]["name"]


def resolve(name_or_path: str | Path, verify: bool = True) -> Path:
    """A shipped model's name (its sha256 checked) or an existing checkpoint path."""
    entries = {m["name"]: m for m in shipped_models()}
    key = str(name_or_path)
    if key in entries:
        entry = entries[key]
        path = WEIGHTS_DIR / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"Shipped model {key!r} is missing its weights file {path}.")
        if verify and file_sha256(path) != entry["sha256"]:
            raise CheckpointError(f"Shipped model {key!r}: {path} does not match its registered sha256.")
        return path
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    known = ", ".join(entries) or "none"
    raise CheckpointError(f"No model {key!r}: not a shipped model (shipped: {known}) and not a file.")


def register(path: str | Path, entry: dict) -> dict:
    """Add or replace a shipped model's entry (used when training the shipped models)."""
    path = Path(path)
    models = [m for m in shipped_models() if m["name"] != entry["name"]]
    entry = dict(entry, file=path.name, sha256=file_sha256(path))
    models.append(entry)
    REGISTRY_FILE.write_text(json.dumps({"models": sorted(models, key=lambda m: m["name"])}, indent=2) + "\n")
    return entry


def describe_backbones(backbones: list[str]) -> str:
    """Each backbone once, in member order ("tf_efficientnet_lite0 / tf_efficientnet_lite1"): for listings."""
    return " / ".join(dict.fromkeys(str(b) for b in backbones))
