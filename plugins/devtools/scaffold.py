"""Templates for `lmzoo new-plugin KIND NAME`: a working plugin file and a test for it."""
from __future__ import annotations

import textwrap

# Per kind: (imports, params fields, component class, registration call context, test body).
# Each template is a small but real component a user edits from.
_TEMPLATES: dict[str, dict[str, str]] = {
    "position": dict(
        imports="import torch\nfrom lmzoo.layers import PositionEncoding",
        fields='slope: float = Field(0.5, gt=0, description="bias per token of distance (same for every head)")',
        body='''
class {cls}(PositionEncoding):
    """A distance penalty added to attention scores: -slope * (i - j) (ALiBi with one slope)."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int, max_seq_len: int, slope: float = 0.5):
        super().__init__(d_model, n_heads, head_dim, max_seq_len)
        self.slope = slope

    def bias(self, n_heads, q_positions, k_positions):
        # (n_heads, Tq, Tk); the causal mask is applied by the attention module
        dist = (q_positions[:, None] - k_positions[None, :]).clamp(min=0).float()
        return (-self.slope * dist).expand(n_heads, -1, -1)
''',
        test='''
    pos = lmzoo.create("position", NAME, d_model=32, n_heads=4, head_dim=8, max_seq_len=64)
    t = torch.arange(5)
    b = pos.bias(4, t, t)
    assert b.shape == (4, 5, 5)
    assert b[0, 4, 0] < b[0, 4, 3] <= 0
''',
    ),
    "norm": dict(
        imports="import torch\nfrom torch import nn",
        fields='eps: float = Field(1e-5, gt=0, description="added to the mean square for stability")',
        body='''
class {cls}(nn.Module):
    """RMS normalisation with a learned gain, computed in float32."""

    def __init__(self, d_model: int, eps: float = 1e-5, **context):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight).to(dtype)
''',
        test='''
    norm = lmzoo.create("norm", NAME, d_model=16)
    y = norm(torch.randn(2, 3, 16) * 5)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(2, 3), atol=1e-3)
''',
    ),
    "ffn": dict(
        imports="import torch\nfrom torch import nn\nimport torch.nn.functional as F",
        fields='activation: str = Field("gelu", description="gelu or silu")',
        body='''
class {cls}(nn.Module):
    """A two-matrix MLP: w2(act(w1 x)), bias-free."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", **context):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
        self.act = {{"gelu": F.gelu, "silu": F.silu}}[activation]

    def forward(self, x):
        return self.w2(self.act(self.w1(x)))
''',
        test='''
    ffn = lmzoo.create("ffn", NAME, d_model=16, d_ff=32)
    assert ffn(torch.randn(2, 3, 16)).shape == (2, 3, 16)
''',
    ),
    "attention": dict(
        imports="import torch\nfrom lmzoo.hooks import get_registry",
        fields='kernel: str = Field("naive", description="naive or sdpa (passed to the built-in causal attention)")',
        body='''
def {cls}(kernel: str = "naive", **context):
    """Starts as the built-in causal attention; replace with your own module (it needs
    q_proj, k_proj, v_proj, output_proj and forward(x, positions, cache=None))."""
    return get_registry().create("attention", "causal", kernel=kernel, **context)
''',
        test='''
    pos = lmzoo.create("position", "none", d_model=16, n_heads=2, head_dim=8, max_seq_len=32)
    attn = lmzoo.create("attention", NAME, d_model=16, n_heads=2, n_kv_heads=2, position=pos)
    assert attn(torch.randn(1, 5, 16), torch.arange(5)).shape == (1, 5, 16)
''',
    ),
    "optimizer": dict(
        imports="import torch",
        fields='lr: float = Field(1e-2, gt=0, description="learning rate (the schedule rescales it)")\n    '
               'momentum: float = Field(0.9, ge=0, lt=1, description="heavy-ball momentum")',
        body='''
class {cls}(torch.optim.Optimizer):
    """SGD with heavy-ball momentum, written out."""

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, **context):
        params = [p for _, p in params] if not isinstance(params, dict) else params
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("buf", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                p.add_(buf, alpha=-group["lr"])
        return loss
''',
        test='''
    w = torch.nn.Parameter(torch.tensor([3.0]))
    opt = lmzoo.create("optimizer", NAME, params=[("w", w)], lr=0.1)
    for _ in range(50):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert abs(w.item()) < 0.5
''',
    ),
    "lr_schedule": dict(
        imports="",
        fields='warmup_steps: int = Field(10, ge=0, description="linear warmup length")',
        body='''
def {cls}(max_lr: float, total_steps: int, warmup_steps: int = 10, **context):
    """Linear warmup, then linear decay to zero at total_steps."""

    def lr(step: int) -> float:
        if step < warmup_steps:
            return max_lr * step / max(1, warmup_steps)
        return max_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return lr
''',
        test='''
    sched = lmzoo.create("lr_schedule", NAME, max_lr=1.0, total_steps=110, warmup_steps=10)
    assert sched(0) == 0.0 and sched(10) == 1.0 and sched(110) == 0.0
''',
    ),
    "tokenizer": dict(
        imports="from lmzoo.hooks import get_registry",
        fields='lowercase: bool = Field(True, description="lower-case text before byte encoding")',
        body='''
class {cls}:
    """Bytes of lower-cased text: starts from the built-in byte tokenizer."""

    needs_training = False

    def __init__(self, lowercase: bool = True, **context):
        self.lowercase = lowercase
        self.inner = get_registry().create("tokenizer", "byte")
        self.vocab_size, self.eos_id = self.inner.vocab_size, self.inner.eos_id
        self.special_tokens = self.inner.special_tokens

    def encode(self, text):
        return self.inner.encode(text.lower() if self.lowercase else text)

    def decode(self, ids):
        return self.inner.decode(ids)

    def token_bytes(self, i):
        return self.inner.token_bytes(i)

    def train(self, texts):
        return None

    def fingerprint(self):
        return f"{{NAME}}-lower={{self.lowercase}}"

    def save(self, directory):
        self.inner.save(directory)

    @classmethod
    def load(cls, directory):
        return cls()
''',
        test='''
    tok = lmzoo.create("tokenizer", NAME)
    assert tok.decode(tok.encode("Hello")) == "hello"
''',
    ),
    "data_source": dict(
        imports="import hashlib",
        fields='repeat: int = Field(100, ge=1, description="how many documents to generate")',
        body='''
class {cls}:
    """Counting sentences: a tiny procedural corpus."""

    def __init__(self, repeat: int = 100, **context):
        self.repeat = repeat

    def documents(self, split):
        start = 0 if split == "train" else 10_000
        for i in range(start, start + self.repeat):
            yield " ".join(str(j) for j in range(i % 7, i % 7 + 20)) + "."

    def fingerprint(self):
        return hashlib.sha256(f"{{NAME}}:{{self.repeat}}".encode()).hexdigest()[:16]
''',
        test='''
    src = lmzoo.create("data_source", NAME, repeat=3)
    docs = list(src.documents("train"))
    assert len(docs) == 3 and all(d.endswith(".") for d in docs)
''',
    ),
    "alignment_loss": dict(
        imports="import torch\nimport torch.nn.functional as F",
        fields='beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward")',
        body='''
class {cls}:
    """The DPO loss, written out: -log sigmoid(beta * (policy margin - reference margin))."""

    def __init__(self, beta: float = 0.1, **context):
        self.beta = beta

    def __call__(self, pc, pr, rc, rr, chosen_lengths=None, rejected_lengths=None):
        chosen, rejected = self.beta * (pc - rc), self.beta * (pr - rr)
        loss = -F.logsigmoid(chosen - rejected).mean()
        return loss, dict(chosen_reward=chosen.detach().mean(), rejected_reward=rejected.detach().mean(),
                          reward_margin=(chosen - rejected).detach().mean(),
                          accuracy=(chosen > rejected).float().mean())
''',
        test='''
    loss_fn = lmzoo.create("alignment_loss", NAME)
    z = torch.zeros(4)
    loss, metrics = loss_fn(z, z, z, z)
    assert abs(loss.item() - torch.log(torch.tensor(2.0)).item()) < 1e-6
''',
    ),
}

_GENERIC = dict(
    imports="",
    fields='scale: float = Field(1.0, description="an example parameter")',
    body='''
class {cls}:
    """A new {kind} component: fill in the contract for this kind
    (see `lmzoo.registry.KINDS`): {contract}"""

    def __init__(self, scale: float = 1.0, **context):
        self.scale = scale
''',
    test='''
    assert lmzoo.create(KIND, NAME) is not None
''',
)

_MODULE = '''"""lmzoo plugin: the {kind} component `{name}`.

Use it from a recipe:

    plugins: [./{stem}.py]
    ...  {{name: {name}}}

or install it as a package with an entry point in the `lmzoo` group.
"""
{imports}
from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class Params(BaseModel):
    """Parameters of {name} (every field needs a default and a description)."""

    model_config = ConfigDict(extra="forbid")
    {fields}

{body}

@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("{kind}", "{name}", factory={cls}, params=Params,
                 summary="{summary}")
'''

_TEST = '''"""Tests for the {name} plugin: run with `pytest {test_file}`."""
from pathlib import Path

import torch  # noqa: F401

import lmzoo
from lmzoo.hooks import load_plugin_files, reset

KIND, NAME = "{kind}", "{name}"


def setup_module(module):
    reset()
    load_plugin_files([Path(__file__).with_name("{stem}.py")], strict=True)


def teardown_module(module):
    reset()


def test_registered():
    names = [e.name for e in lmzoo.components(KIND)]
    assert NAME in names


def test_behaviour():
{test}

def test_contracts():
    """The contracts every {kind} meets (`lmzoo check-plugin {stem}.py`)."""
    from lmzoo.plugins.devtools import check_plugin

    assert check_plugin(Path(__file__).with_name("{stem}.py")) == 0
'''


def render_plugin(kind: str, name: str) -> tuple[str, str]:
    from lmzoo.registry import KINDS

    stem = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in stem.split("_")) or "Component"
    t = _TEMPLATES.get(kind, _GENERIC)
    fmt = dict(kind=kind, name=name, stem=stem, cls=cls, contract=KINDS[kind].contract if kind in KINDS else "")
    body = t["body"].replace("{{", "\x00").replace("}}", "\x01")
    body = body.format(**fmt).replace("\x00", "{").replace("\x01", "}").replace("{NAME}", name)
    summary = (t["body"].split('"""')[1].split("\n")[0] if '"""' in t["body"] else f"a {kind}").format(**fmt)
    module = _MODULE.format(imports=t["imports"], fields=t["fields"], body=body, summary=summary.replace('"', "'"),
                            **fmt)
    test = _TEST.format(test=textwrap.indent(textwrap.dedent(t["test"]).strip("\n"), "    ") + "\n",
                        test_file=f"test_{stem}.py", **fmt)
    return module, test
