"""Optimizers: `adamw`, `sgd`, `lion`, `muon` (written here) and `torch-adamw` (torch's own).

The implementations; parameters and registration are in `__init__.py`.
"""
from __future__ import annotations

import math

import torch

# names of the parameters Muon leaves to AdamW even when they are 2-D matrices
EMBEDDING_NAMES = ("token_embeddings", "lm_head", "position", "embed", "wte", "wpe")


def _split(params) -> tuple[list, bool]:
    """Normalise `params`: a list of (name, tensor) pairs (names invented for plain tensors)
    or a list of group dicts. Returns (items, are_groups)."""
    items = list(params)
    if not items:
        raise ValueError("the optimizer got no parameters")
    if isinstance(items[0], dict):
        return items, True
    named = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            named.append(item)
        elif torch.is_tensor(item):
            named.append((f"param{i}", item))
        else:
            raise TypeError(f"optimizer params: expected (name, tensor) pairs, tensors or dicts, got {type(item).__name__}")
    return [(n, p) for n, p in named if p.requires_grad], False


def decay_groups(params, weight_decay: float) -> list[dict]:
    """Param groups by the weight-decay rule: >= 2-D tensors decay, 1-D do not."""
    items, are_groups = _split(params)
    if are_groups:
        return items
    decay = [p for _, p in items if p.dim() >= 2]
    no_decay = [p for _, p in items if p.dim() < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _lr(group) -> float:
    return group["lr"] * group.get("lr_scale", 1.0)


@torch.no_grad()
def adamw_update_(p, state: dict, lr: float, b1: float, b2: float, eps: float, wd: float) -> None:
    """One AdamW step on `p` in place (Loshchilov & Hutter; torch's order of operations):
    decoupled decay, moment updates, bias-corrected step. Shared by `adamw` and `muon`."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["step"] += 1
    t, m, v, g = state["step"], state["exp_avg"], state["exp_avg_sq"], p.grad
    p.mul_(1 - lr * wd)
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
    p.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), step for step as torch's:
    p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or weight_decay < 0:
            raise ValueError(f"bad AdamW hyperparameters: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = _lr(group), group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                adamw_update_(p, self.state[p], lr, b1, b2, eps, wd)
        return loss


def make_adamw(lr, betas, eps, weight_decay, *, params):
    """AdamW written from scratch (matches torch.optim.AdamW)."""
    return AdamW(decay_groups(params, weight_decay), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def make_torch_adamw(lr, betas, eps, weight_decay, fused, *, params):
    """torch.optim.AdamW (a reference and usually the fastest)."""
    groups = decay_groups(params, weight_decay)
    kw = dict(fused=True) if fused else dict(foreach=None)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kw)


class SGD(torch.optim.Optimizer):
    """SGD with (Nesterov) momentum and L2 weight decay, as torch.optim.SGD (dampening 0):
    g <- g + wd p; b <- mu b + g (b = g at the first step); g <- g + mu b (nesterov) or b;
    p <- p - lr g."""

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        if nesterov and momentum <= 0:
            raise ValueError("nesterov=True needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = _lr(group), group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd:
                    g = g.add(p, alpha=wd)
                if mu:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = g.clone()
                    else:
                        buf = state["momentum_buffer"].mul_(mu).add_(g)
                    g = g.add(buf, alpha=mu) if group["nesterov"] else buf
                p.add_(g, alpha=-lr)
        return loss


def make_sgd(lr, momentum, nesterov, weight_decay, *, params):
    """SGD with momentum / Nesterov (matches torch.optim.SGD)."""
    return SGD(decay_groups(params, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov,
               weight_decay=weight_decay)


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): p <- p (1 - lr wd) - lr sign(b1 m + (1 - b1) g); m <- b2 m + (1 - b2) g."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), wd = _lr(group), group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                update = m.lerp(p.grad, 1 - b1).sign_()
                p.mul_(1 - lr * wd).add_(update, alpha=-lr)
                m.lerp_(p.grad, 1 - b2)
        return loss


def make_lion(lr, betas, weight_decay, *, params):
    """Lion: sign of interpolated momentum."""
    return Lion(decay_groups(params, weight_decay), lr=lr, betas=betas, weight_decay=weight_decay)


NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic Newton-Schulz coefficients
NS_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately orthogonalise G (U S V^T -> ~U V^T) with the quintic iteration
    X <- a X + (b A + c A^2) X, A = X X^T, after scaling G to spectral norm <= 1. G may be a batch
    (..., m, n) of same-shape matrices, each orthogonalised on its own. `dtype`: the iteration's
    precision; None: bfloat16 on CUDA, float32 elsewhere."""
    a, b, c = NS_COEFFS
    dtype = dtype or (torch.bfloat16 if G.is_cuda else torch.float32)
    X = G.to(dtype)
    wide = X.size(-2) > X.size(-1)
    if wide:  # iterate on the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if wide:
        X = X.mT
    return X.to(G.dtype)


def orthogonalise_all(grads: list[torch.Tensor], steps: int, dtype: torch.dtype | None) -> list[torch.Tensor]:
    """newton_schulz of every matrix in `grads`, matrices of one shape (up to a transpose) stacked
    into one batched iteration: at small sizes the per-call overhead, not the FLOPs, dominates."""
    out: list[torch.Tensor | None] = [None] * len(grads)
    by_shape: dict[tuple, list[int]] = {}
    for i, g in enumerate(grads):
        rows, cols = g.shape
        by_shape.setdefault((min(rows, cols), max(rows, cols), g.dtype, g.device), []).append(i)
    for idx in by_shape.values():
        stacked = torch.stack([grads[i] if grads[i].size(0) <= grads[i].size(1) else grads[i].mT for i in idx])
        for i, o in zip(idx, newton_schulz(stacked, steps, dtype=dtype).unbind(0)):
            out[i] = o if grads[i].size(0) <= grads[i].size(1) else o.mT
    return out


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024) for the groups flagged `use_muon`: momentum, Newton-Schulz
    orthogonalisation, p <- p (1 - lr wd) - lr * sqrt(max(1, rows/cols)) * O. Other groups
    step with AdamW (the embeddings, lm_head and 1-D parameters)."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, betas=(0.9, 0.95), eps=1e-8,
                 weight_decay=0.0, ns_dtype="auto"):
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"muon: ns_dtype must be one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      betas=tuple(betas), eps=eps, weight_decay=weight_decay, use_muon=False,
                                      ns_dtype=ns_dtype))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = _lr(group), group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not group["use_muon"]:  # AdamW
                b1, b2 = group["betas"]
                for p in params:
                    adamw_update_(p, self.state[p], lr, b1, b2, group["eps"], wd)
                continue
            grads = []
            for p in params:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"].lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                grads.append(g.reshape(g.size(0), -1))
            updates = orthogonalise_all(grads, group["ns_steps"], NS_DTYPES[group.get("ns_dtype", "auto")])
            for p, update in zip(params, updates):
                scale = max(1.0, p.size(0) / update[0].numel()) ** 0.5
                p.mul_(1 - lr * wd).add_(update.view_as(p), alpha=-lr * scale)
        return loss


def make_muon(lr, momentum, nesterov, ns_steps, adamw_lr, betas, eps, weight_decay, ns_dtype="auto", *, params):
    """Muon for 2-D hidden weight matrices, AdamW for embeddings, lm_head and 1-D params;
    the two are told apart by parameter name."""
    items, are_groups = _split(params)
    if are_groups:
        return Muon(items, lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, betas=betas, eps=eps,
                    weight_decay=weight_decay, ns_dtype=ns_dtype)
    muon, adam_decay, adam_no_decay = [], [], []
    for name, p in items:
        if p.dim() >= 2 and not any(key in name for key in EMBEDDING_NAMES):
            muon.append(p)
        elif p.dim() >= 2:
            adam_decay.append(p)
        else:
            adam_no_decay.append(p)
    scale = adamw_lr / lr
    groups = [{"params": muon, "use_muon": True, "weight_decay": weight_decay},
              {"params": adam_decay, "use_muon": False, "lr_scale": scale, "weight_decay": weight_decay},
              {"params": adam_no_decay, "use_muon": False, "lr_scale": scale, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return Muon(groups, lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, betas=betas, eps=eps,
                weight_decay=weight_decay, ns_dtype=ns_dtype)
