"""Learning-rate schedules: `cosine`, `wsd`, `constant`.

A factory gets its params plus the context `max_lr` (the optimizer's lr) and
`total_steps` (the run's optimizer steps) and returns a callable step -> lr, with step
counted from 0. Warmup is linear from 0: lr(t) = t / T_w * max_lr for t < T_w (CS336).
"""
from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class WarmupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warmup_steps: Optional[int] = Field(None, ge=0, description="linear warmup steps; None: warmup_fraction of total_steps")
    warmup_fraction: float = Field(0.02, ge=0, le=1, description="warmup length as a fraction of total_steps "
                                                                 "(used when warmup_steps is None)")


def _warmup(warmup_steps: int | None, warmup_fraction: float, total_steps: int) -> int:
    return int(warmup_steps) if warmup_steps is not None else int(round(warmup_fraction * total_steps))


class Schedule:
    """Base: a picklable callable step -> lr with a readable repr."""

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def cosine_lr(t: int, max_lr: float, min_lr: float, warmup: int, cosine_steps: int) -> float:
    """CS336's get_lr_cosine_schedule."""
    if t < warmup:
        return t / warmup * max_lr
    if t <= cosine_steps:
        if cosine_steps == warmup:
            return max_lr
        return min_lr + 0.5 * (1 + math.cos(math.pi * (t - warmup) / (cosine_steps - warmup))) * (max_lr - min_lr)
    return min_lr


class CosineParams(WarmupParams):
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of max_lr")
    cosine_steps: Optional[int] = Field(None, ge=1, description="step where the cosine reaches min lr; None: total_steps")


class Cosine(Schedule):
    """Linear warmup 0 -> max over T_w, cosine max -> min until T_c (= total_steps unless
    cosine_steps is given), min afterwards."""

    def __init__(self, warmup_steps=None, warmup_fraction=0.02, min_lr_ratio=0.1, cosine_steps=None, *,
                 max_lr: float, total_steps: int):
        self.max_lr, self.min_lr = float(max_lr), float(max_lr) * min_lr_ratio
        self.warmup = _warmup(warmup_steps, warmup_fraction, total_steps)
        self.cosine_steps = int(cosine_steps if cosine_steps is not None else total_steps)
        if self.cosine_steps < self.warmup:
            raise ValueError(f"lr_schedule.cosine_steps={self.cosine_steps} is shorter than the warmup "
                             f"({self.warmup} steps); lower warmup_steps or raise cosine_steps")

    def __call__(self, step: int) -> float:
        return cosine_lr(step, self.max_lr, self.min_lr, self.warmup, self.cosine_steps)


class WSDParams(WarmupParams):
    decay_fraction: float = Field(0.2, ge=0, le=1, description="final fraction of total_steps spent decaying")
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = Field("linear", description="shape of the decay to min lr")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of max_lr")


class WSD(Schedule):
    """Warmup-stable-decay (Hu et al. 2024, "MiniCPM"): warmup, hold max_lr, then decay over the
    last decay_fraction of the run. With p the decay progress in [0, 1]: linear max - (max - min) p;
    cosine min + (max - min)(1 + cos(pi p))/2; 1-sqrt min + (max - min)(1 - sqrt(p))."""

    def __init__(self, warmup_steps=None, warmup_fraction=0.02, decay_fraction=0.2, decay_shape="linear",
                 min_lr_ratio=0.0, *, max_lr: float, total_steps: int):
        self.max_lr, self.min_lr = float(max_lr), float(max_lr) * min_lr_ratio
        self.total_steps = int(total_steps)
        self.warmup = _warmup(warmup_steps, warmup_fraction, total_steps)
        self.decay_start = self.total_steps - int(round(decay_fraction * self.total_steps))
        self.decay_shape = decay_shape
        if self.decay_start < self.warmup:
            raise ValueError(f"lr_schedule: warmup ({self.warmup} steps) overlaps the decay, which starts at step "
                             f"{self.decay_start}; lower warmup_steps or decay_fraction")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / self.warmup * self.max_lr
        if step < self.decay_start:
            return self.max_lr
        if step >= self.total_steps:
            return self.min_lr
        p = (step - self.decay_start) / (self.total_steps - self.decay_start)
        span = self.max_lr - self.min_lr
        if self.decay_shape == "linear":
            return self.max_lr - span * p
        if self.decay_shape == "cosine":
            return self.min_lr + span * 0.5 * (1 + math.cos(math.pi * p))
        return self.min_lr + span * (1 - math.sqrt(p))


class ConstantParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps (0: none)")


class Constant(Schedule):
    """max_lr throughout, after an optional linear warmup."""

    def __init__(self, warmup_steps=0, *, max_lr: float, total_steps: int):
        self.max_lr, self.warmup = float(max_lr), int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / self.warmup * self.max_lr
        return self.max_lr


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("lr_schedule", "cosine", factory=Cosine, params=CosineParams,
                 summary="linear warmup, cosine decay to min_lr_ratio * max_lr (CS336)")
    registry.add("lr_schedule", "wsd", factory=WSD, params=WSDParams,
                 summary="warmup-stable-decay: hold max lr, decay over the last decay_fraction (linear/cosine/1-sqrt)")
    registry.add("lr_schedule", "constant", factory=Constant, params=ConstantParams,
                 summary="constant lr with optional linear warmup")
