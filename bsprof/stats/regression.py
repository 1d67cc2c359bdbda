"""The 1/B regression over partial sums, with a goodness-of-fit test of the model itself (docs/science.md §2).

Each draw holds squared norms at several nested batch sizes: the small batch (b, mean of |G_b|²), the partial
sums |G_{B_k}|² (``Draw.partial_sq``; at b and 2b, ``sampling.partial_marks``) and the whole draw (B, |G_B|²).
The model is

    E|G_B|² = |G|² + tr(Σ)·c(B),      c(B) = 1/B, or (n − B)/(B(n − 1)) without replacement   (A.1)

Across m draws sharing the same K batch sizes, let ȳ be the mean curve and S the across-draw covariance (the
points of one draw are nested, hence correlated). Generalised least squares with W = (S/m)⁻¹,
    β = (XᵀWX)⁻¹XᵀWȳ,   X = [1, c(B_k)],   β = (|G|², tr(Σ)),   B_simple = tr(Σ)/|G|²,
and the residual χ² = (ȳ − Xβ)ᵀW(ȳ − Xβ) is Hotelling's T² for the q = K − 2 contrasts the model sets to zero:
    F = (m − q)/(q(m − 1))·T² ~ F(q, m − q)   under the model (normal draws), which gives the p-value.
A tiny p-value means |G_B|² is not linear in c(B): examples coupled in the batch (BatchNorm), non-i.i.d. draws,
or a loss that is not a mean of per-example losses.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from bsprof.stats.draw import Draw
from bsprof.stats.estimators import noise_coefficient

FIT_ALPHA = 1e-3  # flag the fit below this p-value


@dataclass(frozen=True)
class RegressionFit:
    """|G|², tr(Σ) and B_simple from the 1/B regression, and the goodness-of-fit p-value (NaN: not testable)."""

    g2: float
    trace_sigma: float
    b_simple: float
    p_value: float
    dof: int
    n_draws: int
    batch_sizes: tuple[int, ...]

    @property
    def failed(self) -> bool:
        return self.p_value < FIT_ALPHA


def curve(d: Draw) -> tuple[tuple[int, ...], list[float]]:
    """(batch sizes, squared norms) of one draw: (b, mean|G_b|²), the partial sums, (B, |G_B|²)."""
    pts = {d.b: d.small_sq_total}
    for size, sq in d.partial_sq:
        pts.setdefault(int(size), float(sq))  # a partial sum at B = b is one small batch: keep the mean
    pts[d.B] = d.big_sq_total
    sizes = tuple(sorted(pts))
    return sizes, [pts[s] for s in sizes]


def fit(draws: Sequence[Draw]) -> RegressionFit:
    """GLS fit over the largest set of draws sharing their batch sizes (module docstring)."""
    curves = [curve(d) for d in draws]
    sizes, _ = Counter(c[0] for c in curves).most_common(1)[0]
    y = np.array([v for s, v in curves if s == sizes])
    m, K = y.shape
    X = np.column_stack([np.ones(K), noise_coefficient(np.array(sizes), draws[0].n)])
    ybar = y.mean(0)
    q = K - 2
    W = None
    if q > 0 and m > K:
        S = np.cov(y, rowvar=False, ddof=1) / m
        if np.linalg.matrix_rank(S) == K:
            W = np.linalg.inv(S)
    if W is None:  # not testable: ordinary least squares on the mean curve
        beta = np.linalg.lstsq(X, ybar, rcond=None)[0]
        p = math.nan
    else:
        beta = np.linalg.solve(X.T @ W @ X, X.T @ W @ ybar)
        r = ybar - X @ beta
        t2 = float(r @ W @ r)
        p = float(_st.f.sf((m - q) / (q * (m - 1)) * t2, q, m - q))
    g2, trace = float(beta[0]), float(beta[1])
    return RegressionFit(g2, trace, trace / g2 if g2 > 0 else math.nan, p, max(q, 0), m, sizes)
