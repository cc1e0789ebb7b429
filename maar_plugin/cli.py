"""The ``maar`` command line: a thin shell over functions that the tests call directly."""
from __future__ import annotations

import sys

import click

from maar_plugin.errors import MaarError


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


def main() -> None:
    cli(prog_name="maar")
