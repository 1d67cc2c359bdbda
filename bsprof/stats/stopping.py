"""When to stop drawing, and how big the next draw is: one rule for B_simple, B_noise and B_pre (pure, no torch).

Stop when the interval is narrow, max(hi − v, v − lo) ≤ rel_error·v (``Estimate.rel_halfwidth``), looked at only
after ``min_draws`` draws and then at the draw counts the spread predicts are needed (``next_look``): "precision";
or when the examples or seconds budget is spent: "examples", "time"; or, after ``min_draws`` draws, when the
measurement has taken its share of time (``budget_seconds``: the probe loop's "no longer than the training it
interleaves with"): "budget". (A draw of a whole finite dataset with
per-example norms is exact; the caller knows that and reports "exact".) A measurement cut short by Ctrl-C or SIGTERM
keeps the estimate of its draws so far once it has as many as the rule needs to stop (``kept_from``): "interrupted".

Looking after every draw would stop on a draw whose spread happens to be low, and such intervals cover the truth
less often than they claim (scripts/coverage.py); committing to the predicted count first keeps that selection small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bsprof.results import Estimate, Status

PRECISION, EXAMPLES, TIME, EXACT = "precision", "examples", "time", "exact"  # what stopped a measurement
BUDGET = "budget"  # the measurement took its share of time (after min_draws)
INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM cut the draws short; kept from ``kept_from`` draws on
ZERO_GRADIENT, ZERO_VARIANCE = "zero_gradient", "zero_variance"  # degenerate: no draw can make the interval narrow
NOISELESS = 1e-4  # |tr Σ|/|G|² (examples) below this: the examples' gradients agree (tr Σ ≈ 0 up to rounding;
#                   float32 rounding alone gave up to 9e-6 on identical examples at B = 65,536 — 1e-6 missed it
#                   for 5 of 12 initialisations — and a noise scale of 1e-4 examples is no noise to a batch)
LOOK_STEP = 1.5  # look again only after at least 50% more draws
MAX_PROBE_BATCH = 1 << 16


def next_look(m: int, rel_halfwidth: float, rel_error: float) -> int:
    """When to look at the precision again after ``m`` draws: at the draws it predicts are needed, m·(w/ε)²
    (a half-width w shrinks like 1/√m), at least ``LOOK_STEP``·m and at most 4·m (2·m while w is unknown)."""
    need = m * (rel_halfwidth / rel_error) ** 2 if math.isfinite(rel_halfwidth) else 2 * m
    return max(math.ceil(LOOK_STEP * m), min(math.ceil(need), 4 * m))


@dataclass
class Stopper:
    """The stopping rule of one measurement; ``look`` is the next draw count at which the precision is looked at.

        stop = Stopper(rel_error, min_draws, max_examples, max_seconds)
        while (why := stop(draws, estimate.rel_halfwidth, examples_spent, seconds)) is None: draw again
    """

    rel_error: float
    min_draws: int
    max_examples: float
    max_seconds: float
    budget_seconds: float = math.inf
    look: int = field(default=0)

    def __post_init__(self):
        self.look = self.look or self.min_draws

    def __call__(self, draws: int, rel_halfwidth: float, spent: float, elapsed: float, g2_hi: float = math.inf,
                 ratio: float = math.inf) -> str | None:
        """The reason to stop now (``PRECISION``, ``EXAMPLES``, ``TIME``, after ``min_draws`` ``BUDGET`` when one
        more draw at the mean pace so far would take ``elapsed`` past ``budget_seconds`` and the interval is bounded
        (a budget never turns a measurement into a non-answer), or after ``min_draws`` a degenerate
        problem: ``ZERO_GRADIENT`` when every gradient drawn is exactly zero (``g2_hi`` = 0), ``ZERO_VARIANCE``
        when the examples' gradients agree, |``ratio``| = |tr Σ|/|G|² ≤ ``NOISELESS``), or None. ``TIME`` also
        stops, from the second draw on, before a draw that at the mean pace would end past ``max_seconds``."""
        if draws >= self.min_draws and degenerate(g2_hi, ratio):
            return degenerate(g2_hi, ratio)
        if draws >= self.look:
            if rel_halfwidth <= self.rel_error:
                return PRECISION
            self.look = next_look(draws, rel_halfwidth, self.rel_error)
        if (draws >= self.min_draws and math.isfinite(rel_halfwidth)
                and elapsed * (draws + 1) / draws >= self.budget_seconds):
            return BUDGET  # bounded, and another draw at the mean pace would overrun the budget
        if spent >= self.max_examples:
            return EXAMPLES
        if elapsed >= self.max_seconds or (draws >= 2 and elapsed * (draws + 1) / draws > self.max_seconds):
            return TIME  # spent, or (once two draws give an interval) the next draw would end past it
        return None


def kept_from(min_draws: int) -> int:
    """The fewest draws a measurement cut short (Ctrl-C, SIGTERM) is kept with: ``min_draws``, as the rule needs
    before it may stop on the budget (an interval over fewer covers poorly: ``estimators.ratio_of_means``), and at
    least two (an interval)."""
    return max(min_draws, 2)


def degenerate(g2_hi: float, ratio: float) -> str | None:
    """``ZERO_GRADIENT`` (|G|² and its upper bound exactly 0: a flat loss, frozen or disconnected weights),
    ``ZERO_VARIANCE`` (tr Σ ≈ 0: identical examples; the point estimate |tr Σ|/|G|² ≤ ``NOISELESS``, which a
    real noise scale never hits by chance), or None. The relative width of an interval around 0 never shrinks,
    so without this check the budget would be spent to no avail."""
    if g2_hi == 0:
        return ZERO_GRADIENT
    if abs(ratio) <= NOISELESS:  # (NaN: not degenerate)
        return ZERO_VARIANCE
    return None


def next_batch(est: Estimate | None, B: int, b: int, start_B: int, fixed_B: bool = False, n: int | None = None,
               world: int = 1) -> int:
    """The next draw's big batch: ≈ 2·B_simple (a power of two, at least ``start_B``), a multiple of b·world, at
    most n. The relative variance of one draw's |G|² is ≈ 4·B_simple/B + 2·B_simple²/B² (docs/science.md §2), so
    B ≳ B_simple is efficient; an estimate without a value doubles B. ``fixed_B``/no estimate yet: B stays."""
    if fixed_B or est is None:
        target = B
    elif est.status is not Status.OK:
        target = 2 * B
    else:
        target = max(1 << max(0, math.ceil(math.log2(max(2 * est.value, 1)))), start_B)
    target = min(target, MAX_PROBE_BATCH, n or MAX_PROBE_BATCH)
    unit = b * world  # every rank gets whole small batches
    return max(target // unit * unit, 2 * b if b > 1 and world == 1 else 2, unit)


__all__ = ["Stopper", "next_look", "next_batch", "degenerate", "kept_from", "LOOK_STEP", "MAX_PROBE_BATCH", "PRECISION",
           "EXAMPLES", "TIME", "EXACT", "BUDGET", "INTERRUPTED", "ZERO_GRADIENT", "ZERO_VARIANCE"]
