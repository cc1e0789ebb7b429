"""The verifier's memory: the estimate of what a network needs, the limit's shares, and the limit on every path."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from torch import nn

from helpers import write_tiny_benchmark
from maar_plugin.cli import cli
from maar_plugin.errors import MaarError
from maar_plugin.verification import VerifyOptions, read_log, verify_instances
from maar_plugin.verification.memory import (
    BYTES_PER_VALUE,
    COPIES,
    SPEC_ROWS,
    VALUES_PER_NEURON,
    MemoryBudget,
    memory_plan,
    size_text,
)
from maar_plugin.verification.network.layers import GraphNode, LayerGraph


def chain(nodes: list[tuple[str, tuple[int, ...], nn.Module | None]], input_shape: tuple[int, ...]) -> LayerGraph:
    graph_nodes = [GraphNode(name, () if index == 0 else (index - 1,), shape, None if index == 0 else index - 1)
                   for index, (name, shape, _) in enumerate(nodes)]
    return LayerGraph(graph_nodes, [module for _, _, module in nodes[1:]], input_shape)


def test_plan_of_a_dense_chain_by_hand():
    graph = chain([("x", (4,), None), ("fc1", (3,), nn.Linear(4, 3)), ("relu", (3,), nn.ReLU()),
                   ("fc2", (2,), nn.Linear(3, 2))], (1, 4))
    plan = memory_plan(graph)
    parameters, neurons = 4 * 3 + 3 + 3 * 2 + 2, 4 + 3 + 3 + 2
    assert plan.fixed == BYTES_PER_VALUE * (parameters + VALUES_PER_NEURON * neurons)
    assert plan.intermediate == BYTES_PER_VALUE * COPIES * 3 * 4        # 3 ReLU inputs, rows as wide as the input
    assert plan.final == BYTES_PER_VALUE * COPIES * SPEC_ROWS * 4      # the widest row of the output's pass: the input
    assert plan.minimum == plan.fixed + plan.final
    assert plan.full_crown(plan.fixed + plan.intermediate) and not plan.full_crown(plan.fixed + plan.intermediate - 1)


def test_plan_follows_the_receptive_field_through_convolutions():
    """conv 3×3 s1 then conv 3×3 s2 on 1×8×8: the second ReLU's rows reach a 5×5 input patch (25 values), the
    first ReLU's a 3×3 one (9); 72 first-layer neurons × 9 is the largest product."""
    graph = chain([("x", (1, 8, 8), None), ("c1", (2, 6, 6), nn.Conv2d(1, 2, 3)), ("r1", (2, 6, 6), nn.ReLU()),
                   ("c2", (2, 2, 2), nn.Conv2d(2, 2, 3, stride=2)), ("r2", (2, 2, 2), nn.ReLU())], (1, 1, 8, 8))
    assert memory_plan(graph).intermediate == BYTES_PER_VALUE * COPIES * max(72 * 9, 8 * 25)


def test_budget_shares_add_up_to_the_limit():
    budget = MemoryBudget(8e9)
    assert budget.bound_stages + budget.search_pass + budget.search_store == budget.limit
    assert budget.bound_stages == 4e9 and budget.search_pass == 2e9


def test_a_network_over_the_limit_is_one_line_with_readable_sizes():
    graph = chain([("x", (4,), None), ("fc1", (3,), nn.Linear(4, 3)), ("relu", (3,), nn.ReLU()),
                   ("fc2", (2,), nn.Linear(3, 2))], (1, 4))
    with pytest.raises(MaarError, match=r"^net: verifying this network needs about [0-9.]+ MB, over the memory limit "
                                        r"of 0\.0 MB \(--memory-limit\)$"):
        MemoryBudget(10.0).check(memory_plan(graph), "net")
    MemoryBudget(1e6).check(memory_plan(graph), "net")          # fits
    assert size_text(2.5e9) == "2.5 GB" and size_text(3.2e6) == "3.2 MB"


@pytest.mark.parametrize("how", ["batch", "cli-csv", "cli-single"])
def test_the_memory_limit_holds_on_every_path(tmp_path, how):
    specs = write_tiny_benchmark(tmp_path, ["never", "always"])
    instances = [(specs.parent / "models" / "net.onnx", specs / f"{name}.vnnlib", 10) for name in ("never", "always")]
    if how == "batch":
        results = verify_instances(instances, tmp_path / "out", options=VerifyOptions(memory_limit=1e-6),
                                   progress=False)
        assert [r.verdict for r in results] == ["error", "error"]
        assert all("over the memory limit" in r.message for r in read_log(tmp_path / "out"))
        return
    arguments = (["--instances", str(specs / "instances.csv"), "--out", str(tmp_path / "out")] if how == "cli-csv"
                 else ["--onnx", str(instances[0][0]), "--vnnlib", str(instances[0][1])])
    result = CliRunner().invoke(cli, ["verify", *arguments, "--memory-limit", "0.000001", "--no-progress"])
    if how == "cli-csv":
        assert result.exit_code == 0, result.output
        assert [r.verdict for r in read_log(tmp_path / "out")] == ["error", "error"]
    else:
        assert result.exit_code == 1 and "over the memory limit" in result.output
