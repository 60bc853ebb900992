"""The alignment stage: response-only log-probs, preference data, sampling, training with a
frozen reference on the kernel's trainer, KL, the `align:` recipe section, resuming, the report."""
import json
import math
import random
from pathlib import Path

import pytest
import torch
from lmzoo.plugins.alignment import evaluation as E
from lmzoo.plugins.alignment import module as M
from lmzoo.plugins.alignment import pairs as A
from lmzoo.plugins.alignment import preferences as P
from lmzoo.plugins.alignment import section as S
from lmzoo.plugins.alignment import stage as ST
from lmzoo.plugins.tokenizers import ByteTokenizer

import lmzoo
from lmzoo.recipe import RecipeError, validate

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
    ids, mask, lengths = M.encode_pairs(TOK, pairs, max_len=64)
    assert ids.shape[0] == 4 and lengths.tolist() == [10, 14, 2, 1]
    with torch.no_grad():
        got = M.sequence_logps(model, ids, mask)
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    for i, (prompt, resp) in enumerate(rows):
        want = manual_logp(model, TOK.encode(prompt), TOK.encode(resp))
        assert got[i].item() == pytest.approx(want, abs=1e-4), (i, prompt, resp)
    # the padding's token ids are irrelevant: scribble on them
    ids2 = ids.clone()
    ids2[~mask & (torch.arange(ids.shape[1]) >= torch.tensor([len(TOK.encode(p + r)) for p, r in rows])[:, None])] = 99
    assert not torch.equal(ids, ids2)
    with torch.no_grad():
        assert torch.allclose(M.sequence_logps(model, ids2, mask), got, atol=1e-6)


def test_prompt_tokens_do_not_count_but_condition():
    model = tiny_model()
    ids, mask, _ = M.encode_pairs(TOK, [A.PreferencePair("abc", "de", "f")], max_len=64)
    with torch.no_grad():
        full = M.sequence_logps(model, ids, torch.ones_like(mask))  # every token after the first
        resp = M.sequence_logps(model, ids, mask)
        prompt_only = M.sequence_logps(model, ids, ~mask)
    assert full[0].item() == pytest.approx(resp[0].item() + prompt_only[0].item(), abs=1e-5)
    assert resp[0].item() == pytest.approx(manual_logp(model, TOK.encode("abc"), TOK.encode("de")), abs=1e-5)


def test_encode_pairs_truncates_prompt_from_left_and_handles_empty_prompt():
    ids, mask, lengths = M.encode_pairs(TOK, [A.PreferencePair("0123456789", "abcdef", "xyz")], max_len=8)
    assert TOK.decode(ids[0][mask[0]].tolist()) == "abcdef"
    assert TOK.decode(ids[0][~mask[0]].tolist()) == "89"  # end of the prompt kept
    assert TOK.decode(ids[1][: (ids[1] != 0).sum()].tolist()) == "56789xyz"
    ids, mask, _ = M.encode_pairs(TOK, [A.PreferencePair("", "ab", "c")], max_len=8)
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
    c = P.make_preference({"kind": "contains", "word": "Love"})
    assert c.satisfied("my love is") and not c.satisfied("my dove")
    assert P.make_preference({"kind": "contains", "word": "Love", "case_sensitive": True}).satisfied("my love") is False
    av = P.make_preference(S.AvoidSpec(words=["thee", "thou"]))
    assert av.satisfied("you and me") and not av.satisfied("THOU art")
    ml = P.make_preference({"kind": "max_length", "max_chars": 5})
    assert ml.satisfied("abc\ndef") and not ml.satisfied("abcdefgh\n") and not ml.satisfied("abc")
    with pytest.raises(ValueError, match="unknown preference 'contain'"):
        P.make_preference({"kind": "contain", "word": "x"})
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
    assert E.sequence_kl(p, p, prompt_ids, samples) == (0.0, 0.0)
    seq, tok = E.sequence_kl(p, q, prompt_ids, samples)
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


def align_spec(**section):
    """A resolved `align:` section (components resolved against the registry, as in a recipe)."""
    return validate({"align": section}).align


def fit(tmp_path, policy, reference, train, held, spec, evaluate=False, ckpt_path=None, name="run"):
    """Train with the stage's module on the kernel's trainer into tmp_path/name; returns
    (module, trainer, RunDir)."""
    from lmzoo.recipe import Recipe, TrainerSpec
    from lmzoo.rundir import RunDir

    loss_fn = ST.build_loss(spec.loss)
    module = M.PreferenceModule(policy, reference, loss_fn, TOK, train, held, M.align_train_spec(spec), 32, seed=0,
                                evaluate=evaluate)
    run = RunDir(tmp_path / name)
    run.create()
    recipe = Recipe(train=M.align_train_spec(spec), trainer=M.one_device(TrainerSpec(accelerator="cpu")))
    trainer, _ = M.train_alignment(module, recipe, run, ckpt_path=ckpt_path)
    return module, trainer, run


def csv_rows(run):
    import csv

    return list(csv.DictReader((run / "metrics.csv").open()))


@pytest.mark.parametrize("loss", [{"name": "dpo", "beta": 0.5}, {"name": "ipo", "beta": 0.5},
                                  {"name": "simpo"}, {"name": "orpo", "beta": 1.0}])
def test_alignment_raises_heldout_accuracy_and_never_touches_reference(loss, tmp_path):
    policy = tiny_model(0)
    reference = M.frozen_copy(policy)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    spec = align_spec(loss=loss, steps=20, batch_size=16, log_every=10, optimizer={"name": "adamw", "lr": 3e-3},
                      lr_schedule={"name": "constant", "warmup_steps": 0})
    loss_fn = ST.build_loss(spec.loss)
    train, held = easy_pairs(64, 0), easy_pairs(32, 1)
    at_init = E.evaluate_pairs(policy, reference, TOK, held, loss_fn, 32)
    module, trainer, run = fit(tmp_path, policy, reference, train, held, spec)
    after = E.evaluate_pairs(module.model, reference, TOK, held, loss_fn, 32)
    rows = csv_rows(run)
    assert [int(r["step"]) for r in rows] == [10, 20] and trainer.global_step == 20
    assert all(r["train_loss"] and r["accuracy"] and r["grad_norm"] for r in rows)  # the stage's own columns
    assert after["heldout_accuracy"] >= 0.9 and after["heldout_logratio_accuracy"] >= 0.9, after
    assert at_init["heldout_logratio_accuracy"] == 0.5  # policy == reference: all ties
    assert after["heldout_loss"] < at_init["heldout_loss"]
    for k, v in reference.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not p.requires_grad for p in reference.parameters())
    assert any(not torch.equal(v, before[k]) for k, v in policy.state_dict().items())
    # the checkpoint holds the policy as `model.*` (like pretraining) and never the reference
    state = run.load_checkpoint("last")
    assert state["global_step"] == 20 and set(state["state_dict"]) == {f"model.{k}" for k in policy.state_dict()}
    assert all(torch.equal(state["state_dict"][f"model.{k}"], v) for k, v in module.model.state_dict().items())


def test_optimizer_and_schedule_come_from_the_registries(tmp_path):
    """align.optimizer / align.lr_schedule are components: SGD with a 4-step linear warm-up here."""
    spec = align_spec(steps=6, batch_size=8, log_every=1, optimizer={"name": "sgd", "lr": 0.02, "momentum": 0.5},
                      lr_schedule={"name": "constant", "warmup_steps": 4})
    policy = tiny_model(0)
    _, trainer, run = fit(tmp_path, policy, M.frozen_copy(policy), easy_pairs(16, 0), easy_pairs(8, 1), spec)
    opt = trainer.optimizers[0]
    assert type(opt).__name__ == "SGD" and opt.param_groups[0]["momentum"] == 0.5
    # the lr after step s is lr(s) = min(s / 4, 1) * 0.02 (warm-up from 0, counted from step 0)
    assert [float(r["lr"]) for r in csv_rows(run)] == pytest.approx([0.005, 0.01, 0.015, 0.02, 0.02, 0.02])


def test_resumed_alignment_matches_an_uninterrupted_one(tmp_path):
    """3 steps, then a resume to 6 from checkpoints/last.ckpt, gives bit-identical weights to 6
    steps at once: the same batches (a function of seed and step), optimizer state and lr."""
    train, held = easy_pairs(32, 0), easy_pairs(8, 1)
    spec6 = align_spec(steps=6, batch_size=8, log_every=1, eval={"every": 3},
                       optimizer={"name": "adamw", "lr": 3e-3}, lr_schedule={"name": "constant", "warmup_steps": 2})
    straight, _, run6 = fit(tmp_path, tiny_model(0), M.frozen_copy(tiny_model(0)), train, held, spec6,
                            evaluate=True, name="straight")
    spec3 = spec6.model_copy(update={"steps": 3})
    _, _, run = fit(tmp_path, tiny_model(0), M.frozen_copy(tiny_model(0)), train, held, spec3, evaluate=True,
                    name="resumed")
    resumed, trainer, run = fit(tmp_path, tiny_model(0), M.frozen_copy(tiny_model(0)), train, held, spec6,
                                evaluate=True, ckpt_path=str(run.checkpoint("last")), name="resumed")
    assert trainer.global_step == 6
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    # metrics.csv continues: training rows 1..6, held-out evaluations at 3 and 6, as uninterrupted
    steps = [(int(r["step"]), bool(r["val_loss"])) for r in csv_rows(run)]
    assert steps == [(int(r["step"]), bool(r["val_loss"])) for r in csv_rows(run6)]
    assert [s for s, val in steps if val] == [3, 6]
    assert run.checkpoint("best").is_file()  # best by held-out preference loss


# ----------------------------------------------------------------------------- the recipe section


def test_align_section_components_resolve_with_yaml_paths(tmp_path):
    spec = align_spec(loss={"name": "ipo"})
    assert spec.loss.model_dump() == {"name": "ipo", "beta": 0.1, "length_normalize": False}
    # defaults reproduce the old hand-written loop: AdamW 1e-4 without decay, 10 warm-up steps, then constant
    assert spec.optimizer.model_dump() == {"name": "adamw", "lr": 1e-4, "betas": (0.9, 0.95), "eps": 1e-8,
                                           "weight_decay": 0.0}
    assert spec.lr_schedule.model_dump() == {"name": "constant", "warmup_steps": 10}
    # a partial component (or the default's name) keeps the other defaults; another name replaces them
    assert align_spec(optimizer={"lr": 3e-4}).optimizer.model_dump()["weight_decay"] == 0.0
    assert align_spec(optimizer={"name": "adamw", "lr": 3e-4}).optimizer.lr == 3e-4
    lion = align_spec(optimizer={"name": "lion"}).optimizer.model_dump()
    assert lion["name"] == "lion" and lion["weight_decay"] == 0.1  # lion's own defaults, not adamw's
    cases = {
        "{loss: {name: dpoo}}": "align.loss.name: unknown alignment_loss 'dpoo' (did you mean 'dpo'",
        "{loss: {name: dpo, beta: 0}}": "align.loss.beta: Input should be greater than 0 (got 0)",
        "{loss: {name: dpo, betta: 0.5}}": "align.loss.betta: unknown key 'betta' (did you mean 'beta'?)",
        "{optimizer: {name: adamww}}": "align.optimizer.name: unknown optimizer 'adamww' (did you mean 'adamw'",
        "{lr_schedule: {name: constant, warmup_steps: -1}}": "align.lr_schedule.warmup_steps: Input should be greater",
        "{lr: 0.001}": "align: 'lr' moved: write align.optimizer.lr",
        "{pairs: {preference: {kind: contain, word: x}}}": "align.pairs.preference: unknown preference kind 'contain' "
                                                           "(did you mean 'contains'?)",
        "{pairs: {preference: {kind: contains}}}": "align.pairs.preference.contains.word: Field required",
    }
    r = tmp_path / "r.yaml"
    for section, message in cases.items():
        r.write_text(f"align: {section}\n")
        with pytest.raises(RecipeError) as info:
            lmzoo.load_recipe(r)
        assert len(info.value.errors) == 1 and info.value.errors[0].startswith(message), (section, info.value.errors)
    r.write_text("align:\n  loss: {name: simpo, gamma: 0.5}\n  pairs: {preference: {kind: avoid, words: [the]}}\n")
    rec = lmzoo.load_recipe(r, ["align.optimizer.lr=3e-5"])
    assert rec.align.loss.model_dump() == {"name": "simpo", "beta": 2.0, "gamma": 0.5}
    assert rec.align.pairs.preference.kind == "avoid" and rec.align.optimizer.lr == 3e-5


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
  optimizer: {name: adamw, lr: 1.0e-3}
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
    from lmzoo.rundir import RunDir, load_run
    from lmzoo.plugins.commands.study import run_study

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
        assert s["kl_seq"] > 0 and s["loss"]["name"] == v and s["optimizer"]["name"] == "adamw"
        rows = (d / "metrics.csv").read_text().splitlines()
        assert rows[0].startswith("step,") and len(rows) == 3  # header + steps 2, 4
        # the same run directory as pretraining: checksummed Lightning checkpoint, manifest, resolved recipe
        run = RunDir(d)
        state = run.load_checkpoint("last")
        assert state["global_step"] == 4 and run.manifest["checkpoints"]["last.ckpt"]["sha256"]
        aligned = {k[len("model."):]: t for k, t in state["state_dict"].items()}
        changed = [k for k, t in pretrained.state_dict().items() if not torch.equal(t, aligned[k])]
        assert changed  # the policy moved; the pretrained run itself was not touched:
        rec, policy, _ = load_run(d)  # lmzoo eval / generate work on an alignment run
        assert rec.align.loss.name == v and rec.train.budget.steps == 4 and rec.model == load_run(pre)[0].model
        assert all(torch.equal(t, aligned[k]) for k, t in policy.state_dict().items())
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
    assert (out / "align_report.md").is_file() and (out / "align_frontier.png").is_file()
    assert "(1 seed)" in (out / "align_report.md").read_text()
    # --resume keeps everything; without it, existing results are an error
    from lmzoo.rundir import RunError

    mtime = (pre / "align" / "dpo" / "summary.json").stat().st_mtime_ns
    run_study(recipe, out=out, resume=True, progress=False)
    assert (pre / "align" / "dpo" / "summary.json").stat().st_mtime_ns == mtime
    with pytest.raises(RunError, match="already exist"):
        run_study(recipe, out=out, progress=False)


def test_recipe_without_align_variants_aligns_after_pretraining(tmp_path, monkeypatch):
    """No align-only ablation: the runner pretrains and `lmzoo_after_run` aligns that run; a
    finished alignment resumes to more steps, and refuses a resume with another loss."""
    from lmzoo.rundir import RunDir, RunError
    from lmzoo.plugins.commands.study import run_study

    monkeypatch.setenv("LMZOO_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(STAGE_RECIPE.split("ablation:")[0].replace("steps: 4", "steps: 2"))
    out = run_study(recipe, out=tmp_path / "study", progress=False)
    d = out / "base" / "align" / "dpo"
    s = json.loads((d / "summary.json").read_text())
    assert s["steps"] == 2 and s["loss"] == {"name": "dpo", "beta": 0.1, "label_smoothing": 0.0}
    assert (d / "checkpoints" / "last.ckpt").is_file()
    rec = lmzoo.load_recipe(recipe, ["align.steps=4"])
    with pytest.raises(RunError, match="already exist"):
        ST.run_alignment(rec, out / "base")
    s = ST.run_alignment(rec, out / "base", resume=True)  # continues from step 2
    assert s["steps"] == 4 and RunDir(d).load_checkpoint("last")["global_step"] == 4
    assert [int(r.split(",")[0]) for r in (d / "metrics.csv").read_text().splitlines()[1:]] == [2, 4]
    assert RunDir(d).manifest["resumes"][0]["from"].endswith("last.ckpt")
    with pytest.raises(RunError, match=r"other settings \(align.loss"):
        ST.run_alignment(lmzoo.load_recipe(recipe, ["align.loss.beta=0.5"]), out / "base", resume=True)
    (d / "summary.json").unlink()  # as if killed after the last checkpoint
    with pytest.raises(RunError, match="interrupted alignment"):
        ST.run_alignment(rec, out / "base")
    assert ST.run_alignment(rec, out / "base", resume=True)["steps"] == 4 and (d / "summary.json").is_file()


# ----------------------------------------------------------------------------- the study report


def test_report_intervals_and_paired_differences_by_hand(tmp_path):
    """Mean, std, 95% t-interval over seeds, and differences paired by seed (not by order)."""
    from lmzoo.plugins.alignment import report as R

    def run(variant, seed, sat, kl):
        return {"variant": variant, "seed": seed, "loss": {"name": variant}, "satisfaction_before": 0.1,
                "satisfaction_after": sat, "kl_seq": kl, "heldout_logratio_accuracy": 0.5}

    # dpo: 0.5, 0.6, 0.8 at seeds 0, 1, 2; ipo: 0.4, 0.6, 0.5 -> per-seed differences 0.1, 0.0, 0.3
    summaries = [run("dpo", 2, 0.8, 3.0), run("dpo", 0, 0.5, 1.0), run("dpo", 1, 0.6, 2.0),
                 run("ipo", 1, 0.6, 1.0), run("ipo", 0, 0.4, 1.0), run("ipo", 2, 0.5, 1.0), run("orpo", 0, 0.3, 0.2)]
    stats, paired = R.statistics_of(summaries)
    d = stats["dpo"]["satisfaction_after"]
    mean = (0.5 + 0.6 + 0.8) / 3
    std = math.sqrt(((0.5 - mean) ** 2 + (0.6 - mean) ** 2 + (0.8 - mean) ** 2) / 2)
    half = 4.302652729911275 * std / math.sqrt(3)  # t(0.975, df=2)
    assert d["n"] == 3 and d["mean"] == pytest.approx(mean) and d["std"] == pytest.approx(std)
    assert [d["lo"], d["hi"]] == pytest.approx([mean - half, mean + half])
    assert stats["dpo"]["satisfaction_gain"]["mean"] == pytest.approx(mean - 0.1)
    assert stats["orpo"]["satisfaction_after"]["lo"] is None  # one seed: no interval
    diff = next(p for p in paired if (p["a"], p["b"], p["metric"]) == ("dpo", "ipo", "satisfaction_after"))
    dm = (0.1 + 0.0 + 0.3) / 3
    ds = math.sqrt(((0.1 - dm) ** 2 + (0.0 - dm) ** 2 + (0.3 - dm) ** 2) / 2)
    assert diff["seeds"] == [0, 1, 2] and diff["mean"] == pytest.approx(dm) and diff["std"] == pytest.approx(ds)
    assert [diff["lo"], diff["hi"]] == pytest.approx([dm - 4.302652729911275 * ds / math.sqrt(3),
                                                      dm + 4.302652729911275 * ds / math.sqrt(3)])
    assert diff["verdict"] == "interval includes 0"  # 0.13 ± 0.37: not shown at 3 seeds
    kl = next(p for p in paired if (p["a"], p["b"], p["metric"]) == ("dpo", "ipo", "kl_seq"))
    assert kl["mean"] == pytest.approx(1.0) and kl["verdict"] == "interval includes 0"
    # dpo - orpo pairs only seed 0
    one = next(p for p in paired if (p["a"], p["b"], p["metric"]) == ("dpo", "orpo", "kl_seq"))
    assert one["seeds"] == [0] and one["mean"] == pytest.approx(0.8) and one["lo"] is None
    table = R.write_align_report(tmp_path, summaries, figures=False)
    text = (tmp_path / "align_report.md").read_text()
    assert "| dpo | 3 |" in table and "(1 seed)" in text and "dpo − ipo" in text
    assert f"{mean:.3f} ± {std:.3f} [{mean - half:.3f}, {mean + half:.3f}]" in text
    saved = json.loads((tmp_path / "align_results.json").read_text())
    assert saved["variants"]["dpo"]["satisfaction_after"]["lo"] == pytest.approx(d["lo"])


def test_align_report_command(tmp_path):
    from typer.testing import CliRunner

    from lmzoo.cli import build_app

    app = build_app()
    r = CliRunner().invoke(app, ["align-report", str(tmp_path)])
    assert r.exit_code == 1 and "holds no finished alignment" in r.output
    d = tmp_path / "pretrain" / "align" / "dpo"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"variant": "dpo", "seed": 0, "loss": {"name": "dpo"},
                                                "satisfaction_before": 0.1, "satisfaction_after": 0.7, "kl_seq": 2.0,
                                                "heldout_logratio_accuracy": 0.8}))
    r = CliRunner().invoke(app, ["align-report", str(tmp_path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "align_report.md").is_file() and (tmp_path / "rep" / "align_frontier.png").is_file()


def test_dpo_note_claim_verdicts(monkeypatch):
    """notes/dpo_claims.py: effects paired by seed or against a constant, and the verdict rule."""
    import importlib.util

    from lmzoo.plugins.report import interval

    spec = importlib.util.spec_from_file_location("dpo_claims", Path(__file__).parents[1] / "notes" / "dpo_claims.py")
    C = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(__import__("sys").modules, "dpo_claims", C)  # dataclasses look their module up
    spec.loader.exec_module(C)
    groups = {"dpo": [{"seed": s, "kl_seq": k, "heldout_chosen_logratio": c}
                      for s, k, c in ((0, 9.0, -4.0), (1, 8.0, -5.0), (2, 10.0, 1.0))],
              "ipo": [{"seed": s, "kl_seq": k} for s, k in ((2, 3.0), (0, 2.0), (1, 3.0))]}
    kl = C.effect(groups, C.Claim("", "", "kl_seq", "dpo", "ipo"))
    assert kl["n"] == 3 and kl["mean"] == pytest.approx((7 + 5 + 7) / 3)  # paired by seed, not by order
    assert C.verdict(kl, +1) == "reproduced" and C.verdict(kl, -1) == "refuted"
    chosen = C.effect(groups, C.Claim("", "", "heldout_chosen_logratio", "dpo", sign=-1))
    assert chosen["mean"] == pytest.approx(-8 / 3) and C.verdict(chosen, -1) == "inconclusive at this scale"
    assert C.verdict(interval([1.0]), +1) == "inconclusive (one seed)"


def test_align_and_make_pairs_commands(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lmzoo.cli import build_app
    from lmzoo.runner import train_run

    monkeypatch.setenv("LMZOO_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(STAGE_RECIPE.replace("variants:", "seeds: [0, 1]\n  variants:"))
    base = lmzoo.load_recipe(recipe).model_copy(update={"align": None})
    train_run(base, tmp_path / "pre", progress=False)
    app, cli = build_app(), CliRunner()
    r = cli.invoke(app, ["make-pairs", str(recipe), "--run", str(tmp_path / "pre"), "--out", str(tmp_path / "p.jsonl"),
                         "--heldout", str(tmp_path / "h.jsonl")])
    assert r.exit_code == 0, r.output
    assert A.load_pairs(tmp_path / "p.jsonl") and A.load_pairs(tmp_path / "h.jsonl")
    # two seeds in the recipe, one pretrained run: one alignment per variant (the run's seed)
    r = cli.invoke(app, ["align", str(recipe), "--run", str(tmp_path / "pre"), "--variant", "simpo", "align.steps=2"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "pre" / "align" / "simpo" / "summary.json").read_text())
    assert s["steps"] == 2 and s["seed"] == 0 and (tmp_path / "pre" / "align" / "align_report.md").is_file()
    r = cli.invoke(app, ["align", str(recipe), "--run", str(tmp_path / "pre"), "--variant", "simpo"])
    assert r.exit_code == 1 and "already exist" in r.output and "Traceback" not in r.output
    r = cli.invoke(app, ["align", str(recipe), "--run", str(tmp_path / "pre"), "align.loss.name=dpoo"])
    assert r.exit_code == 1 and "unknown alignment_loss 'dpoo'" in r.output
