"""Runs: one variant/seed -> one run directory; a study -> every run, then a report.

A run directory holds recipe.resolved.yaml, manifest.json, metrics.csv, checkpoints/
(last.ckpt, best.ckpt; written atomically), tokenizer/, model.safetensors, eval.json and
summary.json. Existing results are never overwritten silently.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import __version__
from .recipe import Run, load_runs, recipe_model, to_yaml


class RunError(Exception):
    """A run could not start or finish; the message says why and what to do."""


# ----------------------------------------------------------------------------- helpers

def _quiet_lightning() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def git_info() -> dict:
    """Commit and dirty flag of the lmzoo checkout (or the working directory's repo)."""
    for where in (Path(__file__).resolve().parents[1], Path.cwd()):
        try:
            commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10)
            if commit.returncode != 0:
                continue
            dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip()), "repo": str(where)}
        except (OSError, subprocess.SubprocessError):
            continue
    return {"commit": None, "dirty": None, "repo": None}


def device_name(accelerator: str = "auto") -> str:
    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} cores)"


def _versions() -> dict:
    import lightning
    import pydantic

    return {"lmzoo": __version__, "torch": torch.__version__, "lightning": lightning.__version__,
            "pydantic": pydantic.__version__, "python": platform.python_version()}


def world_size(recipe) -> int:
    t = recipe.trainer
    devices = t.devices
    if isinstance(devices, str):
        if devices in ("auto", "-1"):
            devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
        else:
            devices = len(devices.split(",")) if "," in devices else int(devices)
    return max(1, int(devices)) * t.num_nodes


def total_steps(recipe, flops_per_token: float) -> int:
    """Optimizer steps that spend the budget (steps, tokens or FLOPs) on all devices together."""
    b = recipe.train.budget
    tokens_per_step = recipe.train.batch_size * recipe.data.context * recipe.train.accumulate * world_size(recipe)
    if b.steps is not None:
        return int(b.steps)
    if b.tokens is not None:
        return max(1, round(b.tokens / tokens_per_step))
    return max(1, round(b.flops / (flops_per_token * tokens_per_step)))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint without running code from it (weights_only); a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} is missing; train the run first (lmzoo run) or point at another run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle opcode, disallowed global ...
        raise RunError(f"checkpoint {path} is corrupt or not a safe checkpoint ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200]}); delete it and resume from another, or re-train "
                       "with --overwrite") from None


# ----------------------------------------------------------------------------- one run

def train_run(recipe, run_dir: str | Path, resume: bool = False, overwrite: bool = False, bundle=None,
              callbacks=(), progress: bool | None = None) -> dict:
    """Train one run (a variant at a seed) into `run_dir`; returns its summary."""
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    from .data import DataError, prepare_data
    from .evaluate import evaluate_tokens
    from .train import (
        AtomicCheckpoint,
        DataModule,
        LineProgress,
        LMModule,
        MetricsCSV,
        NonFiniteLoss,
        byte_lengths,
    )

    _quiet_lightning()
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    last = run_dir / "checkpoints" / "last.ckpt"
    if summary_path.exists() and not overwrite:
        if resume:
            return json.loads(summary_path.read_text())
        raise RunError(f"results already exist in {run_dir}; pass --resume to keep them, --overwrite to replace "
                       "them, or --out to write elsewhere")
    if run_dir.exists() and overwrite and _is_rank_zero():
        shutil.rmtree(run_dir)
    if last.exists() and not resume and not overwrite:
        raise RunError(f"an interrupted run is in {run_dir}; pass --resume to continue it or --overwrite to restart")
    ckpt_path = None
    if resume and last.exists():
        load_checkpoint(last)  # a clear error now rather than deep inside Lightning
        ckpt_path = str(last)
    run_dir.mkdir(parents=True, exist_ok=True)

    started = datetime.now(timezone.utc).isoformat()
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    try:
        bundle = bundle or prepare_data(recipe)
    except DataError as exc:
        raise RunError(f"data: {exc}") from None
    tok = bundle.tokenizer
    vocab = recipe.model.vocab_size or tok.vocab_size
    if vocab < tok.vocab_size:
        raise RunError(f"model.vocab_size={vocab} is smaller than the tokenizer's {tok.vocab_size}; "
                       "leave it unset to take the tokenizer's")
    L.seed_everything(recipe.seed, workers=True, verbose=False)  # init does not depend on data prep
    byte_lens = byte_lengths(tok, vocab)
    # the model's FLOPs decide the step count for FLOP budgets
    try:
        module = LMModule(recipe, vocab, 1, byte_lens, eos_id=tok.eos_id)
    except ValueError as exc:  # a model the recipe describes but this tokenizer or plugin cannot build
        raise RunError(f"model: {exc}") from None
    fpt = module.model.flops_per_token(recipe.data.context)
    steps = total_steps(recipe, fpt)
    module.total_steps = steps

    if _is_rank_zero():
        _atomic_write(run_dir / "recipe.resolved.yaml", to_yaml(recipe))
        tok_dir = run_dir / "tokenizer"
        if not tok_dir.exists():
            tok.save(tok_dir)
        manifest = {
            "variant": recipe.variant, "seed": recipe.seed, "started": started, "git": git_info(),
            "versions": _versions(), "device": device_name(recipe.trainer.accelerator),
            "host": socket.gethostname(), "command": sys.argv,
            "data": {"source": recipe.data.source.name, "source_hash": bundle.fingerprints.get("source"),
                     "train_tokens": bundle.train.n_tokens, "train_bytes": bundle.train.n_bytes,
                     "val_tokens": bundle.val.n_tokens, "val_bytes": bundle.val.n_bytes,
                     "train_cache_key": bundle.fingerprints.get("train"), "val_cache_key": bundle.fingerprints.get("val")},
            "tokenizer": {"name": recipe.data.tokenizer.name, "hash": tok.fingerprint(), "vocab_size": tok.vocab_size},
            "steps": steps, "resumed_from": ckpt_path,
        }
        _atomic_write(run_dir / "manifest.json", json.dumps(manifest, indent=2))

    tr, t = recipe.train, recipe.trainer
    tokens_per_step = tr.batch_size * recipe.data.context * tr.accumulate
    metrics = MetricsCSV(run_dir / "metrics.csv", tr.log_every, tokens_per_step)
    ckpt = AtomicCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val_loss", mode="min",
                            save_top_k=1, save_last=True, enable_version_counter=False, auto_insert_metric_name=False)
    if progress is None:
        progress = True
    cbs = [metrics, ckpt, *callbacks]
    tty = sys.stderr.isatty()
    if progress and not tty:  # a line every 10% in logs; a live bar on a terminal
        cbs.append(LineProgress(steps))
    progress = progress and tty
    if progress:
        cbs.append(TQDMProgressBar(refresh_rate=1))
    loggers = []
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    except ImportError:
        pass
    strategy = t.strategy
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=strategy,
        precision=t.precision, max_steps=steps, max_epochs=-1, val_check_interval=tr.val_every * tr.accumulate,
        check_val_every_n_epoch=None, gradient_clip_val=tr.grad_clip, accumulate_grad_batches=tr.accumulate,
        callbacks=cbs, logger=loggers or False, enable_progress_bar=progress, log_every_n_steps=tr.log_every,
        num_sanity_val_steps=0, use_distributed_sampler=False, default_root_dir=str(run_dir),
        enable_model_summary=False, deterministic=t.deterministic,
    )
    data = DataModule(bundle, recipe, steps)
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:  # Lightning exits after a graceful shutdown on Ctrl-C
        if not trainer.interrupted:
            raise
    except NonFiniteLoss as exc:
        good = last if last.exists() else None
        raise RunError(f"{exc}; stopped. Last good checkpoint: {good or 'none yet'}. Lower train.optimizer.lr, "
                       "set train.grad_clip, or use precision 32-true") from None
    if trainer.interrupted:
        raise RunError(f"run interrupted at step {trainer.global_step}; continue with --resume "
                       f"(last checkpoint: {last if last.exists() else 'none yet'})")
    wall = time.perf_counter() - t0
    # a final checkpoint at the last step, so --resume on a finished run changes nothing
    trainer.save_checkpoint(str(last) + ".tmp")
    if not _is_rank_zero() or trainer.global_rank != 0:
        return {}
    os.replace(str(last) + ".tmp", last)

    model = module.model.eval()
    device = module.device
    # the whole split by default: windows are counted in tokens, so a fixed number of batches would
    # cover different text for different tokenizers
    n_val = (bundle.val.n_tokens // (recipe.data.context * tr.batch_size) + 1) if recipe.eval.full_val else tr.val_batches
    final = evaluate_tokens(model, bundle.val, recipe.data.context, tr.batch_size, n_val, byte_lens, device=device)
    extrapolation = {}
    for ctx in recipe.eval.contexts:
        try:
            extrapolation[str(ctx)] = evaluate_tokens(model, bundle.val, ctx, max(1, tr.batch_size * recipe.data.context // ctx),
                                                      recipe.eval.batches, byte_lens, device=device)
        except (ValueError, RuntimeError, IndexError) as exc:
            extrapolation[str(ctx)] = {"error": str(exc).splitlines()[0]}
    if extrapolation:
        _atomic_write(run_dir / "eval.json", json.dumps({"split": "val", "contexts": extrapolation}, indent=2))
    try:
        from safetensors.torch import save_model

        save_model(model, str(run_dir / "model.safetensors"))
    except Exception as exc:  # export is a convenience; training results stand
        logging.getLogger(__name__).warning("safetensors export failed: %s", exc)

    m = trainer.callback_metrics
    tokens = trainer.global_step * tokens_per_step * trainer.world_size
    summary = {
        "variant": recipe.variant, "seed": recipe.seed,
        "params": model.num_params(), "params_nonembedding": model.num_params(embeddings=False),
        "steps": trainer.global_step, "tokens": tokens, "flops": fpt * tokens,
        "flops_per_token": fpt, "flops_6n": model.flops_per_token(recipe.data.context, exact=False),
        "train_loss": float(m["train_loss"]) if "train_loss" in m else None,
        "val_loss": final["loss"], "val_ppl": final["ppl"], "val_bpb": final["bpb"],
        "best_val_loss": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
        "tokens_per_s": metrics.tokens_per_s, "wall_s": wall, "train_wall_s": metrics.wall(),
        "bytes_per_token": bundle.val.bytes_per_token,
        "extrapolation": {k: v.get("ppl") for k, v in extrapolation.items()},
        "finished": datetime.now(timezone.utc).isoformat(),
    }
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["finished"] = summary["finished"]
    _atomic_write(run_dir / "manifest.json", json.dumps(manifest, indent=2))
    _atomic_write(summary_path, json.dumps(summary, indent=2))
    return summary


# ----------------------------------------------------------------------------- a study

def run_dir_for(study_dir: Path, run: Run, n_seeds: int) -> Path:
    name = run.variant.replace("/", "_").replace(",", "__").replace("=", "-")
    return study_dir / name / f"seed{run.seed}" if n_seeds > 1 else study_dir / name


def run_study(path, overrides=(), quick: bool = False, out=None, resume: bool = False, overwrite: bool = False,
              loaded=None, progress: bool | None = None) -> Path:
    """Train every run of a recipe, then write report.md and plots beside the run directories."""
    from .hooks import get_state
    from .report import write_report

    base, runs = loaded or load_runs(path, overrides, quick=quick)
    study_dir = Path(out) if out else Path("runs") / (base.name + ("-quick" if quick else ""))
    study_dir.mkdir(parents=True, exist_ok=True)
    hook = get_state().manager.hook
    claimed = hook.lmzoo_run_recipe(recipe=base, runs=runs, out_dir=study_dir,
                                    options={"resume": resume, "quick": quick, "overwrite": overwrite,
                                             "path": str(path), "overrides": list(overrides)})
    if claimed is not None:
        return study_dir
    n_seeds = len({r.seed for r in runs})
    summaries = []
    for i, run in enumerate(runs):
        rd = run_dir_for(study_dir, run, n_seeds)
        print(f"[{i + 1}/{len(runs)}] {run.variant} seed={run.seed} -> {rd}", file=sys.stderr, flush=True)
        summary = train_run(run.recipe, rd, resume=resume, overwrite=overwrite, progress=progress)
        if not summary:  # a non-zero DDP rank
            continue
        summary["run_dir"] = str(rd)
        summaries.append(summary)
        hook.lmzoo_after_run(recipe=run.recipe, run_dir=rd, summary=summary)
    if summaries and _is_rank_zero():
        table = write_report(study_dir, base, summaries)
        print(table)
    return study_dir


# ----------------------------------------------------------------------------- reading runs back

def load_run(run_dir: str | Path, checkpoint: str = "final"):
    """(recipe, model, tokenizer) of a finished or interrupted run. `checkpoint`: final
    (model.safetensors, else last.ckpt), last or best."""
    from .hooks import get_registry, load_plugin_files
    from .model import build_model

    run_dir = Path(run_dir)
    rfile = run_dir / "recipe.resolved.yaml"
    if not rfile.is_file():
        raise RunError(f"{run_dir} is not a run directory (no recipe.resolved.yaml)")
    import yaml

    doc = yaml.safe_load(rfile.read_text())
    load_plugin_files(doc.get("plugins") or [])
    try:
        recipe = recipe_model().model_validate(doc)
    except Exception as exc:
        raise RunError(f"{rfile} no longer validates ({exc}); are its plugins installed?") from None
    reg = get_registry()
    tok_spec = recipe.data.tokenizer
    tok_cls = type(reg.create("tokenizer", tok_spec.name, params=tok_spec))
    tok = tok_cls.load(run_dir / "tokenizer")
    vocab = recipe.model.vocab_size or tok.vocab_size
    model = build_model(recipe.model.model_copy(update={"vocab_size": vocab}), eos_id=tok.eos_id)
    st = run_dir / "model.safetensors"
    if checkpoint == "final" and st.is_file():
        from safetensors.torch import load_model

        load_model(model, str(st))
    else:
        name = "best" if checkpoint == "best" else "last"
        state = load_checkpoint(run_dir / "checkpoints" / f"{name}.ckpt")["state_dict"]
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        model.load_state_dict(state)
    return recipe, model.eval(), tok
