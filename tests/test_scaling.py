"""Scaling-law fitters (lmzoo/scaling.py), sweep planning and the fit-scaling CLI (plugins/scaling.py).

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

from lmzoo.scaling import (ParametricFit, Point, ScalingError, fit_all, fit_isoflop, fit_parametric, load_points,
                           points_from_rows, synthetic_isoflop_points)

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
