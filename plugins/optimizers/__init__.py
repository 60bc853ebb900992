"""Optimizers: `adamw`, `sgd`, `lion`, `muon` (written here) and `torch-adamw` (torch's own).

Factories receive `params` as (name, tensor) pairs (e.g. `model.named_parameters()`),
plain tensors, or ready-made param groups (dicts, used as given).

Weight-decay rule (named or plain tensors): decay applies to tensors with two or more
dimensions (linear weights and the embedding tables) and not to 1-D tensors (norm gains,
any biases). Groups carry the rule in their own `weight_decay`.

The lr schedule overwrites `group["lr"]` every step. A group may carry `lr_scale`
(default 1): the optimizers here step with `group["lr"] * group["lr_scale"]`, which is how
`muon` keeps its AdamW groups at `adamw_lr / lr` of the scheduled Muon lr.

Parameters and registration live here and import no torch (so `lmzoo list` stays fast);
the modules themselves are in `optim.py`, imported when a component is built.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class AdamWParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (the schedule's max_lr)")
    betas: tuple[float, float] = Field((0.9, 0.95), description="decay rates of the first and second moment estimates")
    eps: float = Field(1e-8, gt=0, description="added to sqrt(v) in the denominator")
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay, applied to >= 2-D weights only")


class TorchAdamWParams(AdamWParams):
    fused: bool = Field(False, description="torch's fused kernel (CUDA tensors only); else foreach when available")


class SGDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum coefficient mu (0: plain SGD)")
    nesterov: bool = Field(False, description="Nesterov momentum")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient, >= 2-D weights only")


class LionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (typically 3-10x smaller than AdamW's)")
    betas: tuple[float, float] = Field((0.9, 0.99), description="b1 interpolates the update, b2 the momentum")
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay (3-10x AdamW's), >= 2-D weights only")


class MuonParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.02, gt=0, description="peak Muon learning rate (the schedule's max_lr) for hidden matrices")
    momentum: float = Field(0.95, ge=0, lt=1, description="Muon momentum")
    nesterov: bool = Field(True, description="Nesterov momentum before orthogonalising")
    ns_steps: int = Field(5, ge=1, description="Newton-Schulz iterations")
    ns_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="precision of the Newton-Schulz iterations; auto: bfloat16 on CUDA, float32 elsewhere "
                            "(bfloat16 is ~4x faster on CPUs with AVX512-BF16/AMX)")
    adamw_lr: float = Field(3e-3, gt=0, description="peak AdamW lr for embeddings, lm_head and 1-D params "
                                                    "(scheduled in proportion to lr)")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas for the non-Muon params")
    eps: float = Field(1e-8, gt=0, description="AdamW eps for the non-Muon params")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay, >= 2-D weights only")


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("optimizer", "adamw", factory="lmzoo.plugins.optimizers.optim:make_adamw", params=AdamWParams,
                 summary="AdamW written from scratch (decoupled weight decay on >= 2-D weights)")
    registry.add("optimizer", "torch-adamw", factory="lmzoo.plugins.optimizers.optim:make_torch_adamw", params=TorchAdamWParams,
                 summary="torch.optim.AdamW (foreach, or fused on CUDA)")
    registry.add("optimizer", "sgd", factory="lmzoo.plugins.optimizers.optim:make_sgd", params=SGDParams,
                 summary="SGD with momentum / Nesterov and L2 weight decay")
    registry.add("optimizer", "lion", factory="lmzoo.plugins.optimizers.optim:make_lion", params=LionParams,
                 summary="Lion: signed interpolated momentum (Chen et al. 2023)")
    registry.add("optimizer", "muon", factory="lmzoo.plugins.optimizers.optim:make_muon", params=MuonParams,
                 summary="Muon: Newton-Schulz orthogonalised momentum for hidden matrices, AdamW for the rest")
