"""The filter pipeline on datatrove's executors: the same kept documents as lmzoo's earlier
implementation, resuming a killed run, every input format and fsspec URLs, a plugin's filter as a
datatrove step, SLURM submission (through a stand-in sbatch), Ray, and training data read
straight from a run's output."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from lmzoo.plugins.filters.pipeline import Pipeline, iter_kept

import lmzoo

pytest.importorskip("datatrove")


def F(name, **params):
    return lmzoo.create("data_filter", name, **params)


# ----------------------------------------------------------------------------- dedup: the same documents

def dedup_corpus(directory: Path, n_docs=600, seed=0, files=4) -> list[Path]:
    """Documents of 4-12 lines: lines drawn from a shared pool (exact-line duplicates across
    documents) or unique; 40% of documents are copies of an earlier one with 0-24 words edited,
    so true Jaccard similarities spread around the 0.8 threshold."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(4000)]
    pool = [" ".join(rng.choice(vocab, size=int(rng.integers(6, 14)))) for _ in range(150)]
    docs: list[str] = []
    for _ in range(n_docs):
        if docs and rng.random() < 0.4:
            words = docs[int(rng.integers(len(docs)))].split(" ")
            for _ in range(int(rng.integers(0, 25))):
                words[int(rng.integers(len(words)))] = f"edit{int(rng.integers(10**6))}"
            docs.append(" ".join(words))
        else:
            lines = [pool[int(rng.integers(len(pool)))] if rng.random() < 0.3 else
                     " ".join(rng.choice(vocab, size=int(rng.integers(6, 14)))) for _ in range(int(rng.integers(4, 13)))]
            docs.append("\n".join(lines))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        p = directory / f"part{k}.jsonl"
        p.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs) if i % files == k))
        paths.append(p)
    return paths


# Kept documents of lmzoo's earlier pipeline (its own process pool, commit 2731bc8) on dedup_corpus():
# (number kept, sha256 of the sorted "id<TAB>text" lines)[:16], and the first filter's counted
# events there. Recorded by running that code.
BEFORE = {
    "minhash": ([{"name": "minhash-dedup"}], 580, "75d040fb6513acaa",
                {"verified_pairs": 20, "rejected_candidates": 18}),
    "minhash-3gram": ([{"name": "minhash-dedup", "num_hashes": 128, "num_bands": 32, "ngram": 3,
                        "jaccard_threshold": 0.7}], 550, "4643bc28e23753fa",
                      {"verified_pairs": 50, "rejected_candidates": 147}),
    # (the earlier code's lines_removed, 1515, left out the lines of documents it dropped whole)
    "exact-line": ([{"name": "exact-line-dedup", "min_chars": 10}], 575, "6d059ff322549477", {}),
    "both": ([{"name": "minhash-dedup"}, {"name": "exact-line-dedup", "min_chars": 10}], 579, "cf5c91fb6659ae48",
             {"verified_pairs": 20, "rejected_candidates": 18}),
}


def digest(rep) -> tuple[int, str]:
    kept = sorted((d.id, d.text) for d in iter_kept(rep))
    return len(kept), hashlib.sha256("\n".join(f"{i}\t{t}" for i, t in kept).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return dedup_corpus(tmp_path_factory.mktemp("dedup") / "in")


@pytest.mark.parametrize("case", list(BEFORE))
def test_dedup_keeps_the_same_documents_as_before_on_every_executor(case, corpus, tmp_path):
    specs, n, dig, events = BEFORE[case]
    runs = [("inline", 1, 1), ("inline", 1, 3)] + ([("local", 2, 4)] if case == "both" else [])
    for ex, workers, tasks in runs:
        rep = Pipeline(specs, executor=ex, workers=workers, tasks=tasks).run(corpus, tmp_path / f"{ex}{tasks}")
        assert digest(rep) == (n, dig), (ex, workers, tasks)
        assert {k: rep.filters[0].events[k] for k in events} == events


def test_minhash_dedup_against_a_brute_force_reference(corpus):
    """All pairs whose band rows agree in some band, verified by true Jaccard, joined transitively;
    the first document of each cluster is kept."""
    from lmzoo.plugins.filters.hashing import jaccard, minhash_signatures

    f = F("minhash-dedup")
    docs = [json.loads(x) for p in corpus for x in p.read_text().splitlines()]  # input order: file, then line
    sh = [f.shingles(d["text"]) for d in docs]
    sig = minhash_signatures(sh, *f.hash_params())
    parent = list(range(len(docs)))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    r = 128 // 16
    candidates = set()
    for b in range(16):  # documents whose rows of band b are equal
        groups: dict[tuple, list[int]] = {}
        for i in range(len(docs)):
            if len(sh[i]):
                groups.setdefault(tuple(sig[i, b * r:(b + 1) * r]), []).append(i)
        candidates |= {(j, i) for g in groups.values() for a, i in enumerate(g) for j in g[:a]}
    for j, i in sorted(candidates):
        if jaccard(sh[i], sh[j]) >= 0.8:
            parent[find(i)] = find(j)
    roots = [find(i) for i in range(len(docs))]
    first = {}
    for i, root in enumerate(roots):
        first.setdefault(root, i)
    want = [d["id"] for i, d in enumerate(docs) if first[roots[i]] == i]
    got = [x.kept for x in f.apply_all([d["text"] for d in docs])]
    assert [d["id"] for d, k in zip(docs, got) if k] == want
    assert len(want) == BEFORE["minhash"][1]


# ----------------------------------------------------------------------------- resume after a kill

SLOW_PLUGIN = '''
import os, time
import lmzoo
from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay: float = 0.02


class SlowUpper:
    """Upper-cases each document after a pause; logs the ids it saw (the older protocol:
    a callable returning a Document)."""

    name = "slow-upper"

    def __init__(self, delay=0.02):
        self.params = {"delay": delay}

    def __call__(self, doc):
        time.sleep(self.params["delay"])
        with open(os.environ["SLOW_LOG"], "a") as f:
            f.write(doc.id + "\\n")
        return doc.replace(text=doc.text.upper())


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("data_filter", "slow-upper", factory=SlowUpper, params=Params, summary="slow test filter")
'''


def _lmzoo_cmd() -> list[str]:
    return [sys.executable, "-c", "from lmzoo.cli import main; main()"]


def test_a_killed_run_resumes_and_skips_completed_tasks(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_PLUGIN)
    inp = tmp_path / "in"
    inp.mkdir()
    for k in range(6):
        (inp / f"f{k}.jsonl").write_text("".join(json.dumps({"text": f"doc {k}-{i}"}) + "\n" for i in range(15)))
    (tmp_path / "r.yaml").write_text("name: resume\nplugins: [./slow.py]\ndata:\n  source: {name: synthetic}\n"
                                     "  filters: [{name: slow-upper, delay: 0.03}, {name: length, min_chars: 1}]\n"
                                     "filter: {executor: local, tasks: 6, workers: 1}\n")
    out, log = tmp_path / "out", tmp_path / "seen.txt"
    env = dict(os.environ, SLOW_LOG=str(log))
    cmd = _lmzoo_cmd() + ["filter", str(tmp_path / "r.yaml"), "--input", str(inp), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / "logs" / "round0" / "completions"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(done.glob("*"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, mid-run
    proc.wait()
    completed = sorted(int(p.name) for p in done.glob("*"))
    assert 2 <= len(completed) < 6, completed
    assert not (out / "report.json").exists()
    seen_before = log.read_text().split()
    log.unlink()
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    seen_after = set(log.read_text().split())
    done_ids = {f"f{k}.jsonl:{i + 1}" for k in completed for i in range(15)}
    assert done_ids <= set(seen_before) and not (done_ids & seen_after)  # completed tasks were not run again
    assert len(seen_after) == 15 * (6 - len(completed))
    rep = json.loads((out / "report.json").read_text())
    assert rep["docs_in"] == rep["docs_out"] == 90 and rep["filters"][0]["docs_in"] == 90
    texts = sorted(d.text for d in iter_kept(out))
    assert texts == sorted(f"DOC {k}-{i}" for k in range(6) for i in range(15))
    # a different run into the same folder is refused; --overwrite replaces it
    res = subprocess.run(cmd + ["filter.tasks=3"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2 and "holds another filter run (different tasks)" in res.stderr
    assert "Traceback" not in res.stderr


# ----------------------------------------------------------------------------- readers and URLs

def warc_bytes(pages: dict[str, bytes]) -> bytes:
    out = b""
    for k, (url, html) in enumerate(pages.items()):
        http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html
        out += (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{k:08d}-0000-0000-0000-000000000000>\r\n"
                f"WARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
                f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n").encode()
        out += http + b"\r\n\r\n"
    return out


def mixed_inputs(d: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True, exist_ok=True)
    (d / "a.jsonl").write_text(json.dumps({"text": "jsonl document one", "url": "u"}) + "\n")
    pq.write_table(pa.table({"text": ["parquet row one", None, "parquet row three"], "lang": ["en", "en", "fr"]}),
                   d / "b.parquet")
    (d / "c.warc.gz").write_bytes(gzip.compress(warc_bytes({
        "http://a.example/": b"<html><body><p>warc page about rivers</p></body></html>",
        "http://b.example/": "<html><body><p>Caf\u00e9 page</p></body></html>".encode()})))
    (d / "d.html").write_bytes("<html><body><p>Cr\u00e8me html file</p></body></html>".encode("cp1252"))
    (d / "e.txt").write_text("a plain text file\n")


def test_every_input_format_through_the_local_executor_from_a_url(tmp_path):
    pytest.importorskip("pyarrow")
    mixed_inputs(tmp_path / "in")
    rep = Pipeline([F("html-text"), F("length", min_chars=1)], executor="local", tasks=2) \
        .run([(tmp_path / "in").as_uri()], tmp_path / "out")  # a file:// URL goes through fsspec
    docs = {d.text: d for d in iter_kept(rep)}
    assert set(docs) == {"jsonl document one", "parquet row one", "parquet row three", "warc page about rivers",
                         "Caf\u00e9 page", "Cr\u00e8me html file", "a plain text file\n"}
    assert docs["warc page about rivers"].meta["url"] == "http://a.example/"
    assert docs["parquet row three"].meta["lang"] == "fr" and docs["jsonl document one"].meta["url"] == "u"
    assert [(e["line"], "expected a string 'text' field" in e["error"]) for e in rep.errors] == [(2, True)]
    assert sorted(Path(p).name for p in rep.outputs) == ["a.jsonl", "b.parquet.jsonl", "c.warc.gz.jsonl",
                                                         "d.html.jsonl", "e.txt.jsonl"]


def test_fsspec_memory_filesystem_input():
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe("/lmzoo-test/in/x.jsonl", (json.dumps({"text": "mail a@b.com"}) + "\n").encode())
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rep = Pipeline([F("pii-mask")]).run(["memory://lmzoo-test/in"], tmp)
        assert [d.text for d in iter_kept(rep)] == ["mail |||EMAIL_ADDRESS|||"]
    fs.rm("/lmzoo-test", recursive=True)


# ----------------------------------------------------------------------------- a filter as a datatrove step

def test_lmzoo_filters_in_a_plain_datatrove_pipeline(tmp_path):
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from lmzoo.plugins.filters.document import FilterError
    from lmzoo.plugins.filters.executors import LmzooFilter

    good = ("The old man and the young woman walked to the market, and they talked of the weather that morning. "
            "It was cold, but the sun was bright and the people were happy to be out of their houses. They bought "
            "bread and apples, and then they went home with their baskets full of good things to eat.")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in
                                                    enumerate([good + " Mail a@b.com.", "too short", good])))
    LocalPipelineExecutor([JsonlReader(str(tmp_path / "in")), LmzooFilter("gopher-quality"),
                           LmzooFilter({"name": "pii-mask"}), LmzooFilter({"name": "language-id"}),
                           JsonlWriter(str(tmp_path / "out"))], logging_dir=str(tmp_path / "logs")).run()
    rows = [json.loads(x) for x in gzip.open(next((tmp_path / "out").glob("*.jsonl.gz")), "rt")]
    assert [r["id"] for r in rows] == ["0", "2"] and "|||EMAIL_ADDRESS|||" in rows[0]["text"]
    assert rows[0]["metadata"]["language-id_label"] == "en"
    stats = json.loads((tmp_path / "logs" / "stats.json").read_text())
    gopher = next(s for s in stats if s["name"] == "🔻 - FILTER: lmzoo gopher-quality")
    assert gopher["stats"]["dropped_too_few_words"] == 1 and gopher["stats"]["forwarded"] == 2
    with pytest.raises(FilterError, match="whole corpus"):
        LmzooFilter("minhash-dedup")


# ----------------------------------------------------------------------------- SLURM through a stand-in sbatch

FAKE_SBATCH = '''#!{python}
"""Stand-in for sbatch: records the job, then runs every array task of it at once, in order."""
import os, re, subprocess, sys
script = sys.argv[-1]
text = open(script).read()
state = os.environ["FAKE_SLURM_DIR"]
n = len(os.listdir(state)) + 1
open(os.path.join(state, f"job{{n:03d}}.txt"), "w").write(" ".join(sys.argv[1:-1]) + "\\n" + text)
env = dict(os.environ, SLURM_JOB_ID=str(n), SLURM_NODELIST="localhost")
for opt in sys.argv[1:-1]:
    if opt.startswith("--export=ALL,"):
        env.update(kv.split("=", 1) for kv in opt[len("--export=ALL,"):].split(","))
lo, hi = map(int, re.search(r"--array=(\\d+)-(\\d+)", text).groups())
for i in range(lo, hi + 1):
    with open(os.path.join(state, f"job{{n:03d}}_{{i}}.log"), "w") as log:
        subprocess.run(["bash", script], env=dict(env, SLURM_ARRAY_TASK_ID=str(i)), check=True,
                       stdout=log, stderr=log)
print(f"Submitted batch job {{n}}")
'''

FAKE_SCONTROL = '''#!/bin/bash
# stand-in for scontrol: `scontrol show hostnames NODELIST` prints the one node
echo "$4"
'''

FAKE_SRUN = '''#!/bin/bash
# stand-in for srun: drop its options, run the command
while [[ "$1" == -* ]]; do if [[ "$1" == "-n" ]]; then shift; fi; shift; done
exec "$@"
'''


def test_slurm_executor_submits_dependent_job_arrays(tmp_path, monkeypatch):
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable))
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    corpus = dedup_corpus(tmp_path / "in", n_docs=120, files=2)
    specs = [{"name": "length", "min_chars": 1}, {"name": "exact-line-dedup", "num_buckets": 3}]
    rep = Pipeline(specs, executor="slurm", tasks=2, workers=2,
                   executor_options={"slurm": {"partition": "test-cpu", "time": "0:10:00"}}).run(corpus, tmp_path / "out")
    want = Pipeline(specs).run(corpus, tmp_path / "inline")
    assert rep is not None and digest(rep) == digest(want)
    jobs = sorted(state.glob("job*.txt"))
    assert len(jobs) == len(list(state.glob("job*_0.log")))
    stages = ["round0", "buckets", "clusters", "round1", "report"]
    arrays = [j.read_text() for j in jobs if "launch_pickled_pipeline" in j.read_text()]
    assert len(arrays) == len(stages)
    for k, (text, stage) in enumerate(zip(arrays, stages)):
        assert "#SBATCH --partition=test-cpu" in text and "#SBATCH --time=0:10:00" in text
        assert stage in text.split("#SBATCH --job-name=")[1].splitlines()[0]
        if k:  # each stage waits for the previous one
            assert "--dependency=afterok:" in text.splitlines()[0]
    assert "#SBATCH --array=0-1%2" in arrays[1]  # min(3 hash buckets, 2 tasks), two at a time
    with pytest.raises(Exception, match="partition"):
        Pipeline(specs, executor="slurm").run(corpus, tmp_path / "nopart")


# ----------------------------------------------------------------------------- Ray

@pytest.mark.slow
def test_ray_executor_on_a_local_ray_instance(tmp_path):
    ray = pytest.importorskip("ray")
    corpus = dedup_corpus(tmp_path / "in", n_docs=120, files=2)
    specs = [{"name": "length", "min_chars": 1}, {"name": "minhash-dedup"}, {"name": "pii-mask"}]
    try:
        rep = Pipeline(specs, executor="ray", tasks=2, workers=2).run(corpus, tmp_path / "out")
    finally:
        ray.shutdown()
    assert digest(rep) == digest(Pipeline(specs).run(corpus, tmp_path / "inline"))
    assert rep.executor == "ray"


# ----------------------------------------------------------------------------- training reads the output

def test_filter_output_source_reads_the_kept_documents(tmp_path):
    from lmzoo.data import tokenize_split

    docs = [f"document number {i} " * (i % 5 + 1) for i in range(40)] + ["", "document number 3 "]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    rep = Pipeline([F("length", min_chars=1), F("minhash-dedup", ngram=2)], executor="local").run(
        [tmp_path / "in.jsonl"], tmp_path / "out")
    kept = [d.text for d in iter_kept(rep)]
    src = lmzoo.create("data_source", "filter-output", path=str(tmp_path / "out"), val={"name": "synthetic", "n_docs": 20})
    assert list(src.documents("train")) == kept and len(kept) == rep.docs_out < len(docs)
    assert list(src.documents("val")) == list(lmzoo.create("data_source", "synthetic", n_docs=20).documents("val"))
    assert src.fraction_kept()[0] == pytest.approx(rep.docs_out / rep.docs_in)
    tok = lmzoo.create("tokenizer", "byte")
    arr = tokenize_split(src, tok, "train", tmp_path / "cache")
    assert arr.meta["n_docs"] == len(kept) and arr.n_bytes == sum(len(t.encode()) for t in kept)
    tail = lmzoo.create("data_source", "filter-output", path=str(tmp_path / "out"), val_fraction=0.25)
    assert list(tail.documents("train")) + list(tail.documents("val")) == kept
    with pytest.raises(Exception, match="no report.json"):
        lmzoo.create("data_source", "filter-output", path=str(tmp_path / "nowhere"))


def test_executor_errors_are_one_line(tmp_path):
    from lmzoo.plugins.filters.document import FilterError

    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    with pytest.raises(FilterError, match="executor='spark' is not one of inline, local, slurm, ray"):
        Pipeline([F("length")], executor="spark")
    Pipeline([F("length")], executor="local").run([tmp_path / "x.jsonl"], tmp_path / "out")
    with pytest.raises(FilterError, match="holds another filter run"):
        Pipeline([F("length", min_chars=3)], executor="local").run([tmp_path / "x.jsonl"], tmp_path / "out")
    rep = Pipeline([F("length", min_chars=3)], executor="local").run([tmp_path / "x.jsonl"], tmp_path / "out",
                                                                    overwrite=True)
    assert rep.docs_out == 0
