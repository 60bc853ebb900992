"""The filter pipeline: readers, shards, workers, reports, malformed input, apply_filters, the
noisy-web source, the evaluation against noise labels and the `lmzoo filter` command."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lmzoo
from lmzoo.plugins.filters.pipeline import (Document, Drop, Pipeline, Shard, apply_filters, iter_kept, plan_shards, read_shard)
from lmzoo.plugins.filters import evaluate_filters


def F(name, **params):
    return lmzoo.create("data_filter", name, **params)


GOOD = ("The old man and the young woman walked to the market, and they talked of the weather that "
        "morning. It was cold, but the sun was bright and the people were happy to be out of their houses. "
        "They bought bread and apples, and then they went home with their baskets full of good things to eat.")


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# ----------------------------------------------------------------------------- readers

def test_text_units_and_encodings(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("first doc line one\nline two\n\nsecond doc\n<|endoftext|>third\n".encode())
    errs = []
    sh = Shard(str(p), "t.txt", "text")
    assert [d.text for d in read_shard(sh, errs, "file")] == [p.read_text()]
    assert [d.text for d in read_shard(sh, errs, "line")] == ["first doc line one", "line two", "second doc",
                                                             "<|endoftext|>third"]
    paras = list(read_shard(sh, errs, "paragraph"))
    assert [d.text for d in paras] == ["first doc line one\nline two", "second doc\n<|endoftext|>third"]
    assert paras[0].id == "t.txt:1" and paras[1].id == "t.txt:4"
    assert [d.text for d in read_shard(sh, errs, "eot")] == ["first doc line one\nline two\n\nsecond doc", "third"]
    # non-UTF-8 bytes: decoded with the detected encoding, not dropped or garbled
    q = tmp_path / "latin.txt"
    q.write_bytes("Ça coûte très cher, déjà à Noël.".encode("latin-1"))
    (doc,) = read_shard(Shard(str(q), "latin.txt", "text"), errs)
    assert doc.text == "Ça coûte très cher, déjà à Noël." and not errs


def test_html_files_are_read_as_bytes_and_extracted(tmp_path):
    (tmp_path / "page.html").write_bytes("<html><body><p>Crème brûlée for everyone.</p></body></html>".encode("cp1252"))
    rep = Pipeline([F("html-text")]).run([tmp_path / "page.html"], tmp_path / "out")
    (doc,) = iter_kept(rep)
    assert doc.text == "Crème brûlée for everyone." and doc.source == "page.html" and doc.raw is None


# ----------------------------------------------------------------------------- malformed input

def test_malformed_input_is_reported_with_file_and_line_and_the_run_continues(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": GOOD, "url": "u1"}, "{not json", {"body": "no text field"},
                                           {"text": 42}, {"text": GOOD + " More."}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": GOOD + " Again."}])
    with open(a, "ab") as f:
        f.write(b"\xff\xfe not utf-8\n")
    rep = Pipeline([F("gopher-quality")]).run([a, b], tmp_path / "out")
    errs = {(Path(e["file"]).name, e["line"]) for e in rep.errors}
    assert errs == {("a.jsonl", 2), ("a.jsonl", 3), ("a.jsonl", 4), ("a.jsonl", 6)}
    assert all(e["error"] for e in rep.errors)
    docs = list(iter_kept(rep))
    assert [d.id for d in docs] == ["a.jsonl:1", "a.jsonl:5", "b.jsonl:1"]
    assert docs[0].meta == {"url": "u1"} and docs[2].source == "b.jsonl"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "a.jsonl:2: malformed JSON" in md and "a.jsonl:3" in md


def test_big_files_split_into_shards_keep_line_numbers(tmp_path):
    recs = [{"text": f"{GOOD} number {i}"} for i in range(200)]
    recs[136] = "{broken"
    p = write_jsonl(tmp_path / "big.jsonl", recs)
    shards = plan_shards([p], shard_bytes=4000)
    assert len(shards) > 5 and shards[0].first_line == 1
    errs = []
    ids = [d.id for s in shards for d in read_shard(s, errs)]
    assert ids == [f"big.jsonl:{i + 1}" for i in range(200) if i != 136]
    assert [(Path(e["file"]).name, e["line"]) for e in errs] == [("big.jsonl", 137)]


def test_missing_input_is_a_clear_error(tmp_path):
    from lmzoo.plugins.filters.pipeline import FilterError

    with pytest.raises(FilterError, match="does not exist"):
        Pipeline([F("length")]).run([tmp_path / "nope.jsonl"], tmp_path / "out")


# ----------------------------------------------------------------------------- reports and workers

def test_report_per_filter(tmp_path):
    recs = [{"text": GOOD}, {"text": "too short"}, {"text": GOOD + " mail me: a@b.com"}, {"text": ""}]
    p = write_jsonl(tmp_path / "r.jsonl", recs)
    rep = Pipeline([F("length", min_chars=1), F("gopher-quality"), F("pii-mask")]).run([p], tmp_path / "out")
    length, gopher, pii = rep.filters
    assert (length.docs_in, length.docs_out, dict(length.dropped)) == (4, 3, {"too_few_chars": 1})
    assert (gopher.docs_in, gopher.docs_out, dict(gopher.dropped)) == (3, 2, {"too_few_words": 1})
    assert (pii.docs_in, pii.docs_out, pii.modified, dict(pii.events)) == (2, 2, 1, {"EMAIL_ADDRESS": 1})
    assert length.bytes_in == sum(len(r["text"].encode()) for r in recs)
    assert gopher.bytes_out == pii.bytes_in
    assert pii.bytes_out == pii.bytes_in - len("a@b.com") + len("|||EMAIL_ADDRESS|||")
    assert all(s.seconds >= 0 for s in rep.filters)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["docs_in"] == 4 and data["docs_out"] == 2 and data["filters"][1]["params"]["min_words"] == 50
    assert "| gopher-quality | 3 | 2 |" in (tmp_path / "out" / "report.md").read_text()


def test_workers_give_the_same_result(tmp_path):
    base = GOOD.split()
    recs = []
    for i in range(60):
        words = list(base)
        words[i % len(words)] = f"changed{i}"
        recs.append({"text": " ".join(words) + f"\nshared boilerplate line for every page\nunique tail {i}"})
    recs += [{"text": recs[3]["text"]}, {"text": "short"}]
    files = [write_jsonl(tmp_path / f"p{k}.jsonl", recs[k::3]) for k in range(3)]
    specs = [{"name": "gopher-quality"}, {"name": "minhash-dedup", "num_bands": 32},
             {"name": "exact-line-dedup"}, {"name": "pii-mask"}]
    outs = []
    for w in (1, 2):
        rep = Pipeline(specs, workers=w, trace=True).run(files, tmp_path / f"out{w}")
        outs.append(sorted((d.id, d.text) for d in iter_kept(rep)))
        assert [s.docs_out for s in rep.filters][0] == 61
    assert outs[0] == outs[1]
    assert all("shared boilerplate" not in t for _, t in outs[0])
    # trace files name every drop
    trace = [json.loads(x) for f in (tmp_path / "out1" / "trace").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert {"gopher-quality", "minhash-dedup", "exact-line-dedup"} <= {t["filter"] for t in trace}


# ----------------------------------------------------------------------------- apply_filters

def test_apply_filters_streams_and_keeps_order():
    docs = [GOOD + f" Number {i}." for i in range(5)] + ["tiny"]
    rep = {}
    out = list(apply_filters(iter(docs), [F("gopher-quality"), F("pii-mask")], report=rep))
    assert out == docs[:5]
    assert rep["docs_in"] == 6 and rep["docs_out"] == 5 and rep["filters"][0]["dropped"] == {"too_few_words": 1}
    # dict specs and recipe-style components are built from the registry
    assert list(apply_filters(docs, [{"name": "length", "min_chars": 10}])) == docs[:5]


def test_apply_filters_with_dedup_materialises_and_keeps_order(tmp_path):
    import random

    rng = random.Random(0)
    docs = [" ".join(rng.choice(GOOD.split()) + str(rng.randint(0, 9)) for _ in range(60)) for _ in range(7)]
    docs += [docs[2], docs[5] + "!", "unique " * 30]
    rep = {}
    out = list(apply_filters(docs, [F("minhash-dedup", num_bands=32)], shard_docs=3, report=rep))
    assert out == docs[:7] + [docs[-1]]
    assert rep["filters"][0]["dropped"] == {"near_duplicate": 2}
    assert list(apply_filters([], [F("minhash-dedup")])) == []


def test_custom_filter_object_follows_the_protocol():
    class Upper:
        name = "upper"

        def __call__(self, doc):
            return Drop("empty") if not doc.text else doc.replace(text=doc.text.upper())

    assert list(apply_filters(["ab", "", "c"], [Upper()])) == ["AB", "C"]


# ----------------------------------------------------------------------------- noisy-web

@pytest.fixture
def clean_files(tmp_path):
    d = tmp_path / "clean"
    d.mkdir()
    for i in range(30):
        sents = [f"The {w} of the town went to see the king on day {i} and {j}." for j, w in
                 enumerate(["baker", "smith", "miller", "farmer", "weaver", "mason", "tailor", "carter"])]
        (d / f"doc{i:02d}.txt").write_text("\n".join(sents * 3))
    return d


def noisy(clean_files, **kw):
    clean = {"name": "text", "paths": [str(clean_files / "*.txt")], "val_fraction": 0.2}
    return lmzoo.create("data_source", "noisy-web", clean=clean, passage_words=80, **kw)


def test_noisy_web_is_deterministic_labelled_and_val_is_clean(clean_files):
    src = noisy(clean_files, noise_fraction=0.5, seed=3)
    docs = list(src.documents_with_labels("train"))
    again = list(noisy(clean_files, noise_fraction=0.5, seed=3).documents_with_labels("train"))
    assert docs == again and src.fingerprint() == noisy(clean_files, noise_fraction=0.5, seed=3).fingerprint()
    other = noisy(clean_files, noise_fraction=0.5, seed=4)
    assert other.fingerprint() != src.fingerprint() and list(other.documents("train")) != [t for t, _ in docs]
    kinds = [lab["kind"] for _, lab in docs]
    assert abs(sum(k != "clean" for k in kinds) / len(kinds) - 0.5) < 0.02
    assert [lab["index"] for _, lab in docs] == list(range(len(docs)))
    for text, lab in docs:
        if lab["kind"] == "exact_dup":
            assert lab["dup_of"] < lab["index"] and docs[lab["dup_of"]][0] == text
            assert docs[lab["dup_of"]][1]["kind"] == "clean"
        if lab["kind"] == "pii":
            assert sum(lab["pii"].values()) >= 1
    # validation is exactly the clean source's held-out text, cut into passages
    from lmzoo.plugins.filters.noisy_web import passages

    clean_src = lmzoo.create("data_source", "text", paths=[str(clean_files / "*.txt")], val_fraction=0.2)
    assert list(src.documents("val")) == [p for d in clean_src.documents("val") for p in passages(d, 80)]
    assert "noisy-web" in src.describe()
    with pytest.raises(Exception, match="unknown noise kind"):
        noisy(clean_files, weights={"spam": 1.0})


def test_evaluate_filters_precision_recall(clean_files, tmp_path):
    src = noisy(clean_files, noise_fraction=0.5, seed=1,
                weights={"exact_dup": 1, "non_english": 1, "pii": 1})
    labelled = list(src.documents_with_labels("train"))
    kinds = [lab["kind"] for _, lab in labelled]
    ev = evaluate_filters([{"name": "minhash-dedup"}, {"name": "language-id"}, {"name": "pii-mask"}],
                          labelled, tmp_path / "ev")
    rows = {r["filter"]: r for r in ev["filters"]}
    assert rows["minhash-dedup"]["recall"] == 1.0 and rows["minhash-dedup"]["caught"] >= kinds.count("exact_dup")
    assert rows["language-id"]["recall"] == 1.0 and rows["language-id"]["precision"] == 1.0
    assert rows["pii-mask"]["precision"] == 1.0 and rows["pii-mask"]["recall"] == 1.0
    for ent in rows["pii-mask"]["entities"].values():
        assert ent["masks"] == ent["injected"]
    p = ev["pipeline"]
    assert p["docs_in"] == len(labelled) and p["kept_by_kind"]["non_english"] == 0
    assert p["kept_by_kind"]["clean"] <= p["in_by_kind"]["clean"]


# ----------------------------------------------------------------------------- the CLI

def recipe(tmp_path, filters, extra="", name="r") -> Path:
    r = tmp_path / f"{name}.yaml"
    r.write_text(f"name: ftest\ndata:\n  source: {{name: synthetic, n_docs: 50}}\n  filters: {json.dumps(filters)}\n"
                 + extra)
    return r


def app():
    from lmzoo.cli import build_app

    return build_app()


def test_cli_filter_input_files_with_malformed_line(tmp_path):
    p = write_jsonl(tmp_path / "in.jsonl", [{"text": GOOD}, "oops", {"text": "short"}])
    r = recipe(tmp_path, [{"name": "gopher-quality"}])
    res = CliRunner().invoke(app(), ["filter", str(r), "--input", str(p), "--out", str(tmp_path / "o"),
                                     "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "in.jsonl:2: malformed JSON" in res.output
    assert "| gopher-quality | 2 | 1 |" in res.output
    kept = (tmp_path / "o" / "kept" / "in.jsonl").read_text().splitlines()
    assert len(kept) == 1 and json.loads(kept[0])["id"] == "in.jsonl:1"


def test_cli_filter_data_source_and_errors(tmp_path):
    r = recipe(tmp_path, [{"name": "length", "min_chars": 1}, {"name": "minhash-dedup"}])
    res = CliRunner().invoke(app(), ["filter", str(r), "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["docs_in"] > 0 and [f["name"] for f in rep["filters"]] == ["length", "minhash-dedup"]
    # no filters: a clear error that says how to add some
    res = CliRunner().invoke(app(), ["filter", str(recipe(tmp_path, [], name="empty"))])
    assert res.exit_code == 2 and "no data.filters" in res.output
    # --evaluate needs labels
    res = CliRunner().invoke(app(), ["filter", str(r), "--evaluate", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "noise labels" in res.output
    res = CliRunner().invoke(app(), ["filter", "--help"])
    assert res.exit_code == 0 and "Example" in res.output


def test_cli_filter_evaluate_on_noisy_web(tmp_path, clean_files):
    r = tmp_path / "n.yaml"
    r.write_text(
        "name: ntest\ndata:\n  source:\n    name: noisy-web\n"
        f"    clean: {{name: text, paths: ['{clean_files}/*.txt'], val_fraction: 0.2}}\n"
        "    passage_words: 80\n  filters:\n    - {name: gopher-quality, min_words: 20}\n"
        "    - {name: language-id}\n    - {name: minhash-dedup}\n"
        "filter: {workers: 1}\n")
    res = CliRunner().invoke(app(), ["filter", str(r), "--evaluate", "--out", str(tmp_path / "e"), "--no-progress"])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert [f["filter"] for f in ev["filters"]] == ["gopher-quality", "language-id", "minhash-dedup"]
    assert ev["pipeline"]["fraction_kept_docs"] < 1 and "whole pipeline" in res.output


# ----------------------------------------------------------------------------- the study helpers

def test_generation_toxicity_scores_samples_of_a_model():
    pytest.importorskip("profanity_check")
    from lmzoo.recipe import validate
    from lmzoo.plugins.filters import FilterSection, generation_toxicity

    rec = validate({"model": {"vocab_size": 257, "d_model": 16, "n_layers": 1, "n_heads": 2,
                                                   "d_ff": 32, "max_seq_len": 64}, "data": {"context": 32}})
    model = lmzoo.build_model(rec.model)
    tok = lmzoo.create("tokenizer", "byte")
    sec = FilterSection(generations=3, generation_tokens=8)
    res = generation_toxicity(model, tok, ["The ", "A ", ""], sec, seed=1)
    assert res["samples"] == 3 and 0.0 <= res["toxicity_rate"] <= 1.0
    scores = [g["score"] for g in res["generations"]]
    assert res["toxicity_mean"] == pytest.approx(sum(scores) / 3)
    assert res == generation_toxicity(model, tok, ["The ", "A ", ""], sec, seed=1)  # seeded


def test_study_report_table_and_figures(tmp_path):
    from lmzoo.plugins.filters import study_report

    study = tmp_path / "study"
    sums = []
    for v, seed, bpb in (("raw", 0, 2.5), ("raw", 1, 2.7), ("filtered", 0, 2.4)):
        d = study / v / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text("step,tokens,val_loss,val_bpb\n10,100,2.0,2.6\n20,200,1.9," + str(bpb) + "\n")
        sums.append({"variant": v, "seed": seed, "tokens": 200, "train_loss": 2.0, "val_loss": 1.9, "val_ppl": 6.7,
                     "val_bpb": bpb, "gen_toxicity_rate": 0.25, "gen_samples": 4, "gen_toxicity_mean": 0.3,
                     "data_fraction_kept_docs": 0.5, "data_fraction_kept_bytes": 0.6, "run_dir": str(d)})
    (study / "summaries.json").write_text(json.dumps(sums))
    ev = {"filters": [{"filter": "pii-mask", "precision": 1.0, "recall": 0.5, "noise_precision": 1.0}],
          "pipeline": {"in_by_kind": {"clean": 4, "pii": 2}, "kept_by_kind": {"clean": 4, "pii": 1},
                       "fraction_kept_docs": 5 / 6}}
    table, figs = study_report(study, ev, tmp_path / "figs")
    assert "| filtered | 0 | 200 |" in table and "2.4000" in table and "0.250 (4 samples)" in table
    assert "| raw | mean | 200 |" in table and "2.6000" in table and "0.250 (8 samples)" in table
    assert len(figs) == 3 and all(f.is_file() and f.stat().st_size > 1000 for f in figs)


def test_batched_sampling_matches_one_at_a_time_greedy():
    from lmzoo.sampling import generate
    from lmzoo.recipe import validate
    from lmzoo.plugins.filters import sample_batch

    rec = validate({"model": {"vocab_size": 257, "d_model": 16, "n_layers": 1, "n_heads": 2,
                                                   "d_ff": 32, "max_seq_len": 64}, "data": {"context": 32}})
    lmzoo.hooks.get_registry()
    import torch

    torch.manual_seed(0)
    model = lmzoo.build_model(rec.model)
    tok = lmzoo.create("tokenizer", "byte", eos=False)
    prompts = ["The ", "And ", "a", "Once upon"]
    batched = sample_batch(model, tok, prompts, 12, temperature=0)
    assert batched == [generate(model, tok, p, max_new_tokens=12, temperature=0) for p in prompts]
    sampled = sample_batch(model, tok, prompts, 12, temperature=1.0, seed=3)
    assert sampled == sample_batch(model, tok, prompts, 12, temperature=1.0, seed=3)
