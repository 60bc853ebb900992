"""Explicit attention masks and document masking, against independent references: a float64
per-query loop for the kernels, running each document on its own for the model, the full
forward for the KV cache."""
import math

import pytest
import torch
from lmzoo.plugins.attention.causal import document_ids, document_positions, naive_attention, sdpa_attention

import lmzoo
from lmzoo.layers import KVCache
from lmzoo.sampling import sample

POSITIONS = [e.name for e in lmzoo.components("position")]
RELATIVE = {"rope", "alibi", "none"}  # encodings for which only the offset between tokens matters
EOS = 0


def reference_attention(q, k, v, mask, bias=None):
    """softmax over the allowed keys of each query, one query at a time, in float64; a query
    allowed no key gives zeros."""
    T, S = q.shape[-2], k.shape[-2]
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], mask.shape[:-2],
                                  bias.shape[:-2] if bias is not None else ())
    q, k, v = (t.double().expand(*lead, *t.shape[-2:]) for t in (q, k, v))
    mask = mask.expand(*lead, T, S)
    bias = bias.double().expand(*lead, T, S) if bias is not None else torch.zeros(*lead, T, S, dtype=torch.float64)
    out = torch.zeros(*lead, T, v.shape[-1], dtype=torch.float64)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in lead]) if lead else [()]:
        idx = tuple(idx.tolist()) if lead and len(lead) > 1 else ((int(idx),) if lead else ())
        for i in range(T):
            keys = [j for j in range(S) if mask[idx + (i, j)]]
            if not keys:
                continue
            s = torch.stack([q[idx + (i,)] @ k[idx + (j,)] / math.sqrt(q.shape[-1]) + bias[idx + (i, j)] for j in keys])
            out[idx + (i,)] = (s.softmax(0)[:, None] * v[idx][keys]).sum(0)
    return out


@pytest.mark.parametrize("shape", [((5, 8), (6, 8), (5, 6)), ((2, 3, 4, 8), (2, 3, 7, 8), (2, 1, 4, 7)),
                                   ((2, 2, 3, 4, 8), (2, 2, 3, 4, 8), (4, 4))])
@pytest.mark.parametrize("with_bias", [False, True])
def test_kernels_take_any_boolean_mask(shape, with_bias):
    """Both kernels on plain (..., T, d) tensors with a broadcastable mask equal the reference,
    including a query that may attend to nothing; the gradients of the two kernels agree."""
    torch.manual_seed(0)
    qs, ks, ms = shape
    q, k, v = torch.randn(qs, requires_grad=True), torch.randn(ks, requires_grad=True), torch.randn(ks, requires_grad=True)
    mask = torch.rand(ms) < 0.6
    mask[..., 0, :] = False  # the first query sees nothing
    bias = -torch.rand(ms) * 2 if with_bias else None
    want = reference_attention(q, k, v, mask, bias)
    y1, y2 = naive_attention(q, k, v, bias, mask), sdpa_attention(q, k, v, bias, mask)
    torch.testing.assert_close(y1.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y2.double(), want, atol=1e-5, rtol=1e-5)
    assert (y1[..., 0, :] == 0).all()
    g1 = torch.autograd.grad(y1.square().sum(), (q, k, v))
    g2 = torch.autograd.grad(y2.square().sum(), (q, k, v))
    for a, b in zip(g1, g2):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_a_given_mask_replaces_the_causal_one():
    """With an all-True mask a query sees later keys too; with no mask the kernels stay causal."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(6, 8) for _ in range(3))
    full = torch.ones(6, 6, dtype=torch.bool)
    for kernel in (naive_attention, sdpa_attention):
        torch.testing.assert_close(kernel(q, k, v, None, full).double(), reference_attention(q, k, v, full),
                                   atol=1e-5, rtol=1e-5)
        causal = reference_attention(q, k, v, torch.ones(6, 6, dtype=torch.bool).tril())
        torch.testing.assert_close(kernel(q, k, v).double(), causal, atol=1e-5, rtol=1e-5)


def test_document_ids_and_positions():
    idx = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, EOS, 4], [EOS, 1, 2, 3, 4, 5, 6, 7, 8]])
    docs = document_ids(idx, EOS)
    assert docs.tolist() == [[0, 0, 1, 1, 1, 1, 2, 3, 3], [1, 1, 1, 1, 1, 1, 1, 1, 1]]
    assert document_positions(docs).tolist() == [[0, 1, 0, 1, 2, 3, 0, 0, 1], list(range(9))]
    # continuing after cached tokens: numbering goes on from the last cached document
    assert document_ids(torch.tensor([[3, EOS, 2]]), EOS, previous=docs[:1]).tolist() == [[3, 4, 4]]


def tiny(position="rope", kernel="sdpa", mask="document", reset=False, seed=0, **kw):
    torch.manual_seed(seed)
    spec = {"vocab_size": 40, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64,
            "max_seq_len": 64, "position": {"name": position},
            "attention": {"name": "causal", "kernel": kernel, "mask": mask, "position_reset": reset}, **kw}
    return lmzoo.build_model(spec, eos_id=EOS).eval()


def packed(seed=0):
    """Two rows of packed documents (an eos opens each next document) and their pieces."""
    g = torch.Generator().manual_seed(seed)
    pieces = [[torch.randint(1, 40, (n,), generator=g).tolist() for n in lens] for lens in ((5, 7, 4), (9, 2, 5))]
    rows = [p[0] + [EOS] + p[1] + [EOS] + p[2] for p in pieces]
    segments = [[p[0], [EOS] + p[1], [EOS] + p[2]] for p in pieces]
    return torch.tensor(rows), segments


@pytest.mark.parametrize("kernels", ["torch", "scratch"])
@pytest.mark.parametrize("kernel", ["sdpa", "naive"])
@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("position", POSITIONS)
def test_document_masking_equals_running_each_document_alone(position, reset, kernel, kernels):
    """A packed window with mask=document gives every document the logits it gets on its own:
    for relative encodings always, for absolute ones when positions restart per document."""
    model = tiny(position, kernel, reset=reset, kernels=kernels)
    x, segments = packed()
    with torch.no_grad():
        got = model(x)
        for row, segs in enumerate(segments):
            start = 0
            for seg in segs:
                alone = model(torch.tensor([seg]))[0]
                same = torch.allclose(got[row, start:start + len(seg)], alone, atol=2e-5)
                if reset or position in RELATIVE or start == 0:
                    assert same, (position, reset, row, start)
                else:  # absolute positions carry on from the window start: not the document on its own
                    assert not same
                start += len(seg)


@pytest.mark.parametrize("position", ["rope", "alibi", "learned"])
def test_causal_masking_does_see_earlier_documents(position):
    model = tiny(position, mask="causal")
    x, segments = packed()
    with torch.no_grad():
        got = model(x)
        alone = model(torch.tensor([segments[0][1]]))[0]
    assert not torch.allclose(got[0, 5:13], alone, atol=1e-3)


@pytest.mark.parametrize("position", POSITIONS)
def test_naive_and_sdpa_agree_with_document_masks(position):
    x, _ = packed(1)
    for reset in (False, True):
        a, b = tiny(position, "naive", reset=reset, seed=3), tiny(position, "sdpa", reset=reset, seed=3)
        with torch.no_grad():
            torch.testing.assert_close(a(x), b(x), atol=2e-5, rtol=1e-5)


def test_position_reset_with_causal_mask_restarts_positions():
    """position_reset alone: still attends across documents, but positions restart (learned table:
    the eos token gets position 0's embedding)."""
    model = tiny("learned", mask="causal", reset=True)
    x, _ = packed()
    calls, embed = [], model.position.embed
    model.position.embed = lambda h, positions: calls.append(positions) or embed(h, positions)
    with torch.no_grad():
        got = model(x)
        second = model(x[:, 5:])  # the second document without the first: different, as it attends back
    assert calls[0][0].tolist() == [0, 1, 2, 3, 4] + list(range(8)) + list(range(5))
    assert calls[0][1].tolist() == list(range(9)) + list(range(3)) + list(range(6))
    assert not torch.allclose(got[0, 5:], second[0], atol=1e-3)


@pytest.mark.parametrize("kernel", ["sdpa", "naive"])
@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("position", POSITIONS)
def test_kv_cache_with_documents_equals_full_forward(position, reset, kernel):
    """Decoding token by token through the cache across eos tokens (documents opened both in the
    prompt and while decoding) gives the logits of one full forward."""
    model = tiny(position, kernel, reset=reset)
    x, _ = packed()
    with torch.no_grad():
        want = model(x)[:, 3:]
        cache = [KVCache() for _ in model.layers]
        got = [model(x[:, :4], torch.arange(4), cache=cache)[:, -1]]
        for t in range(4, x.shape[1]):
            got.append(model(x[:, t:t + 1], torch.tensor([t]), cache=cache)[:, -1])
    torch.testing.assert_close(torch.stack(got, 1), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["rope", "alibi", "learned", "sinusoidal"])
def test_sampler_a_generated_eos_starts_a_new_document(position):
    """The KV-cache sampler and the full recompute draw the same tokens through generated eos
    tokens, and after an eos the model conditions on nothing before it."""
    model = tiny(position, reset=True, seed=1)
    with torch.no_grad():  # make eos likely, so it is generated mid-sequence
        model.lm_head.weight[EOS] += 0.5 * model.lm_head.weight.mean(0)
        model.lm_head.weight[EOS] *= 3
    prompts = [[3, 4, 5], [6, 7, 8, 9]]
    a = sample(model, prompts, 30, seed=2, temperature=1.0, cache=True)
    assert a == sample(model, prompts, 30, seed=2, temperature=1.0, cache=False)
    seq = prompts[0] + a[0]
    assert EOS in a[0], "the test needs an eos in the sample"
    cut = len(prompts[0]) + a[0].index(EOS)
    with torch.no_grad():
        after = model(torch.tensor([seq]))[0, cut:]
        alone = model(torch.tensor([seq[cut:]]))[0]
    torch.testing.assert_close(after, alone, atol=2e-5, rtol=1e-5)


def test_document_masking_without_an_eos_id_is_a_clear_error():
    torch.manual_seed(0)
    model = lmzoo.build_model({"vocab_size": 40, "d_model": 32, "n_layers": 1, "n_heads": 4, "d_ff": 64,
                               "attention": {"name": "causal", "mask": "document"}})
    with pytest.raises(ValueError, match="eos_id"):
        model(torch.randint(0, 40, (1, 5)))
