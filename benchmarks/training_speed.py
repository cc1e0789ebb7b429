"""Training speed per objective and model: ms per optimiser step on the same batches.

Rows: the registered objectives natural, pgd, ibp, crown-ibp, sabr, mtl-ibp and MAAR over each certified
base (at the middle of the ε ramp, so CROWN-IBP's β and MAAR's λ are both non-zero), and reference steps
written the way auto_LiRPA's examples/vision/simple_training.py writes them (BoundedModule + compute_bounds
with the margin spec C, CE of the logits [0, -lb]) for IBP and CROWN-IBP, plus the same IBP step on the
fused plain-torch bounds. The attack bases (sabr, mtl-ibp) are also timed against a PGD step with their
attack (same steps and restarts) plus an IBP step on the same batch (column "/pgd+ibp"; target <= 1.3).
Batches are uniform random images with random labels, drawn once.

    python benchmarks/training_speed.py --models mlp-256x2 dm-small --steps 20 --json speed.json
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maar_plugin.bounds.ibp import interval_bounds
from maar_plugin.bounds.lirpa import BoundedModule, BoundedTensor, PerturbationLpNorm  # auto_LiRPA, patched
from maar_plugin.bounds.specs import margin_spec
from maar_plugin.data import DatasetInfo, dataset_info
from maar_plugin.models import create_model
from maar_plugin.objectives import create_objective
from maar_plugin.objectives.certified import AttackHyperparameters

OBJECTIVES = ["natural", "pgd", "ibp", "crown-ibp", "sabr", "mtl-ibp", "maar-ibp", "maar-crown-ibp", "maar-sabr",
              "maar-mtl-ibp"]
MAAR_BASE = {"maar-ibp": "ibp", "maar-crown-ibp": "crown-ibp", "maar-sabr": "sabr", "maar-mtl-ibp": "mtl-ibp"}
ATTACK_BASES = ("sabr", "mtl-ibp")  # timed against "pgd (same attack)" + "ibp"
SAME_ATTACK_PGD = "pgd (same attack)"
PROGRESS = 0.5  # middle of the ε ramp: κ, β and λ all strictly between their end points
CROWN_IBP_FACTOR = 1.0 - PROGRESS  # β of the reference CROWN-IBP step, as the objective's at PROGRESS

Step = Callable[[Tensor, Tensor], None]


def objective_step(name: str, model: nn.Module, info: DatasetInfo, eps: float, **arguments) -> Step:
    objective = create_objective(name, model, info, **arguments)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(x: Tensor, y: Tensor) -> None:
        loss = objective.loss(x, y, eps, PROGRESS).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def robust_ce(margin_lower: Tensor) -> Tensor:
    """simple_training.py's robust loss: CE of the logits [0, -lb] with the true class at index 0."""
    padded = torch.cat([margin_lower.new_zeros(len(margin_lower), 1), margin_lower], dim=1)
    return F.cross_entropy(-padded, padded.new_zeros(len(padded), dtype=torch.long))


def reference_lirpa_step(method: str, model: nn.Module, info: DatasetInfo, eps: float) -> Step:
    """An IBP or CROWN-IBP step as in auto_LiRPA's examples/vision/simple_training.py (κ = 0.5)."""
    # a batch of 2: tracing runs a train-mode forward, which BatchNorm1d refuses for a single example
    bounded = BoundedModule(model, torch.zeros(2, *info.input_shape, device=next(model.parameters()).device))
    bounded.train()
    model.train()  # wrapping leaves a model with BatchNorm1d in eval mode
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)  # BoundedModule shares them

    def step(x: Tensor, y: Tensor) -> None:
        spec = margin_spec(y, info.num_classes)
        box = BoundedTensor(x, PerturbationLpNorm(x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1)))
        natural_ce = F.cross_entropy(bounded(box), y)
        lower, _ = bounded.compute_bounds(IBP=True, C=spec, method=None)
        if method == "CROWN-IBP":
            crown_lower, _ = bounded.compute_bounds(IBP=False, C=spec, method="backward", bound_upper=False)
            lower = CROWN_IBP_FACTOR * crown_lower + (1 - CROWN_IBP_FACTOR) * lower
        loss = 0.5 * natural_ce + 0.5 * robust_ce(lower)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def reference_fused_ibp_step(model: nn.Module, info: DatasetInfo, eps: float) -> Step:
    """The reference IBP step with the fused plain-torch bounds instead of auto_LiRPA."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(x: Tensor, y: Tensor) -> None:
        natural_ce = F.cross_entropy(model(x), y)
        spec = margin_spec(y, info.num_classes)
        lower, _ = interval_bounds(model, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1), spec)
        loss = 0.5 * natural_ce + 0.5 * robust_ce(lower)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_step(step: Step, batches: list[tuple[Tensor, Tensor]], warmup: int, device: torch.device) -> float:
    """Mean milliseconds per step over ``batches`` after ``warmup`` untimed steps."""
    for x, y in batches[:warmup]:
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for x, y in batches[warmup:]:
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - start) / (len(batches) - warmup)


def time_interleaved(steps: dict[str, Step], batches: list[tuple[Tensor, Tensor]], warmup: int,
                     device: torch.device) -> dict[str, float]:
    """Median milliseconds per step of each row, one step of every row per batch in turn, so that a shared
    machine's changing load falls on all rows alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for index, (x, y) in enumerate(batches):
        for name, step in steps.items():
            start = time.perf_counter()
            step(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def benchmark_model(model_name: str, info: DatasetInfo, batches, warmup: int, eps: float,
                    device: torch.device, objectives: list[str], interleave: bool = False) -> list[dict]:
    torch.manual_seed(0)
    initial = create_model(model_name, info).to(device).train()
    builders = {name: (lambda m, name=name: objective_step(name, m, info, eps)) for name in objectives}
    if set(ATTACK_BASES) & set(objectives):
        attack = {f.name: f.default for f in dataclasses.fields(AttackHyperparameters)}
        builders[SAME_ATTACK_PGD] = lambda m: objective_step("pgd", m, info, eps, steps=attack["attack_steps"],
                                                            restarts=attack["attack_restarts"])
    builders["reference lirpa ibp"] = lambda m: reference_lirpa_step("IBP", m, info, eps)
    builders["reference lirpa crown-ibp"] = lambda m: reference_lirpa_step("CROWN-IBP", m, info, eps)
    builders["reference fused ibp"] = lambda m: reference_fused_ibp_step(m, info, eps)
    if interleave:
        rows = time_interleaved({name: build(copy.deepcopy(initial)) for name, build in builders.items()},
                                batches, warmup, device)
    else:
        rows = {name: time_step(build(copy.deepcopy(initial)), batches, warmup, device)
                for name, build in builders.items()}
    def ratio(name: str, *references: str) -> float | None:
        return rows[name] / sum(rows[r] for r in references) if all(r in rows for r in references) else None

    return [{"model": model_name, "objective": name, "ms_per_step": ms, "vs_natural": ratio(name, "natural"),
             "maar_vs_base": ratio(name, MAAR_BASE[name]) if name in MAAR_BASE else None,
             "vs_pgd_plus_ibp": ratio(name, SAME_ATTACK_PGD, "ibp") if name in ATTACK_BASES else None}
            for name, ms in rows.items()]


def format_table(rows: list[dict]) -> str:
    def cell(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else ""

    lines = [f"{'model':<11} {'objective':<26} {'ms/step':>9} {'x natural':>9} {'MAAR/base':>9} {'/pgd+ibp':>9}"]
    for row in rows:
        lines.append(f"{row['model']:<11} {row['objective']:<26} {row['ms_per_step']:>9.1f} "
                     f"{cell(row['vs_natural']):>9} {cell(row['maar_vs_base']):>9} {cell(row['vs_pgd_plus_ibp']):>9}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp-256x2", "dm-small"])
    parser.add_argument("--objectives", nargs="+", default=OBJECTIVES, choices=OBJECTIVES,
                        help="objective rows (the reference rows always run)")
    parser.add_argument("--dataset", default="mnist", help="fixes the input shape and classes (data are random)")
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf radius in pixel space")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, help="timed steps per row (default: 30 on a GPU, 3 on the CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 5 on a GPU, 1 on the CPU)")
    parser.add_argument("--interleave", action="store_true",
                        help="one step of every row per batch in turn, medians (for a shared CPU)")
    parser.add_argument("--json", dest="json_path", help="also write the rows to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (30 if device.type == "cuda" else 3)
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 1)
    info = dataset_info(args.dataset)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(args.batch_size, *info.input_shape, generator=generator).to(device),
                torch.randint(0, info.num_classes, (args.batch_size,), generator=generator).to(device))
               for _ in range(warmup + steps)]
    rows = [row for model_name in args.models
            for row in benchmark_model(model_name, info, batches, warmup, args.eps, device, args.objectives,
                                       args.interleave)]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{args.dataset}, batch {args.batch_size}, eps {args.eps}, {steps} timed steps after {warmup}, "
          f"{device_name}, torch {torch.__version__}")
    print(format_table(rows))
    if args.json_path:
        directory = os.path.dirname(os.path.abspath(args.json_path))
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as stream:
            json.dump({"device": device_name, "batch_size": args.batch_size, "steps": steps, "rows": rows}, stream,
                      indent=2)
        os.replace(stream.name, args.json_path)


if __name__ == "__main__":
    main()
