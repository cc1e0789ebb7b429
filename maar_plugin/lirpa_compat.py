"""Make the PyPI build of auto_LiRPA (0.3) work on torch 2.x; a no-op on newer auto_LiRPA.

auto_LiRPA 0.3 (2022) relies on two torch internals that torch 2.x removed, overrides
``_named_members`` with a signature that torch 2.x no longer calls it with, and its alpha-CROWN
projects each ReLU slope with ``torch.clamp``, whose gradient current torch sets to zero *at* the
bounds; 0.3 starts every slope exactly at 0 or 1, so no slope ever moves. Each patch is applied only
when the thing it repairs is missing or broken, and only to auto_LiRPA < 0.4. Import this module
before ``auto_LiRPA`` (``maar_plugin`` does it on import).
"""
from __future__ import annotations

import importlib.metadata
import inspect
import logging
import warnings

import torch
from packaging.version import Version


def _installed_lirpa_version() -> Version | None:
    try:
        return Version(importlib.metadata.version("auto_LiRPA"))
    except importlib.metadata.PackageNotFoundError:
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


def _patch_torch_internals() -> None:
    import torch.onnx.symbolic_helper as symbolic_helper

    if not hasattr(symbolic_helper, "_set_opset_version"):
        symbolic_helper._set_opset_version = _set_opset_version
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = _node_getitem


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
    from auto_LiRPA.operators.activation import BoundRelu

    def relu_mask_alpha(lower, upper, lb_lower_d, ub_lower_d):
        lower_mask = (lower >= 0).requires_grad_(False).to(lower.dtype)
        upper_mask = (upper <= 0).requires_grad_(False)
        zero_coeffs = upper_mask.all()
        no_mask = (1.0 - lower_mask) * (1.0 - upper_mask.to(upper.dtype))
        if lb_lower_d is not None:
            lb_lower_d = clamp_passing_gradient(lb_lower_d) * no_mask + lower_mask
        if ub_lower_d is not None:
            ub_lower_d = clamp_passing_gradient(ub_lower_d) * no_mask + lower_mask
        return lb_lower_d, ub_lower_d, zero_coeffs

    BoundRelu._relu_mask_alpha = staticmethod(relu_mask_alpha)


def needs_patches(version: Version | None) -> bool:
    """Whether this auto_LiRPA is the old PyPI line that needs the compatibility patches."""
    return version is not None and version < Version("0.4")


def apply() -> bool:
    """Apply the patches the installed auto_LiRPA needs; return whether any were applied."""
    if not needs_patches(_installed_lirpa_version()):
        return False
    _patch_torch_internals()
    # auto_LiRPA 0.3's import scripts functions (a FutureWarning on torch 2.x), probes for a CUDA
    # toolkit it only needs for optional kernels, and resets the global warning filters; recording the
    # import's warnings drops them and restores the filters afterwards.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with warnings.catch_warnings(record=True):
        _patch_alpha_projection()
        _patch_named_members()
    return True
