"""Batch throughput of ``spermmorph analyze``: fields per minute, serial vs dask local threads vs processes.

The inputs are real Sperm Parsing training fields (1280 x 1024 JPEG), copied into a temp folder; each
configuration runs the full ``run_batch`` (segment, measure, crop, classify, Grad-CAM++ of the report's
uncertain heads, tables, report) into a fresh output folder, so every image is really processed.

    python benchmarks/bench_batch.py --fields 12
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, machine_description, md_table, require_data, write_results  # noqa: E402


def pick_model(tmp: Path) -> tuple[str, str]:
    """(model name or path, description): the shipped model if registered, else an untrained Lite0 + CBAM."""
    from napari_spermmorph.core.registry import shipped_models

    models = shipped_models()
    if models:
        return models[0]["name"], f"shipped model {models[0]['name']} ({models[0]['input_size']} px)"
    from napari_spermmorph.core.checkpoints import save_checkpoint
    from napari_spermmorph.core.models import ModelSpec, build_model

    spec = ModelSpec(input_size=128, num_classes=4)
    path = save_checkpoint(tmp / "untrained.safetensors", build_model(spec, pretrained=False),
                           {"class_names": ["normal", "tapered", "pyriform", "amorphous"], "spec": spec.to_dict(),
                            "head_fraction": 0.5, "name": "untrained-lite0-cbam"})
    return str(path), "untrained EfficientNet-Lite0 + CBAM (128 px): no shipped model registered"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--configs", default="sync,threads,processes")
    ap.add_argument("--data", default=None)
    args = ap.parse_args(argv)
    src = data_dir(args.data) / "sperm_parsing" / "train" / "images"
    require_data(src)
    from napari_spermmorph.core.batch import clear_classifier_cache, run_batch
    from napari_spermmorph.core.defaults import DEFAULT_TTA
    from napari_spermmorph.core.segmentation import DEFAULT_PIXEL_SIZE_UM

    files = sorted(src.glob("*.jpg"))[: args.fields]
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        fields = tmp / "fields" / "bench"
        fields.mkdir(parents=True)
        for f in files:
            shutil.copy(f, fields / f.name)
        model, model_desc = pick_model(tmp)
        # warm-up: imports and first-call costs are paid once, outside the timings
        run_batch([files[0]], tmp / "warmup", model, pixel_size_um=DEFAULT_PIXEL_SIZE_UM, scheduler="sync",
                  progress=False)
        rows, payload = [], {"machine": machine_description(), "model": model_desc, "n_fields": len(files),
                             "field_shape": "1024 x 1280 x 3", "runs": {}}
        for cfg in args.configs.split(","):
            clear_classifier_cache()
            workers = 1 if cfg == "sync" else args.workers
            t0 = time.perf_counter()
            res = run_batch([fields], tmp / f"out_{cfg}", model, pixel_size_um=DEFAULT_PIXEL_SIZE_UM,
                            scheduler=cfg, workers=workers, progress=False)
            wall = time.perf_counter() - t0
            c = res.counts()
            heads = int(res.samples["n_heads"].sum())
            per_image = sorted(o.seconds for o in res.outcomes if o.status == "done")
            payload["runs"][cfg] = {
                "workers": workers, "wall_seconds": wall, "fields_per_minute": 60 * len(files) / wall,
                "heads": heads, "counts": c,
                "median_seconds_per_image": per_image[len(per_image) // 2] if per_image else None}
            rows.append([cfg if cfg != "sync" else "serial (sync)", workers, f"{wall:.1f}",
                         f"{60 * len(files) / wall:.1f}", heads, c["error"]])
            print(f"{cfg}: {wall:.1f} s, {60 * len(files) / wall:.1f} fields/min, {heads} heads", flush=True)
        base = payload["runs"].get("sync", {}).get("wall_seconds")
        if base:
            for r in payload["runs"].values():
                r["speedup_vs_serial"] = base / r["wall_seconds"]
        md = ("### Batch analysis throughput (`spermmorph analyze`)\n\n"
              + md_table(["scheduler", "workers", "wall s", "fields/min", "heads", "failed"], rows)
              + f"\n\n{len(files)} Sperm Parsing training fields (1280 x 1024 JPEG), default settings (TTA x"
              f"{DEFAULT_TTA}, no `--heatmaps`; Grad-CAM++ only for the report's uncertain heads), pixel size "
              f"{DEFAULT_PIXEL_SIZE_UM} um. Model: {model_desc}. Wall time includes model loading in every "
              f"worker and writing tables and the report.\nMachine: {payload['machine']}.\n"
              f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python benchmarks/bench_batch.py "
              f"--fields {args.fields}`\n")
        write_results("batch", payload, md)
        print(md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
