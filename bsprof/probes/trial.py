"""The timed trial behind ``--method auto``: which exact probe costs less per unit of precision on this model.

When per-example gradients are valid, per-example hooks (b = 1) and micro-batches (b = ``micro_batch``) are both
unbiased, so the cheaper one should measure. ``time_draws`` runs each candidate on the same small draw at the
initial weights (a warm-up, then timed repeats, within a budget of about a second) and ``prefer`` decides.

The rule. A measurement needs a number of draws proportional to the relative variance per draw of its
B_simple estimate, so its cost is (seconds per draw) × (variance per draw). At the same big batch B, a micro-batch
draw is noisier than a per-example one: tr(Σ)_est = (|G_b|² − |G_B|²)/(1/b − 1/B) averages B/b small-batch norms
instead of B (McCandlish App. A.1). But |G|²_est, whose error dominates at the B ≈ 2·B_simple that the sampling
aims for (science.md §2, precision budget), is nearly the same for both. Monte-Carlo with Gaussian per-example
gradients (d = 16–256, b = 8, B = 2·B_simple) puts the variance ratio micro-batch/per-example at 1.0–1.5 for
B_simple ≥ 16, and up to ~3 when B_simple ≲ b (B cannot go below 2b there); heavy-tailed gradients gave
0.9–1.4. So micro-batches are preferred only when a draw is more than ``MICROBATCH_PRECISION_COST`` = 1.5 times
faster: then they win across the usual range, and where the factor is closer the per-example draw, which also
gives per-layer and training-step estimates, is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from torch import nn

from bsprof.probes.base import LossFn, Probe

MICROBATCH_PRECISION_COST = 1.5  # variance per draw, micro-batches over per-example norms, at B ≈ 2·B_simple
TRIAL_SECONDS = 1.0              # the timed runs' budget, all candidates (their warm-ups come on top)
REPEATS = 3                      # timed repeats at most, per candidate


def _run(probe: Probe, model: nn.Module, loss_fn: LossFn, chunks: list, total: int,
         clock: Callable[[], float]) -> float:
    t0 = clock()
    if probe.whole_draw is not None:
        probe.whole_draw(model, loss_fn, iter(chunks), set(), total)
    else:
        for batch, count in chunks:
            probe.chunk(model, loss_fn, batch, count)
    return clock() - t0


def time_draws(candidates: dict[str, tuple[Probe, list]], model: nn.Module, loss_fn: LossFn, total: int,
               budget: float = TRIAL_SECONDS, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Seconds for one draw of ``total`` examples by each candidate {name: (probe, chunks)}: a warm-up of each,
    then timed runs taken in turn (a, b, a, b, …, so that a burst of load on a shared machine falls on both), the
    fastest of up to ``REPEATS`` each, stopping once ``budget`` seconds are spent after a whole round. Warm-ups that
    alone spend the budget are the only runs. Weights and ``.grad`` are left as they were (probes do not step or
    keep gradients)."""
    warm = {name: _run(probe, model, loss_fn, chunks, total, clock) for name, (probe, chunks) in candidates.items()}
    if sum(warm.values()) >= budget:
        return warm
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(REPEATS):
        for name, (probe, chunks) in candidates.items():
            seconds[name].append(_run(probe, model, loss_fn, chunks, total, clock))
        if sum(map(sum, seconds.values())) >= budget:
            break
    return {name: min(s) for name, s in seconds.items()}


def prefer(seconds: dict[str, float], fallbacks: dict[str, str] | None = None,
           micro_batch: int = 8, examples: int = 0) -> tuple[str, str]:
    """('hooks' or 'microbatch', why) from the trial's seconds per draw (the module's rule)."""
    hooks, micro = seconds["hooks"], seconds["microbatch"]
    slow = f", {len(fallbacks)} parameter(s) by torch.func" if fallbacks else ""
    timed = (f"a timed draw of {examples} examples took {hooks * 1e3:.0f} ms by per-example hooks{slow} and "
             f"{micro * 1e3:.0f} ms by micro-batches of {micro_batch}")
    speedup = hooks / micro if micro > 0 else math.inf
    if speedup > MICROBATCH_PRECISION_COST:
        return "microbatch", (f"{timed}: micro-batches are {speedup:.1f}× faster, more than the "
                              f"{MICROBATCH_PRECISION_COST:g}× their noisier draws cost, so micro-batches")
    return "hooks", (f"{timed}: micro-batches are not more than {MICROBATCH_PRECISION_COST:g}× faster (what their "
                     "noisier draws cost), so per-example hooks")


__all__ = ["MICROBATCH_PRECISION_COST", "prefer", "time_draws"]
