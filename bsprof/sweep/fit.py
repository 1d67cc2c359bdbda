"""Pure fits of a batch-size sweep: the McCandlish trade-off curve and the local (tolerance) critical batch.

Global (McCandlish et al. 2018, arXiv 1812.06162, eqs. 2.11–2.12): with the learning rate tuned per batch, the
steps S and examples E = B·S to reach a fixed loss trade off as (S/S_min − 1)(E/E_min − 1) = 1, i.e.

    S(B) = S_min (1 + B_crit/B),    E(B) = E_min (1 + B/B_crit),    B_crit = E_min/S_min.

Local (Merrill et al. 2025 style): branches from the same weights, each trained on the same number of EXAMPLES at
batch B·2^k; the critical batch is the largest batch, counting up from the smallest, whose final loss is within a
tolerance of the smallest batch's loss. No torch here: numbers in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize as _opt

from bsprof.results import Estimate, Status, json_clean


def fit_critical_batch(batches, steps) -> tuple[float, float]:
    """(S_min, B_crit) of S(B) = S_min(1 + B_crit/B) (McCandlish eq. 2.11), least squares in ln S.

    Fitted in (ln S_min, ln B_crit) within B_crit ∈ [10⁻³·min B, 10⁴·max B], S_min ∈ (10⁻⁶·min S, max S], so a
    sweep where S falls as fast as 1/B (B_crit beyond the tested batches) ends at a bound instead of failing."""
    b, s = np.asarray(batches, float), np.asarray(steps, float)
    lo = [math.log(s.min()) - 6 * math.log(10), math.log(b.min()) - 3 * math.log(10)]
    hi = [math.log(s.max()), math.log(b.max()) + 4 * math.log(10)]
    x0 = [min(max(math.log(s.min()) - 0.1, lo[0]), hi[0]), math.log(float(np.median(b)))]
    p, _ = _opt.curve_fit(lambda bb, ls, lb: ls + np.log1p(np.exp(lb) / bb), b, np.log(s), p0=x0, bounds=(lo, hi))
    return float(math.exp(p[0])), float(math.exp(p[1]))


@dataclass(frozen=True)
class CriticalFit:
    """S_min, B_crit and E_min = S_min·B_crit (eq. 2.12) with percentile-bootstrap intervals.

    ``resampled``: "points" (the (B, S) pairs, with replacement) or "seeds" (each batch's seeds, then their
    median); ``n_boot``: bootstrap fits that succeeded."""

    s_min: Estimate
    b_crit: Estimate
    e_min: Estimate
    n_points: int
    n_boot: int
    resampled: str
    confidence: float

    def to_dict(self) -> dict:
        return json_clean({k: getattr(self, k) for k in self.__dataclass_fields__})

    def steps_at(self, batch: float) -> float:
        return self.s_min.value * (1 + self.b_crit.value / batch)


def _median_steps(steps_by_seed: Sequence[Sequence[float]]) -> np.ndarray:
    return np.array([float(np.median(s)) for s in steps_by_seed])


def _try_fit(b, s) -> tuple[float, float] | None:
    if len(set(np.asarray(b).tolist())) < 2:
        return None
    try:
        return fit_critical_batch(b, s)
    except (RuntimeError, ValueError, _opt.OptimizeWarning):
        return None


def bootstrap_fit(batches: Sequence[float], steps_by_seed: Sequence[Sequence[float]], confidence: float = 0.9,
                  n_boot: int = 1000, seed: int = 0) -> CriticalFit:
    """Fit S(B) = S_min(1 + B_crit/B) to the median steps per batch, with a percentile bootstrap interval.

    ``steps_by_seed[i]``: the finite steps-to-target of batch ``batches[i]``, one per seed. With one seed per
    batch the (B, S) points are resampled with replacement; with several, each batch's seeds are (the batch
    sizes stay fixed). ``n_boot`` = 0: no interval (lo = hi = NaN, status OK).
    """
    b = np.asarray(batches, float)
    s = _median_steps(steps_by_seed)
    s_min, b_crit = fit_critical_batch(b, s)
    by_seeds = max(len(x) for x in steps_by_seed) > 1
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        if by_seeds:
            sb = [float(np.median(rng.choice(np.asarray(x, float), len(x)))) for x in steps_by_seed]
            got = _try_fit(b, sb)
        else:
            idx = rng.integers(0, len(b), len(b))
            got = _try_fit(b[idx], s[idx])
        if got is not None:
            draws.append(got)
    q = ((1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100)
    if draws:
        d = np.array(draws)
        e = d[:, 0] * d[:, 1]
        (slo, shi), (blo, bhi), (elo, ehi) = (np.percentile(x, q) for x in (d[:, 0], d[:, 1], e))
    else:
        slo = shi = blo = bhi = elo = ehi = math.nan
    return CriticalFit(Estimate(s_min, slo, shi), Estimate(b_crit, blo, bhi),
                       Estimate(s_min * b_crit, elo, ehi), len(b), len(draws), "seeds" if by_seeds else "points",
                       confidence)


def tolerance_limit(reference: float, tolerance: float, mode: str = "rel") -> float:
    """The largest loss that still passes: reference·(1 + tolerance) ("rel") or reference + tolerance ("abs")."""
    return reference + (tolerance * abs(reference) if mode == "rel" else tolerance)


def local_critical(batches: Sequence[int], losses: Sequence[float], tolerance: float,
                   mode: str = "rel") -> tuple[Estimate, list[bool]]:
    """The local critical batch: the largest B, counting up from the smallest, whose loss ≤ ``tolerance_limit``
    of the smallest batch's loss; bracketed by [that B, the first failing B].

    Returns (Estimate(value = lo = largest passing B, hi = first failing B), passed per batch). Status
    LOWER_BOUND (value NaN, hi ∞) when every batch passes; UNDETERMINED when the smallest batch's loss is not
    finite. ``batches`` must be increasing.
    """
    if not losses or not math.isfinite(losses[0]):
        return Estimate.none(), [False] * len(losses)
    limit = tolerance_limit(losses[0], tolerance, mode)
    passed = [math.isfinite(x) and x <= limit for x in losses]
    k = passed.index(False) if False in passed else len(passed)
    if k == len(passed):
        return Estimate(math.nan, batches[-1], math.inf, Status.LOWER_BOUND), passed
    return Estimate(batches[k - 1], batches[k - 1], batches[k]), passed


def lr_factor(rule: str | None, batch: float, base_batch: float, b_noise: float | None = None) -> float:
    """The learning-rate multiplier at batch B relative to the base batch (``gate.policy.target_lr``):
    sqrt (Adam family) √(B/B₀), or √(min(B, B_n)/min(B₀, B_n)) — flat above the noise scale — when B_n is known;
    linear (SGD) B/B₀, or (1 + B_n/B₀)/(1 + B_n/B) — linear up to the noise scale, saturating beyond (McCandlish
    eq. 2.6) — when B_n is known; none/unknown: 1."""
    from bsprof.gate.policy import target_lr

    if rule not in ("linear", "sqrt"):
        return 1.0
    return target_lr(rule, 1.0, base_batch, batch, b_noise)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error s/√n (NaN error for n < 2)."""
    x = np.asarray(values, float)
    if len(x) == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


__all__ = ["CriticalFit", "bootstrap_fit", "fit_critical_batch", "local_critical", "lr_factor", "mean_se",
           "tolerance_limit"]
