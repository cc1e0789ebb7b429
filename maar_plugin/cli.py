"""The ``maar`` command line: a thin shell over functions that the tests call directly."""
from __future__ import annotations

import sys

import click

from maar_plugin.cli_options import dataclass_flags, given_options, with_given
from maar_plugin.errors import MaarError
from maar_plugin.training.options import overrides_from_options, train_options
from maar_plugin.verification.options import VerifyOptions


class _Group(click.Group):
    """A click group that shows MaarError as one line (exit 1) and an interrupt without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MaarError as error:
            raise click.ClickException(str(error)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished work is saved; rerun with --resume to continue", err=True)
            sys.exit(130)


class _VerifierChoice(click.Choice):
    """``builtin`` or ``abcrown``; ``maar``, the old name of ``builtin``, is still read as it."""

    def convert(self, value, param, ctx):
        return "builtin" if value == "maar" else super().convert(value, param, ctx)


def verifier_options(command):
    """--verifier, --abcrown, --abcrown-python: who decides the instances (``maar verify/certify/reproduce``)."""
    command = click.option("--abcrown-python", type=click.Path(dir_okay=False),
                           help="the Python that runs α,β-CROWN  [default: this one]")(command)
    command = click.option("--abcrown", "abcrown_checkout", type=click.Path(file_okay=False),
                           help="an α,β-CROWN checkout (the folder holding complete_verifier/abcrown.py)")(command)
    return click.option("--verifier", "verifier_name", type=_VerifierChoice(["builtin", "abcrown"]), default="builtin",
                        show_default=True,
                        help="the built-in verifier, or α,β-CROWN (one process per batch; needs --abcrown)")(command)


def _retry_seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value < 0:
        raise click.BadParameter(f"must be 0 (no retry) or a positive number of seconds, got {value:g}")
    return value


def retry_open_option(command=None, *, default_text: str = ""):
    """--retry-open SECONDS, one meaning everywhere: open instances again with this timeout; 0: no second pass."""
    def decorate(command):
        return click.option("--retry-open", type=float, metavar="SECONDS", callback=_retry_seconds,
                            help="verify instances left open (timeout, unknown) again with this timeout, also those "
                                 f"of a resumed run (0: no second pass){default_text}")(command)
    return decorate(command) if command is not None else decorate


ABCROWN_OPTIONS = {"timeout", "device"}  # the VerifyOptions an α,β-CROWN run takes; it has its own for the rest
REPRODUCE_OWN_OPTIONS = ("timeout", "device")   # the recipe's certify_timeout; reproduce's --device does both


def make_verifier(name: str, checkout: str | None, python: str | None, given: dict | None = None,
                  config: dict | None = None):
    """None for the built-in cascade, else the α,β-CROWN back end (``config``: an α,β-CROWN config to run
    with); ``given``: the verifier flags given, of which α,β-CROWN takes only ABCROWN_OPTIONS."""
    if name == "builtin":
        if checkout or python:
            raise MaarError("--abcrown and --abcrown-python go with --verifier abcrown")
        return None
    if not checkout:
        raise MaarError("--verifier abcrown needs --abcrown PATH, the α,β-CROWN checkout")
    others = sorted(set(given or {}) - ABCROWN_OPTIONS)
    if others:
        names = [f"bab_{inner}" for inner in (given or {}).get("bab", {})] + [key for key in others if key != "bab"]
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in names)
        raise MaarError(f"{flags}: settings of the built-in verifier; with --verifier abcrown set them in the "
                        "α,β-CROWN config (--abcrown-config)")
    from pathlib import Path

    from maar_plugin.verification.abcrown.backend import AbcrownVerifier

    return AbcrownVerifier(Path(checkout), Path(python) if python else Path(sys.executable), config)


@click.group(cls=_Group)
@click.version_option(package_name="maar-plugin")
def cli() -> None:
    """MAAR certified training, VNN-COMP export and complete verification."""


@cli.command()
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="run directory")
@click.option("--recipe", "recipe_name", help="start from a recipe (`maar recipes`) or a recipe .yaml file")
@click.option("--scale", type=click.Choice(["full", "cpu"]), default="full", show_default=True,
              help="the recipe's full schedule or its CPU-scale version")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file of training options (over the recipe, under the flags)")
@click.option("--resume", is_flag=True, help="continue the interrupted run in --out")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@train_options
def train(run_dir: str, recipe_name: str | None, scale: str, config_file: str | None, resume: bool,
          no_progress: bool, **options) -> None:
    """Train a classifier with a certified-training objective (MAAR, IBP, CROWN-IBP, ...).

    Options are layered: defaults <- --recipe <- --config <- flags."""
    from maar_plugin.training.config import load_yaml_mapping
    from maar_plugin.training.distributed import ranks_from_env
    from maar_plugin.training.loop import train as run_training
    from maar_plugin.training.recipe import config_from_recipe, load_recipe

    if scale != "full" and not recipe_name:
        raise MaarError("--scale picks a recipe's scale: give --recipe too")
    config = None
    if not resume:
        recipe = load_recipe(recipe_name, scale) if recipe_name else None
        file_options = load_yaml_mapping(config_file) if config_file else None
        config = config_from_recipe(recipe.training if recipe else {}, file_options, overrides_from_options(options),
                                    base_args=recipe.base_args if recipe else None)
    ranks = ranks_from_env()
    try:
        run_training(config, run_dir, resume=resume, show_progress=not no_progress, log=click.echo)
    except MaarError:
        if ranks.is_main:
            raise
        sys.exit(1)  # every rank meets the same error (the ranks agree on it); rank 0 alone says it
    if ranks.is_main:
        click.echo(f"run saved in {run_dir} (metrics.jsonl, metrics.png, checkpoint.pt)")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--eps", type=float, help="radius (default: the run's target ε)")
@click.option("--count", type=int, help="first images of the split (default: all of them)")
@click.option("--split", type=click.Choice(["test", "validation"]), default="test", show_default=True,
              help="the test set, or the last 5000 training images (for runs trained without them)")
@click.option("--pgd-steps", type=int, default=50, show_default=True, help="PGD steps")
@click.option("--pgd-restarts", type=int, default=3, show_default=True, help="PGD restarts")
@click.option("--crown-count", type=int, help="first images that also get CROWN bounds (default: all; 0: none)")
@click.option("--device", default="auto", show_default=True,
              help="where the evaluation runs: cuda, cpu, cuda:N, or auto (cuda when there is one)")
def evaluate(run_dir: str, eps: float | None, count: int | None, split: str, pgd_steps: int, pgd_restarts: int,
             crown_count: int | None, device: str) -> None:
    """Recompute a run's metrics: clean, PGD, IBP- and CROWN-verified accuracy, on the test set or on held-out
    training images.

    Saved as evaluation.json (read by `maar report`) only at the run's ε with its `maar reproduce` folder's
    settings (outside one: the whole test set); validation results as evaluation-validation.json; other
    radii and counts in files named by them."""
    from maar_plugin.training.evaluate_run import EVALUATION_NAME, VALIDATION_NAME, evaluate_run, format_table

    results, path = evaluate_run(run_dir, eps=eps, count=count, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts,
                                 crown_count=crown_count, split=split, device=device)
    click.echo(format_table([results]))
    click.echo(f"written: {path}" + ("" if path.name in (EVALUATION_NAME, VALIDATION_NAME) else
                                     " (not the file `maar report` reads: other ε or settings than the run's)"))


@cli.command("export")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="ONNX path without .onnx, e.g. models/NAME")
@click.option("--eps", type=float, help="L-inf radius in [0,1] pixel space")
@click.option("--count", type=int, help="number of test images")
@click.option("--selection", type=click.Choice(["first", "random"]), default="first", show_default=True,
              help="first N test images or a seeded random sample")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of --selection random")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="seconds per instance")
@click.option("--specs-dir", type=click.Path(file_okay=False),
              help="root of the spec folders (default: vnnlib_specs beside the ONNX file's folder)")
@click.option("--abcrown-device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="the device the written α,β-CROWN config asks for")
@click.option("--force", is_flag=True, help="overwrite an earlier export")
@click.option("--abcrown-config-only", is_flag=True,
              help="only write instances.csv and abcrown.yaml for an existing ONNX file and spec folder")
@click.option("--abcrown-native", is_flag=True,
              help="also write abcrown_native.yaml: α,β-CROWN loads the run's model and test images itself "
                   "(maar_plugin.abcrown_loaders through its Customized(...) entries)")
def export(run_dir: str | None, out: str, eps: float | None, count: int | None, selection: str, seed: int,
           timeout: float, specs_dir: str | None, abcrown_device: str, force: bool, abcrown_config_only: bool,
           abcrown_native: bool) -> None:
    """Export a run as ONNX + VNN-LIB robustness specs + instances.csv + α,β-CROWN config."""
    from maar_plugin.export import export_run, write_abcrown_config_only

    if abcrown_config_only:
        paths = write_abcrown_config_only(out, timeout=timeout, force=force, specs_dir=specs_dir,
                                          device=abcrown_device)
        click.echo(f"wrote {paths.spec_dir}/instances.csv and {paths.spec_dir}/abcrown.yaml")
        return
    if run_dir is None or eps is None or count is None:
        raise MaarError("maar export needs RUN_DIR, --eps and --count (or --abcrown-config-only)")
    summary = export_run(run_dir, eps, count, out, selection=selection, seed=seed, timeout=timeout, force=force,
                         specs_dir=specs_dir, device=abcrown_device, abcrown_native=abcrown_native)
    click.echo(f"ONNX check on {summary.check.images} test images: max |difference| "
               f"onnxruntime {summary.check.onnxruntime:.3g}, onnx2torch {summary.check.onnx2torch:.3g}")
    click.echo(f"wrote {summary.paths.onnx} and {summary.instances} instances in {summary.paths.spec_dir} "
               f"({summary.misclassified} misclassified, kept); α,β-CROWN: "
               f"python abcrown.py --config {(summary.paths.spec_dir / 'abcrown.yaml').resolve()}")
    if abcrown_native:
        click.echo(f"α,β-CROWN on the run itself (maar_plugin importable there): python abcrown.py --config "
                   f"{(summary.paths.spec_dir / 'abcrown_native.yaml').resolve()}")


@cli.command()
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), help="ONNX network (with --vnnlib)")
@click.option("--vnnlib", "vnnlib_path", type=click.Path(dir_okay=False), help="VNN-LIB property (with --onnx)")
@click.option("--instances", "instances_csv", type=click.Path(dir_okay=False),
              help="VNN-COMP instances.csv (onnx,vnnlib,timeout per row, relative to the csv)")
@click.option("--abcrown-config", "config_file", type=click.Path(dir_okay=False),
              help="an α,β-CROWN YAML config: its instances and the settings that have an equivalent here")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="results folder (default for batches: results/<csv folder or config name>)")
@click.option("--resume", is_flag=True, help="skip instances already in the log of --out")
@click.option("--shard", "shard_text", metavar="K/N",
              help="verify only shard K of N (K = 0..N-1): the instances i with i mod N = K, e.g. one SLURM "
                   "array task; under torchrun each rank takes its shard from RANK/WORLD_SIZE")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="verify a batch in N local processes, one shard of the instances each, with an equal share "
                   "of the CPU threads")
@retry_open_option
@click.option("--no-progress", is_flag=True, help="no progress bar")
@dataclass_flags(VerifyOptions)
@verifier_options
def verify(onnx_path: str | None, vnnlib_path: str | None, instances_csv: str | None, config_file: str | None,
           out_dir: str | None, resume: bool, shard_text: str | None, jobs: int, retry_open: float | None,
           no_progress: bool, verifier_name: str, abcrown_checkout: str | None, abcrown_python: str | None,
           **flags) -> None:
    """Verify ONNX + VNN-LIB instances completely: IBP, CROWN, PGD, alpha-CROWN, then branch and bound, or
    with α,β-CROWN (--verifier abcrown). Exits with status 1 when an instance's verdict is `error`."""
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from maar_plugin.verification import (
        Instance,
        instance_table,
        merge_summaries,
        parse_shard,
        rank_device,
        read_abcrown_config,
        read_instances_csv,
        read_log,
        shard_from_env,
        stage_table,
        verify_in_processes,
        verify_instances,
        wait_for_all_ranks,
    )

    sources = sum([bool(onnx_path or vnnlib_path), bool(instances_csv), bool(config_file)])
    if sources != 1 or bool(onnx_path) != bool(vnnlib_path):
        raise MaarError("give exactly one of: --onnx with --vnnlib, --instances CSV, --abcrown-config YAML")
    rank_shard = shard_from_env()
    if shard_text and onnx_path:
        raise MaarError("--shard splits a batch of instances: give --instances or --abcrown-config")
    if jobs > 1 and (onnx_path or shard_text or rank_shard):
        raise MaarError("--jobs splits a batch of instances in local processes: give --instances or "
                        "--abcrown-config, without --shard or torchrun")
    if shard_text and rank_shard:
        raise MaarError(f"--shard {shard_text} under torchrun (RANK/WORLD_SIZE set), which picks the shard itself: "
                        "give one of them")
    shard = parse_shard(shard_text) if shard_text else rank_shard
    given = given_options(VerifyOptions, flags)
    job = read_abcrown_config(config_file) if config_file else None
    verifier = make_verifier(verifier_name, abcrown_checkout, abcrown_python, given, job.document if job else None)
    if job and config_file:
        for note in job.notes:
            click.echo(f"note: {note}", err=True)
        if job.ignored_keys and verifier is None:  # α,β-CROWN itself honours them all
            click.echo(f"warning: ignoring α,β-CROWN keys with no equivalent here: {', '.join(job.ignored_keys)}",
                       err=True)
        instances, default_out = job.instances, Path("results") / Path(config_file).stem
    elif instances_csv:
        instances = read_instances_csv(instances_csv)
        default_out = Path("results") / Path(instances_csv).resolve().parent.name
    else:
        assert onnx_path and vnnlib_path  # checked above
        instances, default_out = [Instance(Path(onnx_path), Path(vnnlib_path))], None
    options = with_given(with_given(VerifyOptions(), job.options if job else {}), given)
    if "timeout" in given:      # --timeout overrides the instances' own
        instances = [replace(instance, timeout=None) for instance in instances]
    single = default_out is None
    out = Path(out_dir) if out_dir else default_out
    if rank_shard:
        options = replace(options, device=rank_device(options.device))  # one GPU per torchrun rank
    progress = not no_progress and not single and not (rank_shard and rank_shard.index > 0)
    with tempfile.TemporaryDirectory(prefix="maar-verify-") as scratch:
        if jobs > 1:
            results = verify_in_processes(instances, out or scratch, jobs, resume=resume, options=options,
                                          progress=progress, verifier=verifier, retry_open=retry_open)
        else:
            results = verify_instances(instances, out or scratch, resume=resume, options=options,
                                       progress=progress, shard=shard, verifier=verifier, retry_open=retry_open)
    if single:
        (result,) = results
        click.echo(instance_table([result]))
        if result.verdict == "sat":
            click.echo(result.vnncomp_text(), nl=False)
        if out_dir:
            click.echo(f"results in {out} (results/*.txt, log.jsonl, summary.csv)")
        if result.verdict == "error":
            raise MaarError(result.message)
        return
    if rank_shard and wait_for_all_ranks():  # torchrun: rank 0 alone merges the shards and prints
        if rank_shard.index == 0:
            merge_summaries(out)
            click.echo(stage_table(read_log(out)))
            click.echo(f"results of {rank_shard.count} ranks in {out} (results/*.txt, "
                       f"log.shard-K-of-{rank_shard.count}.jsonl, merged summary.csv)")
        return
    click.echo(stage_table(results))
    if shard and shard.count > 1:
        click.echo(f"shard {shard}: results in {out} (results/*.txt, log{shard.suffix}.jsonl, "
                   f"summary{shard.suffix}.csv); `maar report {out}` merges the shards")
    elif jobs > 1:
        click.echo(f"results of {jobs} processes in {out} (results/*.txt, log.shard-K-of-{jobs}.jsonl, "
                   "merged summary.csv)")
    else:
        click.echo(f"results in {out} (results/*.txt, log.jsonl, summary.csv)")


@cli.command()
@click.argument("results_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--per-instance", "per_instance", is_flag=True, help="also list every instance (verify and comparison "
              "folders; several: side by side)")
@click.option("--instances", "per_instance_alias", is_flag=True, hidden=True)  # the old name of --per-instance
@click.option("--objectives", "rows",
              help="only these comma-separated rows of a `maar reproduce` folder (printed, not saved)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="folder for the figures (cactus.png, funnel.png, cex-*.png)  [default: DIR/report for one folder]")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="also write one self-contained HTML page: tables, cactus plot, funnel, counterexamples")
@click.option("--max-counterexamples", type=click.IntRange(min=0), default=12, show_default=True,
              help="counterexample figures per verifier at most")
def report(results_dirs: tuple[str, ...], per_instance: bool, per_instance_alias: bool, rows: str | None,
           out_dir: str | None, html_path: str | None, max_counterexamples: int) -> None:
    """Summarise one or several results folders.

    A `maar reproduce` folder gives the results table (mean ± std over seeds, MAAR minus its base paired
    by seed, and by seed and image with bootstrap intervals and McNemar's test), also written as table.md
    and table.png in the folder. `maar verify` / `maar certify` folders and side-by-side folders of
    benchmarks/verifier_comparison.py (two verifiers each) give proved / falsified / open per stage and
    time per instance, and the figures: a cactus plot, the stage funnel and the counterexamples on image
    inputs (into --out, default DIR/report for one folder); --html puts them all into one page."""
    from pathlib import Path

    from maar_plugin.atomic import atomic_write_text
    from maar_plugin.reproduce import PLAN_NAME, markdown_report, plot_report
    from maar_plugin.verification import merge_summaries

    reproduce_dirs = [folder for folder in results_dirs if (Path(folder) / PLAN_NAME).is_file()]
    if reproduce_dirs and len(results_dirs) > 1:
        raise MaarError(f"{reproduce_dirs[0]}: a `maar reproduce` folder is reported on its own")
    if reproduce_dirs:
        (results_dir,) = results_dirs
        if rows:
            click.echo(markdown_report(results_dir, rows.split(",")), nl=False)
            return
        markdown = markdown_report(results_dir)
        atomic_write_text(Path(results_dir) / "table.md", markdown)
        plot_report(results_dir, Path(results_dir) / "table.png")
        click.echo(markdown, nl=False)
        click.echo(f"\nwritten: {Path(results_dir) / 'table.md'} and {Path(results_dir) / 'table.png'}")
        return
    from maar_plugin.report import build_report, html_page, read_sources, text_report, write_figures
    from maar_plugin.report.sources import is_comparison_folder

    sources = read_sources(results_dirs)
    click.echo(text_report(sources, per_instance or per_instance_alias))
    for source in sources:
        merged = None if is_comparison_folder(source.folder) else merge_summaries(source.folder)
        if merged:
            click.echo(f"shard logs merged: {len(source.results)} instances, written as {merged}")
    figures_dir = Path(out_dir) if out_dir else (Path(results_dirs[0]) / "report" if len(results_dirs) == 1 else None)
    if figures_dir is None and html_path is None:
        click.echo("figures: give --out DIR (or --html PAGE) to draw the cactus plot, funnel and counterexamples")
        return
    built = build_report(sources, max_counterexamples)
    for note in built.notes:
        click.echo(f"note: {note}", err=True)
    if figures_dir is not None:
        paths = write_figures(built, figures_dir)
        click.echo(f"figures in {figures_dir}: {', '.join(path.name for path in paths[:2])}"
                   + (f" and {len(paths) - 2} counterexample figures (cex-*.png)" if len(paths) > 2 else ""))
    if html_path is not None:
        atomic_write_text(html_path, html_page(built))
        click.echo(f"page: {html_path}")


@cli.command("reproduce")
@click.argument("setting", required=False)
@click.option("--model", default="dm-small", show_default=True,
              help="model; the recipe is SETTING-MODEL (`maar recipes`)")
@click.option("--recipe", "recipe_name", help="a recipe name or .yaml file instead of SETTING and --model")
@click.option("--objectives", default="natural,pgd,ibp,crown-ibp,maar-ibp,maar-crown-ibp", show_default=True,
              help="comma-separated rows, each an objective with optional :KEY=VALUE hyperparameters, "
                   "e.g. maar-ibp:lam=0,maar-ibp:lam=1:weighting=soft")
@click.option("--seeds", default="0,1,2", show_default=True, help="comma-separated seeds")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="results folder")
@click.option("--scale", type=click.Choice(["full", "cpu"]), default="full", show_default=True,
              help="the recipe's full schedule (a GPU) or its CPU-scale version")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="runs trained side by side, and shard processes per certification (processes)")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="where training and verification run (auto: cuda when there is one)")
@click.option("--certify-count", type=int, metavar="N",
              help="verify the first N test images completely; a finished certification of another count is "
                   "extended, its verified images kept  [default: the recipe's certify_count]")
@click.option("--certify-timeout", type=float, metavar="SECONDS",
              help="seconds per instance in the first pass  [default: the recipe's certify_timeout]")
@retry_open_option(default_text="  [default: the recipe's certify_retry_timeout]")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@dataclass_flags(VerifyOptions, exclude=REPRODUCE_OWN_OPTIONS)
@verifier_options
def reproduce_command(setting: str | None, model: str, recipe_name: str | None, objectives: str, seeds: str,
                      out_dir: str, scale: str, jobs: int, device: str, certify_count: int | None,
                      certify_timeout: float | None, retry_open: float | None, no_progress: bool, verifier_name: str,
                      abcrown_checkout: str | None, abcrown_python: str | None, **flags) -> None:
    """Train every objective × seed of a recipe, evaluate each run, verify it completely; resumable.

    SETTING is e.g. mnist-eps0.3 (or give --recipe); `maar report OUT` then prints the table."""
    from maar_plugin.reproduce import markdown_report, parse_rows, parse_seeds, reproduce

    if bool(setting) == bool(recipe_name):
        raise MaarError("give SETTING (e.g. mnist-eps0.3, with --model) or --recipe, not both")
    rows = [row.label for row in parse_rows(objectives)]
    given = given_options(VerifyOptions, flags, exclude=REPRODUCE_OWN_OPTIONS)
    options = with_given(VerifyOptions(device=device), given)
    reproduce(recipe_name or f"{setting}-{model}", rows, parse_seeds(seeds), out_dir, scale=scale, jobs=jobs,
              device=device, progress=not no_progress, log=click.echo, options=options,
              verifier=make_verifier(verifier_name, abcrown_checkout, abcrown_python, given), retry_open=retry_open,
              certify_count=certify_count, certify_timeout=certify_timeout)
    click.echo(markdown_report(out_dir), nl=False)


@cli.command("recipes")
@click.option("--show", "show_name", help="print one recipe's resolved training options and sources")
@click.option("--scale", type=click.Choice(["full", "cpu"]), default="full", show_default=True)
def recipes_command(show_name: str | None, scale: str) -> None:
    """List the shipped recipes (one per dataset, ε and model) or show one."""
    from dataclasses import asdict

    import yaml

    from maar_plugin.training.recipe import load_recipe, recipe_names

    if show_name:
        recipe = load_recipe(show_name, scale)
        click.echo(yaml.safe_dump({"recipe": recipe.name, "scale": recipe.scale, "description": recipe.description,
                                   "sources": list(recipe.sources), "training": recipe.training,
                                   "base_args": recipe.base_args, "evaluation": asdict(recipe.evaluation)},
                                  sort_keys=False, allow_unicode=True, width=110), nl=False)
        return
    names = recipe_names()
    width = max(map(len, names), default=0)
    for name in names:
        click.echo(f"{name:<{width}}  {load_recipe(name).description}")


@cli.command("models")
def models_command() -> None:
    """List the registered models (built-in and from plugins) with a one-line description."""
    from maar_plugin.models import model_descriptions

    descriptions = model_descriptions()
    width = max(map(len, descriptions), default=0)
    for name, description in descriptions.items():
        click.echo(f"{name:<{width}}  {description}")


@cli.command("objectives")
def objectives_command() -> None:
    """List the training objectives (built-in and from plugins) with their hyperparameters and defaults."""
    from maar_plugin.objectives import list_objectives, objective_hyperparameters

    for name, description in list_objectives().items():
        click.echo(f"{name}: {description}")
        for key, (default, help_text) in objective_hyperparameters(name).items():
            click.echo(f"    {key}={default}  {help_text}")


@cli.command()
@click.argument("source", type=click.Path())
@click.option("--eps", type=float, required=True, help="L-inf radius in [0,1] pixel space")
@click.option("--count", type=int, default=100, show_default=True, help="first N test images")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="results folder")
@click.option("--dataset", help="dataset of an ONNX source (a run knows its own)")
@click.option("--data-dir", help="folder with the dataset's standard files")
@click.option("--resume", is_flag=True, help="continue an interrupted certification in --out")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="verify in N local processes, one shard of the instances each")
@retry_open_option
@click.option("--no-progress", is_flag=True, help="no progress bar")
@dataclass_flags(VerifyOptions)
@verifier_options
def certify(source: str, eps: float, count: int, out_dir: str, dataset: str | None, data_dir: str | None,
            resume: bool, jobs: int, retry_open: float | None, no_progress: bool, verifier_name: str,
            abcrown_checkout: str | None, abcrown_python: str | None, **flags) -> None:
    """Export + verify a run (or an ONNX classifier): clean, PGD, IBP-, CROWN-, alpha-CROWN- and
    complete-certified accuracy side by side (with --verifier abcrown: complete-certified only)."""
    from maar_plugin.certification import accuracy_table
    from maar_plugin.certification import certify as run_certify

    given = given_options(VerifyOptions, flags)
    options = with_given(VerifyOptions(), given)
    accuracy = run_certify(source, eps, count, out_dir, timeout=options.timeout, dataset=dataset, data_dir=data_dir,
                           resume=resume, options=options, progress=not no_progress, jobs=jobs,
                           retry_open=retry_open,
                           verifier=make_verifier(verifier_name, abcrown_checkout, abcrown_python, given))
    click.echo(accuracy_table([accuracy]))


@cli.command()
@click.option("--out", "out_dir", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--count", type=int, default=100, show_default=True, help="test images to verify")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="seconds per instance")
@click.option("--no-progress", is_flag=True, help="no progress bars")
def demo(out_dir: str, count: int, timeout: float, no_progress: bool) -> None:
    """Train a small MAAR model on real MNIST, export it, verify it completely, print the table."""
    from maar_plugin.certification import accuracy_table
    from maar_plugin.demo import run_demo
    from maar_plugin.training.loop import format_epoch

    history, accuracy = run_demo(out_dir, count=count, timeout=timeout, progress=not no_progress, log=click.echo)
    click.echo(f"\nlast training epoch (first {history[-1]['eval_count']} test images; CROWN on "
               f"{history[-1]['eval_crown_count']}):\n  " + format_epoch(history[-1], len(history)))
    click.echo(f"\ncomplete verification of the first {accuracy.count} test images:")
    click.echo(accuracy_table([accuracy]))


def main() -> None:
    cli(prog_name="maar")
