"""The `hf-dataset` data source on local data written here: Parquet, JSON lines, CSV and Arrow
files, and datasets saved with save_to_disk; then `lmzoo run` training through it."""
import json
import math
import shutil
import subprocess
import sys

import pytest

import lmzoo
from lmzoo.data import DataError

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
import pyarrow.csv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


@pytest.fixture(scope="module")
def docs():
    """Real text: 90 documents of the synthetic grammar."""
    return list(lmzoo.create("data_source", "synthetic", n_docs=100, val_fraction=0.1).documents("train"))


def source(**params):
    return lmzoo.create("data_source", "hf-dataset", **params)


def both(src):
    return list(src.documents("train")), list(src.documents("val"))


def write_parquet(path, docs, **extra):
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs))), **extra}), path)
    return path


def test_parquet_rows_are_documents_and_the_tail_is_validation(tmp_path, docs):
    path = write_parquet(tmp_path / "corpus.parquet", docs)
    train, val = both(source(path=str(path)))
    assert train == docs[:81] and val == docs[81:]  # floor(90 * 0.1) = 9 rows held out
    train, val = both(source(path=str(path), max_rows=40, val_fraction=0.25))
    assert train == docs[:30] and val == docs[30:40]


@pytest.mark.parametrize("params", [{}, {"max_rows": 40}])
def test_streaming_reads_the_same_documents(tmp_path, docs, params):
    path = str(write_parquet(tmp_path / "corpus.parquet", docs))
    assert both(source(path=path, streaming=True, **params)) == both(source(path=path, **params))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "arrow", "glob"])
def test_json_csv_arrow_files_and_globs(tmp_path, docs, fmt):
    table = pa.table({"text": docs})
    if fmt == "jsonl":
        path = tmp_path / "corpus.jsonl"
        path.write_text("".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(docs)))
    elif fmt == "csv":
        path = tmp_path / "corpus.csv"
        pyarrow.csv.write_csv(table, path)
    elif fmt == "arrow":
        path = tmp_path / "corpus.arrow"
        with pa.ipc.new_stream(str(path), table.schema) as writer:
            writer.write_table(table)
    else:
        write_parquet(tmp_path / "part-0.parquet", docs[:45])
        write_parquet(tmp_path / "part-1.parquet", docs[45:])
        path = tmp_path / "part-*.parquet"
    train, val = both(source(path=str(path)))
    assert train == docs[:81] and val == docs[81:]


def test_saved_dataset_with_a_named_validation_split(tmp_path, docs):
    saved = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"content": docs[:80]}),
        "validation": datasets.Dataset.from_dict({"content": docs[80:]}),
    }).save_to_disk(str(saved))
    train, val = both(source(path=str(saved), field="content", val_split="validation"))
    assert train == docs[:80] and val == docs[80:]
    train, val = both(source(path=str(saved), field="content", val_split="validation", max_rows=10,
                             max_val_rows=3, streaming=True))
    assert train == docs[:10] and val == docs[80:83]
    with pytest.raises(DataError, match="no split 'valid'.*did you mean 'validation'"):
        list(source(path=str(saved), field="content", val_split="valid").documents("val"))


def test_a_saved_single_dataset_holds_out_a_fraction(tmp_path, docs):
    saved = tmp_path / "one"
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(saved))
    assert both(source(path=str(saved))) == (docs[:81], docs[81:])
    with pytest.raises(DataError, match="single Dataset"):
        list(source(path=str(saved), val_split="validation").documents("val"))


def test_a_directory_of_split_files_is_read_by_file_name(tmp_path, docs):
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    write_parquet(data / "train-00000.parquet", docs[:70])
    write_parquet(data / "validation-00000.parquet", docs[70:])
    repo = str(tmp_path / "repo")
    assert both(source(path=repo, val_split="validation")) == (docs[:70], docs[70:])
    fp = source(path=repo, val_split="validation").fingerprint()
    (tmp_path / "repo" / "README.md").write_text("a dataset card")  # not data: the cache key stays
    (tmp_path / "repo" / ".git").mkdir()
    (tmp_path / "repo" / ".git" / "index").write_bytes(b"\0" * 64)
    assert source(path=repo, val_split="validation").fingerprint() == fp
    write_parquet(data / "validation-00000.parquet", docs[71:])
    assert source(path=repo, val_split="validation").fingerprint() != fp


def test_few_rows_hold_out_the_tail_of_each_text(tmp_path, docs):
    path = write_parquet(tmp_path / "two.parquet", docs[:2])
    train, val = both(source(path=str(path)))
    assert len(train) == len(val) == 2
    assert [a + b for a, b in zip(train, val)] == docs[:2]


def test_fingerprint_follows_the_data_not_its_location(tmp_path, docs):
    first = write_parquet(tmp_path / "a.parquet", docs)
    moved = tmp_path / "elsewhere" / "a.parquet"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    fp = source(path=str(first)).fingerprint()
    assert source(path=str(moved)).fingerprint() == fp
    assert source(path=str(first), streaming=True).fingerprint() == fp  # same documents, same cache
    assert source(path=str(first), max_rows=50).fingerprint() != fp
    edited = docs[:-1] + [docs[-1] + " An extra sentence."]
    write_parquet(moved, edited)
    assert source(path=str(moved)).fingerprint() != fp

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(saved))
    before = source(path=str(saved)).fingerprint()
    shutil.rmtree(saved)
    datasets.Dataset.from_dict({"text": edited}).save_to_disk(str(saved))
    assert source(path=str(saved)).fingerprint() != before


def test_bad_input_is_one_clear_error(tmp_path, docs):
    path = str(write_parquet(tmp_path / "c.parquet", docs, score=[0.5] * len(docs)))
    cases = [
        (dict(path=path, field="txt"), "no column 'txt' \\(did you mean 'text'\\?\\); columns: text, id, score"),
        (dict(path=path, field="score"), "row 0 of split 'train': column 'score' holds float"),
        (dict(path=str(tmp_path / "missing.parquet")), "'.*missing.parquet' not found"),
        (dict(path=str(tmp_path / "*.jsonl")), "the glob .* matches no files"),
        (dict(path="some-owner/some-dataset"), "not a local file or directory and the Hugging Face Hub could not "
                                               "be reached"),
    ]
    for params, message in cases:
        with pytest.raises(DataError, match=message):
            list(source(**params).documents("train"))
    (tmp_path / "notes.xyz").write_text("hello")
    with pytest.raises(DataError, match="cannot tell the format of 'notes.xyz'.*set the source's `format`"):
        source(path=str(tmp_path / "notes.xyz"))
    assert both(source(path=str(tmp_path / "notes.xyz"), format="text", val_fraction=0.5)) == (["he"], ["llo"])


RECIPE = """
name: hf-tiny
data:
  source: {{name: hf-dataset, path: {parquet}, max_rows: 60}}
  tokenizer: {{name: byte}}
  context: 32
model: {{d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64}}
train:
  optimizer: {{name: adamw, lr: 1.0e-2}}
  batch_size: 4
  budget: {{steps: 3}}
  val_every: 3
  val_batches: 1
  log_every: 1
ablation:
  fair: false   # the variants differ in their data on purpose
  variants:
    parquet: {{}}
    saved: {{data.source: {{name: hf-dataset, path: {saved}, field: body, val_split: test}}}}
"""


def test_lmzoo_run_trains_on_a_parquet_file_and_a_saved_dataset(tmp_path, docs):
    parquet, saved = write_parquet(tmp_path / "corpus.parquet", docs), tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": docs[:80]}),
                          "test": datasets.Dataset.from_dict({"body": docs[80:]})}).save_to_disk(str(saved))
    recipe = tmp_path / "hf.yaml"
    recipe.write_text(RECIPE.format(parquet=json.dumps(str(parquet)), saved=json.dumps(str(saved))))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "lmzoo.cli", "run", str(recipe), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sources = {"parquet": source(path=str(parquet), max_rows=60),
               "saved": source(path=str(saved), field="body", val_split="test")}
    for variant, src in sources.items():
        summary = json.loads((out / variant / "summary.json").read_text())
        assert summary["steps"] == 3 and math.isfinite(summary["val_loss"])
        data = json.loads((out / variant / "manifest.json").read_text())["data"]
        assert data["source"] == "hf-dataset" and data["source_hash"] == src.fingerprint()
        assert data["val_bytes"] == sum(len(d.encode()) for d in src.documents("val"))
        assert data["train_bytes"] == sum(len(d.encode()) for d in src.documents("train"))
