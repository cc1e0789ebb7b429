"""SABR, MTL-IBP, EXP-IBP, CC-IBP and MAAR over them: each loss is its formula, SABR's box stays in the
ε-ball, MTL-IBP's end points are IBP and PGD, MAAR at λ = 0 is its base, third-party bases work."""
import importlib.metadata
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maar_plugin.attacks import cross_entropy_loss, pgd_maximize
from maar_plugin.bounds.box import linf_ball_box, small_box
from maar_plugin.bounds.specs import pairwise_upper_from_lower
from maar_plugin.data import DatasetInfo
from maar_plugin.errors import MaarError
from maar_plugin.models import Normalize
from maar_plugin.objectives import ENTRY_POINT_GROUP, create_objective, objective_hyperparameters
from maar_plugin.objectives.batch_statistics import clean_batch_statistics
from maar_plugin.objectives.losses import kl_upper_bound, misclassification_weights
from maar_plugin.objectives.maar import BUILT_IN_BASES, certified_bases

TINY = DatasetInfo("tiny", (1, 2, 2), 3, (0.5,), (0.25,))
INFO = DatasetInfo("toy", (1, 8, 8), 5, (0.5,), (0.25,))
NEW_BASES = ("sabr", "mtl-ibp", "exp-ibp", "cc-ibp")
EPS = 0.1


def _tiny() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def _tiny_batch():
    torch.manual_seed(4)
    x = torch.rand(5, *TINY.input_shape)
    x[0, 0, 0, 0], x[1, 0, 1, 1] = 0.0, 1.0  # pixels on the edge of [0, 1]: the ball is clipped
    return x, torch.tensor([0, 1, 2, 0, 1])


def _conv_bn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        Normalize(INFO.mean, INFO.std), nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(36, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, INFO.num_classes),
    )


def _batch(size: int = 6, seed: int = 2):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(size, *INFO.input_shape, generator=generator),
            torch.randint(0, INFO.num_classes, (size,), generator=generator))


def _hand_ibp_margins(model, lower, upper, y):
    """lb(z_y − z_j), j ≠ y in increasing j, by interval arithmetic written out for Flatten-Linear-ReLU-Linear."""
    first, last = model[1], model[3]
    centre, radius = (upper + lower).flatten(1) / 2, (upper - lower).flatten(1) / 2
    hidden_centre, hidden_radius = centre @ first.weight.T + first.bias, radius @ first.weight.abs().T
    hidden_lower = (hidden_centre - hidden_radius).clamp(min=0)
    hidden_upper = (hidden_centre + hidden_radius).clamp(min=0)
    centre, radius = (hidden_upper + hidden_lower) / 2, (hidden_upper - hidden_lower) / 2
    rows = []
    for i, label in enumerate(y.tolist()):
        row = []
        for j in range(last.out_features):
            if j != label:
                w, b = last.weight[label] - last.weight[j], last.bias[label] - last.bias[j]
                row.append(w @ centre[i] + b - w.abs() @ radius[i])
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _hand_robust_ce(margins):
    """CE of the worst-case logits [0, −lb] with the true class at 0, batch mean."""
    return torch.logsumexp(torch.cat([torch.zeros(len(margins), 1), -margins], 1), 1).mean()


def _hand_attack(model, lower, upper, y, steps, restarts, ratio, seed):
    torch.manual_seed(seed)
    return pgd_maximize(model, lower, upper, lambda z: cross_entropy_loss(z, y), steps, restarts,
                        step_size=ratio * (upper - lower) / 2)


@pytest.mark.parametrize("shrinkage", [0.4, 0.9])
def test_sabr_loss_is_the_robust_ce_of_its_small_box(shrinkage):
    model, (x, y) = _tiny(), _tiny_batch()
    objective = create_objective("sabr", model, TINY, shrinkage=shrinkage, attack_steps=4, attack_restarts=2)
    torch.manual_seed(7)
    loss = objective.loss(x, y, EPS, 0.5)
    lower, upper = (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1)
    adversarial = _hand_attack(model, lower, upper, y, 4, 2, 0.2, seed=7)
    radius = shrinkage * (upper - lower) / 2
    centre = torch.minimum(torch.maximum(adversarial, lower + radius), upper - radius)
    robust = _hand_robust_ce(_hand_ibp_margins(model, centre - radius, centre + radius, y))
    expected = 0.3 * F.cross_entropy(model(x), y) + 0.7 * robust
    assert torch.allclose(loss.total, expected, atol=1e-6)
    assert torch.allclose(loss.parts["robust_ce"], robust, atol=1e-6)


@pytest.mark.parametrize("name", ["mtl-ibp", "exp-ibp", "cc-ibp"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_expressive_losses_are_their_formulas(name, alpha):
    model, (x, y) = _tiny(), _tiny_batch()
    objective = create_objective(name, model, TINY, alpha=alpha, attack_steps=3, attack_restarts=2,
                                 attack_eps_ratio=0.5, kappa_start=0.2, kappa_end=0.6)
    torch.manual_seed(8)
    loss = objective.loss(x, y, EPS, 0.5)  # κ = 0.4
    lower, upper = (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1)
    ibp_margins = _hand_ibp_margins(model, lower, upper, y)
    attack_lower, attack_upper = (x - EPS / 2).clamp(0, 1), (x + EPS / 2).clamp(0, 1)
    adversarial_logits = model(_hand_attack(model, attack_lower, attack_upper, y, 3, 2, 0.25, seed=8))
    ibp_ce, adversarial_ce = _hand_robust_ce(ibp_margins), F.cross_entropy(adversarial_logits, y)
    if name == "mtl-ibp":
        robust = alpha * ibp_ce + (1 - alpha) * adversarial_ce
    elif name == "exp-ibp":
        robust = ibp_ce ** alpha * adversarial_ce ** (1 - alpha)
    else:  # the CE of the convex combination of the logit differences z_j − z_y
        differences = alpha * -ibp_margins + (1 - alpha) * torch.stack(
            [torch.stack([adversarial_logits[i, j] - adversarial_logits[i, label] for j in range(3) if j != label])
             for i, label in enumerate(y.tolist())])
        robust = _hand_robust_ce(-differences)
    expected = 0.4 * F.cross_entropy(model(x), y) + 0.6 * robust
    assert torch.allclose(loss.total, expected, atol=1e-6)
    assert torch.allclose(loss.parts["ibp_ce"], ibp_ce, atol=1e-6)
    assert torch.allclose(loss.parts["adversarial_ce"], adversarial_ce, atol=1e-6)


def test_mtl_ibp_at_alpha_one_is_ibp_and_at_alpha_zero_is_pgd():
    model = _conv_bn().eval()
    x, y = _batch()
    x = 0.1 + 0.8 * x  # inside [ε, 1 − ε]: the ball is not clipped, so both attacks take the same steps
    eps, kappa = 0.05, {"kappa_start": 0.0, "kappa_end": 0.0}
    ibp = create_objective("ibp", model, INFO, **kappa).loss(x, y, eps, 0.5).total
    mtl_one = create_objective("mtl-ibp", model, INFO, alpha=1.0, **kappa).loss(x, y, eps, 0.5).total
    assert torch.equal(mtl_one, ibp)
    torch.manual_seed(5)
    pgd = create_objective("pgd", model, INFO, steps=10, restarts=3).loss(x, y, eps, 0.5).total
    torch.manual_seed(5)
    mtl_zero = create_objective("mtl-ibp", model, INFO, alpha=0.0, attack_step_ratio=0.25, **kappa)
    assert torch.allclose(mtl_zero.loss(x, y, eps, 0.5).total, pgd, atol=1e-6)


@pytest.mark.parametrize("shrinkage", [0.1, 0.4, 0.9, 1.0])
def test_sabr_box_lies_in_the_clipped_eps_ball(shrinkage):
    torch.manual_seed(6)
    x = torch.rand(64, 1, 4, 4).round(decimals=1)  # many pixels at 0 and 1
    lower, upper = linf_ball_box(x, 0.3)
    centre = torch.rand_like(x) * 1.6 - 0.3  # anywhere, also outside the ball and [0, 1]
    box_lower, box_upper = small_box(lower, upper, centre, shrinkage)
    assert (lower <= box_lower).all() and (box_upper <= upper).all() and (box_lower <= box_upper).all()
    assert (box_lower >= 0).all() and (box_upper <= 1).all()
    assert torch.allclose(box_upper - box_lower, shrinkage * (upper - lower), atol=1e-6)
    radius = shrinkage * (upper - lower) / 2
    inside = (centre >= lower + radius) & (centre <= upper - radius)
    assert inside.any() or shrinkage == 1.0  # at λ = 1 the box is the ball itself
    assert torch.allclose(((box_lower + box_upper) / 2)[inside], centre[inside], atol=1e-6)


def test_sabr_objective_bounds_a_box_inside_the_ball():
    model, (x, y) = _conv_bn().train(), _batch()
    objective = create_objective("sabr", model, INFO, shrinkage=0.4)
    with clean_batch_statistics(model, x):
        box_lower, box_upper = objective.input_box(x, y, 0.2)
    lower, upper = linf_ball_box(x, 0.2)
    assert (lower <= box_lower).all() and (box_upper <= upper).all()
    assert torch.allclose(box_upper - box_lower, 0.4 * (upper - lower), atol=1e-6)


def test_clean_batch_statistics_freeze_batchnorm_to_the_clean_batch():
    model = _conv_bn().train()
    x, _ = _batch(8, seed=2)
    other, _ = _batch(8, seed=3)
    with clean_batch_statistics(model, x) as clean_logits:
        running = [buffer.clone() for buffer in model.buffers()]
        frozen_clean, frozen_other = model(x), model(other)
        assert all(torch.equal(a, b) for a, b in zip(running, model.buffers()))  # not updated inside
    assert torch.allclose(frozen_clean, clean_logits, atol=1e-5)
    assert not torch.allclose(frozen_other, model(other), atol=1e-3)  # outside: the batch's own statistics
    reference = _conv_bn()  # eval mode with the clean batch's (biased) statistics as running statistics
    with torch.no_grad():
        hidden = reference[1](reference[0](x))
        reference[2].running_mean.copy_(hidden.mean((0, 2, 3)))
        reference[2].running_var.copy_(hidden.var((0, 2, 3), unbiased=False))
        hidden = reference[5](reference[4](reference[3](reference[2].eval()(hidden))))
        reference[6].running_mean.copy_(hidden.mean(0))
        reference[6].running_var.copy_(hidden.var(0, unbiased=False))
    assert torch.allclose(reference.eval()(other), frozen_other, atol=1e-5)
    frozen_other.sum().backward()  # the statistics stay in the graph
    assert model[1].weight.grad is not None


def _train(name: str, arguments: dict, seed: int, steps: int = 3) -> dict:
    model = _conv_bn().train()
    objective = create_objective(name, model, INFO, **arguments)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(seed)
    for step in range(steps):
        x, y = _batch(seed=10 + step)
        loss = objective.loss(x, y, 0.05, 0.5).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict()


def _same_network(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("base", BUILT_IN_BASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_maar_at_zero_lambda_trains_the_base_network(base, seed):
    trained = _train(base, {}, seed)
    assert _same_network(_train(f"maar-{base}", {"lam": 0.0, "weighting": "soft"}, seed), trained)
    assert _same_network(_train("maar", {"base": base, "lam": 0.0, "kl_region": "ball"}, seed), trained)
    assert not _same_network(_train(f"maar-{base}", {"lam": 2.0, "weighting": "soft"}, seed), trained)


def _kl(p_clean, logits):
    return (p_clean * (p_clean.log() - F.log_softmax(logits, dim=1))).sum(1)


@pytest.mark.parametrize("base", NEW_BASES)
def test_kl_bound_over_the_ball_holds_at_sampled_and_pgd_points(base):
    model = _conv_bn().eval()
    x, y = _batch()
    eps = 0.03
    objective = create_objective(base, model, INFO)
    with torch.no_grad():
        terms, pairwise_lower = objective.loss_and_pairwise_lower(x, y, eps, 0.5, region="ball")
    kl_bound = kl_upper_bound(terms.logits, pairwise_upper_from_lower(pairwise_lower))
    p_clean = F.softmax(terms.logits, 1)
    lower, upper = linf_ball_box(x, eps)
    worst = pgd_maximize(model, lower, upper, lambda logits: _kl(p_clean, logits), steps=30, restarts=2)
    with torch.no_grad():
        samples = lower + torch.rand(32, *x.shape) * (upper - lower)
        assert all((_kl(p_clean, model(sample)) <= kl_bound + 1e-5).all() for sample in samples)
        assert (_kl(p_clean, model(worst)) <= kl_bound + 1e-5).all()


def test_maar_sabr_region_base_bounds_the_kl_over_the_small_box_only():
    model = _conv_bn().eval()
    x, y = _batch()
    eps = 0.1
    sabr = create_objective("sabr", model, INFO, shrinkage=0.2)
    torch.manual_seed(9)
    with torch.no_grad():
        terms, box_pairwise = sabr.loss_and_pairwise_lower(x, y, eps, 0.5, region="base")
    torch.manual_seed(9)
    box_lower, box_upper = sabr.input_box(x, y, eps)
    torch.manual_seed(9)
    with torch.no_grad():
        _, ball_pairwise = sabr.loss_and_pairwise_lower(x, y, eps, 0.5, region="ball")
    box_bound = kl_upper_bound(terms.logits, pairwise_upper_from_lower(box_pairwise))
    ball_bound = kl_upper_bound(terms.logits, pairwise_upper_from_lower(ball_pairwise))
    p_clean = F.softmax(terms.logits, 1)
    with torch.no_grad():
        for _ in range(16):
            sample = box_lower + torch.rand_like(x) * (box_upper - box_lower)
            assert (_kl(p_clean, model(sample)) <= box_bound + 1e-5).all()
    assert (box_bound < ball_bound).all()  # the small box's bound is not one over the ball
    maar = create_objective("maar-sabr", model, INFO, shrinkage=0.2, lam=1.0, weighting="soft")
    torch.manual_seed(9)
    total = maar.loss(x, y, eps, 0.5).total
    weights = misclassification_weights(terms.logits, y, "soft")
    assert torch.allclose(total, terms.total + 0.5 * (weights * box_bound).mean(), atol=1e-6)


@pytest.fixture
def third_party_bases(tmp_path, monkeypatch):
    """Two plug-ins through the entry point: a base with pairwise bounds (written against the interface only)
    and an objective without them."""
    (tmp_path / "third_party_bases.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass

        import torch.nn.functional as F
        from maar_plugin.bounds.box import linf_ball_box
        from maar_plugin.bounds.ibp import interval_bounds
        from maar_plugin.bounds.specs import margins_from_pairwise, pairwise_matrix, pairwise_spec
        from maar_plugin.objectives import LossTerms, Objective, PairwiseBoundsObjective, hyperparameter
        from maar_plugin.objectives.losses import robust_ce_from_margins

        @dataclass(frozen=True)
        class ScaledHyperparameters:
            scale: float = hyperparameter(2.0, "weight of the robust CE")

        class ScaledIbp(PairwiseBoundsObjective):
            description = "scale · IBP robust CE (a test plug-in)"
            Hyperparameters = ScaledHyperparameters

            def loss_and_pairwise_lower(self, x, y, eps, progress, tight_pairwise=False, region="base"):
                logits = self.model(x)
                classes = logits.shape[1]
                lower, upper = linf_ball_box(x, eps)
                rows = interval_bounds(self.model, lower, upper, pairwise_spec(classes, 1))[0]
                pairwise = pairwise_matrix(rows, classes)
                robust = robust_ce_from_margins(margins_from_pairwise(pairwise, y)).mean()
                return LossTerms(self.hyperparameters.scale * robust, logits, {"robust_ce": robust.detach()}), pairwise

        class Plain(Objective):
            description = "clean CE (a test plug-in without bounds)"

            def loss(self, x, y, eps, progress):
                logits = self.model(x)
                return LossTerms(F.cross_entropy(logits, y), logits, {})
    '''))
    dist_info = tmp_path / "third_party_bases-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party-bases\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nscaled-ibp = third_party_bases:ScaledIbp\nplain = third_party_bases:Plain\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"scaled-ibp", "plain"} <= {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def test_maar_over_a_third_party_base(third_party_bases):
    assert "scaled-ibp" in certified_bases() and "plain" not in certified_bases()
    assert set(BUILT_IN_BASES) <= set(certified_bases())
    table = objective_hyperparameters("maar", {"base": "scaled-ibp"})
    assert table["scale"][0] == 2.0 and "lam" in table and "kappa_end" not in table
    model = _conv_bn().eval()
    x, y = _batch()
    base = create_objective("scaled-ibp", model, INFO, scale=3.0)
    maar = create_objective("maar", model, INFO, base="scaled-ibp", scale=3.0, lam=1.0, weighting="soft")
    terms, pairwise_lower = base.loss_and_pairwise_lower(x, y, 0.05, 0.5)
    kl_bound = kl_upper_bound(terms.logits, pairwise_upper_from_lower(pairwise_lower))
    expected = terms.total + 0.5 * (misclassification_weights(terms.logits, y, "soft") * kl_bound).mean()
    assert torch.allclose(maar.loss(x, y, 0.05, 0.5).total, expected, atol=1e-6)
    assert _same_network(_train("maar", {"base": "scaled-ibp", "lam": 0.0}, 0), _train("scaled-ibp", {}, 0))
    with pytest.raises(MaarError, match=r"base 'plain' exposes no pairwise bounds; certified bases: .*scaled-ibp"):
        create_objective("maar", model, INFO, base="plain")
    with pytest.raises(MaarError, match="no hyperparameter 'alpha'"):
        create_objective("maar", model, INFO, base="scaled-ibp", alpha=0.5)


def test_results_rows_take_the_hyperparameters_of_maars_base():
    from maar_plugin.reproduce import parse_row

    row = parse_row("maar:shrinkage=0.5:base=sabr:lam=1")
    assert row.objective_args == {"shrinkage": 0.5, "base": "sabr", "lam": 1}
    assert parse_row("maar-mtl-ibp:alpha=0.5").objective_args == {"alpha": 0.5}
    with pytest.raises(MaarError, match="'shrinkage' is not a hyperparameter of maar"):
        parse_row("maar:shrinkage=0.5")  # the default base, crown-ibp, has none
    from maar_plugin.reproduce.table import maar_base, table_order

    labels = ["maar-sabr:weighting=soft", "mtl-ibp", "sabr", "maar:base=mtl-ibp", "ibp", "pgd"]
    assert table_order(labels) == ["pgd", "ibp", "sabr", "maar-sabr:weighting=soft", "mtl-ibp", "maar:base=mtl-ibp"]
    assert maar_base("maar:base=mtl-ibp") == "mtl-ibp" and maar_base("maar-sabr") == "sabr"
