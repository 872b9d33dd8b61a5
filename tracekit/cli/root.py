"""The root `tracekit` Typer app that every command module registers on, with --version and shell completion.

Kept apart from tracekit/cli/__init__.py so a command module imports this, not its own package.
"""

from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(
    name="tracekit",
    help="Trace distributed training jobs and multi-agent workflows; find the node that caused a failure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from tracekit import __version__

        print(f"tracekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", "-V", callback=_print_version, is_eager=True, help="Print tracekit's version and exit."),
) -> None:
    """Trace distributed training jobs and multi-agent workflows; find the node that caused a failure."""
