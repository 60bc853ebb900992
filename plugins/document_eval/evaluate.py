"""Whole-document evaluation (see `__init__.py`)."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F


def document_windows(ids: list[int], eos_id: int | None, context: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) windows that score one document's tokens `ids` once each: the sequence
    eos + ids + eos (the eos before a document is how it starts in the packed stream; the one
    after it is the document's last prediction) cut into consecutive windows of `context`
    predictions. Without an eos id the first token is context only."""
    seq = ([eos_id] + ids + [eos_id]) if eos_id is not None else ids
    out = []
    for start in range(0, len(seq) - 1, context):
        y = seq[start + 1:start + 1 + context]
        out.append((seq[start:start + len(y)], y))
    return out


@torch.no_grad()
def evaluate_documents(model, tokenizer, documents, context: int, batch_size: int, byte_lens: torch.Tensor,
                       device=None) -> dict:
    """Loss (nats/token) and bits per byte over every token of every document, each document read
    alone from its start; and the same over each document's first window only."""
    max_len = getattr(model, "max_seq_len", None)
    if max_len is not None and context > max_len:
        raise ValueError(f"document_eval.context={context} exceeds the model's max_seq_len {max_len}")
    device = device or next(model.parameters()).device
    by_length: dict[int, list[tuple[list[int], list[int], bool]]] = defaultdict(list)
    n_docs = 0
    for doc in documents:
        if not doc:
            continue
        n_docs += 1
        for i, (x, y) in enumerate(document_windows(list(tokenizer.encode(doc)), tokenizer.eos_id, context)):
            by_length[len(y)].append((x, y, i == 0))
    if not n_docs:
        raise ValueError("document_eval: the validation split has no documents")
    totals = {"all": [0.0, 0, 0.0], "start": [0.0, 0, 0.0]}  # nats, tokens, bytes
    was_training = model.training
    model.eval()
    try:
        for length, windows in sorted(by_length.items()):
            for b in range(0, len(windows), batch_size):
                chunk = windows[b:b + batch_size]
                x = torch.tensor([w[0] for w in chunk], device=device)
                y = torch.tensor([w[1] for w in chunk], device=device)
                logits = model(x).float()
                nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
                nats = nats.view(len(chunk), length).sum(-1).double().cpu()
                nbytes = byte_lens[y.cpu()].sum(-1)
                for row, (_, _, first) in enumerate(chunk):
                    for key in ("all", "start") if first else ("all",):
                        totals[key][0] += float(nats[row])
                        totals[key][1] += length
                        totals[key][2] += float(nbytes[row])
    finally:
        model.train(was_training)

    def scores(nats, tokens, nbytes):
        return nats / max(tokens, 1), nats / math.log(2) / max(nbytes, 1)

    loss, bpb = scores(*totals["all"])
    start_loss, start_bpb = scores(*totals["start"])
    return {"doc_val_loss": loss, "doc_val_bpb": bpb, "doc_val_start_loss": start_loss, "doc_val_start_bpb": start_bpb,
            "doc_val_tokens": totals["all"][1], "doc_val_documents": n_docs, "doc_val_context": context}


def evaluate_run(run_dir, context: int | None = None, batch_size: int = 32) -> dict:
    """Evaluate a run directory's final model on its recipe's validation documents; add the scores
    to its summary.json and write doc_eval.json. Returns the scores."""
    from lmzoo.hooks import get_registry
    from lmzoo.rundir import RunDir, load_run
    from lmzoo.train import byte_lengths

    run_dir = Path(run_dir)
    recipe, model, tok = load_run(run_dir)
    source = get_registry().create("data_source", recipe.data.source.name, params=recipe.data.source)
    scores = evaluate_documents(model, tok, source.documents("val"), context or recipe.data.context, batch_size,
                                byte_lengths(tok, model.vocab_size))
    run = RunDir(run_dir)
    run.write_json("doc_eval.json", scores)
    if run.summary is not None:
        run.write_json("summary.json", {**run.summary, **scores})
    return scores
