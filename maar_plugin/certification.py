"""``maar certify``: export a model's test points as VNN-LIB instances, verify them completely, and
show clean, PGD, IBP-, CROWN-, alpha-CROWN- and complete-certified accuracy side by side.

The output folder holds ``certified_accuracy.json`` and ``per_image.csv`` (one line per test image:
verdict, deciding stage, seconds, timeout; what paired comparisons between models need, small enough
to keep where the verification logs are dropped), beside the specs and the verification folder."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from maar_plugin.atomic import atomic_write_text
from maar_plugin.data import dataset_info, load_dataset
from maar_plugin.errors import MaarError
from maar_plugin.export import export_run, write_benchmark_files
from maar_plugin.verification import (
    InstanceResult,
    Verifier,
    VerifyOptions,
    certified_by,
    read_instances_csv,
    read_log,
    verify_in_processes,
)
from maar_plugin.verification.result import ABCROWN_STAGE
from maar_plugin.vnnlib import write_robustness_vnnlib

CERTIFICATE_NAME = "certified_accuracy.json"
PER_IMAGE_NAME = "per_image.csv"
PER_IMAGE_COLUMNS = ("image", "verdict", "stage", "seconds", "timeout")


@dataclass(frozen=True)
class CertifiedAccuracy:
    """Accuracies in percent over ``count`` test points at radius ``eps``.

    ``clean``: the image itself is classified correctly (the centre check finds no violation);
    ``pgd``: no attack found a counterexample (an upper bound of the true robust accuracy);
    ``ibp`` / ``crown`` / ``alpha_crown``: proved by that bound method or a cheaper one of the cascade;
    ``complete``: proved by any stage, branch and bound included — the true certified accuracy when
    ``open`` (unknown, timeout, error) is 0; ``retry_timeout``: the time open instances were retried with.
    ``verifier``: who decided, ``builtin`` (the cascade) or ``abcrown`` (α,β-CROWN, which reports verdicts
    only: the per-stage columns are then None).
    """

    name: str
    eps: float
    count: int
    clean: float | None
    pgd: float | None
    ibp: float | None
    crown: float | None
    alpha_crown: float | None
    complete: float
    falsified: int
    open: int
    retry_timeout: float | None = None
    verifier: str = "builtin"


def accuracy_from_results(name: str, eps: float, results: list[InstanceResult],
                          retry_timeout: float | None = None) -> CertifiedAccuracy:
    count = len(results)
    if count == 0:
        raise MaarError("no instances were verified")

    def percent(number: int) -> float:
        return 100.0 * number / count

    complete = percent(sum(r.verdict == "unsat" for r in results))
    falsified = sum(r.verdict == "sat" for r in results)
    open_count = sum(r.verdict not in ("sat", "unsat") for r in results)
    if any(ABCROWN_STAGE in r.stage_verdicts for r in results):
        return CertifiedAccuracy(name, eps, count, None, None, None, None, None, complete, falsified, open_count,
                                 retry_timeout=retry_timeout, verifier="abcrown")
    misclassified = sum(r.stage_verdicts.get("centre") == "falsified" for r in results)
    attacked = sum(r.stage in ("centre", "pgd") and r.verdict == "sat" for r in results)
    return CertifiedAccuracy(
        name=name, eps=eps, count=count,
        clean=percent(count - misclassified),
        pgd=percent(count - attacked),
        ibp=percent(certified_by(results, "IBP")),
        crown=percent(certified_by(results, "CROWN")),
        alpha_crown=percent(certified_by(results, "alpha-CROWN")),
        complete=complete, falsified=falsified, open=open_count, retry_timeout=retry_timeout,
    )


def _write_onnx_benchmark(onnx_path: Path, dataset: str, data_dir: str | None, eps: float, count: int,
                          timeout: float, spec_dir: Path) -> Path:
    """Specs for the first ``count`` test images against an existing ONNX model; returns the csv."""
    info = dataset_info(dataset)
    images, labels = load_dataset(dataset, "test", data_dir)
    if not 0 < count <= len(images):
        raise MaarError(f"--count must be in 1..{len(images)}, got {count}")
    spec_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = spec_dir / _spec_name(index, eps)
        write_robustness_vnnlib(path, images[index].numpy(), int(labels[index]), eps, info.num_classes,
                                {"dataset": dataset, "test_index": str(index), "model": onnx_path.name})
        paths.append(path)
    write_benchmark_files(spec_dir, onnx_path.resolve(), paths, info.input_shape, timeout, "cpu")
    return spec_dir / "instances.csv"


def _spec_name(index: int, eps: float) -> str:
    """The VNN-LIB file of test image ``index`` (as ``maar export`` names it)."""
    return f"img{index:05d}_eps{eps:g}.vnnlib"


def _benchmark_is(csv_path: Path, eps: float, count: int, timeout: float) -> bool:
    """Whether the spec folder's instances.csv lists the first ``count`` test images at ``eps`` with ``timeout``."""
    instances = read_instances_csv(csv_path)
    return ([instance.vnnlib.name for instance in instances] == [_spec_name(index, eps) for index in range(count)]
            and all(instance.timeout == float(f"{timeout:g}") for instance in instances))  # as the csv writes it


def certify(
    source: str | Path,
    eps: float,
    count: int,
    out_dir: str | Path,
    timeout: float = 60.0,
    dataset: str | None = None,
    data_dir: str | None = None,
    resume: bool = False,
    options: VerifyOptions | None = None,
    progress: bool = True,
    jobs: int = 1,
    retry_open: float | None = None,
    verifier: Verifier | None = None,
) -> CertifiedAccuracy:
    """Certify a training run (``maar export`` of it) or an ONNX classifier (with ``dataset``) on the
    first ``count`` test images at ``eps``; everything is written under ``out_dir``, resumably.

    ``jobs`` > 1 verifies in that many local processes, one shard of the instances each, and computes
    the accuracies from their merged logs. ``retry_open`` (seconds) verifies instances left open again
    with that timeout (also those of the certification being resumed). ``verifier`` replaces our cascade,
    e.g. with α,β-CROWN; a resumed certification must keep the verifier it started with.

    Resuming with another ``count``, ``eps`` or ``timeout`` writes the specs anew and verifies only the
    instances the log does not hold yet (e.g. images 100..999 after a certification of the first 100);
    instances left open with a shorter timeout are verified again only with ``retry_open``."""
    if not 0 < eps <= 1:
        raise MaarError(f"--eps must be in (0, 1], got {eps}")
    if jobs < 1:
        raise MaarError(f"--jobs must be at least 1, got {jobs}")
    source, out_dir = Path(source), Path(out_dir)
    name = source.stem if source.suffix == ".onnx" else source.name
    spec_dir = out_dir / "vnnlib_specs" / name
    csv_path = spec_dir / "instances.csv"
    if not resume and (csv_path.exists() or (out_dir / "verification").exists()):
        raise MaarError(f"{out_dir} holds an earlier certification: pass --resume to continue it, or another --out")
    if not (resume and csv_path.is_file() and _benchmark_is(csv_path, eps, count, timeout)):
        if source.suffix == ".onnx":
            if not source.is_file():
                raise MaarError(f"no ONNX model at {source}")
            if dataset is None:
                raise MaarError("certifying an ONNX file needs --dataset (to pick the test images and labels)")
            _write_onnx_benchmark(source, dataset, data_dir, eps, count, timeout, spec_dir)
        elif source.is_dir():
            export_run(source, eps, count, out_dir / "models" / name, timeout=timeout, force=resume,
                       specs_dir=out_dir / "vnnlib_specs", device="cpu")
        else:
            raise MaarError(f"{source} is neither a training run directory nor an .onnx file")
    _refuse_other_verifier(out_dir / "verification", verifier)
    options = options or VerifyOptions(timeout=timeout)
    results = verify_in_processes(read_instances_csv(csv_path), out_dir / "verification", jobs, resume=resume,
                                  options=options, progress=progress, retry_open=retry_open, verifier=verifier)
    accuracy = accuracy_from_results(name, eps, results, retry_open)
    atomic_write_text(out_dir / PER_IMAGE_NAME, per_image_csv(results))
    atomic_write_text(out_dir / CERTIFICATE_NAME, json.dumps(asdict(accuracy), indent=2) + "\n")
    return accuracy


def per_image_csv(results: list[InstanceResult]) -> str:
    """``per_image.csv`` of a certification of the first test images, ``results`` in image order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_IMAGE_COLUMNS)
    for image, result in enumerate(results):
        writer.writerow([image, result.verdict, result.stage or "", f"{result.seconds:.3f}",
                         "" if result.timeout is None else repr(float(result.timeout))])
    return buffer.getvalue()


@dataclass(frozen=True)
class ImageVerdict:
    """One line of ``per_image.csv``; ``timeout`` is None where the log did not record it."""

    image: int
    verdict: str
    stage: str | None
    seconds: float
    timeout: float | None


def read_per_image(path: str | Path) -> list[ImageVerdict]:
    """The lines of a ``per_image.csv``, checked to be images 0, 1, ... in order."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        verdicts = [ImageVerdict(int(row["image"]), row["verdict"], row["stage"] or None, float(row["seconds"]),
                                 float(row["timeout"]) if row["timeout"] else None) for row in rows]
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise MaarError(f"{path}: cannot read ({type(error).__name__}: {error})") from None
    if [verdict.image for verdict in verdicts] != list(range(len(verdicts))):
        raise MaarError(f"{path}: the images are not 0, 1, 2, ... in order")
    return verdicts


def _refuse_other_verifier(folder: Path, verifier: Verifier | None) -> None:
    """A resumed verification must not mix verdicts of the cascade and of α,β-CROWN."""
    wanted = "abcrown" if verifier is not None else "builtin"
    earlier = {"abcrown" if ABCROWN_STAGE in r.stage_verdicts else "builtin" for r in read_log(folder)
               if r.stage_verdicts}
    if earlier - {wanted}:
        raise MaarError(f"{folder} holds verdicts of --verifier {earlier.pop()}; resume with that verifier, "
                        "or certify into another --out")


def certificate_verifier(certificate: dict) -> str:
    """Who decided a certificate's instances: ``builtin`` or ``abcrown`` (files of earlier versions say
    ``maar`` for the built-in verifier, or nothing)."""
    name = certificate.get("verifier", "builtin")
    return "builtin" if name == "maar" else name


def accuracy_table(rows: list[CertifiedAccuracy]) -> str:
    """Side-by-side accuracies; the certified columns are cumulative along the cascade."""
    columns = [("clean", "clean"), ("pgd", "PGD"), ("ibp", "IBP-cert."), ("crown", "≤CROWN-cert."),
               ("alpha_crown", "≤α-CROWN-cert."), ("complete", "complete-cert.")]
    header = f"{'model':<28} {'ε':>6} {'n':>5} " + " ".join(f"{title:>15}" for _, title in columns) + "  open"
    lines = [header, "-" * len(header)]
    for row in rows:
        values = [getattr(row, key) for key, _ in columns]
        cells = " ".join(f"{value:>14.2f}%" if value is not None else f"{'-':>15}" for value in values)
        lines.append(f"{row.name:<28} {row.eps:>6.3f} {row.count:>5} {cells}  {row.open:>4}")
    return "\n".join(lines)
