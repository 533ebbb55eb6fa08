"""Does each head's Grad-CAM++ peak fall on that head? Measured on real Sperm Parsing fields.

    python benchmarks/bench_heatmaps.py [--fields 20] [--model hushem-4class]

For every segmented head, the field heatmap (``pipeline.analyze_field(explain=True)``) is searched in the head's
neighbourhood (the head dilated by 12 px, excluding other heads); the peak counts as "inside" when it lies in the
head mask, and "near" when it lies within 3 px of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, machine_description, md_table, require_data, write_results  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=20)
    ap.add_argument("--model", default="hushem-4class")
    ap.add_argument("--data", default=None)
    args = ap.parse_args(argv)
    root = data_dir(args.data) / "sperm_parsing" / "train" / "images"
    require_data(root)
    from napari_spermmorph.core.datasets import read_image
    from napari_spermmorph.core.evaluation import heatmap_peak_hits
    from napari_spermmorph.core.inference import Classifier
    from napari_spermmorph.core.pipeline import analyze_field

    clf = Classifier.load(args.model, device="cpu")
    files = sorted(root.glob("*.jpg"))
    files = files[:: max(1, len(files) // args.fields)][: args.fields]
    tot = np.zeros(3, dtype=int)
    t0 = time.perf_counter()
    for f in files:
        res = analyze_field(read_image(f), clf, explain=True)
        tot += heatmap_peak_hits(res.heatmap, res.labels)
    secs = time.perf_counter() - t0
    n, inside, near = (int(v) for v in tot)
    grid = -(-clf.input_size // 32)  # the backbone's output stride
    payload = {"model": args.model, "fields": len(files), "heads": n, "peak_inside": inside, "peak_within_3px": near,
               "fraction_inside": inside / max(n, 1), "fraction_within_3px": near / max(n, 1), "seconds": secs,
               "machine": machine_description()}
    members = clf.spec.members
    md = ("### Grad-CAM++ peak on its head (Sperm Parsing fields)\n\n"
          + md_table(["model", "fields", "heads", "peak inside the head", "peak within 3 px"],
                     [[args.model, len(files), n, f"{inside} ({inside / max(n, 1):.0%})",
                       f"{near} ({near / max(n, 1):.0%})"]])
          + f"\n\nSegmented heads of every {max(1, 256 // args.fields)}th training field; target layer: CBAM output "
          + f"(a {grid}x{grid} grid at {clf.input_size} px)"
          + (f", one per ensemble member, maps averaged ({members} members)" if members > 1 else "")
          + f". Machine: {payload['machine']}.\n"
          + f"Command: `python benchmarks/bench_heatmaps.py --fields {args.fields} --model {args.model}`\n")
    write_results("heatmaps", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
