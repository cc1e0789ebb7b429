"""The one gateway to auto_LiRPA, for training and verification alike.

Importing this module applies the compatibility patches (:mod:`~maar_plugin.bounds.lirpa_compat`) and
then imports auto_LiRPA; nothing else in the package imports auto_LiRPA. No auto_LiRPA, or one of a
version the plugin does not know, is a one-line :class:`~maar_plugin.errors.MaarError` saying how to
install one. ``METHODS`` names the bound methods in the field's words and maps them to auto_LiRPA's.

:class:`LirpaBounds` wraps one ``BoundedModule`` built once per model. It shares the model's parameters,
so bounds are differentiable with respect to them (certified training back-propagates through them),
and follows the model's train/eval mode on every call: with BatchNorm in train mode the batch
statistics of the box centres are used, as in the clean forward pass; in eval mode the model's current
running statistics are copied in first (the ``BoundedModule`` keeps its own copies of buffers). Each call
runs one forward pass of the box centres before bounding, as auto_LiRPA's own training examples do.

A leading ``Normalize`` stays out of the bounded graph: its per-channel map ``(x - mean) / std`` (std > 0)
takes the input box exactly onto a box, so the rest of the model is bounded over the normalised box. The
bounds are the same; auto_LiRPA then meets neither per-channel Sub/Div (which its "patches" mode cannot
carry CROWN bounds through) nor a stand-in 1x1 convolution (whose CROWN pass, a transposed convolution of
every specification row at input resolution, made an MLP's CROWN-IBP step 3x slower on the CPU).
"""
from __future__ import annotations

import inspect
import io
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, redirect_stdout
from pathlib import Path

from maar_plugin.bounds import lirpa_compat

lirpa_compat.require()  # MaarError (one line) without a usable auto_LiRPA; patches it before it is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm  # noqa: E402
from auto_LiRPA.operators import BoundRelu, BoundSigmoid, BoundTanh  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from maar_plugin.errors import MaarError  # noqa: E402
from maar_plugin.models.normalize import Normalize  # noqa: E402

METHODS = {"IBP": "IBP", "CROWN-IBP": "CROWN-IBP", "CROWN": "backward", "alpha-CROWN": "CROWN-Optimized"}
# compute_bounds' keyword for given intermediate bounds: auto_LiRPA 0.3 and 0.7 spell it differently.
_INTERMEDIATE_KEYWORD = next(name for name in ("interm_bounds", "intermediate_layer_bounds")
                             if name in inspect.signature(BoundedModule.compute_bounds).parameters)

IntermediateBounds = dict[str, list[Tensor]]
ACTIVATION_NODES = (BoundRelu, BoundSigmoid, BoundTanh)   # whose input bounds the bound passes keep


class LirpaBounds:
    """Bounds of a model's specification rows over input boxes by one of ``METHODS``.

    ``example_input`` only fixes the per-example shape; its batch size may differ from later calls.
    Build it before a step's forward pass: auto_LiRPA reloads the parameters in place while building.
    alpha-CROWN optimises the ReLU slopes of the final bound for ``alpha_iterations`` Adam steps of
    rate ``alpha_lr`` (Xu et al. 2021). ``options`` adds auto_LiRPA ``bound_opts``.
    """

    def __init__(self, model: nn.Module, example_input: Tensor, alpha_iterations: int = 20, alpha_lr: float = 0.5,
                 options: dict | None = None) -> None:
        self.model = model
        self.normalize, bounded_part = split_leading_normalize(model)
        bound_opts = {"optimize_bound_args": {"iteration": alpha_iterations, "lr_alpha": alpha_lr}, "verbosity": 0,
                      **(options or {})}
        # Built in eval mode, so that BatchNorm accepts a one-example input and keeps its running statistics.
        was_training = model.training
        model.eval()
        try:
            with _parameters_kept_trainable(model):
                self.bounded = BoundedModule(bounded_part, self.normalize(example_input.detach()),
                                             bound_opts=bound_opts, device=example_input.device)
        except MaarError:
            raise
        except Exception as error:  # auto_LiRPA's tracer raises many kinds for models it cannot take
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise MaarError(f"auto_LiRPA cannot trace the network ({type(error).__name__}: {first_line})") from error
        finally:
            model.train(was_training)
        model_buffers = dict(model.named_buffers())
        self._buffer_nodes = [
            node for node in self.bounded._modules.values() if getattr(node, "ori_name", None) in model_buffers
        ]
        self.activations = [node for node in self.bounded._modules.values() if isinstance(node, ACTIVATION_NODES)]

    def bounds(self, lower: Tensor, upper: Tensor, spec: Tensor | None, method: str, bound_upper: bool = True,
               intermediate: IntermediateBounds | None = None, deadline: float | None = None,
               enough: Tensor | None = None, iterations: int | None = None) -> tuple[Tensor, Tensor | None]:
        """(lower, upper) bounds of ``spec @ logits`` [B, S] (or of the logits when ``spec`` is None).

        A spec with batch dimension 1 is shared by all examples. The upper bound is None when ``bound_upper``
        is False (CROWN methods then skip half the work). ``intermediate`` (from :meth:`intermediate_bounds`
        of an earlier call on the same boxes) fixes every ReLU's input bounds instead of computing them.
        alpha-CROWN stops optimising after the step during which ``time.monotonic()`` passed ``deadline``, or
        once every lower bound exceeds ``enough`` (broadcast to [B, S]); it returns the best bounds so far,
        which are as sound as the last step's. ``iterations`` overrides ``alpha_iterations`` for this call.
        """
        if method not in METHODS:
            raise MaarError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")
        caller_wants_grad = torch.is_grad_enabled()
        given = {_INTERMEDIATE_KEYWORD: intermediate} if intermediate is not None else {}
        # alpha-CROWN optimises its slopes by gradient descent, also when the caller disabled gradients.
        optimised = method == "alpha-CROWN"
        with (_parameters_kept_trainable(self.model), torch.set_grad_enabled(caller_wants_grad or optimised),
              self._optimisation_stopped_by(deadline, enough, iterations) if optimised else nullcontext()):
            lower_bound, upper_bound = self.bounded.compute_bounds(
                x=self._forward_centre(lower, upper), C=_batched(spec, lower), method=METHODS[method],
                bound_upper=bound_upper or method == "IBP", **given)
        if not caller_wants_grad:
            lower_bound = lower_bound.detach()
            upper_bound = upper_bound.detach() if bound_upper else None
        return lower_bound, (upper_bound if bound_upper else None)

    @contextmanager
    def _optimisation_stopped_by(self, deadline: float | None, enough: Tensor | None,
                                 iterations: int | None = None) -> Iterator[None]:
        """Installs auto_LiRPA's ``stop_criterion_func`` for one optimised call: a True per example ends the
        Adam loop (both versions), False goes on. auto_LiRPA prints a line when it stops.
        ``iterations`` (both versions read it at every call) replaces the step count for the call."""
        if deadline is None and enough is None and iterations is None:
            yield
            return
        arguments = self.bounded.bound_opts["optimize_bound_args"]
        default: Callable = arguments.get("stop_criterion_func", _never)
        default_iterations = arguments["iteration"]
        if iterations is not None:
            arguments["iteration"] = iterations

        def stop(lower: Tensor) -> Tensor | bool:
            if (deadline is not None and time.monotonic() > deadline) or \
                    (enough is not None and bool((lower > enough.to(lower)).all())):
                # one flag per example, the shape of auto_LiRPA's loss ([B, 1]: 0.7 asserts it, 0.3 broadcasts)
                return torch.ones(lower.shape[0], 1, dtype=torch.bool, device=lower.device)
            return False

        arguments["stop_criterion_func"] = stop
        try:
            with redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                yield
        finally:
            arguments["stop_criterion_func"] = default
            arguments["iteration"] = default_iterations

    def ibp_and_crown_ibp_lower(self, lower: Tensor, upper: Tensor, spec: Tensor, crown_spec: Tensor | None = None
                                ) -> tuple[Tensor, Tensor]:
        """IBP lower bounds of ``spec`` rows and CROWN-IBP lower bounds of ``crown_spec`` rows (default: the
        same rows) from one IBP pass: CROWN-IBP's intermediate bounds are IBP's (Zhang et al. 2020)."""
        crown_spec = spec if crown_spec is None else crown_spec
        with _parameters_kept_trainable(self.model):
            bounded_input = self._forward_centre(lower, upper)
            ibp_lower, _ = self.bounded.compute_bounds(x=bounded_input, C=_batched(spec, lower), method="IBP")
            crown_ibp_lower, _ = self.bounded.compute_bounds(C=_batched(crown_spec, lower), IBP=False,
                                                             method="backward", bound_upper=False)
        return ibp_lower, crown_ibp_lower

    def intermediate_bounds(self) -> IntermediateBounds:
        """Every activation's (ReLU, Sigmoid, Tanh) input bounds from the last call, keyed by auto_LiRPA node
        name, to pass back later."""
        return {node.inputs[0].name: [node.inputs[0].lower.detach().clone(), node.inputs[0].upper.detach().clone()]
                for node in self.activations}

    def activation_input_bounds(self) -> list[tuple[Tensor, Tensor]]:
        """Per activation, in the graph's order, (lower, upper) of its input [B, *shape] from the last call."""
        return [(node.inputs[0].lower.detach(), node.inputs[0].upper.detach()) for node in self.activations]

    def activation_kinds(self) -> list[tuple[str, tuple[int, ...]]]:
        """(``relu``, ``sigmoid`` or ``tanh``, per-example output shape) of every activation auto_LiRPA sees,
        in the graph's order."""
        names = {BoundRelu: "relu", BoundSigmoid: "sigmoid", BoundTanh: "tanh"}
        return [(names[type(node)], tuple(node.output_shape[1:])) for node in self.activations]

    def _forward_centre(self, lower: Tensor, upper: Tensor) -> tuple[BoundedTensor]:
        """The box as auto_LiRPA's input (centre + perturbation), after the forward pass bounds start from.

        The forward pass is what sets train-mode BatchNorm's batch statistics (those of the centres);
        mode and buffers are synced with the model first.
        """
        if lower.shape != upper.shape:
            raise MaarError(f"box bounds differ in shape: {tuple(lower.shape)} vs {tuple(upper.shape)}")
        self.bounded.train(self.model.training)
        if not self.model.training:
            model_buffers = dict(self.model.named_buffers())
            with torch.no_grad():
                for node in self._buffer_nodes:
                    node.buffer.copy_(model_buffers[node.ori_name])
        lower, upper = self.normalize(lower), self.normalize(upper)
        perturbation = PerturbationLpNorm(norm=np.inf, x_L=lower, x_U=upper)
        bounded_input = (BoundedTensor((lower + upper) / 2, perturbation),)
        self.bounded(*bounded_input)
        return bounded_input


def _never(_: Tensor) -> bool:
    return False


def failed_inside_lirpa(error: BaseException) -> bool:
    """Whether ``error`` comes from auto_LiRPA's own code (a limitation of auto_LiRPA on a network, not a bug
    of ours): of the frames of its traceback in auto_LiRPA's package or in this one, the innermost is
    auto_LiRPA's (frames of torch, numpy or the standard library in between do not count)."""
    import auto_LiRPA

    lirpa_package = Path(auto_LiRPA.__file__).resolve().parent
    own_package = Path(__file__).resolve().parent.parent
    frames = [Path(frame.filename).resolve() for frame in traceback.extract_tb(error.__traceback__)]
    relevant = [path for path in frames if path.is_relative_to(lirpa_package) or path.is_relative_to(own_package)]
    return bool(relevant) and relevant[-1].is_relative_to(lirpa_package)


def split_leading_normalize(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the model's leading ``Normalize``, the rest of it) for ``Sequential(Normalize, ...)``; else
    (identity, model). The rest shares the model's modules and keeps their names, so parameters,
    gradients and BatchNorm buffers stay the model's own."""
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[0], Normalize):
        return model[0], model[1:]
    return nn.Identity(), model


def _batched(spec: Tensor | None, inputs: Tensor) -> Tensor | None:
    """The spec with one copy per example, as auto_LiRPA wants it."""
    return None if spec is None else spec.expand(inputs.shape[0], -1, -1)


@contextmanager
def _parameters_kept_trainable(model: nn.Module) -> Iterator[None]:
    """Restore each parameter's ``requires_grad`` afterwards: auto_LiRPA 0.3 clears it in eval mode."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
