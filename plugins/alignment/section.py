"""The `align:` recipe section (pydantic models only, no torch: recipes validate without it).

The loss, the optimizer and the lr schedule are component fields like every other in a recipe:
`ComponentSpec`s resolved against the registry by the kernel (kinds `alignment_loss`,
`optimizer`, `lr_schedule`), so a mistake gives one error with its YAML path, e.g.
`align.loss.name: unknown alignment_loss 'dpoo' (did you mean 'dpo'?)`.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from lmzoo.recipe import ComponentSpec, OptimizerSpec, ScheduleSpec
from lmzoo.registry import did_you_mean


class AlignmentLossSpec(ComponentSpec):
    kind: ClassVar[str] = "alignment_loss"


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
PREFERENCE_KINDS = ("contains", "avoid", "max_length")


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

    @field_validator("preference", mode="before")
    @classmethod
    def _known_kind(cls, v):
        # a clear message for an unknown `kind` (the generic union error would not name the choices)
        if isinstance(v, dict) and v.get("kind") not in PREFERENCE_KINDS:
            raise ValueError(f"unknown preference kind {v.get('kind')!r}{did_you_mean(v.get('kind'), PREFERENCE_KINDS)}"
                             f"; one of {', '.join(PREFERENCE_KINDS)} (e.g. {{kind: contains, word: ' love'}})")
        return v


class AlignEvalSpec(BaseModel):
    """How the aligned policy is evaluated."""
    model_config = ConfigDict(extra="forbid")
    samples_per_prompt: int = Field(4, ge=1, description="fresh samples per held-out prompt (satisfaction rate, KL)")
    prompts: Optional[int] = Field(None, ge=1, description="held-out prompts to sample from; None: all")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="fresh sample length; None: pairs.max_new_tokens")
    val_bpb: bool = Field(True, description="measure validation bits per byte before and after alignment")
    every: Optional[int] = Field(None, ge=1, description="also evaluate held-out pairs (and checkpoint) every N steps; "
                                                         "None: only at the end")


# Defaults of the component fields: DPO; AdamW at 1e-4 without weight decay, a linear warm-up
# over 10 steps, then constant. Given without `name`, or with the default's name, a component
# is merged onto these, so `align.optimizer.lr=3e-4` keeps the rest.
DEFAULT_LOSS = {"name": "dpo"}
DEFAULT_OPTIMIZER = {"name": "adamw", "lr": 1e-4, "weight_decay": 0.0}
DEFAULT_SCHEDULE = {"name": "constant", "warmup_steps": 10}
MOVED = {"lr": "optimizer.lr", "weight_decay": "optimizer.weight_decay", "warmup_steps": "lr_schedule.warmup_steps"}


class AlignSpec(BaseModel):
    """Alignment stage after pretraining: preference pairs, a loss, and a frozen reference."""
    model_config = ConfigDict(extra="forbid")
    init_from: str = Field("pretrain", description="'pretrain': this recipe's pretraining run; or a run directory")
    loss: SerializeAsAny[AlignmentLossSpec] = Field(default_factory=lambda: AlignmentLossSpec(**DEFAULT_LOSS),
                                                    description="the alignment_loss component, e.g. {name: dpo, "
                                                                "beta: 0.1} (`lmzoo list alignment_loss`)")
    optimizer: SerializeAsAny[OptimizerSpec] = Field(default_factory=lambda: OptimizerSpec(**DEFAULT_OPTIMIZER),
                                                     description="the optimizer component (`lmzoo list optimizer`)")
    lr_schedule: SerializeAsAny[ScheduleSpec] = Field(default_factory=lambda: ScheduleSpec(**DEFAULT_SCHEDULE),
                                                      description="the lr_schedule component over align.steps")
    steps: int = Field(200, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="preference pairs per step")
    grad_clip: Optional[float] = Field(1.0, gt=0, description="max global gradient norm; None: no clipping")
    log_every: int = Field(10, ge=1, description="write a metrics.csv row every N steps")
    max_len: Optional[int] = Field(None, ge=2, description="longest prompt+response in tokens; None: the model's "
                                                           "max_seq_len")
    seed: Optional[int] = Field(None, description="seed for pairs, order and sampling; None: the recipe's seed")
    label: Optional[str] = Field(None, description="output subdirectory under <run>/align/; None: the variant "
                                                   "name, else the loss name")
    pairs: PairsSpec = Field(default_factory=PairsSpec)
    eval: AlignEvalSpec = Field(default_factory=AlignEvalSpec)

    @model_validator(mode="before")
    @classmethod
    def _merge_component_defaults(cls, data: Any):
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in MOVED.items():
            if old in data:
                raise ValueError(f"'{old}' moved: write align.{new} (align: {{optimizer: {{name: adamw, lr: 1.0e-4}}, "
                                 "lr_schedule: {name: constant, warmup_steps: 10}})")
        for key, default in (("loss", DEFAULT_LOSS), ("optimizer", DEFAULT_OPTIMIZER),
                             ("lr_schedule", DEFAULT_SCHEDULE)):
            given = data.get(key)
            if isinstance(given, dict) and given.get("name", default["name"]) == default["name"]:
                data[key] = {**default, **given}
        return data
