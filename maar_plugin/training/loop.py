"""``maar train``: the certified-training loop with ε schedule, checkpoints, metrics and exact resume."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from maar_plugin.bounds.box import linf_ball_box
from maar_plugin.data import dataset_info, load_dataset
from maar_plugin.devices import describe_device, resolve_device
from maar_plugin.errors import MaarError
from maar_plugin.models import create_model
from maar_plugin.objectives import create_objective
from maar_plugin.training import distributed
from maar_plugin.training.checkpoint import CHECKPOINT_NAME, atomic_torch_save, load_checkpoint
from maar_plugin.training.config import TrainConfig, save_config
from maar_plugin.training.distributed import Ranks
from maar_plugin.training.evaluate import evaluate_robustness
from maar_plugin.training.metrics_log import plot_metrics, write_metrics
from maar_plugin.training.run_files import load_run_config
from maar_plugin.training.schedule import SmoothedEpsSchedule
from maar_plugin.training.shi_warmup import ibp_initialize_, warmup_regularizer


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / CHECKPOINT_NAME).is_file():
            raise MaarError(f"cannot resume: {run_dir} holds no checkpoint")
        return
    if (run_dir / "config.json").exists():
        raise MaarError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise MaarError(f"cannot write to output directory {run_dir}: {error.strerror}") from None


@dataclass
class _EpochTotals:
    """Running sums of the loss parts and training accuracy over one epoch."""

    parts: dict[str, float]
    correct: int = 0
    seen: int = 0
    steps: int = 0

    def add(self, parts: dict[str, float], correct: int, seen: int) -> None:
        for key, value in parts.items():
            self.parts[key] = self.parts.get(key, 0.0) + value
        self.correct += correct
        self.seen += seen
        self.steps += 1

    def means(self) -> dict[str, float]:
        record = {f"loss_{key}": value / max(self.steps, 1) for key, value in self.parts.items()}
        record["train_accuracy"] = 100.0 * self.correct / max(self.seen, 1)
        return record


def _read_scalars(parts: dict[str, float | Tensor]) -> dict[str, float]:
    """Loss parts as floats, with one device-to-host copy for all tensor parts."""
    tensors = {key: value for key, value in parts.items() if isinstance(value, Tensor)}
    values = torch.stack([value.float().reshape(()) for value in tensors.values()]).tolist() if tensors else []
    return {**parts, **dict(zip(tensors, values))}


def _global_step_scalars(
    parts: dict[str, float | Tensor], logits: Tensor, labels: Tensor, weight: float, device: torch.device,
    ranks: Ranks,
) -> tuple[dict[str, float], int, int]:
    """The loss parts of the global batch (Σ_ranks weight·part: the batch means), its correct and seen counts."""
    local = _read_scalars(parts)
    correct = int((logits.argmax(dim=1) == labels).sum()) if weight > 0 else 0
    seen = len(labels) if weight > 0 else 0
    if not ranks.distributed:
        return local, correct, seen
    summed = distributed.sum_over_ranks([weight * value for value in local.values()] + [correct, seen], device, ranks)
    return dict(zip(local, summed[:-2])), int(summed[-2]), int(summed[-1])


def _save(run_dir: Path, model, optimizer, lr_schedule, epoch: int, history: list[dict]) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "epoch": epoch,
        "history": history,
        "cpu_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    atomic_torch_save(run_dir / CHECKPOINT_NAME, state)


def train(
    config: TrainConfig | None,
    run_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train (or resume) a run in ``run_dir``; returns the per-epoch metric records (rank 0's; [] on the others).

    Each epoch ends with metrics on a test subset, the metrics files and an atomic checkpoint, so an
    interrupted run resumes from its last finished epoch and reproduces the uninterrupted run exactly
    (on CPU): data order is seeded per epoch and the RNG state is part of the checkpoint.

    Under ``torchrun`` (WORLD_SIZE > 1) the ranks train one model data-parallel (``distributed``): each
    takes its slice of every global batch of ``batch_size``, and rank 0 alone evaluates, prints and writes.
    """
    ranks = distributed.ranks_from_env()
    if not ranks.is_main:
        log, show_progress = _discard, False
    run_dir = Path(run_dir)
    if resume:
        _prepare_run_dir(run_dir, resume=True)  # read-only, so every rank checks for itself
        config = load_run_config(run_dir)
    elif config is None:
        raise MaarError("a configuration is required for a new run")
    device = distributed.start(ranks, resolve_device(config.device))
    try:
        history = _train(config, run_dir, resume, show_progress, log, ranks, device)
    except MaarError:
        distributed.outlive_main(ranks)
        raise
    distributed.stop(ranks)
    return history


def _discard(line: str) -> None:
    """The log of ranks other than 0."""


def _train(
    config: TrainConfig, run_dir: Path, resume: bool, show_progress: bool, log: Callable[[str], None],
    ranks: Ranks, device: torch.device,
) -> list[dict]:
    if not resume:
        distributed.on_main(ranks, lambda: _prepare_run_dir(run_dir, resume=False))
    info = dataset_info(config.dataset)
    torch.manual_seed(config.seed)
    model = create_model(config.model, info)
    if config.ibp_init:
        ibp_initialize_(model)
    model.to(device)
    objective = create_objective(config.objective, model, info, **config.objective_args)
    train_images, train_labels = load_dataset(config.dataset, "train", config.data_dir, device)
    test_images, test_labels = load_dataset(config.dataset, "test", config.data_dir, device)
    if config.train_count is not None:
        train_images, train_labels = train_images[: config.train_count], train_labels[: config.train_count]
    eval_images, eval_labels = test_images[: config.eval_count], test_labels[: config.eval_count]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    lr_schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.lr_decay_epochs), config.lr_decay_factor)
    steps_per_epoch = math.ceil(len(train_images) / config.batch_size)
    schedule = SmoothedEpsSchedule(
        config.effective_train_eps, config.warmup_epochs * steps_per_epoch, config.ramp_epochs * steps_per_epoch
    )

    history: list[dict] = []
    first_epoch = 0
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        history = list(state["history"])
        first_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["cpu_rng"].cpu())
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        log(f"resuming {run_dir} after epoch {first_epoch} of {config.epochs}")
    else:
        distributed.on_main(ranks, lambda: save_config(config, run_dir / "config.json"))
    distributed.broadcast_model(model, ranks)

    device_name = describe_device(device)
    parameters = list(model.parameters())
    for epoch in range(first_epoch, config.epochs):
        started = time.perf_counter()
        model.train()
        totals = _EpochTotals(parts={})
        epoch_seed = config.seed * 100003 + epoch
        if ranks.rank > 0:  # own random attack starts per rank; rank 0 keeps the checkpointed stream
            torch.manual_seed(epoch_seed * 7919 + ranks.rank)
        order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(epoch_seed))
        order = order.to(device)
        batches = range(steps_per_epoch)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show_progress, leave=False)
        for batch_index in bar:
            step = epoch * steps_per_epoch + batch_index
            indices = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            indices, weight = distributed.batch_share(indices, ranks)
            x, y = train_images[indices], train_labels[indices]
            eps = schedule.eps(step)
            terms = objective.loss(x, y, eps, schedule.progress(step))
            loss = terms.total
            parts = dict(terms.parts)
            if config.warmup_regularizer > 0 and schedule.in_ramp(step):
                regularizer = warmup_regularizer(model, *linf_ball_box(x, eps))
                loss = loss + config.warmup_regularizer * regularizer
                parts["warmup_reg"] = regularizer.detach()
            parts["total"] = loss.detach()
            scalars, correct, seen = _global_step_scalars(parts, terms.logits.detach(), y, weight, device, ranks)
            if not math.isfinite(scalars["total"]):
                kept = f"the checkpoint after epoch {len(history)} is kept" if history else "no epoch had finished"
                raise MaarError(
                    f"loss became {scalars['total']} at epoch {epoch + 1}, step {batch_index + 1} (ε={eps:.4g}) in "
                    f"{run_dir}; {kept}. Try a lower --lr or a longer --ramp-epochs"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.all_reduce_gradients(parameters, weight, ranks)
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
            distributed.average_batchnorm_statistics(model, ranks)
            totals.add(scalars, correct, seen)
            bar.set_postfix(loss=f"{scalars['total']:.3f}", eps=f"{eps:.3f}")
        bar.close()
        lr_schedule.step()
        train_seconds = time.perf_counter() - started
        if not ranks.is_main:  # rank 0 alone evaluates and writes; the next step's all-reduce waits for it
            continue
        accuracies = evaluate_robustness(
            model, eval_images, eval_labels, config.eps, info.num_classes,
            pgd_steps=config.eval_pgd_steps, crown_count=config.eval_crown_count,
        )
        record = {
            "epoch": epoch + 1,
            "train_eps": schedule.eps((epoch + 1) * steps_per_epoch - 1),
            "lr": optimizer.param_groups[0]["lr"],
            **totals.means(),
            **accuracies,
            "eval_eps": config.eps,
            "eval_count": len(eval_images),
            "eval_crown_count": min(config.eval_crown_count, len(eval_images)),
            "train_seconds": train_seconds,
            "device_name": device_name,
            "world_size": ranks.world_size,
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        write_metrics(run_dir, history)
        plot_metrics(run_dir, history)
        _save(run_dir, model, optimizer, lr_schedule, epoch, history)
        log(format_epoch(record, config.epochs))
    return history


def format_epoch(record: dict, epochs: int) -> str:
    accuracies = "  ".join(
        f"{key}={record[key]:.2f}%" for key in ("clean", "pgd", "ibp_verified", "crown_verified") if key in record
    )
    return (
        f"epoch {record['epoch']}/{epochs}  ε={record['train_eps']:.4f}  "
        f"loss={record.get('loss_total', float('nan')):.4f}  {accuracies}  ({record['seconds']:.1f} s)"
    )
