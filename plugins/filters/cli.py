"""`lmzoo filter`: run a recipe's data.filters (on datatrove's executors), evaluate them against
noise labels, and train the quality classifier."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

FILTER_HELP = """Data filtering. `lmzoo filter RECIPE` is `lmzoo filter run RECIPE`.

\b
Examples:
  lmzoo filter recipes/data_quality.yaml --out runs/dq-filtered
  lmzoo filter recipes/data_quality.yaml --input crawl/ --executor local --workers 4
  lmzoo filter recipes/data_quality.yaml --evaluate      # precision/recall vs noisy-web labels
  lmzoo filter train-quality --positive wiki/ --negative crawl/ --out quality.npz
"""


class _RunByDefault(TyperGroup):
    """`lmzoo filter RECIPE ...` means `lmzoo filter run RECIPE ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _fail(msg: str, code: int = 2):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def cmd_run(
    recipe: Path = typer.Argument(..., help="recipe YAML whose data.filters to run"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.path=value overrides"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default runs/<recipe name>/filtered)"),
    inputs: Optional[list[str]] = typer.Option(None, "--input", "-i", help="files, folders or fsspec URLs (JSONL, "
                                               "Parquet, text, HTML, WARC) instead of the data source"),
    executor: Optional[str] = typer.Option(None, "--executor", "-e", help="local | slurm | ray | inline "
                                           "(default: filter.executor)"),
    tasks: Optional[int] = typer.Option(None, "--tasks", help="tasks per pass (default: filter.tasks)"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="tasks at once (default: filter.workers)"),
    text_unit: Optional[str] = typer.Option(None, "--text-unit", help="file | line | paragraph | eot"),
    split: str = typer.Option("train", "--split", help="the data source's split to filter"),
    trace: bool = typer.Option(False, "--trace", help="also write trace/: every drop and modification"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start afresh in an --out folder holding another run"),
    evaluate: bool = typer.Option(False, "--evaluate",
                                  help="score each filter's precision/recall against the source's noise labels"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="print a line per finished stage"),
    verbose: bool = typer.Option(False, "--verbose", help="show datatrove's logs on the console (else in <out>/logs)"),
    study: Optional[Path] = typer.Option(None, "--study", help="with --evaluate: also tabulate this finished "
                                         "`lmzoo run` study (val bpb, generation toxicity) and plot it"),
    figures: Optional[Path] = typer.Option(None, "--figures", help="folder for the --study plots (default --out)"),
):
    """Run a recipe's data.filters over its data source (or --input files) on datatrove's local,
    SLURM or Ray executor. Writes kept/<input name>.jsonl (one per input file), excluded/ (dropped
    documents with the filter and reason), report.json and report.md (per filter: documents and
    bytes in/out, drop reasons, time). Run the same command again after an interruption: completed
    tasks are skipped. Malformed input records are reported with file and line; the run goes on.

    \b
    Example:
      lmzoo filter recipes/data_quality.yaml --out runs/dq-filtered
      lmzoo filter recipes/data_quality.yaml --input crawl/ --text-unit file --workers 4
      lmzoo filter recipes/data_quality.yaml --input s3://bucket/crawl/ --executor slurm filter.slurm.partition=cpu
      lmzoo filter recipes/data_quality.yaml --evaluate      # precision/recall vs noisy-web labels
      lmzoo filter recipes/data_quality.yaml --evaluate --study runs/data_quality --figures notes/figures
    """
    from lmzoo.plugins.filters import FilterSection
    from lmzoo.plugins.filters.document import FilterError, build_filters
    from lmzoo.plugins.filters.pipeline import EXECUTORS, Pipeline, write_shards

    import lmzoo
    from lmzoo.recipe import RecipeError, load_recipe
    from lmzoo.registry import RegistryError

    try:
        rec = load_recipe(recipe, overrides or [])
    except RecipeError as exc:
        _fail(str(exc))
    sec = getattr(rec, "filter", None) or FilterSection()
    specs = list(rec.data.filters)
    if not specs:
        _fail(f"{recipe} has no data.filters; add some, e.g.\n  data:\n    filters:\n"
              "      - {name: gopher-quality}\n      - {name: minhash-dedup, jaccard_threshold: 0.8}\n"
              "(lmzoo list data_filter shows them all)")
    executor = executor or sec.executor
    if executor not in EXECUTORS:
        _fail(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    out = out or Path("runs") / rec.name / "filtered"
    files = list(inputs or []) or [p if "://" in p or Path(p).is_absolute() else str(recipe.parent / p)
                                   for p in sec.inputs]
    say = typer.echo if progress else None
    try:
        filters = build_filters(specs)
        pipe = Pipeline(filters, workers=workers or sec.workers, tasks=tasks or sec.tasks, executor=executor,
                        text_unit=text_unit or sec.text_unit, text_key=sec.text_key, trace=trace,
                        write_excluded=sec.write_excluded, progress=progress, verbose=verbose,
                        executor_options={"slurm": sec.slurm.model_dump(), "ray": sec.ray.model_dump()})
        if files:
            if evaluate:
                raise FilterError("--evaluate needs the recipe's labelled data source, not --input files")
            report = pipe.run(files, out, overwrite=overwrite)
        else:
            source = lmzoo.create("data_source", rec.data.source.name, params=rec.data.source)
            if evaluate:
                _evaluate(source, specs, split, out, study, figures, sec)
                return
            src_dir = out / "source"
            if not (src_dir / ".complete").is_file():
                if say:
                    say(f"writing the {split} split of {rec.data.source.name} to {src_dir}")
                src_dir.mkdir(parents=True, exist_ok=True)
                for old in src_dir.glob("*.jsonl"):
                    old.unlink()
                if hasattr(source, "documents_with_labels"):
                    labelled = source.documents_with_labels(split)
                else:
                    labelled = ((t, {"index": i, "kind": None}) for i, t in enumerate(source.documents(split)))
                records = ({"id": f"doc:{lab.get('index', i)}", "source": rec.data.source.name, "text": t,
                            **({"kind": lab["kind"]} if lab.get("kind") is not None else {})}
                           for i, (t, lab) in enumerate(labelled))
                write_shards(records, src_dir, shard_docs=2000)
                (src_dir / ".complete").write_text(source.fingerprint())
            report = pipe.run([str(src_dir)], out, overwrite=overwrite)
    except (FilterError, RegistryError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if report is None:  # submitted to SLURM: the jobs finish later
        typer.echo(f"submitted; when the jobs finish the report is in {out / 'report.md'} "
                   f"(run the same command again to resubmit unfinished tasks)")
        return
    typer.echo(report.to_markdown())
    typer.echo(f"kept documents in {out / 'kept'}; report in {out / 'report.json'}")
    if report.errors:
        typer.echo(f"warning: {len(report.errors)} malformed input record(s) skipped (listed above)", err=True)


def _evaluate(source, specs, split, out: Path, study, figures, sec):
    from lmzoo.plugins.filters.document import FilterError
    from lmzoo.plugins.filters.study import evaluate_filters, evaluate_held_out, evaluation_markdown, study_report

    if not hasattr(source, "documents_with_labels"):
        raise FilterError(f"--evaluate needs a data source with noise labels (e.g. noisy-web); "
                          f"{getattr(source, 'name', source)} has none")
    labelled = list(source.documents_with_labels(split))
    ev = evaluate_filters(specs, labelled, out / "evaluation")
    if sec.quality.model and Path(sec.quality.model).is_file():
        ev["held_out"] = evaluate_held_out(specs, labelled, sec.quality, out / "evaluation-held-out")
    elif sec.quality.model:
        typer.echo(f"note: no quality classifier at {sec.quality.model} yet (train it with "
                   "`lmzoo filter train-quality --recipe RECIPE`); evaluating the rule-based filters only", err=True)
    (out / "evaluation.json").write_text(json.dumps(ev, indent=2, default=str))
    md = evaluation_markdown(ev)
    if study is not None:
        table, figs = study_report(study, ev, figures or out)
        md = table + "\n" + md + "\n" + "\n".join(f"![{f.name}]({f})" for f in figs) + "\n"
    (out / "evaluation.md").write_text(md)
    typer.echo(md)
    typer.echo(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.md'}")


def cmd_train_quality(
    positive: Optional[list[str]] = typer.Option(None, "--positive", "-p", help="files or folders of good documents "
                                                 "(repeat the option for more)"),
    negative: Optional[list[str]] = typer.Option(None, "--negative", "-n", help="files or folders of bad documents"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="the model file to write (.npz); with --recipe "
                                       "default filter.quality.model"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="instead of files: a recipe whose data source has "
                                          "noise labels (noisy-web); trains on its even-indexed training documents, "
                                          "positives and negatives by filter.quality's kinds"),
    text_unit: str = typer.Option("file", "--text-unit", help="what a document is in a text file: "
                                  "file | line | paragraph | eot (JSONL/Parquet: one record each)"),
    text_key: str = typer.Option("text", "--text-key", help="the text field of JSONL and Parquet records"),
    ngrams: int = typer.Option(2, "--ngrams", min=1, help="word n-grams up to this length are features"),
    features: int = typer.Option(20, "--features", min=10, max=26, help="log2 of the number of hash buckets"),
    c: float = typer.Option(10.0, "--c", min=1e-6, help="inverse regularisation strength of the logistic regression"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.9,
                                       help="share of each class held out to report precision/recall"),
    seed: int = typer.Option(0, "--seed", help="seed of the validation split"),
):
    """Train the `quality-classifier` filter's model: a linear classifier over hashed word 1..n-grams
    (scikit-learn logistic regression), from good (--positive) and bad (--negative) documents.
    Prints held-out precision/recall; use the model with
    `{name: quality-classifier, model: MODEL.npz, threshold: 0.5}` in data.filters.

    \b
    Example:
      lmzoo filter train-quality --positive wiki/ --negative crawl/ --out quality.npz
      lmzoo filter train-quality -p good.jsonl -n spam.jsonl -n boilerplate.jsonl --ngrams 2 --out q.npz
      lmzoo filter train-quality --recipe recipes/data_quality.yaml     # the data-quality study's classifier
    """
    from lmzoo.plugins.filters.document import FilterError
    from lmzoo.plugins.filters.quality_classifier import QualityModel
    from lmzoo.plugins.filters.readers import plan_shards, read_shard

    train_kw = dict(ngrams=ngrams, n_features=2 ** features, c=c, val_fraction=val_fraction, seed=seed)
    if recipe is not None:
        _train_quality_from_recipe(recipe, out, train_kw)
        return
    if not positive or not negative or out is None:
        _fail("give --positive FILES, --negative FILES and --out MODEL (or --recipe RECIPE)")

    def texts(paths, what):
        errors: list = []
        docs = [d.text for s in plan_shards(paths, text_unit) for d in read_shard(s, errors, text_unit, text_key)
                if d.text.strip()]
        for e in errors[:20]:
            typer.echo(f"warning: {e['file']}:{e['line']}: {e['error']} (skipped)", err=True)
        if not docs:
            raise FilterError(f"--{what}: no documents found in {', '.join(map(str, paths))}")
        return docs

    try:
        pos, neg = texts(positive, "positive"), texts(negative, "negative")
        model = QualityModel.train(pos, neg, **train_kw)
        path = model.save(out)
    except FilterError as exc:
        _fail(str(exc))
    _report_training(model, len(pos), len(neg), path)


def _report_training(model, n_pos: int, n_neg: int, path) -> None:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    typer.echo(f"trained on {n_pos} positive and {n_neg} negative documents")
    for part in ("train", "validation"):
        m = model.meta.get(part)
        if m:
            typer.echo(f"{part}: {m['n']} documents, accuracy {fmt(m['accuracy'])}, precision {fmt(m['precision'])}, "
                       f"recall {fmt(m['recall'])} (positive class, threshold 0.5)")
    typer.echo(f"wrote {path}")


def _train_quality_from_recipe(recipe: Path, out, train_kw: dict) -> None:
    from lmzoo.plugins.filters import FilterSection
    from lmzoo.plugins.filters.document import FilterError
    from lmzoo.plugins.filters.study import train_quality_on_labels

    import lmzoo
    from lmzoo.recipe import RecipeError, load_recipe

    try:
        rec = load_recipe(recipe, [])
    except RecipeError as exc:
        _fail(str(exc))
    sec = getattr(rec, "filter", None) or FilterSection()
    out = out or (Path(sec.quality.model) if sec.quality.model else None)
    if out is None:
        _fail(f"{recipe}: set filter.quality.model (where to write the classifier) or give --out")
    source = lmzoo.create("data_source", rec.data.source.name, params=rec.data.source)
    if not hasattr(source, "documents_with_labels"):
        _fail(f"--recipe needs a data source with noise labels (e.g. noisy-web); {rec.data.source.name} has none")
    labelled = list(source.documents_with_labels("train"))
    try:
        model, path = train_quality_on_labels(labelled, sec.quality, out, **train_kw)
    except FilterError as exc:
        _fail(str(exc))
    typer.echo(f"{rec.data.source.name}: the even-indexed half of {len(labelled)} labelled training documents; "
               f"positive {', '.join(sec.quality.positive_kinds)}; negative {', '.join(sec.quality.negative_kinds)}")
    _report_training(model, model.meta["positives"], model.meta["negatives"], path)


def filter_app() -> typer.Typer:
    app = typer.Typer(cls=_RunByDefault, help=FILTER_HELP, no_args_is_help=True, add_completion=False,
                      context_settings={"help_option_names": ["-h", "--help"]})
    app.command("run")(cmd_run)
    app.command("train-quality")(cmd_train_quality)
    return app
