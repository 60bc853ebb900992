"""Component registries: one per kind, each entry a small frozen record.

An entry knows its name, a one-line summary, its docstring, its parameters as a
pydantic model, its factory and the plugin that registered it. `create` validates
params against that model and calls the factory with the params plus the build
context the caller supplies (e.g. `d_model` for a norm).
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, ValidationError

# Kinds and the build context each factory receives besides its own params.
KINDS: dict[str, str] = {
    "tokenizer": "factory(**params) -> Tokenizer (encode/decode/vocab_size; train(texts) when trainable)",
    "position": "factory(**params, d_model, n_heads, head_dim, max_seq_len) -> PositionEncoding module",
    "attention": "factory(**params, d_model, n_heads, n_kv_heads, position) -> attention module",
    "norm": "factory(**params, d_model) -> norm module with a `weight`",
    "ffn": "factory(**params, d_model, d_ff) -> feed-forward module",
    "optimizer": "factory(**params, params: iterable of (name, tensor)) -> torch.optim.Optimizer",
    "lr_schedule": "factory(**params, max_lr, total_steps) -> callable step -> lr",
    "data_source": "factory(**params) -> DataSource (documents(split) -> iterator of str, fingerprint())",
    "data_filter": "factory(**params) -> filter (a pure function of one document, or a two-pass stage)",
    "alignment_loss": "factory(**params) -> callable(policy/ref chosen/rejected log-probs, lengths) -> (loss, metrics)",
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
    doc: str
    params: type[BaseModel]
    factory: Callable[..., Any]
    origin: str  # the plugin that registered it: a distribution, module or file

    def as_row(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "summary": self.summary, "plugin": self.origin}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


@dataclass
class Registry:
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=lambda: dict(KINDS))
    current_origin: str = "<unknown>"  # set by the plugin loader while a plugin registers

    def add_kind(self, kind: str, contract: str) -> None:
        """Declare a new component kind (for plugins that bring a family of their own)."""
        self.kinds.setdefault(kind, contract)

    def add(
        self,
        kind: str,
        name: str,
        *,
        factory: Callable[..., Any],
        params: type[BaseModel] | None = None,
        summary: str | None = None,
        doc: str | None = None,
    ) -> Entry:
        if kind not in self.kinds:
            raise RegistryError(
                f"unknown component kind {kind!r}{did_you_mean(kind, self.kinds)}; "
                f"known kinds: {', '.join(sorted(self.kinds))} (declare a new one with registry.add_kind)"
            )
        doc = inspect.cleandoc(doc or inspect.getdoc(factory) or "")
        summary = summary or (doc.splitlines()[0] if doc else name)
        if params is None:
            params = NoParams
        if (kind, name) in self.entries:
            old = self.entries[(kind, name)]
            raise RegistryError(
                f"duplicate component {kind}/{name}: registered by {old.origin} and again by {self.current_origin}; "
                "rename one of them or uninstall one plugin"
            )
        entry = Entry(kind, name, summary, doc, params, factory, self.current_origin)
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
        arguments that are fields of the entry's params model are validated as params; other
        keywords and the `context` dict (for context keys that clash, such as an optimizer's
        `params`) are passed to the factory as build context."""
        entry = self.get(kind, name)
        fields = entry.params.model_fields
        raw = params.model_dump() if isinstance(params, BaseModel) else dict(params or {})
        raw.pop("name", None)
        context = dict(context or {})
        for k, v in kwargs.items():
            (raw if k in fields else context)[k] = v
        try:
            validated = entry.params.model_validate(raw)
        except ValidationError as exc:
            msgs = "; ".join(
                f"{kind}.{name}.{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
                for err in exc.errors()
            )
            raise RegistryError(msgs) from None
        values = {k: getattr(validated, k) for k in fields}
        return entry.factory(**values, **context)
