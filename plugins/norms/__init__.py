"""Normalisation layers: `rmsnorm`, `layernorm` (weight only: the zoo's models have no biases).

Both compute in float32 and cast back, so bf16 activations get a float32 reduction.
Whether a block normalises before (pre-norm) or after (post-norm) its sublayers is the
model's choice (`model.norm_placement`), not the norm's.

Parameters and registration live here and import no torch (so `lmzoo list` stays fast);
the modules themselves are in `layers.py`, imported when a component is built.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class NormParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eps: float = Field(1e-5, gt=0, description="added to the mean square (variance) before the square root")


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("norm", "rmsnorm", factory="lmzoo.plugins.norms.layers:RMSNorm", params=NormParams,
                 summary="RMSNorm: x / rms(x) * g, computed in float32")
    registry.add("norm", "layernorm", factory="lmzoo.plugins.norms.layers:LayerNorm", params=NormParams,
                 summary="LayerNorm with a gain and no bias, computed in float32")
