"""The data-quality study: each filter against the noisy-web labels (precision, recall), the
study's table and figures, and the toxicity of sampled generations after a training run.

    lmzoo filter recipes/data_quality.yaml --evaluate --out runs/data_quality/filter
    lmzoo filter recipes/data_quality.yaml --evaluate --study runs/data_quality --figures notes/figures
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from lmzoo.plugins.filters.pii_mask import EMAIL_MASK, IP_MASK, PHONE_MASK

import lmzoo

# The noise kinds (plugins/filters/noisy_web.py) each filter is meant to catch.
TARGETS = {
    "gopher-quality": {"nav_page", "spam_links", "keyword_stuffing", "gibberish"},
    "repetition": {"keyword_stuffing"},
    "length": {"nav_page", "spam_links"},
    "language-id": {"non_english", "gibberish"},
    "toxicity": {"toxic"},
    "pii-mask": {"pii"},
    "minhash-dedup": {"exact_dup", "near_dup"},
    "exact-line-dedup": {"boilerplate", "nav_page"},
}


def _write_labelled(labelled, path: Path, shard_docs: int = 5000) -> list:
    """Labelled (text, label) pairs -> pipeline shards whose records carry `kind`."""
    from lmzoo.plugins.filters.pipeline import write_shards

    records = ({"id": f"doc:{lab.get('index', i)}", "source": "corpus", "text": text, "kind": lab["kind"]}
               for i, (text, lab) in enumerate(labelled))
    return write_shards(records, path, shard_docs)


def _pr(hit: int, predicted: int, actual: int) -> tuple[float | None, float | None]:
    return (hit / predicted if predicted else None), (hit / actual if actual else None)


def evaluate_filters(filter_specs, labelled: list[tuple[str, dict]], work_dir: str | Path,
                     targets: dict | None = None, pipeline: bool = True) -> dict:
    """Each filter alone on the raw labelled corpus (its precision/recall against the noise kinds it
    targets, and against noise of any kind), then the whole pipeline (fraction kept, noise left).
    A document counts as caught when it is dropped or, for pii-mask and exact-line-dedup, modified.
    `targets` adds or replaces entries of TARGETS; `pipeline=False` skips the whole-pipeline run."""
    targets = {**TARGETS, **(targets or {})}
    from lmzoo.plugins.filters.document import build_filters
    from lmzoo.plugins.filters.pipeline import Pipeline, iter_kept

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    shards = _write_labelled(labelled, work)
    kinds = {f"doc:{lab.get('index', i)}": lab["kind"] for i, (_, lab) in enumerate(labelled)}
    texts = {f"doc:{lab.get('index', i)}": t for i, (t, lab) in enumerate(labelled)}
    labels = {f"doc:{lab.get('index', i)}": lab for i, (_, lab) in enumerate(labelled)}
    n_kind = Counter(kinds.values())
    noise_total = sum(v for k, v in n_kind.items() if k != "clean")
    results = []
    for k, spec in enumerate(filter_specs):
        (f,) = build_filters([spec])
        rep = Pipeline([f], write_excluded=False).run([], work / f"only{k}", shards=shards)
        kept = {d.id: d.text for d in iter_kept(rep)}
        dropped = set(kinds) - set(kept)
        modified = {i for i, t in kept.items() if t != texts[i]}
        caught = dropped | modified if f.name in ("pii-mask", "exact-line-dedup") else dropped
        target = set(targets.get(f.name, set()))
        n_target = sum(n_kind[t] for t in target)
        hit_t = sum(kinds[i] in target for i in caught)
        hit_n = sum(kinds[i] != "clean" for i in caught)
        p_t, r_t = _pr(hit_t, len(caught), n_target)
        p_n, r_n = _pr(hit_n, len(caught), noise_total)
        row = {"filter": f.name, "params": f.params, "targets": sorted(target), "caught": len(caught),
               "dropped": len(dropped), "modified": len(modified), "precision": p_t, "recall": r_t,
               "noise_precision": p_n, "noise_recall": r_n,
               "clean_lost": sum(kinds[i] == "clean" for i in caught) / max(1, n_kind["clean"]),
               "caught_by_kind": dict(Counter(kinds[i] for i in caught).most_common()),
               "dropped_reasons": dict(rep.filters[0].dropped), "events": dict(rep.filters[0].events),
               "seconds": rep.filters[0].seconds}
        if f.name == "exact-line-dedup":
            row.update(_line_level(texts, kept, labels))
        if f.name == "pii-mask":
            row.update(_pii_level(texts, kept, labels))
        results.append(row)
    if not pipeline:
        return {"filters": results}
    rep = Pipeline(build_filters(filter_specs), write_excluded=False).run([], work / "all", shards=shards) \
        if filter_specs else None
    kept_docs = list(iter_kept(rep)) if rep else []
    left = Counter(d.meta.get("kind") for d in kept_docs) if rep else n_kind
    # documents whose noise survived: dropped kinds that were kept, boilerplate with an injected
    # line left, PII with an injected line left unmasked
    residual = 0
    for d in kept_docs:
        lab = labels[d.id]
        if lab["kind"] in ("boilerplate", "pii"):
            present = {ln.strip() for ln in d.text.splitlines()}
            residual += any(ln.strip() in present for ln in lab.get("injected_lines", []))
        elif lab["kind"] != "clean":
            residual += 1
    pipeline = {"docs_in": len(kinds), "docs_out": sum(left.values()),
                "fraction_kept_docs": sum(left.values()) / max(1, len(kinds)),
                "fraction_kept_bytes": (rep.bytes_out / max(1, rep.bytes_in)) if rep else 1.0,
                "kept_by_kind": {k: left.get(k, 0) for k in sorted(n_kind)},
                "in_by_kind": dict(sorted(n_kind.items())),
                "noise_fraction_in": noise_total / max(1, len(kinds)),
                "noise_fraction_out": sum(v for k, v in left.items() if k != "clean") / max(1, sum(left.values())),
                "residual_noise_docs": residual if rep else noise_total,
                "residual_noise_fraction_out": (residual if rep else noise_total) / max(1, sum(left.values())),
                "report": rep.as_dict() if rep else None}
    return {"filters": results, "pipeline": pipeline}


def _line_level(texts: dict, kept: dict, labels: dict) -> dict:
    """exact-line-dedup at the line level: removed lines vs boilerplate lines (injected navigation
    lines, and every line of a nav_page)."""
    removed = removed_bp = total_bp = 0
    for i, text in texts.items():
        lab = labels[i]
        orig = Counter(ln.strip() for ln in text.splitlines() if ln.strip())
        after = Counter(ln.strip() for ln in kept.get(i, "").splitlines() if ln.strip())
        gone = orig - after
        if lab["kind"] == "nav_page":
            bp = Counter(orig)
        elif lab["kind"] == "boilerplate":
            bp = Counter(ln.strip() for ln in lab.get("injected_lines", []))
        else:
            bp = Counter()
        total_bp += sum(bp.values())
        removed += sum(gone.values())
        removed_bp += sum((gone & bp).values())
    p, r = _pr(removed_bp, removed, total_bp)
    return {"lines_removed": removed, "line_precision": p, "line_recall": r}


def _pii_level(texts: dict, kept: dict, labels: dict) -> dict:
    """pii-mask per entity: masks in documents with injected PII (capped at the injected count) vs
    all masks, and vs the injected entities."""
    masks = {"EMAIL_ADDRESS": EMAIL_MASK, "PHONE_NUMBER": PHONE_MASK, "IP_ADDRESS": IP_MASK}
    out = {}
    for key, mask in masks.items():
        made = hit = injected = 0
        for i, text in texts.items():
            n = kept.get(i, text).count(mask) - text.count(mask)
            made += n
            inj = labels[i].get("pii", {}).get(key, 0)
            injected += inj
            hit += min(n, inj)
        p, r = _pr(hit, made, injected)
        out[key] = {"masks": made, "injected": injected, "precision": p, "recall": r}
    return {"entities": out}


def filter_table(rows: list[dict]) -> list[str]:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| filter | targets | caught | precision | recall | noise precision | clean docs lost |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['filter']} | {', '.join(r['targets']) or '-'} | {r['caught']} | {fmt(r['precision'])} | "
                     f"{fmt(r['recall'])} | {fmt(r['noise_precision'])} | {r['clean_lost']:.1%} |")
    return lines


def evaluation_markdown(ev: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = filter_table(ev["filters"])
    for r in ev["filters"]:
        lines.append(f"| {r['filter']} | {', '.join(r['targets']) or '-'} | {r['caught']} | {fmt(r['precision'])} | "
                     f"{fmt(r['recall'])} | {fmt(r['noise_precision'])} | {r['clean_lost']:.1%} |")
    for r in ev["filters"]:
        if "line_precision" in r:
            lines.append(f"\n{r['filter']} per line: {r['lines_removed']} lines removed, precision "
                         f"{fmt(r['line_precision'])}, recall {fmt(r['line_recall'])} (boilerplate lines)")
        if "entities" in r:
            ents = "; ".join(f"{k}: {v['masks']} masks for {v['injected']} injected (P {fmt(v['precision'])}, "
                             f"R {fmt(v['recall'])})" for k, v in r["entities"].items())
            lines.append(f"\n{r['filter']} per entity: {ents}")
    p = ev["pipeline"]
    lines += ["", f"whole pipeline: kept {p['docs_out']}/{p['docs_in']} documents ({p['fraction_kept_docs']:.1%}), "
                  f"{p['fraction_kept_bytes']:.1%} of bytes; noise {p['noise_fraction_in']:.1%} of documents in, "
                  f"{p['noise_fraction_out']:.1%} of documents out (by label); documents still holding their "
                  f"noise after the pipeline: {p['residual_noise_docs']} ({p['residual_noise_fraction_out']:.1%} of kept; "
                  "boilerplate and PII documents are repaired, not dropped)", "",
              "| kind | in | kept |", "|---|---:|---:|"]
    lines += [f"| {k} | {p['in_by_kind'][k]} | {p['kept_by_kind'][k]} |" for k in p["in_by_kind"]]
    if ev.get("held_out"):
        h = ev["held_out"]
        lines += ["", f"Held-out half ({h['docs']} odd-indexed documents; the quality classifier was trained on the "
                      f"even-indexed ones, {h['model']}):", ""] + filter_table(h["filters"])
    return "\n".join(lines) + "\n"


# ============================================================================ the study's quality classifier

def label_halves(labelled: list[tuple[str, dict]]) -> tuple[list, list]:
    """(even-indexed, odd-indexed) labelled documents: the classifier trains on one half and is
    evaluated on the other."""
    return labelled[0::2], labelled[1::2]


def train_quality_on_labels(labelled: list[tuple[str, dict]], qsec, out: str | Path, **train_kw):
    """Train the quality classifier on the even-indexed labelled documents: positives are the
    `positive_kinds`, negatives the `negative_kinds` (other kinds are left out)."""
    from lmzoo.plugins.filters.quality_classifier import QualityModel

    train, _ = label_halves(labelled)
    pos = [t for t, lab in train if lab["kind"] in qsec.positive_kinds]
    neg = [t for t, lab in train if lab["kind"] in qsec.negative_kinds]
    model = QualityModel.train(pos, neg, **train_kw)
    model.meta["trained_on"] = {"half": "even", "positive_kinds": list(qsec.positive_kinds),
                                "negative_kinds": list(qsec.negative_kinds)}
    return model, model.save(out)


def evaluate_held_out(filter_specs, labelled: list[tuple[str, dict]], qsec, work_dir: str | Path) -> dict:
    """The quality classifier next to the rule-based quality filters, each alone on the odd-indexed
    (held-out) labelled documents."""
    _, held = label_halves(labelled)
    rules = [s for s in filter_specs if _name(s) in ("gopher-quality", "repetition", "language-id", "length")]
    specs = rules + [{"name": "quality-classifier", "model": qsec.model, "threshold": qsec.threshold}]
    ev = evaluate_filters(specs, held, work_dir, targets={"quality-classifier": set(qsec.negative_kinds)},
                          pipeline=False)
    return {"docs": len(held), "model": qsec.model, "filters": ev["filters"]}


def _name(spec) -> str:
    return spec["name"] if isinstance(spec, dict) else getattr(spec, "name", "")


# ============================================================================ the study's figures and table


def study_report(study_dir: str | Path, evaluation: dict | None, fig_dir: str | Path,
                 prefix: str = "data_quality") -> tuple[str, list[Path]]:
    """Table (per variant: val loss/ppl/bpb on clean held-out text, generation toxicity, data kept)
    and figures (validation curves, per-filter precision/recall, documents kept by noise kind)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study_dir, fig_dir = Path(study_dir), Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    sums = json.loads((study_dir / "summaries.json").read_text()) if (study_dir / "summaries.json").is_file() else \
        [json.loads(p.read_text()) for p in sorted(study_dir.glob("*/summary.json"))]
    fmt = lambda v, f=".4f": "-" if v is None else format(v, f)  # noqa: E731
    keys = ("train_loss", "val_loss", "val_ppl", "val_bpb", "gen_toxicity_rate", "gen_toxicity_mean",
            "data_fraction_kept_docs", "data_fraction_kept_bytes")
    rows = [dict(s) for s in sums]
    by_variant: dict[str, list[dict]] = {}
    for s in sums:
        by_variant.setdefault(s["variant"], []).append(s)
    for v, runs in by_variant.items():
        if len(runs) > 1:  # the mean over seeds, generations pooled
            mean = {"variant": v, "seed": "mean", "tokens": runs[0].get("tokens", 0),
                    "gen_samples": sum(r.get("gen_samples") or 0 for r in runs)}
            for k in keys:
                vals = [r[k] for r in runs if r.get(k) is not None]
                mean[k] = float(np.mean(vals)) if vals else None
            rows.append(mean)
    rows.sort(key=lambda r: (list(by_variant).index(r["variant"]), str(r.get("seed"))))
    lines = ["| variant | seed | tokens | train loss | val loss | val ppl | val bpb | generation toxicity rate | "
             "mean toxicity | docs kept | bytes kept |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in rows:
        lines.append(f"| {s['variant']} | {s.get('seed', '')} | {s.get('tokens', 0):,} | {fmt(s.get('train_loss'))} | "
                     f"{fmt(s.get('val_loss'))} | {fmt(s.get('val_ppl'), '.3f')} | {fmt(s.get('val_bpb'))} | "
                     f"{fmt(s.get('gen_toxicity_rate'), '.3f')} ({s.get('gen_samples', '?')} samples) | "
                     f"{fmt(s.get('gen_toxicity_mean'), '.3f')} | {fmt(s.get('data_fraction_kept_docs'), '.1%')} | "
                     f"{fmt(s.get('data_fraction_kept_bytes'), '.1%')} |")
    figs = []
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {v: f"C{i}" for i, v in enumerate(by_variant)}
    for s in sums:
        mpath = Path(s.get("run_dir") or study_dir / s["variant"]) / "metrics.csv"
        if not mpath.is_file():
            mpath = study_dir / s["variant"] / "metrics.csv"
        if mpath.is_file():
            pts = [r for r in csv.DictReader(mpath.open()) if r.get("val_bpb")]
            if s.get("val_bpb") is not None and (not pts or int(pts[-1]["tokens"]) < s.get("tokens", 0)):
                pts.append({"tokens": s["tokens"], "val_bpb": s["val_bpb"]})  # the final evaluation
            label = s["variant"] + (f" seed {s['seed']}" if len(by_variant[s["variant"]]) > 1 else "")
            ax.plot([int(r["tokens"]) for r in pts], [float(r["val_bpb"]) for r in pts], marker="o", ms=3,
                    color=colors[s["variant"]], alpha=0.9 if s.get("seed", 0) == 0 else 0.5, label=label)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("bits per byte, clean held-out text")
    ax.set_title("raw vs filtered noisy-web")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    figs.append(fig_dir / f"{prefix}_val_bpb.png")
    fig.savefig(figs[-1], dpi=120)
    plt.close(fig)
    if evaluation:
        rows = evaluation["filters"]
        fig, ax = plt.subplots(figsize=(7, 4))
        x = np.arange(len(rows))
        for k, (key, label) in enumerate([("precision", "precision (target kinds)"), ("recall", "recall (target kinds)"),
                                          ("noise_precision", "precision (any noise)")]):
            ax.bar(x + (k - 1) * 0.27, [r[key] or 0 for r in rows], 0.27, label=label)
        ax.set_xticks(x, [r["filter"] for r in rows], rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title("each filter alone on the raw corpus vs noise labels")
        ax.legend(fontsize=7)
        fig.tight_layout()
        figs.append(fig_dir / f"{prefix}_precision_recall.png")
        fig.savefig(figs[-1], dpi=120)
        plt.close(fig)
        p = evaluation["pipeline"]
        kinds = list(p["in_by_kind"])
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(kinds, [p["in_by_kind"][k] for k in kinds], label="raw", color="#cccccc")
        ax.bar(kinds, [p["kept_by_kind"][k] for k in kinds], label="after the pipeline", color="#3070b0")
        ax.set_ylabel("documents")
        ax.set_title(f"documents by label: kept {p['fraction_kept_docs']:.0%} of documents")
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right")
        ax.legend()
        fig.tight_layout()
        figs.append(fig_dir / f"{prefix}_kept_by_kind.png")
        fig.savefig(figs[-1], dpi=120)
        plt.close(fig)
    return "\n".join(lines) + "\n", figs


# ============================================================================ after a training run

def generation_toxicity(model, tokenizer, prompts: list[str], sec, seed: int = 0) -> dict:
    """Sample one text per prompt and score it with the toxicity classifier (the filter's settings)."""
    tox = lmzoo.create("data_filter", "toxicity", **sec.toxicity.model_dump())
    from lmzoo.sampling import generate_many

    texts = generate_many(model, tokenizer, prompts, sec.generation_tokens, temperature=sec.temperature,
                          top_k=sec.top_k, seed=seed)
    scores = [tox.score(t) for t in texts]
    flagged = [s >= sec.toxicity.threshold for s in scores]
    return {"samples": len(texts), "toxicity_rate": float(np.mean(flagged)) if texts else None,
            "toxicity_mean": float(np.mean(scores)) if texts else None,
            "generations": [{"prompt": p, "text": t, "score": s} for p, t, s in zip(prompts, texts, scores)]}


def kept_fractions(recipe, run_dir: Path, source) -> tuple[float | None, float | None]:
    """(documents, bytes) of the training split the data filters kept, read from what the run
    itself used, without filtering again: a `filter-output` source's report, or the token cache
    entry of the filtered split (its document and byte counts) against the raw split's counts."""
    if hasattr(source, "fraction_kept"):
        return source.fraction_kept()
    if not recipe.data.filters:
        return 1.0, 1.0
    from lmzoo.data import default_cache_dir

    manifest = json.loads((Path(run_dir) / "manifest.json").read_text()) if (Path(run_dir) / "manifest.json").is_file() else {}
    key = manifest.get("data", {}).get("train_cache_key")
    meta_path = default_cache_dir() / "tokens" / f"{key}.json"
    if key and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        docs = nbytes = 0
        for text in source.documents("train"):  # counting only, as the data stage counts (empty docs skipped)
            if text:
                docs += 1
                nbytes += len(text.encode("utf-8"))
        return meta["n_docs"] / max(1, docs), meta["n_bytes"] / max(1, nbytes)
    # the token cache lives elsewhere (a custom cache_dir): count by filtering once more
    from lmzoo.plugins.filters.pipeline import apply_filters

    rep: dict = {}
    for _ in apply_filters(source.documents("train"), list(recipe.data.filters), report=rep):
        pass
    return rep.get("fraction_kept_docs"), rep.get("fraction_kept_bytes")


def after_run(recipe, run_dir, summary, sec) -> None:
    """Score sampled generations' toxicity and record the fraction of training data the filters
    kept; both go to toxicity.json and summary.json."""
    from lmzoo.rundir import load_run

    run_dir = Path(run_dir)
    _, model, tok = load_run(run_dir)
    spec = recipe.data.source
    source = lmzoo.create("data_source", spec.name, params=spec)
    prompts, vals = [], list(source.documents("val"))
    for i in range(sec.generations):
        prompts.append(vals[i % len(vals)][: sec.prompt_chars] if vals and sec.prompt_chars else "")
    result = generation_toxicity(model, tok, prompts, sec, seed=recipe.seed)
    (run_dir / "generations.jsonl").write_text(
        "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in result.pop("generations")))
    result["data_fraction_kept_docs"], result["data_fraction_kept_bytes"] = kept_fractions(recipe, run_dir, source)
    (run_dir / "toxicity.json").write_text(json.dumps(result, indent=2))
    summary.update({k if k.startswith("data_") else f"gen_{k}": v for k, v in result.items()})
    sp = run_dir / "summary.json"
    if sp.is_file():
        data = json.loads(sp.read_text())
        data.update({k: summary[k] for k in summary if k.startswith(("gen_", "data_fraction"))})
        sp.write_text(json.dumps(data, indent=2, default=str))
