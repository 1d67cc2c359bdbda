"""The library calls: ``bsprof.sweep.local`` and ``bsprof.sweep.global_`` (``bsprof sweep`` is one of them).

    result = bsprof.sweep.local("model.py", base_batch=32, doublings=4, examples=20_000)
    result = bsprof.sweep.global_("model.py", target_loss=0.2, batches=[16, 32, 64, 128], lr_grid=[0.5, 1, 2])
    result.critical          # Estimate: local [largest passing B, first failing B]; global B_crit [bootstrap]
    result.to_dict()         # what sweep.json holds
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from bsprof.engine.rng import caller_rng, seed_all
from bsprof.engine.spec import Spec, load_spec
from bsprof.errors import BsprofError, ConfigError, SpecError
from bsprof.results import Estimate, Status, finite
from bsprof.sweep import branches as eng
from bsprof.sweep import summary
from bsprof.sweep.config import EVAL_EXAMPLES, SweepConfig, sweep_config
from bsprof.sweep.result import Comparison, Compute, SweepResult

ROSE = 1.1  # a branch whose final evaluation loss is this much above its lowest: the loss fell and rose again
FEW_STEPS = 5  # a fitted S_min below this many steps: the fit rests on batches timed in a few whole steps


def _spec(spec, model, dataset, loss, optimizer, collate) -> Spec:
    given = [k for k, v in (("model", model), ("dataset", dataset), ("loss", loss)) if v is not None]
    if spec is None:
        if len(given) < 3:
            raise SpecError("a sweep needs a spec file or model, dataset and loss",
                            "pass bsprof.sweep.local('model.py', …) or model=net, dataset=data, loss=fn")
        return Spec.of(model, dataset, loss, optimizer, collate)
    if given:
        raise SpecError("got both a spec and objects", "pass either a spec file or model=, dataset=, loss=")
    return spec if isinstance(spec, Spec) else load_spec(spec)


def comparison(report, critical: Estimate, target_loss: float | None = None) -> Comparison:
    """A bsprof report (path or ``Report``) beside the sweep: its headline critical batch (to ``target_loss`` when
    given and reachable, else to its lowest loss), its summary B_simple (and B_pre, B_noise), the ratios of the
    sweep's critical batch to both, and the measurement's cost: seconds from ``report.timing`` (measuring, B_pre and
    B_noise included, and choosing the probe), else summed over ``report.measurements``; examples of B_simple's
    draws. The sweep's batches are examples: a ``--unit tokens`` report's figures are divided by its
    tokens_per_example."""
    from bsprof.output.report import Report

    where = str(report) if not isinstance(report, Report) else "(report object)"
    if not isinstance(report, Report):
        path = Path(report)
        report = Report.from_json(path / "report.json" if path.is_dir() else path)
    tpe = _tokens_per_example(report, where)
    s = report.summary
    b_simple, b_pre, b_noise = (e.scaled(1 / tpe) if e is not None else None for e in (s.b_simple, s.b_pre, s.b_noise))
    value = critical.value if math.isfinite(critical.value) else critical.lo
    ratio = value / b_simple.value if b_simple.ok and b_simple.value > 0 else math.nan
    ms = report.measurements
    timing = report.timing or {}
    seconds = (float(timing["measuring_s"]) + float(timing.get("choosing_s") or 0.0) if timing.get("measuring_s")
               is not None else sum(m.seconds for m in ms if math.isfinite(m.seconds)))
    to = ""
    try:
        head = report.summary_at(target_loss).critical_batch if target_loss else s.critical_batch
        to = f"to the sweep's target loss {target_loss:g}" if target_loss else ""
    except BsprofError:   # the sweep's target lies far below the report's losses: the headline to its lowest
        head = s.critical_batch
        to = (f"over the report's whole path, as `bsprof report` prints it: the sweep's target loss {target_loss:g} "
              "is outside the path its noise scale was measured along")
    head = head.scaled(1 / tpe) if head is not None else None
    lr, batch = report.config.get("optimizer_lr") or report.config.get("lr"), report.config.get("batch_size")
    return Comparison(where, b_simple, b_pre, b_noise, ratio, int(sum(m.examples for m in ms)),
                      round(seconds, 3), int(ms[-1].examples_seen) if ms else 0, head,
                      _ratio(value, head), tpe, float(lr) if finite(lr) else None,
                      float(batch) if finite(batch) else None, critical_batch_to=to)


INTERRUPTED_N_BOOT = 200  # bootstrap fits of the partial result written on Ctrl-C (out in a fraction of a second)
IN_PROGRESS = "in progress"  # the files written after each branch, until the last one: a killed run leaves them so
LR_APART = 2.0  # the probe's lr this far from the sweep's tuned one (either way): the comparison says so


def lr_note(comp: Comparison | None, summaries) -> str | None:
    """A note when the report's probe trained at another lr than the sweep tuned at its batch: the noise scale
    depends on lr/B (McCandlish App. C; on digits every estimate fell 2–3× as the probe lr rose from ¼ to 1× the
    tuned lr, docs/science.md §6), so the comparison then mixes two temperatures."""
    if comp is None or not comp.probe_lr or not comp.probe_batch:
        return None
    tuned = [s for s in summaries if s.batch == comp.probe_batch and math.isfinite(s.steps)]
    if not tuned:
        return None
    ratio = comp.probe_lr / tuned[0].lr
    if 1 / LR_APART <= ratio <= LR_APART:
        return None
    return (f"the report's probe trained at lr {comp.probe_lr:.3g}, {ratio:.2g}× the lr this sweep tuned at its "
            f"batch {comp.probe_batch:g} ({tuned[0].lr:.3g}): the noise scale depends on lr/B, so the estimate and "
            "the sweep are at different temperatures; measure again at the tuned lr to compare (docs/science.md §6)")


def _tokens_per_example(report, where: str) -> float:
    """What divides the report's batch figures into examples (the sweep's unit): 1, or its tokens per example."""
    if report.unit != "tokens":
        return 1.0
    tpe = report.config.get("tokens_per_example")
    if not (finite(tpe) and tpe > 0):
        raise ConfigError(f"--report {where} is in tokens but does not record tokens_per_example, and the sweep's "
                          "batches are examples", "compare with a report of `bsprof measure --unit tokens` (it records "
                          "TOKENS_PER_EXAMPLE), or one in examples (a tracker log: log in examples or sequences)")
    return float(tpe)


def _ratio(value: float, est: Estimate | None) -> float:
    return value / est.value if est is not None and est.ok and est.value > 0 and math.isfinite(value) else math.nan


def _report_noise(report) -> float | None:
    """The noise scale the linear lr rule saturates at: the report's headline critical batch (the path average the
    schedule follows), else its latest B_simple."""
    if report is None:
        return None
    c = comparison(report, Estimate.none())
    if c.critical_batch is not None and c.critical_batch.ok and c.critical_batch.value > 0:
        return c.critical_batch.value
    return c.b_simple.value if c.b_simple.ok else None


def _notes(setup, cfg: SweepConfig, est: Estimate, summaries, extra: list[str]) -> tuple[str, ...]:
    bend = "flat" if setup.rule == "sqrt" else "saturating"
    notes = [f"learning rate: {setup.optimizer} at lr {setup.base_lr:g} for batch {cfg.batch_sizes()[0]}, scaled "
             f"by the {setup.rule} rule" + (f" ({bend} above the noise scale ≈ {setup.b_noise:.3g} examples, "
                                            "the report's critical batch)" if setup.b_noise else "")
             + (f" × grid {list(cfg.lr_grid)}" if len(cfg.lr_grid) > 1 else "")]
    notes.append(_evaluation(setup, cfg, summaries))
    if 0 < setup.n_data <= (cfg.eval_examples or 0):   # asked for as many as there are, or more
        notes.append(f"--eval-examples {cfg.eval_examples} is not below the dataset's {setup.n_data} examples: all "
                     "are evaluated" + (", and none can be held out of training; pass fewer --eval-examples for a "
                                        "held-out evaluation" if cfg.holdout else ""))
    if setup.spec.optimizer is not None and cfg.lr is not None and setup.base_lr != cfg.lr:
        notes.append(f"--lr {cfg.lr:g} was not used: the spec's optimizer() sets its own learning rate "
                     f"({setup.base_lr:g}); change it there")
    edges = summary.grid_edges(summaries, cfg.lr_grid)
    if edges:
        notes.append(f"the best lr is at an end of the grid for batch {', '.join(map(str, edges))}: the optimum may "
                     f"lie outside it; widen --lr-grid{_wider(summaries, edges, cfg.lr_grid)}")
    return tuple(notes + extra)


def _wider(summaries, edges: list[int], grid) -> str:
    """An example of the wider grid: doubled past the end(s) the best lrs sat at (a user asked for a value)."""
    ends = {s.lr_multiplier for s in summaries if s.batch in edges}
    lo, hi = min(grid), max(grid)
    wider = sorted({*grid, *((hi * 2, hi * 4) if hi in ends else ()), *((lo / 2, lo / 4) if lo in ends else ())})
    return f" (e.g. --lr-grid {','.join(f'{m:g}' for m in wider)})" if len(wider) > len(set(grid)) else ""


def _evaluation(setup, cfg: SweepConfig, summaries) -> str:
    """The evaluation note: the draw (capped from the default when it would hold out more than half the dataset),
    and when held out, the training examples left and the passes over them per branch."""
    text = f"evaluation: a fixed draw of {setup.n_eval:,} examples"
    if getattr(setup, "eval_capped", False):
        text += (f" (the default {EVAL_EXAMPLES:,} would hold out more than half of the dataset's {setup.n_data:,}: "
                 "capped at a quarter; pass --eval-examples N to choose)")
    if not setup.held_out:
        return text + " (also used for training)"
    n_train = setup.n_data - setup.n_eval
    text += f", held out of training: {n_train:,} examples left to train on"
    if n_train <= 0:
        return text
    if cfg.method == "local":
        return text + f", {cfg.branch_examples() / n_train:.2g} passes over them per branch"
    seen = [s.examples / n_train for s in summaries if math.isfinite(s.examples)]
    if seen:
        lo, hi = min(seen), max(seen)
        text += (f", {lo:.2g}–{hi:.2g}" if f"{lo:.2g}" != f"{hi:.2g}" else f", {lo:.2g}") + \
            " passes over them per branch to the target (at the best lr)"
    return text


INTERVAL_REACH = 100  # an interval's end beyond this × the largest swept batch (or the training set) is no bound


def interval_limit(batches, n_train: int) -> float:
    """Where the fit's intervals stop meaning anything: a batch larger than the training set cannot be run, and far
    beyond the swept batches S(B) is pure extrapolation; min(INTERVAL_REACH × the largest batch, training set)."""
    reach = INTERVAL_REACH * max(batches)
    return float(min(reach, n_train) if n_train > 0 else reach)


def _data(setup, cfg: SweepConfig) -> dict | None:
    """The dataset's examples, the evaluation draw's, the training set's, and the intervals' limit (sweep.json)."""
    n = getattr(setup, "n_data", 0)
    if not n:
        return None
    n_train = n - setup.n_eval if setup.held_out else n
    return {"examples": n, "eval": setup.n_eval, "train": n_train, "held_out": setup.held_out,
            "eval_capped": bool(getattr(setup, "eval_capped", False)),
            "interval_limit": interval_limit(cfg.batch_sizes(), n_train)}


def _warnings(setup, cfg: SweepConfig) -> tuple[str, ...]:
    """What puts the answer in doubt, printed beside it: a report or schedule from an edited spec (``prepare``'s
    checks), a global sweep with one lr (McCandlish eq. 2.11 takes S(B) at the best lr of each batch)."""
    out = list(getattr(setup, "warnings", ()))
    if cfg.method == "global" and len(cfg.lr_grid) == 1:
        out.append(f"the lr was not tuned per batch (--lr-grid has one value, ×{cfg.lr_grid[0]:g}): S(B) at one lr "
                   "per batch is not the fewest steps the fit assumes, so B_crit is biased (usually high: the small "
                   "batches are under-stepped); pass --lr-grid 0.5,1,2 or wider")
    return tuple(out)


def _partial(summaries, used, cfg: SweepConfig, incomplete) -> tuple[list, list[str]]:
    """In a stopped sweep, the batches that ran fewer lrs × seeds than the others: marked ``partial``, with a note
    (their best lr is over the runs that finished)."""
    if not incomplete or not used:
        return summaries, []
    asked = len(cfg.lr_grid) * len({r.seed for r in used})
    out, cut = [], []
    for s in summaries:
        runs = sum(r.batch == s.batch for r in used)
        if runs < asked:
            s = dataclasses.replace(s, partial=True)
            if math.isfinite(s.loss if cfg.method == "local" else s.steps):
                cut.append(f"batch {s.batch} ({runs} of {asked})")
        out.append(s)
    note = ([f"batch {', '.join(cut)} ran only some of its lrs × seeds before the sweep was stopped (marked "
             "partial): its best lr is over those"] if cut else [])
    return out, note


CAP_FACTOR = 3  # over several seeds, a branch runs to this many times its seed's best steps so far at its batch


def stop_at(best: float, seeds: int) -> int:
    """Steps a global branch may run, given the fewest steps to the target of an earlier lr at its batch and seed.
    With one seed, ``best``: a slower lr cannot be the batch's best. With several, the best lr is the one with the
    fewest MEDIAN steps over seeds, and a seed slower than its own best may still belong to it (two seeds: 132 and
    200 steps beat 180 and 200), so such a run goes on to ``CAP_FACTOR`` × ``best``: an lr 3× slower on one seed is
    the best only where seeds differ by 3×."""
    return int(best) if seeds == 1 else math.ceil(CAP_FACTOR * best)


def _local_result(setup, cfg, rows, budget, incomplete, comp) -> SweepResult:
    rows = list(rows)
    used, partial = summary.complete_seeds(rows) if incomplete else (rows, None)
    summaries = summary.local_batches(used)
    est, summaries = summary.local_critical(summaries, cfg.tolerance, cfg.tolerance_mode)
    summaries, cut = _partial(summaries, used, cfg, incomplete)
    extra = ([partial] if partial else []) + cut
    passed = [s.passed for s in summaries]
    if False in passed and True in passed[passed.index(False):]:
        extra.append("a larger batch passes again after a failing one: the losses are noisy at this tolerance; "
                     "use more --seeds or --eval-examples, or a longer --examples budget")
    if est.status is Status.LOWER_BOUND and not incomplete:
        extra.append(f"every batch passed: the critical batch is above {summaries[-1].batch}; raise --doublings")
    elif est.ok and est.value == summaries[0].batch:
        extra.append(f"the first doubling already fails: the critical batch is below {summaries[1].batch}; try a "
                     "smaller --base-batch")
    extra += _within_noise(summaries, cfg)
    extra += _no_progress(summaries, setup.initial_loss)
    if comp is not None:
        comp = comparison_ratio(est, comp)
        extra += _different_quantities(comp, summaries)
    return SweepResult("local", est, tuple(summaries), tuple(rows), _compute(budget), cfg.to_dict(),
                       setup.spec.info(), setup.initial_loss,
                       tuple(summary.critical_by_seed(used, cfg.tolerance, cfg.tolerance_mode)), None, comp,
                       _notes(setup, cfg, est, summaries, extra), incomplete, warnings=_warnings(setup, cfg),
                       data=_data(setup, cfg))


def _different_quantities(comp: Comparison, summaries) -> list[str]:
    """A note beside every local sweep's ratio to the report's headline: the two measure different things (a new user
    read 0.19 as the estimate being 5× too high), so a ratio near 1 is no confirmation either. On three tasks with a
    known global B_crit the default local bracket came to 0.10–2.1× of it (docs/sweep.md, "Local against global")."""
    r = comp.critical_ratio
    if not math.isfinite(r):
        return []
    return [f"the local critical batch is {r:.2g}× the report's headline, which does not check it: they are different "
            f"quantities (the largest batch whose loss after {summaries[0].examples:,.0f} examples stays within the "
            "tolerance of the smallest batch's, from these weights, against the steps-to-target B_crit the noise "
            "scale predicts; on three tasks with a known B_crit the default local bracket came to 0.10–2.1× of it); "
            "the like-for-like check is --method global --target-loss L (docs/sweep.md)"]


def _within_noise(summaries, cfg) -> list[str]:
    """A note for each end of the bracket that rests on noise: the first failing batch missed the tolerance, or the
    last passing batch before it met it, by less than twice the standard error of its loss's difference from the
    baseline's (the evaluation's, or the seeds')."""
    ref = summaries[0] if summaries else None
    if ref is None:
        return []
    from bsprof.sweep.fit import tolerance_limit
    limit = tolerance_limit(ref.loss, cfg.tolerance, cfg.tolerance_mode)
    k = next((i for i, s in enumerate(summaries) if s.passed is False), len(summaries))
    ends = [(summaries[k], "failed", "over")] if k < len(summaries) else []
    if 0 < k - 1 < len(summaries) and summaries[k - 1].passed:
        ends.insert(0, (summaries[k - 1], "passed", "under"))
    notes = []
    for s, verdict, side in ends:
        se = math.hypot(ref.loss_se, s.loss_se)
        margin = abs(s.loss - limit)
        if s is ref or not (math.isfinite(s.loss) and math.isfinite(se) and margin < 2 * se):
            continue
        notes.append(f"batch {s.batch} {verdict} by {margin:.3g} {side} the tolerance's limit {limit:.4g}, less than "
                     f"twice the standard error of the two losses' difference ({se:.2g}): the bracket rests on "
                     "evaluation noise; use more --seeds or --eval-examples, a larger tolerance, or --method global")
    return notes


def _no_progress(summaries, initial: float) -> list[str]:
    """A note for the failing batches that did not train at all: their loss after the budget no lower than at the
    start (a new user's batch 256 ended at 2.295 ≈ ln 10 from 2.31, the outputs collapsed to uniform, while 512
    reached 1.13): diverged or stalled at the grid's lrs, which says nothing about the critical batch."""
    if not (initial is not None and math.isfinite(initial) and initial > 0):
        return []
    stuck = [s for s in summaries if s.passed is False and not s.loss < 0.99 * initial]
    if not stuck:
        return []
    said = ", ".join(f"{s.batch} (loss {s.loss:.4g} at lr {s.lr:.3g})" for s in stuck)
    one = len(stuck) == 1
    return [f"batch {said} did not train: {'its loss' if one else 'their losses'} after the budget "
            f"{'is' if one else 'are'} no lower than the initial {initial:.4g} (diverged, or collapsed to a constant "
            f"output, at every lr of the grid); {'its failure says' if one else 'their failures say'} nothing about "
            "the critical batch: try a lower --lr-grid, or more --examples"]


def comparison_ratio(est: Estimate, comp: Comparison) -> Comparison:
    """``comp`` with its ratios to the sweep's critical batch ``est`` (its lower end when only a bound: then the
    ratios are lower bounds too, ``ratio_status`` says so)."""
    value = est.value if math.isfinite(est.value) and est.status is not Status.LOWER_BOUND else est.lo
    if est.status is Status.UNDETERMINED:   # no critical batch to compare with (the note says why)
        value = math.nan
    return dataclasses.replace(comp, ratio=_ratio(value, comp.b_simple),
                               critical_ratio=_ratio(value, comp.critical_batch),
                               ratio_status=Status.LOWER_BOUND.value if est.status is Status.LOWER_BOUND
                               else Status.OK.value)


def _compute(budget) -> Compute:
    return Compute(budget.train_examples, budget.eval_examples, round(budget.seconds, 3))


def _global_result(setup, cfg, rows, budget, incomplete, comp, n_boot, followed=(), converted=None) -> SweepResult:
    rows = list(rows)
    used, partial = summary.complete_seeds(rows) if incomplete else (rows, None)
    summaries, cut = _partial(summary.global_batches(used), used, cfg, incomplete)
    verdict = summary.schedule_verdict(summaries, followed, cfg.schedule) if followed else None
    f = summary.global_fit(used, summaries, cfg.confidence, n_boot, cfg.seed)
    est = f.b_crit if f else Estimate.none()
    extra = ([partial] if partial else []) + cut
    missed = [s.batch for s in summaries if not math.isfinite(s.steps)]
    asked = len(cfg.lr_grid) * (len({r.seed for r in used}) if partial else cfg.seeds)
    for b in missed:
        runs = [r for r in used if r.batch == b]
        if incomplete and len(runs) < asked:  # the sweep stopped before the rest of this batch's runs
            diverged = " (diverged)" if runs and all(r.diverged for r in runs) else ""
            extra.append(f"batch {b}: {len(runs)} of its {asked} runs (lrs × seeds) finished before the sweep was "
                         f"stopped, none reaching the target{diverged}: left out of the fit")
            continue
        low = min((r.lowest_loss for r in runs if r.lowest_loss is not None), default=None)
        how = ("diverged at every lr of the grid" if runs and all(r.diverged for r in runs) else
               "levelled off above the target at every lr of the grid (no lower loss in the last 3/4 of a run)"
               if runs and all(r.stalled or r.diverged for r in runs) else
               f"did not reach the target within {cfg.max_steps} steps at any lr of the grid"
               + (" (diverged at some)" if any(r.diverged for r in runs) else "")
               + (f"; its lowest evaluation loss {low:.4g}" if low is not None else ""))
        extra.append(f"batch {b} {how}: left out of the fit")
    tested = [s.batch for s in summaries]
    reached = [s.batch for s in summaries if math.isfinite(s.steps)]
    quick = [s for s in summaries if math.isfinite(s.steps) and s.steps <= 2]
    if quick:  # whole steps: 1 or 2 says little about S(B), and S ≥ 1 caps how fast a batch can look
        extra.append(f"batch {', '.join(str(s.batch) for s in quick)} reached the target in "
                     f"{', '.join(f'{s.steps:g}' for s in quick)} step(s): steps count whole, so there S(B) is "
                     "coarse and the fit leans on the other batches; lower --target-loss so that every batch takes "
                     "several steps")
    if f and not quick and math.isfinite(f.s_min.value) and f.s_min.value < FEW_STEPS:
        extra.append(f"S_min is {f.s_min.value:.3g} steps: the largest batches reach the target in a few steps, "
                     "where whole steps are coarse, so B_crit rests on them more than its bootstrap interval shows "
                     "(a new user's sweep gave 376 at one target and 648 at a lower one); a lower --target-loss, "
                     "with more steps at every batch, gives a firmer B_crit")
    timed = [s for s in summaries if math.isfinite(s.steps)]
    rose = [(min(timed[:i], key=lambda s: s.steps), b) for i, b in enumerate(timed)
            if i and b.steps > 1.5 * min(s.steps for s in timed[:i])]
    if rose:  # S(B) falls with B wherever the lr is tuned: a rise is a grid that missed, or a noisy evaluation
        a, b = max(rose, key=lambda p: p[1].steps / p[0].steps)
        extra.append(f"the steps rose with the batch ({a.steps:g} at batch {a.batch} → {b.steps:g} at {b.batch}), "
                     "where with a tuned lr they only fall: the lr grid missed the best lr there (its runs "
                     "diverged or crawled), or the evaluation loss is too noisy to time the target; widen --lr-grid, "
                     "or use more --eval-examples or --seeds, before trusting the fit")
    if f and tested and f.b_crit.value > 10 * max(tested) and reached:
        est = Estimate(math.nan, float(max(reached)), math.inf, Status.LOWER_BOUND)
        extra.append(f"the steps still fell about as 1/B up to batch {max(reached)} (the fitted B_crit, "
                     f"{f.b_crit.value:.3g}, is more than 10× above the tested batches): the critical batch is above "
                     f"{max(reached)}; test larger batches to find it")
    elif f and tested and not min(tested) / 10 <= f.b_crit.value <= 10 * max(tested):
        est = Estimate(est.value, est.lo, est.hi, Status.UNDETERMINED)  # S(B) flat: no knee
        extra.append(f"the fitted B_crit ({f.b_crit.value:.3g}) is more than 10× below the tested batches "
                     f"[{min(tested)}, {max(tested)}]: the steps hardly fell with the batch there, so the sweep does "
                     "not determine B_crit (it is below them, or the lr grid is too narrow); test smaller batches or "
                     "widen the lr grid")
    elif f and tested and not min(tested) <= f.b_crit.value <= max(tested):
        extra.append(f"the fitted B_crit ({f.b_crit.value:.3g}) lies outside the tested batches "
                     f"[{min(tested)}, {max(tested)}]: an extrapolation")
    if comp is not None:
        comp = comparison_ratio(est, comp)
        note = lr_note(comp, summaries)
        if note:
            extra.append(note)
    if (comp is not None or followed) and setup.mode_layers:
        extra.append(_mode_note(setup.mode_layers, cfg.target_loss))
    if converted and followed:
        extra.append(converted)
    return SweepResult("global", est, tuple(summaries), tuple(rows), _compute(budget), cfg.to_dict(),
                       setup.spec.info(), setup.initial_loss, (), f, comp,
                       _notes(setup, cfg, est, summaries, extra + ([verdict["text"]] if verdict else [])),
                       incomplete, schedule=verdict, warnings=_warnings(setup, cfg), data=_data(setup, cfg))


def _schedule_fits(sched, cfg: SweepConfig, setup) -> list[str]:
    """Refuse a schedule whose batch the training set cannot fill (its constants are refused alike); notes where it
    was planned for another lr or target than the sweep's (a schedule from another model trained without a word)."""
    n_train = setup.n_data - setup.n_eval if setup.held_out else setup.n_data
    big = max(s.batch_size for s in sched.stages)
    if n_train and big > n_train:
        raise ConfigError(f"--schedule {cfg.schedule}: its largest batch ({big:,}) exceeds the {n_train:,} training "
                          "examples" + (f" ({setup.n_eval} are held out for evaluation)" if setup.held_out else ""),
                          "plan it with `bsprof schedule … --max-batch N` (N at most the training set), or use fewer "
                          "--eval-examples or --no-holdout")
    notes = []
    if sched.lr_train > 0 and setup.base_lr > 0 and not 2 / 3 <= sched.lr_train / setup.base_lr <= 1.5:
        notes.append(f"the schedule was planned from a training lr of {sched.lr_train:.4g} and this spec's optimizer "
                     f"starts at {setup.base_lr:.4g}: its stages' lrs belong to the run it was planned from (another "
                     "model or optimizer?)")
    b0 = cfg.batch_sizes()[0]
    if sched.batch_train > 0 and sched.lr_train > 0 and setup.base_lr > 0 and sched.batch_train != b0:
        from bsprof.sweep.fit import lr_factor
        at = setup.base_lr * lr_factor(setup.rule, sched.batch_train, b0, setup.b_noise)  # a constant's lr there
        if not 2 / 3 <= at / sched.lr_train <= 1.5:
            notes.append(f"the constants' lrs are scaled from lr {setup.base_lr:.4g} at batch {b0} (the smallest of "
                         f"--batches), the schedule's from lr {sched.lr_train:.4g} at batch {sched.batch_train:g}: "
                         f"at batch {sched.batch_train:g} a constant runs at lr {at:.4g}, {at / sched.lr_train:.2f}× "
                         f"the schedule's; start --batches at {sched.batch_train:g} for a like-for-like comparison")
    if sched.target_loss and cfg.target_loss and not math.isclose(sched.target_loss, cfg.target_loss, rel_tol=0.05):
        notes.append(f"the schedule was planned to loss {sched.target_loss:g} and the sweep's target is "
                     f"{cfg.target_loss:g} (an evaluation loss)")
    return notes


def _schedule(path: str, spec: Spec):
    """A schedule.json written by `bsprof schedule` (or ``Schedule.to_dict``), as a ``Schedule`` in the sweep's
    unit (``in_examples``), and the note saying how it was converted (None when it was already in examples)."""
    import json

    from bsprof.schedule.stages import Schedule

    try:
        sched = Schedule.from_dict(json.loads(Path(path).read_text()))
    except FileNotFoundError as e:
        raise ConfigError(f"--schedule {path}: no such file", "pass the schedule.json `bsprof schedule` wrote") from e
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"--schedule {path} is not a bsprof schedule ({type(e).__name__}: {e})",
                          "pass the schedule.json `bsprof schedule` wrote") from e
    if not sched.stages:
        raise ConfigError(f"--schedule {path} has no stages", "pass the schedule.json `bsprof schedule` wrote")
    return in_examples(sched, path, spec.tokens_per_example)


EXAMPLE_UNITS = ("examples", "sequences")  # one item of the spec's dataset: what every branch trains on


def in_examples(sched, where: str, spec_tokens: int | None = None):
    """(``sched`` with its batches in the sweep's unit, a note or None). The sweep trains on the spec's examples: a
    schedule in examples or sequences (one sequence is one example) is run as written; one in tokens (planned from a
    ``--unit tokens`` report) is converted with its sequence length L (``sequence_length``),

        B_examples = B_tokens / L,

    and refused when a stage's batch is not a whole number of sequences (``ConfigError``: what, where, the fix)."""
    if sched.unit in EXAMPLE_UNITS:
        return sched, None
    length, source = sequence_length(sched, where, spec_tokens)
    ragged = [f"batch {s.batch_size:,} from step {s.start_step:,}" for s in sched.stages if s.batch_size % length]
    if ragged:
        raise ConfigError(f"--schedule {where} is in tokens and {', '.join(ragged)} is not a whole number of "
                          f"sequences of {length} tokens", f"plan it with `bsprof schedule … --seq-length {length}` "
                          "(every batch then rounds to whole sequences)")
    stages = [s._replace(batch_size=s.batch_size // length, micro_batch=max(1, s.micro_batch // length))
              for s in sched.stages]
    note = (f"--schedule {where} is in tokens: its batches were divided by {length} tokens per sequence ({source}) "
            f"into examples, {', '.join(f'{a.batch_size:,} → {b.batch_size:,}' for a, b in zip(sched.stages, stages))}")
    return dataclasses.replace(sched, stages=stages, unit="examples"), note


def sequence_length(sched, where: str, spec_tokens: int | None) -> tuple[int, str]:
    """(L, where it came from) for a tokens schedule: its ``config.seq_length`` (what `bsprof schedule` planned whole
    sequences of), else the spec's TOKENS_PER_EXAMPLE. Refused (``ConfigError``) for another unit, when neither is
    known, or when the two disagree (the spec's examples are not the sequences it was planned with)."""
    if sched.unit != "tokens":
        raise ConfigError(f"--schedule {where} counts its batches in {sched.unit!r}, and the sweep trains in "
                          "examples (the spec's dataset items)", "plan the schedule from a report in examples or "
                          "tokens (`bsprof schedule REPORT --format json -o schedule.json`)")
    planned = int((sched.config or {}).get("seq_length") or 0)
    if planned and spec_tokens and planned != spec_tokens:
        raise ConfigError(f"--schedule {where} is in tokens, planned with sequences of {planned} tokens, and the "
                          f"spec's examples have TOKENS_PER_EXAMPLE = {spec_tokens}: its batches cannot be turned "
                          "into examples of this spec", f"plan again with `bsprof schedule … --seq-length "
                          f"{spec_tokens}`, or sweep the spec the schedule was planned for")
    if planned:
        return planned, "its seq_length"
    if spec_tokens:
        return int(spec_tokens), "the spec's TOKENS_PER_EXAMPLE"
    raise ConfigError(f"--schedule {where} is in tokens and records no sequence length, and the sweep trains in "
                      "examples (sequences)", "plan it with `bsprof schedule … --seq-length N --format json`, or set "
                      "TOKENS_PER_EXAMPLE = N in the spec file")


def _run(cfg: SweepConfig, make_spec, report, progress, on_result) -> SweepResult:
    with caller_rng():   # the branches seed torch's global generators; the caller's randomness goes on after them
        seed_all(cfg.seed)   # before the spec's import: data made there repeats with the seed
        return _sweep(cfg, make_spec(), report, progress, on_result)


def same_spec(recorded: dict | None, spec: Spec, what: str, any_spec: bool = False) -> str | None:
    """Check that a report or schedule (``what``, e.g. '--report r.json') was made from the swept spec file: the
    sha256 of its content, else (none recorded) its file name. Another file: a ConfigError naming both (with
    ``any_spec``, a warning instead); the same file name with other content (the spec edited since): a warning.
    None when they match, or when either side records no file (Python objects, a tracker's log)."""
    recorded = recorded or {}
    path, sha = recorded.get("path"), recorded.get("sha256")
    if spec.path is None or not (path or sha) or (sha and sha == spec.sha256):
        return None
    same_name = bool(path) and Path(path).name == Path(spec.path).name
    if same_name and not (sha and spec.sha256):
        return None   # only the names to compare, and they agree
    if same_name:
        return (f"{what} was made from {_shown(path)}, and {_shown(spec.path)} has changed since (sha256 "
                f"{sha[:12]}… then, {spec.sha256[:12]}… now): if its model, data or optimizer changed, its numbers "
                "are another model's; measure it again")
    mine = _shown(spec.path)
    text = f"{what} was made from another spec, {_shown(path) if path else 'sha256 ' + sha[:12] + '…'}, not {mine}"
    if any_spec:
        return text + " (accepted by --any-spec: its numbers are that spec's)"
    how = (f"measure this spec (`bsprof measure {mine}`) and pass its report" if what.startswith("--report") else
           f"plan one from a report of this spec (`bsprof measure {mine}`, then `bsprof schedule`)")
    raise ConfigError(text + ": its numbers belong to another model", how + ", or pass --any-spec if it is the "
                      "same model in another file")


def _shown(path) -> str:
    """``path`` relative to the working directory when under it (as the user typed it, usually)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _recorded_spec(report) -> dict:
    from bsprof.output.report import Report

    if not isinstance(report, Report):
        path = Path(report)
        report = Report.from_json(path / "report.json" if path.is_dir() else path)
    return report.spec or {}


def _sweep(cfg: SweepConfig, spec: Spec, report, progress, on_result) -> SweepResult:
    say = progress or (lambda kind, info: None)
    emit = on_result or (lambda r: None)
    said = [same_spec(_recorded_spec(report), spec, f"--report {report}", cfg.any_spec) if report is not None
            else None]
    sched, converted = _schedule(cfg.schedule, spec) if cfg.schedule else (None, None)
    if sched is not None:
        said.append(same_spec(sched.spec, spec, f"--schedule {cfg.schedule}", cfg.any_spec))
    comp = comparison(report, Estimate.none(), cfg.target_loss or None) if report is not None else None
    setup = eng.prepare(spec, cfg, _report_noise(report))
    setup.warnings = [w for w in said if w]
    budget = eng._Budget(cfg.max_seconds, cfg.max_examples)
    model, _ = eng._model(setup, 0, 1.0)
    setup.initial_loss = eng.evaluate(model, setup, budget)[0]
    local = cfg.method == "local"
    if not local and cfg.target_loss >= setup.initial_loss:
        raise ConfigError(f"--target-loss {cfg.target_loss:g} is not below the initial evaluation loss "
                          f"{setup.initial_loss:.4g}", "pass a target below the initial loss")

    if sched is not None:
        converted = "; ".join(n for n in (converted, *_schedule_fits(sched, cfg, setup)) if n) or None
    followed: list = []

    def build(rows, incomplete=None, n_boot=0):
        if local:
            return _local_result(setup, cfg, rows, budget, incomplete, comp)
        return _global_result(setup, cfg, rows, budget, incomplete, comp, n_boot, followed, converted)

    batches, grid = cfg.batch_sizes(), cfg.lr_grid
    say("start", {"total": cfg.seeds * (len(batches) * len(grid) + (sched is not None))})
    rows, i = [], 0
    try:
        for seed in range(cfg.seeds):
            for b in batches:
                best = math.inf
                # global: the rule's lr first, then outward, so that a slow lr far out (a plateau a trial's grid,
                # listed high to low, ran to --max-steps at every batch) is cut at the steps a nearer lr took
                for m in grid if local else sorted(grid, key=lambda m: (abs(math.log(m)), m)):
                    say("branch_start", {"i": i, "batch": b, "multiplier": m, "seed": cfg.seed + seed})
                    if local:
                        row = eng.run_fixed(setup, seed, b, m, budget, say)
                    else:
                        cap = cfg.max_steps if not math.isfinite(best) else min(cfg.max_steps, stop_at(best, cfg.seeds))
                        row = eng.run_to_target(setup, seed, b, m, cap, budget, say)
                        best = min(best, row.steps_to_target)
                    rows.append(row)
                    i += 1
                    emit(build(rows, {"reason": IN_PROGRESS, "branches": len(rows)}))
                    say("branch", {"i": i, "row": row})
        for seed in range(cfg.seeds if sched is not None else 0):
            say("branch_start", {"i": i, "batch": 0, "multiplier": 1.0, "seed": cfg.seed + seed, "schedule": True})
            followed.append(eng.run_to_target(setup, seed, sched.stages[0].batch_size, 1.0, cfg.max_steps, budget,
                                              say, schedule=sched))
            i += 1
            emit(build(rows, {"reason": IN_PROGRESS, "branches": len(rows)}))
            say("branch", {"i": i, "row": followed[-1]})
    except eng._Stop as e:
        result = build(rows, {"reason": str(e), "branches": len(rows)}, cfg.n_boot)
        emit(result)
        return result
    except KeyboardInterrupt as e:  # out fast: a smaller bootstrap for the partial result
        reason = f"terminated by {e.name}" if hasattr(e, "signum") else "interrupted"   # SIGTERM/SIGHUP: the CLI's
        emit(build(rows, {"reason": reason, "branches": len(rows)}, min(cfg.n_boot, INTERRUPTED_N_BOOT)))
        raise
    except BaseException as e:
        reason = e.message if isinstance(e, BsprofError) else f"{type(e).__name__}: {e}"
        emit(build(rows, {"reason": reason, "branches": len(rows)}, cfg.n_boot))
        raise
    try:
        result = build(rows, None, cfg.n_boot)
    except KeyboardInterrupt:  # in the final fit: every branch ran, the interval did not
        emit(build(rows, {"reason": "interrupted in the bootstrap of the fit (every branch ran)",
                          "branches": len(rows)}, min(cfg.n_boot, INTERRUPTED_N_BOOT)))
        raise
    emit(result)
    if not local and sum(math.isfinite(s.steps) for s in result.batches) < 3:
        got = [f"{s.batch} ({s.steps:.0f} steps)" for s in result.batches if math.isfinite(s.steps)]
        raise eng.TargetNotReached(
            f"the target loss {cfg.target_loss:g} was reached by {len(got)} batch size(s) "
            f"({', '.join(got) or 'none'}); the fit of S(B) needs at least 3", _unreached_fix(result, setup, cfg),
            result)
    return result


def _mode_note(layers: tuple[str, ...], target: float) -> str:
    """The sweep's target is an evaluation loss (eval mode); a report's losses and a schedule's target are training
    losses (train mode). With dropout the training loss runs higher at the same weights, so the same number is a
    later point of training for the report (a validation task: eval 0.45 at a training loss of 0.523, and predicted
    steps within 25% at 8 of 21 batches against 18 of 21 read at 0.523)."""
    return (f"the model has {', '.join(layers)}, whose output differs in train and eval mode: the sweep's target "
            f"{target:g} is an evaluation loss (eval mode), the report's losses and a schedule's target are training "
            "losses (train mode, higher with dropout at the same weights), so the same number is a later point of "
            "training for them and the comparison above is not like for like (predicted steps run high, a "
            "validation task's 1.15–1.51× against 0.64–1.16× at the matching training loss)")


def _unreached_fix(result: SweepResult, setup, cfg: SweepConfig) -> str:
    """The fix when too few batches reached the target: with the lowest evaluation loss the runs reached; when most
    runs that missed it fell below their final loss and rose again (memorising noisy labels, or an lr too high), a
    target above that lowest loss, not more steps (a new user raised --max-steps on such a sweep as told)."""
    missed = [r for r in result.branches if not (r.steps_to_target and math.isfinite(r.steps_to_target))
              and r.lowest_loss is not None and not r.diverged]
    low = min((r.lowest_loss for r in missed), default=None)
    rose = [r for r in missed if math.isfinite(r.loss) and r.loss > ROSE * r.lowest_loss]
    stalled = [r for r in missed if r.lowest_step is not None and r.lowest_step <= r.steps / 2]
    tail = f"; the partial result was written (the initial loss is {setup.initial_loss:.4g})"
    if low is not None and 2 * len(rose) > len(missed):
        return (f"the evaluation loss fell to {low:.4g} and rose again in {len(rose)} of the {len(missed)} runs that "
                "missed the target (the model memorising the training examples, or an lr too high): pass a "
                f"--target-loss above {low:.4g}, which more --max-steps will not reach" + tail)
    if low is not None and 2 * len(stalled) > len(missed):
        top = max(r.lowest_loss for r in missed)
        return (f"the evaluation loss levelled off: {len(stalled)} of the {len(missed)} runs that missed the target "
                f"reached their lowest loss ({low:.4g}–{top:.4g} over the runs) in their first half and did not "
                "improve on it after (a floor: noisy labels, or the model's capacity): pass a --target-loss above "
                f"about {top:.4g}, which more --max-steps will not reach" + tail)
    lowest = f" (the lowest evaluation loss a run reached: {low:.4g})" if low is not None else ""
    return f"raise --max-steps, widen --lr-grid, or pass a higher --target-loss{lowest}" + tail


def local(spec: Spec | str | Path | None = None, base_batch: int | None = None, *, model=None, dataset=None,
          loss=None, optimizer=None, collate=None, report=None, progress=None, on_result=None,
          **options) -> SweepResult:
    """The local critical batch (Merrill et al. 2025 style): branches at base_batch·2^k from the same weights, each
    trained on the same number of examples (``examples``); the largest batch whose final evaluation loss stays
    within ``tolerance`` of the smallest batch's. Options: ``SweepConfig`` fields. ``report``: a bsprof report to
    compare with. ``on_result(result)`` is called after every branch (and on interruption or failure, with
    ``incomplete`` set) — the CLI writes the files there."""
    cfg = sweep_config(method="local", base_batch=base_batch, **options)
    return _run(cfg, lambda: _spec(spec, model, dataset, loss, optimizer, collate), report, progress, on_result)


def global_(spec: Spec | str | Path | None = None, target_loss: float | None = None, *, model=None, dataset=None,
            loss=None, optimizer=None, collate=None, report=None, progress=None, on_result=None,
            **options) -> SweepResult:
    """The global critical batch (McCandlish et al. 2018): steps to ``target_loss`` per batch with the learning rate
    tuned over ``lr_grid`` (fewest steps), fitted by S(B) = S_min(1 + B_crit/B) with a bootstrap interval;
    E_min = S_min·B_crit. Raises ``TargetNotReached`` (with ``.result``) when fewer than 3 batches reach the target."""
    cfg = sweep_config(method="global", target_loss=target_loss, **options)
    return _run(cfg, lambda: _spec(spec, model, dataset, loss, optimizer, collate), report, progress, on_result)


def run(spec=None, config: SweepConfig | None = None, **kwargs) -> SweepResult:
    """Either method from a resolved ``SweepConfig`` (what the CLI calls)."""
    options = dataclasses.asdict(config) if config is not None else {}
    method = options.pop("method", "local")
    call = local if method == "local" else global_
    return call(spec, **options, **kwargs)
