"""The `lmzoo` command line: a typer app whose every command comes from a plugin through the
`lmzoo_cli` hook (the core verbs `run` and `validate` from the built-in `lmzoo.plugins.commands`)."""
from __future__ import annotations

import typer

from . import __version__

HELP = """lmzoo: compose, train and compare small decoder-only language models from YAML recipes.

\b
Examples:
  lmzoo list position                 # the registered position encodings
  lmzoo show position alibi           # docs and parameters of one component
  lmzoo validate recipes/rope_vs_alibi.yaml model.d_model=64
  lmzoo run recipes/rope_vs_alibi.yaml --quick
"""


def build_app() -> typer.Typer:
    """The CLI app with every plugin's commands."""
    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False,
                      context_settings={"help_option_names": ["-h", "--help"]})

    @app.callback()
    def _root(version: bool = typer.Option(False, "--version", help="print the version and exit")):
        if version:
            typer.echo(f"lmzoo {__version__}")
            raise typer.Exit()

    from .hooks import call_each

    call_each("lmzoo_cli", app=app)  # plugin commands; a broken plugin is reported, not fatal
    return app


def main() -> None:
    app = build_app()
    app(prog_name="lmzoo")


if __name__ == "__main__":
    main()
