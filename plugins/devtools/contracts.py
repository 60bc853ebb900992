"""The component contracts: a pytest module parametrized over `lmzoo.components(kind)`, so every
registered component - built-in or third-party - is tested for free.

    python -m pytest --pyargs lmzoo.plugins.devtools.contracts      # every component
    lmzoo check-plugin my_alibi.py                                  # the components of one file

With LMZOO_CHECK_ORIGIN set (check-plugin sets it), only components registered by that plugin
are checked. Each contract states what the rest of lmzoo relies on:

- position / attention / norm / ffn: built into a small model, the forward has the right
  shapes, every parameter gets a finite gradient, a later token never changes an earlier output
  (causality), the module runs in bfloat16, and (position/attention) decoding through the KV
  cache gives the full forward's logits.
- optimizer: descends a quadratic from its default settings.
- lr_schedule: finite, within [0, max_lr], for every step of a run and past its end.
- tokenizer: decode(encode(text)) == text on varied text; save/load keeps the ids.
- data_source: yields non-empty strings for both splits; a stable fingerprint.
- data_filter: picklable, a stable fingerprint, pure (the same text gives the same result).
"""
from __future__ import annotations

import os
import pickle

import pytest

import lmzoo

ORIGIN = os.environ.get("LMZOO_CHECK_ORIGIN")
SAMPLE_TEXT = ("Hello world! Ünïcödé, 漢字, emoji 🙂 and tabs\tand\nnewlines.  Numbers 12345 and "
               "punctuation: (a) [b] {c} <d> 'e' \"f\" - the end.")


def components(kind: str) -> list:
    """The names to check; a component whose parameters have no defaults cannot be built blind
    and is skipped with the reason."""
    out = []
    for e in lmzoo.components(kind):
        if ORIGIN is not None and e.origin != ORIGIN:
            continue
        required = [f for f, info in e.params.model_fields.items() if info.is_required()]
        out.append(pytest.param(e.name, marks=pytest.mark.skip(reason=f"{kind} {e.name} needs {', '.join(required)}"))
                   if required else e.name)
    return out


def _params(kind):
    names = components(kind)
    return names or [pytest.param(None, marks=pytest.mark.skip(reason=f"no {kind} component to check"))]


# ----------------------------------------------------------------------------- model components

def _model(kind: str, name: str, dtype=None):
    import torch

    torch.manual_seed(0)
    field = {"position": "position", "attention": "attention", "norm": "norm", "ffn": "ffn"}[kind]
    spec = {"vocab_size": 40, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 48,
            "max_seq_len": 64, field: {"name": name}}
    model = lmzoo.build_model(spec)
    return model.to(dtype) if dtype is not None else model


MODEL_KINDS = [(k, n) for k in ("position", "attention", "norm", "ffn") for n in components(k) if isinstance(n, str)] or \
    [pytest.param(None, None, marks=pytest.mark.skip(reason="no model component to check"))]


@pytest.mark.parametrize("kind,name", MODEL_KINDS)
def test_model_component_shapes_and_gradients(kind, name):
    import torch

    model = _model(kind, name)
    idx = torch.randint(0, 40, (2, 12))
    logits = model(idx)
    assert logits.shape == (2, 12, 40), f"{kind} {name}: logits have shape {tuple(logits.shape)}"
    logits.float().logsumexp(-1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{kind} {name}: no finite gradient for {pname}"


@pytest.mark.parametrize("kind,name", MODEL_KINDS)
def test_model_component_is_causal(kind, name):
    import torch

    model = _model(kind, name).eval()
    idx = torch.randint(0, 40, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 40  # change every token from position 7 on
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-5), f"{kind} {name}: a later token changed an earlier output"
    assert not torch.allclose(a[:, 7:], b[:, 7:]), f"{kind} {name}: the changed tokens changed nothing"


@pytest.mark.parametrize("kind,name", MODEL_KINDS)
def test_model_component_runs_in_bfloat16(kind, name):
    import torch

    model = _model(kind, name, torch.bfloat16).eval()
    with torch.no_grad():
        logits = model(torch.randint(0, 40, (2, 8)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all(), f"{kind} {name} in bfloat16"


CACHE_KINDS = [(k, n) for k in ("position", "attention") for n in components(k) if isinstance(n, str)] or \
    [pytest.param(None, None, marks=pytest.mark.skip(reason="no position/attention component to check"))]


@pytest.mark.parametrize("kind,name", CACHE_KINDS)
def test_kv_cache_decoding_equals_full_forward(kind, name):
    import torch

    from lmzoo.layers import KVCache

    model = _model(kind, name).eval()
    x = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        want = model(x)[:, 3:]
        cache = [KVCache() for _ in model.layers]
        got = [model(x[:, :4], torch.arange(4), cache=cache)[:, -1]]
        got += [model(x[:, t:t + 1], torch.tensor([t]), cache=cache)[:, -1] for t in range(4, 10)]
    assert torch.allclose(torch.stack(got, 1), want, atol=1e-4), f"{kind} {name}: cached decoding differs"


# ----------------------------------------------------------------------------- training components

@pytest.mark.parametrize("name", _params("optimizer"))
def test_optimizer_descends_a_quadratic(name):
    import torch

    torch.manual_seed(0)
    target = 0.1 * torch.randn(8, 8)  # a scale every default learning rate can reach in a few hundred steps
    w = torch.nn.Parameter(torch.zeros(8, 8))
    b = torch.nn.Parameter(torch.zeros(8))
    opt = lmzoo.create("optimizer", name, params=[("layers.0.ffn.w1.weight", w), ("layers.0.ln1.weight", b)])
    loss = lambda: ((w - target) ** 2).mean() + ((b - 0.1) ** 2).mean()  # noqa: E731
    start = loss().item()
    for _ in range(300):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.7 * start, f"optimizer {name}: loss {start:.4f} -> {loss().item():.4f} in 300 steps"


@pytest.mark.parametrize("name", _params("lr_schedule"))
def test_schedule_stays_in_range(name):
    import math

    sched = lmzoo.create("lr_schedule", name, max_lr=2.0, total_steps=100)
    values = [sched(t) for t in range(150)]
    assert all(math.isfinite(v) and -1e-12 <= v <= 2.0 + 1e-12 for v in values), f"lr_schedule {name}: {values}"
    assert max(values) > 0, f"lr_schedule {name} never rises above 0"


# ----------------------------------------------------------------------------- data components

def _trained_tokenizer(name: str):
    tok = lmzoo.create("tokenizer", name)
    if getattr(tok, "needs_training", False):
        tok.train([SAMPLE_TEXT * 3, "more text to learn from, with words and more words."] * 20)
    return tok


@pytest.mark.parametrize("name", _params("tokenizer"))
def test_tokenizer_round_trip_and_save_load(name, tmp_path):
    tok = _trained_tokenizer(name)
    ids = tok.encode(SAMPLE_TEXT)
    assert all(0 <= i < tok.vocab_size for i in ids), f"tokenizer {name}: ids outside [0, vocab_size)"
    assert tok.decode(ids) == SAMPLE_TEXT, f"tokenizer {name}: decode(encode(text)) != text"
    tok.save(tmp_path / "tok")
    again = type(tok).load(tmp_path / "tok")
    assert again.encode(SAMPLE_TEXT) == ids and again.fingerprint() == tok.fingerprint()


@pytest.mark.parametrize("name", _params("data_source"))
def test_data_source_yields_text_with_a_stable_fingerprint(name):
    src = lmzoo.create("data_source", name)
    for split in ("train", "val"):
        docs = [d for _, d in zip(range(5), src.documents(split))]
        assert docs and all(isinstance(d, str) and d for d in docs), f"data_source {name}: {split} split"
    assert src.fingerprint() == lmzoo.create("data_source", name).fingerprint()


@pytest.mark.parametrize("name", _params("data_filter"))
def test_data_filter_is_picklable_pure_and_fingerprinted(name):
    from lmzoo.data import component_fingerprint

    f = lmzoo.create("data_filter", name)
    clone = pickle.loads(pickle.dumps(f))
    assert component_fingerprint(clone) == component_fingerprint(f) == \
        component_fingerprint(lmzoo.create("data_filter", name)), f"data_filter {name}: unstable fingerprint"
    apply = getattr(f, "apply", None)
    if callable(apply) and not getattr(f, "two_pass", False):  # the one-document call (dedup sees a corpus)
        text = "<p>Some text. Some more text here, written by a person for people to read.</p>\n" * 3
        assert repr(apply(text)) == repr(apply(text)) == repr(clone.apply(text)), f"data_filter {name}: not pure"
