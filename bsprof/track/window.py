"""Estimates over the recent steps of a run: a window of draws (with an interval) and an EMA view for logging.

The noise scale moves as training goes on (it often grows 10× over a run), so the tracker's answer is over
the last N steps. Each step is one nested pair at that step's weights (``bsprof.stats.draw.Draw``), giving the
unbiased |G|²_est and tr(Σ)_est (``bsprof.stats.estimators.unbiased_pair``). Over a window they combine as a
ratio of means, never a mean of ratios (docs/science.md §2):

    B_simple = Σ_s w_s tr(Σ)_est,s / Σ_s w_s |G|²_est,s,     w_s = B_s,   with a Fieller-type interval

(``bsprof.stats.estimators.noise_scale``). The weights drift across the window, so the result describes the
window's average weights; a shorter window follows the run more closely and has a wider interval.

The EMA view is the same ratio with exponential weights: B_simple_ema = EMA(tr(Σ)_est) / EMA(|G|²_est), each EMA
bias-corrected as Adam's moments are (the correction cancels in the ratio). An EMA of per-step ratios would be
biased high; this is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bsprof.results import Estimate, Measurement, Status, finite
from bsprof.stats.draw import Draw
from bsprof.stats.estimators import NoiseScale, noise_scale, unbiased_pair


def recent(draws: Sequence[Draw], window: int | None) -> list[Draw]:
    """The last ``window`` draws (all of them for None)."""
    if window is not None and window < 1:
        raise ValueError(f"window must be at least 1 step (got {window})")
    return list(draws[-window:] if window else draws)


def windowed(draws: Sequence[Draw], window: int | None = None, confidence: float = 0.9) -> NoiseScale:
    """``noise_scale`` over the last ``window`` draws (module docstring); a window of one step is at one set of
    weights, so its draw, when exact (the whole population), is the value with a point interval."""
    picked = recent(draws, window)
    return noise_scale(picked, confidence, same_weights=len(picked) == 1)


def b_simple_of(ns: NoiseScale) -> Estimate:
    """The B_simple of a ``NoiseScale`` as an ``Estimate`` (LOWER_BOUND: value NaN, hi = ∞)."""
    return Estimate(ns.b_simple, ns.b_simple_lo, ns.b_simple_hi, ns.status)


def g2_of(ns: NoiseScale) -> Estimate:
    """|G|² with its t-interval; UNDETERMINED while the interval is not known (one draw)."""
    status = Status.OK if finite(ns.g2_lo) and finite(ns.g2_hi) else Status.UNDETERMINED
    return Estimate(ns.g2, ns.g2_lo, ns.g2_hi, status)


def measurement(draws: Sequence[Draw], *, step: int, examples_seen: int = 0, window: int | None = None,
                method: str = "track", confidence: float = 0.9) -> Measurement:
    """One report row from the last ``window`` draws; ``step`` and ``examples_seen`` are those of the window's
    last step (the weights the window ends at)."""
    last = recent(draws, window)
    ns = noise_scale(last, confidence, same_weights=len(last) == 1)
    return Measurement(step=step, loss=ns.loss, b_simple=b_simple_of(ns), g2=g2_of(ns), trace_sigma=ns.trace_sigma,
                       examples_seen=examples_seen, method=method, n_draws=ns.n_draws, examples=ns.examples,
                       b=last[-1].b, B=last[-1].B, stopped_by="window",
                       diversity_bound=float(ns.gradient_diversity_bound))


@dataclass(frozen=True)
class EmaView:
    """EMA(|G|²_est), EMA(tr(Σ)_est) and their ratio B_simple (NaN while EMA(|G|²) ≤ 0). No interval: for logs."""

    g2: float
    trace_sigma: float
    steps: int

    @property
    def b_simple(self) -> float:
        return self.trace_sigma / self.g2 if self.g2 > 0 else math.nan


class Ema:
    """Running bias-corrected EMAs of the two unbiased estimates: m ← β·m + (1 − β)·x, m̂ = m/(1 − βᵗ)."""

    def __init__(self, beta: float = 0.99):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1) (got {beta})")
        self.beta, self.g2, self.trace, self.t = beta, 0.0, 0.0, 0

    def update(self, draw: Draw) -> EmaView:
        g2, trace = unbiased_pair(draw.small_sq_total, draw.big_sq_total, draw.b, draw.B, draw.n)
        self.t += 1
        self.g2 = self.beta * self.g2 + (1 - self.beta) * float(g2)
        self.trace = self.beta * self.trace + (1 - self.beta) * float(trace)
        return self.view

    @property
    def view(self) -> EmaView:
        if self.t == 0:
            return EmaView(math.nan, math.nan, 0)
        c = 1.0 - self.beta ** self.t
        return EmaView(self.g2 / c, self.trace / c, self.t)
