"""Inference speed: classification and Grad-CAM++ per crop vs plain baselines, and one whole field end to end.

Uses the shipped sample field and crops (no external data). Model: the shipped ``hushem-4class`` when the
registry lists it, else an untrained default ``ModelSpec()`` network (same architecture and cost).

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_inference.py [--device cpu] [--crops 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_description, md_table, write_results  # noqa: E402

TARGETS = {"classify_speedup_min": 2.0, "gradcam_over_classify_max": 3.0, "field_seconds_max": 2.0}


def load_classifier(device: str):
    from napari_spermmorph.core.inference import Classifier
    from napari_spermmorph.core.models import ModelSpec, build_model
    from napari_spermmorph.core.registry import shipped_models

    if any(m["name"] == "hushem-4class" for m in shipped_models()):
        try:
            return Classifier.load("hushem-4class", device=device), "hushem-4class (shipped)"
        except Exception as exc:  # noqa: BLE001 - fall back to the untrained network of the same shape
            print(f"shipped model unusable ({exc}); timing an untrained ModelSpec() network")
    model = build_model(ModelSpec(), pretrained=False)
    meta = {"class_names": ["normal", "tapered", "pyriform", "amorphous"], "head_fraction": 0.5}
    return Classifier(model, meta, device=device), "untrained ModelSpec() (timing only)"


def best_of(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--naive-crops", type=int, default=16, help="crops for the slow per-crop baselines")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", default="8,32", help="classification batch sizes tried; the best is 'ours'")
    ap.add_argument("--name", default=None, help="results file name (default bench_inference[_<device>])")
    args = ap.parse_args(argv)

    import torch
    from pytorch_grad_cam import GradCAMPlusPlus

    from napari_spermmorph._sample_data import load_field, load_head_crops
    from napari_spermmorph.core.defaults import DEFAULT_TTA
    from napari_spermmorph.core.explain import gradcam_pp
    from napari_spermmorph.core.inference import predict_logits
    from napari_spermmorph.core.models import networks
    from napari_spermmorph.core.pipeline import analyze_field
    from napari_spermmorph.core.preprocess import normalise
    from napari_spermmorph.core.runners import runner_kind, torchscript_runner

    clf, model_name = load_classifier(args.device)
    dev = clf.device
    base = load_head_crops()["images"].astype(np.float32) / 255
    reps = -(-args.crops // len(base))
    crops = np.concatenate([base] * reps)[: args.crops]
    naive = crops[: args.naive_crops]
    spec = clf.spec

    # ---- classification: ours (batched, channels_last, inference_mode, the CPU runner: ONNX Runtime, else a
    #      frozen TorchScript graph) vs plain eager batch-1 NCHW fp32
    kind = runner_kind(clf.runner())  # built once per loaded model (lazily): not part of the per-crop cost

    def ours_classify(bs: int):
        clf.predict_proba(crops, batch_size=bs)
        _sync(dev)

    plain = copy.deepcopy(clf.model).to(memory_format=torch.contiguous_format).eval()

    def plain_classify():
        x = normalise(clf.to_tensor(naive), spec.mean, spec.std).to(dev)
        for i in range(len(x)):
            torch.softmax(plain(x[i : i + 1]), dim=1).detach().cpu()
        _sync(dev)

    per_bs = {int(b): best_of(lambda b=int(b): ours_classify(b), args.repeats) / len(crops)
              for b in args.batch_sizes.split(",")}
    best_bs = min(per_bs, key=per_bs.get)
    t_ours = per_bs[best_bs]
    t_plain = best_of(plain_classify, args.repeats) / len(naive)
    t_script = None
    if dev.type == "cpu" and kind != "torchscript":  # what the runner gains over the TorchScript graph
        script = torchscript_runner(copy.deepcopy(clf.model), clf.input_size)
        x_all = clf.to_tensor(crops)
        t_script = best_of(lambda: predict_logits(clf.model, x_all, dev, best_bs, runner=script),
                           args.repeats) / len(crops)

    # ---- Grad-CAM++: ours (one CAM, batches, graph cut at the target) vs a new CAM object per crop
    def ours_cam():
        gradcam_pp(clf, crops, batch_size=32)
        _sync(dev)

    def naive_cam():
        x = normalise(clf.to_tensor(naive), spec.mean, spec.std).to(dev)
        for i in range(len(x)):
            with GradCAMPlusPlus(model=plain, target_layers=[n.cbam for n in networks(plain)]) as cam:
                cam(input_tensor=x[i : i + 1], targets=None)
        _sync(dev)

    c_ours = best_of(ours_cam, args.repeats) / len(crops)
    c_naive = best_of(naive_cam, args.repeats) / len(naive)

    # ---- whole field: segment + classify + heatmaps
    field = load_field()
    px = 0.046
    res = analyze_field(field, clf, px, explain=True)
    tracemalloc.start()
    t_field = best_of(lambda: analyze_field(field, clf, px, explain=True), args.repeats)
    t_field_tta = best_of(lambda: analyze_field(field, clf, px, explain=True, tta=DEFAULT_TTA), args.repeats)
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None

    out = {
        "machine": machine_description(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": model_name,
        "input_size": clf.input_size,
        "crops": len(crops),
        "naive_crops": len(naive),
        "classify_ms_per_crop": 1000 * t_ours,
        "classify_batch_size": best_bs,
        "classify_ms_per_crop_by_batch": {b: 1000 * t for b, t in per_bs.items()},
        "classify_plain_ms_per_crop": 1000 * t_plain,
        "runner": kind,
        "classify_torchscript_ms_per_crop": None if t_script is None else 1000 * t_script,
        "members": spec.members,
        "classify_speedup": t_plain / t_ours,
        "classify_crops_per_s": 1 / t_ours,
        "classify_plain_crops_per_s": 1 / t_plain,
        "gradcam_ms_per_crop": 1000 * c_ours,
        "gradcam_naive_ms_per_crop": 1000 * c_naive,
        "gradcam_speedup_vs_naive": c_naive / c_ours,
        "gradcam_over_classify": c_ours / t_ours,
        "field_shape": list(field.shape),
        "field_heads": len(res.table),
        "field_seconds": t_field,
        "field_python_peak_mb": py_peak / 2**20,
        "process_maxrss_mb": maxrss_mb,
        "gpu_peak_mb": gpu_peak_mb,
        "targets": TARGETS,
    }
    out["field_seconds_tta"] = t_field_tta
    out["meets"] = {
        "classify_speedup": out["classify_speedup"] >= TARGETS["classify_speedup_min"],
        "gradcam_over_classify": out["gradcam_over_classify"] <= TARGETS["gradcam_over_classify_max"],
        "field_seconds": t_field <= TARGETS["field_seconds_max"],
    }
    rows = [
        ["classify (ms/crop)", out["classify_ms_per_crop"], out["classify_plain_ms_per_crop"],
         out["classify_speedup"], f">= {TARGETS['classify_speedup_min']}x", out["meets"]["classify_speedup"]],
        ["Grad-CAM++ (ms/crop)", out["gradcam_ms_per_crop"], out["gradcam_naive_ms_per_crop"],
         out["gradcam_speedup_vs_naive"], f"<= {TARGETS['gradcam_over_classify_max']}x classify "
         f"(is {out['gradcam_over_classify']:.2f}x)", out["meets"]["gradcam_over_classify"]],
        [f"field {field.shape[1]}x{field.shape[0]}, {len(res.table)} heads (s)", t_field, "", "",
         f"<= {TARGETS['field_seconds_max']} s", out["meets"]["field_seconds"]],
        [f"same field with TTA x{DEFAULT_TTA}, the widget/CLI default (s)", t_field_tta, "", "",
         f"<= {TARGETS['field_seconds_max']} s", t_field_tta <= TARGETS["field_seconds_max"]],
    ]
    md = "\n".join([
        f"# Inference benchmark ({out['device_name']})",
        "",
        f"{out['machine']}; torch threads {out['torch_threads']}; model {model_name}, input {clf.input_size} px.",
        f"Ours: batched ({best_bs}, best of {sorted(per_bs)}: "
        + ", ".join(f"{b}: {1000 * t:.1f} ms" for b, t in sorted(per_bs.items()))
        + f"), channels_last, inference_mode, runner: {kind}"
        + (f" (the frozen TorchScript graph it replaces: {1000 * t_script:.1f} ms/crop)" if t_script else "")
        + "; Grad-CAM++ with one CAM object and the graph cut at the CBAM output"
        + (f" of each of the {out['members']} ensemble members" if out["members"] > 1 else "")
        + ". Baselines: same network, eager NCHW fp32, batch 1 per crop, "
        "no inference mode; a new GradCAMPlusPlus object per crop.",
        "",
        md_table(["step", "ours", "baseline", "speedup", "target", "met"], rows),
        "",
        f"Whole field = segment + classify + Grad-CAM++ pasted back (`pipeline.analyze_field(explain=True)`), "
        f"median of {args.repeats}. Peak memory: process max RSS {maxrss_mb:.0f} MB, Python allocations during "
        f"the field runs {out['field_python_peak_mb']:.0f} MB"
        + (f", GPU {gpu_peak_mb:.0f} MB." if gpu_peak_mb is not None else "."),
    ])
    name = args.name or ("bench_inference" if dev.type == "cpu" else f"bench_inference_{dev.type}")
    jpath, mpath = write_results(name, out, md)
    print(md)
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
