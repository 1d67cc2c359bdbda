"""From a measurement to a batch-size plan: ``plan(report, config) -> Schedule``.

1. fit B_n(L) to the report's ok rows (``fit.py``), refuse a target loss far outside the measured range;
2. build the loss path with its minimal steps (``predict.py``);
3. march along the path: the rule's wish (``rules.py``) → rounded, clamped, never shrinking, dwelling batch;
   the learning rate follows the batch; steps advance by dS = (1 + B_n/B)·ds_min;
4. predict steps and examples for the schedule and for constant-batch baselines.

"Far" is explicit: the target is refused when ln(L_lowest/L_target) exceeds ``max_extrapolation`` (default 0.5)
times the measured range ln(L_highest/L_lowest), unless ``allow_extrapolation`` (then it is a loud warning).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import asdict, dataclass

import numpy as np

from bsprof.errors import BsprofError, ConfigError, ReportError, short
from bsprof.results import (
    Estimate,
    Measurement,
    finite,
    measured,
    momentum_of,
    number,
    optimizer_family,
    optimizer_name,
)
from bsprof.schedule import predict, rules
from bsprof.schedule.fit import fit_noise_scale
from bsprof.schedule.stages import Schedule, Stage


class ExtrapolationError(BsprofError):
    """The target loss lies far outside the losses the noise scale was measured at."""


@dataclass(frozen=True)
class ScheduleConfig:
    """Options of `bsprof schedule`. Batch sizes in the report's unit."""

    target_loss: float = 0.0
    rule: str = "mccandlish"         # mccandlish, noise, adadamp, padadamp, geodamp, doubling
    exchange_rate: float = 0.0       # mccandlish: examples one step is worth (0: auto, B_crit over the path)
    f_star: float = 0.0              # adadamp: the optimal loss F*
    b0: int = 0                      # initial batch of adadamp/padadamp/geodamp/doubling (0: training batch)
    rate: float = 1.0                # padadamp: ρ examples per step
    factor: float = 2.0              # geodamp: multiply the batch by this ...
    every: int = 1000                # ... every this many steps (a few epochs)
    multiple_of: int = 0             # round to multiples of this (0: powers of two)
    seq_length: int = 0              # tokens per sequence: a tokens schedule rounds to whole sequences (0: the
                                     # report's tokens_per_example)
    min_batch: int = 0               # smallest batch (0: auto, ``auto_min_batch``)
    max_batch: int = 65536
    dwell: int = 50                  # minimum steps between two batch changes
    lr_rule: str = "auto"            # linear (SGD), sqrt (Adam), none, auto (by the report's optimizer)
    lr: typing.Optional[float] = None  # learning rate at the training batch (default: the report's)
    lr_cap: float = 0.0              # emitted lr at most this × the lr at the training batch (0: no cap)
    world_size: int = 0              # data-parallel ranks (0: auto, a tracker log's ranks, else 1)
    micro_batch: int = 0             # largest per-rank micro-batch (0: auto, a tracker log's micro-batch
                                     # (``logged_micro_batch``), else no limit and no accumulation)
    noise: str = "auto"              # noise scale to follow: auto or one of ``NOISES``
    form: str = "auto"               # fit of B_n(L): auto (AICc), power, hyperbola
    allow_extrapolation: bool = False
    max_extrapolation: float = 0.5
    confidence: float = 0.9
    compare_batches: tuple[int, ...] = ()  # constant batches to predict beside the schedule ((): powers of two up to
                                           # 16 × the largest noise scale, at most 12)

    def problems(self) -> list[str]:
        p = []
        if not self.target_loss > 0:
            p.append(f"target_loss must be positive (got {self.target_loss})")
        for name, allowed in (("rule", tuple(rules.RULES)), ("lr_rule", ("auto", *rules.LR_RULES)),
                              ("noise", ("auto", *NOISES)), ("form", ("auto", "power", "hyperbola"))):
            if getattr(self, name) not in allowed:
                p.append(f"{name} must be one of {', '.join(allowed)} (got {short(getattr(self, name))})")
        for name in ("max_batch", "every"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("min_batch", "multiple_of", "micro_batch", "dwell", "b0", "seq_length", "world_size"):
            if getattr(self, name) < 0:
                p.append(f"{name} must be 0 or more (got {getattr(self, name)})")
        if self.lr_cap != 0 and self.lr_cap < 1:
            p.append(f"lr_cap must be 0 (no cap) or at least 1 (got {self.lr_cap})")
        if self.min_batch > self.max_batch:
            p.append(f"min_batch {self.min_batch} exceeds max_batch {self.max_batch}")
        if self.exchange_rate < 0 or self.factor < 1 or self.rate < 0 or self.max_extrapolation < 0:
            p.append("exchange_rate must be ≥ 0 (0: auto), factor ≥ 1, rate ≥ 0, max_extrapolation ≥ 0")
        if self.lr is not None and self.lr <= 0:
            p.append(f"lr must be positive (got {self.lr})")
        bad = [b for b in self.compare_batches if not 1 <= b <= self.max_batch]
        if bad:
            p.append(f"compare_batches must lie in [1, max_batch {self.max_batch}] (got {short(bad)})")
        return p


# -- inputs ------------------------------------------------------------------------------------------------
def _regression(r: Measurement) -> Estimate | None:
    """The 1/B regression's B_simple has no interval of its own: NaN bounds (the fit then weights it as ±2×)."""
    if r.regression is None or not finite(r.regression.b_simple) or r.regression.failed:
        return None
    return Estimate(r.regression.b_simple, math.nan, math.nan)


NOISES = {  # every noise scale a report row may hold: name → the row's Estimate (None when not measured)
    "b_simple": lambda r: r.b_simple,
    "b_simple_window": lambda r: r.b_simple_window,
    "b_noise": lambda r: r.b_noise,
    "b_pre": lambda r: r.b_pre,
    "b_simple_ranks": lambda r: r.ranks.b_simple if r.ranks else None,
    "b_simple_regression": _regression,
}
EVIDENCE = "docs/science.md §6"


MEASURED_BY = {"b_noise": "B_noise needs the Hessian: measure with `bsprof measure SPEC --hessian`",
               "b_pre": "B_pre is measured under an Adam-family optimizer (the spec's optimizer())",
               "b_simple_ranks": "B_simple across ranks is measured under torchrun with 2 or more ranks"}


def noise_of(row: Measurement, col: str) -> Estimate | None:
    """The noise scale ``col`` (a key of ``NOISES``) of one row."""
    return NOISES[col](row)


# Swept B_crit / the path average of a noise scale under the Adam family (docs/science.md §6): measured the SGD way,
# every noise scale fell short of the sweeps on every Adam task, by a factor that depends on the task. Per quantity,
# ADAM_FACTORS is the geometric mean over the tasks of that factor (`python scripts/adam_factor.py`,
# scripts/results/adam_factor.json): B_simple over the training-step windows needed 1.9–5.3× on six tasks (3.2),
# the fixed-weight B_simple 1.2–4.7× on seven (2.5). The windows are the steadier: with its factor each came within
# ADAM_RECORD of the sweeps. The schedule, its predicted steps and the headline follow the factor × the measured
# noise scale (any other quantity: the fixed-weight factor); the report's pointwise values stay as measured.
ADAM_FACTORS = {"b_simple_window": 3.2, "b_simple": 2.5}
# Since the sixth session eight more Adam-family tasks were set up (out of sample): with the factor 0.73–2.7× per
# task, the windows' shortfall over all fourteen 1.2–5.1× (docs/validation.md, scripts/factor_features.py).
ADAM_SHORTFALL = {"b_simple_window": "1.2–5.1× (14 tasks)", "b_simple": "1.2–4.7×"}
ADAM_RECORD = {"b_simple_window": "0.60–1.66× of swept critical batches on the 6 tasks it was fitted on (per probe "
                                  "seed 0.54–1.96×), 0.73–2.7× on 8 set up after it",
               "b_simple": "0.53–2.1× of swept critical batches on 7 tasks"}
# SGD with momentum (0.9) falls short the same way (seventh session; docs/science.md §6,
# `python scripts/adam_factor.py --family momentum`, scripts/results/momentum_factor.json): swept B_crit / the path
# average was 1.8–3.8× for the windows on four tasks (geometric mean 2.84), 1.8–3.2× for the fixed-weight B_simple
# (2.64). Momentum speeds up the large-batch, curvature-limited regime, which the noise scale cannot see.
MOMENTUM_FACTORS = {"b_simple_window": 2.8, "b_simple": 2.6}
# Five more heavy-ball tasks since (out of sample): with the factor 0.73–1.30× per task; over all nine the windows'
# shortfall was 1.8–3.8×.
MOMENTUM_SHORTFALL = {"b_simple_window": "1.8–3.8× (9 tasks)", "b_simple": "1.8–3.2×"}
MOMENTUM_RECORD = {"b_simple_window": "0.74–1.56× of swept critical batches on the 4 tasks it was fitted on (per "
                                      "probe seed 0.60–1.70×), 0.73–1.30× on 5 set up after it",
                   "b_simple": "0.81–1.44× of swept critical batches on 4 tasks"}
# Plain SGD reads high (tenth session; docs/science.md §6, `python scripts/adam_factor.py --family sgd`,
# scripts/results/sgd_factor.json): swept B_crit / the path average was 0.47–1.08 for the windows on seven tasks
# (geometric mean 0.74, 0.73 on the rerun: the windows read 0.93–2.1× of the sweeps). The theory's quantity is
# B_noise = tr(HΣ)/GᵀHG, which weights the noise by the curvature; along SGD the gradient leans into the sharp
# directions (the iterate oscillates across them), so B_noise < B_simple: its path average was 0.45–0.66 × the
# windows' on five of six tasks measured with --hessian. B_noise itself is followed as measured, and so is the
# fixed-weight B_simple (the fallback, 1.35–4.5× the sweeps, whose interval's lower end is ÷4): on the noisy
# quadratic model, where the critical batch is known, it is exact (tests/test_nqm.py), and a factor fitted to nets
# would break that. An eighth task, set up after the factor, came to 1.17× (a next-character MLP LM).
SGD_FACTORS = {"b_simple_window": 0.74}
SGD_EXCESS = {"b_simple_window": "0.93–2.1×"}
SGD_RECORD = {"b_simple_window": "0.68–1.66× of swept critical batches on the 7 tasks it was fitted on (fitted "
                                 "without the task 0.63–1.78×), 0.59–1.17× on 3 set up after it (0.59×: a convex "
                                 "softmax regression)"}
FACTORS = {"adam": ADAM_FACTORS, "momentum": MOMENTUM_FACTORS, "sgd": SGD_FACTORS}  # family -> factors per quantity
SHORTFALL = {"adam": ADAM_SHORTFALL, "momentum": MOMENTUM_SHORTFALL}   # the families that read low
RECORD = {"adam": ADAM_RECORD, "momentum": MOMENTUM_RECORD, "sgd": SGD_RECORD}
FAMILY_NAMES = {"adam": "Adam-family optimizer", "momentum": "SGD with momentum", "sgd": "plain SGD"}


def measured_as(col: str, rows) -> str:
    """The quantity a column holds: a tracker log's ``b_simple`` rows are training-step windows."""
    if col == "b_simple" and rows and all(getattr(r, "stopped_by", None) == "window" for r in rows):
        return "b_simple_window"
    return col


def calibration(optimizer: str | None, quantity: str = "b_simple") -> float:
    """The factor the followed noise scale ``quantity`` is multiplied by for ``optimizer`` (a name as
    ``results.optimizer_name`` gives it): 1 for optimizers never compared with sweeps and under plain SGD for all
    but the training-step windows (``SGD_FACTORS``); ``FACTORS`` of the Adam family (the fixed-weight one for
    quantities never compared with sweeps); for SGD with momentum β, k_SGD · (k_0.9/k_SGD)^(log₁₀ 1/(1 − β)) with
    k_0.9 from ``MOMENTUM_FACTORS`` (measured at β = 0.9): plain SGD's factor at β = 0, the factor at 0.9 — the
    momentum's step multiplier 1/(1 − β) raised to a fitted power (β = 0.5 was checked out of sample)."""
    fam = optimizer_family(optimizer)
    factors = FACTORS.get(fam)
    if factors is None or (fam == "sgd" and quantity not in factors):
        return 1.0
    k = factors[quantity] if quantity in factors else factors["b_simple"]
    if fam == "momentum":
        k0 = SGD_FACTORS.get(quantity, 1.0)
        k = round(k0 * (k / k0) ** math.log10(1 / (1 - momentum_of(optimizer))), 2)
    return k


def _scaled(e: Estimate, k: float) -> Estimate:
    return e if k == 1.0 else Estimate(e.value * k, e.lo * k, e.hi * k, e.status)


def _determined(rows, col: str) -> int:
    """Rows whose ``col`` is ok and positive, of those measured at fixed weights (``results.measured``: a run cut
    short ends with a row holding only its training-step window, which no path follows)."""
    return sum(1 for r in measured(rows) if (e := noise_of(r, col)) is not None and e.ok and e.value > 0)


def held(rows) -> list[str]:
    """The noise scales determined (ok, positive) in at least one row."""
    return [c for c in NOISES if _determined(rows, c)]


def choose_noise(cfg: ScheduleConfig, rows, optimizer: str | None) -> tuple[str, str]:
    """The noise scale to follow and why. ``auto`` goes by measured evidence (``EVIDENCE``: global sweeps with
    the lr tuned per batch, against the B_crit over the path each quantity predicts; docs/science.md §6):
    - SGD: B_simple from the training steps' own pairs (``b_simple_window``) read 0.93–2.1× the swept B_crit on
      seven tasks; times ``SGD_FACTORS`` (0.74) it came to 0.68–1.66×, the fixed-weight B_simple 1.35–4.5×; so the
      window when the report has it, else B_noise (0.57–1.36× on six tasks, as measured) when measured
      (``--hessian``);
    - Adam family: the same window B_simple, times ``ADAM_FACTORS`` (``calibration``): every noise scale fell short
      of the sweep on every Adam task (``ADAM_SHORTFALL``); times its factor the window came within 0.60–1.66× on
      six tasks, the fixed-weight B_simple (the fallback, × 2.5) within 0.53–2.1× on seven, B_pre 0.37–8.3×;
    - SGD with momentum (``results.optimizer_name``): likewise, times ``MOMENTUM_FACTORS`` (four tasks);
    - else B_simple, which every report has (on the noisy quadratic model its B_crit is within a few % of the
      exact one, tests/test_nqm.py)."""
    if cfg.noise != "auto":
        return cfg.noise, "asked with --noise"
    fam = optimizer_family(optimizer)
    if fam in SHORTFALL:
        q = "b_simple_window" if _determined(rows, "b_simple_window") >= 2 else "b_simple"
        name = "B_simple over training-step windows" if measured_as(q, rows) == "b_simple_window" else \
            "the fixed-weight B_simple"
        return q, (f"auto: {FAMILY_NAMES[fam]}; {calibration(optimizer, measured_as(q, rows)):g} × {name} came "
                   f"to {RECORD[fam][measured_as(q, rows)]} ({EVIDENCE})")
    if _determined(rows, "b_simple_window") >= 2:
        return "b_simple_window", (f"auto: plain SGD; {calibration(optimizer, 'b_simple_window'):g} × B_simple "
                                   f"over training-step windows came to {SGD_RECORD['b_simple_window']} "
                                   f"({EVIDENCE})")
    if _determined(rows, "b_noise") >= 2:
        return "b_noise", ("auto: under SGD, B_noise's path average came to 0.57–1.36× of swept critical batches on "
                           f"6 tasks (3.1× on a BatchNorm CNN), the fixed-weight B_simple 1.35–4.5× ({EVIDENCE})")
    return "b_simple", "auto: the noise scale every report has"


def log_window(report) -> int | None:
    """The window a tracker log's report was read with; None for a report of `bsprof measure`."""
    return int(report.config.get("window") or 0) or None if report.spec.get("tracker_log") else None


def _resolving(report, window: int) -> int:
    """The window ``report``'s tracker log would be read with at ``--window window`` (``log.resolving_window``)."""
    from bsprof.track.log import read_log, resolving_window

    try:
        return resolving_window(read_log(report.spec["tracker_log"]), window, report.config.get("confidence", 0.9))
    except Exception:   # the log moved or changed since: suggest the window as asked
        return window


def _loose(fit) -> str:
    """Why a fit's interval is wide inside the losses it was fitted on: an exact fit through too few points, points
    scattered about it beyond their own intervals, or the points' own wide intervals; few residual degrees of
    freedom widen each (the t quantile)."""
    k = 2 if fit.form == "power" else 3
    if not fit.n > k:
        return (f"the fit passes exactly through its {fit.n} measurements: its interval is theirs, widened by a t "
                "quantile at one degree of freedom")
    few = (f"; with {fit.n - k} residual degree{'' if fit.n - k == 1 else 's'} of freedom its interval is wide"
           if fit.n - k <= 3 else "")
    if fit.scatter > 1:
        return f"the {fit.n} measurements scatter about the fit beyond their own intervals{few}"
    return f"the {fit.n} measurements' own intervals are wide{few}"


def more_rows_fix(report) -> str:
    """How to get more measurements: a smaller ``--window`` for a tracker log, a probe training otherwise."""
    steps = report.config.get("steps_logged") if report.spec.get("tracker_log") else None
    if steps and report.measurements and not any(finite(m.loss) for m in report.measurements):
        return ("the log has no losses, and a schedule (and a critical batch over the path) follows the noise scale "
                "against the loss: pass the step's loss, tracker.step(loss=loss)")
    if steps is not None:
        window, rows, smaller = int(report.config.get("window") or 0), len(report.measurements), max(2, steps // 5)
        if steps < 4:  # no window makes two rows of two steps each
            skipped = int(report.config.get("steps_skipped") or 0)
            why = f" ({skipped} more skipped as non-finite: check the gradients, an AMP overflow?)" if skipped else ""
            return (f"log more steps: the log has {steps} usable logged step(s){why}, and a schedule needs at least "
                    "two windows of two steps")
        asked = report.config.get("window_asked")
        if asked and int(asked) < window:   # shorter windows were tried, and left |G|² unresolved
            return (f"log more steps: windows shorter than {window} steps do not resolve |G|² in this log (--window "
                    f"{asked} was widened to {window}), and its {steps} logged steps make {rows} row(s) of them")
        resolved = _resolving(report, smaller) if smaller < window else window
        if resolved >= window > smaller:   # the smaller window would be widened back: it does not resolve |G|²
            return (f"log more steps: a smaller window does not resolve |G|² in this log (--window {smaller} would "
                    f"be widened to {resolved}), and its {steps} logged steps make {rows} row(s) of {window}")
        if smaller < window:
            return (f"read the log with a smaller window: it has {steps} logged steps, --window {window} makes "
                    f"{rows} row(s); e.g. --window {smaller}")
        ok = _determined(report.measurements, "b_simple")
        return (f"{ok} of the {rows} windows of {window} steps have a determined noise scale (the others are "
                "lower bounds: |G|² not resolved within a window): log more steps, or try a wider window (fewer "
                "rows, each steadier)")
    cut = report.incomplete or {}
    if cut:   # the run trained but stopped before a second measurement
        return (f"this report's run was cut short at step {cut.get('step')} ({cut.get('reason')}) before a second "
                "measurement: measure again and let it finish, or measure more often (--measure-every N)")
    return "measure during training: `bsprof measure SPEC --steps 300` (not --steps 0)"


def usable_rows(report, cfg: ScheduleConfig) -> tuple[list[tuple[Measurement, Estimate]], str]:
    """(row, noise scale followed) for rows whose noise scale is determined and positive at a finite loss,
    sorted by step."""
    col, _ = choose_noise(cfg, report.measurements, optimizer_name(report.config))
    k = calibration(optimizer_name(report.config), measured_as(col, report.measurements))
    pairs = [(r, noise_of(r, col)) for r in report.measurements if r.b_simple.ok and finite(r.loss)]
    pairs = [(r, _scaled(e, k)) for r, e in pairs if e is not None]
    pairs = sorted(((r, e) for r, e in pairs if e is not None and finite(e.value) and e.value > 0),
                   key=lambda p: p[0].step)
    if len({r.loss for r, _ in pairs}) < 2:
        has = held(report.measurements)
        fix = (f"follow a noise scale the report holds: --noise {' | '.join(has)}" if has and col not in has
               else more_rows_fix(report))
        if col not in has and col in MEASURED_BY:
            fix = f"{MEASURED_BY[col]}; or {fix}"
        lossless = report.measurements and not any(finite(r.loss) for r in report.measurements)
        raise ReportError(f"the report has {len(pairs)} usable measurement(s) (status ok, finite {col}"
                          f"{', at a finite loss: it has no losses' if lossless else ''}); a schedule needs at least "
                          "two at different losses", fix)
    return pairs, col


def check_target(target: float, losses, fit, cfg: ScheduleConfig, first_step: float | None = None,
                 log_window: int | None = None, col: str = "b_simple_window",
                 initial: float = math.nan) -> list[str]:
    """Raise ExtrapolationError when the target is far below the measured losses; return warnings. ``first_step``:
    the step the followed noise scale starts at (0: the target is then reached before any training);
    ``log_window``: the window a tracker log was read with (None: not a log); ``col``: the noise scale followed;
    ``initial``: the run's initial loss (``run_start``; NaN: not known), a ConfigError at or above it."""
    lo, hi, start = float(np.min(losses)), float(np.max(losses)), float(losses[0])
    if finite(initial) and target >= initial:
        raise ConfigError(f"the target {target:g} is {'above' if target > initial else 'at'} the initial loss "
                          f"{initial:.4g}: there is nothing to train to it",
                          f"pass a --target-loss below {initial:.4g} (the followed noise scale was measured down to "
                          f"loss {lo:.4g})")
    if target >= start and first_step == 0:
        raise ConfigError(f"target loss {target:g} is not below the loss {start:.4g} at step 0: the run starts "
                          "there, so it is reached before any training and there is nothing to schedule",
                          f"pass a --target-loss below {start:.4g}")
    if target >= start and log_window:
        raise ConfigError(f"target loss {target:g} is not below the loss {start:.4g} where the log's noise scale "
                          f"starts (its first window of {log_window} steps, at that window's middle step)",
                          "pass a --target-loss below that loss; a target higher up is reached inside the first "
                          "window: read the log with a smaller --window, if its windows still resolve |G|² (a "
                          "window_widened note says when they do not), or log the run from earlier in training")
    if target >= start:
        higher = ("measure again with a smaller --measure-every" if cfg.noise == "b_simple" else
                  "measure again with a smaller --measure-every, or, in `bsprof schedule`, follow the fixed-weight "
                  "values, measured from step 0, with --noise b_simple")
        raise ConfigError(f"target loss {target:g} is not below the loss {start:.4g} where the followed noise scale "
                          "starts (its first usable measurement)",
                          "pass a --target-loss below that loss; for a target higher up: a training-step window "
                          f"starts at the first measurement after step 0, so {higher}")
    if target <= fit.floor:
        raise ExtrapolationError(f"the fitted noise scale diverges at loss {fit.floor:.4g} (a + b/(L − L*)); "
                                 f"target {target:g} is beyond it",
                                 "measure down to lower losses (`bsprof measure SPEC --steps N` with more steps, or "
                                 "from a later checkpoint: `--checkpoint CKPT`, your model's saved state_dict); or, "
                                 "in `bsprof schedule`, force a power law with --form power")
    if target >= lo:
        return []
    flat = math.log(hi / lo) < 1e-3   # the measured losses hardly fell: no range to measure the gap in
    gap = math.inf if flat else math.log(lo / target) / math.log(hi / lo)
    if gap < 0.005:  # the lowest loss as printed (rounded): not an extrapolation worth a warning
        return []
    msg = (f"target loss {target:g} is below the measured losses, which hardly fell ({lo:.6g} to {hi:.6g})" if flat
           else f"target loss {target:g} is below the lowest measured loss of the noise scale followed, {lo:.4g} "
                + ("(a training-step window's is the mean over its steps, above its last step's), "
                   if col == "b_simple_window" or log_window else "")
                + f"by {gap:.0%} of the measured log-loss range [{lo:.4g}, {hi:.4g}] (limit "
                f"{cfg.max_extrapolation:.0%})")
    if gap > cfg.max_extrapolation and not cfg.allow_extrapolation:
        raise ExtrapolationError(msg + ": the noise scale there is an extrapolation, not a measurement",
                                 "measure down to lower losses (`bsprof measure SPEC --steps N` with more steps, or "
                                 "from a later checkpoint: `--checkpoint CKPT`, your model's saved state_dict), then "
                                 f"schedule from that report; or take a target at or above {lo:.4g}, the lowest "
                                 "measured; or, in `bsprof schedule`, pass --allow-extrapolation")
    return [("EXTRAPOLATING FAR: " if gap > cfg.max_extrapolation else "extrapolating: ") + msg]


# -- the march ---------------------------------------------------------------------------------------------
def decompose(batch: int, world_size: int, micro_cap: int, quantum: int = 1) -> tuple[int, int, int]:
    """batch = accumulation × micro_batch × world_size (micro-batch ≤ cap; rounded up where not divisible), the
    micro-batch in whole ``quantum``s (a sequence's tokens in a tokens schedule)."""
    q = max(int(quantum), 1)
    per_rank = math.ceil(batch / q / world_size)
    cap = max(micro_cap // q, 1) if micro_cap else 0
    accumulation = math.ceil(per_rank / cap) if cap else 1
    return q * math.ceil(per_rank / accumulation), accumulation, world_size


def sequence_tokens(report, config: ScheduleConfig) -> int:
    """The rounding quantum: tokens per sequence for a tokens report (``seq_length``, else its
    tokens_per_example; 1 when neither is known), 1 for examples."""
    if report.unit != "tokens":
        return 1
    tpe = report.config.get("tokens_per_example")
    return int(config.seq_length or (tpe if finite(tpe) and tpe >= 1 else 1))


def _march(path, cfg: ScheduleConfig, batch_train: float, lr0: float, lr_rule: str, quantum: int = 1,
           lead: predict.LeadIn | None = None, clamped: dict | None = None):
    """(batch per segment, stages) along ``path``; the first stage from step 0, the start of the run: it covers
    ``lead`` (the probe's steps before the path's first point, at the first stage's batch) and steps count from
    there. ``clamped`` (filled when given): {"max_batch" | "min_batch": the furthest rounded batch the rule asked
    beyond that bound}."""
    clamped = {} if clamped is None else clamped
    rule, lr_fn = rules.RULES[cfg.rule], rules.LR_RULES[lr_rule]
    lead = lead or predict.LeadIn()
    first = float(path.loss[0])
    start_loss = lead.start_loss if finite(lead.start_loss) and lead.start_loss > first else first
    b0 = cfg.b0 or batch_train
    batches, stages = np.empty(len(path.ds_min)), []
    step, prev, last_change = 0.0, None, 0.0
    lo, hi = rules.bounds(cfg.min_batch, cfg.max_batch, cfg.multiple_of, quantum)
    for j, ds_min in enumerate(path.ds_min):
        state = rules.PathState(step, path.loss[j], path.b_noise[j], prev or b0, path.loss[0], b0)
        wish = rule(state, cfg)
        rounded = rules.round_batch(wish, cfg.multiple_of, quantum)
        if rounded > hi or rounded < lo:   # the option, not the rule, set this batch: said by ``clamped``
            key = "max_batch" if rounded > hi else "min_batch"
            clamped[key] = max(clamped.get(key, 0), rounded) if rounded > hi else min(clamped.get(key, rounded),
                                                                                       rounded)
        b = rules.apply_constraints(wish, prev, step, last_change, cfg, quantum)
        if b != prev:
            micro, acc, world = decompose(b, cfg.world_size, cfg.micro_batch, quantum)
            stages.append(Stage(int(round(step)), float(path.loss[j]) if j else start_loss, micro * acc * world,
                                float(lr_fn(lr0, b, batch_train, float(path.b_noise[j]))), micro, acc, world))
            prev, last_change = b, step
        batches[j] = stages[-1].batch_size
        if j == 0:
            step = lead.steps(batches[0])  # at the path's first point: the lead-in at the first stage's batch
        step += (1 + path.b_mid[j] / batches[j]) * ds_min
    return batches, stages


def _baselines(path, batch_train: float, cfg: ScheduleConfig, sched: dict, quantum: int = 1,
               lead: predict.LeadIn | None = None) -> list[dict]:
    """Constant batches against the schedule ``sched``: each over ``lead`` and the path, from step 0."""
    lead = lead or predict.LeadIn()
    bmax = min(cfg.max_batch, 16 * float(path.b_noise.max()))
    sizes = sorted({int(batch_train)} | {quantum * 2 ** k for k in range(0, 31)
                                         if cfg.min_batch <= quantum * 2 ** k <= bmax})
    if cfg.compare_batches:  # the user's own list, whole (a sweep's batches, to compare with)
        sizes = sorted({int(batch_train), *cfg.compare_batches})

    def constant(b):
        base = predict.constant_batch(path, b)
        return base | {"steps": base["steps"] + lead.steps(b), "examples": base["examples"] + lead.examples(b)}

    def row(b):
        base = constant(b)
        return base | {"steps_saved": 1 - sched["steps"] / base["steps"],
                       "examples_saved": 1 - sched["examples"] / base["examples"], "current": b == int(batch_train)}

    out = [row(b) for b in (sizes[-12:] if len(sizes) > 12 and not cfg.compare_batches else sizes)]
    if int(batch_train) not in [b["batch_size"] for b in out]:  # (the table shows at most 12 sizes)
        out.insert(0, row(int(batch_train)))
    return out


TIE = 0.02  # a constant batch within 2% of the schedule's predicted steps and examples is recommended instead


def recommend(prediction: dict, baselines: list[dict], unit: str = "examples", stages=(), capped: str = "",
              clamped: dict | None = None, lr_at=None) -> dict:
    """Schedule or constant batch: a constant batch that needs no more predicted steps AND no more examples
    than the schedule (one of them fewer) beats it; of those, the one with the fewest steps is recommended.
    Else a constant batch within ``TIE`` of the schedule on both (a ramp that gains less is not worth following;
    predicted steps are good to ~25%) is recommended; else the schedule.
    A schedule of one stage is a constant batch, and says so. ``capped`` (``cap_lr``'s warning): the schedule's lrs
    were capped, which the text then says, with what it cost in trained runs. Every recommendation has ``use``,
    ``batch_size``, ``steps``, ``examples``, ``lr`` and ``text``: the schedule's own predictions (batch and lr None:
    its stages carry them), or the constant batch's with its lr, ``lr_at(batch)`` (None when not given)."""
    out = _recommend(prediction, baselines, unit, stages, clamped or {}, lr_at or (lambda b: None))
    own = out["use"] == "schedule" or (len(stages) == 1 and out.get("batch_size") == stages[0].batch_size)
    if capped and own:
        out["text"] += ("; its lr is capped by --lr-cap (the rule's is untested above it), which costs steps: on "
                        "two tasks, trained, the capped schedule took 2.3–3× the steps of the same batch at its tuned "
                        "lr, the rule's own lr 1.0–1.4× (docs/science.md) — try --lr-cap 0, and confirm with "
                        "`bsprof sweep --method global`")
    return out


def _at(lr) -> str:
    return f" at lr {lr:.4g}" if lr is not None else ""


def _recommend(prediction: dict, baselines: list[dict], unit: str, stages, clamped: dict, lr_at) -> dict:
    s, e = prediction["steps"], prediction["examples"]
    better = [b for b in baselines if b["steps"] <= s and b["examples"] <= e and (b["steps"] < s or b["examples"] < e)]
    if not better and len(stages) == 1:
        b = stages[0].batch_size
        why = ("--max-batch holds the rule's batch there" if "max_batch" in clamped else
               "the smallest batch (--min-batch) holds the rule's batch there" if "min_batch" in clamped else
               "along this path the rule's batch does not move by a rounding step")
        return {"use": "constant", "batch_size": b, "steps": s, "examples": e, "lr": stages[0].lr,
                "text": f"train at a constant batch of {b:,} {unit} (lr {stages[0].lr:.4g}): {why}, so the schedule "
                        "is that constant batch"}
    tied = [b for b in baselines if b["steps"] <= s * (1 + TIE) and b["examples"] <= e * (1 + TIE)]
    if not better and tied:  # a ramp that gains less than TIE on both is not worth following
        best = min(tied, key=lambda b: (b["steps"], b["examples"]))
        lr = lr_at(best["batch_size"])
        return {"use": "constant", "batch_size": best["batch_size"], "steps": best["steps"],
                "examples": best["examples"], "lr": lr,
                "text": f"use a constant batch of {best['batch_size']:,} {unit}{_at(lr)}: predicted "
                        f"{best['steps']:,.0f} steps and {best['examples']:,.0f} {unit}, within {TIE:.0%} of the "
                        f"schedule's {s:,.0f} steps and {e:,.0f} {unit}: the schedule's ramp gains less than that, "
                        "well inside the predictions' precision"}
    if not better:
        return {"use": "schedule", "batch_size": None, "steps": s, "examples": e, "lr": None,
                "text": "follow the schedule: no constant batch is predicted to need both fewer steps and fewer "
                        f"{unit}"}
    best = min(better, key=lambda b: (b["steps"], b["examples"]))
    lr = lr_at(best["batch_size"])
    return {"use": "constant", "batch_size": best["batch_size"], "steps": best["steps"],
            "examples": best["examples"], "lr": lr,
            "text": f"use a constant batch of {best['batch_size']:,} {unit}{_at(lr)}: predicted {best['steps']:,.0f} "
                    f"steps and {best['examples']:,.0f} {unit}, fewer than the schedule's {s:,.0f} steps and "
                    f"{e:,.0f} {unit}"}


def logged_micro_batch(report, world_size: int = 1) -> tuple[int, list[str]]:
    """A tracker log's per-rank micro-batch (0 if not a log or not recorded) and notes: the schedule keeps the
    micro-batch the run trained with and raises the accumulation, as with ``--micro-batch``; the log says
    B = accumulation steps k × ranks W × micro-batch m."""
    micro = int(report.config.get("train_micro_batch") or 0) if report.spec.get("tracker_log") else 0
    if micro < 1:
        return 0, []
    k, w = int(report.config.get("accumulation_steps") or 1), int(report.config.get("world_size") or 1)
    unit = f" {report.unit}" if report.unit == "tokens" else ""
    notes = [f"micro-batch {micro}{unit} per rank (auto: the tracker log's, batch {micro * k * w:g}{unit} = {micro} "
             f"× {k} accumulation step(s) × {w} rank(s)): larger batches accumulate more micro-batches; --micro-batch "
             "to change"]
    if w > 1 and world_size != w:
        notes.append(f"the log was written on {w} ranks and this schedule splits its batches for {world_size}")
    return micro, notes


def _dataset_cap(report, config: ScheduleConfig, quantum: int) -> tuple[ScheduleConfig, list[str]]:
    """The default largest batch (65,536) held to the dataset's size, when the report knows it: a larger batch
    repeats examples within a step (a trial's schedule and constant baselines went to 32,768 on 4,096 examples)."""
    n = report.config.get("dataset_size")
    size = int(n) * (quantum if report.unit == "tokens" else 1) if n else 0
    if not size or config.max_batch != ScheduleConfig.max_batch or size >= config.max_batch or (
            report.unit == "tokens" and quantum <= 1):
        return config, []
    if size < config.min_batch:
        return config, []
    return dataclasses.replace(config, max_batch=size), [
        f"largest batch {size:,} {report.unit}: the dataset's size (a larger one repeats examples within a step; "
        "--max-batch to change it)"]


def auto_min_batch(report, batch_train: float, max_batch: int) -> tuple[int, str]:
    """The smallest batch when ``min_batch`` is 0 (auto): max(8, the probe's micro-batch), but never above the
    training batch the report was measured at (that batch is known to work) nor above ``max_batch``.

    Why: early in training the noise scale can be ~1 (a small LM at initialisation), and following it literally
    starts at batch 1 — where per-step overhead dominates and the McCandlish model, fitted on batches ≥ the
    probe's, is untested. 8 is the smallest batch bsprof's own probes use for micro-batch pairs."""
    tpe = int(report.config.get("tokens_per_example") or 1) if report.unit == "tokens" else 1
    micro = int(report.config.get("micro_batch") or 0) * tpe
    floor = max(8 * tpe, micro)
    value = max(1, min(floor, int(batch_train), max_batch))
    eight = f"8 × {tpe} tokens" if tpe > 1 else "8"
    why = f"max({eight}, probe micro-batch {micro})" if micro else eight
    limit = (f"at most the training batch {int(batch_train)}" + (f" and --max-batch {max_batch}"
                                                               if max_batch < min(floor, int(batch_train)) else ""))
    unit = " tokens" if report.unit == "tokens" else ""
    return value, f"smallest batch {value}{unit} (auto: {why}, {limit}; --min-batch to change)"


def fit_rows(rows, confidence: float = 0.9, form: str = "auto", values: str = "value"):
    """(fit of B_n(L), steps, losses) for (Measurement, Estimate) pairs by step (``usable_rows``).

    ``values`` chooses the point each measurement contributes: its "value", or the "lo" or "hi" end of its
    interval (where that end is not finite, the value); the fit's weights are the intervals' widths either way."""
    steps = np.array([r.step for r, _ in rows], float)
    loss = np.array([r.loss for r, _ in rows], float)
    v = np.array([e.value for _, e in rows], float)
    lo = np.array([e.lo for _, e in rows], float)
    hi = np.array([e.hi for _, e in rows], float)
    b = {"value": v, "lo": lo, "hi": hi}[values]
    b = np.where(np.isfinite(b) & (b > 0), b, v)
    return fit_noise_scale(loss, b, lo, hi, confidence, form), steps, loss


def noise_fit(report, config: ScheduleConfig) -> tuple[typing.Any, str, list[tuple[Measurement, Estimate]]]:
    """The fit of B_n(L) that ``plan`` follows, the noise scale it is of, and the rows it was fitted to."""
    rows, col = usable_rows(report, config)
    return fit_rows(rows, config.confidence, config.form)[0], col, rows


def noise_path(fit, steps, loss, batch_train: float, target: float):
    """The loss path (S_min and B_n on a grid) from the first measured loss down to ``target`` (``predict``): the
    one computation behind the schedule's B_crit and the report's headline critical batch."""
    meas_l, meas_s = predict.measured_minimal_steps(steps, loss, fit, batch_train)
    if len(meas_l) < 2:
        raise ReportError("the loss never decreased between measurements: no progress to extrapolate from",
                          "measure over more training steps (`bsprof measure SPEC --steps 500`)")
    return predict.loss_path(meas_l, meas_s, target, fit)


class FitBand:
    """One end ("lo" or "hi") of the fit's own interval (``fit.interval``, the delta method: it widens with the
    distance from the measured losses) below the lowest measured loss, where the fit is an extrapolation; the fit
    itself where it was measured (and where the interval is not finite)."""

    def __init__(self, fit, end: str, confidence: float = 0.9):
        self.fit, self.end, self.confidence = fit, end, confidence

    def __call__(self, loss):
        x = np.asarray(loss, float)
        out = np.array(self.fit(x), float, ndmin=1)
        flat = np.broadcast_to(x, out.shape).ravel()
        for i in np.flatnonzero(flat < self.fit.loss_min * (1 - 1e-9)):  # not the lowest loss itself
            band = self.fit.interval(float(flat[i]), self.confidence)[1 if self.end == "lo" else 2]
            if math.isfinite(band) and band > 0:
                out.flat[i] = band
        return out.reshape(np.shape(x)) if np.ndim(x) else float(out[0])


def b_crit_bounds(rows, fit, steps, loss, batch_train: float, target: float,
                  confidence: float = 0.9) -> tuple[float, float]:
    """(lo, hi) of the path's B_crit, the union of
    1. sampling: the same path integral through the lower ends and through the upper ends of every measurement's
       interval (``fit_rows`` with values "lo"/"hi", the form of ``fit`` held fixed); conservative: every
       measurement at its bound at once;
    2. extrapolation, where the path runs below the lowest measured loss: the path integral through the fit, and
       below that loss through the lower and the upper end of the fit's own interval (``FitBand``). The refits of
       (1) keep the fitted form's trend, and alone gave B_crit an interval narrower than the extrapolated noise
       scale's (252 [247, 313] beside a noise scale at the target of 321 [0.087, 1.2e6]).
    A path within the measured losses (the headline's) has (1) alone. NaN where a bound's path fails."""
    curves = [lambda end=end: fit_rows(rows, confidence, fit.form, end)[0] for end in ("lo", "hi")]
    if target < fit.loss_min * (1 - 1e-9):
        curves += [lambda end=end: FitBand(fit, end, confidence) for end in ("lo", "hi")]
    out = []
    for curve in curves:
        try:
            out.append(predict.critical_batch(noise_path(curve(), steps, loss, batch_train, target))["b_crit"])
        except (BsprofError, ValueError, ArithmeticError):
            out.append(math.nan)
    return (min(out), max(out)) if all(math.isfinite(x) for x in out) else (math.nan, math.nan)


def training_batch(report) -> tuple[float, list[str]]:
    """The probe's training batch in the report's unit (examples × tokens per example for ``--unit tokens``)."""
    if report.config.get("batch_size"):
        scale = report.config.get("tokens_per_example") if report.unit == "tokens" else None
        return float(report.config["batch_size"]) * float(scale or 1), []
    return 32.0, ["the report does not say the training batch: assumed 32 (the baselines and the lr scaling start "
                  "from it)"]


def probe_lr(report) -> float | None:
    lr = report.config.get("optimizer_lr") or report.config.get("lr")
    return float(lr) if finite(lr) and lr > 0 else None


def assumptions(report, lr0: float, lr_rule: str, batch_train: float) -> list[str]:
    """What the predicted steps rest on, with its effect (docs/science.md "Which critical batch")."""
    probed = probe_lr(report)
    rule = {"linear": "(1 + B_n/B_train)/(1 + B_n/B), linear well below the noise scale B_n and saturating above it",
            "sqrt": "√(min(B, B_n)/min(B_train, B_n)), square root up to the noise scale B_n and flat above it"
            }.get(lr_rule, f"{lr_rule}(B/B_train)")
    out = [f"predicted steps assume lr = {lr0:.4g} × {rule}, from the training batch "
           f"{batch_train:g}; measured noise scales fall 2–3× as the probe lr rises from ¼ to 1× tuned "
           "(docs/science.md): measure at the lr you will train with"]
    if probed is None:
        out.append("the report does not record the probe's lr: the noise scale's temperature (lr/B) is unknown")
    elif not 2 / 3 <= lr0 / probed <= 1.5:
        out.append(f"--lr {lr0:.4g} differs from the lr {probed:.4g} the noise scale was measured at: the noise "
                   "scale (and so every prediction) belongs to the probe's lr")
    return out


def run_start(report) -> tuple[float, float]:
    """(step, loss) where the probe's run started: a tracker log's first logged step (``start_step`` and
    ``start_loss`` in its config), else the report's earliest measurement with a finite loss (step 0 of `bsprof
    measure`: the initial weights, or those of ``--checkpoint``). NaN loss where not known."""
    cfg = report.config
    if cfg.get("start_step") is not None:
        loss = cfg.get("start_loss")
        return float(cfg["start_step"]), float(loss) if finite(loss) else math.nan
    rows = [r for r in report.measurements if finite(r.loss)]
    first = min(rows, key=lambda r: r.step) if rows else None
    return (float(first.step), float(first.loss)) if first else (0.0, math.nan)


def path_lead_in(report, steps, loss, path, batch_train: float) -> predict.LeadIn:
    """The probe's steps from ``run_start`` to the path's first point (the first point of ``predict.running_minimum``
    of the fitted rows' (steps, loss), where ``path`` starts), as ``predict.LeadIn``."""
    start_step, start_loss = run_start(report)
    first_step = float(predict.running_minimum(steps, loss)[0][0])
    return predict.lead_in(min(start_step, first_step), start_loss, first_step, path, batch_train)


def lead_in_text(lead: predict.LeadIn, batch: float, batch_train: float, start: str) -> str:
    """The assumption a schedule's step counts rest on when its path starts after the run's ``start`` (in words)."""
    return (f"steps count from step 0 of a new run, as from {start} (step {lead.start_step:g}"
            + (f", loss {lead.start_loss:.4g}" if finite(lead.start_loss) else "")
            + f"); the followed noise scale is known from step {lead.path_step:g} of that run on (loss "
            f"{lead.path_loss:.4g}, where its path starts): the {lead.probe_steps:g} steps before, at batch "
            f"{batch_train:g}, count as {lead.probe_steps:g}/(1 + B_n/{batch_train:g}) = {lead.s_min:.4g} minimal "
            f"steps with B_n held at {lead.b_noise:.4g} (its fitted value there; nothing was measured before), which "
            f"the first stage's batch {batch:g} takes in {lead.steps(batch):,.0f} steps; the later stages' start "
            "steps and the predicted steps and examples (the constant batches' too) include them")


# the report's diagnostics that bear on a plan's inputs (the lr it scales from, the windows it fits, the steps it
# counts), repeated in its notes as `check` repeats them (a trial's finding: a OneCycle log's peak lr and a widened
# window were said by `report` and `check`, not by `schedule`)
PLAN_DIAGNOSTICS = frozenset({"lr_varied", "lr_not_used", "window_widened", "window_cut_short", "one_window",
                              "few_windows", "unresolved", "skipped_steps", "torn_line", "several_runs", "resumed",
                              "loss_rose", "batch_shrunk", "clipping", "temperature", "measurement_cut_short"})


def plan(report, config: ScheduleConfig | dict) -> Schedule:
    """The batch-size (and learning-rate) schedule from the report's start to ``config.target_loss``. ``report``: a
    Report, the path of a report.json (or its folder), or a tracker's .jsonl log (read with windows of 100 steps;
    ``bsprof.track.report_from_log`` for others); ``config``: a ScheduleConfig or a dict of its fields.
    Options are checked as `bsprof schedule` checks them (``ScheduleConfig.problems``): a ConfigError."""
    report, config = _inputs(report, config)
    rows, col = usable_rows(report, config)
    batch_train, warnings = training_batch(report)
    notes = []
    if report.incomplete:  # as `check` says it
        step = report.incomplete.get("step")
        notes.append(f"the report is incomplete: its run ended early ({report.incomplete.get('reason') or 'stopped'}"
                     f"{f', at step {step}' if step is not None else ''}); planned from what was measured before")
    quantum = sequence_tokens(report, config)
    if quantum > 1:
        source = "--seq-length" if config.seq_length else "the report's tokens_per_example"
        config = dataclasses.replace(config, seq_length=quantum)
        grid = (f"multiples of {math.lcm(config.multiple_of, quantum)} tokens" if config.multiple_of else
                f"powers of two in sequences ({quantum} × 2^k tokens)")
        notes.append(f"batches are whole sequences of {quantum} tokens ({source}): {grid}")
    if config.world_size == 0:   # auto: the ranks a tracker log was written on, else one
        logged = int(report.config.get("world_size") or 1) if report.spec.get("tracker_log") else 1
        config = dataclasses.replace(config, world_size=logged)
        if logged > 1:
            notes.append(f"{logged} ranks (auto: the tracker log's; --world-size to change)")
    config, why_n = _dataset_cap(report, config, quantum)
    notes += why_n
    if config.micro_batch == 0:
        micro, why_micro = logged_micro_batch(report, config.world_size)
        config = dataclasses.replace(config, micro_batch=micro)
        notes += why_micro
    elif quantum > 1 and config.micro_batch % quantum:  # a micro-batch is whole sequences (``decompose``)
        whole = max(config.micro_batch // quantum, 1)
        notes.append(f"--micro-batch {config.micro_batch} is in tokens, not a whole number of {quantum}-token "
                     f"sequences: micro-batches are whole sequences, {whole} sequence(s) = {whole * quantum} tokens "
                     "per rank at most (pass a multiple of the sequence length)")
    min_asked = config.min_batch > 0   # an auto smallest batch holding the rule up is its purpose, not news
    if config.min_batch == 0:
        min_batch, why_min = auto_min_batch(report, batch_train, config.max_batch)
        config = dataclasses.replace(config, min_batch=min_batch)
        notes.append(why_min)
    fit, steps, loss = fit_rows(rows, config.confidence, config.form)
    try:
        warnings = check_target(config.target_loss, loss, fit, config, float(steps[0]), log_window(report),
                                col, run_start(report)[1]) + warnings
    except ExtrapolationError as e:
        reached = min((m.loss for m in report.measurements if math.isfinite(m.loss)), default=math.inf)
        if not report.spec.get("tracker_log") and col != "b_simple" and reached <= config.target_loss:
            raise ExtrapolationError(e.message, f"the run reached loss {reached:.4g}, but the followed noise scale "
                                     f"({col}) was determined only down to {float(np.min(loss)):.4g} (its later "
                                     "values are lower bounds or unresolved): follow the fixed-weight values with "
                                     "--noise b_simple, or measure again with more steps per training-step window "
                                     "(a larger --measure-every); or " + e.hint) from None
        fixed = [m.loss for m in report.measurements if math.isfinite(m.loss) and m.b_simple.ok
                 and finite(m.b_simple.value)]
        low = float(np.min(loss))
        if not report.spec.get("tracker_log") and col != "b_simple" and fixed and min(fixed) < low - 0.005 * abs(low):
            try:   # would the fixed-weight values take this target? (else they only extend the measured range)
                check_target(config.target_loss, np.array(fixed), fit, config, col="b_simple")
                follow = "follow them with --noise b_simple"
            except BsprofError:
                follow = (f"with --noise b_simple a target down to about {min(fixed):.4g} is inside the measured "
                          "range")
            raise ExtrapolationError(e.message, f"the fixed-weight values reach lower, to loss {min(fixed):.4g}, than "
                                     f"the followed noise scale ({col}, determined down to {low:.4g}; its later "
                                     f"values are lower bounds or unresolved): {follow}; or " + e.hint) from None
        if not report.spec.get("tracker_log"):
            raise
        window = report.config.get("window")   # a log's losses are window means: a smaller window reaches lower
        raise ExtrapolationError(e.message.replace("measured loss", "window-mean loss"),
                                 f"a tracker log's losses are the means over each window of {window} logged steps: "
                                 "read it with a smaller --window to reach lower (windows too short to determine "
                                 "|G|² join the next, so the gain stops there), or " + e.hint) from None
    path = noise_path(fit, steps, loss, batch_train, config.target_loss)
    lr0 = config.lr or probe_lr(report) or 0.1
    optimizer = report.config.get("optimizer")
    lr_rule = rules.resolve_lr_rule(config.lr_rule, optimizer)
    if config.rule == "mccandlish" and not config.exchange_rate:
        config, why_rate = auto_exchange_rate(path, config)
        notes.append(why_rate)
    lead = path_lead_in(report, steps, loss, path, batch_train)
    clamped: dict = {}
    batches, stages = _march(path, config, batch_train, lr0, lr_rule, quantum, lead, clamped)
    lo, hi = rules.bounds(config.min_batch, config.max_batch, config.multiple_of, quantum)
    if "max_batch" in clamped:
        held = (f"the largest batch {config.max_batch:,}, the dataset's size," if why_n
                else f"--max-batch {config.max_batch}")
        warnings.append(f"{held} held the batch at {hi:,} where the rule asked up to "
                        f"{clamped['max_batch']:,}: those stages take more steps than the rule's batch would")
    if not min_asked:
        clamped.pop("min_batch", None)
    if "min_batch" in clamped:
        warnings.append(f"the smallest batch {lo:,} (--min-batch) held the batch up where the rule asked down to "
                        f"{clamped['min_batch']:,}: those stages use more examples than the rule's batch would")
    s_cum, e_cum = predict.integrate(path, batches)
    s_cum, e_cum = s_cum + lead.steps(batches[0]), e_cum + lead.examples(batches[0])
    stages = stages[:1] + [s._replace(start_step=int(round(np.interp(s.start_loss, path.loss[::-1], s_cum[::-1]))))
                           for s in stages[1:]]
    stages, capped = cap_lr(stages, lr0, config.lr_cap)
    bt, bt_lo, bt_hi = fit.interval(config.target_loss, config.confidence)
    pred = {"steps": float(s_cum[-1]), "examples": float(e_cum[-1]), **predict.critical_batch(path),
            **dict(zip(("b_crit_lo", "b_crit_hi"),
                       b_crit_bounds(rows, fit, steps, loss, batch_train, config.target_loss, config.confidence))),
            "b_noise_target": bt, "b_noise_target_lo": bt_lo, "b_noise_target_hi": bt_hi,
            "lead_in": {**dataclasses.asdict(lead), "steps": float(lead.steps(batches[0])),
                        "examples": float(lead.examples(batches[0]))}}
    if not (math.isfinite(pred["b_crit_lo"]) and math.isfinite(pred["b_crit_hi"])):
        notes.append(f"B_crit over the path has no interval: through an end of the measurements' intervals or of the "
                     f"fit's extrapolation (the noise scale at the target: [{number(bt_lo)}, {number(bt_hi)}]) the "
                     "path integral does not hold (the noise scale falls to zero or the loss is not reached along "
                     "it); the value is the fit's alone: aim at a loss the run measured, or measure further")
    if math.isfinite(bt_lo) and bt_lo > 0 and bt_hi / bt_lo > 100:
        known = (f"the noise scale at the target is known only to within [{number(bt_lo)}, {number(bt_hi)}] "
                 f"(×{bt_hi / bt_lo:.3g}): ")
        if config.target_loss < fit.loss_min:
            warnings.append(known + "the fit is steep at the end of the measured path, so the last stages' batches "
                            "rest on little; a target within the measured losses, or a longer run, makes them firmer")
        else:  # inside the measured losses: the fit itself is loose
            warnings.append(known + f"{_loose(fit)}, so the stages' batches rest on little; more measurements along "
                            "the run (a smaller --measure-every, or more --steps) make them firmer")
    family_name = optimizer_name(report.config)
    why = choose_noise(config, report.measurements, family_name)[1]
    quantity = measured_as(col, [r for r, _ in rows])
    if quantity != col:  # a tracker log's rows
        why = "a tracker log: B_simple over training-step windows"
    notes.insert(0, f"noise scale followed: {col} ({why}); fit {fit.form}; lr rule {lr_rule} "
                    f"(optimizer {optimizer or 'SGD'})")
    fam = optimizer_family(family_name)
    if fam == "sgd" and calibration(family_name, quantity) != 1:
        notes.append(f"under plain SGD the schedule follows {calibration(family_name, quantity):g} × the measured "
                     f"{col}: measured as it is, it read {SGD_EXCESS[quantity]} of swept "
                     "critical batches (it overstates the curvature-weighted B_noise; docs/science.md §6); B_crit's "
                     "interval is the statistical error only, not this factor's spread: confirm with `bsprof sweep "
                     "--method global`")
    if fam in SHORTFALL:
        short = SHORTFALL[fam]
        notes.append(f"under {'the Adam family' if fam == 'adam' else 'SGD with momentum'} the schedule follows "
                     f"{calibration(family_name, quantity):g} × the measured {col}: measured the plain-SGD way, the "
                     f"noise scale fell short of swept critical batches on every such task we checked, "
                     f"{short.get(quantity, short['b_simple'])} (docs/science.md §6); B_crit's interval is the "
                     "statistical error only (sampling, and the fit's extrapolation below the measured losses), not "
                     "this factor's spread: confirm with `bsprof sweep --method global`")
    assumed = assumptions(report, lr0, lr_rule, batch_train)
    if lead.probe_steps > 0:
        start = ("the logged run's first step" if report.spec.get("tracker_log") else
                 "the probe's --checkpoint weights" if report.config.get("checkpoint") else
                 "the probe's initial weights")
        assumed.append(lead_in_text(lead, batches[0], batch_train, start))
    if capped:
        warnings.append(capped)
        assumed.append(capped)
    elif extrapolated_lr(stages, lr0):
        assumed.append(extrapolated_lr(stages, lr0))
    baselines = _baselines(path, batch_train, config, pred, quantum, lead)
    notes += [d["message"] for d in report.diagnostics
              if isinstance(d, dict) and d.get("code") in PLAN_DIAGNOSTICS and d.get("message")]
    return Schedule(stages=stages, target_loss=config.target_loss, unit=report.unit, rule=config.rule,
                    lr_rule=lr_rule, prediction=pred, baselines=baselines,
                    fit=fit.to_dict(), warnings=warnings, notes=notes,
                    config={**asdict(config), "noise_followed": quantity,
                            "noise_factor": calibration(family_name, quantity)},
                    batch_train=batch_train, lr_train=lr0, assumptions=assumed,
                    recommendation=recommend(pred, baselines, report.unit, stages, capped, clamped,
                                             constant_lr(pred, lr0, lr_rule, batch_train, config.lr_cap)),
                    spec=dict(report.spec or {}))


def _inputs(report, config) -> tuple:
    """(Report, ScheduleConfig) from what ``plan`` was given, or a ConfigError/ReportError naming the problem."""
    from pathlib import Path

    from bsprof.output.report import Report

    if isinstance(report, (str, Path)) and Path(report).suffix == ".jsonl":   # a tracker's log, as the CLI takes
        from bsprof.track.log import report_from_log

        report = report_from_log(report)   # `bsprof schedule`'s windows (``log.auto_window``)
    elif isinstance(report, (str, Path)):
        path = Path(report)
        report = Report.from_json(path / "report.json" if path.is_dir() else path)
    elif not isinstance(report, Report):
        raise ConfigError(f"plan() needs a Report (or a report.json or tracker log path), got "
                          f"{type(report).__name__}", "pass bsprof.measure(...)'s report, Report.from_json(path), "
                          "a tracker's .jsonl log, or bsprof.track.report_from_log(path, window=...)")
    if isinstance(config, dict):
        unknown = sorted(set(config) - {f.name for f in dataclasses.fields(ScheduleConfig)})
        if unknown:
            raise ConfigError(f"unknown schedule option(s): {', '.join(unknown)}",
                              "see bsprof.schedule.ScheduleConfig (the options of `bsprof schedule`)")
        config = ScheduleConfig(**config)
    elif not isinstance(config, ScheduleConfig):
        raise ConfigError(f"plan() needs a ScheduleConfig (or a dict of its fields), got {type(config).__name__}",
                          "pass ScheduleConfig(target_loss=...)")
    problems = config.problems()
    if problems:
        raise ConfigError("bad schedule options:\n  - " + "\n  - ".join(problems),
                          "see bsprof.schedule.ScheduleConfig (the options of `bsprof schedule`)")
    return report, config


def auto_exchange_rate(path, config: ScheduleConfig) -> tuple[ScheduleConfig, str]:
    """The McCandlish rule's exchange rate r when not given: r = B_crit over the path (E_min/S_min, eq. 2.12).

    Why. B = √(r·B_n(L)) minimises S + E/r (App. D). With r = B_crit = ∫B_n ds_min/∫ds_min, Cauchy–Schwarz gives
    S = S_min + ∫√(B_n/B_crit) ds_min ≤ 2·S_min and E = E_min + ∫√(B_crit·B_n) ds_min ≤ 2·E_min: no more steps and
    no more examples than the constant batch B_crit (which takes exactly 2·S_min and 2·E_min), strictly fewer when
    B_n varies along the path. Since a constant batch B costs S = S_min(1 + B_crit/B), E = E_min(1 + B/B_crit),
    every constant using no more examples than the schedule has B ≤ B_crit and so needs S ≥ 2·S_min ≥ the
    schedule's: in the model the schedule beats every constant batch that uses no more examples. Following B_n
    itself (rule ``noise``) costs exactly 2·S_min and 2·E_min, the same as the constant B_crit."""
    r = predict.critical_batch(path)["b_crit"]
    if not (finite(r) and r > 0):
        r = float(np.median(path.b_noise))
    return (dataclasses.replace(config, exchange_rate=float(r)),
            f"rule mccandlish: B = √(r·B_n(L)) with r = B_crit over the path = {r:.4g} (auto): predicted to need no "
            "more steps and examples than any constant batch using no more examples (docs/science.md §4)")


def constant_lr(prediction: dict, lr0: float, lr_rule: str, batch_train: float, cap: float = 0.0):
    """batch → the lr rule's lr for a constant batch over the whole path: at B_n = the path's B_crit (the noise
    scale a constant batch meets on average, McCandlish eq. 2.12), at most cap × lr0 (cap 0: no cap); None
    without a B_crit."""
    b_n, lr_fn = prediction.get("b_crit", math.nan), rules.LR_RULES[lr_rule]

    def lr_at(batch: float) -> float | None:
        if not (finite(b_n) and b_n > 0):
            return None
        lr = float(lr_fn(lr0, batch, batch_train, float(b_n)))
        return min(lr, cap * lr0) if cap else lr
    return lr_at


def extrapolated_lr(stages: list[Stage], lr0: float) -> str:
    """``rules.extrapolation_note`` for the stage of the highest lr, naming its steps and where the lr first rises
    above 2 × lr0 ("" when none does)."""
    top = max(stages, key=lambda s: s.lr, default=None)
    if top is None:
        return ""
    first = next((s for s in stages if s.lr > rules.EXTRAPOLATED * lr0), top)
    stage = f"the stage from step {top.start_step:,}" + (
        "" if first is top else f"; above {rules.EXTRAPOLATED:g} × from step {first.start_step:,}, batch "
                                f"{first.batch_size:,}, on")
    return rules.extrapolation_note(top.lr, top.batch_size, lr0, stage, f"the steps from {first.start_step:,} on")


def cap_lr(stages: list[Stage], lr0: float, cap: float) -> tuple[list[Stage], str]:
    """Stages with lr ≤ cap·lr0 (cap 0, the default: none), and a warning naming the capped stages ("" when none).

    Capped stages take more steps than predicted (the prediction assumes the rule's lr)."""
    if not cap:
        return stages, ""
    top = cap * lr0
    hit = [s for s in stages if s.lr > top * (1 + 1e-9)]
    if not hit:
        return stages, ""
    worst = max(hit, key=lambda s: s.lr)
    return ([s._replace(lr=min(s.lr, top)) for s in stages],
            f"lr capped at {top:.4g} ({cap:g} × the training lr {lr0:.4g}) from batch {hit[0].batch_size:,} on "
            f"(the rule asked "
            f"up to {worst.lr:.4g} at batch {worst.batch_size:,}): lrs above what was probed are untested, and "
            "those stages will take more steps than predicted; confirm with `bsprof sweep --method global`, or "
            "--lr-cap 0 to lift "
            "(the default)")
