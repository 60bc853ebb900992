"""FLOP and parameter accounting (lmzoo/accounting.py): a hand count, torch's own FLOP counter,
agreement with the built model, and budgets in FLOPs."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import lmzoo
from lmzoo.accounting import budget_summary, flops_per_token, steps_for_budget
from lmzoo.plugins.scaling.accounting import account

# vocab 10, d 8, 2 layers, 2 query heads sharing 1 kv head (head_dim 4), SwiGLU d_ff 12, context 16


TINY = dict(vocab_size=10, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=12, max_seq_len=32,
            attention={"name": "causal", "kernel": "naive"})


def test_hand_count():
    acc = account(TINY, seq_len=16)
    # per layer: q 8x8, k 4x8, v 4x8, out 8x8 = 192 weights; SwiGLU 3 x 8x12 = 288; two RMSNorms 16
    assert acc.params == 10 * 8 + 2 * (192 + 288 + 16) + 8 + 10 * 8 == 1160
    assert acc.params_nonembedding == 1160 - 80
    fwd = acc.breakdown()
    assert fwd["attn_proj"] == 2 * 2 * 192  # 2 FLOPs per weight per token, 2 layers
    assert fwd["attn_scores"] == 2 * (2 * 16 * 8 + 2 * 16 * 8)  # QK^T and AV, T=16, n_heads*head_dim=8
    assert fwd["ffn"] == 2 * 2 * 288
    assert fwd["lm_head"] == 2 * 10 * 8
    assert fwd["total"] == 768 + 1024 + 1152 + 160 == 3104
    assert acc.flops_per_token == 3 * 3104
    assert acc.six_n == 6 * 1080
    assert acc.kaplan == 6 * 1080 + 6 * 2 * 16 * 8


def test_matches_torch_flop_counter():
    """The training FLOPs per token equal what torch counts for one forward+backward pass."""
    torch.manual_seed(0)
    model = lmzoo.build_model(TINY)
    B, T = 3, 16
    idx = torch.randint(0, 10, (B, T))
    with FlopCounterMode(display=False) as fc:
        logits = model(idx)
        fwd = fc.get_total_flops()
        logits.float().pow(2).mean().backward()
    acc = account(TINY, seq_len=T)
    assert fwd / (B * T) == pytest.approx(acc.forward_flops, rel=1e-9)
    assert fc.get_total_flops() / (B * T) == pytest.approx(acc.flops_per_token, rel=1e-9)


@pytest.mark.parametrize("over", [
    {},
    {"position": {"name": "learned"}},
    {"tie_embeddings": True},
    {"ffn": {"name": "gelu"}, "norm": {"name": "layernorm"}, "n_kv_heads": None},
    {"position": {"name": "alibi"}, "norm_placement": "post", "n_heads": 4, "n_kv_heads": 2},
])
def test_spec_agrees_with_model(over):
    spec = {**TINY, **over}
    model = lmzoo.build_model(spec)
    acc = account(spec, seq_len=24)
    assert acc.params == model.num_params()
    assert acc.params_nonembedding == model.num_params(embeddings=False)
    assert acc.breakdown() == pytest.approx(model.flops_breakdown(24))
    assert flops_per_token(spec, 24) == pytest.approx(model.flops_per_token(24, exact=True))
    assert flops_per_token(spec, 24, exact=False) == pytest.approx(model.flops_per_token(24, exact=False))


def test_large_spec_costs_nothing():
    # a 70B-class shape: counted on the meta device, nothing allocated
    spec = dict(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672)
    acc = account(spec, seq_len=4096)
    per_layer = 8192 * 8192 * 2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    assert acc.params == 2 * 32000 * 8192 + 80 * per_layer + 8192
    assert 68e9 < acc.params < 70e9
    assert 1.0 < acc.flops_per_token / acc.six_n < 1.2


def test_table_lists_every_part():
    from lmzoo.plugins.scaling import accounting_table

    text = accounting_table(account(TINY, seq_len=16))
    for word in ("token_embeddings", "attn_proj", "attn_scores", "ffn", "lm_head", "6N", "non-embedding"):
        assert word in text


def test_budget_in_flops(tmp_path):
    from lmzoo.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("model: {d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64}\n"
                    "data: {context: 16}\ntrain: {batch_size: 4, accumulate: 2, budget: {flops: 1.0e9}}\n")
    recipe = load_recipe(path)
    acc = account(recipe)  # vocab from the byte tokenizer (256 bytes + end-of-document)
    assert acc.vocab_size == 257 and acc.seq_len == 16
    steps = steps_for_budget(recipe)
    assert steps == round(1e9 / (acc.flops_per_token * 4 * 2 * 16))
    b = budget_summary(recipe)
    assert b["flops"] == pytest.approx(1e9, rel=0.5 / steps + 1e-9)
    assert steps_for_budget(recipe, flops_per_token=1e6) == round(1e9 / (1e6 * 128))
    tiny = load_recipe(path, overrides=["train.budget.flops=1e3"])
    with pytest.raises(ValueError, match="train.budget.flops"):
        steps_for_budget(tiny)
    by_tokens = load_recipe(path, overrides=["train.budget={tokens: 1280}"])
    assert steps_for_budget(by_tokens) == 10


def test_show_model_cli(tmp_path):
    from typer.testing import CliRunner

    from lmzoo.cli import build_app

    path = tmp_path / "r.yaml"
    path.write_text("model: {d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64}\ndata: {context: 16}\n")
    res = CliRunner().invoke(build_app(), ["show-model", str(path), "model.n_layers=3"])
    assert res.exit_code == 0, res.output
    assert "attn_scores" in res.output and "n_layers=3" in res.output and "budget:" in res.output
    model = lmzoo.build_model(dict(vocab_size=257, d_model=32, n_layers=3, n_heads=2, d_ff=64))
    assert f"{model.num_params():,} total" in res.output
    assert f"{model.flops_per_token(16):,.0f}" in res.output
    bad = CliRunner().invoke(build_app(), ["show-model", str(path), "model.d_model=33"])
    assert bad.exit_code == 1 and "d_model" in bad.output
