"""The ``maar`` command line: a thin shell over functions that the tests call directly."""
from __future__ import annotations

import sys

import click

from maar_plugin.errors import MaarError
from maar_plugin.training.options import overrides_from_options, train_options


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


@click.group(cls=_Group)
@click.version_option(package_name="maar-plugin")
def cli() -> None:
    """MAAR certified training, VNN-COMP export and complete verification."""


@cli.command()
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="run directory")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of training options")
@click.option("--resume", is_flag=True, help="continue the interrupted run in --out")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@train_options
def train(run_dir: str, config_file: str | None, resume: bool, no_progress: bool, **options) -> None:
    """Train a classifier with a certified-training objective (MAAR, IBP, CROWN-IBP, ...)."""
    from maar_plugin.training.config import build_config, load_yaml_mapping
    from maar_plugin.training.loop import train as run_training

    config = None
    if not resume:
        recipe = load_yaml_mapping(config_file) if config_file else None
        config = build_config(recipe, overrides_from_options(options))
    run_training(config, run_dir, resume=resume, show_progress=not no_progress, log=click.echo)
    click.echo(f"run saved in {run_dir} (metrics.jsonl, metrics.png, checkpoint.pt)")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--eps", type=float, help="radius (default: the run's target ε)")
@click.option("--count", type=int, help="test images (default: the whole test set)")
@click.option("--pgd-steps", type=int, default=50, show_default=True, help="PGD steps")
@click.option("--pgd-restarts", type=int, default=3, show_default=True, help="PGD restarts")
@click.option("--no-crown", is_flag=True, help="skip CROWN verification")
def evaluate(run_dir: str, eps: float | None, count: int | None, pgd_steps: int, pgd_restarts: int, no_crown: bool) -> None:
    """Recompute a run's metrics on the test set: clean, PGD, IBP- and CROWN-verified accuracy."""
    from maar_plugin.training.evaluate_run import evaluate_run, format_table

    results = evaluate_run(run_dir, eps=eps, count=count, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, crown=not no_crown)
    click.echo(format_table([results]))


def main() -> None:
    cli(prog_name="maar")
