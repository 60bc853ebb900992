"""Optimizers against torch's own (AdamW, SGD) or hand-written updates (Lion, Muon),
and lr schedules against their formulas (CS336's cosine test points)."""
from __future__ import annotations

import math

import pytest
import torch
from lmzoo.plugins.optimizers.optim import SGD, AdamW, Lion, newton_schulz

import lmzoo
from lmzoo.hooks import get_registry

SHAPES = [(8, 4), (4,), (3, 5, 2), (1,), (16, 16)]


def make_opt(name, params, **kw):
    entry = get_registry().get("optimizer", name)
    values = entry.params.model_validate(kw).model_dump()
    return entry.load()(**values, params=params)


def tensors(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]


def run_pair(opt_a, pa, opt_b, pb, steps, seed=1):
    """Feed both parameter sets the same gradient sequence: g = p^3 - p + noise (state-dependent,
    so any divergence in the updates would grow)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        noises = [torch.randn(p.shape, generator=g) for p in pa]
        for ps in (pa, pb):
            for p, n in zip(ps, noises):
                p.grad = (p.detach() ** 3 - p.detach() + n).to(p.dtype)
        opt_a.step()
        opt_b.step()
    return max((a - b).abs().max().item() for a, b in zip(pa, pb))


def test_adamw_matches_torch_over_1000_steps():
    pa, pb = tensors(), tensors()
    kw = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours, ref = AdamW(pa, **kw), torch.optim.AdamW(pb, foreach=False, **kw)
    diff = run_pair(ours, pa, ref, pb, 1000)
    assert diff < 1e-6
    moved = max((p - q).abs().max().item() for p, q in zip(pa, tensors()))
    assert moved > 0.1  # the parameters really travelled


def test_adamw_factory_groups_follow_the_decay_rule():
    named = [(f"p{i}", t) for i, t in enumerate(tensors())]
    opt = make_opt("adamw", named, lr=3e-4, weight_decay=0.2)
    by_wd = {g["weight_decay"]: sorted(tuple(p.shape) for p in g["params"]) for g in opt.param_groups}
    assert by_wd == {0.2: [(3, 5, 2), (8, 4), (16, 16)], 0.0: [(1,), (4,)]}
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    # the same factory, same grouping, as torch's AdamW: identical trajectories
    pa, pb = tensors(), tensors()
    ours = make_opt("adamw", [(str(i), p) for i, p in enumerate(pa)], lr=1e-3, weight_decay=0.5)
    ref = make_opt("torch-adamw", [(str(i), p) for i, p in enumerate(pb)], lr=1e-3, weight_decay=0.5)
    assert run_pair(ours, pa, ref, pb, 200) < 1e-6
    # a 1-D parameter is not decayed: with zero gradients it stays put
    w, b = torch.ones(3, 3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = make_opt("adamw", [("w", w), ("b", b)], lr=0.1, weight_decay=0.5)
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    opt.step()
    assert torch.allclose(w, torch.full((3, 3), 0.95)) and torch.equal(b, torch.ones(3))


@pytest.mark.parametrize("nesterov,momentum,wd", [(True, 0.9, 0.01), (False, 0.9, 0.0), (False, 0.0, 0.1)])
def test_sgd_matches_torch(nesterov, momentum, wd):
    pa, pb = tensors(), tensors()
    kw = dict(lr=0.01, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    diff = run_pair(SGD(pa, **kw), pa, torch.optim.SGD(pb, foreach=False, **kw), pb, 300)
    assert diff < 1e-5


def test_lion_hand_update_and_quadratic():
    p = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    lr, b1, b2, wd = 0.1, 0.9, 0.99, 0.1
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    x, m = p.detach().clone(), torch.zeros(3)
    grads = [torch.tensor([0.3, -0.1, 0.0]), torch.tensor([-1.0, 0.2, 0.4])]
    for g in grads:
        p.grad = g.clone()
        opt.step()
        c = b1 * m + (1 - b1) * g
        x = x * (1 - lr * wd) - lr * torch.sign(c)
        m = b2 * m + (1 - b2) * g
        torch.testing.assert_close(p.detach(), x)
    # on a quadratic the loss goes down
    target = torch.randn(10, generator=torch.Generator().manual_seed(0))
    q = torch.zeros(10, requires_grad=True)
    opt = make_opt("lion", [("q", q)], lr=0.05, weight_decay=0.0)
    losses = []
    for _ in range(200):
        loss = ((q - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::20]


def test_newton_schulz_orthogonalises():
    g = torch.Generator().manual_seed(0)
    for m, n in [(32, 32), (16, 48), (48, 16)]:
        k = min(m, n)
        U, _ = torch.linalg.qr(torch.randn(m, k, generator=g))
        V, _ = torch.linalg.qr(torch.randn(n, k, generator=g))
        G = U @ torch.diag(torch.logspace(-1, 1, k)) @ V.T  # singular values 0.1 .. 10 (5 steps: cond <~ 100)
        s = torch.linalg.svdvals(newton_schulz(G))
        assert 0.6 < s.min() and s.max() < 1.25, s  # all pulled into the quintic's band around 1
        # and the singular vectors are kept: the result is ~ U V^T
        assert (newton_schulz(G) - U @ V.T).norm() / (U @ V.T).norm() < 0.3


def test_muon_groups_and_toy_problem():
    torch.manual_seed(0)
    emb = torch.nn.Parameter(torch.randn(10, 8))
    hidden = torch.nn.Parameter(torch.randn(8, 8) * 0.3)
    head = torch.nn.Parameter(torch.randn(3, 8) * 0.3)
    gain = torch.nn.Parameter(torch.ones(8))
    named = [("token_embeddings.weight", emb), ("layers.0.ffn.w1.weight", hidden), ("lm_head.weight", head),
             ("layers.0.ln1.weight", gain)]
    opt = make_opt("muon", named, lr=0.02, adamw_lr=4e-3, weight_decay=0.0)
    muon_ids = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert muon_ids == {id(hidden)}  # only the hidden matrix; embeddings, head and gains go to AdamW
    for g in opt.param_groups:
        if not g["use_muon"]:
            assert g["lr_scale"] == pytest.approx(4e-3 / 0.02)
    # one Muon step moves the hidden matrix by lr * (an orthogonal matrix): singular values ~ lr
    before = hidden.detach().clone()
    hidden.grad = torch.randn(8, 8)
    opt.step()
    s = torch.linalg.svdvals(hidden.detach() - before)
    assert (s > 0.5 * 0.02).all() and (s < 1.3 * 0.02).all()
    # toy regression: loss decreases
    x = torch.randint(0, 10, (64,))
    y = x % 3  # learnable: a function of the token
    opt = make_opt("muon", named, lr=0.02, adamw_lr=1e-2)
    losses = []
    for _ in range(100):
        h = torch.nn.functional.rms_norm(emb[x], (8,)) * gain
        loss = torch.nn.functional.cross_entropy(torch.tanh(h @ hidden.T) @ head.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses[::10]


def test_schedule_lr_scale_is_honoured():
    p = torch.zeros(2, 2, requires_grad=True)
    opt = SGD([{"params": [p], "lr_scale": 0.5}], lr=1.0)
    p.grad = torch.ones(2, 2)
    opt.param_groups[0]["lr"] = 0.2  # what a schedule does
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((2, 2), -0.1))


# ----------------------------------------------------------------------------- schedules

def sched(name, **kw):
    return lmzoo.create("lr_schedule", name, **kw)


def test_cosine_matches_cs336_test_points():
    s = sched("cosine", warmup_steps=7, min_lr_ratio=0.1, cosine_steps=21, max_lr=1.0, total_steps=25)
    expected = [0, 0.14285714285714285, 0.2857142857142857, 0.42857142857142855, 0.5714285714285714,
                0.7142857142857143, 0.8571428571428571, 1.0, 0.9887175604818206, 0.9554359905560885,
                0.9018241671106134, 0.8305704108364301, 0.7452476826029011, 0.6501344202803414, 0.55,
                0.44986557971965857, 0.3547523173970989, 0.26942958916356996, 0.19817583288938662,
                0.14456400944391146, 0.11128243951817937, 0.1, 0.1, 0.1, 0.1]
    assert [s(t) for t in range(25)] == pytest.approx(expected, abs=1e-12)
    # without cosine_steps the cosine ends at total_steps; warmup_fraction sets the warmup
    s = sched("cosine", warmup_fraction=0.1, min_lr_ratio=0.0, max_lr=2.0, total_steps=100)
    assert s.warmup == 10 and s(5) == pytest.approx(1.0) and s(55) == pytest.approx(1.0) and s(100) == 0.0
    with pytest.raises(ValueError, match="cosine_steps"):
        sched("cosine", warmup_steps=50, cosine_steps=10, max_lr=1.0, total_steps=100)


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_values(shape):
    s = sched("wsd", warmup_steps=10, decay_fraction=0.25, decay_shape=shape, min_lr_ratio=0.1,
              max_lr=1.0, total_steps=100)
    assert s(0) == 0 and s(5) == pytest.approx(0.5)
    assert all(s(t) == 1.0 for t in range(10, 76))  # stable until the decay starts at step 75
    p = (90 - 75) / 25
    ref = {"linear": 1 - 0.9 * p, "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)),
           "1-sqrt": 0.1 + 0.9 * (1 - math.sqrt(p))}[shape]
    assert s(90) == pytest.approx(ref)
    assert s(100) == pytest.approx(0.1) and s(150) == pytest.approx(0.1)
    assert all(s(t) >= s(t + 1) for t in range(75, 110))


def test_constant():
    s = sched("constant", warmup_steps=4, max_lr=0.3, total_steps=10)
    assert [s(t) for t in range(6)] == pytest.approx([0, 0.075, 0.15, 0.225, 0.3, 0.3])
    assert sched("constant", max_lr=0.3, total_steps=10)(0) == 0.3


def test_muon_batches_same_shape_matrices_and_runs_in_bfloat16():
    """orthogonalise_all stacks matrices of one shape (either orientation) into one iteration:
    the same result as one newton_schulz call each; ns_dtype=bfloat16 stays close to float32."""
    from lmzoo.plugins.optimizers.optim import orthogonalise_all

    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(16, 16, generator=g), torch.randn(32, 16, generator=g), torch.randn(16, 32, generator=g),
             torch.randn(16, 16, generator=g), torch.randn(8, 24, generator=g)]
    for grad, out in zip(grads, orthogonalise_all(grads, 5, None)):
        assert out.shape == grad.shape and out.dtype == grad.dtype
        torch.testing.assert_close(out, newton_schulz(grad), atol=1e-6, rtol=1e-5)
    for grad, out in zip(grads, orthogonalise_all(grads, 5, torch.bfloat16)):
        assert out.dtype == torch.float32
        assert (out - newton_schulz(grad)).norm() / newton_schulz(grad).norm() < 0.05
    hidden = torch.nn.Parameter(torch.randn(8, 8))
    hidden.grad = torch.randn(8, 8)
    before = hidden.detach().clone()
    make_opt("muon", [("layers.0.attn.q_proj.weight", hidden)], lr=0.02, ns_dtype="bfloat16").step()
    s = torch.linalg.svdvals(hidden.detach() - before)
    assert (s > 0.5 * 0.02).all() and (s < 1.3 * 0.02).all()
    with pytest.raises(ValueError, match="ns_dtype"):
        from lmzoo.plugins.optimizers.optim import Muon

        Muon([hidden], ns_dtype="float16")
