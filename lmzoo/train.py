"""Training with Lightning: the LightningModule, the step-indexed data loaders and callbacks.

Batches depend only on (seed, step, rank) (see `lmzoo.data.WindowSampler`), so a resumed run
sees exactly the batches the uninterrupted one would have seen.
"""
from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from .hooks import get_registry
from .model import build_model


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite."""


def byte_lengths(tokenizer, vocab_size: int) -> torch.Tensor:
    """UTF-8 byte length of every token id (special tokens count 0), for exact bits per byte."""
    out = torch.zeros(vocab_size, dtype=torch.float64)
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        try:
            out[i] = len(tokenizer.token_bytes(i))
        except Exception:
            out[i] = 0
    return out


# ----------------------------------------------------------------------------- data

class StepBatches(torch.utils.data.IterableDataset):
    """Yields micro-batch `i` = sampler.batch(i) for i from the resumed position on."""

    def __init__(self, sampler, total_micro_steps: int, start_fn):
        self.sampler, self.total, self.start_fn = sampler, total_micro_steps, start_fn

    def __iter__(self):
        for i in range(self.start_fn(), self.total):
            yield self.sampler.batch(i)


class DataModule(L.LightningDataModule):
    def __init__(self, bundle, recipe, total_steps: int):
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
        return torch.utils.data.DataLoader(StepBatches(sampler, self.total_steps * acc, start), batch_size=None)

    def val_dataloader(self):
        if self._val is None:
            tr = self.recipe.train
            self._val = self.bundle.val_batches(tr.batch_size, tr.val_batches)
        return torch.utils.data.DataLoader(self._val, batch_size=None)


# ----------------------------------------------------------------------------- module

class LMModule(L.LightningModule):
    """Next-token prediction for a model assembled from the recipe."""

    def __init__(self, recipe, vocab_size: int, total_steps: int, byte_lens: torch.Tensor | None = None,
                 eos_id: int | None = None):
        super().__init__()
        from lmzoo.plugins.kernels import kernel_set

        self.recipe = recipe
        spec = recipe.model.model_copy(update={"vocab_size": vocab_size})
        self.model = build_model(spec, eos_id=eos_id)
        if self.model.needs_documents and eos_id is None:
            raise ValueError("attention.mask=document and position_reset need documents separated by an "
                             "end-of-document token, and this tokenizer has none (e.g. set data.tokenizer.eos: true)")
        self.kernels = kernel_set(recipe.model.kernels)  # the training loss and gradient clipping
        self.model.set_checkpointing(recipe.train.checkpoint_activations)
        self.total_steps = total_steps
        self.tokens_per_step = recipe.train.batch_size * recipe.data.context * recipe.train.accumulate
        self.register_buffer("byte_lens", byte_lens if byte_lens is not None else torch.ones(vocab_size, dtype=torch.float64),
                             persistent=False)
        self._val_nats = 0.0
        self._val_tokens = 0
        self._val_bytes = 0.0
        self.forward_fn = torch.compile(self.model) if recipe.train.compile else self.model

    def forward(self, idx):
        return self.forward_fn(idx)

    def _loss(self, x, y):
        return self.kernels.cross_entropy(self(x).float(), y)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """train.grad_clip: Lightning's clipping, or with model.kernels=scratch the from-scratch one."""
        if gradient_clip_val and self.kernels.name == "scratch":
            self.kernels.clip_grad_norm(self.parameters(), gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self._loss(x, y)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite training loss ({loss.item()}) at step {self.global_step}")
        world = self.trainer.world_size if self._trainer is not None else 1
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=x.size(0))
        self.log("tokens", float((self.global_step + 1) * self.tokens_per_step * world), on_step=True, on_epoch=False)
        return loss

    def on_validation_epoch_start(self):
        self._val_nats, self._val_tokens, self._val_bytes = 0.0, 0, 0.0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        nats = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        self._val_nats += nats.item()
        self._val_tokens += y.numel()
        self._val_bytes += self.byte_lens[y.reshape(-1).cpu()].sum().item() if self.byte_lens.device.type == "cpu" \
            else self.byte_lens[y.reshape(-1)].sum().item()

    def on_validation_epoch_end(self):
        stats = torch.tensor([self._val_nats, self._val_tokens, self._val_bytes], dtype=torch.float64,
                             device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        nats, toks, nbytes = stats.tolist()
        loss = nats / max(toks, 1)
        self.log("val_loss", loss, prog_bar=True, sync_dist=False)
        self.log("val_bpb", nats / math.log(2) / max(nbytes, 1), sync_dist=False)

    def configure_optimizers(self):
        tr = self.recipe.train
        reg = get_registry()
        opt = reg.create("optimizer", tr.optimizer.name, params=tr.optimizer,
                         context={"params": list(self.model.named_parameters())})
        max_lr = tr.optimizer.lr
        sched = reg.create("lr_schedule", tr.lr_schedule.name, params=tr.lr_schedule, max_lr=max_lr,
                           total_steps=self.total_steps)
        # LambdaLR multiplies each group's initial lr; groups may start at other lrs (muon).
        # A plain function (not an object) keeps the schedule out of the checkpoint, which
        # then loads with weights_only=True.
        def lr_lambda(step, sched=sched, max_lr=max_lr):
            return sched(step) / max_lr

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# ----------------------------------------------------------------------------- callbacks

class MetricsCSV(Callback):
    """Appends one row per logged step to metrics.csv (kept across resumes; rows past the
    resumed step are dropped so the file matches an uninterrupted run)."""

    FIELDS = ["step", "tokens", "train_loss", "lr", "tokens_per_s", "val_loss", "val_bpb", "wall_s"]

    def __init__(self, path: Path, log_every: int, tokens_per_step: int):
        self.path, self.log_every, self.tokens_per_step = Path(path), log_every, tokens_per_step
        self._t0 = None
        self._last_t = None
        self._last_step = 0
        self._wall0 = 0.0
        self._train_time = 0.0
        self._train_tokens = 0

    def _append(self, row):
        if int(os.environ.get("LOCAL_RANK", "0")) != 0 or getattr(self, "_rank", 0) != 0:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.FIELDS})

    def on_train_start(self, trainer, pl_module):
        self._rank = trainer.global_rank
        step = trainer.global_step
        if self.path.exists() and trainer.global_rank == 0:
            rows = list(csv.DictReader(self.path.open()))
            kept = [r for r in rows if int(r["step"]) <= step]
            if kept:
                self._wall0 = float(kept[-1].get("wall_s") or 0)
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.FIELDS)
                w.writeheader()
                w.writerows(kept)
        self._t0 = time.perf_counter()
        self._last_t, self._last_step = self._t0, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._last_step:  # an accumulation micro-step
            return
        if step % self.log_every and step != pl_module.total_steps:
            return
        now = time.perf_counter()
        dt = now - self._last_t
        tps = (step - self._last_step) * self.tokens_per_step * trainer.world_size / max(dt, 1e-9)
        self._train_time += dt
        self._train_tokens += (step - self._last_step) * self.tokens_per_step * trainer.world_size
        self._last_t, self._last_step = now, step
        m = trainer.callback_metrics
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        pl_module.log("tokens_per_s", tps, prog_bar=True, on_step=True, on_epoch=False)
        pl_module.log("lr", lr, prog_bar=True, on_step=True, on_epoch=False)
        self._append(dict(step=step, tokens=step * self.tokens_per_step * trainer.world_size,
                          train_loss=f"{float(m['train_loss']):.6f}" if "train_loss" in m else "",
                          lr=f"{lr:.6g}", tokens_per_s=f"{tps:.1f}", wall_s=f"{self.wall(now):.2f}"))

    def wall(self, now=None):
        return self._wall0 + ((now or time.perf_counter()) - (self._t0 or time.perf_counter()))

    def on_validation_start(self, trainer, pl_module):
        self._val_t = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        # validation time is not training time: shift the throughput clock
        self._last_t += time.perf_counter() - self._val_t
        m = trainer.callback_metrics
        step = trainer.global_step
        self._append(dict(step=step, tokens=step * self.tokens_per_step * trainer.world_size,
                          val_loss=f"{float(m['val_loss']):.6f}", val_bpb=f"{float(m['val_bpb']):.6f}",
                          wall_s=f"{self.wall():.2f}"))

    @property
    def tokens_per_s(self) -> float:
        return self._train_tokens / self._train_time if self._train_time else float("nan")


class AtomicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, but a checkpoint file is written to a temporary name and
    renamed into place, so it is never half-written."""

    def _save_checkpoint(self, trainer, filepath):
        from weakref import proxy

        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)  # has a barrier inside
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class LineProgress(Callback):
    """A progress line every ~10% of training, for logs and pipes where a tqdm bar is noise."""

    def __init__(self, total_steps: int, every: int | None = None, label: str = ""):
        self.total, self.every, self.label = total_steps, every or max(1, total_steps // 10), label
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
        parts = [f"{self.label}step {step}/{self.total}"]
        if "train_loss" in m:
            parts.append(f"loss {float(m['train_loss']):.4f}")
        if "val_loss" in m:
            parts.append(f"val_loss {float(m['val_loss']):.4f}")
        parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        parts.append(f"{tps:,.0f} tok/s")
        print("  " + "  ".join(parts), flush=True)
