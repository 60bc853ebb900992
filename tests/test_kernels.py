"""The from-scratch kernels (lmzoo.plugins.kernels) against torch's own operators: values and
gradients on random and extreme inputs, and gradcheck in float64."""
import pytest
import torch
import torch.nn.functional as F
from lmzoo.plugins import kernels as K


def _values_and_grads(fn, ref, x, atol=1e-6, rtol=1e-5):
    """fn(x) == ref(x) and d(sum(w * out))/dx agree, for a random weighting w."""
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ya, yb = fn(a), ref(b)
    torch.testing.assert_close(ya, yb, atol=atol, rtol=rtol, equal_nan=True)
    w = torch.randn_like(yb)
    (ga,) = torch.autograd.grad((ya * w).nan_to_num().sum(), a)
    (gb,) = torch.autograd.grad((yb * w).nan_to_num().sum(), b)
    torch.testing.assert_close(ga, gb, atol=atol, rtol=rtol, equal_nan=True)


EXTREME = torch.tensor([[1e4, -1e4, 0.0, 3.0], [1e4, 1e4 - 1, 1e4 - 30, -1e4], [-1e4, -1e4, -1e4, -1e4],
                        [88.0, 89.0, -104.0, 1e-30]])


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_and_log_softmax_random(dim):
    torch.manual_seed(0)
    x = torch.randn(5, 7, 11) * 4
    _values_and_grads(lambda t: K.softmax(t, dim), lambda t: torch.softmax(t, dim), x)
    _values_and_grads(lambda t: K.log_softmax(t, dim), lambda t: torch.log_softmax(t, dim), x, atol=1e-5)


def test_softmax_and_log_softmax_extreme():
    _values_and_grads(K.softmax, lambda t: torch.softmax(t, -1), EXTREME)
    _values_and_grads(K.log_softmax, lambda t: torch.log_softmax(t, -1), EXTREME, atol=1e-3, rtol=1e-6)
    masked = torch.tensor([[0.5, float("-inf"), 2.0], [float("-inf"), float("-inf"), 1.0]])
    torch.testing.assert_close(K.softmax(masked, -1), torch.softmax(masked, -1))
    assert K.softmax(masked, -1)[1].tolist() == [0.0, 0.0, 1.0]
    assert torch.isfinite(K.softmax(EXTREME, -1)).all() and torch.isfinite(K.log_softmax(EXTREME, -1)).all()


def test_cross_entropy_random_mean_over_leading_dims():
    torch.manual_seed(1)
    logits, y = torch.randn(3, 6, 50) * 3, torch.randint(0, 50, (3, 6))
    _values_and_grads(lambda t: K.cross_entropy(t, y), lambda t: F.cross_entropy(t.view(-1, 50), y.view(-1)), logits)
    flat = torch.randn(8, 13)
    t = torch.randint(0, 13, (8,))
    torch.testing.assert_close(K.cross_entropy(flat, t), F.cross_entropy(flat, t))
    # the mean over leading dimensions is the mean over every row, whatever the shape
    torch.testing.assert_close(K.cross_entropy(logits, y), K.cross_entropy(logits.view(18, 50), y.view(18)))


def test_cross_entropy_extreme_logits():
    y = torch.tensor([0, 2, 1, 3])
    _values_and_grads(lambda t: K.cross_entropy(t, y), lambda t: F.cross_entropy(t, y), EXTREME, atol=1e-4,
                      rtol=1e-6)
    # +-1e4: exactly 2e4 nats for the wrong class, exactly 0 for the right one
    x = torch.tensor([[1e4, -1e4]])
    assert K.cross_entropy(x, torch.tensor([1])).item() == 2e4
    assert K.cross_entropy(x, torch.tensor([0])).item() == 0.0
    with pytest.raises(ValueError, match="targets of shape"):
        K.cross_entropy(torch.randn(2, 3, 5), torch.zeros(6, dtype=torch.long))


@pytest.mark.parametrize("name", ["silu", "gelu", "gelu_tanh", "relu"])
def test_activations(name):
    fn, ref = {"silu": (K.silu, F.silu), "relu": (K.relu, F.relu),
               "gelu": (K.gelu, F.gelu),
               "gelu_tanh": (lambda t: K.gelu(t, "tanh"), lambda t: F.gelu(t, approximate="tanh"))}[name]
    torch.manual_seed(2)
    _values_and_grads(fn, ref, torch.randn(4, 33) * 5, atol=1e-5)
    _values_and_grads(fn, ref, torch.tensor([1e4, -1e4, 80.0, -80.0, 1e-30, -1e-30, 0.5, -0.5]), rtol=1e-6)
    assert torch.isfinite(fn(torch.tensor([1e30, -1e30]))).all()


def test_sigmoid_never_overflows():
    x = torch.tensor([-1e4, -100.0, -1.0, 0.0, 1.0, 100.0, 1e4], requires_grad=True)
    y = K.sigmoid(x)
    torch.testing.assert_close(y, torch.sigmoid(x))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (torch.sigmoid(x) * (1 - torch.sigmoid(x))).detach())


def test_gradcheck_float64():
    torch.manual_seed(3)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (3,))
    assert torch.autograd.gradcheck(lambda t: K.softmax(t, -1), (x,))
    assert torch.autograd.gradcheck(lambda t: K.log_softmax(t, 0), (x,))
    assert torch.autograd.gradcheck(lambda t: K.cross_entropy(t, y), (x,))
    assert torch.autograd.gradcheck(K.silu, (x,))


def _params(scales, seed=4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, s in enumerate(scales):
        p = torch.nn.Parameter(torch.zeros(3 + i, 4))
        p.grad = torch.randn(p.shape, generator=g) * s
        out.append(p)
    return out


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    mine, ref = _params([1.0, 3.0, 0.2]), _params([1.0, 3.0, 0.2])
    frozen = torch.nn.Parameter(torch.ones(5))  # no gradient: ignored
    t1 = K.clip_grad_norm(mine + [frozen], max_norm)
    t2 = torch.nn.utils.clip_grad_norm_(ref + [frozen], max_norm)
    torch.testing.assert_close(t1, t2)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a.grad, b.grad)
    assert frozen.grad is None
    after = torch.cat([p.grad.flatten() for p in mine]).norm()
    assert after <= max_norm * (1 + 1e-6) if t2 > max_norm else torch.isclose(after, t2)


def test_clip_grad_norm_extreme_gradients():
    """Gradients of 1e20 (whose squares overflow float32) and 1e-30 (whose squares underflow) give
    the norm a float64 computation gives, and clipping scales them exactly."""
    for scale in (1e20, 1e-30):
        ps = _params([scale, scale])
        want = torch.cat([p.grad.double().flatten() for p in ps]).norm()
        before = [p.grad.clone() for p in ps]
        total = K.clip_grad_norm(ps, 1.0)
        assert abs(total.item() - want.item()) <= 1e-5 * want.item()
        factor = min(1.0, 1.0 / (want.item() + 1e-6))
        for p, b in zip(ps, before):
            torch.testing.assert_close(p.grad, b * factor, rtol=1e-5, atol=0)
    assert K.clip_grad_norm([torch.nn.Parameter(torch.ones(2))], 1.0).item() == 0.0  # nothing to clip
    with pytest.raises(ValueError, match="max_norm"):
        K.clip_grad_norm(_params([1.0]), 0.0)


def test_kernel_set_switch():
    assert K.kernel_set("scratch").softmax is K.softmax and K.kernel_set("torch").silu is F.silu
    with pytest.raises(ValueError, match="model.kernels"):
        K.kernel_set("cuda")


# ----------------------------------------------------------------------------- the recipe switch

SWITCH = """
name: kernels-test
seed: 1
data:
  source: {name: synthetic, n_docs: 200}
  tokenizer: {name: byte}
  context: 32
model: {d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64}
train:
  optimizer: {name: adamw, lr: 1.0e-2}
  lr_schedule: {name: cosine, warmup_steps: 2}
  batch_size: 8
  budget: {steps: 8}
  grad_clip: 0.05
  val_every: 100
  val_batches: 1
  log_every: 1
eval: {full_val: false}
"""


def _curve(run_dir):
    import csv

    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return [float(r["train_loss"]) for r in rows if r["train_loss"]]


@pytest.mark.parametrize("ffn", ["swiglu", "gelu", "relu2"])
def test_scratch_kernels_train_the_same_loss_curve(tmp_path, ffn):
    """model.kernels=scratch (from-scratch softmax in naive attention, activation, loss, clipping)
    trains a model through the runner with the loss curve of torch's kernels, to 1e-5; clipping is
    active (without it the curve differs)."""
    from lmzoo.recipe import load_runs
    from lmzoo.runner import train_run

    path = tmp_path / "r.yaml"
    path.write_text(SWITCH)
    curves = {}
    for name, over in {"torch": [], "scratch": ["model.kernels=scratch"],
                       "unclipped": ["train.grad_clip=null"]}.items():
        recipe = load_runs(path, [f"model.ffn={{name: {ffn}}}", *over])[1][0].recipe
        train_run(recipe, tmp_path / name, progress=False)
        curves[name] = _curve(tmp_path / name)
    assert len(curves["torch"]) == 8
    assert max(abs(a - b) for a, b in zip(curves["torch"], curves["scratch"])) <= 1e-5, curves
    assert max(abs(a - b) for a, b in zip(curves["torch"], curves["unclipped"])) > 1e-3


def test_scratch_switch_builds_scratch_components():
    import lmzoo

    spec = {"vocab_size": 30, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "kernels": "scratch"}
    model = lmzoo.build_model(spec)
    assert model.layers[0].ffn.silu is K.silu
    assert "from-scratch softmax" in repr(model.layers[0].attn)
    assert lmzoo.build_model({**spec, "kernels": "torch"}).layers[0].ffn.silu is F.silu


def test_scratch_switch_with_a_component_that_has_no_scratch_kernels(fresh_plugins):
    """A third-party ffn that takes no `kernels` still builds with torch's kernels and gives one
    clear error with scratch."""
    import lmzoo
    from lmzoo.hooks import get_state

    class Plain(torch.nn.Module):
        def __init__(self, *, d_model, d_ff):
            super().__init__()
            self.w = torch.nn.Linear(d_model, d_model)

        def forward(self, x):
            return self.w(x)

    get_state().registry.add("ffn", "plain-test", factory=Plain)
    spec = {"vocab_size": 30, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "ffn": {"name": "plain-test"}}
    lmzoo.build_model(spec)
    with pytest.raises(ValueError, match="model.kernels=scratch: the ffn 'plain-test'"):
        lmzoo.build_model({**spec, "kernels": "scratch"})


def test_bench_reports_the_speed_cost_of_scratch_kernels(tmp_path):
    """`lmzoo bench --kernels` times lmzoo's training with torch's kernels (sdpa and naive attention)
    and the from-scratch ones, and reports the ratios."""
    import json

    from typer.testing import CliRunner

    from lmzoo.cli import build_app

    path = tmp_path / "r.yaml"
    path.write_text(SWITCH)
    out = tmp_path / "rows.json"
    r = CliRunner().invoke(build_app(), ["bench", str(path), "--kernels", "--precision", "32-true", "--steps", "4",
                                         "--warmup", "1", "--repeats", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "scratch/torch" in r.output
    (row,) = json.loads(out.read_text())
    assert row["torch_tokens_per_s"] > 0 and row["torch_naive_tokens_per_s"] > 0 and row["scratch_tokens_per_s"] > 0
    assert row["scratch_vs_torch"] == pytest.approx(row["scratch_tokens_per_s"] / row["torch_tokens_per_s"])
