"""`maar verify` side by side with α,β-CROWN over named VNN-COMP 2021/2022 sets and a user's own sets.

    python benchmarks/side_by_side.py --vnncomp2021 DIR --vnncomp2022 DIR \\
        --abcrown PATH/alpha-beta-CROWN --abcrown-python PATH/venv/bin/python \\
        --sets mnist_fc,acasxu [--extra NAME=PATH/instances.csv] [--sample N --seed S] \\
        [--timeout 60] [--threads 1] --out DIR

Nothing is downloaded or built: bring the benchmark checkouts, α,β-CROWN and its interpreter. Per instance,
our verifier then α,β-CROWN (each its own process, at one timeout, with ``--threads`` torch threads), as
`verifier_comparison.py` runs them, so that the machine's load falls on both alike. Each set's rows go to
OUT/<set>/comparison.csv and .json (which `maar report` reads), its table to OUT/<set>/table.txt; the
table over all sets to OUT/summary.md and OUT/summary.json. A rerun skips the instances a set's folder
already holds. The sets are those of `vnncomp_sets.py`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from verifier_comparison import (
    DECIDED,
    KILL_GRACE,
    Row,
    contradiction,
    read_rows,
    run_abcrown,
    run_maar,
    summary,
    table,
    write_rows,
)
from vnncomp_sets import NAMED_SETS, SUITES, ResolvedSet, merged, own_set, resolve, sample

from maar_plugin.atomic import atomic_write_text
from maar_plugin.errors import MaarError
from maar_plugin.verification import Instance

FAILED = ("error", "killed")  # killed: still running KILL_GRACE seconds past the timeout
TOOLS = ("maar", "abcrown")
ERROR_ENDS = (200, 120)  # characters kept of a long error message's start and end in the summary


@dataclass
class Planned:
    """A set to run: its rows (all of the selection), those still to run, and where results go."""

    resolved: ResolvedSet
    selected: list[tuple[str, Instance]]
    done: dict[str, Row]
    out: Path

    @property
    def name(self) -> str:
        return self.resolved.definition.name

    @property
    def to_run(self) -> list[tuple[str, Instance]]:
        return [(name, instance) for name, instance in self.selected if name not in self.done]


def named_paths(values: list[str], option: str) -> dict[str, Path]:
    """``NAME=PATH`` arguments of ``option`` as a mapping."""
    result = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not name or not path:
            raise MaarError(f"{option} {value}: expected NAME=PATH")
        result[name] = Path(path)
    return result


def plan(args: argparse.Namespace) -> list[Planned]:
    """Every chosen set, resolved and checked before anything runs; a one-line error for what is missing."""
    extras = {name: own_set(name, path) for name, path in named_paths(args.extra, "--extra").items()}
    checkouts = {"vnncomp2021": args.vnncomp2021, "vnncomp2022": args.vnncomp2022}
    if args.sets is not None:
        names = [name.strip() for name in args.sets.split(",") if name.strip()]
        unknown = [name for name in names if name not in NAMED_SETS]
        if unknown:
            raise MaarError(f"unknown set {unknown[0]}; the sets: {', '.join(NAMED_SETS)} (and --extra NAME=CSV)")
    else:
        names = [name for name, definition in NAMED_SETS.items() if checkouts[definition.suite] is not None]
    definitions = [NAMED_SETS[name] for name in names] + list(extras.values())
    if not definitions:
        raise MaarError("no sets: give --sets with --vnncomp2021/--vnncomp2022, or --extra NAME=CSV")
    configs = named_paths(args.abcrown_config, "--abcrown-config")
    stray = set(configs) - {definition.name for definition in definitions}
    if stray:
        raise MaarError(f"--abcrown-config {sorted(stray)[0]}=...: not a set of this run")
    planned = []
    for definition in definitions:
        resolved = resolve(definition, checkouts, args.abcrown, configs.get(definition.name))
        if args.threads is not None:  # α,β-CROWN's MIP starts a solver process per core by default
            resolved.abcrown_config = merged(resolved.abcrown_config,
                                             {"solver": {"mip": {"parallel_solvers": args.threads}}})
        selected = sample(resolved.instances, args.sample, args.seed)
        missing = missing_files(selected)
        if missing:
            raise MaarError(f"{definition.name}: {missing}")
        out = args.out / definition.name
        done = read_rows(out)
        other = sorted({timeout for _, timeout in done if timeout != args.timeout})
        if other:
            raise MaarError(f"{out} holds runs at timeout {other[0]:g} s, not {args.timeout:g} s: "
                            "use another --out or the same --timeout")
        planned.append(Planned(resolved, selected, {name: row for (name, _), row in done.items()}, out))
    return planned


def missing_files(instances: list) -> str | None:
    """A sentence about the first network or property file of ``instances`` that is not there."""
    missing = [path for _, instance in instances for path in (instance.onnx, instance.vnnlib) if not path.is_file()]
    if not missing:
        return None
    packed = missing[0].with_name(missing[0].name + ".gz")
    return (f"{len(missing)} file(s) of its rows do not exist, e.g. {missing[0]}"
            + (f" ({packed.name} is there: gunzip it)" if packed.is_file() else ""))


def duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run_set(planned: Planned, args: argparse.Namespace, progress: dict) -> list[Row]:
    """Run what is left of one set, ours then theirs per instance, saving the rows after each; the rows of
    the selection (earlier rows outside it stay in the files)."""
    rows = dict(planned.done)
    pending = planned.to_run
    if len(pending) < len(planned.selected):
        print(f"{planned.name}: {len(planned.selected) - len(pending)} of {len(planned.selected)} instances already "
              f"in {planned.out / 'comparison.csv'}", flush=True)
    definition, config = planned.resolved.definition, planned.resolved.abcrown_config
    selected_names = {name for name, _ in planned.selected}
    for index, (name, instance) in enumerate(pending, start=1):
        maar = run_maar(instance, name, args.timeout, planned.out, args.threads, definition.maar_options)
        abcrown = run_abcrown(instance, name, args.timeout, planned.out, args.abcrown, args.abcrown_python, config,
                              args.threads)
        rows[name] = Row(name, args.timeout, maar, abcrown)
        ordered = [rows[n] for n, _ in planned.selected if n in rows]
        write_rows(ordered + [row for n, row in rows.items() if n not in selected_names], planned.out)
        progress["done"] += 1
        progress["seconds"] += maar.wall_s + abcrown.wall_s
        left = progress["total"] - progress["done"]
        eta = f", ETA {duration(progress['seconds'] / progress['done'] * left)}" if left else ""
        mark = " CONTRADICTION" if contradiction(rows[name]) else ""
        print(f"[{planned.name} {index}/{len(pending)}, {progress['done']}/{progress['total']} in all{eta}] {name}: "
              f"maar {maar.verdict} ({maar.stage or '-'}, {maar.wall_s:.1f} s), "
              f"abcrown {abcrown.verdict} ({abcrown.wall_s:.1f} s){mark}", flush=True)
    return [rows[name] for name, _ in planned.selected]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def set_figures(rows: list[Row]) -> dict:
    """Counts, median time ratios where both decide (ours / theirs), and peak memory of one set's rows."""
    both = [row for row in rows if row.maar.verdict in DECIDED and row.abcrown.verdict in DECIDED]
    figures: dict = {"instances": len(rows)}
    for tool in TOOLS:
        runs = [getattr(row, tool) for row in rows]
        failed = [(row.instance, run.message) for row, run in zip(rows, runs) if run.verdict in FAILED]
        figures[tool] = {"sat": sum(run.verdict == "sat" for run in runs),
                         "unsat": sum(run.verdict == "unsat" for run in runs),
                         "errors": len(failed), "first_error": ": ".join(failed[0]) if failed else None,
                         "peak_mb": max((run.peak_mb for run in runs), default=None)}
    figures["contradictions"] = [row.instance for row in rows if contradiction(row)]
    figures["both_decide"] = len(both)
    figures["wall_ratios"] = [row.maar.wall_s / row.abcrown.wall_s for row in both if row.abcrown.wall_s > 0]
    figures["own_ratios"] = [row.maar.own_s / row.abcrown.own_s for row in both if row.maar.own_s and row.abcrown.own_s]
    figures["median_wall_ratio"] = _median(figures["wall_ratios"])
    figures["median_own_ratio"] = _median(figures["own_ratios"])
    return figures


def total_figures(per_set: dict[str, dict]) -> dict:
    """The sets' figures summed; the ratios' medians over all instances both decide, the peaks' maximum."""
    sets = list(per_set.values())
    total: dict = {"instances": sum(f["instances"] for f in sets)}
    for tool in TOOLS:
        peaks = [f[tool]["peak_mb"] for f in sets if f[tool]["peak_mb"] is not None]
        total[tool] = {key: sum(f[tool][key] for f in sets) for key in ("sat", "unsat", "errors")}
        total[tool]["peak_mb"] = max(peaks, default=None)
    total["contradictions"] = [f"{name}/{instance}" for name, f in per_set.items() for instance in f["contradictions"]]
    total["both_decide"] = sum(f["both_decide"] for f in sets)
    for kind in ("wall", "own"):
        total[f"{kind}_ratios"] = [ratio for f in sets for ratio in f[f"{kind}_ratios"]]
        total[f"median_{kind}_ratio"] = _median(total[f"{kind}_ratios"])
    return total


def shortened(message: str) -> str:
    """``message`` with its middle left out where long: our errors say what at the start, a crash's log
    tail at the end."""
    head, tail = ERROR_ENDS
    return message if len(message) <= head + tail else f"{message[:head]} … {message[-tail:]}"


def markdown(per_set: dict[str, dict], total: dict, timeout: float, threads: int | None) -> str:
    """The summary table: one row per set and a total row, then the contradictions by name."""
    ratio = lambda value: f"{value:.2f}" if value is not None else "-"
    peak = lambda value: f"{value:.0f}" if value is not None else "-"
    lines = [f"Timeout {timeout:g} s for both, {threads if threads is not None else 'default'} torch thread(s) each. "
             "Ratios: ours / α,β-CROWN's time (below 1: ours is faster), median over the instances both decide; "
             "wall: process start to exit; own: each verifier's reported time. Errors: `error` or killed "
             f"(still running {KILL_GRACE:g} s past the timeout).", "",
             "| set | instances | maar sat / unsat | α,β-CROWN sat / unsat | contradictions | errors maar / α,β-CROWN "
             "| both decide | ratio wall | ratio own | peak MB maar / α,β-CROWN |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, f in [*per_set.items(), ("total", total)]:
        label = f"**{name}**" if name == "total" else name
        lines.append(f"| {label} | {f['instances']} | {f['maar']['sat']} / {f['maar']['unsat']} "
                     f"| {f['abcrown']['sat']} / {f['abcrown']['unsat']} | {len(f['contradictions'])} "
                     f"| {f['maar']['errors']} / {f['abcrown']['errors']} | {f['both_decide']} "
                     f"| {ratio(f['median_wall_ratio'])} | {ratio(f['median_own_ratio'])} "
                     f"| {peak(f['maar']['peak_mb'])} / {peak(f['abcrown']['peak_mb'])} |")
    if total["contradictions"]:
        lines += ["", f"Contradictions (one says sat, the other unsat): {', '.join(total['contradictions'])}"]
    errors = [f"- {name} {tool}: {f[tool]['errors']}, the first {shortened(f[tool]['first_error'])}"
              for name, f in per_set.items() for tool in TOOLS if f[tool]["errors"]]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, planned: list[Planned], per_set: dict[str, dict], args: argparse.Namespace) -> str:
    total = total_figures(per_set)
    text = markdown(per_set, total, args.timeout, args.threads)
    strip = lambda f: {key: value for key, value in f.items() if not key.endswith("_ratios")}
    record = {"timeout": args.timeout, "threads": args.threads, "sample": args.sample, "seed": args.seed,
              "sets": {p.name: {**strip(per_set[p.name]), "csv": str(p.resolved.csv),
                                "abcrown_config": str(p.resolved.abcrown_config_path),
                                "abcrown_changes": p.resolved.definition.abcrown_changes,
                                "maar_options": list(p.resolved.definition.maar_options)} for p in planned},
              "total": strip(total)}
    atomic_write_text(out / "summary.md", text)
    atomic_write_text(out / "summary.json", json.dumps(record, indent=1) + "\n")
    return text


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for suite, label in SUITES.items():
        parser.add_argument(f"--{suite}", type=Path, help=f"the root of a {label} benchmarks checkout")
    parser.add_argument("--sets", help=f"comma-separated, of: {', '.join(NAMED_SETS)} "
                                       "(default: every set of the checkouts given)")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=CSV",
                        help="a set of your own: an instances.csv from `maar export`, α,β-CROWN run with the "
                             "abcrown.yaml beside it (repeatable)")
    parser.add_argument("--abcrown", required=True, type=Path, help="an alpha-beta-CROWN checkout")
    parser.add_argument("--abcrown-python", required=True, type=Path, help="the interpreter α,β-CROWN runs in")
    parser.add_argument("--abcrown-config", action="append", default=[], metavar="NAME=YAML",
                        help="α,β-CROWN's config for set NAME, taken as it is (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per instance for both (default 60)")
    parser.add_argument("--sample", type=int, help="N instances per set, drawn with --seed (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (OMP/MKL) of each verifier, and α,β-CROWN's MIP processes (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="results folder: one folder per set")
    args = parser.parse_args(argv)
    if not (args.abcrown / "complete_verifier" / "abcrown.py").is_file():
        raise MaarError(f"--abcrown {args.abcrown}: no complete_verifier/abcrown.py (not an alpha-beta-CROWN checkout)")
    if args.sample is not None and args.sample < 1:
        raise MaarError("--sample must be at least 1")
    args.abcrown, args.out = args.abcrown.resolve(), args.out.resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    planned = plan(args)
    progress = {"done": 0, "seconds": 0.0, "total": sum(len(p.to_run) for p in planned)}
    print(f"{len(planned)} set(s), {sum(len(p.selected) for p in planned)} instances, {progress['total']} to run, "
          f"timeout {args.timeout:g} s", flush=True)
    per_set = {}
    for p in planned:
        rows = run_set(p, args, progress)
        if rows:
            atomic_write_text(p.out / "table.txt", f"{table(rows)}\n\n{summary(rows)}\n")
        per_set[p.name] = set_figures(rows)
    print()
    print(write_summary(args.out, planned, per_set, args), end="")


if __name__ == "__main__":
    try:
        main()
    except MaarError as error:
        sys.exit(f"error: {error}")
