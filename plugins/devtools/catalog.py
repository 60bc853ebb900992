"""Discovering the zoo: `lmzoo list`, `lmzoo show`, `lmzoo schema`, `lmzoo plugins`."""
from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Optional, Union

import typer


def _echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


def _report_problems() -> None:
    from lmzoo.hooks import problems

    for p in problems():
        _echo_err(f"warning: {p}")


def _type_name(ann) -> str:
    text = getattr(ann, "__name__", None) if isinstance(ann, type) else None
    if text is None:
        text = str(ann).replace("typing.", "")
    return text


def _yaml_value(value) -> str:
    """A default as it would be written in a recipe (null, [0.9, 0.95], ...)."""
    import yaml

    if isinstance(value, tuple):
        value = list(value)
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()
    except yaml.YAMLError:
        return repr(value)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def cmd_list(
    kind: Optional[str] = typer.Argument(None, help="only this kind (tokenizer, position, attention, ...)"),
    pattern: Optional[str] = typer.Option(None, "--pattern", "-p", help="glob on names, e.g. 'hf-*'"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of {kind, name, summary, plugin}"),
):
    """List registered components as a table of kind, name, summary and plugin.

    \b
    Example:
      lmzoo list                # everything
      lmzoo list position       # one kind
      lmzoo list --json         # [{"kind":..,"name":..,"summary":..,"plugin":..}, ...]
    """
    from lmzoo.hooks import get_registry
    from lmzoo.registry import did_you_mean

    reg = get_registry()
    if kind is not None and kind not in reg.kinds:
        _echo_err(f"error: unknown kind {kind!r}{did_you_mean(kind, reg.kinds)}; kinds: {', '.join(sorted(reg.kinds))}")
        raise typer.Exit(2)
    entries = reg.list(kind, pattern)
    if as_json:
        typer.echo(json.dumps([e.as_row() for e in entries], indent=2))
    else:
        rows = [[e.kind, e.name, e.summary, e.origin] for e in entries]
        typer.echo(_table(rows, ["kind", "name", "summary", "plugin"]))
    _report_problems()


def cmd_show(
    kind: str = typer.Argument(..., help="component kind"),
    name: str = typer.Argument(..., help="component name"),
):
    """Show one component's documentation and its parameters (type, default, description).

    \b
    Example:
      lmzoo show position rope
    """
    from lmzoo.hooks import get_registry
    from lmzoo.registry import RegistryError

    try:
        entry = get_registry().get(kind, name)
    except RegistryError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(2)
    typer.echo(f"{entry.kind}/{entry.name}  (plugin: {entry.origin})\n")
    typer.echo(entry.summary)
    if entry.doc and entry.doc.strip() != entry.summary:
        typer.echo("\n" + entry.doc)
    rows = []
    for fname, field in entry.params.model_fields.items():
        default = "required" if field.is_required() else _yaml_value(field.get_default(call_default_factory=True))
        constraints = ", ".join(str(m) for m in field.metadata)
        rows.append([fname, _type_name(field.annotation), default, (field.description or "")
                     + (f" [{constraints}]" if constraints else "")])
    typer.echo("\nparameters:")
    typer.echo(_table(rows, ["name", "type", "default", "description"]) if rows else "  (none)")
    typer.echo(f"\nin a recipe:  {{name: {entry.name}"
               + "".join(f", {r[0]}: {r[2]}" for r in rows if r[2] != "required") + "}")


def cmd_schema(out: Optional[Path] = typer.Option(None, "--out", "-o", help="write to this file instead of stdout")):
    """Write the recipe JSON Schema (for editor completion and checking), built from the
    registered components.

    \b
    Example:
      lmzoo schema --out recipe.schema.json
      # then in a recipe: # yaml-language-server: $schema=recipe.schema.json
    """
    

    text = json.dumps(json_schema(), indent=2)
    if out:
        out.write_text(text)
        _echo_err(f"wrote {out}")
    else:
        typer.echo(text)


def cmd_plugins():
    """List loaded plugins (entry points and files) and any that failed, with their errors.

    \b
    Example:
      LMZOO_PLUGINS=./my_alibi.py lmzoo plugins
    """
    from lmzoo.hooks import get_state

    state = get_state()
    counts: dict[str, int] = {}
    for e in state.registry.entries.values():
        counts[e.origin] = counts.get(e.origin, 0) + 1
    for origin in state.loaded:
        typer.echo(f"ok      {origin}  ({counts.get(origin, 0)} components)")
    for p in state.problems:
        typer.echo(f"FAILED  {p.plugin}: {p.error}")
    if state.problems:
        raise typer.Exit(1)


def json_schema() -> dict:
    """The JSON Schema of recipes, each component field a union of the registered components."""
    from pydantic import Field, TypeAdapter

    from lmzoo.hooks import get_state
    from lmzoo.recipe import (
        AttentionSpec,
        DataFilterSpec,
        DataSourceSpec,
        FFNSpec,
        LoggerSpec,
        NormSpec,
        OptimizerSpec,
        PositionSpec,
        ScheduleSpec,
        TokenizerSpec,
        recipe_model,
        resolved_model,
    )

    model = recipe_model()
    schema = model.model_json_schema()
    defs = schema.setdefault("$defs", {})
    registry = get_state().registry
    for spec in (TokenizerSpec, DataSourceSpec, DataFilterSpec, PositionSpec, AttentionSpec, NormSpec, FFNSpec,
                 OptimizerSpec, ScheduleSpec, LoggerSpec, *_plugin_specs(model)):
        members = tuple(resolved_model(spec, e) for e in registry.list(spec.kind))
        if spec.__name__ not in defs or not members:
            continue
        union = members[0] if len(members) == 1 else typing.Annotated[Union[members], Field(discriminator="name")]
        sub = TypeAdapter(union).json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[spec.__name__] = sub
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lmzoo recipe"
    return schema


def _plugin_specs(model) -> list:
    """ComponentSpec subclasses declared by plugin sections (e.g. align.loss)."""
    from pydantic import BaseModel

    from lmzoo.hooks import get_state
    from lmzoo.recipe import ComponentSpec, _types

    found, todo, seen = [], list(get_state().sections.values()), set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for f in m.model_fields.values():
            for t in _types(f.annotation):
                if isinstance(t, type) and issubclass(t, ComponentSpec) and t.kind:
                    found.append(t)
                elif isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
    return found


