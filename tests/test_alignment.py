"""The alignment stage: response-only log-probs, preference data, sampling, training with a
frozen reference, KL, the `align:` recipe section."""
import json
import math
import random

import pytest
import torch

import lmzoo
from lmzoo.plugins.alignment import section as S
from lmzoo.plugins.alignment import stage as A
from lmzoo.plugins.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


def tiny_model(seed=0, d_model=32, n_layers=1):
    torch.manual_seed(seed)
    return lmzoo.build_model({"vocab_size": TOK.vocab_size, "d_model": d_model, "n_layers": n_layers,
                              "n_heads": 2, "d_ff": 64, "max_seq_len": 64})


# ----------------------------------------------------------------------------- log-probs


def manual_logp(model, prompt: list[int], resp: list[int]) -> float:
    """Σ log p(resp_i | prompt, resp_<i) one sequence at a time, no masking involved."""
    ids = torch.tensor([prompt + resp])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids), -1)[0]  # (T, V)
    return sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(resp))


def test_sequence_logps_counts_response_tokens_only_and_masks_padding():
    model = tiny_model()
    pairs = [A.PreferencePair("To be, or", " not to be", "xq"),
             A.PreferencePair("Hi", " there, friend", "!")]
    ids, mask, lengths = A.encode_pairs(TOK, pairs, max_len=64)
    assert ids.shape[0] == 4 and lengths.tolist() == [10, 14, 2, 1]
    with torch.no_grad():
        got = A.sequence_logps(model, ids, mask)
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    for i, (prompt, resp) in enumerate(rows):
        want = manual_logp(model, TOK.encode(prompt), TOK.encode(resp))
        assert got[i].item() == pytest.approx(want, abs=1e-4), (i, prompt, resp)
    # the padding's token ids are irrelevant: scribble on them
    ids2 = ids.clone()
    ids2[~mask & (torch.arange(ids.shape[1]) >= torch.tensor([len(TOK.encode(p + r)) for p, r in rows])[:, None])] = 99
    assert not torch.equal(ids, ids2)
    with torch.no_grad():
        assert torch.allclose(A.sequence_logps(model, ids2, mask), got, atol=1e-6)


def test_prompt_tokens_do_not_count_but_condition():
    model = tiny_model()
    ids, mask, _ = A.encode_pairs(TOK, [A.PreferencePair("abc", "de", "f")], max_len=64)
    with torch.no_grad():
        full = A.sequence_logps(model, ids, torch.ones_like(mask))  # every token after the first
        resp = A.sequence_logps(model, ids, mask)
        prompt_only = A.sequence_logps(model, ids, ~mask)
    assert full[0].item() == pytest.approx(resp[0].item() + prompt_only[0].item(), abs=1e-5)
    assert resp[0].item() == pytest.approx(manual_logp(model, TOK.encode("abc"), TOK.encode("de")), abs=1e-5)


def test_encode_pairs_truncates_prompt_from_left_and_handles_empty_prompt():
    ids, mask, lengths = A.encode_pairs(TOK, [A.PreferencePair("0123456789", "abcdef", "xyz")], max_len=8)
    assert TOK.decode(ids[0][mask[0]].tolist()) == "abcdef"
    assert TOK.decode(ids[0][~mask[0]].tolist()) == "89"  # end of the prompt kept
    assert TOK.decode(ids[1][: (ids[1] != 0).sum()].tolist()) == "56789xyz"
    ids, mask, _ = A.encode_pairs(TOK, [A.PreferencePair("", "ab", "c")], max_len=8)
    assert ids[0, 0].item() == TOK.eos_id and mask[0].tolist()[:3] == [False, True, True]


# ----------------------------------------------------------------------------- preference data


def write(tmp_path, lines):
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_load_pairs_roundtrip_and_blank_lines(tmp_path):
    pairs = [A.PreferencePair("p1", "good ü", "bad"), A.PreferencePair("", "a", "b")]
    A.save_pairs(pairs, tmp_path / "x.jsonl")
    text = (tmp_path / "x.jsonl").read_text()
    (tmp_path / "x.jsonl").write_text(text.replace("\n", "\n\n", 1))
    assert A.load_pairs(tmp_path / "x.jsonl") == pairs


@pytest.mark.parametrize("bad,match", [
    ('{"prompt": "a", "chosen": "b"', r"pairs.jsonl:2: not valid JSON"),
    ('["a", "b"]', r"pairs.jsonl:2: expected a JSON object"),
    ('{"prompt": "a", "chosen": "b"}', r"pairs.jsonl:2: missing key\(s\) rejected"),
    ('{"prompt": "a", "chosen": 3, "rejected": "c"}', r"pairs.jsonl:2: 'chosen' must be a string"),
    ('{"prompt": "a", "chosen": "", "rejected": "c"}', r"pairs.jsonl:2: 'chosen' is empty"),
    ('{"prompt": "a", "chosen": "c", "rejected": "c"}', r"pairs.jsonl:2: chosen and rejected are identical"),
])
def test_load_pairs_errors_name_file_and_line(tmp_path, bad, match):
    p = write(tmp_path, ['{"prompt": "a", "chosen": "b", "rejected": "c"}', bad])
    with pytest.raises(A.PreferenceDataError, match=match):
        A.load_pairs(p)


def test_load_pairs_missing_and_empty_file(tmp_path):
    with pytest.raises(A.PreferenceDataError, match="not found"):
        A.load_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(A.PreferenceDataError, match="empty"):
        A.load_pairs(tmp_path / "e.jsonl")


def test_preferences_and_pairing():
    c = A.make_preference({"kind": "contains", "word": "Love"})
    assert c.satisfied("my love is") and not c.satisfied("my dove")
    assert A.make_preference({"kind": "contains", "word": "Love", "case_sensitive": True}).satisfied("my love") is False
    av = A.make_preference(S.AvoidSpec(words=["thee", "thou"]))
    assert av.satisfied("you and me") and not av.satisfied("THOU art")
    ml = A.make_preference({"kind": "max_length", "max_chars": 5})
    assert ml.satisfied("abc\ndef") and not ml.satisfied("abcdefgh\n") and not ml.satisfied("abc")
    with pytest.raises(ValueError, match="unknown preference 'contain'"):
        A.make_preference({"kind": "contain", "word": "x"})
    out = A.pairs_from_samples(["p1", "p2", "p3"],
                               [["a love", "b", "c love", "d"], ["love", "love me"], ["x", "y"]],
                               c, pairs_per_prompt=2)
    assert [(p.prompt, p.chosen, p.rejected) for p in out.pairs] == [("p1", "a love", "b"), ("p1", "c love", "d")]
    assert out.prompts_used == 1 and out.satisfaction == pytest.approx(4 / 8)


# ----------------------------------------------------------------------------- sampling and KL


def test_kl_zero_for_identical_and_matches_manual():
    p, q = tiny_model(0), tiny_model(1)
    prompt_ids = [TOK.encode("ab")]
    samples = [[TOK.encode("cde")]]
    assert A.sequence_kl(p, p, prompt_ids, samples) == (0.0, 0.0)
    seq, tok = A.sequence_kl(p, q, prompt_ids, samples)
    ids = torch.tensor([TOK.encode("abcde")])
    with torch.no_grad():
        lp, lq = torch.log_softmax(p(ids), -1)[0], torch.log_softmax(q(ids), -1)[0]
    want = sum(float((lp[t].exp() * (lp[t] - lq[t])).sum()) for t in (1, 2, 3))  # positions predicting c, d, e
    assert seq == pytest.approx(want, rel=1e-4) and tok == pytest.approx(want / 3, rel=1e-4) and seq > 0


# ----------------------------------------------------------------------------- training


def easy_pairs(n, seed):
    """Chosen responses are vowels, rejected ones consonants: a preference a tiny model can learn."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = "".join(rng.choice("klmnpqrst ") for _ in range(6))
        out.append(A.PreferencePair(prompt, "".join(rng.choice("aeiou") for _ in range(6)),
                                    "".join(rng.choice("bcdfgh") for _ in range(6))))
    return out


@pytest.mark.parametrize("loss", [{"name": "dpo", "beta": 0.5}, {"name": "ipo", "beta": 0.5},
                                  {"name": "simpo"}, {"name": "orpo", "beta": 1.0}])
def test_alignment_raises_heldout_accuracy_and_never_touches_reference(loss):
    policy = tiny_model(0)
    reference = A.frozen_copy(policy)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    loss_fn = A.build_loss(loss)
    train, held = easy_pairs(64, 0), easy_pairs(32, 1)
    at_init = A.evaluate_pairs(policy, reference, TOK, held, loss_fn, 32)
    rows = A.train_alignment(policy, reference, TOK, train, loss_fn, steps=20, lr=3e-3, batch_size=16, max_len=32,
                             log_every=10, seed=0)
    after = A.evaluate_pairs(policy, reference, TOK, held, loss_fn, 32)
    assert [r["step"] for r in rows] == [10, 20]
    assert after["heldout_accuracy"] >= 0.9 and after["heldout_logratio_accuracy"] >= 0.9, after
    assert at_init["heldout_logratio_accuracy"] == 0.5  # policy == reference: all ties
    assert after["heldout_loss"] < at_init["heldout_loss"]
    for k, v in reference.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not p.requires_grad for p in reference.parameters())
    assert any(not torch.equal(v, before[k]) for k, v in policy.state_dict().items())


# ----------------------------------------------------------------------------- the recipe section


def test_align_section_validates_loss_against_registry(tmp_path):
    from lmzoo.recipe import RecipeError

    spec = S.AlignSpec(loss="ipo")
    assert spec.loss == {"name": "ipo", "beta": 0.1, "length_normalize": False}
    with pytest.raises(ValueError, match="did you mean 'dpo'"):
        S.AlignSpec(loss={"name": "dpoo"})
    with pytest.raises(ValueError, match="beta"):
        S.AlignSpec(loss={"name": "dpo", "beta": 0})
    r = tmp_path / "r.yaml"
    r.write_text("align:\n  loss: {name: simpo, gamma: 0.5}\n  pairs: {preference: {kind: avoid, words: [the]}}\n")
    rec = lmzoo.load_recipe(r)
    assert rec.align.loss == {"name": "simpo", "beta": 2.0, "gamma": 0.5}
    assert rec.align.pairs.preference.kind == "avoid"
    r.write_text("align:\n  loss: {name: dpo, betta: 0.5}\n")
    with pytest.raises(RecipeError, match="align.loss"):
        lmzoo.load_recipe(r)
    r.write_text("align:\n  pairs: {preference: {kind: contains}}\n")
    with pytest.raises(RecipeError, match="word"):
        lmzoo.load_recipe(r)


# ----------------------------------------------------------------------------- the stage end to end

STAGE_RECIPE = """
name: align_e2e
seed: 0
data:
  source: {name: synthetic, n_docs: 60}
  tokenizer: {name: byte}
  context: 32
model: {d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, max_seq_len: 64}
train:
  optimizer: {name: adamw, lr: 1.0e-2}
  batch_size: 8
  budget: {steps: 8}
  val_every: 8
  val_batches: 2
align:
  steps: 4
  batch_size: 8
  lr: 1.0e-3
  log_every: 2
  pairs: {n_prompts: 16, heldout_prompts: 8, samples_per_prompt: 4, prompt_tokens: 8, max_new_tokens: 6,
          preference: {kind: contains, word: e}}
  eval: {samples_per_prompt: 2}
ablation:
  variants:
    dpo: {align.loss: {name: dpo, beta: 0.5}}
    simpo: {align.loss: {name: simpo}}
"""


def test_align_study_pretrains_once_and_aligns_each_variant(tmp_path, monkeypatch):
    from lmzoo.rundir import load_run
    from lmzoo.runner import run_study

    monkeypatch.setenv("LMZOO_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(STAGE_RECIPE)
    out = run_study(recipe, out=tmp_path / "study", progress=False)
    pre = out / "pretrain"
    assert (pre / "summary.json").is_file()
    assert not (out / "dpo").exists() and not (out / "simpo").exists()  # one pretraining, not one per variant
    _, pretrained, _ = load_run(pre)
    for v in ("dpo", "simpo"):
        d = pre / "align" / v
        s = json.loads((d / "summary.json").read_text())
        for key in ("heldout_accuracy", "heldout_logratio_accuracy", "heldout_reward_margin", "satisfaction_before",
                    "satisfaction_after", "kl_seq", "val_bpb_before", "val_bpb_after"):
            assert isinstance(s[key], float) and math.isfinite(s[key]), key
        assert s["kl_seq"] > 0 and s["loss"]["name"] == v
        rows = (d / "metrics.csv").read_text().splitlines()
        assert rows[0].startswith("step,") and len(rows) == 3  # header + steps 2, 4
        state = torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
        assert state["step"] == 4
        changed = [k for k, t in pretrained.state_dict().items() if not torch.equal(t, state["model"][k])]
        assert changed  # the policy moved; the pretrained run itself was not touched:
    _, again, _ = load_run(pre)
    assert all(torch.equal(a, b) for a, b in zip(pretrained.state_dict().values(), again.state_dict().values()))
    # the before-alignment numbers are the reference's, shared by both variants; val bpb before = pretraining's
    s_dpo, s_simpo = (json.loads((pre / "align" / v / "summary.json").read_text()) for v in ("dpo", "simpo"))
    assert s_dpo["satisfaction_before"] == s_simpo["satisfaction_before"]
    from lmzoo.data import prepare_data
    from lmzoo.evaluate import evaluate_tokens
    from lmzoo.train import byte_lengths

    rec, _, tok = load_run(pre)
    with torch.no_grad():  # the before column is the pretrained model's val bpb on the pretraining windows
        want = evaluate_tokens(pretrained, prepare_data(rec).val, 32, 8, 2, byte_lengths(tok, 257))["bpb"]
    assert s_dpo["val_bpb_before"] == pytest.approx(want, rel=1e-6)
    assert s_dpo["val_bpb_after"] != s_dpo["val_bpb_before"]
    assert s_dpo["pairs"] == s_simpo["pairs"]  # the same cached pairs
    assert (out / "align_report.md").is_file() and (out / "align_summary.png").is_file()
    # --resume keeps everything; without it, existing results are an error
    from lmzoo.rundir import RunError

    run_study(recipe, out=out, resume=True, progress=False)
    with pytest.raises(RunError, match="already exist"):
        run_study(recipe, out=out, progress=False)


def test_recipe_without_align_variants_aligns_after_pretraining(tmp_path, monkeypatch):
    """No align-only ablation: the runner pretrains and `lmzoo_after_run` aligns that run."""
    from lmzoo.runner import run_study

    monkeypatch.setenv("LMZOO_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(STAGE_RECIPE.split("ablation:")[0].replace("steps: 4", "steps: 2"))
    out = run_study(recipe, out=tmp_path / "study", progress=False)
    s = json.loads((out / "base" / "align" / "dpo" / "summary.json").read_text())
    assert s["steps"] == 2 and s["loss"] == {"name": "dpo", "beta": 0.1, "label_smoothing": 0.0}
    assert (out / "base" / "align" / "dpo" / "checkpoints" / "last.ckpt").is_file()
