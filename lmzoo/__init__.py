"""lmzoo: a plugin-based, config-declared model zoo for small decoder-only language models."""
from __future__ import annotations

from .hookspecs import hookimpl
from .registry import component

__version__ = "0.1.0"


def components(kind: str | None = None, pattern: str | None = None):
    """Registered components (frozen `Entry` records), optionally of one kind and matching a glob."""
    from .hooks import get_registry

    return get_registry().list(kind, pattern)


def create(kind: str, name: str, /, **kwargs):
    """Build a registered component: `lmzoo.create("position", "rope", theta=1e4, head_dim=32, ...)`.
    Keywords that are the component's params are validated; those the kind documents as build
    context (e.g. an optimizer's `params`) are passed on; any other keyword is an error."""
    from .hooks import get_registry

    reg = get_registry()
    own = ("params", "context")  # build-context names that are also create()'s own arguments
    context = {k: kwargs.pop(k) for k in own if k in kwargs and kind in reg.kinds and k in reg.kinds[kind].context}
    return reg.create(kind, name, context=context, **kwargs)


def load_recipe(path, overrides=(), variant: str | None = None):
    """Load, merge and validate a recipe. Returns the validated `Recipe` (the base run);
    `variant` picks one ablation variant instead."""
    from .recipe import load_recipe as _load

    return _load(path, overrides=overrides, variant=variant)


def build_model(spec, eos_id=None):
    """Assemble the decoder-only model from a `ModelSpec` (or a recipe's `model` section);
    `eos_id`, the tokenizer's end-of-document token, is needed for document masking."""
    from .model import build_model as _build

    return _build(spec, eos_id=eos_id)


__all__ = ["hookimpl", "component", "components", "create", "load_recipe", "build_model", "__version__"]
