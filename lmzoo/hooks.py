"""The plugin manager: built-ins by name, third-party entry points, files, LMZOO_PLUGINS.

Built-in plugins are modules of `lmzoo.plugins` (the repository's `plugins/` directory)
loaded by name, as pytest loads its own; the `lmzoo` entry-point group is for third-party
distributions; files come from a recipe's `plugins:` list or LMZOO_PLUGINS. Every hook is
called through pluggy. A plugin that fails to import (including `sys.exit` at import),
implements a hook that does not exist, or fails while registering is recorded with its name
and error, its registrations are rolled back, and the others still load; `strict=True` (or
LMZOO_STRICT_PLUGINS=1) makes that fatal.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pluggy

from . import hookspecs
from .registry import Registry, RegistryError

# Built-in plugins, in load order: modules of lmzoo.plugins.
BUILTINS = ("commands", "positions", "attention", "norms", "ffn", "optimizers", "schedules", "data_sources",
            "tokenizers", "filters", "alignment", "scaling", "bench", "devtools", "interop", "loggers", "evaluation", "report",
            "document_eval", "launch")
ENTRY_POINT_GROUP = "lmzoo"
ENV_VAR = "LMZOO_PLUGINS"
STRICT_ENV_VAR = "LMZOO_STRICT_PLUGINS"


class PluginError(Exception):
    """A plugin failed to import or register (raised only in strict mode)."""


@dataclass
class PluginProblem:
    plugin: str  # the plugin's name: lmzoo:<builtin>, distribution:entry-point or a file path
    error: str
    detail: str = ""

    def __str__(self) -> str:
        return f"plugin {self.plugin} failed: {self.error}"


@dataclass
class PluginState:
    manager: pluggy.PluginManager
    registry: Registry
    problems: list[PluginProblem] = field(default_factory=list)
    loaded: dict[str, ModuleType] = field(default_factory=dict)  # origin -> module
    sections: dict[str, type] = field(default_factory=dict)  # recipe section -> pydantic model


_state: PluginState | None = None


def _strict(strict: bool | None) -> bool:
    if strict is not None:
        return strict
    return os.environ.get(STRICT_ENV_VAR, "") not in ("", "0", "false", "no")


def _fail(state: PluginState, origin: str, exc: BaseException, strict: bool) -> None:
    if isinstance(exc, SystemExit):
        error = f"SystemExit: the plugin called sys.exit({exc.code!r}) while loading"
    else:
        error = f"{type(exc).__name__}: {exc}"
    problem = PluginProblem(origin, error, "".join(traceback.format_exception(exc)))
    state.problems.append(problem)
    if strict:
        raise PluginError(str(problem)) from exc


def _unmarked_hooks(module: ModuleType) -> list[str]:
    """Functions named like hooks that pluggy will not call (no @lmzoo.hookimpl)."""
    return [name for name, obj in vars(module).items()
            if name.startswith("lmzoo_") and callable(obj) and not hasattr(obj, "lmzoo_impl")]


def _call(state: PluginState, module: ModuleType, hook: str, **kwargs):
    """Call one hook of one plugin, through the plugin manager."""
    others = [p for p in state.manager.get_plugins() if p is not module]
    return state.manager.subset_hook_caller(hook, remove_plugins=others)(**kwargs)


def _register_marked(registry: Registry, module: ModuleType) -> None:
    """Register objects marked with @lmzoo.component that the module itself defines."""
    for obj in list(vars(module).values()):
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        for mark in getattr(obj, "__dict__", {}).get("__lmzoo_components__", ()):  # not a base class's marks
            registry.add(mark["kind"], mark["name"], factory=obj, params=mark["params"], summary=mark["summary"])


def _register_module(state: PluginState, module: ModuleType, origin: str, strict: bool) -> None:
    """Register one plugin module and run its registration hooks, attributed to `origin`.
    On failure its partial registrations are rolled back."""
    if origin in state.loaded:
        return
    before = dict(state.registry.entries)
    kinds_before = dict(state.registry.kinds)
    sections_before = dict(state.sections)
    try:
        unmarked = _unmarked_hooks(module)
        if unmarked:
            raise pluggy.PluginValidationError(
                module, f"{', '.join(unmarked)} lack the @lmzoo.hookimpl decorator, so lmzoo would never call them")
        state.manager.register(module, name=origin)
    except Exception as exc:  # a hookimpl with a bad signature, an unmarked hook
        _fail(state, origin, exc, strict)
        return
    state.registry.current_origin = origin
    try:
        state.manager.check_pending()  # a misspelt hook name (lmzoo_registr) is an error, not a silent no-op
        _register_marked(state.registry, module)
        _call(state, module, "lmzoo_register", registry=state.registry)
        for sections in _call(state, module, "lmzoo_recipe_sections"):
            for key, model in (sections or {}).items():
                if key in state.sections:
                    raise RegistryError(f"recipe section {key!r} is declared twice (again by {origin})")
                state.sections[key] = model
    except BaseException as exc:  # SystemExit and the like too; only Ctrl-C goes through
        if isinstance(exc, KeyboardInterrupt):
            raise
        state.registry.entries = before
        state.registry.kinds = kinds_before
        state.sections = sections_before
        state.manager.unregister(module)
        _fail(state, origin, exc, strict)
        return
    finally:
        state.registry.current_origin = "<unknown>"
    state.loaded[origin] = module


def _import(state: PluginState, origin: str, load, strict: bool) -> None:
    try:
        module = load()
    except BaseException as exc:  # a plugin's sys.exit must not end every command; only Ctrl-C goes through
        if isinstance(exc, KeyboardInterrupt):
            raise
        _fail(state, origin, exc, strict)
        return
    _register_module(state, module, origin, strict)


def _load_builtins(state: PluginState, strict: bool) -> None:
    for name in BUILTINS:
        _import(state, f"lmzoo:{name}", lambda name=name: importlib.import_module(f"lmzoo.plugins.{name}"), strict)


def _load_entry_points(state: PluginState, strict: bool) -> None:
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name)):
        dist = ep.dist.name if ep.dist else "?"
        _import(state, f"{dist}:{ep.name}", ep.load, strict)


def _import_file(path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    mod_name = f"lmzoo_plugin_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def load_plugin_files(paths, strict: bool | None = None, base_dir: str | Path | None = None) -> list[str]:
    """Load plugin files (relative paths resolve against `base_dir`, e.g. the recipe's folder).
    Returns their origins. A missing or broken file is a problem like any other plugin's."""
    strict = _strict(strict)
    state = get_state()
    origins = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        path = path.resolve()
        origin = str(path)
        origins.append(origin)
        if origin in state.loaded:
            continue

        def load(path=path, p=p):
            if not path.is_file():
                raise FileNotFoundError(f"plugin file {p!r} not found (looked at {path})")
            return _import_file(path)

        _import(state, origin, load, strict)
    return origins


def get_state(strict: bool | None = None) -> PluginState:
    """The process-wide plugin manager and registry, loaded on first use."""
    global _state
    if _state is None:
        strict = _strict(strict)
        pm = pluggy.PluginManager("lmzoo")
        pm.add_hookspecs(hookspecs)
        _state = PluginState(manager=pm, registry=Registry())
        _load_builtins(_state, strict)
        _load_entry_points(_state, strict)
        env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
        if env:
            load_plugin_files(env, strict=strict)
    return _state


def reset() -> None:
    """Forget all loaded plugins (tests use this to start from a clean slate)."""
    global _state
    _state = None


def get_registry() -> Registry:
    return get_state().registry


def problems() -> list[PluginProblem]:
    return list(get_state().problems)


def call_each(name: str, **kwargs) -> list:
    """Call one hook plugin by plugin (through the plugin manager), so a plugin that fails is
    reported by name and the others still run. Returns the results."""
    state, out = get_state(), []
    for impl in getattr(state.manager.hook, name).get_hookimpls():
        plugin = impl.plugin
        try:
            out.append(_call(state, plugin, name, **kwargs))
        except Exception as exc:
            state.problems.append(PluginProblem(impl.plugin_name, f"{name}: {type(exc).__name__}: {exc}"))
    return out


def hook():
    """The hook caller: `hook().lmzoo_after_run(...)` calls every plugin's implementation."""
    return get_state().manager.hook
