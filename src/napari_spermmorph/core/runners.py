"""Fast CPU stand-ins for a classifier network: ONNX Runtime, else a frozen TorchScript graph, else the network.

On these 2-core CPUs ONNX Runtime runs EfficientNet-Lite faster than TorchScript (both timed by
``benchmarks/bench_inference.py``), which is what lets seed ensembles and TTA stay within a field's time budget.
A runner takes and returns torch tensors like the network, so ``predict_logits`` does not care which one it got.
Grad-CAM++ keeps using the network itself: it needs hooks on real modules.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn


class OrtRunner:
    """An ONNX Runtime session behind the network's call signature: (N, 3, S, S) tensor -> (N, K) logits."""

    kind = "onnxruntime"

    def __init__(self, model: nn.Module, input_size: int, threads: int):
        import onnxruntime as ort

        example = torch.rand(2, 3, input_size, input_size)
        buf = io.BytesIO()
        with torch.inference_mode(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation notices
            torch.onnx.export(model.eval(), (example,), buf, input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().contiguous().cpu().numpy()  # NCHW, dense (callers may pass channels_last)
        return torch.from_numpy(self.session.run(None, {"x": arr})[0])


def torchscript_runner(model: nn.Module, input_size: int) -> nn.Module:
    """A frozen, fused TorchScript graph of the network (about 1.3x faster than eager on CPU)."""
    example = torch.rand(2, 3, input_size, input_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still fast here
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def cpu_runner(model: nn.Module, input_size: int, threads: int | None = None):
    """The fastest stand-in that builds: ONNX Runtime, then TorchScript, then the eager network itself."""
    threads = torch.get_num_threads() if threads is None else threads
    try:
        return OrtRunner(model, input_size, threads)
    except Exception:  # noqa: BLE001 - onnxruntime missing or an op it cannot export: fall back
        pass
    try:
        return torchscript_runner(model, input_size)
    except Exception:  # noqa: BLE001 - any tracing problem: stay eager, never fail to classify
        return model


def runner_kind(runner) -> str:
    """'onnxruntime', 'torchscript' or 'eager': for benchmark reports."""
    if isinstance(runner, OrtRunner):
        return runner.kind
    return "torchscript" if isinstance(runner, torch.jit.ScriptModule) else "eager"
