"""What the probe loop's measurements cost against the training they interleave with.

The loop times every measurement (all its draws, extra scales included) and every training step; ``RunClock``
adds them up, and keeps the training seconds between consecutive measurements. The measurement at step s is
compared with the training it interleaves with: the steps since the previous measurement (for the first one,
the steps until the next). The target is that measuring costs no more than training.

A measurement stopped by precision (``--rel-error`` ε) needs a number of draws ∝ 1/ε² (the interval's half-width
shrinks as 1/√draws), so one that took r times the training between measurements would have fit in it at
ε·√r — the figure the cost note suggests. One stopped by the time budget (``--measure-budget``) at half-width
w > ε would have needed about (w/ε)² times as long to reach ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bsprof.results import plus_minus


@dataclass
class RunClock:
    """Wall seconds spent measuring and training so far, and the training between measurements."""

    choosing: float = 0.0                                     # seconds choosing the probe (auto's trial)
    measuring: float = 0.0
    training: float = 0.0
    measurements: list[float] = field(default_factory=list)   # seconds of each measurement
    between: list[float] = field(default_factory=list)        # training seconds between measurement k and k+1
    _since: float = 0.0

    def trained(self, seconds: float) -> None:
        self.training += seconds
        self._since += seconds

    def measured(self, seconds: float) -> None:
        if self.measurements:
            self.between.append(self._since)
        self._since = 0.0
        self.measuring += seconds
        self.measurements.append(seconds)

    @property
    def since(self) -> float:
        """Training seconds since the last measurement."""
        return self._since

    def to_dict(self) -> dict:
        """For report.json (``Report.timing``)."""
        return {"choosing_s": round(self.choosing, 3), "measuring_s": round(self.measuring, 3),
                "training_s": round(self.training, 3),
                "measurement_s": [round(s, 3) for s in self.measurements],
                "training_between_s": [round(s, 3) for s in self.between]}


def interleaved(timing: dict) -> list[float]:
    """For each measurement, the training seconds it interleaves with: those since the previous measurement, for
    the first one those until the next (NaN when there was no training)."""
    between = timing.get("training_between_s") or []
    n = len(timing.get("measurement_s") or [])
    return [between[k - 1] if k else between[0] for k in range(n)] if between else [math.nan] * n


def share_text(timing: dict) -> str | None:
    """'measurements took 35% of the run (12 s measuring vs 22 s training)'; None without training."""
    m, t = timing.get("measuring_s", 0.0), timing.get("training_s", 0.0)
    if not t > 0:
        return None
    return f"measurements took {m / (m + t):.0%} of the run ({_s(m)} measuring vs {_s(t)} training)"


def precision_text(timing: dict, rows, rel_error: float, min_draws: int = 5) -> str | None:
    """What precision cost in time. Where the stopping rule (``rel_error``) made a measurement cost more than the
    training it interleaves with: by how much, and the ``--rel-error`` at which it would have cost about as much
    (draws ∝ 1/ε²). Where the time budget stopped one short of ``rel_error``: the precision reached, and how long
    ``rel_error`` would have taken. A measurement at the floor of ``min_draws`` draws is said to be that (a looser
    ``rel_error`` would not make it cheaper). None when none of these happened."""
    over, short, floor = None, None, None
    for row, m, t in zip(rows, timing.get("measurement_s") or [], interleaved(timing)):
        if not t > 0:
            continue
        at_floor = getattr(row, "n_draws", min_draws + 1) <= min_draws
        if row.stopped_by == "precision" and m > t and at_floor and (floor is None or m / t > floor[0]):
            floor = (m / t, row.step)
        elif row.stopped_by == "precision" and m > t and (over is None or m / t > over[0]):
            over = (m / t, row.step)
        w = row.b_simple.rel_halfwidth if row.stopped_by == "budget" else math.nan
        if w > rel_error and (short is None or m * (w / rel_error) ** 2 / t > short[0]):
            short = (m * (w / rel_error) ** 2 / t, row.step, w, sum(r.stopped_by == "budget" for r in rows))
    parts = []
    if over is not None:
        ratio, step = over
        looser = rel_error * math.sqrt(ratio)
        fit = (f"--rel-error {looser:.2g} would take about as long as the training (draws ∝ 1/rel_error²)"
               if looser < 1 and f"{looser:.2g}" != f"{rel_error:.2g}"  # (not the setting itself, as printed)
               else "a looser --rel-error or a larger --measure-every would bring it down")
        parts.append(f"reaching ±{rel_error:.0%} at step {over[1]} took {ratio:.1f}× the training time between "
                     f"measurements; {fit}")
    if floor is not None:
        parts.append(f"the minimum of {min_draws} draws at step {floor[1]} took {floor[0]:.1f}× the training time "
                     "between measurements (--min-draws, --measure-every)")
    if short is not None:
        ratio, step, w, n = short
        reached = plus_minus(w) if math.isfinite(w) else "no bounded interval"
        budget = math.ceil(ratio * 10 - 1e-9) / 10 if math.isfinite(ratio) else ratio  # one rounding, up: enough
        parts.append(f"{n} measurement(s) stopped at the time budget (as long as the training between "
                     f"measurements; at step {step} {reached} instead of ±{rel_error:.0%}): reaching "
                     f"±{rel_error:.0%} there would take about {budget:.1f}× the training time "
                     f"(--measure-budget {budget:g}, or 0 to stop by --rel-error alone)"
                     if math.isfinite(ratio) and ratio <= MAX_ADVISED else
                     f"{n} measurement(s) stopped at the time budget with {reached} at step {step}: reaching "
                     f"±{rel_error:.0%} there would take over {MAX_ADVISED:g}× the training time (the interval "
                     "narrows slowly there: |G|² or tr(Σ) is small against its noise), so the wider interval is "
                     "reported as it is"
                     if math.isfinite(ratio) else
                     f"{n} measurement(s) stopped at the time budget with {reached} at step {step}: pass "
                     "--measure-budget 0 to stop by --rel-error alone")
    return "; ".join(parts) or None


MAX_ADVISED = 20.0  # above this many times the training time, a longer budget is not advice worth giving


def _s(seconds: float) -> str:
    """'0.04 s', '3.2 s', '22 s': two significant digits below 0.1 s (a short run's '0.0 s vs 0.0 s' said nothing)."""
    return f"{seconds:.2g} s" if seconds < 0.1 else f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


__all__ = ["RunClock", "interleaved", "precision_text", "share_text"]
