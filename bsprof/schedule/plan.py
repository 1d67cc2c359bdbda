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

import math
import typing
from dataclasses import asdict, dataclass

import numpy as np

from bsprof.errors import BsprofError, ConfigError, ReportError, short
from bsprof.results import Estimate, Measurement, finite, is_adam_family
from bsprof.schedule import predict, rules
from bsprof.schedule.fit import NoiseFit, fit_noise_scale
from bsprof.schedule.stages import Schedule, Stage


class ExtrapolationError(BsprofError):
    """The target loss lies far outside the losses the noise scale was measured at."""


@dataclass(frozen=True)
class ScheduleConfig:
    """Options of `bsprof schedule`. Batch sizes in the report's unit."""

    target_loss: float = 0.0
    rule: str = "noise"              # noise, mccandlish, adadamp, padadamp, geodamp, doubling
    exchange_rate: float = 1024.0    # mccandlish: examples one step is worth
    f_star: float = 0.0              # adadamp: the optimal loss F*
    b0: int = 0                      # initial batch of adadamp/padadamp/geodamp/doubling (0: training batch)
    rate: float = 1.0                # padadamp: ρ examples per step
    factor: float = 2.0              # geodamp: multiply the batch by this ...
    every: int = 1000                # ... every this many steps (a few epochs)
    multiple_of: int = 0             # round to multiples of this (0: powers of two)
    min_batch: int = 1
    max_batch: int = 65536
    dwell: int = 50                  # minimum steps between two batch changes
    lr_rule: str = "auto"            # linear (SGD), sqrt (Adam), none, auto (by the report's optimizer)
    lr: typing.Optional[float] = None  # learning rate at the training batch (default: the report's)
    world_size: int = 1              # data-parallel ranks
    micro_batch: int = 0             # largest per-rank micro-batch (0: no limit, no accumulation)
    noise: str = "auto"              # noise scale to follow: auto, b_simple, b_simple_window, b_noise, b_pre
    form: str = "auto"               # fit of B_n(L): auto (AIC), power, hyperbola
    allow_extrapolation: bool = False
    max_extrapolation: float = 0.5
    confidence: float = 0.9

    def problems(self) -> list[str]:
        p = []
        if not self.target_loss > 0:
            p.append(f"target_loss must be positive (got {self.target_loss})")
        for name, allowed in (("rule", tuple(rules.RULES)), ("lr_rule", ("auto", *rules.LR_RULES)),
                              ("noise", ("auto", *NOISES)), ("form", ("auto", "power", "hyperbola"))):
            if getattr(self, name) not in allowed:
                p.append(f"{name} must be one of {', '.join(allowed)} (got {short(getattr(self, name))})")
        for name in ("min_batch", "max_batch", "world_size", "every"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("multiple_of", "micro_batch", "dwell", "b0"):
            if getattr(self, name) < 0:
                p.append(f"{name} must be 0 or more (got {getattr(self, name)})")
        if self.min_batch > self.max_batch:
            p.append(f"min_batch {self.min_batch} exceeds max_batch {self.max_batch}")
        if self.exchange_rate <= 0 or self.factor < 1 or self.rate < 0 or self.max_extrapolation < 0:
            p.append("exchange_rate must be > 0, factor ≥ 1, rate ≥ 0, max_extrapolation ≥ 0")
        if self.lr is not None and self.lr <= 0:
            p.append(f"lr must be positive (got {self.lr})")
        return p


# -- inputs ------------------------------------------------------------------------------------------------
NOISES = ("b_simple", "b_simple_window", "b_noise", "b_pre")  # every noise scale a report row may hold
EVIDENCE = "scripts/results/critical_batch_evidence.md"


def _determined(rows, col: str) -> int:
    return sum(1 for r in rows if getattr(r, col) is not None and getattr(r, col).ok and getattr(r, col).value > 0)


def choose_noise(cfg: ScheduleConfig, rows, optimizer: str | None) -> tuple[str, str]:
    """The noise scale to follow and why. ``auto`` goes by measured evidence (``EVIDENCE``: global sweeps with
    the lr tuned per batch, against the B_crit over the path each quantity predicts):
    - SGD: B_simple from the training steps' own pairs (``b_simple_window``) predicted 0.96× and 1.32× the swept
      B_crit on two tasks, fixed-weight B_simple 1.96× and 2.89×; so the window when the report has it;
    - Adam family: every quantity fell short (0.33–0.50× on one task); B_pre, the preconditioned noise scale
      Adam's update sees, when measured;
    - else B_simple, which every report has (on the noisy quadratic model its B_crit is within a few % of the
      exact one, tests/test_nqm.py)."""
    if cfg.noise != "auto":
        return cfg.noise, "asked with --noise"
    if is_adam_family(optimizer) and _determined(rows, "b_pre") >= 2:
        return "b_pre", f"auto: Adam-family optimizer (measured under Adam all noise scales fell short, {EVIDENCE})"
    if not is_adam_family(optimizer) and _determined(rows, "b_simple_window") >= 2:
        return "b_simple_window", ("auto: B_simple from the training steps predicted swept critical batches "
                                   f"within 0.96–1.32× under SGD, fixed-weight B_simple 1.96–2.89× ({EVIDENCE})")
    return "b_simple", "auto: the noise scale every report has"


def usable_rows(report, cfg: ScheduleConfig) -> tuple[list[tuple[Measurement, Estimate]], str]:
    """(row, noise scale followed) for rows whose noise scale is determined and positive at a finite loss,
    sorted by step."""
    col, _ = choose_noise(cfg, report.measurements, report.config.get("optimizer"))
    pairs = [(r, getattr(r, col)) for r in report.measurements if r.b_simple.ok and finite(r.loss)]
    pairs = sorted(((r, e) for r, e in pairs if e is not None and finite(e.value) and e.value > 0),
                   key=lambda p: p[0].step)
    if len({r.loss for r, _ in pairs}) < 2:
        raise ReportError(f"the report has {len(pairs)} usable measurement(s) (status ok, finite {col}); "
                          "a schedule needs at least two at different losses",
                          "measure during training: `bsprof measure SPEC --steps 300` (not --steps 0)")
    return pairs, col


def noise_fit(report, config: ScheduleConfig) -> tuple[NoiseFit, str, list[tuple[Measurement, Estimate]]]:
    """The fit of B_n(L) that ``plan`` follows, the noise scale it is of, and the rows it was fitted to."""
    rows, col = usable_rows(report, config)
    loss = np.array([r.loss for r, _ in rows], float)
    b, lo, hi = (np.array([getattr(e, k) for _, e in rows], float) for k in ("value", "lo", "hi"))
    return fit_noise_scale(loss, b, lo, hi, config.confidence, config.form), col, rows


def check_target(target: float, losses, fit, cfg: ScheduleConfig) -> list[str]:
    """Raise ExtrapolationError when the target is far below the measured losses; return warnings."""
    lo, hi, start = float(np.min(losses)), float(np.max(losses)), float(losses[0])
    if target >= start:
        raise ConfigError(f"target loss {target:g} is not below the loss {start:g} at the first measurement",
                          "pass a --target-loss below the measured losses")
    if target <= fit.floor:
        raise ExtrapolationError(f"the fitted noise scale diverges at loss {fit.floor:.4g} (a + b/(L − L*)); "
                                 f"target {target:g} is beyond it",
                                 "measure at a later checkpoint (`bsprof measure SPEC --checkpoint CKPT`) or "
                                 "force a power law with --form power")
    if target >= lo:
        return []
    gap = math.log(lo / target) / max(math.log(hi / lo), 1e-12)
    msg = (f"target loss {target:g} is below the lowest measured loss {lo:g} by {gap:.0%} of the measured "
           f"log-loss range [{lo:g}, {hi:g}] (limit {cfg.max_extrapolation:.0%})")
    if gap > cfg.max_extrapolation and not cfg.allow_extrapolation:
        raise ExtrapolationError(msg + ": the noise scale there is an extrapolation, not a measurement",
                                 "measure at a later checkpoint: `bsprof measure SPEC --checkpoint CKPT`, then "
                                 "schedule from that report; or pass --allow-extrapolation")
    return [("EXTRAPOLATING FAR: " if gap > cfg.max_extrapolation else "extrapolating: ") + msg]


# -- the march ---------------------------------------------------------------------------------------------
def decompose(batch: int, world_size: int, micro_cap: int) -> tuple[int, int, int]:
    """batch = accumulation × micro_batch × world_size (micro-batch ≤ cap; rounded up where not divisible)."""
    per_rank = math.ceil(batch / world_size)
    accumulation = math.ceil(per_rank / micro_cap) if micro_cap else 1
    return math.ceil(per_rank / accumulation), accumulation, world_size


def _march(path, cfg: ScheduleConfig, batch_train: float, lr0: float, lr_rule: str):
    rule, lr_fn = rules.RULES[cfg.rule], rules.LR_RULES[lr_rule]
    b0 = cfg.b0 or batch_train
    batches, stages = np.empty(len(path.ds_min)), []
    step, prev, last_change = 0.0, None, 0.0
    for j, ds_min in enumerate(path.ds_min):
        state = rules.PathState(step, path.loss[j], path.b_noise[j], prev or b0, path.loss[0], b0)
        b = rules.apply_constraints(rule(state, cfg), prev, step, last_change, cfg)
        if b != prev:
            micro, acc, world = decompose(b, cfg.world_size, cfg.micro_batch)
            stages.append(Stage(int(round(step)), float(path.loss[j]), micro * acc * world,
                                float(lr_fn(lr0, b, batch_train, float(path.b_noise[j]))), micro, acc, world))
            prev, last_change = b, step
        batches[j] = stages[-1].batch_size
        step += (1 + path.b_mid[j] / batches[j]) * ds_min
    return batches, stages


def _baselines(path, batch_train: float, cfg: ScheduleConfig, sched: dict) -> list[dict]:
    bmax = min(cfg.max_batch, 16 * float(path.b_noise.max()))
    sizes = sorted({int(batch_train)} | {2 ** k for k in range(0, 31) if cfg.min_batch <= 2 ** k <= bmax})
    out = []
    for b in sizes[-12:] if len(sizes) > 12 else sizes:
        base = predict.constant_batch(path, b)
        base["steps_saved"] = 1 - sched["steps"] / base["steps"]
        base["examples_saved"] = 1 - sched["examples"] / base["examples"]
        base["current"] = b == int(batch_train)
        out.append(base)
    if int(batch_train) not in [b["batch_size"] for b in out]:
        out.insert(0, predict.constant_batch(path, batch_train) | {"current": True})
    return out


def plan(report, config: ScheduleConfig) -> Schedule:
    """The batch-size (and learning-rate) schedule from the report's start to ``config.target_loss``."""
    fit, col, rows = noise_fit(report, config)
    steps = np.array([r.step for r, _ in rows], float)
    loss = np.array([r.loss for r, _ in rows], float)
    warnings = check_target(config.target_loss, loss, fit, config)
    batch_train = float(report.config.get("batch_size") or 32)
    if not report.config.get("batch_size"):
        warnings.append("the report does not say the training batch: assumed 32 (the baselines and the lr "
                        "scaling start from it)")
    lr0 = config.lr or float(report.config.get("optimizer_lr") or report.config.get("lr") or 0.1)
    optimizer = report.config.get("optimizer")
    lr_rule = rules.resolve_lr_rule(config.lr_rule, optimizer)
    meas_l, meas_s = predict.measured_minimal_steps(steps, loss, fit, batch_train)
    if len(meas_l) < 2:
        raise ReportError("the loss never decreased between measurements: no progress to extrapolate from",
                          "measure over more training steps (`bsprof measure SPEC --steps 500`)")
    path = predict.loss_path(meas_l, meas_s, config.target_loss, fit)
    batches, stages = _march(path, config, batch_train, lr0, lr_rule)
    s_cum, e_cum = predict.integrate(path, batches)
    stages = [s._replace(start_step=int(round(np.interp(s.start_loss, path.loss[::-1], s_cum[::-1]))))
              for s in stages]
    bt, bt_lo, bt_hi = fit.interval(config.target_loss, config.confidence)
    pred = {"steps": float(s_cum[-1]), "examples": float(e_cum[-1]), **predict.critical_batch(path),
            "b_noise_target": bt, "b_noise_target_lo": bt_lo, "b_noise_target_hi": bt_hi}
    why = choose_noise(config, report.measurements, optimizer)[1]
    notes = [f"noise scale followed: {col} ({why}); fit {fit.form}; lr rule {lr_rule} "
             f"(optimizer {optimizer or 'SGD'})"]
    if is_adam_family(optimizer) and col == "b_simple":
        notes.append("under Adam, B_simple tends to underestimate the critical batch (Merrill et al. 2025)")
    return Schedule(stages=stages, target_loss=config.target_loss, unit=report.unit, rule=config.rule,
                    lr_rule=lr_rule, prediction=pred, baselines=_baselines(path, batch_train, config, pred),
                    fit=fit.to_dict(), warnings=warnings, notes=notes, config=asdict(config),
                    batch_train=batch_train, lr_train=lr0)
