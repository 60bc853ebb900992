"""The one sampler (lmzoo.sampling): the KV cache against a full recompute, for every registered
position encoding and both attention kernels; seeding, greedy decoding, stopping, sliding windows."""
import pytest
import torch

import lmzoo
from lmzoo.layers import KVCache
from lmzoo.sampling import choose, generate, sample

POSITIONS = [e.name for e in lmzoo.components("position")]


def tiny(position="rope", kernel="sdpa", seed=0, **kw):
    torch.manual_seed(seed)
    spec = {"vocab_size": 50, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "max_seq_len": 64,
            "position": {"name": position}, "attention": {"name": "causal", "kernel": kernel}, **kw}
    return lmzoo.build_model(spec).eval()


@pytest.mark.parametrize("kernel", ["sdpa", "naive"])
@pytest.mark.parametrize("position", POSITIONS)
def test_cached_logits_equal_full_forward(position, kernel):
    """Feeding a prefix then one token at a time through the cache gives the full forward's logits."""
    model = tiny(position, kernel, n_kv_heads=2)
    x = torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        want = model(x)[:, 3:]
        cache = [KVCache() for _ in model.layers]
        got = [model(x[:, :4], torch.arange(4), cache=cache)[:, -1]]
        for t in range(4, 12):
            got.append(model(x[:, t:t + 1], torch.tensor([t]), cache=cache)[:, -1])
    assert torch.allclose(torch.stack(got, 1), want, atol=1e-5), position


@pytest.mark.parametrize("position", POSITIONS)
def test_cache_and_recompute_sample_the_same_tokens(position):
    model = tiny(position, norm_placement="post")
    prompts = [[1, 2, 3], [4, 5, 6, 7], [1, 2, 3]]
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_k": 10}, {"temperature": 0.8, "top_p": 0.9}):
        a = sample(model, prompts, 20, seed=5, cache=True, **kw)
        assert a == sample(model, prompts, 20, seed=5, cache=False, **kw), (position, kw)
    # past the window, every step recomputes the window
    a = sample(model, [[1, 2, 3]], 30, temperature=0, window=16, cache=True)
    assert a == sample(model, [[1, 2, 3]], 30, temperature=0, window=16, cache=False), position


def test_seeded_greedy_and_stop():
    model = tiny()
    prompts = [[1, 2], [1, 2, 3], [1, 2]]
    a = sample(model, prompts, 6, seed=1)
    assert a == sample(model, prompts, 6, seed=1) and a != sample(model, prompts, 6, seed=2)
    greedy = sample(model, prompts, 5, temperature=0)
    x = torch.tensor([prompts[1]])
    with torch.no_grad():
        for _ in range(5):
            x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], 1)
    assert greedy[1] == x[0, 3:].tolist() and greedy[0] == greedy[2]
    stop = greedy[1][2]
    assert sample(model, prompts[1:2], 5, temperature=0, stop_id=stop)[0] == greedy[1][:greedy[1].index(stop)]


def test_choose_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(choose(logits, 1.0, top_k=2, generator=g).tolist()) == {2, 3}
    # top_p: probabilities 0.032, 0.087, 0.237, 0.644 -> the smallest set with mass >= 0.8 is {3, 2}
    assert set(choose(logits, 1.0, top_p=0.8, generator=g).tolist()) == {2, 3}
    assert choose(logits[:1], 0.0).tolist() == [3]


def test_generate_text_roundtrip():
    tok = lmzoo.create("tokenizer", "byte")
    torch.manual_seed(0)
    model = lmzoo.build_model({"vocab_size": tok.vocab_size, "d_model": 32, "n_layers": 1, "n_heads": 2,
                               "d_ff": 64}).eval()
    a = generate(model, tok, "ab", 10, seed=3)
    assert a == generate(model, tok, "ab", 10, seed=3) and isinstance(a, str)
