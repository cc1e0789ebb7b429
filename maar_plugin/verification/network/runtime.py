"""The network as deployed, which every counterexample must violate the property on: the original ONNX file
run by onnxruntime, or the user's torch module (the Python API)."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime
import torch
from torch import nn

from maar_plugin.errors import MaarError
from maar_plugin.vnnlib.property import VnnlibProperty


class ReferenceModel(Protocol):
    """The network as deployed: what a counterexample must violate the property on."""

    def outputs(self, flat_input: np.ndarray) -> np.ndarray:
        """Flat float64 outputs for one flat input."""


class OnnxRuntimeModel:
    """The ONNX file run by onnxruntime in float32: the reference every ``sat`` verdict must pass."""

    def __init__(self, path: str | Path) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for bad models
            raise MaarError(f"{path}: onnxruntime cannot load the model ({type(error).__name__})") from None
        (self.input,) = self.session.get_inputs()
        self.input_shape = [d if isinstance(d, int) and d > 0 else 1 for d in self.input.shape]

    def outputs(self, flat_input: np.ndarray) -> np.ndarray:
        """Flat float64 outputs for one flat input (cast to float32 like the deployed network)."""
        x = np.asarray(flat_input, dtype=np.float32).reshape(self.input_shape)
        return np.asarray(self.session.run(None, {self.input.name: x})[0], dtype=np.float64).reshape(-1)


class TorchModuleModel:
    """A torch module run as it is (its device and dtype, eval mode): the reference of the Python API."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model, self.input_shape = model, tuple(input_shape)
        first = next(iter([*model.parameters(), *model.buffers()]), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32

    def input_tensor(self, flat_input: np.ndarray) -> torch.Tensor:
        """One flat input as the module's input [1, *input_shape], in its dtype (float32: rounded like ONNX)."""
        return torch.as_tensor(np.asarray(flat_input, dtype=np.float64)).to(self.dtype).reshape(1, *self.input_shape)

    def outputs(self, flat_input: np.ndarray) -> np.ndarray:
        """Flat float64 outputs for one flat input."""
        with torch.no_grad():
            y = self.model(self.input_tensor(flat_input).to(self.device))
        return y.detach().double().cpu().numpy().reshape(-1)


def confirmed_counterexample(runtime: ReferenceModel, prop: VnnlibProperty,
                             candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, y) if the candidate, clipped to the box, violates the property on onnxruntime's outputs.

    The network's value at a real point x is onnxruntime's output for float32(x), as in the VNN-COMP
    checker, which reads the X values of the result file and feeds them to the ONNX model as float32.
    The check is strict (no tolerance): a reported counterexample reproduces exactly.
    """
    x = np.clip(np.asarray(candidate, dtype=np.float64), prop.input_lower, prop.input_upper)
    y = runtime.outputs(x)
    return (x, y) if prop.violated_by(y) else None
