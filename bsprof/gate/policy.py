"""The CI gate: is a batch size (and learning rate) within policy, given a measured noise scale?

Pure policy: numbers and a Report in, a frozen ``Verdict`` out. No files, no terminal.

The trade-off (McCandlish et al. 2018, arXiv 1812.06162, eq. 2.11–2.12) at noise scale B_n:

    extra steps     S/S_min − 1 = B_n / B          (a batch too small wastes wall-clock time)
    extra examples  E/E_min − 1 = B / B_n          (a batch too large wastes compute)

A batch passes while both are at most a factor F (default 4), i.e. B_n/F ≤ B ≤ F·B_n; ``max_extra_steps`` and
``max_extra_compute`` set the two sides separately. B_n is estimated by B_simple = tr(Σ)/|G|² (eq. 2.9).

Intervals. The measurement is an interval [lo, hi] on B_n. A check FAILS only if the batch violates the policy
even at the most favourable end of the interval (B/hi > X for "too large", lo/B > X for "too small"), so
measurement noise alone can never raise a false alarm. When the estimate or part of the interval violates the
policy but the favourable end does not, the check passes with a warning saying so. A lower bound (B_n > lo,
hi = ∞) can still prove a batch too small; nothing else can be judged from it.

Initial weights. The noise scale grows as the loss falls (often 10× over a run), so a measurement made only at the
initial weights (step 0, no training step before it) is a lower bound on the noise scale of the run: it can prove a
batch too small (B_n only grows, and the batch stays too small), never too large (that is cannot_judge).

A probe's path. The report's critical batch is the path average over the losses the probe (or the log) went through.
A training that goes on to lower losses has a larger one, so "too large" on a path along which the noise scale was
still growing (grew ``GROWING``× or more) holds for a training that ends where the path ends, not beyond: it passes
with a warning that says so, unless asked at one loss the path reached (``--at-loss``). "Too small" stands: a larger
noise scale later leaves the batch too small.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field

import numpy as np

from bsprof.output.report import Report
from bsprof.results import (
    Estimate,
    Measurement,
    Status,
    Summary,
    finite,
    is_adam_family,
    json_clean,
    measured,
    number,
    optimizer_family,
    optimizer_name,
)


class Outcome(str, enum.Enum):
    """A check's answer; the CLI exits 0, 1 or 2 for these."""

    PASS = "pass"
    FAIL = "fail"
    CANNOT_JUDGE = "cannot_judge"

    def __str__(self) -> str:
        return self.value


PASS, FAIL, CANNOT_JUDGE = Outcome.PASS, Outcome.FAIL, Outcome.CANNOT_JUDGE
EXIT_CODES = {PASS: 0, FAIL: 1, CANNOT_JUDGE: 2}


_fmt = number


def _batch(B: float) -> str:
    """A batch size as given: a whole number in full with separators (1,000,000, not 1e+06), else ``number``."""
    return f"{int(B):,}" if float(B).is_integer() else _fmt(B)


# -- the measured figure -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reading(Estimate):
    """B_n at one point of a run (an ``Estimate``: hi = ∞ for a lower bound), and where it was read."""

    unit: str = "examples"
    where: str = "summary"
    loss: float | None = None
    step: int | None = None
    eps_max: float | None = None                 # ε_max = |G|²/(GᵀHG), when the report measured it
    b_noise: Estimate | None = None              # Hessian-aware B_noise, when measured
    name: str = "B_simple"                       # what the value is: B_simple, or B_crit (the report's headline)
    from_log: bool = False                       # read from a tracker's JSONL log (windows of training steps)
    model_range: tuple[float, float] | None = None  # (lower, upper) end factors the interval was widened by, as the
                                                 # headline's (``headline.MODEL_RANGE``); None: sampling error only
    quantity: str = "b_simple"                   # the measured noise scale it is read from (``plan.NOISES``) ...
    factor: float = 1.0                          # ... and the factor it is multiplied by (``plan.calibration``), as
                                                 # schedule JSON's noise_followed and noise_factor
    initial: bool = False                        # every measurement it is read from is at the initial weights
                                                 # (``at_initial_weights``): it can show a batch too small only
    growth: float | None = None                  # the noise scale's growth along the path it was judged on (at its
                                                 # lowest loss over its highest, ``path_growth``); None: at one loss
    path: tuple[float, float] | None = None      # that path's (highest, lowest) loss
    one_point: bool = False                      # judged at one point of the run, not asked (``--at-loss``): how
                                                 # the noise scale grows after it is unknown

    def brief(self) -> str:
        """``describe`` without where the value was read (the verdict's first line says it)."""
        return self.describe().split(" (", 1)[0] if self.status is Status.OK else self.describe()

    def describe(self) -> str:
        if self.status is Status.LOWER_BOUND:
            return f"{self.name} > {_fmt(self.lo)} {self.unit} (a lower bound, {self.where})"
        if self.status is not Status.OK:
            return f"{self.name} undetermined ({self.where})"
        return f"{self.name} = {_fmt(self.value)} [{_fmt(self.lo)}, {_fmt(self.hi)}] {self.unit} ({self.where})"

    def to_dict(self) -> dict:
        d = {**super().to_dict(), "name": self.name, "unit": self.unit, "where": self.where, "loss": self.loss,
             "step": self.step, "eps_max": self.eps_max, "rel_halfwidth": self.rel_halfwidth,
             "model_range": self.model_range, "quantity": self.quantity, "factor": self.factor,
             "initial": self.initial, "growth": self.growth, "path": self.path, "one_point": self.one_point}
        if self.b_noise is not None:
            d.update(self.b_noise.to_row("b_noise"))
            del d["b_noise_status"]
        return json_clean(d)


def reading(row: Measurement | None, summary: Summary | None, unit: str, where: str) -> Reading:
    """The gate's view of a measurement: a usable interval (ends clamped around the value), ε_max and B_noise."""
    est = summary.b_simple if summary is not None else row.b_simple if row is not None else Estimate.none()
    hess = row.hessian if row is not None else None
    eps = hess.eps_max.value if hess is not None else None
    bn = row.b_noise if row is not None else None
    bn = Estimate(bn.value, _low_end(bn.lo, bn.value), bn.hi if finite(bn.hi) else bn.value) \
        if bn is not None and finite(bn.value) and bn.value > 0 else None
    common = {"unit": unit, "where": where, "loss": row.loss if row else None, "step": row.step if row else None,
              "eps_max": eps if finite(eps) and eps > 0 else None, "b_noise": bn}
    value, lo, hi = est.value, est.lo, est.hi
    if est.status is Status.OK and finite(value) and value > 0:
        lo = _low_end(lo, value)
        hi = hi if finite(hi) and hi >= value else value
        return Reading(float(value), float(lo), float(hi), Status.OK, **common)
    if est.status in (Status.OK, Status.LOWER_BOUND) and finite(lo) and lo > 0:
        return Reading(math.nan, float(lo), math.inf, Status.LOWER_BOUND, **common)
    return Reading(math.nan, math.nan, math.nan, Status.UNDETERMINED, **common)


def _low_end(lo: float, value: float) -> float:
    """An interval's lower end for the gate: as measured, 0 where it reaches 0 (an unresolved estimate: only its upper
    end bounds it, so no batch is provably too small), the value where it is missing or above it."""
    if not finite(lo) or lo > value:
        return value
    return max(float(lo), 0.0)


def _factor(report: Report, at_loss: float | None) -> float:
    """The factor ``noise_at`` applied to the measured noise scale (``plan.calibration``; 1 under plain SGD)."""
    from bsprof.schedule.plan import calibration, measured_as

    if at_loss is not None:
        return calibration(optimizer_name(report.config), _headline_column(report)[1])
    s = report.summary if report.measurements else None
    quantity = s.critical_batch_quantity if s is not None and s.critical_batch_quantity else "b_simple"
    return calibration(optimizer_name(report.config), measured_as(quantity, report.measurements))


def _headline_column(report: Report) -> tuple[str, str]:
    """(the rows' column, the quantity it holds) that the headline follows (``Summary.critical_batch_quantity``),
    for ``--at-loss`` to read as the headline reads (a trial's finding: it read the fixed-weight B_simple, × 1,
    while the headline and the schedule followed 0.74 × the training-step windows); the fixed-weight B_simple
    where the report names no headline quantity or no row holds it determined. A tracker log's windows are its
    ``b_simple`` column."""
    from bsprof.schedule.plan import NOISES, measured_as, noise_of

    s = report.summary if report.measurements else None
    q = s.critical_batch_quantity if s is not None and s.critical_batch_quantity in NOISES else "b_simple"
    col = "b_simple" if measured_as("b_simple", report.measurements) == q else q
    if not any((e := noise_of(r, col)) is not None and e.ok and e.value > 0 and finite(r.loss)
               for r in report.measurements):
        col = "b_simple"
    return col, measured_as(col, report.measurements)


def noise_at(report: Report, at_loss: float | None = None) -> Reading:
    """``_noise_at``, marked when the report is a tracker's log (its fixes differ: --window, not a probe) and when
    it was measured at the initial weights only (``at_initial_weights``)."""
    r = dataclasses.replace(_noise_at(report, at_loss), initial=at_initial_weights(report))
    if at_loss is None:   # the headline's quantity, or the latest measurement's B_simple where it judges
        r = dataclasses.replace(r, **path_growth(report, _headline_column(report)[0] if r.name == "B_crit" else
                                                 "b_simple"))
    return dataclasses.replace(r, from_log=True) if report.spec.get("tracker_log") else r


# A flat noise scale measured twice to ±20% (--rel-error's default) shows a growth of at most 1.2/0.8 = 1.5
GROWING = 1.5
# Paths of a baseline and a report ending at losses further apart than this: a note (the headline averages its path)
PATH_ENDS = 1.5


def path_growth(report: Report, col: str) -> dict:
    """{"growth": the value at the lowest loss over that at the highest, "path": (highest, lowest) loss} of the noise
    scale ``col`` over the rows the headline's path runs through (``plan.usable_rows``: B_simple ok, finite loss);
    {"one_point": True} with fewer than two losses."""
    from bsprof.schedule.plan import noise_of

    rows = sorted(((r.loss, e.value) for r in report.measurements if r.b_simple.ok and finite(r.loss)
                   and (e := noise_of(r, col)) is not None and e.ok and finite(e.value) and e.value > 0))
    if len(rows) < 2 or not rows[0][0] < rows[-1][0]:
        return {"one_point": True}
    return {"growth": rows[0][1] / rows[-1][1], "path": (rows[-1][0], rows[0][0])}


def at_initial_weights(report: Report) -> bool:
    """Whether every measurement of ``report`` was made at the initial weights: at step 0 (no training step before
    it, ``Measurement.step``) of a probe run that did not load a checkpoint (``config.checkpoint``), not a tracker
    log (whose rows are windows over training steps). The noise scale only grows from there as the loss falls."""
    rows = measured(report.measurements)
    if not rows or report.spec.get("tracker_log") or report.config.get("checkpoint"):
        return False
    return all(r.step == 0 for r in rows)


def _noise_at(report: Report, at_loss: float | None = None) -> Reading:
    """The report's headline critical batch (``Summary.critical_batch``: the path average of the noise scale that
    ``bsprof schedule`` follows, so that check and schedule judge by one number), else the noise scale at the
    latest measurement; or B_simple interpolated at ``at_loss``.

    Interpolation is linear in log B_simple (and log of each interval end) against the loss, between the
    measurements with status ok that bracket ``at_loss``. Raises ValueError outside the measured losses:
    the noise scale grows as the loss falls (often 10×), so extrapolating is not a judgement.
    """
    if at_loss is None:
        s = report.summary
        where = "summary" + (f", step {s.step}" if s.step is not None else "")
        last = (measured(report.measurements) or report.measurements or [None])[-1]
        from bsprof.schedule.plan import calibration, measured_as

        base = dataclasses.replace(reading(last, s, report.unit, where),
                                   quantity=measured_as("b_simple", measured(report.measurements)))
        cb = s.critical_batch
        if cb is not None and cb.status is Status.OK and finite(cb.value) and cb.value > 0:
            from bsprof.schedule.headline import model_range

            name, quantity = optimizer_name(report.config), s.critical_batch_quantity or "b_simple"

            lo = _low_end(cb.lo, cb.value)
            hi = cb.hi if finite(cb.hi) and cb.hi >= cb.value else cb.value
            return dataclasses.replace(base, value=float(cb.value), lo=float(lo), hi=float(hi), status=Status.OK,
                                       name="B_crit", where="the report's critical batch: "
                                       + (s.critical_batch_reason or s.critical_batch_quantity or "").split(";")[0],
                                       model_range=model_range(name, quantity), quantity=quantity,
                                       factor=calibration(name, measured_as(quantity, report.measurements)))
        return _as_headline(base, optimizer_name(report.config))
    return _interpolated(report, at_loss)


def _as_headline(r: Reading, optimizer: str | None) -> Reading:
    """The latest measurement read as the headline reads a point: × the factor for the optimizer family
    (``plan.calibration``) and the interval widened by the model range for its quantity (``headline.MODEL_RANGE``;
    under plain SGD the fixed-weight B_simple's lower end ÷4), so a batch fails "even at the low end" only of what
    the sweeps allow (a trial's finding: FAIL at 64 against a raw 502 [502, 502], which the range puts at ≥ 126)."""
    from bsprof.schedule.headline import model_range
    from bsprof.schedule.plan import calibration

    if r.status is Status.UNDETERMINED or r.quantity is None:
        return r
    k, (down, up) = calibration(optimizer, r.quantity), model_range(optimizer, r.quantity)
    if (k, down, up) == (1, 1, 1):
        return r
    return dataclasses.replace(r, value=k * r.value, lo=k * r.lo * down, hi=k * r.hi * up, model_range=(down, up),
                               factor=k, name=r.name if k == 1 else f"{k:g} × {r.name}")


def _interp_log(x: float, xs: np.ndarray, ys: list[float]) -> float:
    """y at x, log y linear in x between the (sorted) xs that bracket it; 0 if either bracketing y is 0 (an
    unresolved interval's lower end)."""
    ys = np.asarray(ys, float)
    j = int(np.searchsorted(xs, x))
    near = ys[max(j - 1, 0):j + 1] if j < len(xs) and xs[j] != x else ys[j:j + 1]
    if (near <= 0).any():
        return 0.0
    return float(np.exp(np.interp(x, xs, np.log(np.maximum(ys, np.finfo(float).tiny)))))


def _interpolated(report: Report, at_loss: float) -> Reading:
    """B_simple at ``at_loss``: log B_simple (and each interval end) linear in the loss between the measurements
    that bracket it (``_noise_at``), × the headline's factor for the optimizer family (``plan.calibration``), the
    interval widened by the headline's model range for this quantity (``headline.MODEL_RANGE``)."""
    from bsprof.schedule.headline import NAMES
    from bsprof.schedule.plan import noise_of

    col, quantity = _headline_column(report)
    rows = [r for r in report.measurements if (e := noise_of(r, col)) is not None and e.ok and finite(r.loss)
            and e.value > 0]
    if not rows:
        return Reading(math.nan, math.nan, math.nan, Status.UNDETERMINED, report.unit,
                       f"no determined measurement to interpolate at loss {_fmt(at_loss)}", loss=at_loss)
    rows.sort(key=lambda r: r.loss)
    losses = np.array([r.loss for r in rows], float)
    lo, hi = float(losses[0]), float(losses[-1])
    if lo - 5e-4 * abs(lo) <= at_loss <= hi + 5e-4 * abs(hi):   # a loss typed from the table (4 significant
        at_loss = min(max(at_loss, lo), hi)                       # digits), just past the end it rounds: the end
    if not losses[0] <= at_loss <= losses[-1]:
        unresolved = [r for r in report.measurements if finite(r.loss) and (e := noise_of(r, col)) is not None
                      and e.status in (Status.LOWER_BOUND, Status.UNDETERMINED)]
        lowest = min((r.loss for r in unresolved), default=math.inf)
        why = (f" (its rows at lower losses, down to {lowest:.4g}, are lower bounds or undetermined)"
               if lowest < losses[0] and at_loss < losses[0] else "")
        raise ValueError(f"--at-loss {at_loss:.4g} is outside the losses [{losses[0]:.4g}, {losses[-1]:.4g}] where "
                         f"the headline's noise scale, {NAMES[col]}, was determined{why}; bsprof does not "
                         "extrapolate the noise scale")
    scales = [reading(r, None, report.unit, "") for r in rows]
    ests = [noise_of(r, col) for r in rows]
    ends = [{"value": e.value, "lo": _low_end(e.lo, e.value), "hi": e.hi if finite(e.hi) and e.hi >= e.value
             else e.value} for e in ests]
    est = {k: _interp_log(at_loss, losses, [x[k] for x in ends]) for k in ("value", "lo", "hi")}
    eps = [s.eps_max for s in scales]
    eps_max = float(np.exp(np.interp(at_loss, losses, np.log(eps)))) if all(eps) else None
    # as the headline: the factor the schedule and the headline apply to this quantity (plan.calibration; under
    # the Adam family and SGD with momentum, measured the SGD way, B_simple falls short of swept critical batches),
    # and the interval widened by the range seen against sweeps for it (headline.MODEL_RANGE)
    from bsprof.schedule.headline import model_range, range_text
    from bsprof.schedule.plan import FAMILY_NAMES, calibration

    name = optimizer_name(report.config)
    k, (down, up) = calibration(name, quantity), model_range(name, quantity)
    label = "B_simple" if quantity == "b_simple" else NAMES.get(quantity, quantity)
    where = f"interpolated at loss {_fmt(at_loss)}" + (
        f", × {k:g} under {FAMILY_NAMES.get(optimizer_family(name), name)}" if k != 1
        else "") + f"; interval widened {range_text((down, up))} by the model range, as the headline's " \
        "(docs/science.md §6)"
    return Reading(k * est["value"], k * min(est["lo"], est["value"]) * down, k * max(est["hi"], est["value"]) * up,
                   Status.OK, report.unit, where, loss=at_loss, eps_max=eps_max,
                   name=label if k == 1 else f"{k:g} × {label}", model_range=(down, up), quantity=quantity,
                   factor=k)


# -- policy and results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """Limits of the gate. ``None`` sides default to ``factor``."""

    factor: float = 4.0
    max_extra_compute: float | None = None   # fail if B/B_n > this (even at B_n = hi)
    max_extra_steps: float | None = None     # fail if B_n/B > this (even at B_n = lo)
    lr_factor: float = 4.0                    # fail if lr is off the scaling rule by more than this
    lr_cap: float = 0.0                       # the rule's lr at most this × the probed lr, as `bsprof schedule`'s
                                              # --lr-cap; 0 (default): no cap, the rule's own lr
    baseline_factor: float = 2.0              # fail if B_n moved beyond both intervals by more than this

    @property
    def compute_limit(self) -> float:
        return self.max_extra_compute if self.max_extra_compute is not None else self.factor

    @property
    def steps_limit(self) -> float:
        return self.max_extra_steps if self.max_extra_steps is not None else self.factor

    def problems(self) -> list[str]:
        p = []
        for name in ("factor", "lr_factor", "baseline_factor"):
            if not (finite(getattr(self, name)) and getattr(self, name) >= 1):
                p.append(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_extra_compute", "max_extra_steps"):
            v = getattr(self, name)
            if v is not None and not (finite(v) and v > 0):
                p.append(f"--{name.replace('_', '-')} must be positive (got {v})")
        if not (finite(self.lr_cap) and (self.lr_cap == 0 or self.lr_cap >= 1)):
            p.append(f"--lr-cap must be 0 (no cap) or at least 1 (got {self.lr_cap})")
        return p


@dataclass(frozen=True)
class CheckResult:
    """One judged item (batch_size, lr, baseline): its status, the message, warnings, figures, and what passes."""

    name: str
    status: str
    message: str
    notes: tuple[str, ...] = ()
    measured: dict = field(default_factory=dict)
    passing: dict = field(default_factory=dict)
    warning: bool = False   # a pass whose message is a warning (too large only for the path it was judged on)

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "message": self.message, "notes": list(self.notes),
                "measured": json_clean(self.measured), "passing": json_clean(self.passing),
                "warning": self.warning}


@dataclass(frozen=True)
class Verdict:
    """The gate's answer: fail if any check fails, else cannot_judge if any cannot, else pass."""

    checks: tuple[CheckResult, ...]
    noise: Reading | None = None
    notes: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checks}
        if FAIL in statuses:
            return FAIL
        if CANNOT_JUDGE in statuses or not self.checks:
            return CANNOT_JUDGE
        return PASS

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def messages(self) -> list[str]:
        return [c.message for c in self.checks]

    @classmethod
    def from_error(cls, name: str, message: str, hint: str = "") -> Verdict:
        """A verdict for input that could not be read at all (bad report, bad options)."""
        return cls((CheckResult(name, CANNOT_JUDGE, message, (f"fix: {hint}",) if hint else ()),))

    def to_dict(self) -> dict:
        from bsprof import __version__

        return {"status": self.status, "exit_code": self.exit_code, "messages": self.messages,
                # every check's notes, as the GitHub format annotates them (::warning::): a pass with warnings is
                # told from a clean one without reading each check
                "warnings": [{"check": c.name, "message": n} for c in self.checks for n in c.notes],
                "checks": [c.to_dict() for c in self.checks],
                "noise_scale": self.noise.to_dict() if self.noise else None,
                "notes": list(self.notes), "bsprof_version": __version__}


def _pow2_within(target: float, lo: float, hi: float, g: int = 1) -> int | None:
    """The batch g·2^k nearest ``target`` (log scale) inside [lo, hi], or ``target`` clamped to it and rounded to
    a multiple of g if none is; g: tokens per sequence for a tokens report (whole sequences), else 1."""
    if not lo <= hi:
        return None
    powers = [g * 2 ** k for k in range(40) if lo <= g * 2 ** k <= hi]
    if powers:
        return min(powers, key=lambda p: abs(math.log(p / target)))
    return g * max(1, int(round(min(max(target, lo), hi) / g)))


def _whole(batch: float, g: int, up: bool) -> str:
    """A batch bound as a whole number of examples (g = 1) or of sequences of g tokens, rounded inwards."""
    n = math.ceil(batch / g) if up else math.floor(batch / g)
    return f"{_fmt(n * g)}" + (f" ({n} sequence{'s' if n != 1 else ''} of {g})" if g > 1 else "")


# -- the batch size ------------------------------------------------------------------------------------------
def check_batch(batch_size: float, noise: Reading, policy: Policy = Policy(), tokens_per_example: int = 1
                ) -> CheckResult:
    """Judge B against B_n: extra steps B_n/B ≤ X_steps and extra compute B/B_n ≤ X_compute (eq. 2.11). In a tokens
    report (``tokens_per_example`` > 1) the batches it suggests are whole sequences."""
    g = max(1, int(tokens_per_example))
    B, Xs, Xc, u = float(batch_size), policy.steps_limit, policy.compute_limit, noise.unit
    measured = {"batch_size": B, "noise_scale": noise.value, "noise_scale_lo": noise.lo, "noise_scale_hi": noise.hi,
                "steps_limit": Xs, "compute_limit": Xc}
    if noise.status == Status.UNDETERMINED:
        return CheckResult("batch_size", CANNOT_JUDGE,
                           f"cannot judge B = {_batch(B)}: the noise scale is undetermined ({noise.where}); "
                           "|G|² was not distinguished from 0",
                           ("measure longer or at a lower loss: `bsprof measure --max-examples ...`",), measured)
    grows = not noise.initial and (noise.one_point or (noise.growth is not None and noise.growth >= GROWING))
    passing = {"min": noise.lo / Xs, "max": math.inf if noise.initial or grows else noise.hi * Xc}
    if grows:
        passing["max_path"] = noise.hi * Xc   # what passes for a training that ends where the path ends
    if noise.status == Status.OK:
        lo_clean, hi_clean = noise.hi / Xs, math.inf if noise.initial else noise.lo * Xc
        passing["suggest"] = (_pow2_within(B, lo_clean, hi_clean, g)
                              or _pow2_within(B, passing["min"], passing["max"], g))
        empty = lo_clean > hi_clean   # no batch passes across the whole interval: both ends null (JSON)
        passing.update(min_clean=None if empty else lo_clean, max_clean=None if empty else hi_clean)
    # provable violations, at the most favourable end of the interval
    if noise.lo / B > Xs:
        extra = noise.lo / B
        return CheckResult("batch_size", FAIL,
                           f"B = {_batch(B)} is too small: extra steps S/S_min − 1 = B_n/B ≥ {_fmt(extra)} (limit "
                           f"{_fmt(Xs)}; {_fmt(1 + extra)}× the minimal number of steps) even at the low end of "
                           f"{noise.describe()}; a batch of at least {_whole(passing['min'], g, True)} {u} passes",
                           (), {**measured, "extra_steps": extra}, passing)
    if noise.status == Status.LOWER_BOUND:
        return CheckResult("batch_size", CANNOT_JUDGE,
                           f"cannot judge B = {_batch(B)}: {noise.describe()} can only show a batch too small, "
                           f"and B ≥ {_fmt(noise.lo / Xs)} is not",
                           ("a tracker log: a wider --window (more steps per estimate) or more logged steps, so "
                            "|G|² is resolved" if noise.from_log else
                            "measure at more examples so |G|² is resolved: `bsprof measure --max-examples ...`",),
                           measured, passing)
    if B / noise.hi > Xc and noise.initial:
        return _too_large_at_initial_weights(B, noise, Xs, measured, passing)
    if B / noise.hi > Xc and grows:
        return _too_large_on_the_path(B, noise, Xc, g, measured, passing)
    if B / noise.hi > Xc:
        extra = B / noise.hi
        return CheckResult("batch_size", FAIL,
                           f"B = {_batch(B)} is too large: extra compute E/E_min − 1 = B/B_n ≥ {_fmt(extra)} (limit "
                           f"{_fmt(Xc)}; {_fmt(1 + extra)}× the minimal compute) even at the high end of "
                           f"{noise.describe()}; a batch of at most {_whole(passing['max'], g, False)} {u} passes",
                           (), {**measured, "extra_compute": extra}, passing)
    steps, compute = noise.value / B, B / noise.value
    measured.update(extra_steps=steps, extra_compute=compute)
    notes = [_initial_note(B)] if noise.initial else []
    if noise.hi / B > Xs or (B > noise.lo * Xc and not noise.initial):
        side = "too small" if noise.hi / B > Xs else "too large"
        at_est = (steps > Xs) or (compute > Xc)
        notes.append(f"B = {_batch(B)} is {side} {'at the estimate' if at_est else 'at one end of the interval'}, "
                     f"but not across the whole interval {noise.brief()}; not failing, since bsprof fails only "
                     "when the whole interval violates the policy. "
                     + (f"B in [{_fmt(passing['min_clean'])}, {_fmt(passing['max_clean'])}] {u} passes cleanly; "
                        if passing["min_clean"] is not None else
                        "No batch passes across the whole interval (it is wider than the policy's limits allow); ")
                     + ("the interval includes the headline's model range (docs/science.md §6), which measuring "
                        "more precisely does not narrow: `bsprof sweep --method global` measures the critical batch "
                        "directly"
                        if noise.model_range else "measure more precisely (smaller --rel-error) to decide"))
    verdict = ("is within policy" if steps <= Xs and compute <= Xc else
               "passes only because the interval reaches values within policy; at the estimate")
    return CheckResult("batch_size", PASS,
                       f"B = {_batch(B)} {verdict}: extra steps S/S_min − 1 = {_fmt(steps)} (limit "
                       f"{_fmt(Xs)}) and extra compute E/E_min − 1 = {_fmt(compute)} (limit {_fmt(Xc)}) at "
                       f"{noise.describe()}", tuple(notes), measured,
                       passing)


TRAIN_FIRST = ("train first: `bsprof check SPEC.py --steps N` measures along N probe-training steps (e.g. --steps "
               "200), or judge the report of a training run (`bsprof measure SPEC.py --steps N`, or a tracker log)")


def _too_large_at_initial_weights(B: float, noise: Reading, Xs: float, measured: dict, passing: dict) -> CheckResult:
    """A batch above F·hi at the initial weights: cannot judge. B_n(L) grows as the loss falls (often 10× over a
    run), so B/B_n at step 0 bounds B/B_n along the run from above only: B may well be within policy later."""
    return CheckResult("batch_size", CANNOT_JUDGE,
                       f"cannot judge whether B = {_batch(B)} is too large: the noise scale was measured only at the "
                       f"initial weights (step 0, no training step before it), {noise.describe()}; it grows as the "
                       "loss falls (often 10× over a run), so a measurement at initialisation can show a batch too "
                       f"small, never too large (and B ≥ {_fmt(noise.lo / Xs)} {noise.unit} is not too small)",
                       (TRAIN_FIRST,), {**measured, "extra_compute": B / noise.hi}, passing)


def _too_large_on_the_path(B: float, noise: Reading, Xc: float, g: int, measured: dict, passing: dict
                           ) -> CheckResult:
    """A batch above F·hi on a path along which the noise scale was still growing: too large for a training that
    ends where the path ends; one that goes on to lower losses has a larger critical batch (B_n grows as the loss
    falls), which B may be within. A warning, not a failure (unless judged at one loss, ``--at-loss``)."""
    from bsprof.schedule.headline import NAMES

    extra, most = B / noise.hi, _whole(passing["max_path"], g, False)
    who, longer = (("the log's", "train (and log) further") if noise.from_log else
                   ("the probe's", "probe longer (more --steps)"))
    if noise.one_point:  # one measurement (or window): no path, so no growth to judge by
        more = ("a smaller --window, so that the log's steps make two windows or more, or train (and log) further"
                if noise.from_log else "more measurements along the probe (a smaller --measure-every)")
        return CheckResult(
            "batch_size", PASS,
            f"B = {_batch(B)} is too large at the one point it can be judged: extra compute E/E_min − 1 = B/B_n ≥ "
            f"{_fmt(extra)} (limit {_fmt(Xc)}) even at the high end of {noise.describe()}, where at most {most} "
            f"{noise.unit} pass; not failing, since how the noise scale grows after that point is unknown",
            (f"judged at one point of {who.removesuffix(chr(39) + 's')} run: the noise scale grows as the loss falls "
             "(McCandlish et al. 2018), so a training that goes on to lower losses may have a critical batch that "
             f"B = {_batch(B)} is within; to judge, pass --at-loss L (too large there fails), or give it a path: "
             f"{more}",),
            {**measured, "extra_compute": extra}, passing, warning=True)
    high, low = noise.path
    return CheckResult(
        "batch_size", PASS,
        f"B = {_batch(B)} is too large only for {who} path: extra compute E/E_min − 1 = B/B_n ≥ {_fmt(extra)} (limit "
        f"{_fmt(Xc)}) even at the high end of {noise.describe()}, where at most {most} {noise.unit} pass; "
        "not failing, since the noise scale was still growing along that path",
        (f"judged on {who} path, loss {_fmt(high)} → {_fmt(low)}: the noise scale grew {_fmt(noise.growth)}× "
         f"along it ({NAMES.get(noise.quantity, noise.quantity)}, at the lowest loss over the highest) and keeps "
         "growing as the loss falls (McCandlish et al. 2018), so a training that goes on to lower losses has a larger "
         f"critical batch, and B = {_batch(B)} may be within policy for it; to judge at the loss you train to, pass "
         f"--at-loss L (a loss the path reached, {_fmt(low)}–{_fmt(high)}; too large there fails), or {longer} to "
         "reach it",),
        {**measured, "extra_compute": extra, "growth": noise.growth}, passing, warning=True)


def _initial_note(B: float) -> str:
    """Why a pass at the initial weights says little: B_n only grows from there."""
    return (f"measured only at the initial weights (step 0): the noise scale grows as the loss falls (often 10× over "
            f"a run), so this shows only that B = {_batch(B)} is not too small there (it may be later), and too large "
            f"cannot be judged; {TRAIN_FIRST}")


# -- the learning rate ---------------------------------------------------------------------------------------
def lr_rule(optimizer: str | None) -> str | None:
    """'linear' for SGD (and momentum SGD), 'sqrt' for the Adam family, None when bsprof has no rule."""
    name = (optimizer or "SGD").lower()
    if name == "sgd":
        return "linear"
    if is_adam_family(name):
        return "sqrt"
    return None


def target_lr(rule: str, lr_ref: float, b_ref: float, batch_size: float, b_noise: float | None = None,
              eps_max: float | None = None) -> float:
    """The learning rate at batch B predicted from (lr_ref at B_ref).

    sqrt (Adam):  lr_ref·√(min(B, B_n)/min(B_ref, B_n)) — square root up to the noise scale, flat above it
                  (``schedule.rules.lr_sqrt``); lr_ref·√(B/B_ref) when B_n is unknown.
    linear (SGD): from ε_opt(B) = ε_max/(1 + B_n/B) (McCandlish eq. 2.6) relative to B_ref,
                  lr_ref·(1 + B_n/B_ref)/(1 + B_n/B) — linear scaling while B ≪ B_n, saturating beyond;
                  lr_ref·B/B_ref when B_n is unknown; capped by ε_opt(B) itself when ε_max was measured.
    """
    B = float(batch_size)
    if rule == "sqrt":
        from bsprof.schedule.rules import lr_sqrt
        return lr_sqrt(lr_ref, B, b_ref, b_noise if b_noise is not None and finite(b_noise) else 0.0)
    if b_noise is None or not finite(b_noise):
        target = lr_ref * B / b_ref
    else:
        target = lr_ref * (1 + b_noise / b_ref) / (1 + b_noise / B)
    if eps_max is not None and b_noise is not None and finite(b_noise):
        target = min(target, eps_max / (1 + b_noise / B))
    return target


def check_lr(lr: float, batch_size: float, report_config: dict, noise: Reading | None,
             policy: Policy = Policy(), unit: str | None = None) -> CheckResult:
    """Judge lr against the optimizer's scaling rule from the measured config; off by > lr_factor fails.

    The rule's lr is capped at lr_cap × lr_ref (``Policy.lr_cap``, as `bsprof schedule`'s ``plan.cap_lr``): beyond
    the probed lr nothing was measured, so the suggestion and the passing range stop there, and "too low" is judged
    against the capped lr. An lr above the cap that the rule allows is untested, not wrong: it passes with a warning
    (bsprof fails only what it can prove); one above the rule's range × lr_factor still fails as too high.

    ``batch_size`` is in ``unit`` (default: the noise scale's, else examples), and so is the reference batch: the
    config's training batch × its tokens_per_example for a tokens report (a tracker log records it in its unit)."""
    optimizer = report_config.get("optimizer") or "SGD"
    rule, f = lr_rule(optimizer), policy.lr_factor
    lr_ref = report_config.get("optimizer_lr") or report_config.get("lr")  # the lr the optimizer actually used
    b_ref = report_config.get("batch_size")
    unit = unit or (noise.unit if noise is not None else "examples")
    tpe = report_config.get("tokens_per_example")
    if unit == "tokens" and finite(b_ref) and finite(tpe) and tpe > 0:   # as ``schedule.plan.training_batch``
        b_ref = b_ref * tpe
    measured = {"lr": lr, "optimizer": optimizer, "rule": rule, "lr_ref": lr_ref, "batch_size_ref": b_ref,
                "unit": unit}
    if rule is None:
        return CheckResult("lr", CANNOT_JUDGE, f"cannot judge lr = {_fmt(lr)}: bsprof has no scaling rule for "
                           f"{optimizer} (it knows SGD: linear, Adam/AdamW: square root)", (), measured)
    if not (finite(lr_ref) and lr_ref > 0 and finite(b_ref) and b_ref > 0):
        return CheckResult("lr", CANNOT_JUDGE, f"cannot judge lr = {_fmt(lr)}: the report's config has no "
                           f"reference lr and batch_size (found lr={lr_ref!r}, batch_size={b_ref!r})", (), measured)
    notes = []
    if noise is None or noise.status == Status.UNDETERMINED:
        grid = [None]
        notes.append(f"noise scale undetermined: plain {'square-root' if rule == 'sqrt' else 'linear'} scaling "
                     "from the measured config, valid only while B is well below the (unknown) noise scale")
    elif noise.b_noise is not None and rule == "linear":   # ε_opt(B) is written in B_noise (eq. 2.6)
        grid = _log_grid(noise.b_noise.lo, noise.b_noise.lo * 1e6 if noise.initial else noise.b_noise.hi)
    else:
        grid = _log_grid(noise.lo, noise.hi if finite(noise.hi) and not noise.initial else noise.lo * 1e6)
    if noise is not None and noise.initial and grid != [None]:
        notes.append("measured at the initial weights only: the noise scale grows as the loss falls, so the lr is "
                     "judged against every noise scale from the measured lower end up")
    eps = noise.eps_max if noise is not None else None
    targets = [target_lr(rule, lr_ref, b_ref, batch_size, bn, eps) for bn in grid]
    t_lo, t_hi = min(targets), max(targets)
    hessian = noise is not None and noise.b_noise is not None and rule == "linear"   # ε_opt is written in B_noise
    point = noise.b_noise.value if hessian else noise.value if noise is not None and noise.status == Status.OK \
        else None
    rule_best = target_lr(rule, lr_ref, b_ref, batch_size, point, eps)
    top = policy.lr_cap * lr_ref if policy.lr_cap else math.inf   # the highest lr treated as tested
    best, c_lo, c_hi = min(rule_best, top), min(t_lo, top), min(t_hi, top)
    used, factor = noise_used(noise, grid, rule)
    measured.update(target=best, target_lo=c_lo, target_hi=c_hi, ratio=lr / best, eps_max=eps,
                    noise_scale_used=used, noise_factor=factor, target_rule=rule_best, target_rule_lo=t_lo,
                    target_rule_hi=t_hi, lr_cap=policy.lr_cap, lr_cap_value=top)
    passing = {"min": c_lo / f, "max": t_hi * f, "max_tested": min(t_hi * f, top), "suggest": best}
    kind = (("square-root" if grid == [None] else "square-root (up to the noise scale, flat above it)")
            if rule == "sqrt" else "linear" if grid == [None] else
            "noise-scale (linear well below the noise scale, saturating above it: ε ∝ 1/(1 + B_n/B))")
    how = f"{kind} scaling for {optimizer} from lr = {_fmt(lr_ref)} at B = {_fmt(b_ref)} {unit}"
    capped = f", capped at {policy.lr_cap:g} × that lr = {_fmt(top)}" if t_lo > top else ""
    fails = lr > t_hi * f or lr < c_lo / f
    if t_hi > top or (lr > top and not fails):
        notes.append(_lr_cap_note(lr, rule_best, t_hi, top, policy.lr_cap, lr_ref, fails))
    elif not policy.lr_cap:
        from bsprof.schedule.rules import extrapolation_note
        notes.append(extrapolation_note(best, batch_size, lr_ref))
        notes = [n for n in notes if n]
    if fails:
        end = t_hi if lr > t_hi * f else c_lo
        off = lr / end if lr > t_hi * f else end / lr
        word = "too high" if lr > t_hi * f else "too low"
        return CheckResult("lr", FAIL, f"lr = {_fmt(lr)} is {word}: {_fmt(off)}× off the nearer end, {_fmt(end)}, of "
                           f"the range that {how} gives ({_fmt(lr / best)}× the estimate's lr, `ratio` in json)"
                           f"{capped if word == 'too low' else ''} (limit {_fmt(f)}×); use lr ≈ {_fmt(best)} "
                           f"(anything in [{_fmt(passing['min'])}, {_fmt(passing['max_tested'])}] passes"
                           + (f"; up to {_fmt(passing['max'])} passes as untested" if passing["max"] >
                              passing["max_tested"] else "") + ")", tuple(notes), measured, passing)
    if lr <= top and (lr > best * f or lr < best / f):
        notes.append(f"lr = {_fmt(lr)} is more than {_fmt(f)}× off the rule at the estimate (≈ {_fmt(best)}), "
                     "but not across the whole interval on the noise scale; not failing")
    if lr > top:
        where = f" (≈ {_fmt(rule_best)}), but above --lr-cap {policy.lr_cap:g} × that lr = {_fmt(top)}: untested"
    elif capped:
        where = f"{capped} (the rule's ≈ {_fmt(rule_best)} is untested)"
    elif rule_best > best:  # the cap lowered the suggestion: both numbers, as the warning gives them
        where = f" (≈ {_fmt(best)}: the rule's ≈ {_fmt(rule_best)} capped at --lr-cap {policy.lr_cap:g} × that lr)"
    elif lr > best * f or lr < best / f:  # within f× of the rule somewhere on the interval, not at the estimate
        where = (f" somewhere on the noise scale's interval (the rule gives [{_fmt(c_lo)}, {_fmt(t_hi)}] there, "
                 f"≈ {_fmt(best)} at the estimate)")
    else:
        where = f" (≈ {_fmt(best)})"
    return CheckResult("lr", PASS, f"lr = {_fmt(lr)} is within {_fmt(f)}× of {how}{where}", tuple(notes), measured,
                       passing)


def _lr_cap_note(lr: float, rule_best: float, rule_hi: float, top: float, cap: float, lr_ref: float,
                 fails: bool) -> str:
    """Why the rule's lr was capped at cap × lr_ref (``plan.cap_lr``), or why an lr above the cap is not judged."""
    untested = (f"--lr-cap {cap:g} × the probed lr {_fmt(lr_ref)} = {_fmt(top)}: lrs beyond what was probed are "
                "untested (docs/science.md §6)")
    not_failing = "untested, not failing, since bsprof fails only what it can prove"
    if rule_hi > top:
        asks = f"≈ {_fmt(rule_best)}" if rule_best > top else f"up to {_fmt(rule_hi)}"
        text = (f"the rule asks lr {asks}, above {untested}, so check suggests and passes cleanly at most "
                f"{_fmt(top)}, as `bsprof schedule` caps it")
        text += f"; lr = {_fmt(lr)} is above it: {not_failing}" if lr > top and not fails else ""
    else:
        text = f"lr = {_fmt(lr)} is above {untested}, and `bsprof schedule` caps lrs there: {not_failing}"
    return text + ("; confirm with `bsprof sweep --method global`, measure at the lr you will train with, or "
                   "--lr-cap 0 to lift the cap")


def _log_grid(lo: float, hi: float, n: int = 33) -> list[float]:
    """n noise scales from lo to hi, evenly in log; an unresolved lower end (0) starts at hi/10⁶."""
    return list(np.geomspace(lo if lo > 0 else hi * 1e-6, hi, n))


def noise_used(noise: Reading | None, grid: list, rule: str = "linear") -> tuple[str | None, float | None]:
    """(the measured noise scale the lr rule used, its factor), the names of schedule JSON's noise_followed and
    noise_factor: for the linear rule B_noise as measured where the report has it (ε_opt is written in it, eq. 2.6),
    else the reading's quantity × its factor (e.g. b_simple_window × 3.2, the headline under Adam); (None, None)
    when the rule used none (an undetermined noise scale)."""
    if noise is None or grid == [None]:
        return None, None
    if noise.b_noise is not None and rule == "linear":
        return "b_noise", 1.0
    return noise.quantity, noise.factor


# -- regression against a baseline ---------------------------------------------------------------------------
_QUANTITY_TEXT = {"b_simple_window": "B_simple over training-step windows", "b_simple": "the fixed-weight B_simple",
                  "b_noise": "B_noise", "b_pre": "B_pre"}


def check_baseline(new: Reading, old: Reading, factor: float = 2.0) -> CheckResult:
    """Fail when B_n moved beyond both intervals by more than ``factor``: new_lo > old_hi·f or new_hi < old_lo/f."""
    measured = {"new": new.to_dict(), "old": old.to_dict(), "factor": factor}
    if new.unit != old.unit:
        return CheckResult("baseline", CANNOT_JUDGE, f"cannot compare with the baseline: it is in {old.unit}, "
                           f"this measurement in {new.unit}", (), measured)
    if new.status == Status.UNDETERMINED or old.status == Status.UNDETERMINED:
        which = "this measurement" if new.status == Status.UNDETERMINED else "the baseline"
        return CheckResult("baseline", CANNOT_JUDGE,
                           f"cannot compare with the baseline: the noise scale of {which} is undetermined",
                           (), measured)
    passing = {"min": old.lo / factor, "max": old.hi * factor}
    if new.lo > old.hi * factor:
        return CheckResult("baseline", FAIL,
                           f"the noise scale grew {_fmt(new.lo / old.hi)}× beyond the baseline (limit "
                           f"{_fmt(factor)}×): now {new.describe()}, was {old.describe()}; update the baseline "
                           "if this is intended, or re-tune the batch size", (), measured, passing)
    if new.hi < old.lo / factor:
        return CheckResult("baseline", FAIL,
                           f"the noise scale shrank {_fmt(old.lo / new.hi)}× below the baseline (limit "
                           f"{_fmt(factor)}×): now {new.describe()}, was {old.describe()}; update the baseline "
                           "if this is intended, or re-tune the batch size", (), measured, passing)
    if new.status != Status.OK or old.status != Status.OK:
        return CheckResult("baseline", CANNOT_JUDGE,
                           f"cannot tell whether the noise scale moved: now {new.describe()}, was "
                           f"{old.describe()}", (), measured, passing)
    ratio = new.value / old.value
    return CheckResult("baseline", PASS, f"the noise scale did not move beyond {_fmt(factor)}× of the baseline's "
                       f"interval ({_fmt(ratio)}× its estimate, within what the two intervals allow; now "
                       f"{new.describe()}, was {old.describe()})", (),
                       {**measured, "ratio": ratio}, passing)


def _layout(report: Report) -> list[tuple[str, str]]:
    """(module path, type) of the parameter groups a report measured (its first measurement's layers)."""
    first = min((x.step for x in report.layers), default=None)
    return [(x.layer, x.type) for x in report.layers if x.step == first]


def _other_model(baseline: Report, report: Report) -> str | None:
    """A note when the baseline measured a model with other parameter groups (another model, or this one
    changed): its noise scale is then no baseline for this one's."""
    old, new = _layout(baseline), _layout(report)
    if not old or not new or [n for n, _ in old] == [n for n, _ in new]:
        return None
    gone = [f"{n} ({t})" if t else n for n, t in old if n not in dict(new)]
    added = [f"{n} ({t})" if t else n for n, t in new if n not in dict(old)]
    what = "; ".join(x for x in (f"only in the baseline: {_listed(gone)}" if gone else "",
                                 f"only in this report: {_listed(added)}" if added else "") if x) or "in another order"
    return (f"the baseline measured a model with other parameter groups ({len(old)} against {len(new)}; {what}): "
            "another model, or this one changed, so a moved noise scale need not be a regression; compare reports "
            "of the same model, or update the baseline if the change is intended")


def _diverged(report: Report) -> str:
    """Why the report's own run went the wrong way (its loss rose, or it diverged), or ""."""
    reason = (report.incomplete or {}).get("reason") or ""
    if reason.startswith(("the training diverged", "the training loss became")):
        return f"the measured run diverged ({reason.split(':')[0]})"
    if any(d["code"] == "loss_rose" for d in report.diagnostics):
        return "the measured run's loss rose (the loss_rose note)"
    return ""


def _listed(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


# -- everything together -------------------------------------------------------------------------------------
def judge(report: Report, batch_size: float, lr: float | None = None, policy: Policy = Policy(),
          at_loss: float | None = None, baseline: Report | None = None) -> Verdict:
    """Run every applicable check on ``report``. Raises ValueError for options that cannot be judged
    (invalid policy, --at-loss outside the measured losses)."""
    problems = policy.problems()
    if not (finite(batch_size) and batch_size > 0):
        problems.append(f"--batch-size must be positive (got {batch_size})")
    if lr is not None and not (finite(lr) and lr > 0):
        problems.append(f"--lr must be positive (got {lr})")
    if problems:
        raise ValueError("; ".join(problems))
    noise = noise_at(report, at_loss)
    tpe = report.config.get("tokens_per_example") if report.unit == "tokens" else None
    checks = [check_batch(batch_size, noise, policy, int(tpe) if finite(tpe) and tpe >= 1 else 1)]
    if lr is not None and (why := _diverged(report)):   # a trial's lr 10 blew up, and check said "use lr ≈ 12.5"
        checks.append(CheckResult("lr", CANNOT_JUDGE, f"cannot judge the learning rate: {why}, so the lr it trained "
                                  "at is no reference to scale from; measure again at an lr that trains", (),
                                  {"lr": lr}))
    elif lr is not None:
        checks.append(check_lr(lr, batch_size, report.config, noise, policy, report.unit))
    notes = []
    n = report.config.get("dataset_size")
    n = n * (tpe if finite(tpe) and tpe >= 1 else 1) if finite(n) and n > 0 else None
    if n and batch_size > n:
        notes.append(f"B = {_fmt(batch_size)} is larger than the dataset the report measured ({_fmt(n)} "
                     f"{report.unit}): a step would repeat examples; the largest batch of distinct examples is the "
                     "whole dataset (if you train on more data than was measured, ignore this)")
    elif n and batch_size >= n / 2:
        notes.append(f"B = {_fmt(batch_size)} is {batch_size / n:.0%} of the dataset the report measured "
                     f"({_fmt(n)} {report.unit}): a few steps make an epoch, and the noise scale of sampling "
                     "without replacement is smaller than that of i.i.d. draws (the finite-population correction)")
    cb = report.summary.critical_batch
    if at_loss is None and cb is not None and noise.name != "B_crit":
        shown = (f"only a lower bound (> {_fmt(cb.lo)})" if cb.status is Status.LOWER_BOUND and finite(cb.lo)
                 else "undetermined")
        notes.append(f"the report's critical batch is {shown}, so this judges by the latest measurement's "
                     "B_simple (one point, not the path), with the headline's optimizer factor and model range; the "
                     "headline's reason in the report says why it is not determined — or judge at one loss with "
                     "--at-loss")
    if baseline is not None:
        old = noise_at(baseline, at_loss)
        k_new, k_old = _factor(report, at_loss), _factor(baseline, at_loss)
        if k_new != k_old:  # e.g. a baseline made before bsprof recorded SGD's momentum: compare the measurements
            old = dataclasses.replace(old, value=old.value * k_new / k_old, lo=old.lo * k_new / k_old,
                                      hi=old.hi * k_new / k_old)
            notes.append(f"the baseline's critical batch is read with the factor {k_old:g} (its optimizer: "
                         f"{optimizer_name(baseline.config) or 'not recorded'}) and this report's with {k_new:g} "
                         f"({optimizer_name(report.config) or 'not recorded'}): compared on this report's footing, "
                         "the measured noise scales × the same factor")
        if old.quantity != noise.quantity:  # e.g. a baseline with training-step windows, a run too short for them
            notes.append(f"the baseline's critical batch follows {_QUANTITY_TEXT.get(old.quantity, old.quantity)} "
                         f"({old.where}) and this report's {_QUANTITY_TEXT.get(noise.quantity, noise.quantity)} "
                         f"({noise.where}): not the same quantity; measure both the same way (same --steps and "
                         "--measure-every) to compare like with like")
        other = _other_model(baseline, report)
        if baseline.incomplete:
            notes.append(f"the baseline is incomplete ({baseline.incomplete.get('reason') or 'stopped early'}): "
                         "judged on what it measured before; a finished run makes a better baseline")
        span = [[m.loss for m in r.measurements if finite(m.loss)] for r in (baseline, report)]
        if at_loss is None and all(span) and (min(span[0]) > max(span[1]) or min(span[1]) > max(span[0])):
            notes.append(f"the baseline measured losses {_fmt(min(span[0]))}–{_fmt(max(span[0]))} and this report "
                         f"{_fmt(min(span[1]))}–{_fmt(max(span[1]))}: they do not overlap, and the noise scale grows "
                         "as the loss falls, so the two critical batches are of different stages of training; "
                         "measure both over the same losses (same --steps), or compare at one loss with --at-loss")
        elif at_loss is None and noise.path and old.path and 0 < (short := min(noise.path[1], old.path[1])) and (
                common := max(noise.path[1], old.path[1])) > PATH_ENDS * short:
            # overlapping, but one path goes much further down (a trial: 0.268 against 0.018)
            notes.append(f"the baseline's critical batch averages its path down to loss {_fmt(old.path[1])} and this "
                         f"report's down to {_fmt(noise.path[1])}: the noise scale grows as the loss falls, so the "
                         f"longer path reads higher; compare at one loss both reached with --at-loss {_fmt(common)}")
        checks.append(check_baseline(noise, old, policy.baseline_factor) if not other else
                      CheckResult("baseline", CANNOT_JUDGE, f"cannot compare with the baseline: {other}", (),
                                  {"new": noise.to_dict(), "old": old.to_dict()}))
    if report.incomplete:
        how = report.incomplete.get("reason") or "stopped early"
        step = report.incomplete.get("step")
        notes.append(f"the report is incomplete: the run ended early ({how}"
                     f"{f', at step {step}' if step is not None else ''}); judged on what was measured before"
                     + ("; it stopped before any measurement after the initial weights (the advice to train first "
                        "means: measure again and let the run finish, or measure more often, --measure-every N)"
                        if noise is not None and noise.initial else ""))
    fam = optimizer_family(optimizer_name(report.config))
    q = report.summary.critical_batch_quantity if report.summary else None
    said = {d.get("code") for d in report.diagnostics if isinstance(d, dict)}   # the run's own note says it
    if (fam in ("adam", "momentum") or (fam == "sgd" and q == "b_simple_window")) and \
            {"adam": "adam", "momentum": "momentum", "sgd": "plain_sgd"}[fam] not in said:
        from bsprof.schedule.plan import FACTORS, RECORD, SGD_EXCESS, SHORTFALL, calibration

        q = q if q in FACTORS[fam] else "b_simple"
        how = (f"measured the plain-SGD way, it fell {SHORTFALL[fam][q]} short of swept critical batches "
               f"(docs/science.md §6); {RECORD[fam][q]}" if fam in SHORTFALL else
               f"measured as it is, it read {SGD_EXCESS[q]} of swept critical batches; with the factor "
               f"{RECORD[fam][q]} (docs/science.md §6)")
        notes.append(f"under {'Adam' if fam == 'adam' else 'SGD with momentum' if fam == 'momentum' else 'plain SGD'}"
                     f" the critical batch is {calibration(optimizer_name(report.config), q):g} × the path average of "
                     + ("B_simple over training-step windows" if q == "b_simple_window"
                        else "the fixed-weight B_simple")
                     + f": {how}: confirm with `bsprof sweep --method global`")
    notes.extend(d["message"] for d in report.diagnostics  # what the run cost is no part of the judgement
                 if isinstance(d, dict) and d.get("message") and d.get("code") != "measure_cost")
    return Verdict(tuple(checks), noise, tuple(notes))
