"""The filter pipeline: readers, shards, workers, reports, malformed input, apply_filters, the
noisy-web source, the evaluation against noise labels and the `lmzoo filter` command."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from lmzoo.plugins.filters.document import Drop
from lmzoo.plugins.filters.pipeline import Pipeline, apply_filters, iter_kept
from lmzoo.plugins.filters.readers import Shard, plan_shards, read_shard
from lmzoo.plugins.filters.study import evaluate_filters
from typer.testing import CliRunner

import lmzoo


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


def test_each_kind_of_malformed_record_is_reported_and_skipped(tmp_path):
    """Bad base64, a lone surrogate, a JSON line that is not an object: each is reported with
    file:line and skipped; every good record is still processed and kept."""
    lines = [json.dumps({"text": GOOD + " One."}),
             json.dumps({"text": GOOD, "raw_b64": "***not base64***"}),
             '{"text": "' + GOOD + ' lone \\ud800 surrogate"}',
             "[1, 2, 3]", '"a bare string"', "42", "null",
             json.dumps({"text": GOOD + " Two."}),
             '{"text": "' + GOOD + ' a real pair \\ud83d\\ude00 is fine"}',
             json.dumps({"text": GOOD + " html", "raw_b64": __import__("base64").b64encode(b"<p>hi</p>").decode()})]
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(lines) + "\n")
    rep = Pipeline([F("length", min_chars=1)]).run([p], tmp_path / "out")
    errs = {e["line"]: e["error"] for e in rep.errors}
    assert set(errs) == {2, 3, 4, 5, 6, 7} and all(e["file"] == str(p) for e in rep.errors)
    assert "base64" in errs[2] and "surrogate" in errs[3]
    assert all("JSON object" in errs[n] for n in (4, 5, 6, 7))
    docs = list(iter_kept(rep))
    assert [d.id for d in docs] == ["m.jsonl:1", "m.jsonl:8", "m.jsonl:9", "m.jsonl:10"]
    assert "\U0001F600" in docs[2].text and docs[3].raw == b"<p>hi</p>"
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"{p}:2: bad base64" in md and f"{p}:3: a lone UTF-16 surrogate" in md


def test_missing_input_is_a_clear_error(tmp_path):
    from lmzoo.plugins.filters.document import FilterError

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


def test_executors_and_workers_give_the_same_result(tmp_path):
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
    for name, ex, w in (("inline", "inline", 1), ("local1", "local", 1), ("local2", "local", 2)):
        rep = Pipeline(specs, executor=ex, workers=w, trace=True).run(files, tmp_path / name)
        outs.append(sorted((d.id, d.text) for d in iter_kept(rep)))
        assert [s.docs_out for s in rep.filters][0] == 61
        assert rep.executor == ex and rep.tasks == 3
    assert outs[0] == outs[1] == outs[2]
    assert all("shared boilerplate" not in t for _, t in outs[0])
    # trace files name every drop; excluded/ holds every dropped document with its filter and reason
    trace = [json.loads(x) for f in (tmp_path / "local2" / "trace").rglob("*.jsonl") for x in f.read_text().splitlines()]
    assert {"gopher-quality", "minhash-dedup", "exact-line-dedup"} <= {t["filter"] for t in trace}
    excluded = [json.loads(x) for f in (tmp_path / "local2" / "excluded").rglob("*.jsonl")
                for x in f.read_text().splitlines()]
    assert len(excluded) == 62 - len(outs[0])
    assert {(e["filter"], e["reason"]) for e in excluded} == {("gopher-quality", "too_few_words"),
                                                             ("minhash-dedup", "near_duplicate")}
    assert all(e["text"] and e["id"] and e["source"].startswith("p") for e in excluded)


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


def test_cli_filter_input_files_with_malformed_records(tmp_path):
    """As a user: one `lmzoo filter` run (datatrove's local executor) over a file holding bad JSON,
    bad base64, a lone surrogate and non-object lines: each reported with file:line, the rest kept."""
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join([json.dumps({"text": GOOD}), "oops", json.dumps({"text": GOOD, "raw_b64": "%%%"}),
                            '{"text": "lone \\udc00"}', "[1, 2]", '"bare"', json.dumps({"text": "short"}),
                            json.dumps({"text": GOOD + " Again."})]) + "\n")
    r = recipe(tmp_path, [{"name": "gopher-quality"}])
    res = CliRunner().invoke(app(), ["filter", str(r), "--input", str(p), "--out", str(tmp_path / "o"),
                                     "--no-progress"])
    assert res.exit_code == 0, res.output
    for line, what in ((2, "malformed JSON"), (3, "bad base64"), (4, "a lone UTF-16 surrogate"),
                       (5, "expected a JSON object"), (6, "expected a JSON object")):
        assert f"in.jsonl:{line}: {what}" in res.output, (line, res.output)
    assert "| gopher-quality | 3 | 2 |" in res.output and "executor local" in res.output
    assert "5 malformed input record(s) skipped" in res.output
    kept = [json.loads(x) for x in (tmp_path / "o" / "kept" / "in.jsonl").read_text().splitlines()]
    assert [k["id"] for k in kept] == ["in.jsonl:1", "in.jsonl:8"]
    (excluded,) = [json.loads(x) for f in (tmp_path / "o" / "excluded").rglob("*.jsonl") for x in f.read_text().splitlines()]
    assert (excluded["id"], excluded["filter"], excluded["reason"]) == ("in.jsonl:7", "gopher-quality", "too_few_words")


def test_cli_train_quality_then_filter_with_it(tmp_path):
    from test_filters import quality_examples

    pos, neg = quality_examples(seed=5, n=60)
    (tmp_path / "good").mkdir()
    for i, t in enumerate(pos):
        (tmp_path / "good" / f"{i}.txt").write_text(t)
    write_jsonl(tmp_path / "bad.jsonl", [{"text": t} for t in neg] + ["{broken"])
    model = tmp_path / "q.npz"
    res = CliRunner().invoke(app(), ["filter", "train-quality", "--positive", str(tmp_path / "good"),
                                     "--negative", str(tmp_path / "bad.jsonl"), "--out", str(model),
                                     "--features", "16"])
    assert res.exit_code == 0, res.output
    assert "trained on 60 positive and 60 negative documents" in res.output
    assert "validation: 12 documents, accuracy 1.000" in res.output and "bad.jsonl:61" in res.output
    test_pos, test_neg = quality_examples(seed=6, n=10)
    inp = write_jsonl(tmp_path / "mixed.jsonl", [{"text": t} for t in test_pos + test_neg])
    r = recipe(tmp_path, [{"name": "quality-classifier", "model": str(model), "threshold": 0.5}], name="q")
    res = CliRunner().invoke(app(), ["filter", str(r), "--input", str(inp), "--out", str(tmp_path / "o"),
                                     "--executor", "inline", "--no-progress"])
    assert res.exit_code == 0, res.output
    kept = [json.loads(x)["text"] for x in (tmp_path / "o" / "kept" / "mixed.jsonl").read_text().splitlines()]
    assert kept == test_pos and "low_quality: 10" in res.output
    res = CliRunner().invoke(app(), ["filter", "train-quality", "--positive", str(tmp_path / "nothing"),
                                     "--negative", str(tmp_path / "bad.jsonl"), "--out", str(model)])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output


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


def test_study_quality_classifier_trained_on_labels_and_evaluated_held_out(tmp_path, clean_files):
    r = tmp_path / "q.yaml"
    model = tmp_path / "quality.npz"
    r.write_text(
        "name: qtest\ndata:\n  source:\n    name: noisy-web\n"
        f"    clean: {{name: text, paths: ['{clean_files}/*.txt'], val_fraction: 0.2}}\n"
        "    passage_words: 40\n    noise_fraction: 0.5\n  filters:\n    - {name: gopher-quality, min_words: 10}\n"
        f"filter:\n  quality: {{model: '{model}'}}\n")
    res = CliRunner().invoke(app(), ["filter", "train-quality", "--recipe", str(r), "--features", "16"])
    assert res.exit_code == 0, res.output
    assert "even-indexed half" in res.output and model.is_file()
    src = lmzoo.create("data_source", "noisy-web", clean={"name": "text", "paths": [f"{clean_files}/*.txt"],
                                                          "val_fraction": 0.2}, passage_words=40)
    labelled = list(src.documents_with_labels("train"))
    from lmzoo.plugins.filters.quality_classifier import QualityModel

    meta = QualityModel.load(model).meta
    even = labelled[0::2]
    assert meta["positives"] == sum(lab["kind"] == "clean" for _, lab in even)
    assert meta["negatives"] == sum(lab["kind"] in ("nav_page", "spam_links", "keyword_stuffing", "gibberish",
                                                    "non_english") for _, lab in even)
    res = CliRunner().invoke(app(), ["filter", str(r), "--evaluate", "--out", str(tmp_path / "e"), "--no-progress"])
    assert res.exit_code == 0, res.output
    held = json.loads((tmp_path / "e" / "evaluation.json").read_text())["held_out"]
    assert held["docs"] == len(labelled[1::2])
    rows = {f["filter"]: f for f in held["filters"]}
    assert set(rows) == {"gopher-quality", "quality-classifier"}
    assert rows["quality-classifier"]["recall"] > 0.9 and rows["quality-classifier"]["noise_precision"] > 0.9
    assert "Held-out half" in res.output


# ----------------------------------------------------------------------------- the study helpers

def test_generation_toxicity_scores_samples_of_a_model():
    pytest.importorskip("profanity_check")
    from lmzoo.plugins.filters import FilterSection, generation_toxicity

    from lmzoo.recipe import validate

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


def test_after_run_reads_the_kept_fraction_without_filtering_again(tmp_path, monkeypatch):
    """The data stage filters the training split once; the after-run hook takes the kept fraction
    from what training used (the token cache's counts) instead of running the filters again."""
    pytest.importorskip("profanity_check")
    from lmzoo.plugins.filters.length import Length

    from lmzoo.plugins.commands.study import run_study

    calls = []
    real = Length.decide
    monkeypatch.setattr(Length, "decide", lambda self, doc: calls.append(1) or real(self, doc))
    p = tmp_path / "r.yaml"
    p.write_text("name: kept-fraction\nseed: 1\ndata:\n  source: {name: synthetic, n_docs: 300, seed: 7}\n"
                 "  tokenizer: {name: byte}\n  context: 32\n  filters: [{name: length, min_chars: 371}]\n"
                 "model: {d_model: 16, n_layers: 1, n_heads: 2, d_ff: 32}\n"
                 "train: {batch_size: 4, budget: {steps: 2}, val_every: 2, val_batches: 1}\n"
                 "eval: {contexts: [32]}\nfilter: {generations: 2, generation_tokens: 4}\n")
    study = run_study(p, out=tmp_path / "study", progress=False)
    summary = json.loads(next(study.rglob("summary.json")).read_text())
    train = [d for d in lmzoo.create("data_source", "synthetic", n_docs=300, seed=7).documents("train") if d]
    long = [d for d in train if len(d) >= 371]
    assert 0 < len(long) < len(train)
    assert summary["data_fraction_kept_docs"] == pytest.approx(len(long) / len(train))
    assert summary["data_fraction_kept_bytes"] == pytest.approx(sum(len(d.encode()) for d in long)
                                                                / sum(len(d.encode()) for d in train))
    assert len(calls) in (0, len(train))  # the data stage only (0 when its tokens were cached before)
