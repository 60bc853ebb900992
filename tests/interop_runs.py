"""Tiny run directories for the interop tests, written the way lmzoo.runner writes them
(recipe.resolved.yaml, tokenizer/, model.safetensors) without training."""
from pathlib import Path

import torch
from lmzoo.plugins.tokenizers import ByteTokenizer
from safetensors.torch import save_model

from lmzoo.model import build_model
from lmzoo.recipe import to_yaml, validate
from lmzoo.rundir import RunDir


def make_run(d, tokenizer=None, plugins=(), seed=0, **model):
    """A run dir with a randomly initialised model (norm gains jittered so they matter)."""
    d = Path(d)
    RunDir(d).create()
    tok = tokenizer or ByteTokenizer()
    tok_spec = {"name": tok.name, **({"eos": tok.eos} if tok.name == "byte" else {})}
    doc = {"name": "interop-test", "plugins": [str(p) for p in plugins], "data": {"tokenizer": tok_spec, "context": 32},
           "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "max_seq_len": 64, **model}}
    recipe = validate(doc)
    torch.manual_seed(seed)
    m = build_model(recipe.model.model_copy(update={"vocab_size": tok.vocab_size}))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln" in name:
                p.add_(0.2 * torch.randn_like(p))
    (d / "recipe.resolved.yaml").write_text(to_yaml(recipe))
    tok.save(d / "tokenizer")
    save_model(m, str(d / "model.safetensors"))
    return d
