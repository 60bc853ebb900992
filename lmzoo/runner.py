"""One run: a variant at a seed -> one run directory (a study of many is `lmzoo.plugins.commands.study`).

Existing results are never overwritten silently: `--resume` continues (after checking that the
recipe still matches the one recorded), `--overwrite` deletes only run directories lmzoo made
inside the study directory, and a second process writing the same run is refused at once.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from .accounting import steps_for_budget, tokens_per_step
from .recipe import Recipe, to_dict, to_yaml
from .rundir import RunDir, RunError, device_name, git_info, is_rank_zero, now, remove_tree, versions

# Recipe keys a resume may change (recorded in the manifest); any other difference is refused.
RESUMABLE = ("description", "plugins", "quick", "train.budget", "train.stop_at", "train.val_every", "train.log_every",
             "train.val_batches", "train.optimizer.lr", "train.grad_clip", "eval", "trainer.loggers", "launch")


_FIRST_RUN = [True]


def process_age() -> float:
    """Seconds since this process started, for the first run of the process (the startup share of
    the timing split); 0 for later runs, whose startup was counted already."""
    if not _FIRST_RUN[0]:
        return 0.0
    _FIRST_RUN[0] = False
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_changes(recorded: dict, current: dict) -> tuple[list[str], list[str]]:
    """(keys a resume may change, keys it may not) that differ between two resolved recipes."""
    a, b = _flat(recorded), _flat(current)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    ok = [k for k in keys if any(k == r or k.startswith(r + ".") for r in RESUMABLE)]
    return ok, [k for k in keys if k not in ok]


def check_resume(run: RunDir, recipe: Recipe) -> list[str]:
    """Compare `recipe` with the run's recorded one; refuse changes a resume cannot honour.
    Returns the keys that changed and may (a larger budget, other evaluation contexts, ...)."""
    import yaml

    rfile = run / "recipe.resolved.yaml"
    if not rfile.is_file():
        return []
    recorded = yaml.safe_load(rfile.read_text()) or {}
    ok, refused = recipe_changes(recorded, to_dict(recipe))
    if refused:
        shown = ", ".join(f"{k} ({_flat(recorded).get(k)!r} -> {_flat(to_dict(recipe)).get(k)!r})" for k in refused[:8])
        raise RunError(f"--resume: the recipe differs from the one {run.path} was trained with: {shown}"
                       f"{' ...' if len(refused) > 8 else ''}; a resume may change only "
                       f"{', '.join(RESUMABLE)}. Use --overwrite to start again or --out for a new run")
    return ok


# ============================================================================ one run

def check_memory(recipe: Recipe, vocab: int) -> None:
    """Refuse a model whose weights, gradients and two optimizer moments (16 bytes a parameter in
    float32) cannot fit in this machine's memory, before anything is allocated."""
    from .accounting import meta_model

    params = meta_model(recipe.model, recipe.data.context, vocab)[0].num_params()
    need = 16 * params
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return
    if need > have:
        m = recipe.model
        raise RunError(f"the model has {params:,} parameters ({need / 2**30:,.1f} GiB to train in float32), more "
                       f"than this machine's {have / 2**30:,.1f} GiB of memory (model.d_model={m.d_model}, "
                       f"n_layers={m.n_layers}, d_ff={m.d_ff}, vocab {vocab}); make the model smaller")


def check_schedule(recipe: Recipe, steps: int | None) -> None:
    """The lr schedule can be built for the steps the budget buys (a warm-up longer than the run
    is one line naming the budget, not a traceback from inside training)."""
    from .accounting import SECONDS_TICKS
    from .hooks import get_registry

    tr = recipe.train
    try:
        get_registry().create("lr_schedule", tr.lr_schedule.name, params=tr.lr_schedule, max_lr=tr.optimizer.lr,
                              total_steps=steps or SECONDS_TICKS)
    except ValueError as exc:
        raise RunError(f"train.budget buys {steps} steps, too few for train.lr_schedule ({exc}); lower "
                       "train.lr_schedule.warmup_steps or raise train.budget") from None


def _loggers(recipe: Recipe, run: RunDir, study: str) -> list:
    from .hooks import get_registry

    reg, config = get_registry(), to_dict(recipe)
    return [reg.create("logger", spec.name, params=spec, save_dir=run.path, study=study,
                       run_name=f"{recipe.variant}-seed{recipe.seed}", config=config)
            for spec in recipe.trainer.loggers]


def train_run(recipe: Recipe, run_dir: str | Path, resume: bool = False, overwrite: bool = False, bundle=None,
              callbacks=(), progress: bool | None = None, study: str | None = None, inside: str | Path | None = None
              ) -> dict:
    """Train one run (a variant at a seed) into `run_dir`; returns its summary (with a `timing`
    split). `inside`: the study directory `--overwrite` may delete within (default: the run's parent)."""
    run = RunDir(run_dir)
    with run.lock() if is_rank_zero() else nullcontext():
        return _train_locked(recipe, run, resume, overwrite, bundle, callbacks, progress, study or recipe.name,
                             Path(inside) if inside else run.path.parent)


def _train_locked(recipe, run: RunDir, resume, overwrite, bundle, callbacks, progress, study, inside) -> dict:
    import lightning as L

    from .data import DataError, prepare_data
    from .train import LMModule, NonFiniteLoss, byte_lengths, make_trainer

    timing = {"startup": process_age()}
    t_start = time.perf_counter()
    last = run.checkpoint("last")
    changes: list[str] = []
    if overwrite and (run / "recipe.resolved.yaml").exists() and is_rank_zero():
        remove_tree(run.path, inside)
        run.path.mkdir(parents=True, exist_ok=True)
    elif run.summary is not None:
        if not resume:
            raise RunError(f"results already exist in {run.path}; pass --resume to keep them, --overwrite to replace "
                           "them, or --out to write elsewhere")
        changes = check_resume(run, recipe)
        if not changes:
            return run.summary
    elif last.exists() and not resume:
        raise RunError(f"an interrupted run is in {run.path}; pass --resume to continue it or --overwrite to restart")
    elif resume:
        changes = check_resume(run, recipe)
    ckpt_path = None
    if resume and last.exists():
        run.load_checkpoint("last")  # a clear error now (checksum, corruption) rather than deep inside Lightning
        ckpt_path = str(last)
    if is_rank_zero():
        run.create()

    L.seed_everything(recipe.seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    try:
        bundle = bundle or prepare_data(recipe)
    except DataError as exc:
        raise RunError(f"data: {exc}") from None
    timing["data"] = time.perf_counter() - t0
    tok = bundle.tokenizer
    vocab = recipe.model.vocab_size or tok.vocab_size
    if vocab < tok.vocab_size:
        raise RunError(f"model.vocab_size={vocab} is smaller than the tokenizer's {tok.vocab_size}; "
                       "leave it unset to take the tokenizer's")
    check_memory(recipe, vocab)
    L.seed_everything(recipe.seed, workers=True, verbose=False)  # init does not depend on data prep
    byte_lens = byte_lengths(tok, vocab)
    try:
        module = LMModule(recipe, vocab, None, byte_lens, eos_id=tok.eos_id)
    except ValueError as exc:  # a model the recipe describes but this tokenizer or plugin cannot build
        raise RunError(f"model: {exc}") from None
    fpt = module.model.flops_per_token(recipe.data.context)
    try:
        steps = steps_for_budget(recipe, fpt)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    check_schedule(recipe, steps)
    module.total_steps = steps

    if is_rank_zero():
        run.write_text("recipe.resolved.yaml", to_yaml(recipe))
        if not (run / "tokenizer").exists():
            tok.save(run / "tokenizer")
        manifest = run.manifest
        resumes = list(manifest.get("resumes") or [])
        if ckpt_path or changes:
            resumes.append({"at": now(), "from": ckpt_path, "changed": changes})
        run.write_json("manifest.json", {
            **manifest, "variant": recipe.variant, "seed": recipe.seed, "started": manifest.get("started") or now(),
            "git": git_info(), "versions": versions(), "device": device_name(recipe.trainer.accelerator),
            "host": socket.gethostname(), "command": sys.argv,
            "data": {"source": recipe.data.source.name, "source_hash": bundle.fingerprints.get("source"),
                     "train_tokens": bundle.train.n_tokens, "train_bytes": bundle.train.n_bytes,
                     "val_tokens": bundle.val.n_tokens, "val_bytes": bundle.val.n_bytes,
                     "train_cache_key": bundle.fingerprints.get("train"),
                     "val_cache_key": bundle.fingerprints.get("val")},
            "tokenizer": {"name": recipe.data.tokenizer.name, "hash": tok.fingerprint(), "vocab_size": tok.vocab_size},
            "steps": steps, "resumes": resumes})

    from .train import DataModule

    tr = recipe.train
    trainer, named = make_trainer(recipe, run, steps, tokens_per_step=tr.batch_size * recipe.data.context * tr.accumulate,
                                  callbacks=callbacks, loggers=_loggers(recipe, run, study),
                                  progress=True if progress is None else progress)
    module.clock = named["clock"]
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=DataModule(bundle, recipe, steps), ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:  # Lightning exits after a graceful shutdown on Ctrl-C
        if not trainer.interrupted:
            raise
    except NonFiniteLoss as exc:
        good = f"{last} (step {trainer.global_step - trainer.global_step % tr.val_every})" if last.exists() else None
        lr = tr.optimizer.lr
        raise RunError(f"{exc}; stopped. {'Last good checkpoint: ' + good if good else 'No checkpoint yet'}. "
                       f"Continue from it with a lower learning rate: lmzoo run RECIPE --resume "
                       f"train.optimizer.lr={lr / 2:g} (the change is recorded in manifest.json), or start again "
                       f"with --overwrite and a lower train.optimizer.lr or precision 32-true") from None
    if trainer.interrupted:
        raise RunError(f"run interrupted at step {trainer.global_step}; continue with --resume "
                       f"(last checkpoint: {last if last.exists() else 'none yet'})")
    fit_s = time.perf_counter() - t0
    # a final checkpoint at the last step, so --resume on a finished run changes nothing
    trainer.save_checkpoint(str(last) + ".tmp")
    if not is_rank_zero() or trainer.global_rank != 0:
        return {}
    os.replace(str(last) + ".tmp", last)
    run.record_checkpoint(last)
    metrics, clock = named["metrics"], named["clock"]
    timing["train"] = fit_s - metrics.val_time
    timing["eval"] = metrics.val_time

    t0 = time.perf_counter()
    summary = _finish(recipe, run, module, bundle, byte_lens, trainer, named, fpt, steps)
    timing["eval"] += time.perf_counter() - t0
    timing["total_run"] = time.perf_counter() - t_start + timing["startup"]
    summary["timing"] = {k: round(v, 3) for k, v in timing.items()}
    summary["wall_s"] = fit_s
    summary["train_wall_s"] = clock.elapsed()
    run.write_json("summary.json", summary)
    run.update_manifest(finished=summary["finished"])
    from .hooks import hook

    hook().lmzoo_run_finished(recipe=recipe, run_dir=run.path, summary=summary, loggers=list(trainer.loggers))
    return summary


def _finish(recipe, run: RunDir, module, bundle, byte_lens, trainer, named, fpt, steps) -> dict:
    """Final evaluation (whole validation split, extrapolation contexts), model export, summary."""
    from .evaluate import evaluate_tokens

    tr = recipe.train
    model = module.model.eval()
    device = module.device
    # the whole split by default: windows are counted in tokens, so a fixed number of batches would
    # cover different text for different tokenizers
    n_val = (bundle.val.n_tokens // (recipe.data.context * tr.batch_size) + 1) if recipe.eval.full_val else tr.val_batches
    precision = recipe.trainer.precision
    final = evaluate_tokens(model, bundle.val, recipe.data.context, tr.batch_size, n_val, byte_lens, device=device,
                            precision=precision)
    extrapolation = {}
    for ctx in recipe.eval.contexts:
        try:
            extrapolation[str(ctx)] = evaluate_tokens(model, bundle.val, ctx, max(1, tr.batch_size * recipe.data.context
                                                                                  // ctx),
                                                      recipe.eval.batches, byte_lens, device=device,
                                                      precision=precision)
        except (ValueError, RuntimeError, IndexError) as exc:
            extrapolation[str(ctx)] = {"error": str(exc).splitlines()[0]}
    if extrapolation:
        run.write_json("eval.json", {"split": "val", "contexts": extrapolation})
    from safetensors.torch import save_model

    tmp = run / "model.safetensors.tmp"
    save_model(model, str(tmp))
    os.replace(tmp, run / "model.safetensors")

    m = trainer.callback_metrics
    tokens = trainer.global_step * tokens_per_step(recipe)
    stopped = (named["stop_at"] and named["stop_at"].stopped_at) or named["clock"].stopped_at
    ckpt = named["checkpoint"]
    return {
        "variant": recipe.variant, "seed": recipe.seed,
        "params": model.num_params(), "params_nonembedding": model.num_params(embeddings=False),
        "steps": trainer.global_step, "planned_steps": steps, "tokens": tokens, "flops": fpt * tokens,
        "flops_per_token": fpt, "flops_6n": model.flops_per_token(recipe.data.context, exact=False),
        "train_loss": float(m["train_loss"]) if "train_loss" in m else None,
        "val_loss": final["loss"], "val_ppl": final["ppl"], "val_bpb": final["bpb"],
        "best_val_loss": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
        "tokens_per_s": named["metrics"].tokens_per_s, "stopped": stopped or None,
        "bytes_per_token": bundle.val.bytes_per_token,
        "extrapolation": {k: v.get("ppl") for k, v in extrapolation.items()},
        "finished": now(),
    }


__all__ = ["RunError", "check_resume", "recipe_changes", "train_run"]
