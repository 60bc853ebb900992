"""Training on preference pairs with the kernel's Lightning trainer.

    logps      summed log-probabilities of the *response* tokens only; prompt and padding
               masked (`encode_pairs`, `sequence_logps`)
    batches    pair indices depend only on (seed, step), so a resumed run sees exactly the
               batches of an uninterrupted one (`PairBatches`)
    module     `PreferenceModule`: the policy (trained, checkpointed as `model.*` like a
               pretraining run) and the frozen reference (not a submodule: never optimised,
               never saved; its log-probs of the pairs are computed once, as it never changes)
    training   `train_alignment`: the optimizer and lr schedule from the registries
               (`lmzoo.train.build_optimizer`) and the Trainer, metrics.csv and atomic
               checkpoints of `lmzoo.train.make_trainer`, into one run directory
"""
from __future__ import annotations

import copy
import os
import warnings

import lightning as L
import torch
import torch.nn.functional as F

from lmzoo.recipe import Budget, Recipe, TrainerSpec, TrainSpec
from lmzoo.rundir import RunError
from lmzoo.train import NonFiniteLoss, StepBatches, build_optimizer, honour_recipe_lrs, make_trainer

from .pairs import PreferencePair

# ============================================================================ tokens and log-probs


def tokenize_pair(tokenizer, pair: PreferencePair, max_len: int) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids. An empty prompt becomes the end-of-document token,
    so the first response token is scored."""
    prompt = tokenizer.encode(pair.prompt)
    if not prompt:
        if tokenizer.eos_id is None:
            raise ValueError("a pair with an empty prompt needs a tokenizer with an end-of-document token "
                             "to condition on; give the pair a prompt")
        prompt = [tokenizer.eos_id]
    out = [prompt]
    for which in ("chosen", "rejected"):
        resp = tokenizer.encode(getattr(pair, which))
        if not resp:
            raise ValueError(f"{which} response {getattr(pair, which)!r} encodes to no tokens")
        out.append(resp[: max_len - 1])
    return out[0], out[1], out[2]


def collate(tokenized: list[tuple[list[int], list[int], list[int]]], max_len: int):
    """One right-padded batch: rows [0, B) the chosen sequences, rows [B, 2B) the rejected ones,
    each `prompt ++ response`; a long pair keeps the end of its prompt and the start of its
    response. Returns (input_ids (2B, T) long, response_mask (2B, T) bool, lengths (2B,))."""
    rows, masks = [], []
    for which in (1, 2):
        for t in tokenized:
            resp = t[which]
            prompt = t[0][-(max_len - len(resp)):]
            rows.append(prompt + resp)
            masks.append([False] * len(prompt) + [True] * len(resp))
    T = max(map(len, rows))
    ids = torch.zeros(len(rows), T, dtype=torch.long)  # pad id 0; padding is masked out
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(m)] = torch.tensor(m)
    return ids, mask, mask.sum(-1)


def encode_pairs(tokenizer, pairs: list[PreferencePair], max_len: int):
    """Tokenise pairs into one right-padded batch (see `collate`)."""
    return collate([tokenize_pair(tokenizer, p, max_len) for p in pairs], max_len)


def sequence_logps(model, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token | prefix) over the response tokens of each row: (B, T), (B, T) -> (B,).
    Token t is predicted from logits at t-1, so the mask is shifted by one; prompt tokens and
    padding contribute exactly 0 (torch.where, so a non-finite padding logit cannot leak)."""
    logits = model(input_ids[:, :-1])  # (B, T-1, V)
    targets = input_ids[:, 1:]
    logp = -F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T-1)
    mask = response_mask[:, 1:]
    return torch.where(mask, logp, torch.zeros_like(logp)).sum(-1)


@torch.no_grad()
def pair_logps(model, tokenizer, pairs: list[PreferencePair], max_len: int, device=None, batch_size: int = 64):
    """(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths), each (N,), without grad."""
    device = device or next(model.parameters()).device
    out = [[], [], [], []]
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        ids, mask, lengths = encode_pairs(tokenizer, chunk, max_len)
        lp = sequence_logps(model, ids.to(device), mask.to(device)).cpu()
        n = len(chunk)
        for j, t in enumerate((lp[:n], lp[n:], lengths[:n], lengths[n:])):
            out[j].append(t)
    return tuple(torch.cat(x) for x in out)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The reference: a deep copy in eval mode with every parameter's requires_grad off."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def tie_accuracy(margin: torch.Tensor) -> float:
    """Share of margins > 0; an exact tie counts one half (a policy equal to its reference is at
    chance, 0.5, not 0)."""
    return float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean())


def heldout_metrics(loss_fn, pc, pr, rc, rr, lc, lr_) -> dict[str, float]:
    """The loss and its metrics over all held-out pairs at once (accuracy = the loss's own
    implicit reward ranks chosen first), plus `logratio_accuracy`: the DPO implicit reward
    log π/π_ref ranking chosen first - the same yardstick for every loss."""
    with torch.no_grad():
        loss, m = loss_fn(pc, pr, rc, rr, lc.to(pc.dtype), lr_.to(pc.dtype))
    out = {"heldout_loss": float(loss), **{f"heldout_{k}": float(v) for k, v in m.items()}}
    out["heldout_logratio_accuracy"] = tie_accuracy((pc - rc) - (pr - rr))
    out["heldout_chosen_logratio"] = float((pc - rc).mean())
    out["heldout_rejected_logratio"] = float((pr - rr).mean())
    return out


# ============================================================================ batches


class PairBatches:
    """Training batches of pairs: batch `step` takes the next `batch_size` indices of a stream
    of permutations of the pairs (epochs; a batch may straddle two), drawn from one generator
    seeded with `seed`. A pure function of (seed, step), so a resume replays the same order."""

    def __init__(self, tokenized: list, batch_size: int, max_len: int, seed: int):
        if not tokenized:
            raise ValueError("no preference pairs to train on")
        self.tokenized, self.batch_size, self.max_len = tokenized, batch_size, max_len
        self._gen = torch.Generator().manual_seed(int(seed))
        self._order: list[int] = []

    def indices(self, step: int) -> list[int]:
        end = (step + 1) * self.batch_size
        while len(self._order) < end:
            self._order += torch.randperm(len(self.tokenized), generator=self._gen).tolist()
        return self._order[step * self.batch_size:end]

    def batch(self, step: int):
        idx = self.indices(step)
        ids, mask, lengths = collate([self.tokenized[i] for i in idx], self.max_len)
        return ids, mask, lengths, torch.tensor(idx)

    def tokens_per_step(self) -> int:
        """Mean tokens the policy reads per step (chosen and rejected sequences)."""
        mean = sum(len(p) + len(c) + len(p) + len(r) for p, c, r in self.tokenized) / len(self.tokenized)
        return max(1, round(self.batch_size * min(mean, 2 * self.max_len)))


# ============================================================================ the LightningModule


class PreferenceModule(L.LightningModule):
    """A policy trained on preference pairs with an `alignment_loss` component against a frozen
    reference. Logs `train_loss` and the loss's metrics each step; with held-out pairs, a
    validation pass logs `val_loss` (the held-out preference loss) and `heldout_*` metrics."""

    csv_columns = {"accuracy": "train", "reward_margin": "train", "chosen_reward": "train",
                   "rejected_reward": "train", "grad_norm": "train", "heldout_accuracy": "val",
                   "heldout_logratio_accuracy": "val", "heldout_reward_margin": "val"}

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module, loss_fn, tokenizer,
                 train_pairs: list[PreferencePair], heldout_pairs: list[PreferencePair] | None, train: TrainSpec,
                 max_len: int, seed: int, evaluate: bool = False):
        super().__init__()
        self.model = policy
        # not a submodule (plain attribute): never in the optimizer, the checkpoint or .to() of the module
        object.__setattr__(self, "reference", reference)
        reference.eval()
        reference.requires_grad_(False)
        self.loss_fn, self.tokenizer, self.train_spec, self.max_len = loss_fn, tokenizer, train, max_len
        self.train_pairs, self.heldout_pairs = train_pairs, heldout_pairs or []
        self.batches = PairBatches([tokenize_pair(tokenizer, p, max_len) for p in train_pairs], train.batch_size,
                                   max_len, seed)
        self.total_steps = train.budget.steps
        self.tokens_per_step = self.batches.tokens_per_step()
        self.ref_train: tuple | None = None  # reference log-probs of the pairs, computed once
        self.ref_heldout: tuple | None = None
        self.evaluate = evaluate and bool(self.heldout_pairs)  # validate on held-out pairs every val_every steps
        self._val: list = []

    def forward(self, idx):
        return self.model(idx)

    def reference_logps(self):
        """Reference log-probs of the training and held-out pairs (once; the reference is frozen).
        A reference-free loss never reads the training ones."""
        device = next(self.model.parameters()).device  # the policy's (before fit, too)
        self.reference.to(device)
        if self.ref_train is None and not getattr(self.loss_fn, "reference_free", False):
            self.ref_train = pair_logps(self.reference, self.tokenizer, self.train_pairs, self.max_len, device)[:2]
        if self.ref_heldout is None and self.heldout_pairs:
            self.ref_heldout = pair_logps(self.reference, self.tokenizer, self.heldout_pairs, self.max_len, device)[:2]

    def on_fit_start(self):
        self.reference_logps()

    def on_train_start(self):
        honour_recipe_lrs(self)

    def train_dataloader(self):
        start = lambda: self.trainer.global_step  # noqa: E731  (read when iteration starts: after a resume)
        return torch.utils.data.DataLoader(StepBatches(self.batches, self.total_steps, start), batch_size=None)

    def training_step(self, batch, batch_idx):
        ids, mask, lengths, idx = batch
        logps = sequence_logps(self.model, ids, mask)  # (2b,)
        b = len(idx)
        lengths = lengths.to(logps.dtype)
        if self.ref_train is None:
            refs = (None, None)
        else:
            refs = tuple(r[idx.cpu()].to(logps.device) for r in self.ref_train)
        loss, metrics = self.loss_fn(logps[:b], logps[b:], refs[0], refs[1], lengths[:b], lengths[b:])
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite alignment loss ({loss.item()}) at step {self.global_step}")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=b)
        for k, v in metrics.items():
            self.log(k, v, on_step=True, on_epoch=False, batch_size=b)
        return loss

    def on_before_optimizer_step(self, optimizer):
        # the norm before clipping (Lightning clips after this hook)
        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        if grads:
            self.log("grad_norm", torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])),
                     on_step=True, on_epoch=False)

    def val_dataloader(self):
        pairs = self.heldout_pairs if self.evaluate else []  # no batches: Lightning skips validation
        chunks = [pairs[i:i + 64] for i in range(0, len(pairs), 64)]
        return torch.utils.data.DataLoader([encode_pairs(self.tokenizer, c, self.max_len) for c in chunks],
                                           batch_size=None)

    def on_validation_epoch_start(self):
        self._val = []

    def validation_step(self, batch, batch_idx):
        ids, mask, lengths = batch
        lp = sequence_logps(self.model, ids, mask).cpu()
        n = len(lp) // 2
        self._val.append((lp[:n], lp[n:], lengths[:n].cpu(), lengths[n:].cpu()))

    def on_validation_epoch_end(self):
        pc, pr, lc, lr_ = (torch.cat(x) for x in zip(*self._val))
        m = heldout_metrics(self.loss_fn, pc, pr, *self.ref_heldout, lc, lr_)
        self.log("val_loss", m["heldout_loss"], prog_bar=True)
        for k in ("heldout_accuracy", "heldout_logratio_accuracy", "heldout_reward_margin"):
            self.log(k, m[k])

    def configure_optimizers(self):
        return build_optimizer(self, self.model, self.train_spec, self.total_steps)


# ============================================================================ training


def align_train_spec(spec) -> TrainSpec:
    """The `train:` section an `align:` section amounts to: its optimizer, lr schedule, steps,
    batch, clipping and logging (one optimizer step per batch, no accumulation)."""
    return TrainSpec(optimizer=spec.optimizer, lr_schedule=spec.lr_schedule, batch_size=spec.batch_size,
                     budget=Budget(steps=spec.steps), grad_clip=spec.grad_clip, log_every=spec.log_every,
                     val_every=spec.eval.every or spec.steps)


def one_device(trainer: TrainerSpec | None) -> TrainerSpec:
    """The recipe's accelerator and precision on one device (pairs are not sharded across ranks)."""
    trainer = trainer or TrainerSpec()
    return trainer.model_copy(update={"devices": 1, "num_nodes": 1, "strategy": "auto", "loggers": []})


def train_alignment(module: PreferenceModule, recipe: Recipe, run, ckpt_path: str | None = None,
                    progress: bool = False) -> tuple:
    """Fit `module` with the kernel's trainer into the RunDir `run` (metrics.csv, checkpoints/):
    `recipe.train` is the alignment's (see `align_train_spec`), `recipe.trainer` its device.
    With `module.evaluate`, held-out pairs are evaluated (and checkpoints written, best.ckpt by
    held-out loss) every `recipe.train.val_every` steps. Ends with checkpoints/last.ckpt at the
    final step. Returns (trainer, named callbacks)."""
    steps = recipe.train.budget.steps
    trainer, named = make_trainer(recipe, run, steps, tokens_per_step=module.tokens_per_step, progress=progress,
                                  monitor="val_loss" if module.evaluate else None)
    module.clock = named["clock"]
    module.model.train()  # Lightning keeps a module's mode; a loaded run is in eval mode
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(val_dataloader|Total length of|zero length).*")
            trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:  # Lightning exits after a graceful shutdown on Ctrl-C
        if not trainer.interrupted:
            raise
    except NonFiniteLoss as exc:
        lr = recipe.train.optimizer.lr
        raise RunError(f"{exc}; stopped. Start again with --overwrite and a lower align.optimizer.lr "
                       f"(e.g. align.optimizer.lr={lr / 2:g})") from None
    if trainer.interrupted:
        raise RunError(f"alignment interrupted at step {trainer.global_step}; continue with --resume")
    last = run.checkpoint("last")
    trainer.save_checkpoint(str(last) + ".tmp")  # the final step, so --resume on a finished run changes nothing
    os.replace(str(last) + ".tmp", last)
    run.record_checkpoint(last)
    module.model.eval()
    return trainer, named
