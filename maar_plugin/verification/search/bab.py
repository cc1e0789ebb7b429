"""Batched branch and bound on ReLU splits: the complete stage for networks too large for the MILP.

The open disjuncts of a property (each ``C y <= d``: refuted when some row's lower bound of
``C_r y − d_r`` clears the tolerance) start as one root domain each. Every iteration takes the
``batch_size`` domains with the lowest bound (any disjunct), splits each on the ReLU that the
``branching`` strategy picks (:mod:`~maar_plugin.verification.search.branching`), and bounds the 2·batch
children in one pass of :class:`~maar_plugin.verification.bounding.linear.SplitBoundEngine`, optimising
their α and β (inherited from the parent) by projected Adam for ``iterations`` steps. A child whose
bound clears the tolerance is dropped; every other child's bound-minimising input is run through the
network, and points that violate their disjunct go to ``search`` (the caller confirms them on the
original ONNX model, and may attack from them). A domain with every unstable ReLU split is affine on
the box and is decided exactly by one LP (:mod:`~maar_plugin.verification.search.pattern_lp`): dropped when
refuted, else its LP minimiser goes to ``confirm``. The property holds when no domain is left; a
confirmed point ends the search.

Sigmoid and Tanh nodes are not split: every domain keeps their relaxation over the root bounds, which
is sound but not complete, so where a domain with every unstable ReLU split is still open the search
ends ``unknown``.

Domains are tensors, not objects: per domain its disjunct, its split signs, α and β on the root's
unstable ReLUs only (a stable ReLU has no slope to choose and is never split), its bound and its next
branching choice; α and β in half precision. Memory per domain is about ``U·(1 + 4R)`` bytes for U
root-unstable ReLUs and R rows. The search is best first (the lowest bound) while the domain store is less
than half full (its share of the memory limit), then depth first (the domains with the most splits, which
close fastest), and never takes more parents than the store can hold children: it gives up for memory
only when the store is full.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from maar_plugin.bounds.layers import adaptive_lower_slope
from maar_plugin.verification.bounding.linear import SplitBoundEngine
from maar_plugin.verification.memory import MemoryBudget
from maar_plugin.verification.network.layers import Add, Sub
from maar_plugin.verification.options import BabOptions
from maar_plugin.verification.search.branching import BRANCHING_STRATEGIES, BranchingInput
from maar_plugin.verification.search.pattern_lp import FixedPatternLP

FLOAT32_ALLOWANCE = 1e-6  # times the bound's term magnitude: rounding of a float32 bound pass


@dataclass(frozen=True)
class BabProblem:
    """The open disjuncts of one input box.

    ``C`` [D, R, K] rows per disjunct (padded by repeating a row), ``offsets`` [D, R] (``d``),
    ``thresholds`` [D, R] (the margin a row's bound must clear), ``lower``/``upper`` [n] the box,
    ``relu_bounds`` per ReLU node (l, u) of its input [*shape] over the box (sound, e.g. auto_LiRPA's), and
    the same for every Sigmoid and Tanh node (their relaxation stays the root's: they are not split).
    """

    C: Tensor
    offsets: Tensor
    thresholds: Tensor
    lower: Tensor
    upper: Tensor
    relu_bounds: dict[int, tuple[Tensor, Tensor]]


@dataclass
class BabOutcome:
    """``proved``, ``counterexample`` (``point`` is set), ``timeout`` or ``unknown`` (``message`` says why).

    ``lowest`` (where the search stopped with domains open): per disjunct of the problem, the lowest bound
    of its open domains, a proven lower bound of ``min_box max_r (C_r y − d_r)`` (0 where none is open).
    """

    status: str
    point: Tensor | None = None
    domains: int = 0
    iterations: int = 0
    message: str = ""
    lowest: Tensor | None = None


STORED = torch.float16   # α and β as stored between passes: any α in [0, 1] and β >= 0 keeps a bound sound


class _Domains:
    """The unproved domains as stacked tensors (α and β in ``STORED`` precision; ``margin`` and ``choice``
    once bounded)."""

    margin: Tensor
    choice: Tensor

    def __init__(self, disjunct: Tensor, signs: Tensor, alpha: Tensor, beta: Tensor, margin: Tensor | None,
                 choice: Tensor | None):
        self.disjunct, self.signs, self.alpha, self.beta = disjunct, signs, alpha, beta
        if margin is not None:
            self.margin = margin
        if choice is not None:
            self.choice = choice

    def __len__(self) -> int:
        return int(self.disjunct.shape[0])

    def append(self, other: _Domains) -> None:
        for name in ("disjunct", "signs", "alpha", "beta", "margin", "choice"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))

    def pop_worst(self, count: int, deepest: bool = False) -> _Domains:
        """Remove and return the ``count`` domains with the lowest margin, or (``deepest``) those with the most
        splits, the lowest margin first among equals."""
        order = torch.argsort(self.margin)
        if deepest:
            depth = (self.signs != 0).sum(dim=1)[order]
            order = order[torch.argsort(depth, descending=True, stable=True)]
        return self.pop(torch.zeros_like(self.margin, dtype=torch.bool).index_fill_(0, order[:count], True))

    def pop(self, taken: Tensor) -> _Domains:
        """Remove and return the domains where the boolean mask ``taken`` is set."""
        fields = ("disjunct", "signs", "alpha", "beta", "margin", "choice")
        picked = _Domains(*(getattr(self, name)[taken] for name in fields))
        for name in fields:
            setattr(self, name, getattr(self, name)[~taken])
        return picked


class BranchAndBound:
    """One search over one problem (see the module docstring)."""

    def __init__(self, engine: SplitBoundEngine, problem: BabProblem, options: BabOptions, memory: MemoryBudget,
                 confirm: Callable[[Tensor], Tensor | None], attack: Callable[[Tensor], Tensor | None] | None = None):
        self.engine, self.options = engine, options
        self.promising: Tensor | None = None     # the least-slack points of the last bound pass, for ``attack``
        self.confirm, self.attack = confirm, attack
        self.exact: FixedPatternLP | None = None    # decides fully split domains; built when one turns up
        self.open: _Domains | None = None           # the open domains, once ``run`` has bounded the roots
        dtype, device = engine.dtype, engine.device
        self.C = problem.C.to(dtype=dtype, device=device)
        self.offsets = problem.offsets.to(dtype=dtype, device=device)
        self.thresholds = problem.thresholds.to(dtype=dtype, device=device)
        self.lower = problem.lower.to(dtype=dtype, device=device).reshape(1, -1)
        self.upper = problem.upper.to(dtype=dtype, device=device).reshape(1, -1)
        self.rows = self.C.shape[1]
        # Root-unstable neurons of every ReLU, as flat indices, and their place in the compressed layout.
        self.root: dict[int, tuple[Tensor, Tensor]] = {}
        self.unstable: dict[int, Tensor] = {}
        self.slices: dict[int, slice] = {}
        start = 0
        for relu in engine.relus:
            l, u = (t.to(dtype=dtype, device=device) for t in problem.relu_bounds[relu])
            self.root[relu] = (l, u)
            index = torch.nonzero(((l < 0) & (u > 0)).reshape(-1)).reshape(-1)
            self.unstable[relu] = index
            self.slices[relu] = slice(start, start + index.numel())
            start += index.numel()
        self.num_unstable = start
        self.s_shaped_bounds = {
            index: (low.to(dtype=dtype, device=device)[None], up.to(dtype=dtype, device=device)[None])
            for index, (low, up) in ((i, problem.relu_bounds[i]) for i in engine.s_shaped)}
        flat_l = torch.cat([self.root[r][0].reshape(-1)[self.unstable[r]] for r in engine.relus]) if start else None
        flat_u = torch.cat([self.root[r][1].reshape(-1)[self.unstable[r]] for r in engine.relus]) if start else None
        self.unstable_lower, self.unstable_upper = flat_l, flat_u
        self.unstable_bias = torch.cat([_preactivation_bias(engine, engine.relu_inputs[r])[self.unstable[r]]
                                        for r in engine.relus]) if start else None
        per_domain = sum(int(l.numel()) for l, _ in self.root.values()) * self.rows * 4 * 24
        # the 2·batch children of one pass, and the stored domains, each within their share of the memory
        self.batch_size = max(1, min(options.batch_size, int(memory.search_pass // (2 * max(per_domain, 1)))))
        self.candidate_chunk = max(2, int(memory.search_pass // max(per_domain, 1)))   # children per FSB pass
        self.max_domains = max(1000, int(memory.search_store // max(1, self.num_unstable * (1 + 4 * self.rows) + 32)))
        # later ReLUs whose unstable neurons are few enough to be bounded again in every domain
        self.refined = [relu for relu in engine.relus[1:] if 0 < self.unstable[relu].numel() <= options.refine_rows]

    def run(self, deadline: float) -> BabOutcome:
        disjuncts = torch.arange(self.C.shape[0], device=self.engine.device)
        count = len(disjuncts)
        signs = torch.zeros(count, self.num_unstable, dtype=torch.int8, device=self.engine.device)
        alpha = self._default_alpha(count).to(STORED)
        beta = torch.zeros_like(alpha)
        domains, found = self._bound(_Domains(disjuncts, signs, alpha, beta, None, None), self.options.root_iterations,
                                     deadline)
        self.open = domains         # the store, kept on the search for inspection after it stops
        visited, iterations, undecided = count, 0, ""
        while found is None and len(domains):
            if time.monotonic() > deadline:
                return BabOutcome("timeout", domains=visited, iterations=iterations,
                                  message=f"{len(domains)} domains open at the deadline",
                                  lowest=self._lowest(domains, undecided))
            room = (self.max_domains - len(domains)) // 2       # each parent becomes two children
            if room < 1:
                return BabOutcome("unknown", domains=visited, iterations=iterations,
                                  message=f"more than {self.max_domains} open domains (memory limit)",
                                  lowest=self._lowest(domains, undecided))
            if bool((domains.choice < 0).any()):
                found, note = self._decide_exhausted(domains.pop(domains.choice < 0), deadline)
                if note and time.monotonic() > deadline:
                    return BabOutcome("timeout", domains=visited, iterations=iterations,
                                      message="the deadline passed during an exact LP")
                undecided = undecided or note      # the other domains may still hold a counterexample
                continue
            # best first while the store is less than half full, then depth first (deep domains close fastest)
            parents = domains.pop_worst(min(self.batch_size, room), deepest=2 * len(domains) >= self.max_domains)
            children = self._split(parents)
            visited += len(children)
            iterations += 1
            bounded, found = self._bound(children, self.options.iterations, deadline)
            domains.append(bounded)
            if found is None and self.attack is not None and self.promising is not None \
                    and iterations % self.options.attack_every == 0:
                found = self.attack(self.promising)
        if found is not None:
            return BabOutcome("counterexample", found, domains=visited, iterations=iterations)
        if undecided:
            return BabOutcome("unknown", domains=visited, iterations=iterations, message=undecided)
        return BabOutcome("proved", domains=visited, iterations=iterations)

    def _lowest(self, domains: _Domains, undecided: str) -> Tensor | None:
        """Per disjunct, the lowest margin of its open domains, 0 where none is open (every domain it had was
        refuted): a lower bound of ``min_box max_r (C_r y − d_r)`` (less the refutation threshold that every
        margin includes). None where a fully split domain was left undecided."""
        if undecided:
            return None
        lowest = torch.full((self.C.shape[0],), torch.inf, dtype=self.engine.dtype, device=self.engine.device)
        lowest = lowest.scatter_reduce(0, domains.disjunct, domains.margin.to(lowest.dtype), "amin")
        return torch.where(torch.isinf(lowest), torch.zeros_like(lowest), lowest)

    def _decide_exhausted(self, exhausted: _Domains, deadline: float) -> tuple[Tensor | None, str]:
        """Decide domains with every unstable ReLU split by one exact LP each (:mod:`.pattern_lp`): refuted ones
        are dropped, the LP's deepest violation of another is confirmed. Returns a confirmed counterexample
        (at the first) and why a domain stays undecided (empty when every domain was refuted)."""
        if self.engine.s_shaped:
            return None, ("the Sigmoid/Tanh activations keep their relaxation over the root bounds (they are not "
                          "split), and it leaves a domain open with every unstable ReLU split")
        if self.exact is None:
            self.exact = FixedPatternLP(self.engine.graph, self.root, self.lower, self.upper, self.engine.device)
        _, split_signs = self._relu_bounds(exhausted.signs)
        undecided = ""
        for k, disjunct in enumerate(exhausted.disjunct.tolist()):
            verdict = self.exact.decide(self.C[disjunct], self.offsets[disjunct], self.thresholds[disjunct],
                                        {relu: signs[k] for relu, signs in split_signs.items()},
                                        deadline - time.monotonic())
            if verdict.refuted:
                continue
            if verdict.point is None:
                undecided = "HiGHS did not solve the exact LP of a domain with every unstable ReLU split"
                continue
            point = torch.as_tensor(verdict.point, dtype=self.engine.dtype, device=self.engine.device)
            found = self.confirm(point[None])
            if found is not None:
                return found, ""
            undecided = (f"a domain with every unstable ReLU split is not refuted by its exact LP, and its deepest "
                         f"violation (objective {verdict.value:.3g}) does not confirm as a counterexample")
        return None, undecided

    def _default_alpha(self, count: int) -> Tensor:
        if not self.num_unstable:
            return torch.zeros(count, self.rows, 0, dtype=self.engine.dtype, device=self.engine.device)
        assert self.unstable_lower is not None and self.unstable_upper is not None  # set where num_unstable > 0
        slopes = adaptive_lower_slope(self.unstable_lower, self.unstable_upper)
        return slopes.expand(count, self.rows, -1).clone()

    def _split(self, parents: _Domains) -> _Domains:
        """Two children per parent, on its chosen neuron: active (+1) and inactive (−1)."""
        count = len(parents)
        rows = torch.arange(count, device=parents.signs.device)
        signs = parents.signs.repeat(2, 1)
        signs[rows, parents.choice] = 1
        signs[rows + count, parents.choice] = -1
        beta = parents.beta.repeat(2, 1, 1)
        beta[torch.cat([rows, rows + count]), :, parents.choice.repeat(2)] = 0.0
        return _Domains(parents.disjunct.repeat(2), signs, parents.alpha.repeat(2, 1, 1), beta,
                        parents.margin.repeat(2), parents.choice.repeat(2))

    def _expand(self, signs: Tensor, compressed: Tensor | None,
                base: dict[int, Tensor] | None = None) -> dict[int, Tensor]:
        """Per ReLU, a dense [R, B, *shape] tensor: ``base`` (or 0) with the compressed values at the unstable
        neurons."""
        result = {}
        batch = signs.shape[0]
        for relu in self.engine.relus:
            l, _ = self.root[relu]
            index = self.unstable[relu]
            dense = (torch.zeros(self.rows, batch, l.numel(), dtype=self.engine.dtype, device=self.engine.device)
                     if base is None else base[relu].reshape(1, 1, -1).expand(self.rows, batch, -1).clone())
            if compressed is not None and index.numel():
                dense = dense.index_copy(2, index, compressed[:, :, self.slices[relu]])
            result[relu] = dense.reshape(self.rows, batch, *l.shape)
        return result

    def _relu_bounds(self, signs: Tensor) -> tuple[dict[int, tuple[Tensor, Tensor]], dict[int, Tensor]]:
        bounds, dense_signs = {}, {}
        batch = signs.shape[0]
        for relu in self.engine.relus:
            l, u = self.root[relu]
            index = self.unstable[relu]
            low = l.reshape(1, -1).expand(batch, -1).clone()
            up = u.reshape(1, -1).expand(batch, -1).clone()
            sign = torch.zeros(batch, l.numel(), dtype=torch.int8, device=signs.device)
            if index.numel():
                local = signs[:, self.slices[relu]]
                sign[:, index] = local
                low[:, index] = torch.where(local > 0, torch.zeros_like(low[:, index]), low[:, index])
                up[:, index] = torch.where(local < 0, torch.zeros_like(up[:, index]), up[:, index])
            bounds[relu] = (low.reshape(batch, *l.shape), up.reshape(batch, *l.shape))
            dense_signs[relu] = sign.reshape(batch, *l.shape)
        return {**bounds, **self.s_shaped_bounds}, dense_signs

    def _bound(self, domains: _Domains, iterations: int, deadline: float) -> tuple[_Domains, Tensor | None]:
        """Optimise and bound the domains (fewer steps where the deadline passes: every step's bound is
        sound); return the unproved ones (with their branching choice) and a confirmed counterexample, if
        one turned up."""
        batch = len(domains)
        C = self.C[domains.disjunct].transpose(0, 1)              # [R, B, K]
        offsets = self.offsets[domains.disjunct].T                # [R, B]
        thresholds = self.thresholds[domains.disjunct].T
        relu_bounds, split_signs = self._relu_bounds(domains.signs)
        lower, upper = self.lower.expand(batch, -1), self.upper.expand(batch, -1)
        self._refine(relu_bounds, lower, upper)
        lines = self.engine.lines(relu_bounds)      # made once for the optimisation steps below
        slopes = {relu: adaptive_lower_slope(*self.root[relu]) for relu in self.engine.relus}
        dtype = self.engine.dtype
        alpha = domains.alpha.permute(1, 0, 2).to(dtype).requires_grad_(True)   # [R, B, U]
        beta = domains.beta.permute(1, 0, 2).to(dtype).requires_grad_(True)
        optimizer = torch.optim.Adam([{"params": [alpha], "lr": self.options.lr_alpha},
                                      {"params": [beta], "lr": self.options.lr_beta}])
        best = torch.full((self.rows, batch), -torch.inf, dtype=self.engine.dtype, device=self.engine.device)
        best_alpha, best_beta = alpha.detach().clone(), beta.detach().clone()
        result = None
        for step in range(max(iterations, 1)):
            result = self.engine.bound(C, lower, upper, lines, alphas=self._expand(domains.signs, alpha, slopes),
                                       betas=self._expand(domains.signs, beta), split_signs=split_signs)
            margin = result.lower - offsets - thresholds - FLOAT32_ALLOWANCE * result.magnitude
            with torch.no_grad():
                improved = margin.detach() > best
                best = torch.where(improved, margin.detach(), best)
                best_alpha = torch.where(improved[..., None], alpha.detach(), best_alpha)
                best_beta = torch.where(improved[..., None], beta.detach(), best_beta)
                if bool((best.max(dim=0).values > 0).all()) or step == iterations - 1 or not self.num_unstable \
                        or time.monotonic() > deadline:
                    break                           # (without unstable ReLUs there is no α or β to optimise)
            optimizer.zero_grad(set_to_none=True)
            (-margin.clamp(max=0).sum()).backward()
            optimizer.step()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
                beta.clamp_(min=0.0)
        domain_margin = best.max(dim=0).values
        open_domains = domain_margin <= 0
        found = self._check_primal(result, C, offsets, open_domains)
        keep = torch.nonzero(open_domains).reshape(-1)
        kept = _Domains(domains.disjunct[keep], domains.signs[keep], best_alpha.permute(1, 0, 2)[keep].to(STORED),
                        best_beta.permute(1, 0, 2)[keep].to(STORED), domain_margin[keep], None)
        kept.choice = self._branching_choice(result, best.argmax(dim=0)[keep], keep, kept)
        return kept, found

    def _refine(self, relu_bounds: dict[int, tuple[Tensor, Tensor]], lower: Tensor, upper: Tensor) -> None:
        """Bound the root-unstable neurons of the ``refined`` ReLUs again in every domain, layer by layer, by
        CROWN over the domain's (already refined) earlier bounds, whose split neurons are clamped at 0: valid on
        the domain, and intersected with what was known (β-CROWN's intermediate bounds after a split, without
        β). ``relu_bounds`` is updated in place."""
        for relu in self.refined:
            index = self.unstable[relu]
            source = self.engine.relu_inputs[relu]
            low, up = relu_bounds[relu]
            batch, shape, count = low.shape[0], low.shape[1:], index.numel()
            C = torch.zeros(2 * count, low[0].numel(), dtype=self.engine.dtype, device=self.engine.device)
            rows = torch.arange(count, device=self.engine.device)
            C[rows, index], C[rows + count, index] = 1.0, -1.0
            with torch.no_grad():
                result = self.engine.bound(C[:, None].expand(-1, batch, -1).reshape(2 * count, batch, *shape),
                                           lower, upper, relu_bounds, start=source)
            flat_low, flat_up = low.reshape(batch, -1).clone(), up.reshape(batch, -1).clone()
            flat_low[:, index] = torch.maximum(flat_low[:, index], result.lower[:count].T)
            flat_up[:, index] = torch.minimum(flat_up[:, index], -result.lower[count:].T)
            flat_up = torch.maximum(flat_up, flat_low)
            relu_bounds[relu] = (flat_low.reshape(low.shape), flat_up.reshape(up.shape))

    def _check_primal(self, result, C: Tensor, offsets: Tensor, open_domains: Tensor) -> Tensor | None:
        """Run the bound-minimising inputs of the open domains through the network; ``confirm`` those that
        violate their disjunct. The least-slack points are kept for ``attack``."""
        if not bool(open_domains.any()):
            return None
        with torch.no_grad():
            points = result.primal[:, open_domains]                                  # [R, b, n]
            outputs = self.engine.forward(points.reshape(-1, points.shape[-1])).reshape(*points.shape[:2], -1)
            C_open = C[:, open_domains]                                              # [R, b, K]
            values = torch.einsum("rbk,sbk->srb", C_open, outputs) - offsets[:, open_domains][None]
            slack = values.max(dim=1).values.reshape(-1)                             # [s·b]: ≤ 0 violates
            points = points.reshape(-1, points.shape[-1])
        order = torch.argsort(slack)
        self.promising = points[order[:8]]
        violating = order[slack[order] <= 0][:8]
        return self.confirm(points[violating]) if violating.numel() else None

    def _branching_choice(self, result, best_row: Tensor, columns: Tensor, domains: _Domains) -> Tensor:
        """Per domain (``columns`` of ``result``, scored on its best row) the neuron that the ``branching``
        strategy splits next; −1 where every unstable ReLU is split."""
        batch = len(domains)
        if not self.num_unstable or not batch:
            return torch.full((batch,), -1, dtype=torch.long, device=domains.signs.device)
        assert self.unstable_lower is not None and self.unstable_upper is not None and self.unstable_bias is not None
        with torch.no_grad():
            A = torch.cat([result.relu_coefficients[relu].reshape(self.rows, result.lower.shape[1], -1)
                           [best_row, columns][:, self.unstable[relu]] for relu in self.engine.relus], dim=1)
            inputs = BranchingInput(A, self.unstable_lower, self.unstable_upper, self.unstable_bias,
                                    domains.signs == 0, lambda neurons: self._child_margins(domains, neurons))
            return BRANCHING_STRATEGIES[self.options.branching](inputs, self.options.branching_candidates)

    def _child_margins(self, domains: _Domains, neurons: Tensor) -> Tensor:
        """Margins [B, M, 2] of the active and inactive child of each domain split on each of its candidate
        ``neurons`` [B, M]: one bound pass (in chunks within the memory limit) with the parent's α and β."""
        batch, count = neurons.shape
        parent = torch.arange(batch, device=neurons.device).repeat_interleave(count)
        neuron = neurons.reshape(-1)
        margins = []
        step = max(1, self.candidate_chunk // 2)
        for start in range(0, batch * count, step):
            take = parent[start:start + step]
            candidates = _Domains(domains.disjunct[take], domains.signs[take], domains.alpha[take],
                                  domains.beta[take], domains.margin[take], neuron[start:start + step])
            children = self._split(candidates)
            margins.append(self._margins(children).reshape(2, -1).T)
        return torch.cat(margins).reshape(batch, count, 2)

    def _margins(self, domains: _Domains) -> Tensor:
        """Each domain's margin (its best row's) from one bound pass with its own α and β."""
        C = self.C[domains.disjunct].transpose(0, 1)
        offsets = self.offsets[domains.disjunct].T
        thresholds = self.thresholds[domains.disjunct].T
        relu_bounds, split_signs = self._relu_bounds(domains.signs)
        batch = len(domains)
        slopes = {relu: adaptive_lower_slope(*self.root[relu]) for relu in self.engine.relus}
        alpha = domains.alpha.permute(1, 0, 2).to(self.engine.dtype)
        beta = domains.beta.permute(1, 0, 2).to(self.engine.dtype)
        result = self.engine.bound(C, self.lower.expand(batch, -1), self.upper.expand(batch, -1), relu_bounds,
                                   alphas=self._expand(domains.signs, alpha, slopes),
                                   betas=self._expand(domains.signs, beta), split_signs=split_signs)
        margin = result.lower - offsets - thresholds - FLOAT32_ALLOWANCE * result.magnitude
        return margin.max(dim=0).values


def _preactivation_bias(engine: SplitBoundEngine, node: int) -> Tensor:
    """The constant part of a node (a ReLU's input: its layer's bias; of a sum, the sum of its summands'),
    flat; BaBSR's stand-in for the pre-activation value. Zero where the node has none (the input, a ReLU)."""
    if node in engine.constants:
        return engine.constants[node].reshape(-1)
    module = engine.graph.module_of(node) if node else None
    if isinstance(module, (Add, Sub)):
        first, second = (_preactivation_bias(engine, source) for source in engine.graph.nodes[node].inputs)
        return first + second if isinstance(module, Add) else first - second
    size = int(torch.Size(engine.graph.nodes[node].shape).numel())
    return torch.zeros(size, dtype=engine.dtype, device=engine.device)
