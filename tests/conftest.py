"""Shared test helpers."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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
