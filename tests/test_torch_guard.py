"""The triton guard: a real napari canvas under software OpenGL, then timm/torchvision, in a fresh process."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import numpy as np, napari
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.rand(32, 32))
    import napari_spermmorph._widgets  # the guard runs here, as when napari opens one of our widgets
    from napari_spermmorph.core.models import ModelSpec, build_model
    import torch
    net = build_model(ModelSpec(num_classes=2, input_size=32), pretrained=False).eval()
    print(tuple(net(torch.rand(1, 3, 32, 32)).shape))
    viewer.close()
""")


@pytest.mark.gui
def test_widgets_can_import_torch_after_the_canvas_exists():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(1, 2)" in out.stdout
