"""From-scratch kernels: the functions CS336 assignment 1 asks for, written with elementwise tensor
operations and reductions only, so a run can train end to end on code you can read.

    softmax(x, dim)            exp(x - max) / sum, stable for any finite input
    log_softmax(x, dim)        x - max - log(sum(exp(x - max)))
    cross_entropy(logits, y)   mean over every leading dimension of logsumexp(logits) - logits[y]
    silu(x), gelu(x), relu(x)  the feed-forward activations
    clip_grad_norm(params, m)  scale all gradients in place so their global L2 norm is at most m

`model.kernels: scratch` makes the model and the trainer use them (the attention softmax, the
feed-forward activations, the training loss and gradient clipping); `model.kernels: torch` (the
default) uses torch's fused operators. `tests/test_kernels.py` checks each against torch's own
op, values and gradients; `lmzoo bench RECIPE --kernels` measures the speed cost.

This is a plain module (not a plugin): the components that use it import it when they are built.
Gradients come from autograd through these operations, so what is tested is exactly what trains.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Iterable

import torch
import torch.nn.functional as F

KERNEL_SETS = ("torch", "scratch")


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x - max) / sum(exp(x - max)) along `dim`. Subtracting the row maximum makes the largest
    exponent exp(0) = 1, so no input overflows; -inf entries get probability 0 (a row of only -inf
    gives NaN, as torch's does). The maximum is a constant shift, so it is detached: softmax does
    not depend on it and its gradient would only add rounding noise."""
    shifted = x - x.amax(dim=dim, keepdim=True).detach()
    e = shifted.exp()
    return e / e.sum(dim=dim, keepdim=True)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x - logsumexp(x) along `dim`, as (x - max) - log(sum(exp(x - max))): never exponentiates a
    positive number and never takes the log of an underflowed probability."""
    shifted = x - x.amax(dim=dim, keepdim=True).detach()
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of `targets` under softmax(logits): logits (..., V), targets
    (...) integer ids; the mean runs over every leading dimension. Computed as
    logsumexp(logits) - logits[target] with the max shift, so logits of +-1e4 are exact."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"cross_entropy: logits {tuple(logits.shape)} need targets of shape "
                         f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    shifted = logits - logits.amax(dim=-1, keepdim=True).detach()
    lse = shifted.exp().sum(dim=-1).log()  # logsumexp(logits) - max
    picked = shifted.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # logits[target] - max
    return (lse - picked).mean()


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(-x)) for x >= 0 and exp(x) / (1 + exp(x)) for x < 0, both from e = exp(-|x|) in
    (0, 1]: no branch ever overflows (so neither its value nor its gradient becomes NaN). -|x| is
    written as a select so that its gradient at 0 is -1, not abs's 0."""
    e = torch.where(x >= 0, -x, x).exp()
    return torch.where(x >= 0, 1 / (1 + e), e / (1 + e))


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) (the SwiGLU gate's activation)."""
    return x * sigmoid(x)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """x * Phi(x), Phi the standard normal CDF: 0.5 x (1 + erf(x / sqrt 2)); approximate="tanh" is
    GPT-2's 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0), with gradient 1 where x > 0 and 0 elsewhere (torch's convention at 0)."""
    return torch.where(x > 0, x, torch.zeros_like(x))


def _l2(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The L2 norm of a tensor in `dtype`, divided by its largest entry before squaring so that
    gradients of 1e20 do not overflow nor gradients of 1e-30 underflow; inf or NaN entries give an
    inf or NaN norm. No branch depends on the values (no host sync on an accelerator)."""
    t = t.detach().to(dtype)
    scale = t.abs().amax()
    safe = torch.where((scale > 0) & torch.isfinite(scale), scale, torch.ones_like(scale))
    return safe * (t / safe).square().sum().sqrt()


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float,
                   eps: float = 1e-6) -> torch.Tensor:
    """Scale every gradient in place by max_norm / (total + eps) when the global L2 norm `total` of
    all gradients together exceeds `max_norm` (a factor of 1 otherwise); parameters without a
    gradient are skipped. Returns `total`, the norm before clipping. eps = 1e-6 as in CS336 and
    torch.nn.utils.clip_grad_norm_."""
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    device = grads[0].device
    total = _l2(torch.stack([_l2(g, dtype).to(device) for g in grads]), dtype)  # sqrt(sum of squared norms)
    factor = (max_norm / (total + eps)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.to(g.dtype))
    return total


# ----------------------------------------------------------------------------- the recipe switch

def _torch_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _torch_clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def kernel_set(name: str) -> SimpleNamespace:
    """The functions `model.kernels` selects: softmax, silu, gelu, relu, cross_entropy (mean over
    leading dimensions) and clip_grad_norm, from scratch ("scratch") or torch's ("torch")."""
    if name == "scratch":
        return SimpleNamespace(name=name, softmax=softmax, silu=silu, gelu=gelu, relu=relu,
                               cross_entropy=cross_entropy, clip_grad_norm=clip_grad_norm)
    if name == "torch":
        return SimpleNamespace(name=name, softmax=torch.softmax, silu=F.silu, gelu=F.gelu, relu=F.relu,
                               cross_entropy=_torch_cross_entropy, clip_grad_norm=_torch_clip_grad_norm)
    raise ValueError(f"model.kernels must be one of {', '.join(KERNEL_SETS)}, got {name!r}")
