"""Helpers shared by the test modules (imported as ``helpers``; pytest puts tests/ on the path)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from maar_plugin.verification import VerifyOptions
from maar_plugin.verification.network.layers import Add, GraphNode, LayerGraph, Reshape
from maar_plugin.verification.result import InstanceResult

REPO = Path(__file__).resolve().parent.parent
FAST = VerifyOptions(timeout=30, pgd_steps=10, pgd_restarts=2, alpha_iterations=5)


def pythonpath_with(root: Path) -> str:
    """PYTHONPATH for a child process: ``root`` first, then the caller's (``make test-lirpa`` puts the
    auto_LiRPA checkout there)."""
    return os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))


def write_fake_run(run_dir: Path, model_name: str = "mlp-256x2", seed: int = 0, dataset: str = "mnist",
                   data_dir: str | None = None) -> nn.Sequential:
    """A training-run folder as `maar train` leaves it (config.json, checkpoint.pt) holding a freshly initialised
    registered model (``seed``ed; nothing is trained); returns that model in eval mode."""
    from maar_plugin.data import dataset_info
    from maar_plugin.models import create_model

    run_dir.mkdir(parents=True)
    torch.manual_seed(seed)
    model = create_model(model_name, dataset_info(dataset)).eval()
    torch.save({"model": model.state_dict(), "epoch": 0}, run_dir / "checkpoint.pt")
    config = {"dataset": dataset, "model": model_name, "objective": "natural", "eps": 0.1, "data_dir": data_dir,
              "seed": seed}
    (run_dir / "config.json").write_text(json.dumps(config))
    return model


def write_verify_folder(folder: Path, results: list[InstanceResult]) -> Path:
    """A results folder as `maar verify --out` writes it: result files and log.jsonl."""
    (folder / "results").mkdir(parents=True)
    with open(folder / "log.jsonl", "w") as log:
        for index, r in enumerate(results):
            (folder / "results" / f"{r.instance}.txt").write_text(r.vnncomp_text())
            log.write(json.dumps({**r.log_record(), "index": index}) + "\n")
    return folder


def check_counterexample(result: InstanceResult, onnx_path: Path, lower: np.ndarray, upper: np.ndarray,
                         disjuncts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Parse the result's VNN-COMP text, run X through onnxruntime, and check that X lies in the box, that the
    outputs reach an unsafe disjunct ``C y <= d`` and that the written Y are those outputs."""
    text = result.vnncomp_text()
    assert text.startswith("sat\n(")
    values = {}
    for line in text.splitlines()[1:]:
        name, value = line.strip(" ()").split()
        values[name] = float(value)
    x = np.array([values[f"X_{i}"] for i in range(len(lower))])
    assert np.all(x >= lower) and np.all(x <= upper)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    y = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32).reshape(shape)})[0].reshape(-1)
    assert any(np.all(C @ y.astype(np.float64) <= d) for C, d in disjuncts)
    assert np.allclose([values[f"Y_{j}"] for j in range(len(y))], y)


def residual_conv_graph(seed: int) -> LayerGraph:
    """A seeded LayerGraph with a convolutional residual block, average pooling and a dense head."""
    torch.manual_seed(seed)
    nodes = [GraphNode("x", (), (1, 6, 6), None), GraphNode("c1", (0,), (3, 6, 6), 0),
             GraphNode("r1", (1,), (3, 6, 6), 1), GraphNode("c2", (2,), (3, 6, 6), 2),
             GraphNode("add", (3, 1), (3, 6, 6), 3), GraphNode("r2", (4,), (3, 6, 6), 4),
             GraphNode("pool", (5,), (3, 3, 3), 5), GraphNode("flat", (6,), (27,), 6), GraphNode("fc", (7,), (8,), 7),
             GraphNode("r3", (8,), (8,), 8), GraphNode("out", (9,), (3,), 9)]
    layers = [nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, stride=1, padding=1), Add(), nn.ReLU(),
              nn.AvgPool2d(2), Reshape((27,)), nn.Linear(27, 8), nn.ReLU(), nn.Linear(8, 3)]
    return LayerGraph(nodes, layers, (1, 1, 6, 6)).eval()


TINY_PROPERTIES = {"always": "(<= Y_0 1e6)",   # violated everywhere in the box: sat
                   "never": "(>= Y_0 1e6)",    # violated nowhere: unsat
                   "also": "(>= Y_1 1e6)"}     # unsat


def write_tiny_benchmark(root: Path, rows: list[str] | None = None) -> Path:
    """A spec folder like `maar export` writes, under ``root``: ``models/net.onnx`` (3 → 6 → 2, seed 0), the
    properties of TINY_PROPERTIES over one box, and an instances.csv of ``rows`` (property names, timeout 10;
    none written without ``rows``); returns the spec folder."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    (root / "models").mkdir()
    torch.onnx.export(model, torch.zeros(1, 3), str(root / "models" / "net.onnx"), input_names=["input"],
                      dynamo=False)
    specs = root / "specs"
    specs.mkdir()
    declarations = "\n".join([f"(declare-const X_{i} Real)" for i in range(3)] + ["(declare-const Y_0 Real)",
                                                                                  "(declare-const Y_1 Real)"])
    box = "\n".join(f"(assert (>= X_{i} 0.2))\n(assert (<= X_{i} 0.3))" for i in range(3))
    for name, output in TINY_PROPERTIES.items():
        (specs / f"{name}.vnnlib").write_text(f"{declarations}\n{box}\n(assert {output})\n")
    if rows:
        (specs / "instances.csv").write_text("".join(f"../models/net.onnx,{row}.vnnlib,10\n" for row in rows))
    return specs
