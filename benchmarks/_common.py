"""Shared helpers for the benchmarks: data location, machine description, result writing."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Data root: ``--data`` if given, else ``$SPERMMORPH_DATA``, else ``<repo>/../shared/data``."""
    if override:
        return Path(override)
    env = os.environ.get("SPERMMORPH_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


def shown_path(path: Path) -> str:
    """A data path as written into results: relative to the repository when possible (no machine paths)."""
    try:
        return os.path.relpath(Path(path).resolve(), REPO)
    except ValueError:
        return str(path)


def require_data(path: Path) -> None:
    """Exit cleanly (status 0, message) when the benchmark's data are missing."""
    if not path.exists():
        print(f"SKIP: data not found at {path} (set SPERMMORPH_DATA or pass --data)")
        sys.exit(0)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """One line: CPU model, usable cores, Python, numpy and torch versions (torch if importable), the GPU if any."""
    import numpy as np

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    parts = [f"cpu={_cpu_model()}", f"cores={cores}", f"python={platform.python_version()}",
             f"numpy={np.__version__}"]
    try:
        import torch

        parts.append(f"torch={torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"gpu={torch.cuda.get_device_name(0)}")
    except Exception:  # noqa: BLE001 - torch is optional for CPU-only benchmarks
        parts.append("torch=not installed")
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        parts.append(f"OMP_NUM_THREADS={threads}")
    return ", ".join(parts)


def write_results(name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``benchmarks/results/<name>.json`` and ``.md``; returns both paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    jpath, mpath = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    jpath.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    mpath.write_text(markdown.rstrip() + "\n")
    return jpath, mpath


def md_table(headers: list[str], rows: list[list]) -> str:
    """Small markdown table; floats get 3 decimals."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
