"""Keep torch's optional triton import from crashing napari under software OpenGL.

With Mesa's llvmpipe (Xvfb, remote desktops, VMs without a GPU) the OpenGL canvas loads Mesa's libLLVM; importing
triton afterwards (torchvision and timm import it through ``torch._dynamo``) loads a second LLVM and the process
segfaults. Torch runs without triton (it is only used to compile kernels, which this plugin never does), so when
libLLVM is already mapped and triton not yet imported, triton is marked unavailable for this process.
"""

from __future__ import annotations

import sys


def guard_triton() -> bool:
    """Block triton if a software-OpenGL LLVM is loaded; returns whether it was blocked."""
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    try:
        with open("/proc/self/maps") as fh:
            llvm_loaded = "libLLVM" in fh.read()
    except OSError:  # not Linux: no llvmpipe clash known
        return False
    if llvm_loaded:
        sys.modules["triton"] = None  # `import triton` now raises ImportError, which torch handles
    return llvm_loaded
