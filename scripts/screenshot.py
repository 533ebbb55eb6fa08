"""Save a screenshot of the whole napari window with the sample field and the plugin's dock widgets.

Needs a real (virtual) display and OpenGL, e.g.:
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py
Each widget is added on its own, so the script still works while some widgets are missing or broken.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "napari-spermmorph"
DEFAULT_WIDGETS = ("Segment and crop heads", "Classify and explain", "Results table")


def _settle(app, rounds: int = 20) -> None:
    """Let Qt lay out and paint before grabbing."""
    for _ in range(rounds):
        app.processEvents()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "napari-overview.png")
    parser.add_argument("--sample", default="field", help="sample key of the plugin to open")
    parser.add_argument(
        "--widgets", nargs="*", default=list(DEFAULT_WIDGETS), help="dock widget display names"
    )
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 950), metavar=("W", "H"))
    parser.add_argument("--run", action="store_true",
                        help="run segmentation and classification + Grad-CAM++ before the screenshot")
    args = parser.parse_args(argv)

    if os.environ.get("QT_QPA_PLATFORM") == "offscreen" and not os.environ.get("DISPLAY"):
        print("no display: run under xvfb-run (offscreen Qt has no OpenGL context)", file=sys.stderr)
        return 2

    import napari
    import torch  # noqa: F401 - before the OpenGL canvas exists (see _widgets/_torch_guard.py)
    from napari._qt import qt_main_window
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    # napari shows a PyQt5 deprecation toast over the canvas; napari's test fixture turns it off the same way.
    qt_main_window.SHOW_QT_WARNING = False

    viewer = napari.Viewer(title="napari-spermmorph", show=True)
    viewer.window.resize(*args.size)
    viewer.open_sample(PLUGIN, args.sample)

    added, docks = [], []
    for name in args.widgets:
        try:
            dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=bool(added))
        except Exception as exc:  # a widget that is missing or fails must not stop the screenshot
            print(f"skipped widget {name!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        added.append(name)
        docks.append(dock)
    if docks:
        docks[0].raise_()  # show the first widget's tab, not the last one added

    app = QApplication.instance()
    if args.run:
        _run_pipeline(viewer, dict(zip(added, docks)))
    _settle(app)
    viewer.reset_view()
    _settle(app)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rgba = viewer.screenshot(canvas_only=False)
    # Drop the (opaque) alpha channel and optimise: the PNG goes into the repository.
    Image.fromarray(rgba[..., :3]).save(args.out, optimize=True)
    print(f"wrote {args.out} with widgets {added}")
    viewer.close()
    return 0


def _run_pipeline(viewer, docks: dict) -> None:
    """Drive the widgets as a user would (synchronously): segment, then classify and explain."""
    seg = docks["Segment and crop heads"].widget()
    clf = docks["Classify and explain"].widget()
    image = viewer.layers[0]
    seg.run(image_layer=image, use_thread=False)
    heads = next(layer for layer in viewer.layers if layer.name.endswith(" heads"))
    clf.set_layers(image, heads)
    clf.run(use_thread=False)
    for layer in [lyr for lyr in viewer.layers if lyr.name.endswith("head crops")]:
        viewer.layers.remove(layer)  # a stack would add a slider and shift the view; the widget test covers it
    docks["Classify and explain"].raise_()


if __name__ == "__main__":
    sys.exit(main())
