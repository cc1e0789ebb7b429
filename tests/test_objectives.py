"""Objectives: MAAR's KL bound is sound, the losses compose as stated, gradients flow, the registry works."""
import importlib.metadata
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maar_plugin.attacks import pgd_maximize
from maar_plugin.bounds.ibp import interval_bounds
from maar_plugin.bounds.lirpa import LirpaBounds
from maar_plugin.bounds.specs import margin_spec, pairwise_upper_from_lower
from maar_plugin.data import DatasetInfo
from maar_plugin.errors import MaarError
from maar_plugin.models import Normalize
from maar_plugin.objectives import (
    ENTRY_POINT_GROUP,
    Objective,
    create_objective,
    list_objectives,
    objective_hyperparameters,
)
from maar_plugin.objectives.losses import kl_upper_bound, misclassification_weights, robust_ce_from_margins

INFO = DatasetInfo("toy", (1, 8, 8), 5, (0.5,), (0.25,))
BUILT_IN = ("natural", "pgd", "ibp", "crown-ibp", "sabr", "mtl-ibp", "exp-ibp", "cc-ibp", "maar", "maar-ibp",
            "maar-crown-ibp", "maar-sabr", "maar-mtl-ibp", "maar-exp-ibp", "maar-cc-ibp")


def _conv_bn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        Normalize(INFO.mean, INFO.std), nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(36, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, INFO.num_classes),
    )


def _mlp() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                         nn.Linear(24, INFO.num_classes))


class _Wrapped(nn.Module):
    """Not a Sequential: IBP has to go through auto_LiRPA instead of the fused pass."""

    def __init__(self):
        super().__init__()
        self.inner = _mlp()

    def forward(self, x):
        return self.inner(x)


def _batch(size: int = 6):
    torch.manual_seed(2)
    return torch.rand(size, *INFO.input_shape), torch.randint(0, INFO.num_classes, (size,))


def _kl(p_clean: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p(x) ‖ p(x')) per example from p(x) and the logits at x'."""
    return (p_clean * (p_clean.log() - F.log_softmax(logits, dim=1))).sum(1)


def _kl_bound(objective, x, y, eps, progress, tight_pairwise=False):
    bounds = objective.robust_bounds(x, y, eps, progress, tight_pairwise=tight_pairwise)
    return kl_upper_bound(objective.model(x), pairwise_upper_from_lower(bounds.pairwise_lower))


@pytest.mark.parametrize("base, progress, tight", [("ibp", 0.5, False), ("crown-ibp", 0.5, False),
                                                    ("crown-ibp", 0.0, True), ("crown-ibp", 0.5, True)])
@pytest.mark.parametrize("make_model", [_conv_bn, _mlp])
def test_kl_bound_holds_at_sampled_and_pgd_points(base, progress, tight, make_model):
    model = make_model().eval()  # fixed BatchNorm statistics: the network is one function on the ball
    objective = create_objective(base, model, INFO)
    x, y = _batch()
    eps = 0.03
    with torch.no_grad():
        kl_bound = _kl_bound(objective, x, y, eps, progress, tight)
        p_clean = F.softmax(model(x), dim=1)
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    samples = lower + torch.rand(32, *x.shape) * (upper - lower)
    with torch.no_grad():
        sampled_kl = torch.stack([_kl(p_clean, model(sample)) for sample in samples])
    worst = pgd_maximize(model, lower, upper, lambda logits: _kl(p_clean, logits), steps=30, restarts=2)
    with torch.no_grad():
        pgd_kl = _kl(p_clean, model(worst))
    assert (pgd_kl > 0).all()
    assert (sampled_kl <= kl_bound + 1e-5).all()
    assert (pgd_kl <= kl_bound + 1e-5).all()


@pytest.mark.parametrize("base", ["ibp", "crown-ibp"])
def test_kl_bound_is_nonnegative_and_vanishes_at_eps_zero(base):
    objective = create_objective(base, _conv_bn().eval(), INFO)
    x, y = _batch()
    with torch.no_grad():
        assert (_kl_bound(objective, x, y, 0.05, 0.5) >= 0).all()
        assert _kl_bound(objective, x, y, 0.0, 0.5).abs().max() < 1e-5


def test_robust_ce_at_eps_zero_is_the_clean_cross_entropy():
    objective = create_objective("ibp", _mlp().eval(), INFO)
    x, y = _batch()
    with torch.no_grad():
        margins = objective.robust_bounds(x, y, 0.0, 0.0).margin_lower
        clean = F.cross_entropy(objective.model(x), y, reduction="none")
    assert torch.allclose(robust_ce_from_margins(margins), clean, atol=1e-5)


def test_misclassification_weights():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.1, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    assert misclassification_weights(logits, labels, "hard").tolist() == [0.0, 1.0, 0.0]
    soft = misclassification_weights(logits, labels, "soft")
    assert ((soft > 0) & (soft < 1)).all()
    assert torch.allclose(soft, 1 - F.softmax(logits, dim=1)[:, 0])


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("make_model", [_conv_bn, _mlp, _Wrapped])
def test_gradients_reach_every_parameter(name, make_model):
    model = make_model().train()
    arguments = {"weighting": "soft"} if name.startswith("maar") else {}
    objective = create_objective(name, model, INFO, **arguments)
    x, y = _batch()
    terms = objective.loss(x, y, 0.05, 0.5)
    terms.total.backward()
    assert torch.isfinite(terms.total)
    assert terms.logits.shape == (len(x), INFO.num_classes)
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
        if parameter.dim() > 1:  # weights; a conv bias before BatchNorm gets none by construction
            assert parameter.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("base", ["ibp", "crown-ibp"])
def test_maar_with_zero_lambda_is_its_base_loss(base):
    model = _conv_bn().eval()
    x, y = _batch()
    for progress in (0.0, 0.5, 1.0):
        base_terms = create_objective(base, model, INFO).loss(x, y, 0.05, progress)
        maar_terms = create_objective("maar", model, INFO, base=base, lam=0).loss(x, y, 0.05, progress)
        assert torch.equal(maar_terms.total, base_terms.total)
        assert maar_terms.parts["lambda"] == 0.0 and maar_terms.parts["maar_reg"] >= 0


def test_maar_adds_the_ramped_weighted_kl_bound():
    model = _conv_bn().eval()
    x, y = _batch()
    base = create_objective("crown-ibp", model, INFO)
    maar = create_objective("maar", model, INFO, lam=2, weighting="soft")
    base_terms, maar_terms = base.loss(x, y, 0.05, 0.25), maar.loss(x, y, 0.05, 0.25)
    kl_bound = _kl_bound(base, x, y, 0.05, 0.25)
    true_class_probability = F.softmax(model(x), 1).gather(1, y[:, None]).squeeze(1)
    expected = base_terms.total + 0.5 * ((1 - true_class_probability) * kl_bound).mean()
    assert maar_terms.parts["lambda"] == 0.5
    assert torch.allclose(maar_terms.total, expected)


@pytest.mark.parametrize("make_model, training", [(_mlp, True), (_Wrapped, True), (_conv_bn, False)])
def test_crown_ibp_loss_and_gradients_are_its_formula_over_auto_lirpas_bounds(make_model, training):
    """κ·CE + (1−κ)·robust CE(β·CROWN-IBP + (1−β)·IBP margins), the bounds by auto_LiRPA (the plain-torch
    pass for Sequential models must give the same loss and gradients)."""
    model = make_model().train(training)
    x, y = _batch()
    eps, progress = 0.05, 0.4  # κ = β = 0.6
    bounder = LirpaBounds(model, x[:1])  # built first: building reloads the parameters in place
    loss = create_objective("crown-ibp", model, INFO).loss(x, y, eps, progress).total
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    spec = margin_spec(y, INFO.num_classes)
    ibp = bounder.bounds(lower, upper, spec, "IBP")[0]
    crown_ibp = bounder.bounds(lower, upper, spec, "CROWN-IBP", bound_upper=False)[0]
    robust = robust_ce_from_margins(0.6 * crown_ibp + 0.4 * ibp).mean()
    expected = 0.6 * F.cross_entropy(model(x), y) + 0.4 * robust
    assert torch.allclose(loss, expected, atol=1e-6)
    if training:  # auto_LiRPA 0.3 bounds carry no gradient in eval mode
        parameters = list(model.parameters())
        for ours, theirs in zip(torch.autograd.grad(loss, parameters), torch.autograd.grad(expected, parameters)):
            assert torch.allclose(ours, theirs, atol=1e-6)


def test_pairwise_pass_gives_the_margin_bounds_of_a_margin_only_pass():
    model = _conv_bn().eval()
    x, y = _batch()
    eps = 0.05
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    spec = margin_spec(y, INFO.num_classes)
    with torch.no_grad():
        ibp_margins = interval_bounds(model, lower, upper, spec)[0]
        crown_ibp_margins = LirpaBounds(model, x[:1]).bounds(lower, upper, spec, "CROWN-IBP")[0]
        ibp = create_objective("ibp", model, INFO)
        crown_ibp = create_objective("crown-ibp", model, INFO)  # progress 0: β = 1, pure CROWN-IBP
        assert torch.allclose(ibp.robust_bounds(x, y, eps, 0.7).margin_lower, ibp_margins, atol=1e-5)
        assert torch.allclose(crown_ibp.robust_bounds(x, y, eps, 1.0).margin_lower, ibp_margins, atol=1e-5)
        for tight in (False, True):
            margins = crown_ibp.robust_bounds(x, y, eps, 0.0, tight_pairwise=tight).margin_lower
            assert torch.allclose(margins, crown_ibp_margins, atol=1e-5)


def test_schedules_are_logged():
    x, y = _batch()
    parts = create_objective("maar", _mlp(), INFO).loss(x, y, 0.05, 0.25).parts
    assert parts["kappa"] == pytest.approx(0.75) and parts["beta"] == pytest.approx(0.75)
    assert parts["lambda"] == pytest.approx(0.125)
    assert {"natural_ce", "robust_ce", "maar_reg"} <= set(parts)


def test_registry_round_trip():
    listed = list_objectives()
    assert set(BUILT_IN) <= set(listed) and all(listed[name] for name in BUILT_IN)
    for name in BUILT_IN:
        table = objective_hyperparameters(name)
        objective = create_objective(name, _mlp(), INFO)
        assert objective.name == name
        own = objective.hyperparameters
        base = getattr(objective, "base", None)
        for key, (default, help_text) in table.items():
            holder = own if hasattr(own, key) else base.hyperparameters
            assert getattr(holder, key) == default and help_text
    assert create_objective("maar-ibp", _mlp(), INFO).base.name == "ibp"
    assert create_objective("maar", _mlp(), INFO, base="ibp", kappa_end=0.5).base.hyperparameters.kappa_end == 0.5


@pytest.mark.parametrize("name, arguments, message", [
    ("nope", {}, "unknown objective"),
    ("ibp", {"kapa_end": 0.5}, "no hyperparameter 'kapa_end'"),
    ("maar", {"lamda": 0.5}, "no hyperparameter 'lamda'"),
    ("maar-ibp", {"beta_end": 0.5}, "no hyperparameter 'beta_end'"),
    ("maar", {"lam": "big"}, "expected float"),
    ("pgd", {"steps": 2.5}, "expected int"),
    ("maar", {"weighting": "medium"}, "not one of hard, soft"),
    ("maar", {"base": "pgd"}, "exposes no pairwise bounds; certified bases: cc-ibp, crown-ibp"),
    ("maar", {"base": "nope"}, "unknown objective"),
])
def test_bad_names_and_hyperparameters_are_user_errors(name, arguments, message):
    with pytest.raises(MaarError, match=message):
        create_objective(name, _mlp(), INFO, **arguments)


def test_third_party_objective_from_an_entry_point(tmp_path, monkeypatch):
    (tmp_path / "third_party_objectives.py").write_text(textwrap.dedent('''
        import torch.nn.functional as F
        from maar_plugin.objectives import LossTerms, Objective

        class Squared(Objective):
            description = "squared logits (a test plug-in)"

            def loss(self, x, y, eps, progress):
                logits = self.model(x)
                return LossTerms(logits.square().mean(), logits, {})
    '''))
    dist_info = tmp_path / "third_party_objectives-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party-objectives\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nsquared = third_party_objectives:Squared\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "squared" in {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}

    assert list_objectives()["squared"] == "squared logits (a test plug-in)"
    assert objective_hyperparameters("squared") == {}
    objective = create_objective("squared", _mlp(), INFO)
    assert isinstance(objective, Objective)
    x, y = _batch()
    assert objective.loss(x, y, 0.0, 0.0).total >= 0


def test_cli_lists_objectives_with_hyperparameters():
    from click.testing import CliRunner

    from maar_plugin.cli import cli

    result = CliRunner().invoke(cli, ["objectives"])
    assert result.exit_code == 0, result.output
    for name in BUILT_IN:
        assert f"{name}: " in result.output
    assert "lam=0.5" in result.output and "weighting=soft" in result.output and "kappa_end=0.0" in result.output
