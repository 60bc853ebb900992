"""`lmzoo bench`: training tokens/s and model FLOP utilisation of lmzoo's Lightning path against a
minimal plain-PyTorch loop training the same model on the same batches, in the same process."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def matmul_peak(dtype=torch.float32, n: int = 1024, seconds: float = 1.0, device="cpu") -> float:
    """Measured FLOP/s of an n×n matmul on this machine (the MFU denominator)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def _batches(bundle, recipe, n):
    from lmzoo.data import WindowSampler

    s = WindowSampler(bundle.train, recipe.data.context, recipe.train.batch_size, seed=recipe.seed)
    return [s.batch(i) for i in range(n)]


def plain_loop(recipe, vocab, batches, warmup: int, precision: str, schedule_steps: int) -> float:
    """The reference: build, then forward/backward/clip/step in a bare loop. Returns tokens/s."""
    from lmzoo.hooks import get_registry
    from lmzoo.model import build_model

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.model_copy(update={"vocab_size": vocab}))
    model.set_checkpointing(recipe.train.checkpoint_activations)
    model.train()
    tr = recipe.train
    reg = get_registry()
    opt = reg.create("optimizer", tr.optimizer.name, params=tr.optimizer, context={"params": list(model.named_parameters())})
    sched = reg.create("lr_schedule", tr.lr_schedule.name, params=tr.lr_schedule, max_lr=tr.optimizer.lr,
                       total_steps=schedule_steps)
    base_lrs = [g["lr"] for g in opt.param_groups]
    for g, base in zip(opt.param_groups, base_lrs):
        g["lr"] = base * sched(0) / tr.optimizer.lr
    use_bf16 = precision.startswith("bf16")
    t0 = None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        if tr.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for g, base in zip(opt.param_groups, base_lrs):  # as LambdaLR does in the Lightning path
            g["lr"] = base * sched(i + 1) / tr.optimizer.lr
    dt = time.perf_counter() - t0
    return (len(batches) - warmup) * x.numel() / dt


def lightning_loop(recipe, bundle, vocab, steps: int, warmup: int, precision: str, schedule_steps: int) -> float:
    """lmzoo's own training path (LMModule + Trainer), timed after `warmup` steps."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from lmzoo.train import quiet_lightning as _quiet_lightning
    from lmzoo.train import DataModule, LMModule

    _quiet_lightning()

    class Clock(Callback):
        t0 = t1 = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup and self.t0 is None:
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.t1 = time.perf_counter()

    torch.manual_seed(recipe.seed)
    module = LMModule(recipe, vocab, schedule_steps)
    clock = Clock()
    trainer = L.Trainer(accelerator=recipe.trainer.accelerator, devices=1, precision=precision, max_steps=steps,
                        max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=recipe.train.grad_clip, callbacks=[clock], use_distributed_sampler=False)
    trainer.fit(module, datamodule=DataModule(bundle, recipe, steps))
    return (steps - warmup) * recipe.train.batch_size * recipe.data.context / (clock.t1 - clock.t0)


def bench(recipe, steps: int = 30, warmup: int = 5, precisions=("32-true", "bf16-mixed"), repeats: int = 2) -> list[dict]:
    from lmzoo.data import prepare_data

    bundle = prepare_data(recipe)
    vocab = recipe.model.vocab_size or bundle.tokenizer.vocab_size
    from lmzoo.model import build_model

    fpt = build_model(recipe.model.model_copy(update={"vocab_size": vocab})).flops_per_token(recipe.data.context)
    batches = _batches(bundle, recipe, steps)
    from lmzoo.accounting import steps_for_budget as total_steps

    schedule_steps = total_steps(recipe, fpt)  # the recipe's schedule, so warmup fits
    rows = []
    for precision in precisions:
        peak = matmul_peak(torch.bfloat16 if precision.startswith("bf16") else torch.float32)
        ours, ref = [], []
        for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both alike
            ref.append(plain_loop(recipe, vocab, batches, warmup, precision, schedule_steps))
            ours.append(lightning_loop(recipe, bundle, vocab, steps, warmup, precision, schedule_steps))
        o, r = max(ours), max(ref)
        rows.append({"precision": precision, "d_model": recipe.model.d_model, "lmzoo_tokens_per_s": o,
                     "plain_tokens_per_s": r, "ratio": o / r, "flops_per_token": fpt, "matmul_peak_flops": peak,
                     "lmzoo_mfu": o * fpt / peak, "plain_mfu": r * fpt / peak})
    return rows
