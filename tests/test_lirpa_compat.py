"""auto_LiRPA through the compatibility layer: every bound method is sound, alpha-CROWN really optimises."""
import contextlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version
from torch import nn

from helpers import write_verify_folder
from maar_plugin.attacks import pgd_maximize
from maar_plugin.bounds import lirpa_compat
from maar_plugin.bounds.lirpa import METHODS, LirpaBounds
from maar_plugin.bounds.lirpa_compat import INSTALL_ADVICE, KNOWN_VERSIONS_TEXT
from maar_plugin.bounds.specs import margin_spec
from maar_plugin.verification import InstanceResult

TOLERANCE = 1e-5
REPO = Path(__file__).resolve().parent.parent


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    ).eval()


def _conv_bn() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 5),
    )
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.rand(16, 1, 8, 8))
    return model.eval()


def _spec_values(model: nn.Module, points: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """spec @ model(points) for points [N, B, ...]: [N, B, S]."""
    with torch.no_grad():
        logits = model(points.flatten(0, 1)).view(points.shape[0], points.shape[1], -1)
    return torch.einsum("bsk,nbk->nbs", spec, logits)


def _pgd_extremes(model: nn.Module, lower, upper, spec, sign: float) -> torch.Tensor:
    """Per row, the value sign·(spec row @ logits) reached by PGD maximising it: [B, S]. Rows ride the batch."""
    batch, rows = spec.shape[:2]
    repeat = lambda box: box.repeat_interleave(rows, dim=0)
    flat_spec = spec.reshape(batch * rows, -1)
    objective = lambda logits: sign * (logits * flat_spec).sum(1)
    best = pgd_maximize(model, repeat(lower), repeat(upper), objective, steps=20, restarts=2)
    with torch.no_grad():
        return (model(best) * flat_spec).sum(1).view(batch, rows)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make_model, shape, eps", [(_mlp, (1, 28, 28), 0.01), (_conv_bn, (1, 8, 8), 0.05)])
def test_bounds_contain_sampled_and_pgd_points(method, make_model, shape, eps):
    model = make_model()
    torch.manual_seed(2)
    x = torch.rand(3, *shape)
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    labels = model(x).argmax(1)
    spec = margin_spec(labels, model[-1].out_features)
    bound_lower, bound_upper = LirpaBounds(model, x[:1], alpha_iterations=5).bounds(lower, upper, spec, method)

    samples = lower + torch.rand(64, *x.shape) * (upper - lower)
    corners = torch.where(torch.rand(16, *x.shape) < 0.5, lower, upper)
    values = _spec_values(model, torch.cat([samples, corners]), spec)
    assert (values >= bound_lower - TOLERANCE).all()
    assert (values <= bound_upper + TOLERANCE).all()
    assert (_pgd_extremes(model, lower, upper, spec, -1.0) >= bound_lower - TOLERANCE).all()
    assert (_pgd_extremes(model, lower, upper, spec, +1.0) <= bound_upper + TOLERANCE).all()


def test_alpha_crown_is_strictly_tighter_than_crown():
    """Without the slope-projection fix, alpha-CROWN (auto_LiRPA 0.3 and 0.7 alike) returns CROWN's bound."""
    model = _mlp()
    torch.manual_seed(3)
    x = torch.rand(2, 1, 28, 28)
    lower, upper = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    spec = margin_spec(model(x).argmax(1), 10)
    bounder = LirpaBounds(model, x[:1], alpha_iterations=20)
    crown, _ = bounder.bounds(lower, upper, spec, "CROWN", bound_upper=False)
    alpha_crown, _ = bounder.bounds(lower, upper, spec, "alpha-CROWN", bound_upper=False)
    assert (alpha_crown >= crown - TOLERANCE).all()
    assert (alpha_crown - crown).max() > 1e-3
    assert alpha_crown.sum() > crown.sum() + 1e-3


def test_crown_is_at_least_as_tight_as_ibp_on_this_net():
    model = _mlp()
    x = torch.rand(2, 1, 28, 28)
    lower, upper = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    spec = margin_spec(model(x).argmax(1), 10)
    bounder = LirpaBounds(model, x[:1])
    ibp, _ = bounder.bounds(lower, upper, spec, "IBP")
    crown, _ = bounder.bounds(lower, upper, spec, "CROWN")
    assert crown.sum() > ibp.sum()


def test_needs_patches_only_for_the_old_pypi_line():
    assert lirpa_compat.needs_patches(Version("0.3"))
    assert lirpa_compat.needs_patches(Version("0.3.1"))
    assert not lirpa_compat.needs_patches(Version("0.7.0"))
    assert not lirpa_compat.needs_patches(None)


@pytest.mark.parametrize("passes_at_bounds", [True, False])
def test_clamp_probe_tells_a_clamp_that_stops_gradients_at_bounds_from_one_that_passes_them(monkeypatch,
                                                                                            passes_at_bounds):
    def clamp(value, min=None, max=None):
        inside = (value >= min) & (value <= max) if passes_at_bounds else (value > min) & (value < max)
        return value.detach().clamp(min, max) + (value - value.detach()) * inside

    monkeypatch.setattr(torch, "clamp", clamp)
    assert lirpa_compat.clamp_stops_gradient_at_bounds() is (not passes_at_bounds)


def test_clamp_passing_gradient_clamps_and_passes_gradient():
    slope = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    clamped = lirpa_compat.clamp_passing_gradient(slope, 0.0, 1.0)
    clamped.sum().backward()
    assert torch.equal(clamped.detach(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.equal(slope.grad, torch.ones(5))


def _fake_lirpa(root, init_source: str) -> None:
    """A package ``auto_LiRPA`` under ``root`` with this ``__init__.py`` and an ``operators.BoundRelu``."""
    (root / "auto_LiRPA" / "operators").mkdir(parents=True)
    (root / "auto_LiRPA" / "__init__.py").write_text(init_source)
    (root / "auto_LiRPA" / "operators" / "__init__.py").write_text("class BoundRelu:\n    pass\n")


def _python(code: str, path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``path`` first on PYTHONPATH, then this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(REPO)])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_version_is_read_from_the_module_on_the_path_not_the_installed_distribution(tmp_path):
    """A checkout on PYTHONPATH shadows the installed auto_LiRPA: the version is the checkout's."""
    _fake_lirpa(tmp_path, "__version__ = '0.5.0'\n")
    result = _python("import maar_plugin, auto_LiRPA; from maar_plugin.bounds import lirpa_compat; "
                     "print(lirpa_compat.lirpa_version(), auto_LiRPA.__file__)", tmp_path)
    assert result.returncode == 0, result.stderr
    version, where = result.stdout.split()
    assert version == "0.5.0" and where.startswith(str(tmp_path))
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        assert importlib.metadata.version("auto_LiRPA") != "0.5.0"


@pytest.mark.parametrize("init_source, found", [
    ("__version__ = '1.2.0'\n", "version '1.2.0'"),
    ("__version__ = '0.2'\n", "version '0.2'"),
    ("__version__ = 'unreleased'\n", "version 'unreleased'"),
    ("from .operators import BoundRelu\n", "no __version__"),
])
def test_unknown_version_is_one_line_maar_error(tmp_path, init_source, found):
    _fake_lirpa(tmp_path, init_source)
    result = _python("import maar_plugin.bounds.lirpa", tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("maar_plugin.errors.MaarError: auto_LiRPA at ")
    assert found in last and KNOWN_VERSIONS_TEXT in last


VERIFY = ["verify", "--onnx", str(REPO / "models" / "mnist-dm-small-maar-eps0.1.onnx"), "--vnnlib",
          str(REPO / "vnnlib_specs" / "mnist-dm-small-maar-eps0.1" / "img00000_eps0.1.vnnlib")]


def test_the_maar_command_reports_an_unknown_version_in_one_line(tmp_path):
    _fake_lirpa(tmp_path, "__version__ = '1.2.0'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    result = subprocess.run([sys.executable, "-m", "maar_plugin", *VERIFY], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: auto_LiRPA at {tmp_path / 'auto_LiRPA' / '__init__.py'} has version '1.2.0'; "
        f"maar-plugin works with auto_LiRPA {KNOWN_VERSIONS_TEXT}"]


def _maar_without_lirpa(*arguments: str) -> subprocess.CompletedProcess:
    """The maar command in a fresh interpreter where ``import auto_LiRPA`` finds nothing."""
    code = ("import sys; sys.modules['auto_LiRPA'] = None; from maar_plugin.cli import main; "
            f"sys.argv = ['maar', *{list(arguments)!r}]; main()")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_without_auto_lirpa_a_command_that_bounds_says_how_to_install_it():
    result = _maar_without_lirpa(*VERIFY)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: this needs auto_LiRPA, which is not installed: {INSTALL_ADVICE}"]


@pytest.mark.parametrize("command", [["objectives"], ["models"], ["recipes"], ["--help"], ["report"]])
def test_commands_that_do_not_bound_work_without_auto_lirpa(command, tmp_path):
    if command == ["report"]:
        results = [InstanceResult("img0", "net.onnx", "img0.vnnlib", "unsat", stage="IBP", seconds=0.1),
                   InstanceResult("img1", "net.onnx", "img1.vnnlib", "timeout", seconds=5.0)]
        command = ["report", str(write_verify_folder(tmp_path / "verified", results))]
    result = _maar_without_lirpa(*command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_apply_is_idempotent():
    import torch.onnx.symbolic_helper as symbolic_helper
    from auto_LiRPA.operators import BoundRelu

    model = _mlp()
    x = torch.rand(2, 1, 28, 28)
    lower, upper = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    spec = margin_spec(model(x).argmax(1), 10)
    before, _ = LirpaBounds(model, x[:1], alpha_iterations=3).bounds(lower, upper, spec, "alpha-CROWN", False)
    patched = (getattr(symbolic_helper, "_set_opset_version", None), getattr(torch._C.Node, "__getitem__", None),
               BoundRelu.__dict__["_relu_mask_alpha"].__func__)
    assert lirpa_compat.apply() == lirpa_compat.apply()
    assert patched == (getattr(symbolic_helper, "_set_opset_version", None),
                       getattr(torch._C.Node, "__getitem__", None), BoundRelu.__dict__["_relu_mask_alpha"].__func__)
    after, _ = LirpaBounds(model, x[:1], alpha_iterations=3).bounds(lower, upper, spec, "alpha-CROWN", False)
    assert torch.allclose(before, after, atol=1e-6)
