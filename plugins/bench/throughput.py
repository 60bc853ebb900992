"""`lmzoo bench`: training tokens/s and model FLOP utilisation of lmzoo's Lightning path against a
minimal plain-PyTorch loop training the same model on the same batches, in the same process."""
from __future__ import annotations

import time

import torch


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


def plain_loop(recipe, vocab, batches, warmup: int, precision: str, schedule_steps: int, eos_id=None) -> float:
    """The reference: build, then forward/backward/clip/step in a bare loop. Returns tokens/s."""
    from lmzoo.plugins.kernels import kernel_set

    from lmzoo.hooks import get_registry
    from lmzoo.model import build_model

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.model_copy(update={"vocab_size": vocab}), eos_id=eos_id)
    kernels = kernel_set(recipe.model.kernels)  # the loss and clipping lmzoo's path uses
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
        loss = kernels.cross_entropy(logits.float(), y)
        loss.backward()
        if tr.grad_clip:
            kernels.clip_grad_norm(model.parameters(), tr.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for g, base in zip(opt.param_groups, base_lrs):  # as LambdaLR does in the Lightning path
            g["lr"] = base * sched(i + 1) / tr.optimizer.lr
    dt = time.perf_counter() - t0
    return (len(batches) - warmup) * x.numel() / dt


def lightning_loop(recipe, bundle, vocab, steps: int, warmup: int, precision: str, schedule_steps: int,
                   eos_id=None) -> float:
    """lmzoo's own training path (LMModule + Trainer), timed after `warmup` steps."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from lmzoo.train import DataModule, LMModule
    from lmzoo.train import quiet_lightning as _quiet_lightning

    _quiet_lightning()

    class Clock(Callback):
        t0 = t1 = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup and self.t0 is None:
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.t1 = time.perf_counter()

    torch.manual_seed(recipe.seed)
    module = LMModule(recipe, vocab, schedule_steps, eos_id=eos_id)
    clock = Clock()
    trainer = L.Trainer(accelerator=recipe.trainer.accelerator, devices=1, precision=precision, max_steps=steps,
                        max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=recipe.train.grad_clip, callbacks=[clock], use_distributed_sampler=False)
    trainer.fit(module, datamodule=DataModule(bundle, recipe, steps))
    return (steps - warmup) * recipe.train.batch_size * recipe.data.context / (clock.t1 - clock.t0)


def _prepare(recipe):
    """(data bundle, vocab size, eos id, FLOPs per token, the recipe's schedule length)."""
    from lmzoo.accounting import steps_for_budget
    from lmzoo.data import prepare_data
    from lmzoo.model import build_model

    bundle = prepare_data(recipe)
    vocab = recipe.model.vocab_size or bundle.tokenizer.vocab_size
    fpt = build_model(recipe.model.model_copy(update={"vocab_size": vocab})).flops_per_token(recipe.data.context)
    return bundle, vocab, bundle.tokenizer.eos_id, fpt, steps_for_budget(recipe, fpt)  # the recipe's schedule


def bench(recipe, steps: int = 30, warmup: int = 5, precisions=("32-true", "bf16-mixed"), repeats: int = 2) -> list[dict]:

    bundle, vocab, eos, fpt, schedule_steps = _prepare(recipe)
    batches = _batches(bundle, recipe, steps)
    rows = []
    for precision in precisions:
        peak = matmul_peak(torch.bfloat16 if precision.startswith("bf16") else torch.float32)
        ours, ref = [], []
        for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both alike
            ref.append(plain_loop(recipe, vocab, batches, warmup, precision, schedule_steps, eos))
            ours.append(lightning_loop(recipe, bundle, vocab, steps, warmup, precision, schedule_steps, eos))
        o, r = max(ours), max(ref)
        rows.append({"precision": precision, "d_model": recipe.model.d_model, "lmzoo_tokens_per_s": o,
                     "plain_tokens_per_s": r, "ratio": o / r, "flops_per_token": fpt, "matmul_peak_flops": peak,
                     "lmzoo_mfu": o * fpt / peak, "plain_mfu": r * fpt / peak})
    return rows


def kernel_variants(recipe) -> dict:
    """The recipe with model.kernels=torch, with torch's kernels but the naive attention kernel
    (when the attention component has a `kernel` choice), and with model.kernels=scratch."""
    def with_model(**update):
        return recipe.model_copy(update={"model": recipe.model.model_copy(update=update)})

    out = {"torch": with_model(kernels="torch")}
    attention = recipe.model.attention
    if getattr(attention, "kernel", None) not in (None, "naive"):
        out["torch_naive"] = with_model(kernels="torch", attention=attention.model_copy(update={"kernel": "naive"}))
    out["scratch"] = with_model(kernels="scratch")
    return out


def bench_kernels(recipe, steps: int = 30, warmup: int = 5, precisions=("32-true",), repeats: int = 2) -> list[dict]:
    """lmzoo's training path with torch's kernels against the from-scratch ones (model.kernels),
    interleaved and best of `repeats`: the speed cost of training on from-scratch parts. The
    torch_naive setting isolates the cost of the from-scratch functions from that of computing
    attention without torch's fused kernel."""
    bundle, vocab, eos, fpt, schedule_steps = _prepare(recipe)
    variants = kernel_variants(recipe)
    rows = []
    for precision in precisions:
        speeds: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(repeats):
            for name, r in variants.items():
                speeds[name].append(lightning_loop(r, bundle, vocab, steps, warmup, precision, schedule_steps, eos))
        best = {k: max(v) for k, v in speeds.items()}
        row = {"precision": precision, "d_model": recipe.model.d_model, "context": recipe.data.context,
               "attention_kernel": getattr(recipe.model.attention, "kernel", None),
               **{f"{k}_tokens_per_s": v for k, v in best.items()},
               "scratch_vs_torch": best["scratch"] / best["torch"]}
        if "torch_naive" in best:
            row["scratch_vs_torch_naive"] = best["scratch"] / best["torch_naive"]
        rows.append(row)
    return rows
