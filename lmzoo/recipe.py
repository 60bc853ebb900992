"""Recipes: YAML -> merged dict -> overrides -> variant expansion -> validated pydantic `Recipe`.

The schema is built from the registries after plugins load, so each component field is a
union discriminated by `name:` over exactly the registered components of its kind: one
mistake gives one error, with its YAML path, the bad value and the closest valid names.
"""
from __future__ import annotations

import copy
import itertools
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from .hooks import get_state, load_plugin_files
from .registry import Registry, did_you_mean


class RecipeError(Exception):
    """A recipe that cannot be used; `errors` holds one line per problem."""

    def __init__(self, errors: list[str] | str, source: str | None = None):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.source = source
        head = f"invalid recipe {source}:\n" if source else "invalid recipe:\n"
        super().__init__(head + "\n".join("  " + e for e in self.errors))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- component fields

_COMPONENT_MEMBERS: dict[str, dict[str, type[BaseModel]]] = {}


def _component_model(kind: str, entry) -> type[BaseModel]:
    """The entry's params model plus a `name` literal, with unknown keys forbidden."""
    name = entry.name
    ns = {
        "__annotations__": {"name": Literal[name]},
        "name": Field(name, description=f"the {kind} component: {entry.summary}"),
        "model_config": ConfigDict(extra="forbid"),
        "__module__": __name__,
        "__doc__": entry.summary,
    }
    model = type(f"{kind}:{name}", (entry.params,), ns)
    model.__lmzoo_component__ = (kind, name)
    return model


def component_type(registry: Registry, kind: str):
    """The pydantic type of a `{name: ..., **params}` field of this kind."""
    members = {}
    for entry in registry.list(kind):
        members[entry.name] = _component_model(kind, entry)
    _COMPONENT_MEMBERS[kind] = members
    if not members:
        return Annotated[dict, Field(description=f"a {kind} component (none registered)")]
    if len(members) == 1:
        return next(iter(members.values()))
    return Annotated[Union[tuple(members.values())], Field(discriminator="name")]


# ----------------------------------------------------------------------------- schema

_schema_cache: dict[tuple, type[BaseModel]] = {}


def recipe_model(registry: Registry | None = None) -> type[BaseModel]:
    """Build (and cache) the Recipe pydantic model for the current registry contents."""
    state = get_state()
    registry = registry or state.registry
    key = (tuple(sorted(registry.entries)), tuple(sorted(state.sections)))
    if key in _schema_cache:
        return _schema_cache[key]
    C = lambda kind: component_type(registry, kind)  # noqa: E731

    def comp(kind, default):
        t = C(kind)
        return (t, Field(default={"name": default}, validate_default=True, description=f"the {kind} component"))

    DataSpec = create_model(
        "DataSpec",
        __base__=Section,
        source=(C("data_source"), Field(default={"name": "synthetic"}, validate_default=True,
                                       description="where the text comes from")),
        tokenizer=comp("tokenizer", "byte"),
        context=(int, Field(128, ge=2, description="training context length in tokens")),
        filters=(list[C("data_filter")], Field(default_factory=list,
                                               description="data filters applied to the training documents, in order")),
    )
    ModelSpec = create_model(
        "ModelSpec",
        __base__=Section,
        vocab_size=(Optional[int], Field(None, ge=2, description="None: taken from the tokenizer")),
        d_model=(int, Field(128, ge=1, description="residual stream width")),
        n_layers=(int, Field(4, ge=1, description="number of transformer blocks")),
        n_heads=(int, Field(4, ge=1, description="attention heads")),
        n_kv_heads=(Optional[int], Field(None, ge=1, description="key/value heads (GQA/MQA); None: n_heads")),
        d_ff=(int, Field(344, ge=1, description="feed-forward hidden width")),
        max_seq_len=(int, Field(4096, ge=1, description="longest sequence the model accepts (learned positions, caches)")),
        position=comp("position", "rope"),
        attention=comp("attention", "causal"),
        norm=comp("norm", "rmsnorm"),
        norm_placement=(Literal["pre", "post"], Field("pre", description="pre-norm or post-norm blocks")),
        ffn=comp("ffn", "swiglu"),
        tie_embeddings=(bool, Field(False, description="share token_embeddings and lm_head weights")),
        kernels=(Literal["torch", "scratch"], Field("torch", description=(
            "torch: torch's fused operators; scratch: the from-scratch softmax (attention, computed by the naive "
            "kernel), feed-forward activations, training loss and gradient clipping of lmzoo.plugins.kernels"))),
    )

    def _check_model(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={kv}")
        return self

    ModelSpec = create_model("ModelSpec", __base__=ModelSpec,
                             __validators__={"check": model_validator(mode="after")(_check_model)})

    Budget = create_model(
        "Budget",
        __base__=Section,
        steps=(Optional[int], Field(None, ge=1, description="optimizer steps")),
        tokens=(Optional[int], Field(None, ge=1, description="training tokens (steps = tokens / tokens per step)")),
        flops=(Optional[float], Field(None, gt=0, description="training FLOPs (steps from the model's FLOPs per token)")),
    )

    def _one_budget(self):
        set_ = [k for k in ("steps", "tokens", "flops") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"give exactly one of steps, tokens or flops (got {', '.join(set_) or 'none'})")
        return self

    Budget = create_model("Budget", __base__=Budget,
                          __validators__={"one": model_validator(mode="after")(_one_budget)})

    TrainSpec = create_model(
        "TrainSpec",
        __base__=Section,
        optimizer=comp("optimizer", "adamw"),
        lr_schedule=comp("lr_schedule", "cosine"),
        batch_size=(int, Field(32, ge=1, description="sequences per optimizer step per device (before accumulation)")),
        accumulate=(int, Field(1, ge=1, description="gradient accumulation steps")),
        budget=(Budget, Field(default={"steps": 200}, validate_default=True, description="compute budget")),
        grad_clip=(Optional[float], Field(1.0, gt=0, description="max global gradient norm; None: no clipping")),
        val_every=(int, Field(100, ge=1, description="validate every N optimizer steps")),
        val_batches=(int, Field(8, ge=1, description="validation batches per evaluation")),
        checkpoint_activations=(Literal["none", "all", "every_other", "attention"],
                                Field("none", description="activation checkpointing per block")),
        compile=(bool, Field(False, description="torch.compile the model")),
        log_every=(int, Field(10, ge=1, description="log training metrics every N steps")),
    )
    TrainerSpec = create_model(
        "TrainerSpec",
        __base__=Section,
        accelerator=(str, Field("auto", description="auto, cpu, gpu, ...")),
        devices=(Union[int, str], Field(1, description="devices per node")),
        num_nodes=(int, Field(1, ge=1)),
        strategy=(str, Field("auto", description="auto, ddp, ddp_spawn, fsdp")),
        precision=(Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"], Field("32-true")),
        deterministic=(bool, Field(False, description="ask torch for deterministic kernels")),
    )
    EvalSpec = create_model(
        "EvalSpec",
        __base__=Section,
        contexts=(list[int], Field(default_factory=list,
                                   description="context lengths for the length-extrapolation evaluation")),
        batches=(int, Field(8, ge=1, description="evaluation batches per context length")),
        full_val=(bool, Field(True, description="final val_loss/val_bpb over every window of the validation split "
                                                "(the same text whatever the tokenizer); false: train.val_batches "
                                                "batches")),
    )
    AblationSpec = create_model(
        "AblationSpec",
        __base__=Section,
        variants=(dict[str, dict[str, Any]], Field(default_factory=dict,
                                                   description="variant name -> {dotted.path: value} overrides")),
        grid=(dict[str, list[Any]], Field(default_factory=dict, description="dotted.path -> values (cartesian product)")),
        seeds=(list[int], Field(default_factory=list, description="run every variant with each seed")),
        fair=(bool, Field(True, description="forbid variants that change data.source, seed or train.budget")),
    )
    extra_sections = {
        key: (Optional[model], Field(None, description=(model.__doc__ or key).strip().splitlines()[0]))
        for key, model in state.sections.items()
    }
    Recipe = create_model(
        "Recipe",
        __base__=Section,
        name=(str, Field("recipe", description="study name (names the output directory)")),
        description=(str, Field("", description="what the study asks")),
        variant=(str, Field("base", description="the ablation variant this run is (set by expansion)")),
        seed=(int, Field(0, description="global seed: init, data order, sampling")),
        plugins=(list[str], Field(default_factory=list, description="plugin files to load (relative to the recipe)")),
        data=(DataSpec, Field(default_factory=DataSpec)),
        model=(ModelSpec, Field(default_factory=ModelSpec)),
        train=(TrainSpec, Field(default_factory=TrainSpec)),
        trainer=(TrainerSpec, Field(default_factory=TrainerSpec)),
        eval=(EvalSpec, Field(default_factory=EvalSpec)),
        ablation=(AblationSpec, Field(default_factory=AblationSpec)),
        quick=(dict[str, Any], Field(default_factory=dict, description="overrides applied by --quick")),
        **extra_sections,
    )
    _schema_cache.clear()
    _schema_cache[key] = Recipe
    return Recipe


def json_schema() -> dict:
    schema = recipe_model().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lmzoo recipe"
    return schema


# ----------------------------------------------------------------------------- error messages

def _unwrap(ann):
    """Strip Annotated/Optional to the underlying type."""
    while True:
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann = typing.get_args(ann)[0]
        elif origin is Union:
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) == 1:
                ann = args[0]
            else:
                return ann
        else:
            return ann


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], Any]:
    """Turn a pydantic error location into a YAML path (dropping union tags) and return the
    type found at the end of it (a model class for extra-key suggestions)."""
    parts: list[str] = []
    cur: Any = model
    i = 0
    while i < len(loc):
        elem = loc[i]
        cur = _unwrap(cur)
        origin = typing.get_origin(cur)
        if isinstance(cur, type) and issubclass(cur, BaseModel):
            if elem in cur.model_fields:
                parts.append(str(elem))
                cur = cur.model_fields[elem].annotation
                cur_u = _unwrap(cur)
                # a discriminated union: the next loc element is the tag
                if typing.get_origin(cur_u) is Union and i + 1 < len(loc):
                    members = {getattr(m, "__lmzoo_component__", (None, None))[1]: m for m in typing.get_args(cur_u)}
                    if loc[i + 1] in members:
                        cur = members[loc[i + 1]]
                        i += 1
            else:
                parts.append(str(elem))
                cur = None
        elif origin in (list, tuple) and isinstance(elem, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{elem}]"]
            args = typing.get_args(cur)
            cur = args[0] if args else None
            cur_u = _unwrap(cur)
            if typing.get_origin(cur_u) is Union and i + 1 < len(loc):
                members = {getattr(m, "__lmzoo_component__", (None, None))[1]: m for m in typing.get_args(cur_u)}
                if loc[i + 1] in members:
                    cur = members[loc[i + 1]]
                    i += 1
        elif origin is dict:
            parts.append(str(elem))
            args = typing.get_args(cur)
            cur = args[1] if len(args) == 2 else None
        else:
            parts.append(str(elem))
            cur = None
        i += 1
    return parts, cur


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def format_errors(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            parts, _ = _walk(model, loc[:-1])
            _, parent = _walk(model, loc[:-1])
            parent = _unwrap(parent)
            choices = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
            path = ".".join(parts + [str(loc[-1])])
            msg = f"unknown key {str(loc[-1])!r}{did_you_mean(loc[-1], choices)}"
            if choices:
                msg += f"; valid keys: {', '.join(choices)}"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            parts, cur = _walk(model, loc)
            cur = _unwrap(cur)
            members = [getattr(m, "__lmzoo_component__", (None, None)) for m in typing.get_args(cur)]
            ckind = members[0][0] if members else "component"
            names = sorted(n for _, n in members if n)
            path = ".".join(parts + ["name"])
            if kind == "union_tag_not_found":
                msg = f"missing 'name': say which {ckind} to use, one of: {', '.join(names)}"
            else:
                tag = err.get("ctx", {}).get("tag")
                msg = f"unknown {ckind} {tag!r}{did_you_mean(tag, names)}; available: {', '.join(names)}"
        elif kind == "literal_error" and loc and loc[-1] == "name":
            parts, _ = _walk(model, loc)
            path = ".".join(parts)
            expected = err.get("ctx", {}).get("expected", "")
            names = [e.strip(" '") for e in expected.replace(" or ", ",").split(",") if e.strip(" '")]
            msg = f"unknown name {err.get('input')!r}{did_you_mean(err.get('input'), names)}; expected {expected}"
        else:
            parts, _ = _walk(model, loc)
            path = ".".join(parts)
            msg = err["msg"]
            if "input" in err and kind != "missing" and not isinstance(err["input"], dict):
                msg += f" (got {_short(err['input'])})"
        out.append(f"{prefix}{path or '<recipe>'}: {msg}")
    return out


# ----------------------------------------------------------------------------- loading and merging

def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"YAML syntax error{where}: {getattr(exc, 'problem', exc)}", str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(data).__name__}", str(path))
    return data


def _is_component(d: Any) -> bool:
    return isinstance(d, dict) and "name" in d


# Keys that exclude each other (a budget is steps OR tokens OR flops): setting one drops the others.
EXCLUSIVE_KEYS = [frozenset({"steps", "tokens", "flops"})]


def _drop_exclusive(d: dict, key: str) -> None:
    for group in EXCLUSIVE_KEYS:
        if key in group:
            for other in group - {key}:
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
        if (
            isinstance(v, dict) and isinstance(out.get(k), dict)
            and not (_is_component(v) and _is_component(out[k]) and v["name"] != out[k]["name"])
        ):
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
    # plugin paths are relative to the recipe that names them
    if "plugins" in doc:
        if not isinstance(doc["plugins"], list):
            raise RecipeError(f"plugins: expected a list of plugin file paths, got {doc['plugins']!r}", str(path))
        doc["plugins"] = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p
                          for p in map(str, doc["plugins"])]
    base = doc.pop("base", None)
    if base is None:
        return doc
    bases = base if isinstance(base, list) else [base]
    merged: dict = {}
    for b in bases:
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
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not key.path=value (e.g. model.d_model=256)")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key:
        raise RecipeError(f"override {text!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def set_path(doc: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict. Setting a component to a bare name, or changing its
    `name`, replaces the component wholesale."""
    keys = dotted.split(".")
    cur = doc
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise RecipeError(f"override {dotted}: {k!r} holds {nxt!r}, not a section")
        cur = nxt
    last = keys[-1]
    old = cur.get(last)
    if last == "name" and len(keys) > 1 and cur.get("name") not in (None, value):
        cur.clear()
        cur["name"] = value
        return
    if isinstance(value, str) and _is_component(old):
        value = {"name": value}
    if value is not None:
        _drop_exclusive(cur, last)
    cur[last] = copy.deepcopy(value)


def apply_overrides(doc: dict, overrides) -> dict:
    doc = copy.deepcopy(doc)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        set_path(doc, key, value)
    return doc


# ----------------------------------------------------------------------------- expansion

@dataclass
class Run:
    """One training run of a study: a variant at a seed, with its validated recipe."""

    variant: str
    seed: int
    recipe: Any  # Recipe

    @property
    def label(self) -> str:
        return self.variant if self.seed is None else f"{self.variant}/seed{self.seed}"


_UNFAIR = ("seed", "data.source", "train.budget")


def _variants(doc: dict) -> list[tuple[str, dict]]:
    abl = doc.get("ablation") or {}
    variants = abl.get("variants") or {}
    grid = abl.get("grid") or {}
    if not isinstance(variants, dict) or not isinstance(grid, dict):
        raise RecipeError("ablation.variants and ablation.grid are mappings")
    base = list(variants.items()) or [("base", {})]
    if not grid:
        return [(n, dict(o or {})) for n, o in base]
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise RecipeError(f"ablation.grid.{k}: expected a non-empty list of values, got {grid[k]!r}")
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo))
        for n, o in base:
            name = label if n == "base" and not variants else f"{n},{label}"
            out.append((name, {**(o or {}), **dict(zip(keys, combo))}))
    return out


def expand(doc: dict, source: str | None = None) -> list[Run]:
    """Expand an ablation into validated runs: every (variant, seed)."""
    model = recipe_model()
    abl = doc.get("ablation") or {}
    fair = abl.get("fair", True) if isinstance(abl, dict) else True
    seeds = (abl.get("seeds") if isinstance(abl, dict) else None) or [doc.get("seed", 0)]
    runs, errors = [], []
    for name, overrides in _variants(doc):
        if fair:
            for key in overrides:
                if any(key == u or key.startswith(u + ".") for u in _UNFAIR):
                    errors.append(
                        f"ablation.variants.{name}.{key}: a variant may not change {key} (all variants share data, "
                        "seeds and compute budget so the comparison is fair); set ablation.fair: false to allow it"
                    )
        if errors:
            continue
        try:
            vdoc = apply_overrides(doc, overrides)
        except RecipeError as exc:
            errors.extend(f"ablation.variants.{name}: {e}" for e in exc.errors)
            continue
        vdoc.pop("ablation", None)
        vdoc.pop("quick", None)
        for seed in seeds:
            rdoc = dict(vdoc, variant=name, seed=seed)
            try:
                recipe = model.model_validate(rdoc)
            except ValidationError as exc:
                prefix = f"[variant {name}] " if name != "base" else ""
                for e in format_errors(exc, model, prefix):
                    if e not in errors:
                        errors.append(e)
                continue
            runs.append(Run(name, seed, recipe))
    if errors:
        raise RecipeError(errors, source)
    return runs


def prepare(path: str | Path, overrides=(), quick: bool = False) -> tuple[dict, Any]:
    """Load a recipe file, its bases and plugins, apply --quick and overrides, and validate the
    base document. Returns (raw merged doc, validated Recipe)."""
    path = Path(path)
    doc = load_raw(path)
    # --quick and overrides before plugins: an override may add a plugin
    if quick:
        doc = apply_overrides(doc, doc.get("quick") or {})
    doc = apply_overrides(doc, list(overrides))
    plugin_paths = doc.get("plugins") or []
    load_plugin_files(plugin_paths, base_dir=path.parent)
    problems = [p for p in get_state().problems if p.plugin in {str(Path(x).resolve()) for x in plugin_paths}]
    if problems:
        raise RecipeError([f"plugins: {p}" for p in problems], str(path))
    model = recipe_model()
    doc = with_defaults(doc, model)
    base_doc = {k: v for k, v in doc.items()}
    try:
        recipe = model.model_validate(base_doc)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, model), str(path)) from None
    return doc, recipe


def with_defaults(doc: dict, model=None) -> dict:
    """Fill the document with the schema's defaults, so an override such as
    `train.optimizer.lr=1e-3` lands inside the default optimizer instead of replacing it."""
    model = model or recipe_model()
    try:
        defaults = json.loads(model().model_dump_json())
    except ValidationError:  # a default component is not registered: validation will say so
        return doc
    for key in ("variant", "seed", "name", "ablation", "quick", "plugins", "description"):
        defaults.pop(key, None)
    return deep_merge(defaults, doc)


def load_runs(path: str | Path, overrides=(), quick: bool = False) -> tuple[Any, list[Run]]:
    doc, recipe = prepare(path, overrides, quick)
    return recipe, expand(doc, str(path))


def load_recipe(path: str | Path, overrides=(), variant: str | None = None, quick: bool = False):
    """The validated recipe; with `variant`, that variant's (first seed's) recipe."""
    recipe, runs = load_runs(path, overrides, quick)
    if variant is None:
        return recipe
    for run in runs:
        if run.variant == variant:
            return run.recipe
    raise RecipeError(f"no variant {variant!r}{did_you_mean(variant, [r.variant for r in runs])}; "
                      f"variants: {', '.join(dict.fromkeys(r.variant for r in runs))}", str(path))


def to_yaml(recipe) -> str:
    """The resolved recipe as YAML, every default visible."""
    data = json.loads(recipe.model_dump_json())
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
