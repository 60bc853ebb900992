"""Recipes: YAML -> merged dict -> overrides -> variant expansion -> validated, typed `Recipe`.

The schema is static: its classes are the one home of every default (`recipe.train.optimizer.lr`).
A component field holds `{name: ..., **params}`; once the structure validates, each component is
resolved against the registry of its kind into that component's params model, so one mistake
gives one error with its YAML path, the value and the closest valid names. Plugins add sections
(`align:`, `sweep:`) through `lmzoo_recipe_sections`; their components resolve the same way.
"""
from __future__ import annotations

import copy
import itertools
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from .hooks import get_state, load_plugin_files
from .registry import RegistryError, did_you_mean


class RecipeError(Exception):
    """A recipe that cannot be used; `errors` holds one line per problem."""

    def __init__(self, errors: list[str] | str, source: str | None = None):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.source = source
        head = f"invalid recipe {source}:\n" if source else "invalid recipe:\n"
        super().__init__(head + "\n".join("  " + e for e in self.errors))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ============================================================================ components

class ComponentSpec(BaseModel):
    """A component: `name` picks a registered component of the field's kind; the other keys are
    its parameters (validated against that component's params model)."""

    model_config = ConfigDict(extra="allow")
    kind: ClassVar[str] = ""
    name: str = Field(description="the registered component's name (`lmzoo list KIND`)")


# one class per component kind (a plugin section declares its own kinds the same way)
class TokenizerSpec(ComponentSpec): kind: ClassVar[str] = "tokenizer"  # noqa: E701
class DataSourceSpec(ComponentSpec): kind: ClassVar[str] = "data_source"  # noqa: E701
class DataFilterSpec(ComponentSpec): kind: ClassVar[str] = "data_filter"  # noqa: E701
class PositionSpec(ComponentSpec): kind: ClassVar[str] = "position"  # noqa: E701
class AttentionSpec(ComponentSpec): kind: ClassVar[str] = "attention"  # noqa: E701
class NormSpec(ComponentSpec): kind: ClassVar[str] = "norm"  # noqa: E701
class FFNSpec(ComponentSpec): kind: ClassVar[str] = "ffn"  # noqa: E701
class ScheduleSpec(ComponentSpec): kind: ClassVar[str] = "lr_schedule"  # noqa: E701
class LoggerSpec(ComponentSpec): kind: ClassVar[str] = "logger"  # noqa: E701


class OptimizerSpec(ComponentSpec):
    kind: ClassVar[str] = "optimizer"
    lr: float = Field(1e-3, gt=0, description="peak learning rate (the schedule's max_lr)")


def component(spec: type[ComponentSpec], default: str, description: str):
    return Field(default_factory=lambda: spec(name=default), description=description)


_RESOLVED: dict[tuple, type[BaseModel]] = {}


def resolved_model(spec: type[ComponentSpec], entry) -> type[BaseModel]:
    """The entry's params model with a `name` literal, under the field's spec class."""
    key = (spec, entry.kind, entry.name, entry.params, entry.origin)
    if key not in _RESOLVED:
        ns = {"__annotations__": {"name": Literal[entry.name]},
              "name": Field(entry.name, description=f"the {entry.kind} component: {entry.summary}"),
              "model_config": ConfigDict(extra="forbid"), "__module__": __name__, "__doc__": entry.summary}
        _RESOLVED[key] = type(f"{entry.kind}:{entry.name}", (entry.params, spec), ns)
    return _RESOLVED[key]


# ============================================================================ the static schema

class DataSpec(Section):
    source: SerializeAsAny[DataSourceSpec] = component(DataSourceSpec, "synthetic", "where the text comes from")
    tokenizer: SerializeAsAny[TokenizerSpec] = component(TokenizerSpec, "byte", "the tokenizer component")
    context: int = Field(128, ge=2, description="training context length in tokens")
    filters: list[SerializeAsAny[DataFilterSpec]] = Field(
        default_factory=list, description="data filters applied to the training documents, in order")


class ModelSpec(Section):
    vocab_size: Optional[int] = Field(None, ge=2, description="None: taken from the tokenizer")
    d_model: int = Field(128, ge=1, description="residual stream width")
    n_layers: int = Field(4, ge=1, description="number of transformer blocks")
    n_heads: int = Field(4, ge=1, description="attention heads")
    n_kv_heads: Optional[int] = Field(None, ge=1, description="key/value heads (GQA/MQA); None: n_heads")
    d_ff: int = Field(344, ge=1, description="feed-forward hidden width")
    max_seq_len: int = Field(4096, ge=1, description="longest sequence the model accepts (learned positions, caches)")
    position: SerializeAsAny[PositionSpec] = component(PositionSpec, "rope", "the position component")
    attention: SerializeAsAny[AttentionSpec] = component(AttentionSpec, "causal", "the attention component")
    norm: SerializeAsAny[NormSpec] = component(NormSpec, "rmsnorm", "the norm component")
    norm_placement: Literal["pre", "post"] = Field("pre", description="pre-norm or post-norm blocks")
    ffn: SerializeAsAny[FFNSpec] = component(FFNSpec, "swiglu", "the ffn component")
    tie_embeddings: bool = Field(False, description="share token_embeddings and lm_head weights")
    kernels: Literal["torch", "scratch"] = Field("torch", description=(
        "torch: torch's fused operators; scratch: the from-scratch softmax (attention, computed by the naive kernel), "
        "feed-forward activations, training loss and gradient clipping of lmzoo.plugins.kernels"))

    @model_validator(mode="after")
    def _heads(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={kv}")
        return self


class Budget(Section):
    steps: Optional[int] = Field(None, ge=1, description="optimizer steps")
    tokens: Optional[int] = Field(None, ge=1, description="training tokens (steps = tokens / tokens per step)")
    flops: Optional[float] = Field(None, gt=0, description="training FLOPs (steps from the model's FLOPs per token)")
    seconds: Optional[float] = Field(None, gt=0, description="wall-clock seconds of training steps: alone, the lr "
                                                             "schedule runs on elapsed time; with steps/tokens/flops, "
                                                             "a cap (whichever comes first)")

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("steps", "tokens", "flops") if getattr(self, k) is not None]
        if len(given) > 1 or (not given and self.seconds is None):
            raise ValueError(f"give exactly one of steps, tokens or flops, optionally with seconds "
                             f"(got {', '.join(given) or 'none'})")
        return self


class StopAt(Section):
    val_loss: Optional[float] = Field(None, description="stop once a validation loss is at or below this")


class TrainSpec(Section):
    optimizer: SerializeAsAny[OptimizerSpec] = component(OptimizerSpec, "adamw", "the optimizer component")
    lr_schedule: SerializeAsAny[ScheduleSpec] = component(ScheduleSpec, "cosine", "the lr_schedule component")
    batch_size: int = Field(32, ge=1, description="sequences per optimizer step per device (before accumulation)")
    accumulate: int = Field(1, ge=1, description="gradient accumulation steps")
    budget: Budget = Field(default_factory=lambda: Budget(steps=200), description="compute budget")
    stop_at: StopAt = Field(default_factory=StopAt, description="targets that end training early")
    grad_clip: Optional[float] = Field(1.0, gt=0, description="max global gradient norm; None: no clipping")
    val_every: int = Field(100, ge=1, description="validate every N optimizer steps")
    val_batches: int = Field(8, ge=1, description="validation batches per evaluation")
    checkpoint_activations: Literal["none", "all", "every_other", "attention"] = Field(
        "none", description="activation checkpointing per block")
    compile: bool = Field(False, description="torch.compile the model")
    log_every: int = Field(10, ge=1, description="log training metrics every N steps")


class TrainerSpec(Section):
    accelerator: str = Field("auto", description="auto, cpu, gpu, ...")
    devices: Union[int, str] = Field(1, description="devices per node")
    num_nodes: int = Field(1, ge=1)
    strategy: str = Field("auto", description="auto, ddp, ddp_spawn, fsdp")
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = Field("32-true")
    deterministic: bool = Field(False, description="ask torch for deterministic kernels")
    loggers: list[SerializeAsAny[LoggerSpec]] = Field(
        default_factory=list, description="experiment trackers besides metrics.csv (`lmzoo list logger`)")


class EvalSpec(Section):
    contexts: list[int] = Field(default_factory=list, description="context lengths for the length-extrapolation "
                                                                  "evaluation")
    batches: int = Field(8, ge=1, description="evaluation batches per context length")
    full_val: bool = Field(True, description="final val_loss/val_bpb over every window of the validation split (the "
                                             "same text whatever the tokenizer); false: train.val_batches batches")


class AblationSpec(Section):
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict, description="variant name -> {dotted.path: "
                                                                                  "value} overrides")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted.path -> values (cartesian product)")
    seeds: list[int] = Field(default_factory=list, description="run every variant with each seed")
    fair: bool = Field(True, description="forbid variants that change data.source, seed or train.budget")


class Recipe(Section):
    name: str = Field("recipe", description="study name (names the output directory)")
    description: str = Field("", description="what the study asks")
    variant: str = Field("base", description="the ablation variant this run is (set by expansion)")
    seed: int = Field(0, description="global seed: init, data order, sampling")
    plugins: list[str] = Field(default_factory=list, description="plugin files to load (relative to the recipe)")
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    ablation: AblationSpec = Field(default_factory=AblationSpec)
    quick: dict[str, Any] = Field(default_factory=dict, description="overrides applied by --quick")

    @model_validator(mode="after")
    def _context_fits(self):
        if self.data.context > self.model.max_seq_len:
            raise ValueError(f"data.context={self.data.context} is longer than model.max_seq_len="
                             f"{self.model.max_seq_len}; raise model.max_seq_len or shorten data.context")
        return self


_MODELS: dict[tuple, type[Recipe]] = {}


def recipe_model() -> type[Recipe]:
    """`Recipe` plus the top-level sections that loaded plugins declare (each None when absent)."""
    sections = get_state().sections
    key = tuple(sorted((k, id(v)) for k, v in sections.items()))
    if key not in _MODELS:
        from pydantic import create_model

        extra = {k: (Optional[m], Field(None, description=(m.__doc__ or k).strip().splitlines()[0]))
                 for k, m in sections.items()}
        _MODELS[key] = create_model("Recipe", __base__=Recipe, **extra) if extra else Recipe
    return _MODELS[key]


# ============================================================================ validation

def _resolve(spec: ComponentSpec, path: str, errors: list[str]) -> ComponentSpec | None:
    registry = get_state().registry
    kind = type(spec).kind
    if type(spec).__name__.startswith(f"{kind}:"):  # already resolved
        return spec
    try:
        entry = registry.get(kind, spec.name)
    except RegistryError:
        names = registry.names(kind)
        errors.append(f"{path}.name: unknown {kind} {spec.name!r}{did_you_mean(spec.name, names)}; "
                      f"available: {', '.join(names) or 'none'}")
        return None
    model = resolved_model(type(spec), entry)
    try:  # only what was given: the component's own defaults beat the spec class's (an optimizer's lr)
        return model.model_validate(spec.model_dump(exclude_unset=True))
    except ValidationError as exc:
        errors.extend(format_errors(exc, model, prefix=path + "."))
        return None


def resolve_components(section: BaseModel, path: str = "", errors: list[str] | None = None) -> list[str]:
    """Resolve every component field (at any depth) against its registry, in place. Returns errors."""
    errors = [] if errors is None else errors
    for name in type(section).model_fields:
        value = getattr(section, name)
        where = f"{path}{name}"
        if isinstance(value, ComponentSpec):
            new = _resolve(value, where, errors)
            if new is not None:
                setattr(section, name, new)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, ComponentSpec):
                    new = _resolve(item, f"{where}[{i}]", errors)
                    if new is not None:
                        value[i] = new
                elif isinstance(item, BaseModel):
                    resolve_components(item, f"{where}[{i}].", errors)
        elif isinstance(value, BaseModel):
            resolve_components(value, where + ".", errors)
    return errors


def validate(doc: dict, source: str | None = None, prefix: str = "") -> Recipe:
    """A document -> a typed Recipe with every component resolved, or RecipeError."""
    model = recipe_model()
    try:
        recipe = model.model_validate(doc)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, model, prefix=prefix, top=True), source) from None
    errors = resolve_components(recipe)
    if errors:
        raise RecipeError([prefix + e for e in errors], source)
    return recipe


def _types(ann) -> list:  # an annotation and every type nested in it
    args = typing.get_args(ann)
    return [ann] + [t for a in args for t in _types(a)] if args else [ann]


# ============================================================================ error messages

def _model_at(model: type[BaseModel], loc: tuple) -> tuple[list[str], Any]:
    """A pydantic error location as YAML path parts, and the type found at its end."""
    parts: list[str] = []
    cur: Any = model
    for elem in loc:
        cur = next((t for t in _types(cur) if isinstance(t, type) and issubclass(t, BaseModel)), cur)
        if isinstance(elem, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{elem}]"]
            args = [a for a in _types(cur)[1:] if a is not type(None)]
            cur = args[0] if args else None
        elif isinstance(cur, type) and issubclass(cur, BaseModel):
            parts.append(str(elem))
            cur = cur.model_fields[elem].annotation if elem in cur.model_fields else None
        else:
            if str(elem).startswith(("function-", "json-or-python", "tagged-union")):
                continue
            parts.append(str(elem))
            args = typing.get_args(cur)
            cur = args[-1] if args else None
    return parts, cur


def format_errors(exc: ValidationError, model: type[BaseModel], prefix: str = "", top: bool = False) -> list[str]:
    out = []
    for err in exc.errors():
        loc, kind = tuple(err["loc"]), err["type"]
        parts, _ = _model_at(model, loc)
        path = ".".join(parts)
        if kind == "extra_forbidden":
            _, parent = _model_at(model, loc[:-1])
            parent = next((t for t in _types(parent) if isinstance(t, type) and issubclass(t, BaseModel)), None)
            choices = [f for f in parent.model_fields] if parent else []
            msg = f"unknown key {str(loc[-1])!r}{did_you_mean(loc[-1], choices)}"
            if choices:
                msg += f"; valid keys: {', '.join(choices)}"
        elif kind == "missing" and loc and loc[-1] == "name":
            _, parent = _model_at(model, loc[:-1])
            spec = next((t for t in _types(parent) if isinstance(t, type) and issubclass(t, ComponentSpec)), None)
            ckind = spec.kind if spec else "component"
            msg = (f"missing 'name': say which {ckind} to use, one of: "
                   f"{', '.join(get_state().registry.names(ckind))}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and kind != "missing" and not isinstance(err["input"], dict):
                text = repr(err["input"])
                msg += f" (got {text if len(text) <= 80 else text[:77] + '...'})"
        out.append(f"{prefix}{path or ('<recipe>' if top else '<component>')}: {msg}")
    return out


# ============================================================================ loading and merging

class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (YAML would keep the last)."""


def _no_duplicates(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}); keep one of them",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise RecipeError("the recipe is not UTF-8 text; save it as UTF-8", str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"YAML syntax error{where}: {getattr(exc, 'problem', exc)}", str(path)) from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(data).__name__}", str(path))
    return data


def _is_component(d: Any) -> bool:
    return isinstance(d, dict) and "name" in d


EXCLUSIVE_KEYS = {"steps", "tokens", "flops"}  # a budget is one of them: setting one drops the others


def _drop_exclusive(d: dict, key: str) -> None:
    if key in EXCLUSIVE_KEYS:
        for other in EXCLUSIVE_KEYS - {key}:
            d.pop(other, None)


def deep_merge(base: dict, over: dict) -> dict:
    """Merge `over` into a copy of `base`. A component whose `name` changes is replaced
    wholesale, so no stale parameter of the old component survives; a budget given as tokens
    replaces one given as steps."""
    out = copy.deepcopy(base)
    for k in over:
        if over.get(k) is not None:
            _drop_exclusive(out, k)
    for k, v in over.items():
        if isinstance(v, str) and _is_component(out.get(k)):  # a component given by its name alone
            v = {"name": v}
        if (isinstance(v, dict) and isinstance(out.get(k), dict)
                and not (_is_component(v) and _is_component(out[k]) and v["name"] != out[k]["name"])):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a recipe and the chain of `base:` recipes it extends, deep-merged (plugin lists joined)."""
    path = Path(path).resolve()
    if path in _seen:
        raise RecipeError(f"'base:' cycle: {' -> '.join(map(str, _seen + (path,)))}")
    doc = _read_yaml(path)
    if "plugins" in doc:  # plugin paths are relative to the recipe that names them
        if not isinstance(doc["plugins"], list):
            raise RecipeError(f"plugins: expected a list of plugin file paths, got {doc['plugins']!r}", str(path))
        doc["plugins"] = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p
                          for p in map(str, doc["plugins"])]
    base = doc.pop("base", None)
    if base is None:
        return doc
    merged: dict = {}
    for b in base if isinstance(base, list) else [base]:
        bpath = (path.parent / str(b)).resolve()
        if not bpath.is_file():
            raise RecipeError(f"base: {b!r} not found (looked at {bpath})", str(path))
        parent = load_raw(bpath, _seen + (path,))
        plugins = merged.get("plugins", []) + parent.get("plugins", [])
        merged = deep_merge(merged, parent)
        if plugins:
            merged["plugins"] = plugins
    plugins = merged.get("plugins", []) + doc.get("plugins", [])
    merged = deep_merge(merged, doc)
    if plugins:
        merged["plugins"] = list(dict.fromkeys(plugins))
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise RecipeError(f"override {text!r} is not key.path=value (e.g. model.d_model=256)")
    key = key.strip()
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def flatten_overrides(overrides: dict, prefix: str = "") -> dict[str, Any]:
    """`{train: {budget: {steps: 40}}}` and `{train.budget.steps: 40}` both -> `{"train.budget.steps": 40}`;
    a mapping with a `name` is a component and stays whole (it replaces the component)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not _is_component(value):
            out.update(flatten_overrides(value, path + "."))
        else:
            out[path] = value
    return out


def set_path(doc: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict. Setting a component to a bare name, or changing its
    `name`, replaces the component wholesale."""
    keys, cur = dotted.split("."), doc
    for k in keys[:-1]:
        if cur.get(k) is None:
            cur[k] = {}
        nxt = cur[k]
        if not isinstance(nxt, dict):
            raise RecipeError(f"override {dotted}: {k!r} holds {nxt!r}, not a section")
        cur = nxt
    last = keys[-1]
    if last == "name" and len(keys) > 1 and cur.get("name") not in (None, value):
        cur.clear()
        cur["name"] = value
        return
    if isinstance(value, str) and _is_component(cur.get(last)):
        value = {"name": value}
    if value is not None:
        _drop_exclusive(cur, last)
    cur[last] = copy.deepcopy(value)


def apply_overrides(doc: dict, overrides) -> dict:
    doc = copy.deepcopy(doc)
    items = flatten_overrides(overrides).items() if isinstance(overrides, dict) else \
        (parse_override(o) for o in overrides)
    for key, value in items:
        set_path(doc, key, value)
    return doc


# ============================================================================ expansion

@dataclass
class Run:
    """One training run of a study: a variant at a seed, with its validated recipe."""

    variant: str
    seed: int
    recipe: Recipe

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"


_UNFAIR = ("seed", "data.source", "train.budget")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,=+-]*$")


def check_name(name: str, what: str) -> str | None:
    """An error if `name` cannot be a directory name inside the study directory."""
    if not isinstance(name, str) or not _SAFE.match(name) or name in (".", "..") or len(name) > 128:
        return (f"{what} {name!r} cannot name a directory: use letters, digits and . _ , = + - (not starting with "
                "a dot or dash, no slashes, at most 128 characters)")
    return None


def _variants(doc: dict) -> list[tuple[str, dict]]:
    abl = doc.get("ablation") or {}
    variants, grid = abl.get("variants") or {}, abl.get("grid") or {}
    if not isinstance(variants, dict) or not isinstance(grid, dict):
        raise RecipeError("ablation.variants and ablation.grid are mappings")
    for name, over in variants.items():
        if over is not None and not isinstance(over, dict):
            raise RecipeError(f"ablation.variants.{name}: expected a mapping of overrides, got {over!r}")
    base = [(str(n), flatten_overrides(o or {})) for n, o in variants.items()] or [("base", {})]
    if not grid:
        return base
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise RecipeError(f"ablation.grid.{k}: expected a non-empty list of values, got {grid[k]!r}")
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo))
        for n, o in base:
            name = label if n == "base" and not variants else f"{n},{label}"
            out.append((name, {**o, **dict(zip(keys, combo))}))
    return out


def run_dir_name(variant: str, seed: int, n_seeds: int) -> str:
    """A run's directory inside its study: `variant` or `variant/seedN`."""
    return f"{variant}/seed{seed}" if n_seeds > 1 else variant


def expand(doc: dict, source: str | None = None) -> list[Run]:
    """Expand an ablation into validated runs: every (variant, seed)."""
    abl = doc.get("ablation") or {}
    fair = abl.get("fair", True) if isinstance(abl, dict) else True
    seeds = (abl.get("seeds") if isinstance(abl, dict) else None) or [doc.get("seed", 0)]
    runs, errors, dirs = [], [], {}
    variants = _variants(doc)
    for name, overrides in variants:
        problem = check_name(name, "variant")
        if problem:
            errors.append(f"ablation.variants.{name}: {problem}")
            continue
        key = name.lower()  # two names one case-insensitive file system would merge
        if key in dirs:
            errors.append(f"ablation.variants: {dirs[key]!r} and {name!r} would share the directory {name!r}; "
                          "rename one")
            continue
        dirs[key] = name
        if fair:
            errors.extend(
                f"ablation.variants.{name}.{k}: a variant may not change {k} (all variants share data, seeds and "
                "compute budget so the comparison is fair); set ablation.fair: false to allow it"
                for k in overrides if any(k == u or k.startswith(u + ".") or u.startswith(k + ".") for u in _UNFAIR))
        try:
            vdoc = apply_overrides(doc, overrides)
        except RecipeError as exc:
            errors.extend(f"ablation.variants.{name}: {e}" for e in exc.errors)
            continue
        vdoc.pop("ablation", None)
        vdoc.pop("quick", None)
        for seed in seeds:
            try:
                recipe = validate(dict(vdoc, variant=name, seed=seed),
                                  prefix=f"[variant {name}] " if name != "base" else "")
            except RecipeError as exc:
                errors.extend(e for e in exc.errors if e not in errors)
                continue
            runs.append(Run(name, seed, recipe))
    if len(set(seeds)) != len(seeds):
        errors.append(f"ablation.seeds: {seeds} repeats a seed; two runs would share a directory")
    if errors:
        raise RecipeError(errors, source)
    return runs


def _defaults(model: type[BaseModel]) -> dict:
    """A section's defaults with its components resolved (their own default parameters)."""
    section = model()
    resolve_components(section)
    return json.loads(section.model_dump_json())


def with_defaults(doc: dict) -> dict:
    """Fill the document with the schema's defaults (kernel sections, and plugin sections the
    document has), so an override such as `train.optimizer.lr=1e-3` or `align.optimizer.lr=3e-4`
    lands inside the default component instead of replacing it."""
    defaults = _defaults(Recipe)
    for key in ("variant", "seed", "name", "ablation", "quick", "plugins", "description"):
        defaults.pop(key, None)
    for key, model in get_state().sections.items():
        if isinstance(doc.get(key), dict):  # its component fields only: the section validates the rest
            try:
                defaults[key] = {k: v for k, v in _defaults(model).items() if _is_component(v)}
            except ValidationError:  # a section with required fields: validation will say which
                pass
    return deep_merge(defaults, doc)


def prepare(path: str | Path, overrides=(), quick: bool = False) -> tuple[dict, Recipe]:
    """Load a recipe, its bases and plugins, apply --quick and overrides (before plugins: an
    override may add one), validate. Returns (merged doc, Recipe)."""
    path = Path(path)
    doc = load_raw(path)
    if quick:
        doc = apply_overrides(doc, doc.get("quick") or {})
    doc = apply_overrides(doc, list(overrides))
    plugin_paths = doc.get("plugins") or []
    load_plugin_files(plugin_paths, base_dir=path.parent)
    wanted = {str(Path(x).resolve()) for x in plugin_paths}
    problems = [p for p in get_state().problems if p.plugin in wanted]
    if problems:
        raise RecipeError([f"plugins: {p}" for p in problems], str(path))
    doc = with_defaults(doc)
    name_problem = check_name(doc.get("name", "recipe"), "name")
    if name_problem:
        raise RecipeError(f"name: {name_problem}", str(path))
    return doc, validate(doc, str(path))


def load_runs(path: str | Path, overrides=(), quick: bool = False) -> tuple[Recipe, list[Run]]:
    doc, recipe = prepare(path, overrides, quick)
    return recipe, expand(doc, str(path))


def load_recipe(path: str | Path, overrides=(), variant: str | None = None, quick: bool = False) -> Recipe:
    """The validated recipe; with `variant`, that variant's (first seed's) recipe."""
    recipe, runs = load_runs(path, overrides, quick)
    if variant is None:
        return recipe
    for run in runs:
        if run.variant == variant:
            return run.recipe
    raise RecipeError(f"no variant {variant!r}{did_you_mean(variant, [r.variant for r in runs])}; "
                      f"variants: {', '.join(dict.fromkeys(r.variant for r in runs))}", str(path))


def to_dict(recipe: BaseModel) -> dict:
    """The resolved recipe as plain data (JSON types), every default visible."""
    return json.loads(recipe.model_dump_json())


def to_yaml(recipe: BaseModel) -> str:  # every default visible
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, default_flow_style=None, width=100)
