"""Training with Lightning: the one trainer every stage uses.

- `build_optimizer`: the recipe's optimizer and lr schedule from the registries, as Lightning's
  `configure_optimizers` returns them (any LightningModule of a stage calls it).
- `make_trainer`: the Trainer, with lmzoo's callbacks (metrics.csv, atomic checksummed
  checkpoints, progress lines, stop targets, a wall-clock budget) and the recipe's loggers.
- `LMModule`/`DataModule`: next-token pretraining. Batches depend only on (seed, step, rank)
  (see `lmzoo.data.WindowSampler`), so a resumed run sees exactly the batches the
  uninterrupted one would have seen.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from .accounting import SECONDS_TICKS
from .hooks import get_registry
from .model import build_model



class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite."""


def quiet_lightning() -> None:
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def byte_lengths(tokenizer, vocab_size: int) -> torch.Tensor:
    """UTF-8 byte length of every token id (special tokens count 0), for exact bits per byte."""
    out = torch.zeros(vocab_size, dtype=torch.float64)
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        try:
            out[i] = len(tokenizer.token_bytes(i))
        except Exception:
            out[i] = 0
    return out


# ============================================================================ optimizer and schedule

def build_optimizer(module: L.LightningModule, model: torch.nn.Module, train, total_steps: int | None):
    """The optimizer and lr schedule of a recipe's `train` section for `model`, in Lightning's
    form. With `total_steps` None (a budget of seconds alone) the schedule advances with the
    module's `elapsed_fraction()` instead of the step."""
    reg = get_registry()
    opt = reg.create("optimizer", train.optimizer.name, params=train.optimizer,
                     context={"params": list(model.named_parameters())})
    max_lr = train.optimizer.lr
    sched = reg.create("lr_schedule", train.lr_schedule.name, params=train.lr_schedule, max_lr=max_lr,
                       total_steps=total_steps or SECONDS_TICKS)
    # LambdaLR multiplies each group's initial lr (groups may start at other lrs, e.g. muon's).
    # A plain function (not an object) keeps the schedule out of the checkpoint, which then
    # loads with weights_only=True.
    if total_steps:
        def lr_lambda(step, sched=sched, max_lr=max_lr):
            return sched(step) / max_lr
    else:
        def lr_lambda(step, sched=sched, max_lr=max_lr):
            return sched(min(SECONDS_TICKS, int(module.elapsed_fraction() * SECONDS_TICKS))) / max_lr
    module.fresh_lrs = [g["lr"] for g in opt.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def honour_recipe_lrs(module: L.LightningModule) -> None:
    """After a resume, the recipe's learning rates win over those saved in the checkpoint (a
    resume may lower the lr; the change is recorded in the manifest)."""
    trainer = module.trainer
    if not trainer.lr_scheduler_configs or not getattr(module, "fresh_lrs", None):
        return
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    scheduler.base_lrs = list(module.fresh_lrs)
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * fn(scheduler.last_epoch)


# ============================================================================ pretraining

class StepBatches(torch.utils.data.IterableDataset):
    """Yields micro-batch `i` = sampler.batch(i) for i from the resumed position on."""

    def __init__(self, sampler, total_micro_steps: int, start_fn):
        self.sampler, self.total, self.start_fn = sampler, total_micro_steps, start_fn

    def __iter__(self):
        for i in range(self.start_fn(), self.total):
            yield self.sampler.batch(i)


class DataModule(L.LightningDataModule):
    def __init__(self, bundle, recipe, total_steps: int | None):
        super().__init__()
        self.bundle, self.recipe, self.total_steps = bundle, recipe, total_steps
        self._val = None

    def train_dataloader(self):
        from .data import WindowSampler

        rank = self.trainer.global_rank if self.trainer else 0
        tr = self.recipe.train
        sampler = WindowSampler(self.bundle.train, self.bundle.context, tr.batch_size, seed=self.recipe.seed, rank=rank)
        acc = tr.accumulate
        start = lambda: (self.trainer.global_step if self.trainer else 0) * acc  # noqa: E731
        total = (self.total_steps or 2**62) * acc
        return torch.utils.data.DataLoader(StepBatches(sampler, total, start), batch_size=None)

    def val_dataloader(self):
        if self._val is None:
            tr = self.recipe.train
            self._val = self.bundle.val_batches(tr.batch_size, tr.val_batches)
        return torch.utils.data.DataLoader(self._val, batch_size=None)


class LMModule(L.LightningModule):
    """Next-token prediction for a model assembled from the recipe."""

    def __init__(self, recipe, vocab_size: int, total_steps: int | None, byte_lens: torch.Tensor | None = None,
                 eos_id: int | None = None):
        super().__init__()
        from lmzoo.plugins.kernels import kernel_set

        self.recipe = recipe
        self.model = build_model(recipe.model.model_copy(update={"vocab_size": vocab_size}), eos_id=eos_id)
        if self.model.needs_documents and eos_id is None:
            raise ValueError("attention.mask=document and position_reset need documents separated by an "
                             "end-of-document token, and this tokenizer has none (e.g. set data.tokenizer.eos: true)")
        self.kernels = kernel_set(recipe.model.kernels)  # the training loss and gradient clipping
        self.model.set_checkpointing(recipe.train.checkpoint_activations)
        self.total_steps = total_steps
        self.tokens_per_step = recipe.train.batch_size * recipe.data.context * recipe.train.accumulate
        self.register_buffer("byte_lens", byte_lens if byte_lens is not None else
                             torch.ones(vocab_size, dtype=torch.float64), persistent=False)
        self._val = [0.0, 0, 0.0]  # nats, tokens, bytes
        self.forward_fn = torch.compile(self.model) if recipe.train.compile else self.model
        self.clock = None  # set by make_trainer: elapsed training time for a seconds budget

    def forward(self, idx):
        return self.forward_fn(idx)

    def elapsed_fraction(self) -> float:
        seconds = self.recipe.train.budget.seconds
        return (self.clock.elapsed() / seconds) if (self.clock and seconds) else 0.0

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """train.grad_clip: Lightning's clipping, or with model.kernels=scratch the from-scratch one."""
        if gradient_clip_val and self.kernels.name == "scratch":
            self.kernels.clip_grad_norm(self.parameters(), gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.kernels.cross_entropy(self(x).float(), y)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite training loss ({loss.item()}) at step {self.global_step}")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=x.size(0))
        return loss

    def on_validation_epoch_start(self):
        self._val = [0.0, 0, 0.0]

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        nats = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        self._val[0] += nats.item()
        self._val[1] += y.numel()
        self._val[2] += self.byte_lens[y.reshape(-1).to(self.byte_lens.device)].sum().item()

    def on_validation_epoch_end(self):
        stats = torch.tensor(self._val, dtype=torch.float64, device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        nats, toks, nbytes = stats.tolist()
        self.log("val_loss", nats / max(toks, 1), prog_bar=True, sync_dist=False)
        self.log("val_bpb", nats / math.log(2) / max(nbytes, 1), sync_dist=False)

    def configure_optimizers(self):
        return build_optimizer(self, self.model, self.recipe.train, self.total_steps)

    def on_train_start(self):
        honour_recipe_lrs(self)


# ============================================================================ callbacks

class Clock(Callback):
    """Training wall time across resumes (kept in the checkpoint), and a budget of seconds."""

    state_key = "lmzoo_clock"

    def __init__(self, seconds: float | None = None):
        self.seconds, self.before, self._t0 = seconds, 0.0, None
        self.stopped_at: dict | None = None

    def elapsed(self) -> float:
        return self.before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.seconds is not None and self.elapsed() >= self.seconds and self.stopped_at is None:
            trainer.should_stop = True
            self.stopped_at = {"by": "seconds", "step": trainer.global_step, "time_s": round(self.elapsed(), 3)}

    def state_dict(self):
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state):
        self.before = float(state.get("elapsed", 0.0))


class StopAt(Callback):
    """Ends training at the first validation whose loss reaches `val_loss`."""

    def __init__(self, val_loss: float, clock: Clock):
        self.target, self.clock, self.stopped_at = val_loss, clock, None

    def on_validation_end(self, trainer, pl_module):
        loss = trainer.callback_metrics.get("val_loss")
        if trainer.sanity_checking or loss is None or self.stopped_at is not None:
            return
        if float(loss) <= self.target:
            trainer.should_stop = True
            self.stopped_at = {"by": "stop_at.val_loss", "step": trainer.global_step,
                               "time_s": round(self.clock.elapsed(), 3), "val_loss": float(loss)}


class MetricsCSV(Callback):
    """Appends one row per logged step to metrics.csv (kept across resumes; rows past the
    resumed step are dropped so the file matches an uninterrupted run). Also keeps the time
    spent in validation, for the run's timing split. A stage's module may record more of what
    it logs with `csv_columns = {metric: "train" | "val"}` (e.g. alignment's accuracy)."""

    FIELDS = ["step", "tokens", "train_loss", "lr", "tokens_per_s", "val_loss", "val_bpb", "wall_s"]

    def __init__(self, path: Path, log_every: int, tokens_per_step: int, clock: Clock):
        self.path, self.log_every, self.tokens_per_step, self.clock = Path(path), log_every, tokens_per_step, clock
        self._last_t, self._last_step = None, 0
        self._train_time, self._train_tokens, self.val_time = 0.0, 0, 0.0
        self._rank = 0
        self.extra: dict[str, str] = {}
        self.fields = list(self.FIELDS)

    def _append(self, row):
        if self._rank != 0:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.fields})

    def _extra(self, metrics, phase: str) -> dict:
        return {k: f"{float(metrics[k]):.6g}" for k, p in self.extra.items() if p == phase and k in metrics}

    def on_train_start(self, trainer, pl_module):
        self._rank = trainer.global_rank
        self.extra = dict(getattr(pl_module, "csv_columns", None) or {})
        self.fields = self.FIELDS + [k for k in self.extra if k not in self.FIELDS]
        step = trainer.global_step
        if self.path.exists() and self._rank == 0:
            rows = list(csv.DictReader(self.path.open()))
            kept = [r for r in rows if int(r["step"]) <= step]
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(kept)
        self._last_t, self._last_step = time.perf_counter(), step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._last_step:  # an accumulation micro-step
            return
        if step % self.log_every and step != pl_module.total_steps:
            return
        now = time.perf_counter()
        tokens = (step - self._last_step) * self.tokens_per_step * trainer.world_size
        tps = tokens / max(now - self._last_t, 1e-9)
        self._train_time += now - self._last_t
        self._train_tokens += tokens
        self._last_t, self._last_step = now, step
        m = trainer.callback_metrics
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        pl_module.log_dict({"lr": lr, "tokens_per_s": tps}, on_step=True, on_epoch=False)  # for the trackers
        self._append(dict(step=step, tokens=step * self.tokens_per_step * trainer.world_size,
                          train_loss=f"{float(m['train_loss']):.6f}" if "train_loss" in m else "",
                          lr=f"{lr:.6g}", tokens_per_s=f"{tps:.1f}", wall_s=f"{self.clock.elapsed():.2f}",
                          **self._extra(m, "train")))

    def on_validation_start(self, trainer, pl_module):
        self._val_t = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        spent = time.perf_counter() - self._val_t
        self.val_time += spent
        if trainer.sanity_checking:
            return
        self._last_t += spent  # validation time is not training time: shift the throughput clock
        m = trainer.callback_metrics
        step = trainer.global_step
        self._append(dict(step=step, tokens=step * self.tokens_per_step * trainer.world_size,
                          val_loss=f"{float(m['val_loss']):.6f}", val_bpb=f"{float(m['val_bpb']):.6f}"
                          if "val_bpb" in m else "", wall_s=f"{self.clock.elapsed():.2f}", **self._extra(m, "val")))

    @property
    def tokens_per_s(self) -> float:
        return self._train_tokens / self._train_time if self._train_time else float("nan")


class AtomicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, but a checkpoint is written to a temporary name, renamed into
    place (never half-written) and its checksum recorded in the run's manifest."""

    def __init__(self, run, **kwargs):
        super().__init__(**kwargs)
        self.run = run

    def _save_checkpoint(self, trainer, filepath):
        from weakref import proxy

        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)  # has a barrier inside
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
            self.run.record_checkpoint(filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class LineProgress(Callback):
    """A progress line every ~10% of training, for logs and pipes where a tqdm bar is noise."""

    def __init__(self, total_steps: int | None, every: int | None = None, label: str = ""):
        self.total = total_steps
        self.every = every or max(1, (total_steps or 1000) // 10)
        self.label = label
        self._t, self._step = None, 0

    def on_train_start(self, trainer, pl_module):
        self._t, self._step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._step or (step % self.every and step != self.total) or trainer.global_rank != 0:
            return
        now = time.perf_counter()
        tps = (step - self._step) * pl_module.tokens_per_step * trainer.world_size / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        m = trainer.callback_metrics
        parts = [f"{self.label}step {step}/{self.total or '?'}"]
        if "train_loss" in m:
            parts.append(f"loss {float(m['train_loss']):.4f}")
        if "val_loss" in m:
            parts.append(f"val_loss {float(m['val_loss']):.4f}")
        parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        parts.append(f"{tps:,.0f} tok/s")
        print("  " + "  ".join(parts), flush=True)


# ============================================================================ the trainer

def make_trainer(recipe, run, steps: int | None, *, tokens_per_step: int, val_every: int | None = None,
                 callbacks=(), loggers=(), progress: bool = True, monitor: str | None = "val_loss") -> tuple:
    """The Lightning Trainer for one run directory, with lmzoo's callbacks. Returns
    (trainer, callbacks by name: clock, metrics, checkpoint, stop_at)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    quiet_lightning()
    tr, t = recipe.train, recipe.trainer
    clock = Clock(tr.budget.seconds)
    metrics = MetricsCSV(run / "metrics.csv", tr.log_every, tokens_per_step, clock)
    ckpt = AtomicCheckpoint(run, dirpath=run / "checkpoints", filename="best", monitor=monitor, mode="min",
                            save_top_k=1 if monitor else 0, save_last=True, enable_version_counter=False,
                            auto_insert_metric_name=False)
    named = {"clock": clock, "metrics": metrics, "checkpoint": ckpt, "stop_at": None}
    cbs = [clock, metrics, ckpt, *callbacks]
    if tr.stop_at.val_loss is not None:
        named["stop_at"] = StopAt(tr.stop_at.val_loss, clock)
        cbs.append(named["stop_at"])
    tty = sys.stderr.isatty()
    if progress and not tty:  # a line every 10% in logs; a live bar on a terminal
        cbs.append(LineProgress(steps))
    if progress and tty:
        cbs.append(TQDMProgressBar(refresh_rate=1))
    every = (val_every or tr.val_every) * tr.accumulate
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, max_steps=steps or -1, max_epochs=-1, val_check_interval=every,
        check_val_every_n_epoch=None, gradient_clip_val=tr.grad_clip, accumulate_grad_batches=tr.accumulate,
        callbacks=cbs, logger=list(loggers) or False, enable_progress_bar=progress and tty,
        log_every_n_steps=tr.log_every, num_sanity_val_steps=0, use_distributed_sampler=False,
        default_root_dir=str(run.path), enable_model_summary=False, deterministic=t.deterministic,
    )
    return trainer, named
