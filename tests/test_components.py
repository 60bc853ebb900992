"""Model components against independent references: complex-number RoPE, the ALiBi
paper's slopes, explicit per-head attention, norm / FFN formulas, the init rule."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lmzoo.plugins.attention.causal import naive_attention, sdpa_attention
from lmzoo.plugins.positions.encodings import alibi_slopes

import lmzoo
from lmzoo.hooks import problems

MINE = ("positions", "attention", "norms", "ffn", "optimizers", "schedules")


def test_plugins_load_and_create():
    broken = [p.plugin for p in problems() if p.plugin.split(":")[-1] in MINE]
    assert broken == []
    rope = lmzoo.create("position", "rope", theta=1e4, d_model=64, n_heads=4, head_dim=16, max_seq_len=128)
    assert rope.theta == 1e4 and rope.inv_freq.shape == (8,)
    for kind, names in dict(position={"rope", "alibi", "learned", "sinusoidal", "none"}, attention={"causal"},
                            norm={"rmsnorm", "layernorm"}, ffn={"swiglu", "gelu", "relu2"}).items():
        assert names <= {e.name for e in lmzoo.components(kind)}


def test_bad_param_is_a_clear_error():
    with pytest.raises(Exception, match="theta"):
        lmzoo.create("position", "rope", theta=-1.0, d_model=64, n_heads=4, head_dim=16, max_seq_len=128)
    with pytest.raises(ValueError, match="even head_dim"):
        lmzoo.create("position", "rope", d_model=12, n_heads=4, head_dim=3, max_seq_len=8)


# ----------------------------------------------------------------------------- RoPE

def rope(head_dim=16, theta=10000.0):
    return lmzoo.create("position", "rope", theta=theta, d_model=4 * head_dim, n_heads=4, head_dim=head_dim,
                        max_seq_len=64)


def rope_complex(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Reference: pairs (x[2k], x[2k+1]) as complex numbers times e^{i pos theta^(-2k/d)}."""
    d = x.shape[-1]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    k = torch.arange(d // 2, dtype=torch.float64)
    angle = positions.double()[..., None] * theta ** (-2 * k / d)
    return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).reshape(x.shape)


def test_rope_matches_complex_formula():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 2, 10, 16)
    pos = torch.arange(3, 13)
    rq, rk = rope(theta=500.0).rotate(q, k, pos)
    torch.testing.assert_close(rq.double(), rope_complex(q, pos, 500.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rk.double(), rope_complex(k, pos, 500.0), atol=1e-5, rtol=1e-5)
    # batched positions (B, T): each row rotated by its own positions
    bpos = torch.stack([torch.arange(10), torch.arange(100, 110)])
    bq, _ = rope().rotate(q, k, bpos)
    for b in range(2):
        torch.testing.assert_close(bq[b].double(), rope_complex(q[b], bpos[b], 10000.0), atol=1e-4, rtol=1e-5)
    # rotation keeps the norm; position 0 is the identity
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-5, rtol=1e-5)
    q0, _ = rope().rotate(q, k, torch.zeros(10, dtype=torch.long))
    torch.testing.assert_close(q0, q)


def test_rope_relative_position_property():
    torch.manual_seed(1)
    enc = rope()
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        rq, _ = enc.rotate(q, q, torch.tensor([m]))
        rk, _ = enc.rotate(k, k, torch.tensor([n]))
        return (rq * rk).sum().item()

    for offset in (0, 3, 17):
        ref = score(5 + offset, 5)
        for shift in (0, 11, 40):
            assert score(5 + offset + shift, 5 + shift) == pytest.approx(ref, abs=1e-4)
    assert score(8, 5) != pytest.approx(score(9, 5), abs=1e-3)  # but it does depend on the offset


# ----------------------------------------------------------------------------- ALiBi

def reference_get_slopes(n):
    """The ALiBi reference implementation (Press et al., attention_with_linear_biases)."""
    def get_slopes_power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio ** i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (get_slopes_power_of_2(closest_power_of_2)
            + reference_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])


def test_alibi_slopes():
    assert alibi_slopes(8) == pytest.approx([1 / 2 ** i for i in range(1, 9)])  # the paper's 8-head slopes
    assert alibi_slopes(6) == pytest.approx([0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125])
    for n in (1, 2, 3, 5, 6, 12, 16, 20, 24):
        assert alibi_slopes(n) == pytest.approx(reference_get_slopes(n), rel=1e-12)
    assert alibi_slopes(4, max_bias=4.0) == pytest.approx([2 ** -1, 2 ** -2, 2 ** -3, 2 ** -4])


def test_alibi_bias_values():
    enc = lmzoo.create("position", "alibi", d_model=48, n_heads=6, head_dim=8, max_seq_len=16)
    pos = torch.arange(5)
    b = enc.bias(6, pos, pos)
    assert b.shape == (6, 5, 5)
    slopes = reference_get_slopes(6)
    for h in range(6):
        for i in range(5):
            for j in range(i + 1):
                assert b[h, i, j].item() == pytest.approx(-slopes[h] * (i - j))
    assert enc.bias(6, torch.stack([pos, pos + 7]), torch.stack([pos, pos + 7])).shape == (2, 6, 5, 5)


# ----------------------------------------------------------------------------- attention

def attn(kernel="sdpa", n_heads=4, n_kv_heads=None, position=None, d_model=32):
    return lmzoo.create("attention", "causal", kernel=kernel, d_model=d_model, n_heads=n_heads,
                        n_kv_heads=n_kv_heads, position=position)


def reference_attention(x, a, positions, enc):
    """Per-head loop in float64: softmax(q_h k_g^T / sqrt(d) + bias_h + mask) v_g, g = h // group."""
    B, T, _ = x.shape
    H, Hkv, hd = a.n_heads, a.n_kv_heads, a.head_dim
    q = (x @ a.q_proj.weight.T).view(B, T, H, hd).transpose(1, 2)
    k = (x @ a.k_proj.weight.T).view(B, T, Hkv, hd).transpose(1, 2)
    v = (x @ a.v_proj.weight.T).view(B, T, Hkv, hd).transpose(1, 2)
    q, k = enc.rotate(q, k, positions)
    bias = enc.bias(H, positions, positions)
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    heads = []
    for h in range(H):
        g = h // (H // Hkv)
        s = q[:, h].double() @ k[:, g].double().transpose(-2, -1) / math.sqrt(hd) + mask
        if bias is not None:
            s = s + bias[h].double()
        heads.append(s.softmax(-1) @ v[:, g].double())
    y = torch.stack(heads, 1).transpose(1, 2).reshape(B, T, H * hd)
    return y @ a.output_proj.weight.T.double()


@pytest.mark.parametrize("pos_name", ["none", "rope", "alibi"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("kernel", ["naive", "sdpa"])
def test_attention_matches_per_head_reference(kernel, n_kv_heads, pos_name):
    torch.manual_seed(2)
    enc = lmzoo.create("position", pos_name, d_model=32, n_heads=4, head_dim=8, max_seq_len=64)
    a = attn(kernel, 4, n_kv_heads, enc)
    assert a.k_proj.weight.shape == (n_kv_heads * 8, 32)
    x = torch.randn(2, 7, 32)
    pos = torch.arange(7)
    torch.testing.assert_close(a(x, pos).double(), reference_attention(x, a, pos, enc), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("with_bias", [False, True])
def test_naive_equals_sdpa(with_bias):
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))
    bias = -torch.rand(4, 9, 9) * 3 if with_bias else None
    y1, y2 = naive_attention(q, k, v, bias), sdpa_attention(q, k, v, bias)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    g1 = torch.autograd.grad(y1.square().sum(), (q, k, v))
    g2 = torch.autograd.grad(y2.square().sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(4)
    enc = lmzoo.create("position", "rope", d_model=32, n_heads=4, head_dim=8, max_seq_len=64)
    gqa, mha = attn("sdpa", 4, 2, enc), attn("naive", 4, 4, enc)
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.output_proj.weight.copy_(gqa.output_proj.weight)
        for name in ("k_proj", "v_proj"):  # kv head g serves query heads 2g, 2g+1
            w = getattr(gqa, name).weight.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
            getattr(mha, name).weight.copy_(w)
    x = torch.randn(3, 6, 32)
    torch.testing.assert_close(gqa(x, torch.arange(6)), mha(x, torch.arange(6)), atol=1e-5, rtol=1e-5)


def test_attention_is_causal():
    torch.manual_seed(5)
    a = attn()
    x = torch.randn(1, 8, 32)
    x2 = x.clone()
    x2[:, 5:] += 1.0
    y, y2 = a(x), a(x2)
    torch.testing.assert_close(y[:, :5], y2[:, :5])
    assert not torch.allclose(y[:, 5:], y2[:, 5:])


# ----------------------------------------------------------------------------- absolute positions

def test_learned_and_sinusoidal():
    learned = lmzoo.create("position", "learned", d_model=8, n_heads=2, head_dim=4, max_seq_len=10)
    x = torch.zeros(2, 4, 8)
    torch.testing.assert_close(learned.embed(x, torch.arange(4)), learned.weight[:4].expand(2, 4, 8))
    with pytest.raises(ValueError, match="max_seq_len=10"):
        learned.embed(torch.zeros(1, 11, 8), torch.arange(11))
    sin = lmzoo.create("position", "sinusoidal", d_model=8, n_heads=2, head_dim=4, max_seq_len=10)
    pe = sin.embed(torch.zeros(1, 50, 8), torch.arange(50))[0]
    for p in (0, 7, 49):
        for i in range(4):
            w = 10000 ** (-2 * i / 8)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(p * w), abs=1e-5)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p * w), abs=1e-5)
    none = lmzoo.create("position", "none", d_model=8, n_heads=2, head_dim=4, max_seq_len=10)
    q = torch.randn(1, 2, 3, 4)
    assert none.embed(x, torch.arange(4)) is x and none.rotate(q, q, torch.arange(3))[0] is q
    assert none.bias(2, torch.arange(3), torch.arange(3)) is None


# ----------------------------------------------------------------------------- norms and FFNs

def test_rmsnorm_formula_and_dtype():
    torch.manual_seed(6)
    norm = lmzoo.create("norm", "rmsnorm", eps=1e-5, d_model=16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16) + 0.5)
    x = torch.randn(3, 5, 16) * 4
    ref = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), ref)
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.02)
    ln = lmzoo.create("norm", "layernorm", d_model=16)
    ref = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(ln(x), ref, atol=1e-5, rtol=1e-5)
    assert [n for n, _ in ln.named_parameters()] == ["weight"]  # no bias


def test_ffn_formulas():
    torch.manual_seed(7)
    x = torch.randn(2, 3, 16)
    sw = lmzoo.create("ffn", "swiglu", d_model=16, d_ff=40)
    a, b = x @ sw.w1.weight.T, x @ sw.w3.weight.T
    torch.testing.assert_close(sw(x), (a * torch.sigmoid(a) * b) @ sw.w2.weight.T)
    assert (sw.w1.weight.shape, sw.w2.weight.shape, sw.w3.weight.shape) == ((40, 16), (16, 40), (40, 16))
    ge = lmzoo.create("ffn", "gelu", d_model=16, d_ff=40)
    h = x @ ge.w1.weight.T
    torch.testing.assert_close(ge(x), (0.5 * h * (1 + torch.erf(h / math.sqrt(2)))) @ ge.w2.weight.T)
    r2 = lmzoo.create("ffn", "relu2", d_model=16, d_ff=40)
    h = x @ r2.w1.weight.T
    torch.testing.assert_close(r2(x), (h.clamp(min=0) ** 2) @ r2.w2.weight.T)
    assert sorted(n for n, _ in r2.named_parameters()) == ["w1.weight", "w2.weight"]


def test_init_rule():
    torch.manual_seed(8)
    from lmzoo.layers import Embedding, Linear

    lin = Linear(300, 500)
    std = math.sqrt(2 / 800)
    assert lin.weight.abs().max().item() <= 3 * std + 1e-6
    assert lin.weight.std().item() == pytest.approx(std * 0.986, rel=0.03)  # truncation at 3 sigma: x0.986
    emb = Embedding(1000, 64)
    assert emb.weight.abs().max().item() <= 3.0
    assert emb.weight.std().item() == pytest.approx(0.986, rel=0.03)
    assert F.linear(torch.ones(1, 300), lin.weight).shape == (1, 500)
