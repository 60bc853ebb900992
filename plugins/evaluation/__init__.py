"""Working with trained runs: `lmzoo eval` (loss, perplexity and bits per byte at several
contexts, or lm-evaluation-harness tasks), `lmzoo generate` (the KV-cache sampler) and
`lmzoo report` (a study's report rebuilt from whatever runs finished)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import lmzoo


def _echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


def evaluate_run(run_dir: str | Path, contexts: list[int] | None = None, data: list[Path] | None = None,
                 batches: int = 8, batch_size: int = 8, checkpoint: str = "final", plugins=(),
                 trust_plugins: bool = False) -> dict:
    """Loss, perplexity and bits per byte of a trained run at each context length, on its
    validation split or on text files; written to <run_dir>/eval.json (other keys kept)."""
    import numpy as np

    from lmzoo.data import prepare_data
    from lmzoo.evaluate import evaluate_tokens
    from lmzoo.rundir import RunDir, RunError, load_run
    from lmzoo.train import byte_lengths

    recipe, model, tok = load_run(run_dir, checkpoint, plugins=plugins, trust_plugins=trust_plugins)
    contexts = contexts or recipe.eval.contexts or [recipe.data.context]
    if data:
        ids: list[int] = []
        for p in data:
            if not Path(p).is_file():
                raise RunError(f"--data {p}: no such file")
            ids.extend(tok.encode(Path(p).read_text(encoding="utf-8", errors="replace")))
            if tok.eos_id is not None:
                ids.append(tok.eos_id)
        tokens, source = np.asarray(ids, dtype=np.int64), ",".join(map(str, data))
    else:
        tokens, source = prepare_data(recipe, tokenizer=tok).val, "val"
    byte_lens = byte_lengths(tok, model.vocab_size)
    results = {}
    for c in contexts:
        try:
            results[str(c)] = evaluate_tokens(model, tokens, c, batch_size, batches, byte_lens)
        except (ValueError, RuntimeError, IndexError) as exc:
            results[str(c)] = {"error": str(exc).splitlines()[0]}
    run = RunDir(run_dir)
    run.write_json("eval.json", {**(run.read_json("eval.json") or {}), "split": source, "contexts": results})
    return results


def rebuild_report(study_dir: str | Path) -> Path:
    """`lmzoo report`: report.md and plots from whatever runs of a study have finished, naming
    the runs of the study's plan (recorded by `lmzoo run`) that have not."""
    import json
    import sys

    import yaml

    from lmzoo.hooks import hook
    from lmzoo.recipe import RecipeError, validate
    from lmzoo.rundir import RunDir, RunError
    from lmzoo.plugins.commands.study import PLAN

    study_dir = Path(study_dir)
    found = sorted(p.parent for p in study_dir.glob("**/summary.json") if (p.parent / "recipe.resolved.yaml").exists())
    try:
        planned = json.loads((study_dir / PLAN).read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        planned = None
    missing = [d for d in planned or [] if not (study_dir / d / "summary.json").exists()]
    if missing:
        print(f"missing ({len(missing)} of {len(planned)} runs not finished): {', '.join(missing)}", file=sys.stderr)
    elif planned is None:
        print(f"note: {study_dir / PLAN} not found (a study from an older lmzoo?): cannot tell which runs are "
              "missing", file=sys.stderr)
    if not found:
        raise RunError(f"{study_dir} holds no finished run (no */summary.json); train with lmzoo run first")
    summaries, base = [], None
    for rd in found:
        try:
            recipe = validate(yaml.safe_load((rd / "recipe.resolved.yaml").read_text()))
        except RecipeError:
            recipe = None
        base = base or recipe
        summaries.append({**RunDir(rd).summary, "run_dir": str(rd)})
    hook().lmzoo_study_finished(recipe=base, study_dir=study_dir, summaries=summaries, missing=missing)
    return study_dir


def cmd_report(study_dir: Path = typer.Argument(..., help="a study directory (runs/<study>)")):
    """Rebuild a study's report.md, summaries.json and plots from whatever runs have finished.

    \b
    Example:
      lmzoo report runs/rope_vs_alibi
    """
    from lmzoo.rundir import RunError

    try:
        rebuild_report(study_dir)
    except RunError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1)


_PLUGIN_OPT = typer.Option(None, "--plugin", help="a plugin file the run needs (repeatable)")
_TRUST_OPT = typer.Option(False, "--trust-plugins", help="import the plugin files the run's recipe names")


def cmd_eval(
    run_dir: Path = typer.Argument(..., help="a run directory (runs/<study>/<variant>)"),
    context: Optional[str] = typer.Option(None, "--context", help="comma-separated context lengths, e.g. 128,256,512"),
    data: Optional[List[Path]] = typer.Option(None, "--data", help="text file(s) to evaluate on instead of the "
                                                                  "run's validation split"),
    batches: int = typer.Option(8, "--batches", help="evaluation batches per context"),
    batch_size: int = typer.Option(8, "--batch-size"),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last or best"),
    plugin: Optional[List[Path]] = _PLUGIN_OPT,
    trust_plugins: bool = _TRUST_OPT,
    tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-evaluation-harness tasks (names or task YAML "
                                                              "files), comma-separated, instead of loss"),
):
    """Report loss, perplexity and bits per byte of a trained run at each context length
    (length extrapolation), and write them to <run_dir>/eval.json.

    \b
    Example:
      lmzoo eval runs/rope_vs_alibi/alibi --context 128,256,512,1024
      lmzoo eval runs/rope_vs_alibi/rope --data my_text.txt
      lmzoo eval runs/rope_vs_alibi/alibi --tasks lambada_openai,my_task.yaml
    """
    if tasks:  # the interop plugin runs lm-evaluation-harness
        from lmzoo.plugins.interop import eval_tasks_command

        eval_tasks_command(run_dir, tasks.split(","), checkpoint, batch_size, plugin or (), trust_plugins)
        return
    from lmzoo.rundir import RunError

    try:
        contexts = [int(c) for c in context.split(",")] if context else None
    except ValueError:
        _echo_err(f"error: --context {context!r}: give comma-separated integers, e.g. 128,256")
        raise typer.Exit(2)
    try:
        results = evaluate_run(run_dir, contexts, data, batches, batch_size, checkpoint, plugin or (), trust_plugins)
    except RunError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1)
    typer.echo(f"{'context':>8} {'loss':>8} {'ppl':>10} {'bpb':>7}")
    for c, r in results.items():
        if "error" in r:
            typer.echo(f"{c:>8} error: {r['error']}")
        else:
            typer.echo(f"{c:>8} {r['loss']:8.4f} {r['ppl']:10.3f} {r['bpb']:7.4f}")
    typer.echo(f"wrote {run_dir / 'eval.json'}")


def cmd_generate(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    prompt: str = typer.Option("", "--prompt", "-p", help="text to continue"),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help="0 for greedy"),
    top_k: Optional[int] = typer.Option(None, "--top-k"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    seed: int = typer.Option(0, "--seed", help="the same seed gives the same text"),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last or best"),
    window: Optional[int] = typer.Option(None, "--window", help="the model sees at most this many tokens "
                                         "(default: model.max_seq_len); past it each step recomputes the window"),
    plugin: Optional[List[Path]] = _PLUGIN_OPT,
    trust_plugins: bool = _TRUST_OPT,
):
    """Sample text from a trained run (batched KV-cache sampler; the same seed gives the same text).

    \b
    Example:
      lmzoo generate runs/rope_vs_alibi/rope --prompt "ROMEO:" --max-new-tokens 200 --top-k 40 --seed 1
    """
    from lmzoo.rundir import RunError, load_run
    from lmzoo.sampling import generate

    try:
        recipe, model, tok = load_run(run_dir, checkpoint, plugins=plugin or (), trust_plugins=trust_plugins)
    except RunError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1)
    typer.echo(prompt + generate(model, tok, prompt, max_new_tokens, temperature, top_k, top_p, seed, window=window))


@lmzoo.hookimpl
def lmzoo_cli(app):
    for name, fn in (("eval", cmd_eval), ("generate", cmd_generate), ("report", cmd_report)):
        app.command(name)(fn)
