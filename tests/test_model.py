"""The assembled Transformer: CS336 names and shapes, hand-counted params and FLOPs,
training on a toy sequence, activation checkpointing, weight tying, every position kind."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmzoo
from lmzoo.model import Transformer, build_model

SMALL = dict(vocab_size=100, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=64)


def make(**kw):
    torch.manual_seed(kw.pop("seed", 0))
    return build_model({**SMALL, **kw})


def test_cs336_parameter_names_and_shapes():
    m = make()
    expected = {"token_embeddings.weight": (100, 64), "ln_final.weight": (64,), "lm_head.weight": (100, 64)}
    for i in range(2):
        for p in ("q_proj", "k_proj", "v_proj", "output_proj"):
            expected[f"layers.{i}.attn.{p}.weight"] = (64, 64)
        expected[f"layers.{i}.ln1.weight"] = (64,)
        expected[f"layers.{i}.ln2.weight"] = (64,)
        expected[f"layers.{i}.ffn.w1.weight"] = (128, 64)
        expected[f"layers.{i}.ffn.w2.weight"] = (64, 128)
        expected[f"layers.{i}.ffn.w3.weight"] = (128, 64)
    got = {n: tuple(t.shape) for n, t in m.state_dict().items()}
    assert got == expected
    assert isinstance(m, Transformer) and m.max_seq_len == 64 and m.config.d_model == 64
    logits = m(torch.randint(0, 100, (3, 10)))
    assert logits.shape == (3, 10, 100)


def test_build_from_recipe_modelspec_and_errors():
    from lmzoo.recipe import ModelSpec

    spec = ModelSpec(vocab_size=30, d_model=32, n_layers=1, n_heads=2, d_ff=48, n_kv_heads=1,
                     position={"name": "alibi", "max_bias": 4.0}, norm={"name": "layernorm"}, ffn={"name": "gelu"})
    m = lmzoo.build_model(spec)
    assert m.config is spec and m.config.position.max_bias == 4.0  # resolved in place, typed
    assert m.layers[0].attn.k_proj.weight.shape == (16, 32)
    assert m.position.max_bias == 4.0 and type(m.layers[0].ln1).__name__ == "LayerNorm"
    assert m(torch.randint(0, 30, (1, 5))).shape == (1, 5, 30)
    with pytest.raises(ValueError, match="vocab_size is None"):
        build_model(ModelSpec())
    with pytest.raises(Exception, match="nope"):
        build_model({**SMALL, "position": {"name": "nope"}})


def test_num_params_by_hand():
    V, d, L, dff = 100, 64, 2, 128
    per_layer = 4 * d * d + 3 * d * dff + 2 * d
    m = make()
    assert m.num_params() == V * d + L * per_layer + d + V * d == 95040
    assert m.num_params(embeddings=False) == L * per_layer + d + V * d == 88640
    # GQA: k and v shrink to n_kv_heads * head_dim rows
    g = make(n_kv_heads=2)
    assert g.num_params() == 95040 - L * 2 * (64 - 32) * 64
    # tied: one matrix, counted once, and it is an embedding
    t = make(tie_embeddings=True)
    assert t.num_params() == 95040 - V * d
    assert t.num_params(embeddings=False) == 88640 - V * d
    # the learned position table is an embedding too
    lp = make(position={"name": "learned"})
    assert lp.num_params() == 95040 + 64 * d and lp.num_params(embeddings=False) == 88640


def test_flops_per_token_by_hand():
    m = make()
    T = 16
    proj, scores, ffn, head = 2 * 4 * 64 * 64, 2 * 2 * T * 64, 2 * 3 * 64 * 128, 2 * 100 * 64
    parts = m.flops_breakdown(T)
    assert parts == dict(attn_proj=2 * proj, attn_scores=2 * scores, ffn=2 * ffn, lm_head=head,
                         total=2 * (proj + scores + ffn) + head)
    assert m.flops_per_token(T) == 3 * (2 * (proj + scores + ffn) + head) == 554496
    assert m.flops_per_token(T, exact=False) == 6 * 88640 + 6 * 2 * T * 64 == 544128
    assert make(ffn={"name": "gelu"}).flops_breakdown(T)["ffn"] == 2 * 2 * 2 * 64 * 128


def train(m, opt_name, steps=30, **opt_params):
    entry = lmzoo.hooks.get_registry().get("optimizer", opt_name)
    params = entry.params.model_validate(opt_params).model_dump()
    opt = entry.load()(**params, params=m.named_parameters())
    seq = torch.tensor([[1, 5, 2, 7, 3, 1, 5, 2, 7, 3, 1, 5, 2, 7, 3, 1, 5]])
    x, y = seq[:, :-1], seq[:, 1:]
    losses = []
    m.train()
    for _ in range(steps):
        loss = F.cross_entropy(m(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("opt", [("adamw", dict(lr=1e-2)), ("sgd", dict(lr=0.1, momentum=0.9)),
                                 ("muon", dict(lr=0.02, adamw_lr=1e-2)), ("lion", dict(lr=1e-3)),
                                 ("torch-adamw", dict(lr=1e-2))])
def test_training_reduces_loss(opt):
    name, params = opt
    losses = train(make(vocab_size=16, d_model=32, d_ff=64), name, **params)
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.parametrize("mode", ["all", "every_other", "attention"])
def test_checkpointing_gives_the_same_gradients(mode):
    x = torch.randint(0, 100, (2, 12))

    def grads(mode):
        m = make(n_layers=3, seed=3)
        m.set_checkpointing(mode)
        m.train()
        m(x).logsumexp(-1).mean().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    ref, got = grads("none"), grads(mode)
    assert ref.keys() == got.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=1e-6, rtol=1e-5, msg=n)
    with pytest.raises(ValueError, match="checkpoint_activations"):
        make().set_checkpointing("some")


def test_weight_tying_shares_storage():
    m = make(tie_embeddings=True)
    assert m.lm_head.weight is m.token_embeddings.weight
    assert m.lm_head.weight.data_ptr() == m.token_embeddings.weight.data_ptr()
    m(torch.randint(0, 100, (1, 4))).sum().backward()
    assert m.token_embeddings.weight.grad is not None
    assert len(list(m.parameters())) == len(list(make().parameters())) - 1


def test_post_norm_runs():
    m = make(norm_placement="post")
    m.train()
    out = m(torch.randint(0, 100, (2, 8)))
    out.logsumexp(-1).mean().backward()
    assert torch.isfinite(out).all() and m.layers[0].attn.q_proj.weight.grad is not None
    # post-norm: the residual stream leaving a block is normalised (unit RMS with unit gains)
    h = m.token_embeddings(torch.randint(0, 100, (2, 8))) * 5
    y = m.layers[0](h, torch.arange(8))
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(2, 8), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("pos", ["rope", "alibi", "learned", "sinusoidal", "none"])
def test_each_position_kind_end_to_end(pos):
    m = make(position={"name": pos}, n_kv_heads=2, seed=4)
    idx = torch.randint(0, 100, (2, 10))
    logits = m(idx)
    assert logits.shape == (2, 10, 100) and torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    with torch.no_grad():
        base = m(idx)
        # explicit positions: default, (T,) and (B, T) agree
        torch.testing.assert_close(m(idx, torch.arange(10)), base)
        torch.testing.assert_close(m(idx, torch.arange(10).expand(2, 10)), base)
        # causal: a later token does not change earlier logits
        idx2 = idx.clone()
        idx2[:, 7] = (idx2[:, 7] + 1) % 100
        torch.testing.assert_close(m(idx2)[:, :7], base[:, :7])
        shifted = m(idx, torch.arange(10) + 20)
    if pos in ("rope", "alibi", "none"):  # relative encodings: a shift of all positions changes nothing
        torch.testing.assert_close(shifted, base, atol=1e-4, rtol=1e-4)
    else:
        assert not torch.allclose(shifted, base, atol=1e-3)


def test_learned_positions_refuse_long_sequences():
    m = make(position={"name": "learned"}, max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        m(torch.zeros(1, 9, dtype=torch.long))
    m2 = make(position={"name": "rope"}, max_seq_len=8)  # rope extrapolates
    assert m2(torch.zeros(1, 9, dtype=torch.long)).shape == (1, 9, 100)
