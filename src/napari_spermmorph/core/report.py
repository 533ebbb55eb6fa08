"""A self-contained HTML report of a batch run: one file (inline CSS, inline base64 PNGs) that can be mailed.

It shows what a reader needs to trust the numbers: the per-sample summary with 95% Wilson intervals and the
WHO 200-head warning, the class distribution, the least confident heads with their Grad-CAM++ heatmaps, which
model (name, version, sha256) and which pixel size were used, and the images that failed.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .summary import WHO_MIN_HEADS

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.warn{color:#a40000}.muted{color:#666;font-size:.9em}
.thumbs{display:flex;flex-wrap:wrap;gap:.8em}.thumb{border:1px solid #ddd;padding:.3em;font-size:.8em;
text-align:center}.thumb img{width:96px;height:96px;image-rendering:pixelated}
code{background:#f5f5f5;padding:0 .2em}
"""


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def class_distribution_png(samples: pd.DataFrame, class_names: Sequence[str]) -> bytes | None:
    """Stacked horizontal bars: the share of each class per sample (counts in the table)."""
    if samples.empty or samples["n_heads"].sum() == 0:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [str(s) for s in samples["sample"]]
    fig = Figure(figsize=(7.5, 1.3 + 0.4 * len(names)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    left = np.zeros(len(names))
    totals = np.maximum(samples["n_heads"].to_numpy(dtype=float), 1)
    for c in class_names:
        share = 100 * samples[f"n_{c}"].to_numpy(dtype=float) / totals
        ax.barh(names, share, left=left, label=c)
        left += share
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of heads")
    ax.invert_yaxis()
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(class_names), 6), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def summary_table_html(samples: pd.DataFrame, class_names: Sequence[str], normal_class: str | None) -> str:
    head = ["sample", "images", "failed", "heads", *class_names]
    if normal_class:
        head.append(f"% {normal_class} (95% CI)")
    head += ["uncertain", "stain \N{GREEK CAPITAL LETTER DELTA}E", "note"]
    rows = []
    for _, r in samples.iterrows():
        cells = [f'<td class="l">{html.escape(str(r["sample"]))}</td>', f"<td>{int(r['n_images'])}</td>",
                 f"<td>{int(r['n_failed'])}</td>", f"<td>{int(r['n_heads'])}</td>"]
        cells += [f"<td>{int(r[f'n_{c}'])}</td>" for c in class_names]
        if normal_class:
            pct = r.get("percent_normal", float("nan"))
            ci = (f"{_fmt(pct)} ({_fmt(r.get('ci95_low'))}&ndash;{_fmt(r.get('ci95_high'))})"
                  if not (isinstance(pct, float) and math.isnan(pct)) else "n/a")
            cells.append(f"<td>{ci}</td>")
        cells.append(f"<td>{int(r['n_uncertain'])}</td>")
        cells.append(f"<td>{_fmt(r.get('stain_delta_e'))}</td>")  # colour distance from the model's training crops
        warn = str(r.get("warning") or "")
        warn = "" if warn == "nan" else warn
        cells.append(f'<td class="l warn">{html.escape(warn)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    ths = "".join(f'<th class="{"l" if h in ("sample", "note") else ""}">{html.escape(h)}</th>' for h in head)
    return f'<table class="summary"><tr>{ths}</tr>{"".join(rows)}</table>'


def _thumb_html(t: dict) -> str:
    from .batch import heatmap_overlay

    crop = np.asarray(t["crop"])
    imgs = [f'<img alt="head" src="{data_uri(png_bytes(crop))}">']
    if t.get("heatmap") is not None:
        heat = np.asarray(t["heatmap"], dtype=np.float32) / 255.0
        imgs.append(f'<img alt="Grad-CAM++" src="{data_uri(png_bytes(heatmap_overlay(crop, heat)))}">')
    cap = (f"{html.escape(str(t['image']))} #{int(t['label'])}<br>{html.escape(str(t['class']))} "
           f"({100 * float(t['confidence']):.0f}%)")
    return f'<div class="thumb">{"".join(imgs)}<br>{cap}</div>'


def render_report(*, samples: pd.DataFrame, class_names: Sequence[str], normal_class: str | None, model: dict,
                  pixel_size_um: float | None, run: dict, errors: pd.DataFrame | None = None,
                  thumbnails: Sequence[dict] = (), title: str = "Sperm morphology report") -> str:
    """The report as one HTML string."""
    from .segmentation import DEFAULT_PIXEL_SIZE_UM

    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    counts = run.get("counts", {})
    parts.append(f"<p class='muted'>Run finished {e(str(run.get('finished', '')))}; images analysed now: "
                 f"{counts.get('done', 0)}, from earlier runs: {counts.get('skipped', 0)}, failed: "
                 f"{counts.get('error', 0)}.</p>")
    parts.append("<h2>Summary per sample</h2>")
    parts.append(summary_table_html(samples, class_names, normal_class))
    parts.append(f"<p class='muted'>Intervals are 95% Wilson score intervals. WHO recommends assessing at least "
                 f"{WHO_MIN_HEADS} spermatozoa per sample. Uncertain heads (top probability below "
                 f"{_fmt(run.get('settings', {}).get('min_confidence', 0.6), 2)}) are counted in their most "
                 "likely class and listed below for review.</p>")
    chart = class_distribution_png(samples, class_names)
    if chart is not None:
        parts.append("<h2>Class distribution</h2>")
        parts.append(f'<img alt="class distribution" src="{data_uri(chart)}">')
    parts.append("<h2>Model and settings</h2><table>")
    px_text = (f"{pixel_size_um:g} &micro;m/px (given)" if pixel_size_um else
               f"not given: segmentation assumed {DEFAULT_PIXEL_SIZE_UM:g} &micro;m/px; morphometry in pixels")
    settings = run.get("settings", {})
    versions = run.get("versions", {})
    rows = [("model", e(str(model.get("name")))), ("model version", e(str(model.get("version")))),
            ("model sha256", f"<code>{e(str(model.get('sha256')))}</code>"),
            ("classes", e(", ".join(model.get("class_names", [])))), ("backbone", e(str(model.get("backbone")))),
            ("input size", e(str(model.get("input_size")))), ("pixel size", px_text),
            ("test-time augmentation", f"{int(settings.get('tta', 1))} view(s)"),
            ("software", e(", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform")))]
    parts.extend(f'<tr><th class="l">{e(k)}</th><td class="l">{v}</td></tr>' for k, v in rows)
    parts.append("</table>")
    if thumbnails:
        parts.append(f"<h2>Uncertain heads ({len(thumbnails)} least confident)</h2>")
        parts.append("<p class='muted'>Each head with its Grad-CAM++ map (where the model looked for its "
                     "decision) when available.</p><div class='thumbs'>")
        parts.extend(_thumb_html(t) for t in thumbnails)
        parts.append("</div>")
    if errors is not None and len(errors):
        parts.append(f"<h2>Failed images ({len(errors)})</h2><table><tr><th class='l'>image</th>"
                     "<th class='l'>reason</th></tr>")
        parts.extend(f"<tr><td class='l'>{e(str(r['image']))}</td><td class='l'>{e(str(r['reason']))}</td></tr>"
                     for _, r in errors.iterrows())
        parts.append("</table>")
    parts.append("<p class='muted'>Settings and software versions to repeat this run are in "
                 "<code>run.json</code>; per-head results in <code>*.heads.csv</code>.</p></body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, **kwargs) -> Path:
    """Render and write atomically (see ``render_report`` for the arguments)."""
    from .files import atomic_write

    path = Path(path)
    text = render_report(**kwargs)
    atomic_write(path, lambda t: Path(t).write_text(text, encoding="utf-8"), force=True)
    return path
