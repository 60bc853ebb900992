"""Export mappings: how lmzoo's components are written in a transformers architecture.

An export needs two kinds of declarations, both collected from every plugin through the
`lmzoo_export_mappings` hook (the built-ins in `architectures.py` use the same hook):

- `Architecture`: one transformers model class (Llama, GPT-2, ...): where each part of a
  block lives in its checkpoint (`slots`), the config entries for the sizes, and what it
  cannot express (post-norm, grouped KV heads, untied embeddings).
- `ComponentMapping`: one lmzoo component (kind + name) in one architecture: the config
  entries its parameters become, its tensors renamed (and transformed) into the
  architecture's names, and the way back for `lmzoo import-hf`.

An architecture is chosen when every component of the model has a mapping for it and the
architecture accepts the model's shape. Otherwise the export fails with one error naming
the component (and its parameter) that no architecture takes.

Tensors go through mappings as {local name: tensor} dicts: local to the lmzoo module
(`q_proj.weight` of an attention module, `weight` of a norm) on one side and to the
architecture's slot prefix (`self_attn.` + `q_proj.weight`) on the other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

KINDS = ("position", "attention", "norm", "ffn")


class Unsupported(ValueError):
    """A component (or a parameter value) the architecture cannot express; the message says why."""


@dataclass
class ModelFacts:
    """What a mapping may need to know about the whole model being exported (or imported)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    max_seq_len: int
    tied: bool
    placement: str
    components: dict[str, tuple[str, dict]]  # kind -> (name, params)
    eos_id: Optional[int] = None
    # set by the position mapping, used by attention mappings: rewrite the rows of a q or k
    # projection (weight, number of heads in it) into the architecture's head layout, and back
    qk: Callable[[Any, int], Any] = field(default=lambda w, n: w)
    qk_back: Callable[[Any, int], Any] = field(default=lambda w, n: w)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


Tensors = dict  # {name: torch.Tensor}


@dataclass(frozen=True)
class Architecture:
    """A transformers decoder architecture lmzoo can write.

    slots: lmzoo part -> checkpoint prefix. Per block: `attention`, `ffn`, `ln1`, `ln2` (with
    `{i}` for the block index); once: `ln_final`, `embed` (the token table's full name),
    `lm_head` (full name) and `position` (a learned table's prefix, when the arch has one).
    config(facts) -> the config.json entries for sizes and tying (a mapping's entries are
    merged in). spec(hf_config) -> lmzoo ModelSpec fields for import (None: no import).
    """

    name: str
    model_type: str  # config.json "model_type"
    hf_class: str  # config.json "architectures"
    slots: dict[str, str]
    config: Callable[[ModelFacts], dict]
    placements: tuple[str, ...] = ("pre",)
    grouped_kv: bool = True  # n_kv_heads < n_heads expressible
    untied: bool = True  # separate lm_head expressible
    tied: bool = True  # lm_head sharing the token table expressible
    spec: Optional[Callable[[dict], dict]] = None
    doc: str = ""

    def check_shape(self, facts: ModelFacts) -> list[str]:
        """Reasons the model's overall shape does not fit (empty when it fits)."""
        why = []
        if facts.placement not in self.placements:
            why.append(f"is {'/'.join(self.placements)}-norm, not model.norm_placement={facts.placement!r}")
        if facts.n_kv_heads != facts.n_heads and not self.grouped_kv:
            why.append(f"has no grouped key/value heads for model.n_kv_heads={facts.n_kv_heads}")
        if facts.tied and not self.tied:
            why.append("has a separate lm_head, not model.tie_embeddings=true")
        if not facts.tied and not self.untied:
            why.append("always ties lm_head to the embeddings, not model.tie_embeddings=false")
        return why


def _identity(tensors: Tensors, facts: ModelFacts) -> Tensors:
    return dict(tensors)


@dataclass(frozen=True)
class ComponentMapping:
    """One lmzoo component (`kind`, `name`) written in one architecture.

    config(params, facts) -> config.json entries; raise `Unsupported("why")` for parameter
    values the architecture cannot express. export(tensors, facts) -> the component's tensors
    under the architecture's names (relative to the slot prefix); import_(tensors, facts) is
    its inverse. from_config(hf_config) -> the lmzoo params this checkpoint's config means,
    or None when the config is not this component (import only). A position mapping may set
    `facts.qk`/`facts.qk_back` in `prepare(params, facts)` (e.g. RoPE's pair layout), which
    attention mappings apply to their q and k rows.
    """

    kind: str
    name: str
    architecture: str
    config: Callable[[dict, ModelFacts], dict] = lambda params, facts: {}
    export: Callable[[Tensors, ModelFacts], Tensors] = _identity
    import_: Callable[[Tensors, ModelFacts], Tensors] = _identity
    from_config: Optional[Callable[[dict], Optional[dict]]] = None
    prepare: Optional[Callable[[dict, ModelFacts], None]] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"export mapping for {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


@dataclass
class Mappings:
    architectures: dict[str, Architecture]
    components: dict[tuple[str, str, str], ComponentMapping]  # (kind, name, architecture)

    def for_component(self, kind: str, name: str) -> list[str]:
        return [a for (k, n, a) in self.components if k == kind and n == name]


def collect() -> Mappings:
    """Every plugin's export mappings (through the `lmzoo_export_mappings` hook)."""
    from lmzoo.hooks import hook

    archs: dict[str, Architecture] = {}
    comps: dict[tuple[str, str, str], ComponentMapping] = {}
    for result in hook().lmzoo_export_mappings():
        for item in result or ():
            if isinstance(item, Architecture):
                if item.name in archs and archs[item.name] != item:
                    raise ValueError(f"export architecture {item.name!r} is declared twice")
                archs[item.name] = item
            elif isinstance(item, ComponentMapping):
                key = (item.kind, item.name, item.architecture)
                if key in comps and comps[key] != item:
                    raise ValueError(f"export mapping for {item.kind} {item.name!r} in {item.architecture} "
                                     "is declared twice")
                comps[key] = item
            else:
                raise TypeError(f"lmzoo_export_mappings returned {item!r}; expected Architecture or ComponentMapping "
                                "objects from lmzoo.plugins.interop.mapping")
    return Mappings(archs, comps)


def choose(facts: ModelFacts, mappings: Mappings) -> tuple[Architecture, dict[str, ComponentMapping], dict]:
    """The first architecture that expresses every component and the model's shape:
    (architecture, {kind: mapping}, config entries). Raises Unsupported naming the component
    (or model field) that stands in the way of the closest architecture."""
    best: tuple[int, list[str]] | None = None
    for arch in mappings.architectures.values():
        why = arch.check_shape(facts)
        chosen, config = {}, {}
        for kind in KINDS:
            name, params = facts.components[kind]
            m = mappings.components.get((kind, name, arch.name))
            if m is None:
                why.append(f"has no {kind} {name!r}")
                continue
            try:
                config.update(m.config(params, facts))
            except Unsupported as exc:
                why.append(f"takes {kind} {name!r} but not {exc}")
            chosen[kind] = m
        if not why:
            return arch, chosen, config
        if best is None or len(why) < best[0]:
            best = (len(why), [f"{arch.name} ({', '.join(why)})"])
        elif len(why) == best[0]:
            best[1].append(f"{arch.name} ({', '.join(why)})")
    combo = " + ".join(f"{k} {facts.components[k][0]!r}" for k in ("position", "norm", "ffn"))
    nearest = "; ".join(best[1]) if best else "none: no architectures are registered"
    raise Unsupported(f"no transformers architecture expresses {combo} ({facts.placement}-norm); nearest: {nearest}. "
                      "Score it with `lmzoo eval --tasks` instead, or declare an export mapping for the component "
                      "(lmzoo_export_mappings hook)")
