"""document_eval: held-out documents scored whole, one document per window; the after-run hook
and the `lmzoo eval-documents` command on a real run."""
import json
import math

import torch
import torch.nn.functional as F
from lmzoo.plugins.document_eval.evaluate import document_windows, evaluate_documents

import lmzoo

EOS = 0


class Tok:
    """Characters a-z as ids 1..26, eos 0."""

    eos_id = EOS
    vocab_size = 27

    def encode(self, text):
        return [ord(c) - 96 for c in text]


def test_document_windows_score_every_token_once():
    ids = list(range(1, 11))  # a 10-token document
    for context in (3, 4, 11, 12, 50):
        windows = document_windows(ids, EOS, context)
        assert windows[0][0][0] == EOS  # a document starts after an eos, as in the packed stream
        assert sum((y for _, y in windows), []) == ids + [EOS]  # every token, then the closing eos, once
        for x, y in windows:
            assert len(x) == len(y) <= context and x[1:] == y[:-1]
    assert document_windows([5, 6, 7], None, 2) == [([5, 6], [6, 7])]


def test_whole_documents_equal_the_packed_stream_under_document_masking():
    """With document masking, scoring each document alone equals scoring the packed stream
    eos d1 eos d2 eos ... in one window: the two features check each other."""
    torch.manual_seed(0)
    model = lmzoo.build_model({"vocab_size": 27, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64,
                               "max_seq_len": 128, "attention": {"name": "causal", "mask": "document"}},
                              eos_id=EOS).eval()
    docs = ["tobeornottobe", "thatisthequestion", "whethertis", "nobler"]
    byte_lens = torch.ones(27, dtype=torch.float64)
    byte_lens[EOS] = 0
    got = evaluate_documents(model, Tok(), docs, context=64, batch_size=3, byte_lens=byte_lens)
    stream = [EOS] + sum((Tok().encode(d) + [EOS] for d in docs), [])
    x, y = torch.tensor([stream[:-1]]), torch.tensor([stream[1:]])
    with torch.no_grad():
        nats = F.cross_entropy(model(x)[0], y[0], reduction="sum").item()
    assert got["doc_val_tokens"] == len(stream) - 1 and got["doc_val_documents"] == 4
    assert math.isclose(got["doc_val_loss"], nats / (len(stream) - 1), rel_tol=1e-5)
    n_chars = sum(map(len, docs))
    assert math.isclose(got["doc_val_bpb"], nats / math.log(2) / n_chars, rel_tol=1e-5)
    # short windows: the first window of each document is scored apart too
    short = evaluate_documents(model, Tok(), docs, context=4, batch_size=8, byte_lens=byte_lens)
    assert short["doc_val_tokens"] == got["doc_val_tokens"] and short["doc_val_start_loss"] != short["doc_val_loss"]


RECIPE = """
name: doc-eval-test
seed: 0
data:
  source: {name: synthetic, n_docs: 60}
  tokenizer: {name: byte}
  context: 32
model: {d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, max_seq_len: 64,
        attention: {name: causal, mask: document, position_reset: true}}
train:
  batch_size: 4
  budget: {steps: 3}
  val_every: 3
  val_batches: 1
eval: {full_val: false}
document_eval: {}
"""


def test_after_run_hook_and_command(tmp_path):
    from typer.testing import CliRunner

    from lmzoo.cli import build_app
    from lmzoo.plugins.commands.study import run_study

    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    study = run_study(path, out=tmp_path / "study", progress=False)
    summary = json.loads((study / "base" / "summary.json").read_text())
    assert summary["doc_val_documents"] == 6 and 0 < summary["doc_val_loss"] < 10
    assert json.loads((study / "base" / "doc_eval.json").read_text())["doc_val_loss"] == summary["doc_val_loss"]
    assert "doc_val_bpb" in (study / "summaries.json").read_text()
    r = CliRunner().invoke(build_app(), ["eval-documents", str(study / "base"), "--context", "16"])
    assert r.exit_code == 0, r.output
    assert "doc_val_loss" in r.output and "16" in r.output
    r = CliRunner().invoke(build_app(), ["eval-documents", str(tmp_path)])
    assert r.exit_code == 1 and "error:" in r.output
