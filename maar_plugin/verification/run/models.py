"""Networks loaded once per run, in every form the cascade needs, within the memory limit."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from maar_plugin.devices import resolve_device
from maar_plugin.errors import MaarError
from maar_plugin.verification.bounding.linear import SplitBoundEngine
from maar_plugin.verification.bounding.lirpa_stages import LirpaBoundStages, patches_blocker
from maar_plugin.verification.memory import MemoryBudget, memory_plan
from maar_plugin.verification.network.layers import LayerGraph
from maar_plugin.verification.network.onnx_import import load_onnx_graph
from maar_plugin.verification.network.runtime import OnnxRuntimeModel, ReferenceModel
from maar_plugin.verification.options import VerifyOptions


@dataclass
class LoadedModel:
    """One network: its layer graph (auto_LiRPA, PGD, branch and bound) and onnxruntime's session of the
    original file (counterexamples)."""

    graph: LayerGraph
    bound_stages: LirpaBoundStages
    runtime: ReferenceModel
    memory: MemoryBudget
    split_engine: SplitBoundEngine | None = None

    def engine(self) -> SplitBoundEngine:
        if self.split_engine is None:
            self.split_engine = SplitBoundEngine(self.graph, device=self.bound_stages.device)
        return self.split_engine


@dataclass
class ModelCache:
    """Loaded models by path and modification time, shared by the instances of one run; a model that
    failed to load fails again at once, with the same message."""

    options: VerifyOptions = field(default_factory=VerifyOptions)
    models: dict[tuple[str, float], LoadedModel | MaarError] = field(default_factory=dict)

    def get(self, path: str | Path) -> LoadedModel:
        path = Path(path).resolve()
        key = (str(path), path.stat().st_mtime if path.exists() else 0.0)
        if key not in self.models:
            try:
                self.models[key] = self.load(path)
            except MaarError as error:
                self.models[key] = error
        loaded = self.models[key]
        if isinstance(loaded, MaarError):
            raise loaded
        return loaded

    def load(self, path: Path) -> LoadedModel:
        return load_model(load_onnx_graph(path), self.options, str(path), OnnxRuntimeModel(path))


def load_model(graph: LayerGraph, options: VerifyOptions, name: str, runtime: ReferenceModel) -> LoadedModel:
    """The graph ready for the cascade, or a one-line MaarError when it cannot fit the memory limit."""
    device = str(resolve_device(options.device))
    plan, memory = memory_plan(graph, patches=patches_blocker(graph) is None), MemoryBudget(options.memory_bytes)
    memory.check(plan, name)
    stages = LirpaBoundStages(graph, device, options.alpha_iterations, options.alpha_lr,
                              plan.full_crown(memory.bound_stages))
    return LoadedModel(graph, stages, runtime, memory)
