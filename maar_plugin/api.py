"""The Python API: complete verification of a torch module in memory, no file written or read.

``verify(model, spec)`` decides one :class:`~maar_plugin.verification.spec.VerificationSpec`;
``certify(model, inputs, labels, eps)`` decides the L∞ robustness of many points and counts clean,
certified, falsified and open ones. Both run the cascade of ``maar verify`` (centre point, IBP, CROWN, PGD,
alpha-CROWN, branch and bound) with its :class:`~maar_plugin.verification.options.VerifyOptions`, on the CPU or
a GPU as ``options.device`` says, on the module converted straight into the verifier's layer graph
(:mod:`~maar_plugin.verification.network.module_import`). Every counterexample is confirmed on the module
itself: its output there lies in the unsafe region, exactly (no tolerance).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from maar_plugin.certification import CertifiedAccuracy, accuracy_from_results, accuracy_table
from maar_plugin.errors import MaarError
from maar_plugin.verification.network.module_import import module_graph
from maar_plugin.verification.network.runtime import TorchModuleModel
from maar_plugin.verification.options import VerifyOptions
from maar_plugin.verification.result import InstanceResult, Verdict
from maar_plugin.verification.run.cascade import guarded, verify_cases
from maar_plugin.verification.run.models import LoadedModel, load_model
from maar_plugin.verification.spec import VerificationSpec


@dataclass(frozen=True)
class VerificationResult:
    """The verdict on one spec: ``unsat`` (the property holds), ``sat`` (``counterexample`` violates it),
    ``unknown``, ``timeout`` or ``error`` (see ``details.message``).

    ``counterexample``: an input in the box, of the model's input shape and dtype, whose ``output`` (the
    model's, flat) lies in the unsafe region; None unless ``sat``. ``details``: the cascade's record (stage
    that decided, seconds per stage, unstable ReLUs, message, traceback), as ``maar verify`` logs it.
    """

    verdict: Verdict
    counterexample: Tensor | None
    output: Tensor | None
    details: InstanceResult

    @property
    def stage(self) -> str | None:
        return self.details.stage

    @property
    def seconds(self) -> float:
        return self.details.seconds


@dataclass(frozen=True)
class Certification:
    """What :func:`certify` found for each point, in order, and the accuracies in percent.

    ``clean_accuracy``: the model classifies the point itself correctly; ``certified_accuracy``: its ε-ball
    is proved (``unsat``), the true certified accuracy when ``open`` is 0. ``accuracy`` is the row of
    ``maar certify``'s table (the certified columns cumulative along the cascade's stages).
    """

    results: list[VerificationResult]
    accuracy: CertifiedAccuracy

    @property
    def verdicts(self) -> list[str]:
        return [result.verdict for result in self.results]

    @property
    def clean_accuracy(self) -> float:
        assert self.accuracy.clean is not None   # always computed by certify
        return self.accuracy.clean

    @property
    def certified_accuracy(self) -> float:
        return self.accuracy.complete

    @property
    def falsified(self) -> int:
        return self.accuracy.falsified

    @property
    def open(self) -> int:
        return self.accuracy.open

    def table(self) -> str:
        """The accuracies as ``maar certify`` prints them."""
        return accuracy_table([self.accuracy])


def verify(model: nn.Module, spec: VerificationSpec, options: VerifyOptions | None = None,
           timeout: float | None = None) -> VerificationResult:
    """Decide ``spec`` for ``model`` (an ``nn.Sequential`` classifier) with the cascade of ``maar verify``;
    ``timeout`` (seconds) overrides ``options.timeout``. An unsupported model or a spec of the wrong shape is
    a one-line MaarError; a failure inside the cascade is the verdict ``error``."""
    options = options or VerifyOptions()
    with _evaluating(model):
        loaded = _loaded(model, spec.input_shape, options)
        return _decide(loaded, spec, options, timeout, "spec")


def certify(model: nn.Module, inputs: Tensor, labels: Tensor, eps: float, options: VerifyOptions | None = None,
            domain: tuple[float, float] | None = (0.0, 1.0), timeout: float | None = None) -> Certification:
    """Decide the L∞ robustness at radius ``eps`` of each of ``inputs`` [N, *input_shape] with its ``labels``
    [N] (:meth:`VerificationSpec.robustness`, balls clipped to ``domain``), ``timeout`` (default
    ``options.timeout``) seconds each; the model is converted once."""
    options = options or VerifyOptions()
    inputs, labels = torch.as_tensor(inputs), torch.as_tensor(labels).reshape(-1)
    if inputs.dim() < 2 or len(inputs) != len(labels) or len(inputs) == 0:
        raise MaarError(f"inputs must be [N, ...] with N > 0 and labels [N], got {tuple(inputs.shape)} and "
                        f"{tuple(labels.shape)}")
    with _evaluating(model):
        loaded = _loaded(model, tuple(inputs.shape[1:]), options)
        num_classes = loaded.graph.num_outputs
        results = []
        for index, (point, label) in enumerate(zip(inputs, labels.tolist())):
            spec = VerificationSpec.robustness(point, int(label), eps, num_classes, domain)
            results.append(_decide(loaded, spec, options, timeout, f"point{index:05d}"))
        reference = loaded.runtime
        assert isinstance(reference, TorchModuleModel)
        with torch.no_grad():
            predictions = model(inputs.to(reference.device, reference.dtype)).argmax(dim=1).cpu()
    accuracy = accuracy_from_results("model", float(eps), [result.details for result in results])
    clean = 100.0 * float((predictions == labels.cpu()).double().mean())
    return Certification(results, dataclasses.replace(accuracy, clean=clean))


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (BatchNorm's running statistics, no dropout), its mode restored after."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _loaded(model: nn.Module, input_shape: tuple[int, ...], options: VerifyOptions) -> LoadedModel:
    graph = module_graph(model, input_shape)
    return load_model(graph, options, type(model).__name__, TorchModuleModel(model, input_shape))


def _decide(loaded: LoadedModel, spec: VerificationSpec, options: VerifyOptions, timeout: float | None,
            name: str) -> VerificationResult:
    graph = loaded.graph
    if spec.input_shape != graph.example_shape or spec.num_outputs != graph.num_outputs:
        raise MaarError(f"the spec is for inputs {spec.input_shape} and {spec.num_outputs} outputs; the model "
                        f"takes {graph.example_shape} and gives {graph.num_outputs}")
    started = time.monotonic()
    record = InstanceResult(name, "", "", verdict="unknown", timeout=options.timeout if timeout is None else timeout)
    record = guarded(lambda: verify_cases(loaded, [spec.to_property()], options, record, started), record, started)
    counterexample = output = None
    if record.verdict == "sat" and record.counterexample is not None:
        reference = loaded.runtime
        assert isinstance(reference, TorchModuleModel)
        x, y = record.counterexample
        counterexample = reference.input_tensor(x)[0]
        output = torch.as_tensor(np.asarray(y), dtype=reference.dtype)
    return VerificationResult(record.verdict, counterexample, output, record)
