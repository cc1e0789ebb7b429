"""Counterexamples judged on the original ONNX file with onnxruntime, and written in VNN-COMP format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from maar_plugin.errors import MaarError
from maar_plugin.vnnlib.property import VnnlibProperty


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


def confirmed_counterexample(runtime: OnnxRuntimeModel, prop: VnnlibProperty,
                             candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, y) if the candidate, clipped to the box, violates the property on onnxruntime's outputs.

    The network's value at a real point x is onnxruntime's output for float32(x), as in the VNN-COMP
    checker, which reads the X values of the result file and feeds them to the ONNX model as float32.
    The check is strict (no tolerance): a reported counterexample reproduces exactly.
    """
    x = np.clip(np.asarray(candidate, dtype=np.float64), prop.input_lower, prop.input_upper)
    y = runtime.outputs(x)
    return (x, y) if prop.violated_by(y) else None


def counterexample_text(x: np.ndarray, y: np.ndarray) -> str:
    """VNN-COMP result text: ``sat`` then ``((X_0 v) ... (Y_0 v) ...)``; X exact (float64), Y as float32."""
    entries = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.asarray(x, dtype=np.float64))]
    entries += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.asarray(y, dtype=np.float32))]
    return "sat\n(" + "\n ".join(entries) + ")\n"
