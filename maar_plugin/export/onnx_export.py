"""Export a classifier to ONNX for verifiers, and check the file computes what the torch model computes."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from maar_plugin.atomic import atomic_write_bytes
from maar_plugin.errors import MaarError
from maar_plugin.export.batchnorm import fold_batchnorm
from maar_plugin.models import Normalize

OPSET = 13  # Conv, Gemm, Relu, Flatten: supported by onnx2pytorch/onnx2torch and every VNN-COMP tool
INPUT_NAME, OUTPUT_NAME = "input", "output"
TOLERANCE = 1e-4


@dataclass(frozen=True)
class OnnxCheck:
    """Largest absolute logit difference between the torch model and the ONNX file, per runtime."""

    onnxruntime: float
    onnx2torch: float
    images: int


def normalization_as_conv(layer: Normalize) -> nn.Conv2d:
    """``(x - mean) / std`` as the depthwise 1x1 convolution ``x / std - mean / std``.

    Why not Sub/Div: α,β-CROWN (auto_LiRPA 0.7.1, default ``conv_mode: patches``) crashes in α-CROWN's
    intermediate bounds ("size of tensor a (1568) must match the size of tensor b (14)") when an
    elementwise Sub/Div or Mul/Add precedes padded convolutions; a 1x1 Conv there works.
    """
    std, mean = layer.std.detach().flatten(), layer.mean.detach().flatten()
    conv = nn.Conv2d(len(std), len(std), kernel_size=1, groups=len(std))
    assert conv.bias is not None  # Conv2d has a bias by default
    with torch.no_grad():
        conv.weight.copy_((1.0 / std).view(-1, 1, 1, 1))
        conv.bias.copy_(-mean / std)
    return conv


def exportable(model: nn.Sequential) -> nn.Sequential:
    """The eval-mode model as verifiers want it: BatchNorm folded, Normalize as a 1x1 convolution."""
    folded = fold_batchnorm(model).cpu()
    return nn.Sequential(*(normalization_as_conv(m) if isinstance(m, Normalize) else m for m in folded)).eval()


def onnx_bytes(model: nn.Sequential, input_shape: tuple[int, ...], metadata: dict[str, str]) -> bytes:
    """The model (see ``exportable``) as an ONNX graph with input ``[1, *input_shape]``.

    Normalisation stays inside the graph, so the input is in pixel space like the VNN-LIB boxes.
    """
    prepared = exportable(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation on every call
        warnings.simplefilter("ignore")
        # torch's annotation of ``f`` omits the file objects that the TorchScript exporter writes to
        torch.onnx.export(prepared, (torch.zeros(1, *input_shape),), buffer,  # type: ignore[arg-type]
                          input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, do_constant_folding=True, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(graph, {key: str(value) for key, value in metadata.items()})
    onnx.checker.check_model(graph, full_check=True)
    return graph.SerializeToString()


def check_onnx(data: bytes, model: nn.Module, images: torch.Tensor, tolerance: float = TOLERANCE) -> OnnxCheck:
    """Run ``images`` [N, C, H, W] through onnxruntime and through onnx2torch's conversion of the file and
    compare with ``model`` in eval mode; MaarError if any logit differs by more than ``tolerance``."""
    import onnx2torch  # slow to import; only export needs it
    import onnxruntime

    model = model.eval().cpu()
    images = images.detach().cpu().float()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    converted = onnx2torch.convert(onnx.load_from_string(data)).eval()
    with torch.no_grad():
        expected = model(images).numpy()
        from_torch = np.concatenate([converted(image[None]).numpy() for image in images])
    from_runtime = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: image[None].numpy()})[0]
                                   for image in images])
    check = OnnxCheck(float(np.abs(from_runtime - expected).max()), float(np.abs(from_torch - expected).max()),
                      len(images))
    for runtime, difference in (("onnxruntime", check.onnxruntime), ("onnx2torch", check.onnx2torch)):
        if not difference <= tolerance:
            raise MaarError(f"ONNX export differs from the torch model through {runtime}: "
                            f"max |difference| {difference:.3g} > {tolerance:g}")
    return check


def export_onnx(path: str | Path, model: nn.Sequential, images: torch.Tensor, metadata: dict[str, str]) -> OnnxCheck:
    """Write ``model`` to ``path`` as ONNX (atomically) after checking it on ``images`` [N, C, H, W]."""
    data = onnx_bytes(model, tuple(images.shape[1:]), metadata)
    check = check_onnx(data, model, images)
    atomic_write_bytes(path, data)
    return check
