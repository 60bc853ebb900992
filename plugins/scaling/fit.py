"""Scaling-law fitters: IsoFLOP profiles (Chinchilla approach 2) and the parametric loss
L(N, D) = E + A/N^alpha + B/D^beta (approach 3), with bootstrap intervals and plots.

Input is a list of points (parameters N, compute budget C, final loss L, and optionally the
training tokens D). Two on-disk formats are read:
  - the CS336 IsoFLOP table: a JSON list of {parameters, compute_budget, final_loss};
    D is then C / (6 N), the approximation the table was made with;
  - an lmzoo sweep's results.jsonl / results.csv (plugins/scaling/), which carries the
    tokens actually trained, so D is not approximated.

Approach 2 (IsoFLOP): for every budget fit a parabola to loss against log N; its vertex is
N_opt(C). Then fit N_opt = k C^a and D_opt = k' C^b by least squares in log-log space.
Approach 3 (parametric): Hoffmann et al. (2022) fit
    log L_hat = LSE(a - alpha log N, b - beta log D, e)      (A = e^a, B = e^b, E = e^e)
with a Huber loss (delta = 1e-3) on log L - log L_hat, by L-BFGS from a grid of starts.
Minimising L subject to C = 6 N D gives
    N_opt = G (C/6)^(beta/(alpha+beta)),  D_opt = (C/6)^(alpha/(alpha+beta)) / G,
    G = (alpha A / (beta B))^(1/(alpha+beta)).
Confidence intervals are percentile bootstrap intervals (points resampled within budgets,
parabola residuals resampled, or whole budgets resampled).
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

CHINCHILLA = {"a": 0.49, "b": 0.51, "tokens_per_param": 20.0,
              # Hoffmann et al. (2022), approach 3 (Table A3 / eq. 10)
              "E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}

DEFAULT_PREDICT = (1e19, 1e21, 1e23)


@contextlib.contextmanager
def single_threaded_blas():
    """Run BLAS on one thread. The fits make thousands of tiny BLAS calls (5-parameter L-BFGS
    steps, 3-coefficient least squares); a multi-threaded BLAS spin-waits on each of them and,
    on a busy CPU, ran ~100x slower. threadpoolctl is optional: without it nothing changes."""
    import importlib

    for mod in ("scipy.linalg", "scipy.optimize"):  # load the BLAS libraries first, so the limit covers them
        importlib.import_module(mod)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1):
        yield


class ScalingError(ValueError):
    """Input that cannot be fitted; the message says which field/value and how to fix it."""


# ----------------------------------------------------------------------------- data

@dataclass
class Point:
    parameters: float  # N
    compute: float  # C, the budget the point belongs to (groups IsoFLOP profiles)
    loss: float  # final loss (nats/token)
    tokens: float | None = None  # D actually trained; None: C / (6 N)

    @property
    def d(self) -> float:
        return self.tokens if self.tokens is not None else self.compute / (6.0 * self.parameters)


_KEYS = {
    "parameters": ("parameters", "params", "n_params", "N"),
    "compute": ("compute_budget", "budget", "C"),
    "loss": ("final_loss", "loss", "val_loss"),
    "tokens": ("tokens", "D"),
}


def _pick(row: dict, field_: str, where: str, required: bool = True):
    for key in _KEYS[field_]:
        if key in row and row[key] not in (None, ""):
            return float(row[key])
    if required:
        raise ScalingError(f"{where}: no {field_} field (looked for {', '.join(_KEYS[field_])}); "
                           f"got keys {', '.join(map(str, row))}")
    return None


def points_from_rows(rows: Iterable[dict], count: str = "parameters", source: str = "<rows>") -> list[Point]:
    """Rows (dicts) -> points. `count` names the column used as N (e.g. non_embedding_parameters).
    Rows with a missing / non-finite / non-positive loss (diverged or failed runs) are dropped."""
    pts, dropped = [], 0
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        if count != "parameters":
            if count not in row:
                raise ScalingError(f"{where}: no {count!r} column (--count {count}); columns: {', '.join(row)}")
            n = float(row[count])
        else:
            n = _pick(row, "parameters", where)
        c = _pick(row, "compute", where)
        loss = _pick(row, "loss", where, required=False)
        d = _pick(row, "tokens", where, required=False)
        if loss is None or not math.isfinite(loss) or loss <= 0:
            dropped += 1
            continue
        if n <= 0 or c <= 0 or (d is not None and d <= 0):
            raise ScalingError(f"{where}: parameters, compute and tokens must be > 0 (got N={n}, C={c}, D={d})")
        pts.append(Point(n, c, loss, d))
    if dropped:
        warnings.warn(f"{source}: dropped {dropped} row(s) without a finite positive loss")
    return pts


def load_points(path: str | Path, count: str = "parameters") -> list[Point]:
    """Read a CS336-style JSON list, a JSON {"points": [...]}, a .jsonl or a .csv file.
    A directory means the results.jsonl (or results.csv) of an lmzoo sweep inside it."""
    path = Path(path)
    if path.is_dir():
        for name in ("results.jsonl", "results.csv", "results.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ScalingError(f"{path} is a directory without results.jsonl/results.csv; "
                               "give a sweep directory or a results file")
    if not path.is_file():
        raise ScalingError(f"results file not found: {path}")
    text = path.read_text()
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:  # maybe JSON lines with a .json suffix
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = data.get("points", data.get("results")) if isinstance(data, dict) else data
            if not isinstance(rows, list):
                raise ScalingError(f"{path}: expected a JSON list of {{parameters, compute_budget, final_loss}}")
    return points_from_rows(rows, count=count, source=str(path))


def _by_budget(points: Sequence[Point]) -> dict[float, list[Point]]:
    groups: dict[float, list[Point]] = {}
    for p in points:
        groups.setdefault(p.compute, []).append(p)
    return dict(sorted(groups.items()))


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def _power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares log y = log k + e log x. Returns (k, e)."""
    e, logk = np.polyfit(np.log(x), np.log(y), 1)
    return float(math.exp(logk)), float(e)


# ----------------------------------------------------------------------------- approach 2: IsoFLOP profiles

@dataclass
class Profile:
    """One budget's IsoFLOP profile: loss = c2 x^2 + c1 x + c0 with x = ln N."""

    compute: float
    coef: tuple[float, float, float]
    n_opt: float
    d_opt: float
    loss_opt: float
    n_range: tuple[float, float]
    inside: bool  # the vertex lies within the sampled N range (else it is an extrapolation)


def fit_profile(pts: Sequence[Point], method: str = "parabola") -> Profile | str:
    """Fit the parabola of one budget; returns a Profile or the reason it cannot be used.
    method='argmin' takes the best run instead of the vertex (the CS336 assignment's
    simpler estimate; coarse, since N_opt can only be one of the sampled sizes)."""
    x = np.log([p.parameters for p in pts])
    if method == "argmin":
        best = min(pts, key=lambda p: p.loss)
        return Profile(compute=pts[0].compute, coef=(0.0, 0.0, best.loss), n_opt=best.parameters, d_opt=best.d,
                       loss_opt=best.loss, n_range=(float(math.exp(x.min())), float(math.exp(x.max()))),
                       inside=bool(x.min() < math.log(best.parameters) < x.max()))
    if len(np.unique(x)) < 3:
        return f"{len(np.unique(x))} distinct model sizes (need >= 3 for a parabola)"
    y = np.array([p.loss for p in pts])
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 <= 0:
        return "the loss is not convex in log N (no minimum: widen the size range around the optimum)"
    xv = -c1 / (2 * c2)
    # D at the optimum: interpolate ln D linearly in ln N within the budget (exact for D = C/(6N),
    # and the right thing when D = C / flops_per_token(N) is not a pure power of N)
    logd = np.log([p.d for p in pts])
    s, i0 = np.polyfit(x, logd, 1)
    return Profile(
        compute=pts[0].compute,
        coef=(float(c2), float(c1), float(c0)),
        n_opt=float(math.exp(xv)),
        d_opt=float(math.exp(i0 + s * xv)),
        loss_opt=float(c0 - c1 * c1 / (4 * c2)),
        n_range=(float(math.exp(x.min())), float(math.exp(x.max()))),
        inside=bool(x.min() <= xv <= x.max()),
    )


@dataclass
class IsoFlopFit:
    profiles: list[Profile]
    k: float  # N_opt = k C^a
    a: float
    kd: float  # D_opt = kd C^b
    b: float
    skipped: dict[float, str] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    boot: dict[str, list[float]] = field(default_factory=dict)  # replicate (k, a, kd, b)
    level: float = 0.95
    method: str = "parabola"

    def n_opt(self, c):
        return self.k * np.asarray(c, dtype=float) ** self.a

    def d_opt(self, c):
        return self.kd * np.asarray(c, dtype=float) ** self.b

    def predict(self, budgets: Sequence[float]) -> list[dict]:
        """N_opt, D_opt (with bootstrap intervals when available) at each budget."""
        out = []
        for c in budgets:
            row = {"compute": float(c), "n_opt": float(self.n_opt(c)), "d_opt": float(self.d_opt(c))}
            if self.boot:
                bn = np.array(self.boot["k"]) * c ** np.array(self.boot["a"])
                bd = np.array(self.boot["kd"]) * c ** np.array(self.boot["b"])
                row["n_opt_ci"] = _percentile_ci(bn, self.level)
                row["d_opt_ci"] = _percentile_ci(bd, self.level)
            out.append(row)
        return out


def _isoflop_core(groups: dict[float, list[Point]], method: str = "parabola"):
    profiles, skipped = [], {}
    for c, pts in groups.items():
        prof = fit_profile(pts, method)
        if isinstance(prof, str):
            skipped[c] = prof
        else:
            profiles.append(prof)
    if len(profiles) < 2:
        return profiles, skipped, None
    cs = np.array([p.compute for p in profiles])
    k, a = _power_law(cs, np.array([p.n_opt for p in profiles]))
    kd, b = _power_law(cs, np.array([p.d_opt for p in profiles]))
    return profiles, skipped, (k, a, kd, b)


def fit_isoflop(points: Sequence[Point], bootstrap: int = 200, resample: str = "points",
                level: float = 0.95, seed: int = 0, method: str = "parabola") -> IsoFlopFit:
    """IsoFLOP approach. `resample` picks the bootstrap: 'points' (resample the runs within each
    budget), 'residuals' (keep every run's size, add resampled parabola residuals to the fitted
    losses: steadier with few sizes per budget, where dropping one of 5 runs can flip the
    parabola) or 'budgets' (resample whole budgets' minima; needs >= 3 budgets). `method`:
    'parabola' (vertex of a parabola in log N) or 'argmin' (the best sampled run per budget)."""
    with single_threaded_blas():
        return _fit_isoflop(points, bootstrap, resample, level, seed, method)


def _fit_isoflop(points, bootstrap, resample, level, seed, method) -> IsoFlopFit:
    if resample not in ("points", "residuals", "budgets"):
        raise ScalingError(f"resample={resample!r}: use 'points', 'residuals' or 'budgets'")
    if method not in ("parabola", "argmin"):
        raise ScalingError(f"method={method!r}: use 'parabola' or 'argmin'")
    groups = _by_budget(points)
    profiles, skipped, law = _isoflop_core(groups, method)
    if law is None:
        detail = "; ".join(f"C={c:.3g}: {why}" for c, why in skipped.items())
        raise ScalingError(f"need IsoFLOP minima at >= 2 compute budgets, got {len(profiles)}"
                           + (f" ({detail})" if detail else "") + "; add budgets or model sizes")
    for p in profiles:
        if not p.inside and method == "parabola":
            warnings.warn(f"C={p.compute:.3g}: the loss minimum N={p.n_opt:.3g} lies outside the sampled sizes "
                          f"[{p.n_range[0]:.3g}, {p.n_range[1]:.3g}]; it is an extrapolation")
    fit = IsoFlopFit(profiles, *law, skipped=skipped, level=level, method=method)
    if bootstrap <= 0:
        return fit
    rng = np.random.default_rng(seed)
    reps: list[tuple] = []
    cs = np.array([p.compute for p in profiles])
    ns = np.array([p.n_opt for p in profiles])
    ds = np.array([p.d_opt for p in profiles])
    fitted = {}
    for c, pts in groups.items():  # parabola fits and their residuals, for resample='residuals'
        x = np.log([p.parameters for p in pts])
        y = np.array([p.loss for p in pts])
        if len(np.unique(x)) >= 3:
            yhat = np.polyval(np.polyfit(x, y, 2), x)
            dof = max(1, len(pts) - 3)
            fitted[c] = (yhat, (y - yhat) * math.sqrt(len(pts) / dof))
    for _ in range(bootstrap):
        if resample == "points":
            g = {c: [pts[i] for i in rng.integers(0, len(pts), len(pts))] for c, pts in groups.items()}
            _, _, rep = _isoflop_core(g, method)
        elif resample == "residuals":
            g = {}
            for c, pts in groups.items():
                if c not in fitted:
                    continue
                yhat, res = fitted[c]
                ystar = yhat + res[rng.integers(0, len(res), len(res))]
                g[c] = [Point(p.parameters, p.compute, float(l), p.tokens) for p, l in zip(pts, ystar)]
            _, _, rep = _isoflop_core(g, method)
        else:
            if len(profiles) < 3:
                raise ScalingError("resample='budgets' needs >= 3 budgets with a minimum; use resample='points'")
            idx = rng.integers(0, len(profiles), len(profiles))
            if len(np.unique(cs[idx])) < 2:
                continue
            rep = (*_power_law(cs[idx], ns[idx]), *_power_law(cs[idx], ds[idx]))
        if rep is not None:
            reps.append(rep)
    if reps:
        arr = np.array(reps)
        fit.boot = {name: arr[:, j].tolist() for j, name in enumerate(("k", "a", "kd", "b"))}
        fit.ci = {name: _percentile_ci(arr[:, j], level) for j, name in enumerate(("k", "a", "kd", "b"))}
    return fit


# ----------------------------------------------------------------------------- approach 3: parametric

HUBER_DELTA = 1e-3
# Hoffmann et al.'s initialisation grid: alpha, beta, e, a, b
INIT_GRID = dict(alpha=np.arange(0.0, 2.01, 0.5), beta=np.arange(0.0, 2.01, 0.5),
                 e=np.arange(-1.0, 1.01, 0.5), a=np.arange(0.0, 25.1, 5.0), b=np.arange(0.0, 25.1, 5.0))
_ORDER = ("a", "b", "e", "alpha", "beta")  # the optimisation vector


def _lse_terms(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray) -> np.ndarray:
    """(..., 3, n) stacked exponents for theta of shape (..., 5) = (a, b, e, alpha, beta)."""
    a, b, e, al, be = (theta[..., i, None] for i in range(5))
    return np.stack([a - al * logn, b - be * logd, np.broadcast_to(e, (a - al * logn).shape)], axis=-2)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def _objective(theta: np.ndarray, logn, logd, logl, delta: float):
    """Mean Huber loss / delta (scaled so L-BFGS sees O(1) gradients) and its gradient."""
    t = _lse_terms(theta, logn, logd)  # (3, n)
    m = t.max(axis=0)
    w = np.exp(t - m)
    s = w.sum(axis=0)
    lse = m + np.log(s)
    w = w / s
    r = lse - logl
    n = r.size
    f = _huber(r, delta).sum() / (delta * n)
    dr = np.clip(r, -delta, delta) / (delta * n)  # huber'(r) / (delta n)
    g = np.array([
        (dr * w[0]).sum(),
        (dr * w[1]).sum(),
        (dr * w[2]).sum(),
        -(dr * w[0] * logn).sum(),
        -(dr * w[1] * logd).sum(),
    ])
    return float(f), g


def _grid_objective(logn, logd, logl, delta):
    """Evaluate the objective on the whole initialisation grid (vectorised); returns (thetas, f)."""
    combos = np.array(list(itertools.product(*(INIT_GRID[k] for k in _ORDER))))  # (G, 5)
    t = _lse_terms(combos, logn, logd)  # (G, 3, n)
    from scipy.special import logsumexp

    r = logsumexp(t, axis=1) - logl
    f = _huber(r, delta).mean(axis=1) / delta
    return combos, f


def _minimise(theta0, logn, logd, logl, delta):
    from scipy.optimize import minimize

    res = minimize(_objective, theta0, args=(logn, logd, logl, delta), jac=True, method="L-BFGS-B",
                   options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10})
    return res.x, float(res.fun)


@dataclass
class ParametricFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    boot: dict[str, list[float]] = field(default_factory=dict)  # replicate E, A, B, alpha, beta
    level: float = 0.95

    @property
    def a(self) -> float:  # N_opt ~ C^a
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:  # D_opt ~ C^b
        return self.alpha / (self.alpha + self.beta)

    def loss(self, n, d):
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    @staticmethod
    def _opt(A, B, alpha, beta, c, flops_per_param_token):
        g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
        x = np.asarray(c, dtype=float) / flops_per_param_token
        return g * x ** (beta / (alpha + beta)), x ** (alpha / (alpha + beta)) / g

    def optimal(self, c, flops_per_param_token: float = 6.0):
        """(N_opt, D_opt) minimising L subject to C = 6 N D."""
        return self._opt(self.A, self.B, self.alpha, self.beta, c, flops_per_param_token)

    def predict(self, budgets: Sequence[float], flops_per_param_token: float = 6.0) -> list[dict]:
        out = []
        for c in budgets:
            n, d = self.optimal(c, flops_per_param_token)
            row = {"compute": float(c), "n_opt": float(n), "d_opt": float(d), "loss": float(self.loss(n, d))}
            if self.boot:
                b = {k: np.array(v) for k, v in self.boot.items()}
                bn, bd = self._opt(b["A"], b["B"], b["alpha"], b["beta"], c, flops_per_param_token)
                row["n_opt_ci"] = _percentile_ci(bn, self.level)
                row["d_opt_ci"] = _percentile_ci(bd, self.level)
                row["loss_ci"] = _percentile_ci(b["E"] + b["A"] / bn ** b["alpha"] + b["B"] / bd ** b["beta"],
                                                self.level)
            out.append(row)
        return out


def _fit_theta(logn, logd, logl, delta, starts):
    best = None
    for theta0 in starts:
        theta, f = _minimise(np.asarray(theta0, dtype=float), logn, logd, logl, delta)
        if best is None or f < best[1]:
            best = (theta, f)
    return best


def fit_parametric(points: Sequence[Point], bootstrap: int = 100, n_starts: int = 16, delta: float = HUBER_DELTA,
                   level: float = 0.95, seed: int = 0) -> ParametricFit:
    """Approach 3: Huber fit of log L = LSE(a - alpha log N, b - beta log D, e). The full
    Hoffmann grid (4500 starts) is evaluated vectorised and the best `n_starts` distinct
    starts are refined with L-BFGS-B. Bootstrap replicates resample the points."""
    with single_threaded_blas():
        return _fit_parametric(points, bootstrap, n_starts, delta, level, seed)


def _fit_parametric(points, bootstrap, n_starts, delta, level, seed) -> ParametricFit:
    if len(points) < 5:
        raise ScalingError(f"the parametric fit has 5 free parameters and needs >= 5 points, got {len(points)}")
    logn = np.log([p.parameters for p in points])
    logd = np.log([p.d for p in points])
    logl = np.log([p.loss for p in points])
    if np.ptp(logn) == 0 or np.ptp(logd) == 0:
        raise ScalingError("all points share one N or one D: alpha/beta are not identifiable; vary both")
    combos, f = _grid_objective(logn, logd, logl, delta)
    starts = combos[np.argsort(f)[:n_starts]]
    theta, fbest = _fit_theta(logn, logd, logl, delta, starts)

    def unpack(th):
        a, b, e, al, be = th
        return dict(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(al), beta=float(be))

    fit = ParametricFit(**unpack(theta), objective=fbest, n_points=len(points), level=level)
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        reps = []
        n = len(points)
        for _ in range(bootstrap):
            idx = rng.integers(0, n, n)
            if np.ptp(logn[idx]) == 0 or np.ptp(logd[idx]) == 0:
                continue
            # warm start at the full-data optimum, plus the two best grid starts as insurance
            th, _ = _fit_theta(logn[idx], logd[idx], logl[idx], delta, [theta, *starts[:2]])
            reps.append(list(unpack(th).values()))
        if reps:
            arr = np.array(reps)
            names = ("E", "A", "B", "alpha", "beta")
            fit.boot = {k: arr[:, j].tolist() for j, k in enumerate(names)}
            fit.ci = {k: _percentile_ci(arr[:, j], level) for j, k in enumerate(names)}
            fit.ci["a"] = _percentile_ci(arr[:, 4] / (arr[:, 3] + arr[:, 4]), level)
            fit.ci["b"] = _percentile_ci(arr[:, 3] / (arr[:, 3] + arr[:, 4]), level)
    return fit


# ----------------------------------------------------------------------------- synthetic data (tests, docs)

def synthetic_isoflop_points(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
                             budgets=(1e17, 1e18, 1e19, 1e20), n_sizes: int = 9, span: float = 16.0,
                             noise: float = 0.0, seed: int = 0, with_tokens: bool = True) -> list[Point]:
    """Points from a known law on IsoFLOP grids (C = 6 N D), sizes log-spaced over
    [N_opt/span, N_opt*span] around the true optimum, with multiplicative lognormal noise."""
    rng = np.random.default_rng(seed)
    law = ParametricFit(E, A, B, alpha, beta, 0.0, 0)
    pts = []
    for c in budgets:
        n0, _ = law.optimal(c)
        for n in np.geomspace(n0 / span, n0 * span, n_sizes):
            d = c / (6 * n)
            loss = float(law.loss(n, d)) * math.exp(noise * rng.standard_normal())
            pts.append(Point(float(n), float(c), loss, float(d) if with_tokens else None))
    return pts


# ----------------------------------------------------------------------------- report, plots

def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "nan"


def _ci(ci: dict, key: str) -> str:
    if key not in ci or not all(map(math.isfinite, ci[key])):
        return ""
    lo, hi = ci[key]
    return f" [{_fmt(lo)}, {_fmt(hi)}]"


def report(iso: IsoFlopFit | None, par: ParametricFit | None, predict: Sequence[float] = DEFAULT_PREDICT) -> str:
    """A plain-text summary: exponents, coefficients, intervals and predictions."""
    lines = []
    if iso is not None:
        lvl = int(round(iso.level * 100))
        how = "parabola vertex in log N" if iso.method == "parabola" else "best run per budget"
        lines += [f"IsoFLOP approach ({len(iso.profiles)} budgets, N_opt = {how}; {lvl}% bootstrap intervals)"]
        for p in iso.profiles:
            flag = "" if p.inside else (
                "   (minimum outside the sampled sizes: extrapolated)" if iso.method == "parabola"
                else "   (best run at the edge of the sampled sizes)")
            lines.append(f"  C={p.compute:.3g}: N_opt={_fmt(p.n_opt)}  D_opt={_fmt(p.d_opt)}  "
                         f"L_opt={p.loss_opt:.4f}  D/N={p.d_opt / p.n_opt:.3g}{flag}")
        for c, why in iso.skipped.items():
            lines.append(f"  C={c:.3g}: skipped: {why}")
        lines += [
            f"  N_opt = {_fmt(iso.k)} * C^{iso.a:.4f}{_ci(iso.ci, 'a')}   (Chinchilla a ~ {CHINCHILLA['a']})",
            f"  D_opt = {_fmt(iso.kd)} * C^{iso.b:.4f}{_ci(iso.ci, 'b')}   (Chinchilla b ~ {CHINCHILLA['b']})",
        ]
    if par is not None:
        lvl = int(round(par.level * 100))
        lines += ["", f"Parametric fit L(N, D) = E + A/N^alpha + B/D^beta ({par.n_points} points, Huber "
                      f"delta={HUBER_DELTA:g} on log L; {lvl}% bootstrap intervals)"]
        for k in ("E", "A", "B", "alpha", "beta"):
            lines.append(f"  {k:5s} = {_fmt(getattr(par, k))}{_ci(par.ci, k)}"
                         f"   (Chinchilla {CHINCHILLA[k]})")
        lines.append(f"  => N_opt ~ C^{par.a:.4f}{_ci(par.ci, 'a')}, D_opt ~ C^{par.b:.4f}{_ci(par.ci, 'b')}"
                     f"  (a = beta/(alpha+beta), b = alpha/(alpha+beta); C = 6ND)")
    if predict:
        lines += ["", "Predictions (compute-optimal):"]
        head = f"  {'C (FLOPs)':>10s}"
        if iso is not None:
            head += f"  {'IsoFLOP N_opt':>28s}  {'IsoFLOP D_opt':>28s}  {'D/N':>6s}"
        if par is not None:
            head += f"  {'param. N_opt':>28s}  {'param. D_opt':>28s}  {'loss':>6s}"
        lines.append(head)
        ip = iso.predict(predict) if iso is not None else [None] * len(predict)
        pp = par.predict(predict) if par is not None else [None] * len(predict)
        for c, ir, pr in zip(predict, ip, pp):
            row = f"  {c:>10.3g}"

            def cell(r, key):
                ci = r.get(key + "_ci")
                s = _fmt(r[key]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")
                return f"{s:>28s}"

            if ir is not None:
                row += f"  {cell(ir, 'n_opt')}  {cell(ir, 'd_opt')}  {ir['d_opt'] / ir['n_opt']:>6.3g}"
            if pr is not None:
                row += f"  {cell(pr, 'n_opt')}  {cell(pr, 'd_opt')}  {pr['loss']:>6.3f}"
            lines.append(row)
    return "\n".join(lines)


def to_json(iso: IsoFlopFit | None, par: ParametricFit | None, predict: Sequence[float] = ()) -> dict:
    out: dict = {}
    if iso is not None:
        d = asdict(iso)
        d.pop("boot")
        d["skipped"] = {str(k): v for k, v in iso.skipped.items()}
        d["predictions"] = iso.predict(predict)
        out["isoflop"] = d
    if par is not None:
        d = asdict(par)
        d.pop("boot")
        d.update(a=par.a, b=par.b, predictions=par.predict(predict))
        out["parametric"] = d
    return out


def plot(points: Sequence[Point], iso: IsoFlopFit | None, par: ParametricFit | None, out_dir: str | Path,
         predict: Sequence[float] = ()) -> list[Path]:
    """Write isoflop_curves.png (profiles, parabolas, minima, the parametric law's IsoFLOP
    curves) and scaling_laws.png (N_opt and D_opt against C with the fitted power laws,
    bootstrap bands and predictions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    groups = _by_budget(points)
    cmap = plt.get_cmap("viridis")
    colors = {c: cmap(i / max(1, len(groups) - 1)) for i, c in enumerate(groups)}
    profiles = {p.compute: p for p in (iso.profiles if iso else [])}

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for c, pts in groups.items():
        n = np.array([p.parameters for p in pts])
        ax.scatter(n, [p.loss for p in pts], color=colors[c], s=18, label=f"C={c:.2g}")
        xs = np.geomspace(n.min() / 1.3, n.max() * 1.3, 100)
        if c in profiles:
            pr = profiles[c]
            if iso.method == "parabola":
                ax.plot(xs, np.polyval(pr.coef, np.log(xs)), color=colors[c], lw=1)
            ax.plot([pr.n_opt], [pr.loss_opt], marker="*", ms=11, color=colors[c], mec="k")
        if par is not None:
            # D along this budget's profile: log-linear interpolation of the points' tokens
            s, i0 = np.polyfit(np.log(n), np.log([p.d for p in pts]), 1) if len(set(n)) > 1 else (-1.0, math.log(c / 6))
            ax.plot(xs, par.loss(xs, np.exp(i0 + s * np.log(xs))), color=colors[c], lw=1, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final loss")
    title = "IsoFLOP profiles: parabola fits (solid), minima (*)"
    if par is not None:
        title += ", parametric L(N,D) (dotted)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / "isoflop_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    if iso is not None or par is not None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        cmin = min(groups)
        cmax = max([max(groups)] + list(predict))
        cs = np.geomspace(cmin, cmax, 200)
        for ax, which, label in ((axes[0], "n", "N_opt (parameters)"), (axes[1], "d", "D_opt (tokens)")):
            if iso is not None:
                opt = np.array([getattr(p, f"{which}_opt") for p in iso.profiles])
                ax.scatter([p.compute for p in iso.profiles], opt, color="k", zorder=3, label="IsoFLOP minima")
                law = iso.n_opt(cs) if which == "n" else iso.d_opt(cs)
                exp_ = iso.a if which == "n" else iso.b
                ax.plot(cs, law, color="C0", label=f"IsoFLOP fit: C^{exp_:.3f}")
                if iso.boot:
                    kk, ee = ("k", "a") if which == "n" else ("kd", "b")
                    reps = np.array(iso.boot[kk])[:, None] * cs[None, :] ** np.array(iso.boot[ee])[:, None]
                    lo, hi = np.nanpercentile(reps, [50 * (1 - iso.level), 50 * (1 + iso.level)], axis=0)
                    ax.fill_between(cs, lo, hi, color="C0", alpha=0.2)
                if predict:
                    pv = iso.n_opt(predict) if which == "n" else iso.d_opt(predict)
                    ax.scatter(predict, pv, marker="x", color="C0", zorder=3)
            if par is not None:
                n_, d_ = par.optimal(cs)
                exp_ = par.a if which == "n" else par.b
                ax.plot(cs, n_ if which == "n" else d_, color="C3", ls="--",
                        label=f"parametric (C=6ND): C^{exp_:.3f}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("compute C (FLOPs)")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Compute-optimal model size and data (bands: bootstrap interval)", fontsize=10)
        fig.tight_layout()
        path = out_dir / "scaling_laws.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def fit_all(points: Sequence[Point], out_dir: str | Path | None = None, predict: Sequence[float] = DEFAULT_PREDICT,
            bootstrap: int = 200, resample: str = "points", seed: int = 0, parametric: bool = True,
            level: float = 0.95, method: str = "parabola") -> tuple[IsoFlopFit | None, ParametricFit | None, str]:
    """Both fits, the text report and (with out_dir) fit.json, report.txt and the PNGs.
    Either fit may be None when the data cannot support it (the reason is in the report)."""
    notes = []
    try:
        iso = fit_isoflop(points, bootstrap=bootstrap, resample=resample, level=level, seed=seed, method=method)
    except ScalingError as exc:
        iso = None
        notes.append(f"IsoFLOP fit not possible: {exc}")
    par = None
    if parametric:
        try:
            par = fit_parametric(points, bootstrap=max(0, bootstrap // 2), level=level, seed=seed)
        except ScalingError as exc:
            notes.append(f"parametric fit not possible: {exc}")
    if iso is None and par is None:
        raise ScalingError("; ".join(notes))
    text = report(iso, par, predict)
    if notes:
        text = "\n".join(notes) + "\n\n" + text
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "fit.json").write_text(json.dumps(to_json(iso, par, predict), indent=2))
        (out_dir / "report.txt").write_text(text + "\n")
        plot(points, iso, par, out_dir, predict)
    return iso, par, text
