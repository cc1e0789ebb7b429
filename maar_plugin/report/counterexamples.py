"""Counterexamples on image inputs: clean image, adversarial image, their difference, and the labels.

The clean image is the centre of the VNN-LIB input box. ``maar export`` writes the box as the ε-ball
around the test image clipped to [0, 1], whose centre is off the image where the ball was clipped (a black
MNIST pixel with ε = 0.3 has the box [0, 0.3]); where the file's header gives ``eps`` (as ``maar export``
writes it), such pixels are taken back to the image they were cut from. The adversarial image is the X
assignment of the result file. The labels are the ONNX model's argmax at both points (onnxruntime) and the
property's target: the header's ``label``, or the class every unsafe case compares the others against.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maar_plugin.errors import MaarError
from maar_plugin.report.figures import png_bytes, pyplot
from maar_plugin.verification import InstanceResult
from maar_plugin.vnnlib import VnnlibProperty, read_vnnlib_cases

CHANNELS = (1, 3)


class OnnxClassifier:
    """An ONNX classifier run by onnxruntime in float32 on the CPU: its input shape and its argmax."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime

        if not Path(path).is_file():
            hint = "" if Path(path).is_absolute() else " (a relative path as the verify run recorded it: run the " \
                                                        "report in the folder the verification ran in)"
            raise MaarError(f"ONNX file {str(path)!r} not found{hint}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for bad models
            raise MaarError(f"{path}: onnxruntime cannot load the model ({type(error).__name__})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise MaarError(f"{path}: the model has {len(inputs)} inputs, a classifier has one")
        self.input_name = inputs[0].name
        self.input_shape = [d if isinstance(d, int) and d > 0 else 1 for d in inputs[0].shape]

    def predict(self, flat_input: np.ndarray) -> int:
        """The argmax of the outputs at one flat input (VNN-LIB's X order: the C-order flattened input)."""
        x = np.asarray(flat_input, dtype=np.float32).reshape(self.input_shape)
        return int(np.argmax(np.asarray(self.session.run(None, {self.input_name: x})[0]).reshape(-1)))


def image_shape(input_shape: list[int]) -> tuple[int, int, int] | None:
    """(channels, height, width) of an ONNX input shape ``[1, C, H, W]`` (or ``[1, H, W]``) with 1 or 3 channels;
    None for inputs that are not images (a flat vector, a sequence)."""
    dims = list(input_shape[1:]) if len(input_shape) in (3, 4) and input_shape[0] == 1 else list(input_shape)
    if len(dims) == 2:
        dims = [1, *dims]
    if len(dims) == 3 and dims[0] in CHANNELS and dims[1] > 1 and dims[2] > 1:
        return dims[0], dims[1], dims[2]
    return None


def clean_input(prop: VnnlibProperty) -> np.ndarray:
    """The point the input box was drawn around: its centre, except for coordinates whose ε-box (ε from the
    header's ``eps``) was clipped at 0 or 1, which are taken back to upper − ε or lower + ε."""
    lower, upper = prop.input_lower, prop.input_upper
    centre = (lower + upper) / 2
    try:
        eps = float(prop.comments.get("eps", ""))
    except ValueError:
        return centre
    if not 0 < eps < 0.5:
        return centre
    clipped = (upper - lower) / 2 < eps * (1 - 1e-5)
    clean = np.where(clipped & (lower <= 0) & (upper < 1), upper - eps, centre)
    clean = np.where(clipped & (upper >= 1) & (lower > 0), lower + eps, clean)
    return np.clip(clean, lower, upper)


def property_target(prop: VnnlibProperty) -> int | None:
    """The class a robustness property protects: the header's ``label``, else the one output that every unsafe
    case compares another output against (rows ``Y_t - Y_j <= 0``); None if there is no such class."""
    label = prop.comments.get("label", "").strip()
    if label.isdigit() and int(label) < prop.num_outputs:
        return int(label)
    common: set[int] | None = None
    for case in prop.unsafe:
        targets = set()
        for row in case.coefficients:
            nonzero = np.flatnonzero(row)
            if len(nonzero) == 2 and row[nonzero].sum() == 0:
                targets.add(int(nonzero[row[nonzero] > 0][0]))
        common = targets if common is None else common & targets
    return common.pop() if common and len(common) == 1 else None


@dataclass(frozen=True)
class CounterexampleView:
    """What the counterexample figure shows; images as (channels, height, width)."""

    instance: str
    clean: np.ndarray
    adversarial: np.ndarray
    clean_prediction: int
    adversarial_prediction: int
    target: int | None

    @property
    def difference(self) -> np.ndarray:
        return self.adversarial - self.clean


def counterexample_view(result: InstanceResult, classifier: OnnxClassifier | None = None) -> CounterexampleView | None:
    """The view of a ``sat`` result with its counterexample; None where the model's input is not an image.

    ``classifier`` is the result's ONNX model (loaded here if not given; pass it to share one session across
    the instances of a model). MaarError if the files are missing or do not match the counterexample.
    """
    if result.counterexample is None:
        raise MaarError(f"{result.instance}: no counterexample to show")
    classifier = classifier or OnnxClassifier(result.onnx)
    shape = image_shape(classifier.input_shape)
    if shape is None:
        return None
    adversarial = np.asarray(result.counterexample[0], dtype=np.float64)
    if adversarial.size != int(np.prod(shape)):
        raise MaarError(f"{result.instance}: the counterexample has {adversarial.size} inputs, the model "
                        f"{int(np.prod(shape))}")
    cases = read_vnnlib_cases(result.vnnlib, num_inputs=adversarial.size)
    inside = [case for case in cases
              if np.all(adversarial >= case.input_lower - 1e-6) and np.all(adversarial <= case.input_upper + 1e-6)]
    prop = (inside or cases)[0]
    clean = clean_input(prop)
    return CounterexampleView(result.instance, clean.reshape(shape), adversarial.reshape(shape),
                              classifier.predict(clean), classifier.predict(adversarial), property_target(prop))


def _shown(image: np.ndarray) -> np.ndarray:
    """(C, H, W) as matplotlib's (H, W) or (H, W, 3)."""
    return image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))


def plot_counterexample(view: CounterexampleView, title: str | None = None) -> bytes:
    """PNG: clean | adversarial | difference (mean over channels, colour map centred at 0 and scaled to the
    largest change, so small perturbations show), each titled with the label it stands for."""
    plt = pyplot()
    low = min(0.0, float(view.clean.min()), float(view.adversarial.min()))
    high = max(1.0, float(view.clean.max()), float(view.adversarial.max()))
    difference = view.difference.mean(axis=0)
    largest = float(np.abs(difference).max()) or 1.0
    target = "?" if view.target is None else str(view.target)
    figure, axes = plt.subplots(1, 3, figsize=(9.6, 3.6))
    for panel, image, heading in ((axes[0], view.clean, f"clean: predicted {view.clean_prediction}\n(target {target})"),
                                  (axes[1], view.adversarial, f"adversarial: predicted {view.adversarial_prediction}")):
        shown = (_shown(image) - low) / (high - low)
        panel.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        panel.set_title(heading, fontsize="medium")
    drawn = axes[2].imshow(difference, cmap="RdBu_r", vmin=-largest, vmax=largest, interpolation="nearest")
    axes[2].set_title(f"difference (max |δ| {float(np.abs(view.difference).max()):.3g})", fontsize="medium")
    figure.colorbar(drawn, ax=axes[2], fraction=0.046, pad=0.04)
    for panel in axes:
        panel.set_xticks([])
        panel.set_yticks([])
    figure.suptitle(title or view.instance, fontsize="medium")
    figure.tight_layout()
    return png_bytes(figure)
