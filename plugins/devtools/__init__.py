"""Tools for plugin authors: `lmzoo new-plugin` writes a working plugin and its test."""
from __future__ import annotations

from pathlib import Path

import typer

import lmzoo


def _echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


def cmd_new_plugin(
    kind: str = typer.Argument(..., help="component kind, e.g. position"),
    name: str = typer.Argument(..., help="new component name, e.g. my-alibi"),
    out: Path = typer.Option(Path("."), "--out", "-o", help="directory for the plugin file and its test"),
    force: bool = typer.Option(False, "--force", help="overwrite existing files"),
):
    """Write a working plugin file and a pytest file for it; a recipe can reference the plugin
    at once with `plugins: [./<file>.py]`.

    \b
    Example:
      lmzoo new-plugin position my-alibi --out .
      lmzoo validate recipes/rope_vs_alibi.yaml 'plugins=[./my_alibi.py]' model.position=my-alibi
    """
    from lmzoo.hooks import get_registry
    from lmzoo.registry import did_you_mean

    from .scaffold import render_plugin

    reg = get_registry()
    if kind not in reg.kinds:
        _echo_err(f"error: unknown kind {kind!r}{did_you_mean(kind, reg.kinds)}; kinds: {', '.join(sorted(reg.kinds))}")
        raise typer.Exit(2)
    if (kind, name) in reg.entries:
        _echo_err(f"error: {kind}/{name} already exists (from {reg.get(kind, name).origin}); pick another name")
        raise typer.Exit(2)
    module, test = render_plugin(kind, name)
    stem = name.replace("-", "_")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.py", out / f"test_{stem}.py"]
    for path, text in zip(paths, (module, test)):
        if path.exists() and not force:
            _echo_err(f"error: {path} exists; use --force to overwrite")
            raise typer.Exit(2)
        path.write_text(text)
        typer.echo(f"wrote {path}")
    typer.echo(f"\nuse it in a recipe:\n  plugins: [./{paths[0].name}]\n  ... {{name: {name}}}\n"
               f"test it:  pytest {paths[1]}")



@lmzoo.hookimpl
def lmzoo_cli(app):
    app.command("new-plugin")(cmd_new_plugin)
