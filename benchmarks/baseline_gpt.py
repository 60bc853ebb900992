"""The speedrun's baseline: a plain PyTorch, single-file GPT-2-style character model and loop.

    OMP_NUM_THREADS=1 python benchmarks/baseline_gpt.py            # ~1-2 min on one CPU core
    python benchmarks/baseline_gpt.py --steps 200 --json out.json  # shorter; figures also as JSON
    python benchmarks/baseline_gpt.py --steps 5 --val-windows 8    # a smoke test (seconds)

Written for this benchmark only (it uses nothing of lmzoo's model or training code), so that
`recipes/speedrun.yaml` has a fixed, conventional target: GPT-2's architecture (learned
positions, LayerNorm with biases, GELU MLP of 4 x d_model, tied embeddings, no dropout), AdamW
(lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on matrices), 100 warm-up steps then cosine to
1e-4, gradient clipping at 1.0; 4 layers, 4 heads, d_model 128, context 64, batch 12, 2000
steps, characters of the Shakespeare text lmzoo ships (plain dialogue of every play joined in
one text, the last 10% by position held out: lmzoo's `shakespeare` source with val_fraction 0.1).

It prints its wall time (from the start of this script, imports included) and the final
validation loss: the mean next-character loss over the whole validation split, cut into
consecutive windows of `context` characters whose targets do not overlap (starts 0, T, 2T, ...),
which is exactly how lmzoo's final `val_loss` (eval.full_val) is computed.
"""
import time

T_START = time.perf_counter()  # before the heavy imports: the wall time includes them

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def shakespeare_splits(val_fraction: float = 0.1) -> tuple[str, str]:
    """(train text, val text): built by lmzoo's shakespeare source, so both sides read the same characters."""
    from lmzoo.plugins.data_sources import Shakespeare

    src = Shakespeare(val_fraction=val_fraction)
    return src.split_text("train"), src.split_text("val")


def encode_chars(text: str, chars: list[str]) -> torch.Tensor:
    """The index of every character of `text` in the sorted list `chars` (vectorised: a Python
    dict lookup per character would add seconds to the wall time)."""
    codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)
    table = torch.tensor([ord(c) for c in chars], dtype=torch.int32)
    return torch.searchsorted(table, codes).long()


# ----------------------------------------------------------------------------- the model

class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """GPT-2: token + learned position embeddings, pre-LayerNorm blocks, final LayerNorm, and an
    output layer tied to the token embedding. GPT-2's initialisation: N(0, 0.02), residual
    output projections N(0, 0.02 / sqrt(2 n_layers)), zero biases."""

    def __init__(self, vocab_size: int, context: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layers))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# ----------------------------------------------------------------------------- training

def lr_at(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine from max_lr to min_lr at the last step."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - 1 - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * min(p, 1.0))) * (max_lr - min_lr)


@torch.no_grad()
def whole_split_loss(model, data: torch.Tensor, context: int, batch_size: int = 256, max_windows: int = 0) -> float:
    """Mean loss over every window of the split: starts 0, T, 2T, ... while a target fits
    (only the first `max_windows` of them when that is > 0: smoke tests)."""
    model.eval()
    n_windows = (len(data) - 1) // context
    if max_windows > 0:
        n_windows = min(n_windows, max_windows)
    nats, count = 0.0, 0
    for i in range(0, n_windows, batch_size):
        starts = torch.arange(i, min(i + batch_size, n_windows)) * context
        idx = starts[:, None] + torch.arange(context + 1)
        buf = data[idx]
        logits = model(buf[:, :-1])
        nats += F.cross_entropy(logits.reshape(-1, logits.size(-1)), buf[:, 1:].reshape(-1), reduction="sum").item()
        count += buf[:, 1:].numel()
    model.train()
    return nats / count


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=0, help="also print the whole-split val loss every N steps "
                                                              "(0: only at the end; costs time)")
    ap.add_argument("--val-windows", type=int, default=0, help="evaluate only the first N windows of the validation "
                                                               "split (smoke tests; 0: the whole split, the measure)")
    ap.add_argument("--json", help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    d_model, n_layers, n_heads = 128, 4, 4
    max_lr, min_lr, warmup, weight_decay, clip = 1e-3, 1e-4, 100, 0.1, 1.0

    torch.manual_seed(args.seed)
    train_text, val_text = shakespeare_splits(0.1)
    chars = sorted(set(train_text) | set(val_text))
    train, val = encode_chars(train_text, chars), encode_chars(val_text, chars)

    model = GPT(len(chars), args.context, d_model, n_layers, n_heads)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=max_lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    offsets = torch.arange(args.context + 1)
    t_train = time.perf_counter()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, max_lr, min_lr, warmup, args.steps)
        starts = torch.randint(0, len(train) - args.context, (args.batch_size,), generator=gen)
        buf = train[starts[:, None] + offsets]
        x, y = buf[:, :-1], buf[:, 1:]
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            print(f"step {step + 1} train_loss {loss.item():.4f} val_loss "
                  f"{whole_split_loss(model, val, args.context, max_windows=args.val_windows):.4f} "
                  f"wall {time.perf_counter() - T_START:.1f}s",
                  flush=True)
    train_s = time.perf_counter() - t_train
    val_loss = whole_split_loss(model, val, args.context, max_windows=args.val_windows)
    wall = time.perf_counter() - T_START
    out = {"val_loss": val_loss, "val_windows": args.val_windows or "all", "wall_s": wall, "train_s": train_s,
           "steps": args.steps, "seed": args.seed,
           "tokens_per_s": args.steps * args.batch_size * args.context / train_s,
           "params": sum(p.numel() for p in model.parameters()), "vocab_size": len(chars),
           "val_tokens": len(val), "threads": torch.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    split = f"first {args.val_windows} windows" if args.val_windows else "whole split"
    split += f" of {len(val):,} characters"
    print(f"baseline: {args.steps} steps, final train_loss {loss.item():.4f}, val_loss {val_loss:.4f} ({split}), "
          f"wall {wall:.1f}s (training {train_s:.1f}s, {out['tokens_per_s']:,.0f} tok/s, "
          f"{out['threads']} threads)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
