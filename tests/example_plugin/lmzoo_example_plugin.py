"""A third-party plugin: the inverse-square-root LR schedule of "Attention Is All You Need"."""
from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warmup_steps: int = Field(100, ge=1, description="steps of linear warmup before the 1/sqrt(step) decay")


def inverse_sqrt(max_lr: float, total_steps: int, warmup_steps: int = 100):
    """Linear warmup to max_lr, then max_lr * sqrt(warmup / step)."""

    def lr(step: int) -> float:
        if step < warmup_steps:
            return max_lr * step / warmup_steps
        return max_lr * (warmup_steps / step) ** 0.5

    return lr


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("lr_schedule", "inverse-sqrt", factory=inverse_sqrt, params=Params,
                 summary="linear warmup then 1/sqrt(step) decay (Vaswani et al.)")
