"""Pure estimators of the gradient noise scale: numbers in, numbers out (no torch).

Notation (McCandlish et al. 2018, arXiv 1812.06162): per-example gradients g_i, true gradient G = E[g_i],
covariance Σ, G_B the mean gradient of B examples.

    E|G_B|² = |G|² + tr(Σ)·c(B)                                   (A.1, generalised)
    c(B) = 1/B                       drawing i.i.d. (infinite population)
    c(B) = (1/B − 1/n)·n/(n − 1)     drawing B of n without replacement (finite-population correction)
    B_simple = tr(Σ)/|G|²                                         (2.9)

Σ is the population covariance (divided by n), so B_simple is that of the whole dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st
from scipy.optimize import brentq as _brentq_scipy

from bsprof.results import Estimate, Status
from bsprof.stats.draw import Draw

OK, LOWER_BOUND, UNDETERMINED = Status.OK, Status.LOWER_BOUND, Status.UNDETERMINED


def noise_coefficient(B: int | np.ndarray, n: int | None = None):
    """c(B) with E|G_B|² = |G|² + tr(Σ)·c(B): 1/B i.i.d., (n − B)/(B(n − 1)) without replacement from n."""
    if isinstance(B, (int, float)) and (n is None or n >= 2):  # one batch size: plain floats (a hot path)
        return 1.0 / B if n is None else (n - B) / (B * (n - 1.0))
    B = np.asarray(B, dtype=float)
    if n is None:
        return 1.0 / B
    if n < 2:
        raise ValueError("a finite population needs n >= 2")
    return (n - B) / (B * (n - 1.0))


def unbiased_pair(small_sq, big_sq, b: int, B: int, n: int | None = None):
    """Unbiased (|G|², tr(Σ)) from one nested pair of squared norms (App. A.1), with c(·) as above.

        tr(Σ)_est = (|G_b|² − |G_B|²) / (c(b) − c(B))
        |G|²_est  = (c(b)|G_B|² − c(B)|G_b|²) / (c(b) − c(B))

    With n = ∞ these are McCandlish's (|G_b|² − |G_B|²)/(1/b − 1/B) and (B|G_B|² − b|G_b|²)/(B − b).
    Each may be negative for one draw; that is information, never clamp it.
    """
    if not b < B:
        raise ValueError(f"need b < B, got b={b}, B={B}")
    cb, cB = noise_coefficient(b, n), noise_coefficient(B, n)
    if not (isinstance(small_sq, float) and isinstance(big_sq, float)):  # floats stay floats (the tracker's steps)
        small_sq, big_sq = np.asarray(small_sq, float), np.asarray(big_sq, float)
    trace = (small_sq - big_sq) / (cb - cB)
    g2 = (cb * big_sq - cB * small_sq) / (cb - cB)
    return g2, trace


@dataclass(frozen=True)
class Ratio:
    """A ratio of means T/G with a Fieller confidence set and its status."""

    value: float
    lo: float
    hi: float
    status: str

    @property
    def estimate(self) -> Estimate:
        """The same numbers as the shared ``Estimate`` (its ``rel_halfwidth`` is what the stopping rule reads)."""
        return Estimate(self.value, self.lo, self.hi, self.status)


def _quantile(confidence: float, dof: float) -> float:
    return float(_st.t.ppf(0.5 + confidence / 2.0, dof))


def _dof(u: np.ndarray) -> float:
    """Degrees of freedom of a weighted mean's t-interval: m_eff − 1, m_eff = (Σu)²/Σu² (Kish's effective number of
    draws; m for equal weights): a few heavy draws (B = 64, 128, …, 1024) carry less information than m equal ones."""
    m = len(u)  # Σu = m
    return max(m * m / float(u @ u), 2.0) - 1.0

def ratio_of_means(t: Sequence[float], g: Sequence[float], weights: Sequence[float] | None = None,
                   confidence: float = 0.9) -> Ratio:
    """R = Σw·t / Σw·g over draws (ratio of means, never mean of ratios) with a Fieller-type interval.

    Fieller: with u_j = m·w_j/Σw the rescaled draws and r_j(R) = u_j·(t_j − R·g_j), E r_j(R) = 0 exactly at the
    true R (every draw is unbiased, whatever its B), so R is in the set where a t-test of mean(r) = 0 passes:
        (T̄ − R·Ḡ)² ≤ q²/m · (s_tt − 2R·s_tg + R²·s_gg),   q = t_{m−1} quantile.
    The per-draw |G|² estimates are skewed (a noncentral χ² when B ≲ B_simple) and their sample variance grows
    with their mean, so plain Fieller undercovers with few draws (78% for a nominal 90% at B = B_simple/16, 5
    draws; scripts/coverage.py). The t statistic is therefore skewness-corrected (Hall 1992, monotone form of
    Johnson 1978): with T = √m·r̄/s, γ = sample skewness of r, a = γ/(3√m),
        T_H = T + a·T² + a²·T³/3 + γ/(6√m),      R ∈ set  ⇔  |T_H(R)| ≤ q,
    inverted on a log grid of R (hull of the accepted set, edges refined by root finding); γ = 0 (m < 3) is
    Fieller. The set bounded: status "ok". The set reaching +∞ but excluding 0 (tr(Σ) significant, |G|² not):
    only a lower bound is known (value NaN). Otherwise: "undetermined".
    """
    t, g = np.asarray(t, float), np.asarray(g, float)
    m = len(t)
    w = np.ones(m) if weights is None else np.asarray(weights, float)
    u = m * w / w.sum()
    ut, ug = u * t, u * g
    T, G = ut.mean(), ug.mean()
    if m < 2:
        return Ratio(T / G if G > 0 else math.nan, math.nan, math.nan, UNDETERMINED)
    cov = np.cov(np.vstack([ut, ug]), ddof=1)
    s_tt, s_gg = cov[0, 0], cov[1, 1]
    if s_tt == 0 and s_gg == 0:  # every draw identical: exact (all of a finite dataset)
        value = T / G if G > 0 else math.nan
        return Ratio(value, value, value, OK if G > 0 else UNDETERMINED)
    lo, hi = _confidence_set(ut, ug, _quantile(confidence, _dof(u)), T / G if G > 0 < T else None, u)
    if lo is not None and math.isfinite(hi) and G > 0:
        return Ratio(T / G, lo, hi, OK)
    if lo is not None and math.isinf(hi) and lo > 0:
        return Ratio(math.nan, lo, math.inf, LOWER_BOUND)
    return Ratio(math.nan, math.nan, math.nan, UNDETERMINED)


_GRID = np.logspace(-6, 12, 901)  # candidate ratios (batch sizes) for the test inversion; beyond: ∞


def _skew_t(ut: np.ndarray, ug: np.ndarray, R, u: np.ndarray | None = None) -> np.ndarray:
    """Hall's (1992) skewness-corrected t statistic T_H of H0: E[u·(t − R·g)] = 0, at each R (see above).

    The spread is that of the residuals e_j = r_j − u_j·r̄ (r̄ = Σr/Σu, the weights u averaging 1): under any R,
    E r_j = u_j·c, so with unequal weights (draws of B = 64, 128, 256, …) the deviations r_j − r̄ also held the
    weights' own spread, u_j·c − c: far from the true R the variance grew with c, and R ≈ 0 passed (lo = 0 in 82%
    of simulated draws of a measurement stopped by its time budget, a new user's trial). Equal weights: unchanged."""
    R = np.atleast_1d(np.asarray(R, float))
    m = len(ut)
    u = np.ones(m) if u is None else u
    dt, dg = ut - u * ut.mean(), ug - u * ug.mean()  # moments of e = r − u·r̄ as polynomials in R: O(m + grid)
    rb = ut.mean() - R * ug.mean()
    s2 = ((dt @ dt) - 2 * R * (dt @ dg) + R ** 2 * (dg @ dg)) / (m - 1)
    m3 = (dt ** 3).sum() - 3 * R * (dt * dt @ dg) + 3 * R ** 2 * (dt @ (dg * dg)) - R ** 3 * (dg ** 3).sum()
    s2 = np.where(s2 > 1e-14 * ((dt @ dt) + R ** 2 * (dg @ dg)) / (m - 1), s2, 0.0)  # rounding → exact 0
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = m3 * m / ((m - 1) * (m - 2)) / s2 ** 1.5 if m > 2 else np.zeros_like(rb)
        T = rb / np.sqrt(s2 / m)
        a = gamma / (3 * math.sqrt(m))
        stat = T + a * T ** 2 + a ** 2 * T ** 3 / 3 + gamma / (6 * math.sqrt(m))
    return np.where(s2 > 0, stat, np.where(rb == 0, 0.0, np.inf))


def _confidence_set(ut: np.ndarray, ug: np.ndarray, q: float, center: float | None = None,
                    u: np.ndarray | None = None):
    """Hull (lo, hi) of {R ≥ 0: |T_H(R)| ≤ q}: lo = 0 / hi = ∞ where the grid's ends pass; (None, None) if empty.

    The grid is refined around the point estimate ``center`` (where T_H is ≈ 0), so narrow sets are not missed.
    """
    grid = _GRID if center is None else np.union1d(_GRID, center * np.logspace(-1, 1, 201))
    passes = np.abs(_skew_t(ut, ug, grid, u)) <= q
    if not passes.any():
        return None, None
    i, j = np.flatnonzero(passes)[[0, -1]]

    def f(R):
        return min(abs(float(_skew_t(ut, ug, R, u)[0])), 1e300) - q

    lo = 0.0 if i == 0 else _brentq(f, grid[i - 1], grid[i])
    hi = math.inf if j == len(grid) - 1 else _brentq(f, grid[j + 1], grid[j])
    return lo, hi


def _brentq(f, a: float, b: float) -> float:
    """The root of f between a (f > 0) and b (f ≤ 0); b itself when f(b) is exactly 0."""
    return b if f(b) == 0 else float(_brentq_scipy(f, a, b, xtol=1e-12, rtol=1e-10))


def mean_interval(x: Sequence[float], weights: Sequence[float] | None = None, confidence: float = 0.9):
    """Weighted mean of draws and its t-interval (mean, lo, hi)."""
    x = np.asarray(x, float)
    m = len(x)
    w = np.ones(m) if weights is None else np.asarray(weights, float)
    u = m * w / w.sum()
    mean = (u * x).mean()
    if m < 2:
        return mean, math.nan, math.nan
    e = u * (x - mean)  # residuals: the weights' own spread is not noise (``_skew_t``)
    half = _quantile(confidence, _dof(u)) * math.sqrt((e @ e) / (m - 1)) / math.sqrt(m)
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class NoiseScale:
    """B_simple = tr(Σ)/|G|² at one set of weights, with its interval, from several draws."""

    g2: float
    g2_lo: float
    g2_hi: float
    trace_sigma: float
    b_simple: float
    b_simple_lo: float
    b_simple_hi: float
    status: str
    n_draws: int
    examples: int
    loss: float
    confidence: float
    layers: dict  # group index -> (g2, trace_sigma, b_simple, lo, hi, status)

    @property
    def b_simple_estimate(self) -> Estimate:
        """B_simple with its interval and status, as the shared ``Estimate``."""
        return Estimate(self.b_simple, self.b_simple_lo, self.b_simple_hi, self.status)

    @property
    def value(self) -> float:
        """B_simple, read as every other result's ``Estimate`` is (``value``, ``lo``, ``hi``, ``status``)."""
        return self.b_simple_estimate.value

    @property
    def lo(self) -> float:
        return self.b_simple_estimate.lo

    @property
    def hi(self) -> float:
        return self.b_simple_estimate.hi

    @property
    def rel_halfwidth(self) -> float:
        """``Estimate.rel_halfwidth`` of B_simple: max(hi − B, B − lo)/B; ∞ unless the status is ok."""
        return self.b_simple_estimate.rel_halfwidth

    @property
    def gradient_diversity_bound(self) -> float:
        """Yin et al. 2018: n·Δ = Σ|g_i|²·n/|Σg_i|² = 1 + B_simple, the largest batch that still speeds up SGD."""
        return 1.0 + self.b_simple


def draw_estimates(draws: Sequence[Draw]):
    """Per-draw unbiased (|G|², tr(Σ)) per parameter group: two arrays of shape [draws, groups]."""
    g2, tr = zip(*(unbiased_pair(d.small_sq, d.big_sq, d.b, d.B, d.n) for d in draws))
    return np.vstack(g2), np.vstack(tr)


def noise_scale(draws: Sequence[Draw], confidence: float = 0.9, same_weights: bool = True) -> NoiseScale:
    """Combine draws into B_simple: example-weighted ratio of means, Fieller interval, per-group breakdown.

    ``same_weights``: the draws were taken at one set of weights (a measurement), so one exact draw (the whole
    dataset) is the value, with a point interval. False for draws along training (a window of steps, each at its
    own weights): exact draws are then ordinary draws of the window's average, and their spread is its interval."""
    if not draws:
        raise ValueError("no draws")
    n_draws, spent = len(draws), int(sum(d.B for d in draws))  # what was spent, exact draw or not
    exact = [d for d in draws if d.exact] if same_weights else []
    draws = exact[:1] or draws  # one exact draw says everything; the others add only noise
    g2, tr = draw_estimates(draws)
    w = np.array([d.B for d in draws], float)
    if exact:
        g2, tr, w = np.repeat(g2, 2, 0), np.repeat(tr, 2, 0), np.repeat(w, 2)  # zero spread: a point interval
    total = ratio_of_means(tr.sum(1), g2.sum(1), w, confidence)
    g2_mean, g2_lo, g2_hi = mean_interval(g2.sum(1), w, confidence)
    tr_mean = float(np.average(tr.sum(1), weights=w))
    layers = {}
    for j in range(g2.shape[1]):
        r = ratio_of_means(tr[:, j], g2[:, j], w, confidence)
        layers[j] = (float(np.average(g2[:, j], weights=w)), float(np.average(tr[:, j], weights=w)),
                     r.value, r.lo, r.hi, r.status)
    loss = float(np.average([d.loss for d in draws], weights=[d.B for d in draws]))
    return NoiseScale(float(g2_mean), float(g2_lo), float(g2_hi), tr_mean, total.value, total.lo, total.hi,
                      total.status, n_draws, spent, loss, confidence, layers)


def regression_1_over_B(batch_sizes: Sequence[float], sq_norms: Sequence[float], n: int | None = None):
    """Least-squares fit of |G_B|² = |G|² + tr(Σ)·c(B) over partial sums (B = b, 2b, …, kb).

    Returns (|G|², tr(Σ), R²) where R² is the fit's coefficient of determination on the mean curve.
    """
    x = noise_coefficient(np.asarray(batch_sizes, float), n)
    y = np.asarray(sq_norms, float)
    X = np.vstack([np.ones_like(x), x]).T
    (g2, trace), *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ np.array([g2, trace])
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss if ss > 0 else 1.0
    return float(g2), float(trace), r2
