"""The HTML report is one self-contained file holding the summary, the chart, thumbnails and the model."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
from PIL import Image

from napari_spermmorph.core.report import class_distribution_png, render_report, write_report

CLASSES = ["normal", "tapered"]
SHA = "ab" * 32


def _samples() -> pd.DataFrame:
    return pd.DataFrame([
        {"sample": "donor <1>", "n_images": 2, "n_failed": 0, "n_heads": 33, "n_normal": 31, "n_tapered": 2,
         "percent_normal": 100 * 31 / 33, "ci95_low": 80.39, "ci95_high": 98.32, "n_uncertain": 1,
         "warning": "Only 33 heads assessed; WHO recommends at least 200 per sample."},
        {"sample": "donor2", "n_images": 5, "n_failed": 1, "n_heads": 250, "n_normal": 10, "n_tapered": 240,
         "percent_normal": 4.0, "ci95_low": 2.2, "ci95_high": 7.2, "n_uncertain": 0, "warning": ""},
    ])


def _render(**over) -> str:
    rng = np.random.default_rng(0)
    thumbs = [{"image": "f0", "label": 3, "class": "tapered", "confidence": 0.41,
               "crop": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
               "heatmap": rng.integers(0, 255, (64, 64), dtype=np.uint8)}]
    kw = dict(samples=_samples(), class_names=CLASSES, normal_class="normal",
              model={"name": "tiny", "version": "0.1.0", "sha256": SHA, "class_names": CLASSES,
                     "backbone": "tf_efficientnet_lite0", "input_size": 64},
              pixel_size_um=0.046, run={"finished": "now", "counts": {"done": 6, "skipped": 1, "error": 1},
                                        "settings": {"tta": 1, "min_confidence": 0.6},
                                        "versions": {"python": "3.11", "torch": "2.x"}},
              errors=pd.DataFrame({"image": ["bad.png"], "sample": ["donor2"], "reason": ["unreadable image"]}),
              thumbnails=thumbs)
    kw.update(over)
    return render_report(**kw)


def test_report_holds_summary_model_and_inline_images():
    text = _render()
    assert "donor &lt;1&gt;" in text and "donor <1>" not in text  # escaped
    assert "93.9 (80.4&ndash;98.3)" in text and "4.0 (2.2&ndash;7.2)" in text
    assert "WHO recommends at least 200" in text
    assert SHA in text and "tiny" in text and "0.046" in text and "bad.png" in text
    # self-contained: no external resources
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(uris) == 3  # chart + crop + crop with heatmap
    for u in uris:
        with Image.open(io.BytesIO(base64.b64decode(u))) as im:
            assert im.format == "PNG" and im.size[0] > 0


def test_report_without_pixel_size_or_heads():
    empty = _samples().iloc[:0]
    text = _render(samples=empty, pixel_size_um=None, thumbnails=[], errors=None)
    assert "not given" in text and "Class distribution" not in text
    assert class_distribution_png(empty, CLASSES) is None


def test_chart_is_a_png_and_report_is_written(tmp_path):
    png = class_distribution_png(_samples(), CLASSES)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    path = write_report(tmp_path / "report.html", **_kwargs())
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def _kwargs() -> dict:
    return dict(samples=_samples(), class_names=CLASSES, normal_class="normal",
                model={"name": "tiny", "sha256": SHA}, pixel_size_um=None, run={})
