"""The `align:` recipe section (pydantic models only, no torch: recipes validate without it)."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmzoo.registry import did_you_mean


class ContainsSpec(BaseModel):
    """Prefer responses containing a target word."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal["contains"] = "contains"
    word: str = Field(..., min_length=1, description="the target word (a substring, e.g. ' the')")
    case_sensitive: bool = Field(False, description="match case exactly")


class AvoidSpec(BaseModel):
    """Prefer responses avoiding every word in a list."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal["avoid"] = "avoid"
    words: list[str] = Field(..., min_length=1, description="words (substrings) a good response avoids")
    case_sensitive: bool = Field(False, description="match case exactly")


class MaxLengthSpec(BaseModel):
    """Prefer responses that reach `stop` within `max_chars` characters."""
    model_config = ConfigDict(extra="forbid")
    kind: Literal["max_length"] = "max_length"
    max_chars: int = Field(..., ge=1, description="longest allowed first segment, in characters")
    stop: str = Field("\n", min_length=1, description="the string that ends the segment")


PreferenceSpec = Annotated[Union[ContainsSpec, AvoidSpec, MaxLengthSpec], Field(discriminator="kind")]


class PairsSpec(BaseModel):
    """Where preference pairs come from."""
    model_config = ConfigDict(extra="forbid")
    path: Optional[str] = Field(None, description="a JSONL file of {prompt, chosen, rejected}; None: synthesise "
                                                  "pairs from the pretrained model")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="with `path`: share of pairs held out for "
                                                                 "evaluation")
    n_prompts: int = Field(256, ge=1, description="synthetic: training prompts (windows of the train split)")
    heldout_prompts: int = Field(64, ge=1, description="synthetic: held-out prompts (windows of the val split) for "
                                                       "held-out pairs and fresh samples")
    samples_per_prompt: int = Field(8, ge=2, description="synthetic: continuations sampled per prompt")
    pairs_per_prompt: int = Field(1, ge=1, description="synthetic: at most this many (chosen, rejected) pairs per "
                                                       "prompt")
    prompt_tokens: int = Field(32, ge=1, description="synthetic: prompt length in tokens")
    max_new_tokens: int = Field(32, ge=1, description="synthetic: response length in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_k: Optional[int] = Field(None, ge=1, description="sample from the k most likely tokens; None: all")
    preference: PreferenceSpec = Field(default_factory=lambda: ContainsSpec(word=" the"),
                                       description="the programmatic preference that ranks samples")


class AlignEvalSpec(BaseModel):
    """How the aligned policy is evaluated."""
    model_config = ConfigDict(extra="forbid")
    samples_per_prompt: int = Field(4, ge=1, description="fresh samples per held-out prompt (satisfaction rate, KL)")
    prompts: Optional[int] = Field(None, ge=1, description="held-out prompts to sample from; None: all")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="fresh sample length; None: pairs.max_new_tokens")
    val_bpb: bool = Field(True, description="measure validation bits per byte before and after alignment")
    every: Optional[int] = Field(None, ge=1, description="also evaluate held-out pairs every N steps; None: only at "
                                                         "the end")


class AlignSpec(BaseModel):
    """Alignment stage after pretraining: preference pairs, a loss, and a frozen reference."""
    model_config = ConfigDict(extra="forbid")
    init_from: str = Field("pretrain", description="'pretrain': this recipe's pretraining run; or a run directory")
    loss: dict[str, Any] = Field(default_factory=lambda: {"name": "dpo"}, validate_default=True,
                                 description="the alignment_loss component, e.g. {name: dpo, beta: 0.1}")
    steps: int = Field(200, ge=1, description="optimizer steps")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (linear warm-up, then constant)")
    warmup_steps: int = Field(10, ge=0, description="linear warm-up steps")
    batch_size: int = Field(16, ge=1, description="preference pairs per step")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: Optional[float] = Field(1.0, gt=0, description="max global gradient norm; None: no clipping")
    log_every: int = Field(10, ge=1, description="write a metrics.csv row every N steps")
    max_len: Optional[int] = Field(None, ge=2, description="longest prompt+response in tokens; None: the model's "
                                                           "max_seq_len")
    seed: Optional[int] = Field(None, description="seed for pairs, order and sampling; None: the recipe's seed")
    label: Optional[str] = Field(None, description="output subdirectory under <run>/align/; None: the loss name")
    pairs: PairsSpec = Field(default_factory=PairsSpec)
    eval: AlignEvalSpec = Field(default_factory=AlignEvalSpec)

    @field_validator("loss", mode="before")
    @classmethod
    def _check_loss(cls, v):
        """Validated against the alignment_loss registry at load time, so plugins' losses work."""
        from lmzoo.hooks import get_registry
        from lmzoo.registry import RegistryError

        if isinstance(v, str):
            v = {"name": v}
        if hasattr(v, "model_dump"):
            v = v.model_dump()
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError(f"expected a component like {{name: dpo, beta: 0.1}}, got {v!r}")
        reg = get_registry()
        try:
            entry = reg.get("alignment_loss", v["name"])
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
        params = {k: x for k, x in v.items() if k != "name"}
        try:
            validated = entry.params.model_validate(params)
        except ValidationError as exc:
            raise ValueError(f"alignment_loss {v['name']!r}: {_param_errors(exc, entry.params)}") from None
        return {"name": v["name"], **validated.model_dump()}

    @field_validator("pairs", mode="before")
    @classmethod
    def _check_preference_kind(cls, v):
        # a clear message for an unknown `kind` (the generic union error would not name the choices)
        pref = v.get("preference") if isinstance(v, dict) else None
        if isinstance(pref, dict) and pref.get("kind") not in _PREFERENCE_KINDS:
            raise ValueError(f"pairs.preference.kind: unknown preference {pref.get('kind')!r}"
                             f"{did_you_mean(pref.get('kind'), _PREFERENCE_KINDS)}; one of "
                             f"{', '.join(_PREFERENCE_KINDS)} (e.g. {{kind: contains, word: ' love'}})")
        return v


_PREFERENCE_KINDS = ("contains", "avoid", "max_length")


def _param_errors(exc: ValidationError, model: type[BaseModel]) -> str:
    """pydantic errors as 'field: problem (got value)', with did-you-mean for unknown keys."""
    out = []
    for e in exc.errors():
        field = ".".join(map(str, e["loc"]))
        if e["type"] == "extra_forbidden":
            out.append(f"unknown key {field!r}{did_you_mean(field, model.model_fields)}; valid keys: "
                       f"{', '.join(model.model_fields) or 'none'}")
        else:
            out.append(f"{field}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(out)
