"""Scaling-law fitters (plugins/scaling/fit.py), sweep planning and the fit-scaling CLI (plugins/scaling/).

The fitters are checked against data generated from a known law L = E + A/N^alpha + B/D^beta
on IsoFLOP grids: the compute-optimal exponents of that law are a = beta/(alpha+beta) and
b = alpha/(alpha+beta) in closed form, which the fits must recover.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from lmzoo.plugins.scaling.fit import (
    ParametricFit,
    Point,
    ScalingError,
    fit_all,
    fit_isoflop,
    fit_parametric,
    load_points,
    points_from_rows,
    synthetic_isoflop_points,
)

CS336 = Path(__file__).resolve().parents[2] / "shared" / "data" / "isoflops_curves.json"


def _true_exponents(alpha, beta):
    return beta / (alpha + beta), alpha / (alpha + beta)


@pytest.mark.parametrize("alpha,beta", [(0.34, 0.28), (0.5, 0.25)])
def test_isoflop_recovers_known_exponents(alpha, beta):
    a_true, b_true = _true_exponents(alpha, beta)
    pts = synthetic_isoflop_points(alpha=alpha, beta=beta, noise=0.005, seed=3, n_sizes=9, span=8.0)
    fit = fit_isoflop(pts, bootstrap=100, seed=0)
    assert abs(fit.a - a_true) < 0.03, (fit.a, a_true)
    assert abs(fit.b - b_true) < 0.03, (fit.b, b_true)
    assert fit.a + fit.b == pytest.approx(1.0, abs=1e-6)  # D = C/(6N) exactly on these grids
    lo, hi = fit.ci["a"]
    assert lo < fit.a < hi and hi - lo < 0.1
    # the law's own optimum at each budget is close to the parabola vertex
    law = ParametricFit(1.69, 406.4, 410.7, alpha, beta, 0.0, 0)
    for prof in fit.profiles:
        n_true, _ = law.optimal(prof.compute)
        assert abs(math.log(prof.n_opt / n_true)) < math.log(1.5)
        assert prof.inside


def test_isoflop_noiseless_is_nearly_exact_and_predicts():
    alpha, beta = 0.34, 0.28
    pts = synthetic_isoflop_points(alpha=alpha, beta=beta, noise=0.0, n_sizes=15, span=3.0)
    fit = fit_isoflop(pts, bootstrap=0)
    a_true, _ = _true_exponents(alpha, beta)
    assert fit.a == pytest.approx(a_true, abs=0.005)
    law = ParametricFit(1.69, 406.4, 410.7, alpha, beta, 0.0, 0)
    (pred,) = fit.predict([1e23])  # five decades beyond the sweep
    n_true, d_true = law.optimal(1e23)
    assert pred["n_opt"] == pytest.approx(n_true, rel=0.25)
    assert pred["d_opt"] == pytest.approx(d_true, rel=0.25)


def test_isoflop_argmin_and_budget_resampling():
    pts = synthetic_isoflop_points(noise=0.002, n_sizes=21, span=8.0, budgets=(1e16, 1e17, 1e18, 1e19, 1e20))
    fit = fit_isoflop(pts, method="argmin", bootstrap=50, resample="budgets")
    a_true, _ = _true_exponents(0.34, 0.28)
    assert abs(fit.a - a_true) < 0.05
    assert set(fit.ci) == {"k", "a", "kd", "b"}


def test_isoflop_uses_actual_tokens_when_given():
    # tokens that are not C/(6N): D = C / (8N). The D_opt law's prefactor must follow them.
    pts = [Point(p.parameters, p.compute, p.loss, p.compute / (8 * p.parameters))
           for p in synthetic_isoflop_points(noise=0.0, n_sizes=11, span=4.0)]
    fit = fit_isoflop(pts, bootstrap=0)
    for prof in fit.profiles:
        assert prof.d_opt == pytest.approx(prof.compute / (8 * prof.n_opt), rel=1e-6)


def test_isoflop_errors_name_the_problem():
    pts = synthetic_isoflop_points(budgets=(1e18,), n_sizes=5)
    with pytest.raises(ScalingError, match=">= 2 compute budgets"):
        fit_isoflop(pts, bootstrap=0)
    two = [p for p in synthetic_isoflop_points(n_sizes=5)][:2] + synthetic_isoflop_points(budgets=(1e19, 1e20))
    fit = fit_isoflop(two, bootstrap=0)  # the 2-point budget is skipped with its reason
    assert any("need >= 3" in why for why in fit.skipped.values())
    # concave data: loss decreasing then flat does not give a minimum
    conc = [Point(n, c, 5 - 0.1 * math.log(n) ** 2 / 100, None) for c in (1e18, 1e19) for n in (1e6, 1e7, 1e8)]
    with pytest.raises(ScalingError, match="not convex"):
        fit_isoflop(conc, bootstrap=0)
    with pytest.raises(ScalingError, match="resample"):
        fit_isoflop(pts, resample="runs")


def test_parametric_recovers_known_law():
    E, A, B, alpha, beta = 1.8, 300.0, 900.0, 0.36, 0.30
    pts = synthetic_isoflop_points(E=E, A=A, B=B, alpha=alpha, beta=beta, noise=0.003, seed=1,
                                   budgets=(1e16, 1e17, 1e18, 1e19, 1e20), n_sizes=9, span=16.0)
    fit = fit_parametric(pts, bootstrap=30, seed=0)
    assert fit.alpha == pytest.approx(alpha, abs=0.04)
    assert fit.beta == pytest.approx(beta, abs=0.04)
    assert fit.E == pytest.approx(E, abs=0.15)
    a_true, b_true = _true_exponents(alpha, beta)
    assert fit.a == pytest.approx(a_true, abs=0.03)
    lo, hi = fit.ci["alpha"]
    assert lo <= fit.alpha <= hi
    # the fitted law reproduces the data within the noise
    resid = np.log([p.loss for p in pts]) - np.log(fit.loss([p.parameters for p in pts], [p.d for p in pts]))
    assert np.sqrt(np.mean(resid ** 2)) < 0.006


def test_parametric_optimum_is_the_constrained_minimum():
    fit = ParametricFit(1.69, 406.4, 410.7, 0.34, 0.28, 0.0, 0)
    c = 1e21
    n, d = fit.optimal(c)
    assert 6 * n * d == pytest.approx(c, rel=1e-9)
    grid = np.geomspace(n / 10, n * 10, 2001)
    losses = fit.loss(grid, c / (6 * grid))
    assert grid[np.argmin(losses)] == pytest.approx(n, rel=0.01)
    # Chinchilla's published law gives ~ 70B params / 1.4T tokens at 5.76e23 FLOPs (order of magnitude)
    n, d = fit.optimal(5.76e23)
    assert 2e10 < n < 2e11 and 5e11 < d < 5e12


def test_parametric_needs_enough_varied_points():
    with pytest.raises(ScalingError, match=">= 5 points"):
        fit_parametric(synthetic_isoflop_points(budgets=(1e18,), n_sizes=3), bootstrap=0)


def test_load_formats_and_errors(tmp_path):
    rows = [{"parameters": 1e6 * (i + 1), "compute_budget": 1e15, "final_loss": 3.0 + i * 0.1} for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pts = load_points(tmp_path / "a.json")
    assert [p.parameters for p in pts] == [1e6, 2e6, 3e6]
    assert pts[0].d == pytest.approx(1e15 / (6e6))  # no tokens: C/(6N)
    sweep_rows = [dict(r, tokens=123.0, non_embedding_parameters=r["parameters"] / 2) for r in rows]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sweep_rows))
    pts = load_points(tmp_path, count="non_embedding_parameters")  # a directory: its results file
    assert pts[0].tokens == 123.0 and pts[0].parameters == 5e5
    (tmp_path / "r.csv").write_text("parameters,compute_budget,final_loss\n1e6,1e15,3.0\n2e6,1e15,nan\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pts = load_points(tmp_path / "r.csv")
    assert len(pts) == 1 and any("dropped 1" in str(x.message) for x in w)
    with pytest.raises(ScalingError, match="no compute field"):
        points_from_rows([{"parameters": 1, "final_loss": 2}])
    with pytest.raises(ScalingError, match="not found"):
        load_points(tmp_path / "missing.json")


def test_fit_all_writes_report_and_plots(tmp_path):
    pts = synthetic_isoflop_points(noise=0.003, n_sizes=7, span=8.0)
    iso, par, text = fit_all(pts, tmp_path, predict=[1e21, 1e23], bootstrap=20)
    assert "N_opt =" in text and "alpha" in text and "1e+23" in text
    data = json.loads((tmp_path / "fit.json").read_text())
    assert data["isoflop"]["a"] == pytest.approx(iso.a)
    assert data["parametric"]["alpha"] == pytest.approx(par.alpha)
    for name in ("isoflop_curves.png", "scaling_laws.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not CS336.is_file(), reason="the CS336 IsoFLOP table is not available")
def test_cs336_table_fits():
    pts = load_points(CS336)
    assert len(pts) > 20
    fit = fit_isoflop(pts, bootstrap=0)
    assert 0.3 < fit.a < 0.7 and 0.3 < fit.b < 0.7


# ----------------------------------------------------------------------------- CLI


def test_fit_scaling_cli(tmp_path):
    from typer.testing import CliRunner

    from lmzoo.cli import build_app

    pts = synthetic_isoflop_points(noise=0.003, n_sizes=7, span=8.0)
    rows = [{"parameters": p.parameters, "compute_budget": p.compute, "final_loss": p.loss} for p in pts]
    src = tmp_path / "curves.json"
    src.write_text(json.dumps(rows))
    out = tmp_path / "fit"
    res = CliRunner().invoke(build_app(), ["fit-scaling", str(src), "--out", str(out), "-p", "1e22,1e23",
                                           "--bootstrap", "20"])
    assert res.exit_code == 0, res.output
    assert "N_opt =" in res.output and "1e+22" in res.output
    assert (out / "scaling_laws.png").is_file() and (out / "fit.json").is_file()
    a = json.loads((out / "fit.json").read_text())["isoflop"]["a"]
    assert abs(a - 0.28 / 0.62) < 0.03
    bad = CliRunner().invoke(build_app(), ["fit-scaling", str(tmp_path / "nope.json")])
    assert bad.exit_code == 1 and "not found" in bad.output


# ----------------------------------------------------------------------------- sweep planning and running

SWEEP_RECIPE = """
name: tiny_sweep
data: {source: {name: synthetic, n_docs: 200}, context: 32}
train: {batch_size: 4, val_batches: 2, val_every: 1000, log_every: 5}
sweep:
  budgets: [1.0e9, 3.0e9]
  d_model: [16, 32, 48]
  head_dim: 16
  aspect_ratio: 16
  min_steps: 5
  bootstrap: 10
"""


def _sweep_recipe(tmp_path, text=SWEEP_RECIPE, overrides=()):
    from lmzoo.recipe import load_recipe

    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path, load_recipe(path, overrides=list(overrides))


def test_plan_spends_each_budget(tmp_path):
    import lmzoo.plugins.scaling as S

    from lmzoo.plugins.scaling.accounting import account

    _, recipe = _sweep_recipe(tmp_path)
    runs = S.plan(recipe)
    assert len(runs) == 6
    for r in runs:
        spec = dict(vocab_size=257, d_model=r.shape.d_model, n_layers=r.shape.n_layers, n_heads=r.shape.n_heads,
                    d_ff=r.shape.d_ff)
        fpt = account(spec, seq_len=32).flops_per_token  # recount independently of the planner
        assert r.tokens == r.steps * 4 * 32
        assert abs(r.tokens * fpt / r.budget - 1) < 0.05  # whole steps spend the budget within 5%
        assert r.shape.n_heads == r.shape.d_model // 16 and r.shape.n_layers == max(1, round(r.shape.d_model / 16))
        assert r.shape.d_ff % 16 == 0
    # per budget: larger models get fewer tokens
    for c in (1e9, 3e9):
        toks = [r.tokens for r in runs if r.budget == c]
        assert toks == sorted(toks, reverse=True)
    # a single-run recipe for each planned run
    rr = S.run_recipe_for(recipe, runs[0])
    assert rr.train.budget.steps == runs[0].steps and rr.model.d_model == 16 and rr.sweep is None


def test_plan_with_a_parameter_range(tmp_path):
    import lmzoo.plugins.scaling as S

    text = SWEEP_RECIPE.replace("d_model: [16, 32, 48]", "params: [2.0e4, 1.0e6]\n  n_sizes: 5")
    _, recipe = _sweep_recipe(tmp_path, text, ["sweep.budgets=[1.0e11]"])
    shapes = S.shapes(recipe)
    assert len(shapes) == 5 and [s.d_model for s in shapes] == sorted({s.d_model for s in shapes})
    runs = S.plan(recipe)
    n = np.array([r.non_embedding_parameters for r in runs])
    assert np.all(np.diff(np.log(n)) > 0)
    assert 1e4 < n[0] < 4e4 and 5e5 < n[-1] < 2e6


def test_plan_errors_are_actionable(tmp_path):
    import lmzoo.plugins.scaling as S

    from lmzoo.recipe import RecipeError

    _, recipe = _sweep_recipe(tmp_path, overrides=["sweep.budgets=[1.0e8]"])
    with pytest.raises(ValueError, match="min_steps.*lower train.batch_size"):
        S.plan(recipe)
    with pytest.raises(RecipeError, match="exactly one of sweep.d_model"):
        _sweep_recipe(tmp_path, overrides=["sweep.params=[1000, 2000]"])
    with pytest.raises(RecipeError, match="multiples of sweep.head_dim"):
        _sweep_recipe(tmp_path, overrides=["sweep.d_model=[16, 40]"])


def test_sweep_collects_results_and_fits_a_known_law(tmp_path):
    """The whole sweep pipeline (plan -> runs -> results.jsonl/csv -> fit/) with each run's
    final loss drawn from a known L(N, D): the fit must find that law's exponent."""
    import lmzoo.plugins.scaling as S

    text = SWEEP_RECIPE.replace("budgets: [1.0e9, 3.0e9]", "budgets: [1.0e10, 3.0e10, 1.0e11, 3.0e11]").replace(
        "d_model: [16, 32, 48]", "d_model: [16, 32, 48, 64, 96, 128, 192]").replace("min_steps: 5", "min_steps: 1")
    _, recipe = _sweep_recipe(tmp_path, text, ["sweep.tolerance=0.2", "sweep.bootstrap=20"])
    law = ParametricFit(1.5, 2000.0, 400.0, 0.4, 0.4, 0.0, 0)  # optima inside the sizes

    def fake_train(r, run_dir, **kw):
        from lmzoo.accounting import tokens_per_step

        run_dir.mkdir(parents=True, exist_ok=True)
        n = sum(p.params for p in __import__("lmzoo.plugins.scaling.accounting", fromlist=["account"]).account(r).parts)
        tokens = r.train.budget.steps * tokens_per_step(r)
        summary = {"val_loss": float(law.loss(n, tokens)), "train_loss": 9.0, "wall_s": 0.0}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    out = S.run_sweep(recipe, tmp_path / "study", train=fake_train, log=lambda *a: None)
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 28 and {r["compute_budget"] for r in rows} == {1e10, 3e10, 1e11, 3e11}
    assert all(r["final_loss"] == r["val_loss"] for r in rows)
    assert (out / "results.csv").read_text().startswith("label,compute_budget,flops,parameters")
    fit = json.loads((out / "fit" / "fit.json").read_text())
    # parameters and tokens reach the fitter intact: the noiseless law is recovered exactly
    for k, v in dict(E=1.5, A=2000.0, B=400.0, alpha=0.4, beta=0.4).items():
        assert fit["parametric"][k] == pytest.approx(v, rel=1e-3), k
    # each IsoFLOP vertex sits at the law's optimum along that budget's (N, D) curve. (With
    # exact FLOPs at this scale, C is far from 6ND, so N_opt need not grow like C^0.5.)
    for prof in fit["isoflop"]["profiles"]:
        rs = [r for r in rows if r["compute_budget"] == prof["compute"]]
        s_, i0 = np.polyfit(np.log([r["parameters"] for r in rs]), np.log([r["tokens"] for r in rs]), 1)
        grid = np.geomspace(min(r["parameters"] for r in rs), max(r["parameters"] for r in rs), 2000)
        best = grid[np.argmin(law.loss(grid, np.exp(i0 + s_ * np.log(grid))))]
        assert abs(math.log(prof["n_opt"] / best)) < math.log(1.3), (prof["compute"], prof["n_opt"], best)
    assert (out / "fit" / "isoflop_curves.png").is_file() and (out / "plan.txt").is_file()
    # resume: finished runs are read back, not retrained
    calls = []
    S.run_sweep(recipe, out, resume=True, train=lambda *a, **k: calls.append(1), log=lambda *a: None)
    assert calls == []


def test_tiny_sweep_trains_end_to_end(tmp_path):
    """A real sweep through `lmzoo run` (runner, synthetic data): 2 budgets x 3 sizes, a few steps each."""
    from typer.testing import CliRunner

    from lmzoo.cli import build_app

    path, _ = _sweep_recipe(tmp_path, overrides=())
    out = tmp_path / "study"
    res = CliRunner().invoke(build_app(), ["run", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert math.isfinite(r["final_loss"]) and 0 < r["final_loss"] < 10
        summary = json.loads((out / r["label"] / "summary.json").read_text())
        assert summary["steps"] == r["steps"] and summary["tokens"] == r["tokens"]
        assert summary["flops_per_token"] == pytest.approx(r["flops_per_token"])  # runner and planner agree
    assert (out / "fit" / "report.txt").is_file() or "fit" in res.output
