"""Plugin loading: entry points (group `lmzoo`), files named in a recipe, and LMZOO_PLUGINS.

A plugin that fails to import or to register is recorded with its name and error and
the others still load; `strict=True` (or LMZOO_STRICT_PLUGINS=1) makes that fatal.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import pluggy

from . import hookspecs
from .registry import Registry, RegistryError

ENTRY_POINT_GROUP = "lmzoo"
ENV_VAR = "LMZOO_PLUGINS"
STRICT_ENV_VAR = "LMZOO_STRICT_PLUGINS"


class PluginError(Exception):
    """A plugin failed to import or register (raised only in strict mode)."""


@dataclass
class PluginProblem:
    plugin: str  # the plugin's name: distribution:entry-point or a file path
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
    sections: dict[str, type] = field(default_factory=dict)


_state: PluginState | None = None


def _strict(strict: bool | None) -> bool:
    if strict is not None:
        return strict
    return os.environ.get(STRICT_ENV_VAR, "") not in ("", "0", "false", "no")


def _fail(state: PluginState, origin: str, exc: BaseException, strict: bool) -> None:
    problem = PluginProblem(origin, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    state.problems.append(problem)
    if strict:
        raise PluginError(str(problem)) from exc


def _register_module(state: PluginState, module: ModuleType, origin: str, strict: bool) -> None:
    """Register one plugin module and run its registration hooks, attributed to `origin`.
    On failure its partial registrations are rolled back."""
    if origin in state.loaded:
        return
    before = dict(state.registry.entries)
    sections_before = dict(state.sections)
    try:
        state.manager.register(module, name=origin)
    except Exception as exc:  # e.g. a hookimpl with an unknown hook name or bad signature
        _fail(state, origin, exc, strict)
        return
    state.registry.current_origin = origin
    try:
        if hasattr(module, "lmzoo_register"):
            module.lmzoo_register(registry=state.registry)
        if hasattr(module, "lmzoo_recipe_sections"):
            for key, model in (module.lmzoo_recipe_sections() or {}).items():
                if key in state.sections:
                    raise RegistryError(f"recipe section {key!r} is declared twice (again by {origin})")
                state.sections[key] = model
    except Exception as exc:
        state.registry.entries = before
        state.sections = sections_before
        state.manager.unregister(module)
        _fail(state, origin, exc, strict)
        return
    finally:
        state.registry.current_origin = "<unknown>"
    state.loaded[origin] = module


def _load_entry_points(state: PluginState, strict: bool) -> None:
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name)):
        dist = ep.dist.name if ep.dist else "?"
        origin = f"{dist}:{ep.name}"
        try:
            module = ep.load()
        except Exception as exc:
            _fail(state, origin, exc, strict)
            continue
        _register_module(state, module, origin, strict)


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
        try:
            if not path.is_file():
                raise FileNotFoundError(f"plugin file {p!r} not found (looked at {path})")
            module = _import_file(path)
        except Exception as exc:
            _fail(state, origin, exc, strict)
            continue
        _register_module(state, module, origin, strict)
    return origins


def get_state(strict: bool | None = None) -> PluginState:
    """The process-wide plugin manager and registry, loaded on first use."""
    global _state
    if _state is None:
        strict = _strict(strict)
        pm = pluggy.PluginManager("lmzoo")
        pm.add_hookspecs(hookspecs)
        _state = PluginState(manager=pm, registry=Registry())
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


def hook():
    return get_state().manager.hook
