"""The report's headline: one critical batch with its interval, the quantity it comes from and a one-line reason.

**Value.** B_crit = E_min/S_min over the measured path (McCandlish et al. 2018, eq. 2.12; ``predict.critical_batch``)
of the noise scale `bsprof schedule` follows by default (``plan.choose_noise``), from the first measured loss down
to the lowest one: the schedule's "B_crit over the path" (``plan.fit_rows`` → ``plan.noise_path``) with the target
at the lowest measured loss, so nothing is extrapolated (or at a ``target_loss`` asked: `bsprof report -t L`).

**Interval**, two parts, both stated in the reason and in docs/science.md ("Which critical batch bsprof reports"):
1. sampling: the same path integral through the lower ends and through the upper ends of every measurement's
   interval (the fit's form held fixed). Conservative for sampling error (every measurement at its bound at once).
   To a ``target_loss`` below the measured losses, also the fit's own extrapolation interval there
   (``plan.b_crit_bounds``);
2. model: the ends multiplied by ``MODEL_RANGE`` — the range of swept B_crit / this estimate seen in our checks
   (docs/science.md §6; scripts/results/validation_table.md). Under the Adam family the value is
   ``plan.ADAM_FACTORS`` × the path average: 3.2 × the training-step window B_simple (the geometric mean over 6
   tasks of swept B_crit / its path average), which came to 0.54–1.96× of the sweep per probe seed: both ends
   ×2; where the model has no windows, 2.5 × the fixed-weight B_simple (7 tasks; 0.44–2.73× per seed): upper
   end ×2.3, lower ÷2.8.
   Under SGD with momentum (``plan.MOMENTUM_FACTORS``) 2.8 × the window B_simple (4 tasks; 0.60–1.70× per seed):
   both ends ×2; 2.6 × the fixed-weight B_simple (0.49–1.73×): ×2.1.
   Under plain SGD (``plan.SGD_FACTORS``) 0.74 × the window B_simple (7 tasks; 0.62–1.75× per seed): upper end
   ×1.7, lower ÷1.8. The fixed-weight B_simple, as measured, was 1.35–4.5× too high: the lower end ÷4. B_noise, as
   measured: its path average was 0.57–1.36× on six tasks and 3.08× on the BatchNorm CNN: upper end ×1.8, lower
   ÷3.1. Other optimizers were never compared: ×3.

With fewer than two usable measurements at falling losses there is no path: the headline is the last
measurement's value of the same quantity, widened the same way, and the reason says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bsprof.errors import BsprofError, ReportError
from bsprof.results import Estimate, Status, measured, optimizer_family, optimizer_name
from bsprof.schedule.plan import (
    FACTORS,
    RECORD,
    SGD_EXCESS,
    SGD_RECORD,
    SHORTFALL,
    calibration,
    log_window,
    measured_as,
    more_rows_fix,
    noise_of,
)

# (optimizer family, quantity or "*"): multipliers of the interval's (lower, upper) end — swept / estimated B_crit
MODEL_RANGE = {
    ("adam", "b_simple_window"): (1 / 2.0, 2.0),  # 3.2 × the window: 0.54–1.96× of the sweep per probe seed
    ("adam", "*"): (1 / 2.8, 2.3),    # 2.5 × fixed-weight B_simple: 0.44–2.73× per probe seed (7 tasks)
    ("momentum", "b_simple_window"): (1 / 2.0, 2.0),  # 2.8 × the window: 0.60–1.70× per probe seed (4 tasks)
    ("momentum", "*"): (1 / 2.1, 2.1),  # 2.6 × fixed-weight B_simple: 0.49–1.73× per probe seed (4 tasks)
    ("sgd", "b_simple"): (1 / 4, 1.0),  # 1.35 to 4.5 (the BatchNorm CNN) too high on 7 plain-SGD tasks
    ("sgd", "b_simple_window"): (1 / 1.8, 1.7),  # 0.74 × the window: 0.62–1.75× per probe seed (7 tasks)
    ("sgd", "b_noise"): (1 / 3.1, 1.8),  # 0.57–1.36 on six tasks, 3.08 on the BatchNorm CNN (ninth session)
    ("other", "*"): (1 / 3, 3.0),     # optimizers never compared with sweeps (RMSprop, Lion, …): as wide as Adam
}

NAMES = {"b_simple": "fixed-weight B_simple", "b_simple_window": "B_simple over training-step windows",
         "b_noise": "B_noise", "b_pre": "B_pre", "b_simple_ranks": "B_simple across ranks",
         "b_simple_regression": "B_simple by 1/B regression"}

WIDTH = {"adam": {"b_simple_window": "×2/÷2", "b_simple": "×2.3/÷2.8"},
         "momentum": {"b_simple_window": "×2/÷2", "b_simple": "×2.1/÷2.1"},
         "sgd": {"b_simple_window": "×1.7/÷1.8"}}

REASONS = {
    "sgd": {
        "b_simple_window": f"plain SGD: as measured it read {SGD_EXCESS['b_simple_window']} (7 tasks); with the "
                           f"factor {SGD_RECORD['b_simple_window']}, interval {WIDTH['sgd']['b_simple_window']} "
                           "(docs/science.md §6); `bsprof sweep --method global` checks it on your model",
        "b_noise": "SGD: 0.57–1.36× of swept critical batches on 6 tasks, 3.1× on a BatchNorm CNN, interval ×1.8/÷3.1 "
                   "(docs/science.md §6)",
        "b_simple": "SGD: fixed-weight B_simple was 1.35–4.5× the swept critical batch on 7 tasks, lower end ÷4 "
                    "(docs/science.md §6); B_simple over training-step windows, where the model allows them, "
                    "came closer",
    },
    **{fam: {q: f"{who}: measured the plain-SGD way, it fell {SHORTFALL[fam][q]} short of swept critical batches; "
                f"times the factor it came to {RECORD[fam][q]}, interval {WIDTH[fam][q]} (docs/science.md §6); "
                "confirm with `bsprof sweep --method global`" for q in FACTORS[fam]}
       for fam, who in (("adam", "Adam"), ("momentum", "SGD with momentum"))},
    "other": "{optimizer}: never compared with sweeps, interval ×3 either way (docs/science.md §6); confirm with "
             "`bsprof sweep --method global`",
}


@dataclass(frozen=True)
class Headline:
    estimate: Estimate
    quantity: str | None
    reason: str


def model_range(optimizer: str | None, quantity: str) -> tuple[float, float]:
    fam = optimizer_family(optimizer)
    return MODEL_RANGE.get((fam, quantity)) or MODEL_RANGE.get((fam, "*")) or (1.0, 1.0)


def range_text(factors: tuple[float, float]) -> str:
    """A model range in words: '×2.3/÷2.8', '÷4' (lower end only), 'not at all' for (1, 1)."""
    down, up = factors
    parts = ([f"×{up:.2g}"] if up != 1 else []) + ([f"÷{1 / down:.2g}"] if down != 1 else [])
    return "/".join(parts) or "not at all"


def reason(optimizer: str | None, quantity: str, path: str) -> str:
    """One line: what the number is, and how far it was from sweeps for this optimizer family and quantity."""
    fam = optimizer_family(optimizer)
    name = NAMES.get(quantity, quantity)
    if fam == "sgd":
        why = REASONS["sgd"].get(quantity, "SGD: this quantity was not compared with sweeps (docs/science.md §6)")
        k = calibration(optimizer, quantity)
        name = f"{k:g} × {name}" if k != 1 else name
    elif fam in FACTORS:
        name = f"{calibration(optimizer, quantity):g} × {name}"
        why = REASONS[fam].get(quantity) or (
            f"{'Adam' if fam == 'adam' else 'SGD with momentum'}: the factor {FACTORS[fam]['b_simple']:g} was "
            "measured for the fixed-weight B_simple, not for this quantity (docs/science.md §6); confirm with "
            "`bsprof sweep --method global`")
    else:
        why = REASONS[fam].format(optimizer=optimizer)
    return f"{name}, {path}; {why}"


def widen(est: Estimate, factors: tuple[float, float]) -> Estimate:
    return Estimate(est.value, est.lo * factors[0], est.hi * factors[1], est.status)


def critical_batch(report, target_loss: float | None = None) -> Headline:
    """The headline critical batch of ``report`` (module docstring): the path to the lowest measured loss, or to
    ``target_loss`` (refused with ``ExtrapolationError`` when far below the measured losses, as by the schedule)."""
    from bsprof.schedule import predict
    from bsprof.schedule.plan import (
        ScheduleConfig,
        b_crit_bounds,
        check_target,
        choose_noise,
        fit_rows,
        noise_path,
        training_batch,
        usable_rows,
    )

    rows_all, optimizer = measured(report.measurements), optimizer_name(report.config)  # no cut-short window
    rose = _diverged(rows_all)
    if rose and target_loss is None:
        return Headline(Estimate.none(Status.UNDETERMINED), None, rose)
    cfg = ScheduleConfig(target_loss=1.0, confidence=report.config.get("confidence") or 0.9)
    col, _ = choose_noise(cfg, rows_all, optimizer)
    factors = model_range(optimizer, col)
    tail = _unrecorded(report) + _unresolved_windows(rows_all, col)
    try:
        rows, col = usable_rows(report, cfg)
        batch_train, _ = training_batch(report)
        fit, steps, loss = fit_rows(rows, cfg.confidence)
    except (BsprofError, ValueError, ArithmeticError, IndexError) as e:
        if target_loss is None:
            return _one_point(rows_all, col, optimizer, factors, tail)
        if isinstance(e, BsprofError):
            raise
        raise ReportError(f"no critical batch to loss {target_loss:g}: the noise scale cannot be fitted ({e})",
                          more_rows_fix(report)) from e
    target = float(min(loss)) if target_loss is None else float(target_loss)
    extrapolated = (check_target(target, loss, fit, cfg, float(steps[0]), log_window(report), col)
                    if target_loss is not None else [])
    try:
        value = predict.critical_batch(noise_path(fit, steps, loss, batch_train, target))["b_crit"]
        lo, hi = b_crit_bounds(rows, fit, steps, loss, batch_train, target, cfg.confidence)
    except (BsprofError, ValueError, ArithmeticError, IndexError):
        value, lo, hi = math.nan, math.nan, math.nan
    lo, hi = min(lo, value), max(hi, value)
    if not all(math.isfinite(x) and x > 0 for x in (value, lo, hi)):
        if target_loss is not None:  # asked for this loss: no silent answer at one measured point instead
            raise ReportError(f"no critical batch to loss {target:g}: the fitted noise scale, or the fits through "
                              "the ends of its intervals, cannot be followed that far",
                              f"pick a target loss nearer the measured ones ({min(loss):.4g} is the lowest), or "
                              "measure to lower losses")
        return _one_point(rows_all, col, optimizer, factors, tail)
    if col == "b_simple" and all(r.stopped_by == "window" for r, _ in rows):
        col = "b_simple_window"  # a tracker log: its B_simple column comes from the training steps' own pairs
        factors = model_range(optimizer, col)
    path = f"path average, loss {max(loss):.3g} → {target:.3g}" + (" (extrapolated)" if extrapolated else "")
    return Headline(widen(Estimate(value, lo, hi), factors), col, reason(optimizer, col, path) + tail)


def _diverged(rows) -> str | None:
    """Why there is no headline when the probe's training diverged (its last measured loss above ``LOSS_ROSE`` × its
    first, as the ``loss_rose`` note says): the noise scale along a diverging run is not that of a training run (a
    trial's lr 1e6 printed a critical batch over losses of 3.9e5 → 2.9e5)."""
    from bsprof.engine.diagnostics import LOSS_ROSE

    losses = [r.loss for r in rows if math.isfinite(r.loss)]
    if len(losses) >= 2 and losses[0] > 0 and losses[-1] > LOSS_ROSE * losses[0]:
        return (f"none: the training loss rose from {losses[0]:.4g} to {losses[-1]:.4g}, a diverging run, whose noise "
                "scales are not those of training; lower the lr (--lr, or the spec optimizer's) and measure again")
    return None


def _unresolved_windows(rows, col: str) -> str:
    """A reason's tail when the report has training-step windows but the headline follows the fixed-weight B_simple:
    fewer than two windows were determined (a new user's read "where the model allows them" of a model that had
    them, lower bounds all but one); and when it follows the windows but some were only lower bounds, left out of
    the path (5–6 of 13 in a validation probe, unsaid: the path may read low)."""
    if col not in ("b_simple", "b_simple_window"):
        return ""
    windows = [e for r in rows if (e := noise_of(r, "b_simple_window")) is not None and e.status is not
               Status.NOT_AVAILABLE]
    if not windows:
        return ""
    bounds = sum(e.status is Status.LOWER_BOUND for e in windows)
    if col == "b_simple_window":
        return (f"; {bounds} of its {len(windows)} training-step windows only a lower bound (|G|² not resolved over "
                "their steps), left out of the path, which may then read low: more steps between measurements "
                "(--measure-every) resolve them" if bounds else "")
    if len(windows) == 1 and windows[0].status is Status.OK:  # determined, but one window is no path
        return ("; this run has one training-step window, determined, and a path needs two: run more steps "
                "(--steps), or measure more often (--measure-every)")
    which = (f", {bounds} of them only a lower bound (|G|² not resolved over its steps)" if bounds else
             ", too few of them determined")
    return (f"; this run has {len(windows)} training-step window(s){which}: too few to follow; more steps between "
            "measurements (--measure-every) resolve them")


def _unrecorded(report) -> str:
    """A reason's tail for a report that does not say its optimizer (a Tracker given none) or SGD's momentum (made
    before bsprof recorded it): both are read as plain SGD."""
    if not report.config.get("optimizer"):
        return ("; the report does not record its optimizer (a Tracker given none): read as plain SGD — under Adam "
                "or SGD with momentum the critical batch is 3–4× larger (docs/science.md §6); pass the optimizer "
                "(bsprof.Tracker(model, optimizer, …))")
    if str(report.config.get("optimizer") or "").lower() == "sgd" and "optimizer_momentum" not in report.config:
        return ("; this report does not record SGD's momentum (an older bsprof): read as plain SGD — with momentum "
                "the critical batch is larger (docs/science.md §6), measure again")
    return ""


def _one_point(rows, col: str, optimizer: str | None, factors, tail: str = "") -> Headline:
    from bsprof.schedule.plan import _scaled, calibration, noise_of

    for r in reversed(rows):
        est = noise_of(r, col)
        est = _scaled(est, calibration(optimizer, measured_as(col, [r]))) if est is not None else None
        if est is not None and est.status in (Status.OK, Status.LOWER_BOUND):
            where = f"at step {r.step} only (no path: needs two measurements at falling losses)"
            if col == "b_simple" and r.stopped_by == "window":  # a tracker log's row: a training-step window
                col, factors = "b_simple_window", model_range(optimizer, "b_simple_window")
            return Headline(widen(est, factors), col, reason(optimizer, col, where) + tail)
    return Headline(Estimate.none(), None, "no noise scale was determined")
