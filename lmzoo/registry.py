"""Component registries: one per kind, each entry a small frozen record.

An entry knows its name, a one-line summary, its docstring, its parameters as a pydantic
model, its factory (a callable, or "module:attribute" imported when first built, so that
listing components never imports torch) and the plugin that registered it. `create`
validates params against that model and calls the factory with the params plus the build
context documented for the kind (e.g. `d_model` for a norm); any other keyword is an error.
"""
from __future__ import annotations

import ast
import difflib
import fnmatch
import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, ValidationError


@dataclass(frozen=True)
class Kind:
    """A component kind: what a factory returns and the build context it receives."""

    contract: str
    context: tuple[str, ...] = ()


# The kernel's kinds. A plugin may declare more with `registry.add_kind`.
KINDS: dict[str, Kind] = {
    "tokenizer": Kind("factory(**params) -> Tokenizer (encode/decode/vocab_size/eos_id/save/load/fingerprint; "
                      "train(texts) when needs_training)"),
    "position": Kind("factory(**params, d_model, n_heads, head_dim, max_seq_len) -> PositionEncoding module",
                     ("d_model", "n_heads", "head_dim", "max_seq_len")),
    "attention": Kind("factory(**params, d_model, n_heads, n_kv_heads, position[, kernels]) -> attention module "
                      "forward(x, positions, cache=None[, documents]); kernels='scratch' is passed only when "
                      "model.kernels asks for it; a module with needs_documents=True gets documents from its own "
                      "documents(idx, positions, eos_id, cache) -> (ids, positions)",
                      ("d_model", "n_heads", "n_kv_heads", "position", "kernels")),
    "norm": Kind("factory(**params, d_model) -> norm module with a `weight`", ("d_model",)),
    "ffn": Kind("factory(**params, d_model, d_ff[, kernels]) -> feed-forward module (kernels='scratch' only when "
                "model.kernels asks for it)", ("d_model", "d_ff", "kernels")),
    "optimizer": Kind("factory(**params, params: iterable of (name, tensor)) -> torch.optim.Optimizer; "
                      "params include `lr`, the peak learning rate", ("params",)),
    "lr_schedule": Kind("factory(**params, max_lr, total_steps) -> callable step -> lr", ("max_lr", "total_steps")),
    "data_source": Kind("factory(**params) -> DataSource (documents(split) -> iterator of str, fingerprint())"),
    "logger": Kind("factory(**params, save_dir, study, run_name, config) -> lightning.pytorch.loggers.Logger",
                   ("save_dir", "study", "run_name", "config")),
    "data_filter": Kind("factory(**params) -> filter (apply(text) -> Decision; or a two-pass dedup stage)"),
}


class NoParams(BaseModel):
    """A component with no parameters."""

    model_config = ConfigDict(extra="forbid")


class RegistryError(Exception):
    """A registration or lookup problem; the message says what and how to fix it."""


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    summary: str
    params: type[BaseModel]
    factory: Callable[..., Any] | str  # a callable, or "package.module:attribute" imported on first use
    origin: str  # the plugin that registered it: a distribution, module or file
    docstring: str | None = None  # given at registration; else the factory's own docstring

    @cached_property
    def doc(self) -> str:
        """The component's documentation: the factory's docstring, read from its source file
        without importing it when the factory was registered by name."""
        if self.docstring is not None:
            return self.docstring
        if not isinstance(self.factory, str):
            return inspect.cleandoc(inspect.getdoc(self.factory) or "")
        return _static_docstring(self.factory)

    def as_row(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "summary": self.summary, "plugin": self.origin}

    def load(self) -> Callable[..., Any]:
        """The factory itself (importing its module when it was given by name)."""
        if not isinstance(self.factory, str):
            return self.factory
        module, _, attr = self.factory.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


def _static_docstring(ref: str) -> str:
    """The docstring of "module:attribute", parsed from the module's source (nothing is executed)."""
    module, _, attr = ref.partition(":")
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(open(spec.origin, encoding="utf-8").read()) if spec and spec.origin else None
    except (ImportError, OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body if tree else ():
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == attr:
            return inspect.cleandoc(ast.get_docstring(node) or "")
    return ""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def component(kind: str, name: str, *, params: type[BaseModel] | None = None, summary: str | None = None):
    """Mark a class or function as a component, beside its definition; the plugin loader
    registers every marked object defined in a plugin module:

        @lmzoo.component("position", "my-alibi", params=Params)
        class MyAlibi(PositionEncoding): ...
    """
    def mark(obj):
        marks = vars(obj).get("__lmzoo_components__", ())  # the object's own marks, not a base class's
        obj.__lmzoo_components__ = (*marks, dict(kind=kind, name=name, params=params, summary=summary))
        return obj
    return mark


@dataclass
class Registry:
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    kinds: dict[str, Kind] = field(default_factory=lambda: dict(KINDS))
    current_origin: str = "<unknown>"  # set by the plugin loader while a plugin registers

    def add_kind(self, kind: str, contract: str, context: Iterable[str] = ()) -> None:
        """Declare a new component kind (for plugins that bring a family of their own)."""
        self.kinds.setdefault(kind, Kind(contract, tuple(context)))

    def add(self, kind: str, name: str, *, factory: Callable[..., Any] | str, params: type[BaseModel] | None = None,
            summary: str | None = None, doc: str | None = None) -> Entry:
        if kind not in self.kinds:
            raise RegistryError(
                f"unknown component kind {kind!r}{did_you_mean(kind, self.kinds)}; "
                f"known kinds: {', '.join(sorted(self.kinds))} (declare a new one with registry.add_kind)"
            )
        docstring = inspect.cleandoc(doc) if doc is not None else None
        if (kind, name) in self.entries:
            old = self.entries[(kind, name)]
            raise RegistryError(
                f"duplicate component {kind}/{name}: registered by {old.origin} and again by {self.current_origin}; "
                "rename one of them or uninstall one plugin"
            )
        entry = Entry(kind, name, summary or "", params or NoParams, factory, self.current_origin, docstring)
        if not summary:  # the first line of the documentation
            entry = replace(entry, summary=entry.doc.splitlines()[0] if entry.doc else name)
        self.entries[(kind, name)] = entry
        return entry

    def get(self, kind: str, name: str) -> Entry:
        if kind not in self.kinds:
            raise RegistryError(f"unknown component kind {kind!r}{did_you_mean(kind, self.kinds)}")
        try:
            return self.entries[(kind, name)]
        except KeyError:
            names = self.names(kind)
            raise RegistryError(
                f"no {kind} named {name!r}{did_you_mean(name, names)}; available: {', '.join(names) or 'none'}"
            ) from None

    def names(self, kind: str) -> list[str]:
        return sorted(n for (k, n) in self.entries if k == kind)

    def list(self, kind: str | None = None, pattern: str | None = None) -> list[Entry]:
        """Entries sorted by kind and name; `pattern` filters names by glob (timm-style)."""
        out = [
            e
            for e in self.entries.values()
            if (kind is None or e.kind == kind) and (pattern is None or fnmatch.fnmatch(e.name, pattern))
        ]
        return sorted(out, key=lambda e: (e.kind, e.name))

    def create(self, kind: str, name: str, /, params: dict | BaseModel | None = None,
               context: dict | None = None, **kwargs: Any) -> Any:
        """Build a component. `params` (a dict or the recipe's component model) and keyword
        arguments that are fields of the entry's params model are validated as params; keywords
        named in the kind's build context (and the `context` dict, for context keys that clash
        with a param, such as an optimizer's `params`) are passed to the factory as context.
        Any other keyword is an error with a did-you-mean."""
        entry = self.get(kind, name)
        fields = entry.params.model_fields
        allowed_context = self.kinds[kind].context
        raw = params.model_dump() if isinstance(params, BaseModel) else dict(params or {})
        raw.pop("name", None)
        context = dict(context or {})
        for k, v in kwargs.items():
            if k in fields:
                raw[k] = v
            elif k in allowed_context:
                context[k] = v
            else:
                choices = list(fields) + list(allowed_context)
                raise RegistryError(
                    f"{kind}.{name}: unknown parameter {k!r}{did_you_mean(k, choices)}; parameters: "
                    f"{', '.join(fields) or 'none'}" + (f"; build context: {', '.join(allowed_context)}"
                                                       if allowed_context else ""))
        try:
            validated = entry.params.model_validate(raw)
        except ValidationError as exc:
            msgs = "; ".join(
                f"{kind}.{name}.{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
                for err in exc.errors()
            )
            raise RegistryError(msgs) from None
        values = {k: getattr(validated, k) for k in fields}
        return entry.load()(**values, **context)
