"""From branch rows to per-batch results and the critical batch (pure: rows in, typed results out)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bsprof.results import Estimate
from bsprof.sweep import fit
from bsprof.sweep.result import BatchSummary, Branch


def _by(rows: Sequence[Branch], batch: int) -> dict[float, list[Branch]]:
    out: dict[float, list[Branch]] = {}
    for r in rows:
        if r.batch == batch:
            out.setdefault(r.lr_multiplier, []).append(r)
    return out


def _batches(rows: Sequence[Branch]) -> list[int]:
    return sorted({r.batch for r in rows})


def complete_seeds(rows: Sequence[Branch]) -> tuple[list[Branch], str | None]:
    """The rows of the seeds that ran every (batch, lr) any seed ran, and a note naming the others (a sweep stopped
    part-way through a seed: averaged in, it gave some batches fewer seeds than others, and a critical batch per
    seed from one batch; a trial's finding). Unchanged, with no note, when no seed is complete."""
    grid = {(r.batch, r.lr_multiplier) for r in rows}
    ran: dict[int, set] = {}
    for r in rows:
        ran.setdefault(r.seed, set()).add((r.batch, r.lr_multiplier))
    done = {seed for seed, points in ran.items() if points == grid}
    if not done or len(done) == len(ran):
        return list(rows), None
    left = sorted(set(ran) - done)
    said = ", ".join(f"seed {seed} ran {len(ran[seed])} of {len(grid)}" for seed in left)
    return ([r for r in rows if r.seed in done],
            f"{said} batch and lr points before the sweep was stopped: left out of the per-batch results and the "
            f"critical batch, which are over the {len(done)} seed(s) that ran them all")


def local_batches(rows: Sequence[Branch]) -> list[BatchSummary]:
    """Per batch: the grid point with the lowest mean final loss over seeds (diverged = ∞)."""
    out = []
    for b in _batches(rows):
        best = None
        for m, rs in _by(rows, b).items():
            losses = [r.loss for r in rs]
            mean = float(np.mean(losses)) if all(math.isfinite(x) for x in losses) else math.inf
            if best is None or mean < best[0]:
                best = (mean, m, rs)
        mean, m, rs = best
        se = rs[0].loss_se if len(rs) == 1 else fit.mean_se([r.loss for r in rs])[1]
        out.append(BatchSummary(b, rs[0].lr, m, mean, se, float(np.mean([r.steps for r in rs])),
                                float(np.mean([r.examples for r in rs]))))
    return out


def local_critical(summaries: list[BatchSummary], tolerance: float, mode: str) -> tuple[Estimate, list[BatchSummary]]:
    import dataclasses

    est, passed = fit.local_critical([s.batch for s in summaries], [s.loss for s in summaries], tolerance, mode)
    return est, [dataclasses.replace(s, passed=p) for s, p in zip(summaries, passed)]


def critical_by_seed(rows: Sequence[Branch], tolerance: float, mode: str) -> list[float]:
    """The local critical batch of each seed alone (its best loss over the grid per batch): the largest passing B."""
    out = []
    for seed in sorted({r.seed for r in rows}):
        mine = [r for r in rows if r.seed == seed]
        batches = _batches(mine)
        losses = [min(r.loss for r in mine if r.batch == b) for b in batches]
        est, _ = fit.local_critical(batches, losses, tolerance, mode)
        out.append(est.lo)
    return out


def global_batches(rows: Sequence[Branch]) -> list[BatchSummary]:
    """Per batch: the grid point with the fewest median steps-to-target over seeds (∞: not reached); among grid
    points that did not reach it, the lowest median final loss (the first lr of the grid was shown as best, with a
    higher loss than another's: a trial's partial sweep)."""
    out = []
    for b in _batches(rows):
        best = None
        for m, rs in _by(rows, b).items():
            med = float(np.median([r.steps_to_target for r in rs]))
            loss = float(np.median([r.loss if math.isfinite(r.loss) else math.inf for r in rs]))
            if best is None or (med, loss) < best[0]:
                best = ((med, loss), m, rs)
        (med, _), m, rs = best
        reached = sum(math.isfinite(r.steps_to_target) for r in rs)
        mean, se = fit.mean_se([r.loss for r in rs]) if len(rs) > 1 else (rs[0].loss, rs[0].loss_se)
        out.append(BatchSummary(b, rs[0].lr, m, mean, se, med, med * b, None, reached, len(rs)))
    return out


def global_fit(rows: Sequence[Branch], summaries: list[BatchSummary], confidence: float, n_boot: int,
               seed: int) -> fit.CriticalFit | None:
    """S(B) = S_min(1 + B_crit/B) over the batches that reached the target (at least 3), bootstrapped."""
    ok = [s for s in summaries if math.isfinite(s.steps)]
    if len(ok) < 3:
        return None
    per_seed = []
    for s in ok:
        steps = [r.steps_to_target for r in rows if r.batch == s.batch and r.lr_multiplier == s.lr_multiplier]
        per_seed.append([x for x in steps if math.isfinite(x)])
    try:
        return fit.bootstrap_fit([s.batch for s in ok], per_seed, confidence, n_boot, seed)
    except (RuntimeError, ValueError):
        return None


def grid_edges(summaries: list[BatchSummary], grid: Sequence[float]) -> list[int]:
    """Batches whose best learning rate is at an end of a grid of 3 or more: the optimum may lie outside it. On a
    grid of 2 every best lr is at an end; there, all batches at the same end (every batch took ×2 of [1, 2]) are."""
    ran = [s for s in summaries if math.isfinite(s.loss)]
    if len(grid) == 2 and len(ran) >= 2 and len({s.lr_multiplier for s in ran}) == 1:
        return [s.batch for s in ran]
    if len(grid) < 3:
        return []
    lo, hi = min(grid), max(grid)
    return [s.batch for s in ran if s.lr_multiplier in (lo, hi)]


def schedule_verdict(summaries: Sequence[BatchSummary], runs: Sequence[Branch], source: str) -> dict:
    """The schedule trained as written beside the constant batches of the same sweep (issue 14's test): it wins if
    it reaches the target in fewer steps than every constant batch that needs no more examples than it (medians
    over seeds; a constant that never reached the target does not count against it)."""
    reached = [r for r in runs if r.steps_to_target is not None and math.isfinite(r.steps_to_target)]
    out = {"source": source, "runs": [r.to_dict() for r in runs], "reached": len(reached), "seeds": len(runs)}
    if len(reached) * 2 <= len(runs) or not reached:
        return out | {"steps": math.inf, "examples": math.inf, "beats_constants": False,
                      "text": f"the schedule reached the target in {len(reached)} of {len(runs)} seed(s)"}
    steps = float(np.median([r.steps_to_target for r in reached]))
    examples = float(np.median([r.examples for r in reached]))
    rivals = [s for s in summaries if math.isfinite(s.steps) and s.examples <= examples]
    faster = [s for s in rivals if s.steps <= steps]
    lrs = sorted({round(r.lr, 6) for r in reached})
    text = (f"the schedule as written: {steps:,.0f} steps, {examples:,.0f} examples (median of {len(reached)} "
            f"seed(s); its lr at the end {', '.join(f'{x:.4g}' for x in lrs)}); ")
    if not rivals:
        text += "every constant batch that reached the target used more examples"
    elif faster:
        best = min(faster, key=lambda s: (s.steps, s.examples))
        text += (f"no faster than constant batch {best.batch} at its best lr of the grid ({best.lr:.4g}): "
                 f"{best.steps:,.0f} steps with {best.examples:,.0f} examples"
                 + (f" (also no faster: {', '.join(str(s.batch) for s in faster if s is not best)})"
                    if len(faster) > 1 else "")
                 + "; train at that constant batch, or compare the learning rates")
    else:
        text += ("fewer steps than every constant batch using no more examples (" + ", ".join(
                 f"{s.batch}: {s.steps:,.0f}" for s in rivals) + " steps)")
    return out | {"steps": steps, "examples": examples, "beats_constants": not faster,
                  "rivals": [s.batch for s in rivals], "faster_constants": [s.batch for s in faster], "text": text}
