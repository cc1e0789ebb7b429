"""Make auto_LiRPA work on torch 2.x: the PyPI build (0.3) and α,β-CROWN's checkouts (0.4 to 0.7).

Which auto_LiRPA that is, is read from the module ``import auto_LiRPA`` loads, not from the installed
distribution's metadata: in an α,β-CROWN environment its checkout on ``PYTHONPATH`` shadows an
installed 0.3. auto_LiRPA 0.3 (2022) relies on two torch internals that torch 2.x removed and overrides
``_named_members`` with a signature that torch 2.x no longer calls it with. Every version up to 0.7
projects alpha-CROWN's ReLU slopes with ``torch.clamp``, whose gradient current torch sets to zero *at*
the bounds; the slopes start exactly at 0 or 1 (CROWN's), so none ever moves. Each patch is applied
only when the thing it repairs is missing or broken. :mod:`maar_plugin.bounds.lirpa`, the one module
that imports auto_LiRPA, calls :func:`require` first; a script of yours that imports auto_LiRPA itself
gets the same patches by importing ``maar_plugin.bounds.lirpa`` first.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import logging
import sys
import warnings
from pathlib import Path

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from maar_plugin.errors import MaarError

KNOWN_VERSIONS = SpecifierSet(">=0.3,<0.8")
KNOWN_VERSIONS_TEXT = "0.3 (PyPI) to 0.7 (α,β-CROWN's checkout)"
INSTALL_ADVICE = ("pip install --no-deps auto-lirpa==0.3 && pip install appdirs 'numpy<2' maar-plugin (PyPI's "
                  "build without its stale pins, then what it imports; see the README, Install), or put α,β-CROWN's "
                  "auto_LiRPA checkout on PYTHONPATH")


def lirpa_version() -> Version | None:
    """The ``__version__`` of the auto_LiRPA that ``import auto_LiRPA`` loads (None: there is none).

    Read without importing it when it is not imported yet (0.3 cannot be imported unpatched). Raises
    MaarError for a version this plugin does not know.
    """
    module = sys.modules.get("auto_LiRPA")
    if module is not None:
        where, text = getattr(module, "__file__", None), getattr(module, "__version__", None)
    else:
        spec = importlib.util.find_spec("auto_LiRPA")
        if spec is None:
            return None
        where = spec.origin if spec.has_location else None
        text = _version_assignment(Path(where).read_text()) if where else None
    try:
        version = Version(text) if isinstance(text, str) else None
    except InvalidVersion:
        version = None
    if version is None or version not in KNOWN_VERSIONS:
        found = "no __version__" if text is None else f"version {text!r}"
        raise MaarError(f"auto_LiRPA at {where or 'an unknown path'} has {found}; "
                        f"maar-plugin works with auto_LiRPA {KNOWN_VERSIONS_TEXT}")
    return version


def _version_assignment(source: str) -> object:
    """The constant assigned to ``__version__`` at the top level of a module's source, or None."""
    for statement in ast.parse(source).body:
        if (isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant)
                and any(isinstance(target, ast.Name) and target.id == "__version__" for target in statement.targets)):
            return statement.value.value
    return None


def _node_getitem(node: torch._C.Node, name: str):
    """``node[name]``: a graph node's attribute, read with the accessor of its kind (i, f, s, t, ...)."""
    return getattr(node, node.kindOf(name))(name)


def _set_opset_version(opset_version: int) -> None:
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    GLOBALS.export_onnx_opset_version = opset_version


def clamp_passing_gradient(slope: torch.Tensor, min: float = 0.0, max: float = 1.0) -> torch.Tensor:
    """Clamp to [min, max] whose gradient is the identity's, also at and beyond the bounds.

    Projected gradient ascent on alpha-CROWN's slopes needs that gradient: with torch's clamp, a slope
    that starts at a bound never receives one.
    """
    return slope - (slope - slope.clamp(min, max)).detach()


def clamp_stops_gradient_at_bounds() -> bool:
    """Whether this torch's ``clamp`` passes no gradient to a value exactly at a bound."""
    with torch.enable_grad():
        value = torch.ones(1, requires_grad=True)
        (gradient,) = torch.autograd.grad(torch.clamp(value, min=0.0, max=1.0).sum(), value)
    return bool(gradient.item() == 0.0)


def relu_mask_alpha(lower, upper, lb_lower_d, ub_lower_d, leaky_alpha: float = 0.0):
    """Stands in for ``BoundRelu._relu_mask_alpha`` (same arguments and results from auto_LiRPA 0.3 to 0.7).

    Per neuron, the slope of the ReLU's lower relaxation: the optimised slope where the ReLU is unstable,
    projected onto [leaky_alpha, 1] by :func:`clamp_passing_gradient` (so that a slope at a bound still
    moves); 1 where it is active (``lower >= 0``); ``leaky_alpha`` where it is inactive (``upper <= 0``).
    The last result says whether every neuron is inactive (no coefficients to carry), never with a leak.
    """
    active = (lower >= 0).to(lower.dtype)
    inactive = upper <= 0
    unstable = (1.0 - active) * (1.0 - inactive.to(upper.dtype))

    def projected(slope):
        if slope is None:
            return None
        slope = clamp_passing_gradient(slope, leaky_alpha, 1.0) * unstable + active
        return slope + inactive * leaky_alpha if leaky_alpha > 0 else slope

    all_inactive = False if leaky_alpha > 0 else inactive.all()
    return projected(lb_lower_d), projected(ub_lower_d), all_inactive


def _patch_torch_internals() -> None:
    import torch.onnx.symbolic_helper as symbolic_helper

    if not hasattr(symbolic_helper, "_set_opset_version"):
        symbolic_helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]  # gone in torch 2
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = _node_getitem  # type: ignore[method-assign]  # a patch of torch's class


def _patch_named_members() -> None:
    """torch 2.x's ``nn.Module.named_parameters`` passes ``remove_duplicate``, which 0.3's override of
    ``_named_members`` does not take (it always removes duplicates); CROWN's sparse specifications call it."""
    from auto_LiRPA import BoundedModule

    original = BoundedModule._named_members
    if "remove_duplicate" in inspect.signature(original).parameters:
        return

    def named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        return original(self, get_members_fn, prefix=prefix, recurse=recurse)

    BoundedModule._named_members = named_members


def _patch_alpha_projection() -> None:
    from auto_LiRPA.operators import BoundRelu

    BoundRelu._relu_mask_alpha = staticmethod(relu_mask_alpha)


def needs_patches(version: Version | None) -> bool:
    """Whether this auto_LiRPA is the old PyPI line that needs the torch 2.x patches."""
    return version is not None and version < Version("0.4")


def require() -> bool:
    """:func:`apply`, or a one-line MaarError saying how to install auto_LiRPA where none is importable."""
    if lirpa_version() is None:
        raise MaarError(f"this needs auto_LiRPA, which is not installed: {INSTALL_ADVICE}")
    return apply()


def apply() -> bool:
    """Apply the patches the imported auto_LiRPA needs; return whether any are in effect.

    Raises MaarError for an auto_LiRPA version this plugin does not know.
    """
    version = lirpa_version()
    if version is None:
        return False
    old_line = needs_patches(version)
    if old_line:
        _patch_torch_internals()
    # auto_LiRPA's import scripts functions (a FutureWarning on torch 2.x) and probes for a CUDA toolkit
    # it only needs for optional kernels; 0.3's also resets the global warning filters. Recording the
    # import's warnings drops them and restores the filters afterwards.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with warnings.catch_warnings(record=True):
        import auto_LiRPA  # noqa: F401

        if old_line:
            _patch_named_members()
    slopes_stuck = clamp_stops_gradient_at_bounds()
    if slopes_stuck:
        _patch_alpha_projection()
    return old_line or slopes_stuck
