"""Warnings about whether the theory applies, recorded in the report (code + message).

BatchNorm in train mode, a non-shuffling dataset, the learning-rate temperature, weight decay or clipping in the
optimizer, Adam's preconditioner, and a large spread between layers (docs/science.md §3).
"""

from __future__ import annotations

import math

from bsprof.engine import cost
from bsprof.output.render import fmt
from bsprof.output.report import Report
from bsprof.results import MOMENTUM_SGD, Status, is_adam_family, optimizer_kind, optimizer_momentum
from bsprof.stats.regression import FIT_ALPHA

LAYER_SPREAD = 10.0  # flag when layer noise scales differ by more than this factor


def list_items(batch, depth: int = 0) -> bool:
    """Dataset items that held Python lists: default_collate turns a list of d numbers into a list of d tensors of
    shape [batch] (one per position), where the model expects one [batch, d] tensor. (Strings are not: a string
    field collates to a list of the batch's strings, one per example, as ids or raw text should.)"""
    if isinstance(batch, dict):
        return any(list_items(v, depth + 1) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        if depth > 0 and len(batch) > 1 and all(getattr(t, "dim", lambda: -1)() == 1 for t in batch):
            return True
        return any(list_items(v, depth + 1) for v in batch)
    return False


def data(report: Report, pair, collate=None) -> None:
    """What the first collated batch (of two examples) tells about the data, before anything runs on it.
    ``collate``: the spec's own (its batches are what the user made them, lists included), or None."""
    from torch.utils.data import default_collate

    if (collate is None or collate is default_collate) and list_items(pair):
        report.diagnose("list_items", "the dataset's items hold Python lists of numbers: torch's default_collate "
                        "turns a list of d numbers into d tensors (one per position), not one [batch, d] tensor. "
                        "Return tensors from the dataset (torch.tensor(x)), or define collate(items) in the spec.")


def before_run(report: Report, model, optimizer, examples, invalid: str | None, cfg) -> None:
    """``invalid``: why per-example norms are invalid (``probes.choose.per_example_invalid``), or None."""
    if invalid:
        from bsprof.probes.choose import UNSPLIT

        code = ("batchnorm_train" if invalid.startswith("BatchNorm") else "batch_coupled"
                if invalid.startswith("an Embedding with scale_grad_by_freq") else "batch_layout"
                if invalid.startswith(UNSPLIT[:40]) else "loss_mixes_examples")
        from bsprof.probes.choose import MIXING

        cause = (" If the loss is not meant to mix examples, look for broadcasting: an output of shape [N, 1] "
                 "against targets of shape [N] makes an [N, N] loss whose rows each depend on every example "
                 "(squeeze the output: model(x).squeeze(-1)); averaging it over a dimension trains on the wrong "
                 "objective." if invalid == MIXING else
                 " Each micro-batch is normalised over its own examples, so the fixed-weight B_simple depends on "
                 "--micro-batch (BatchNorm's noise grows as b shrinks): set it to the per-device batch you train "
                 "with; the critical batch follows the training-step windows, measured on the training batches. "
                 "Each measurement's loss is that of a few training batches forwarded whole (without gradients): "
                 "the micro-batches' own loss depends on b too."
                 if code == "batchnorm_train" else "")
        report.diagnose(code, f"{invalid}: per-example norms are invalid, so bsprof measured with "
                        f"micro-batches of {cfg.micro_batch} (approximately right; McCandlish App. A).{cause}")
    if examples.iterable:
        report.diagnose("not_iid", "the dataset is iterable: draws are consecutive items, not i.i.d. samples, "
                        "and no finite-population correction is applied. Shuffle the stream, or return a "
                        "map-style Dataset.")
    group = optimizer.param_groups[0]
    lr, batch = group.get("lr"), _batch_text(report, cfg.batch_size)
    if getattr(cfg, "steps", None) == 0:  # no probe training: lr and batch shaped none of the weights measured
        where = "the checkpoint's weights" if getattr(cfg, "checkpoint", None) else "the initial weights"
        report.diagnose("temperature", f"the noise scale depends on the temperature lr/B (McCandlish App. C): it "
                        f"was measured at {where} (no training steps), at lr={lr:g} / batch {batch} "
                        "(not applied). Along training it depends on the lr/B you train with; compare runs at "
                        "equal lr/B.")
    else:
        report.diagnose("temperature", f"the noise scale depends on the temperature lr/B (McCandlish App. C): it "
                        f"was measured along training at lr={lr:g}, batch {batch}. Compare runs at equal "
                        "lr/B.")
    steps, every = getattr(cfg, "steps", 0), getattr(cfg, "measure_every", 0)
    if steps and every and every >= steps:   # one interval: no curve along training, no windows between
        report.diagnose("measure_every", f"--measure-every {every} is not below --steps {steps}: measured at step 0 "
                        f"and step {steps} only, so there is no curve along training (and one training-step window "
                        f"at most). For a curve, measure more often, e.g. --measure-every {max(1, steps // 4)}.")
    if any(g.get("weight_decay", 0) for g in optimizer.param_groups):
        report.diagnose("weight_decay", "the optimizer has weight decay: bsprof measures the loss gradient "
                        "before it (decay is not part of the gradient noise).")
    name = optimizer_kind(optimizer)
    if is_adam_family(name):
        from bsprof.schedule.plan import ADAM_FACTORS

        report.diagnose("adam", f"{name} preconditions the gradient: measured the SGD way, the training steps' "
                        "B_simple fell short of swept critical batches on every Adam task (1.2–5.1× on 14), so the "
                        "critical batch (and `bsprof schedule`) "
                        f"use {ADAM_FACTORS['b_simple_window']:g} × the path average of B_simple over training-step "
                        f"windows ({ADAM_FACTORS['b_simple']:g} × the fixed-weight B_simple where there are none; "
                        "docs/science.md §6); the table shows the noise scales as measured.")
    beta = optimizer_momentum(optimizer) or 0.0
    if name == "SGD" and beta == 0:
        from bsprof.schedule.plan import SGD_EXCESS, SGD_FACTORS

        report.diagnose("plain_sgd", "plain SGD: measured as it is, B_simple read high against swept critical "
                        f"batches ({SGD_EXCESS['b_simple_window']} on seven tasks for the training-step windows: it "
                        "overstates the curvature-weighted B_noise), so where the run has training-step windows the "
                        f"critical batch (and `bsprof schedule`) follow {SGD_FACTORS['b_simple_window']:g} × their "
                        "path average (where there are no windows: B_noise with --hessian, else the fixed-weight "
                        "B_simple, as measured; the headline's reason says which; docs/science.md §6); the table "
                        "shows the noise scales as measured.")
    if name == "SGD" and 0 < beta < 1:
        from bsprof.schedule.plan import calibration

        family = f"{MOMENTUM_SGD}={beta:g}"
        report.diagnose("momentum", f"SGD with momentum {beta:g}: measured the plain-SGD way, the noise scale fell "
                        "short of swept critical batches with momentum 0.9 (1.8–3.8× on nine tasks), so the critical "
                        f"batch (and `bsprof schedule`) use {calibration(family, 'b_simple_window'):g} × the path "
                        "average of B_simple over training-step windows "
                        f"({calibration(family, 'b_simple'):g} × the fixed-weight B_simple where there are none): the "
                        "factor at 0.9, to the power log₁₀ 1/(1 − momentum) (docs/science.md §6); the table shows the "
                        "noise scales as measured." + (" Nesterov momentum was checked on one task only (1.65× the "
                                                       "sweep with this factor)." if any(
                                                           g.get("nesterov") for g in optimizer.param_groups) else ""))


def _batch_text(report: Report, batch: int) -> str:
    """The probe's batch as the note gives it: in examples, or in the report's unit under --unit tokens ("32 sequences =
    1,024 tokens": the noise scale, and a --batch-size judged against it, are in tokens)."""
    tpe = report.config.get("tokens_per_example") if report.unit == "tokens" else None
    if not (isinstance(tpe, (int, float)) and tpe >= 1):
        return f"{batch}"
    return f"{batch} sequence{'s' if batch != 1 else ''} = {int(batch * tpe):,} tokens"


def method(report: Report, choice) -> None:
    """What the chosen probe does slowly, and a probe picked by auto's timed trial (``probes.choose.Choice``)."""
    from bsprof.probes.hooks import fallback_text

    if choice.fallbacks:
        n = len(choice.fallbacks)
        layout = any("examples on dim 0" in why for why in choice.fallbacks.values())
        fix = "; for a layer fed [T, B, …], make it batch-first (batch_first=True, no transpose before it)" if layout \
            else ""
        report.diagnose("fallback", f"{n} parameter{'s' if n > 1 else ''} measured by the slow path (torch.func, or a "
                        "per-example loop where torch.func cannot batch the layer): "
                        f"{fallback_text(choice.fallbacks)} — register a rule with bsprof.probes.register_rule for "
                        f"a layer without one{fix} (`bsprof measure --strict` avoids the slow path: with --method "
                        "hooks an error, with auto micro-batches)")
    if choice.seconds and choice.probe.name == "microbatch":
        report.diagnose("method_trial", choice.why)


def clipping(report: Report, spec, optimizer) -> None:
    """Gradient clipping in the training (a spec's CLIP_GRAD_NORM, an optimizer's max_grad_norm/clip_threshold).

    bsprof always measures the raw loss gradient, before any clipping (docs/science.md §3).
    """
    clip = getattr(spec.loss, "__globals__", {}).get("CLIP_GRAD_NORM")  # a global of the spec file
    found = [f"the spec's CLIP_GRAD_NORM = {clip}"] if clip else []
    found += [f"the optimizer's {k} = {g[k]}" for g in optimizer.param_groups[:1]
              for k in ("max_grad_norm", "clip_threshold", "clip_norm") if g.get(k)]
    if found:
        report.diagnose("clipping", f"gradient clipping in training ({'; '.join(found)}): bsprof measures the "
                        "gradient before clipping, and its probe training does not clip. When clipping is active the "
                        "effective update is smaller and less noisy than the measured noise scale suggests.")


def after_run(report: Report) -> None:
    """Diagnostics that need the measurements: the 1/B regression's fit, B_pre availability, layer spread, what
    measuring cost against training."""
    _degenerate(report)
    _interrupted(report)
    _unresolved(report)
    _curvature(report)
    _implausible(report)
    measure_cost(report)
    _cpu_contention(report)
    # each measurement's test is calibrated at FIT_ALPHA (scripts/regression_calibration.py: i.i.d. draws, 5–20 of
    # them, Gaussian and t₃ gradients: 0.03–0.15% below 1e-3); over a run's k tests the note holds the run's false
    # alarms to FIT_ALPHA (Bonferroni: p < FIT_ALPHA/k; a new user's run had p = 0.00046 at one of its steps)
    tested = [r for r in report.measurements if r.regression is not None and math.isfinite(r.regression.p_value)]
    bad = [r for r in tested if r.regression.failed and r.regression.p_value < FIT_ALPHA / len(tested)]
    if bad:
        report.diagnose("regression_misfit", f"|G_B|² is not linear in 1/B at step {bad[-1].step} (fit p = "
                        f"{bad[-1].regression.p_value:.2g}, of {len(tested)} measurement(s) tested): examples of a "
                        "batch are coupled (BatchNorm), the draws are not i.i.d., or the loss is not a mean of "
                        "per-example losses. Treat B_simple with care.")
    if any(r.b_pre is not None and r.b_pre.status is Status.NOT_AVAILABLE for r in report.measurements):
        report.diagnose("b_pre_unavailable", "b_pre needs Adam's running second moment, which is empty before the "
                        "first optimizer step: it is reported from the first measurement after training starts.")
    if not report.layers:
        return
    last = report.layers[-1].step
    values = [r.b_simple.value for r in report.layers if r.step == last and r.b_simple.ok and r.b_simple.value > 0]
    if len(values) >= 2 and max(values) / min(values) > LAYER_SPREAD:
        report.diagnose("layer_spread", f"layer noise scales span {min(values):.3g}–{max(values):.3g} "
                        f"(> {LAYER_SPREAD:g}×): the total is dominated by the layers with the largest |G|²; "
                        "each layer's value is in the report's layers (layers.csv when a report folder is written).")


CONTENDED = 5.0  # a stretch of training this many times slower per step than the run's median: a shared CPU


def _cpu_contention(report: Report) -> None:
    """Training between two measurements CONTENDED× slower per step than the run's median, on a CPU with several
    torch threads: another busy process makes them wait on each other (a trial beside another job: 71 s for the
    first 100 steps, 3.6 s for each later 100; a new user's 100 forward-backward passes took 66× longer than with
    one thread), which the run's timings and its time-budgeted draws then reflect."""
    between = report.timing.get("training_between_s") or []
    steps = sorted({r.step for r in report.measurements if r.stopped_by != "cut_short"})
    if report.environment.get("device") != "cpu" or report.environment.get("threads", 1) < 2 or len(between) < 3 \
            or len(steps) != len(between) + 1:
        return
    per_step = [t / (b - a) for t, a, b in zip(between, steps, steps[1:]) if b > a]
    mid = sorted(per_step)[len(per_step) // 2]
    slow = max(range(len(per_step)), key=per_step.__getitem__)
    excess = between[slow] - mid * (steps[slow + 1] - steps[slow])   # seconds lost: not a first step's set-up
    if mid > 0 and per_step[slow] > CONTENDED * mid and excess > 2.0:
        report.diagnose("cpu_contention", f"training from step {steps[slow]} to {steps[slow + 1]} took "
                        f"{per_step[slow] / mid:.0f}× the run's median time per step: the CPU was likely shared with "
                        f"another busy process, and torch's {report.environment['threads']} threads then wait on "
                        "each other many times over. The noise scales are not affected, but the timings are, and "
                        "measurements stopped by the time budget drew less; on a shared CPU set OMP_NUM_THREADS=1 "
                        "(or torch.set_num_threads(1)), or measure when the machine is quiet.")


def measure_cost(report: Report) -> None:
    """Seconds measuring vs training (``report.timing``), and what the asked precision cost where a measurement
    took longer than the training it interleaves with (``engine.cost``)."""
    share = cost.share_text(report.timing)
    if share is None:
        return
    extra = cost.precision_text(report.timing, report.measurements, report.config.get("rel_error", 0.2),
                                report.config.get("min_draws", 5))
    report.diagnose("measure_cost", share + (f"; {extra}" if extra else ""))


DEGENERATE = {
    "zero_gradient": "every gradient drawn is exactly zero at step {steps}: the loss is flat there (constant loss, "
                     "frozen or disconnected weights, dead activations); B_simple is undefined. Check that loss() "
                     "depends on the trainable parameters.",
    "zero_variance": "the examples' gradients agree at step {steps} (tr Σ ≈ 0: identical or duplicated examples, "
                     "or a loss that ignores the data): B_simple ≈ 0, any batch size above 1 wastes compute. "
                     "Check that dataset() returns distinct examples.",
}


def _degenerate(report: Report) -> None:
    """Measurements the stopping rule ended early because no draw could narrow them (``stats.stopping``)."""
    for code, text in DEGENERATE.items():
        steps = [r.step for r in report.measurements if r.stopped_by == code]
        if steps:
            report.diagnose(code, text.format(steps=", ".join(map(str, steps))))


def _interrupted(report: Report) -> None:
    """The measurement a run was stopped inside (Ctrl-C, SIGTERM): kept with the interval of its draws so far, its
    row stopped by "interrupted", or not kept with too few draws (``output.render.cut_short_text``)."""
    from bsprof.output.render import cut_short_text

    text = cut_short_text(report)
    if text is None:
        return
    counts = report.incomplete.get("kept") and report.incomplete.get("left_out") is None
    report.diagnose("measurement_cut_short", f"the run stopped early ({report.incomplete.get('reason')}): {text}"
                    + ("; its row (stopped_by interrupted) counts in the critical batch and `bsprof schedule` with "
                       "that interval" if counts else ""))


UNRESOLVED = {"b_simple": ("B_simple", "tr(Σ)"), "b_simple_window": ("B_simple (training)", "tr(Σ)"),
              "b_noise": ("B_noise", "tr(HΣ)"), "b_pre": ("B_pre", "tr(PΣ)")}  # column: (name, its numerator)


def _unresolved(report: Report) -> None:
    """Estimates whose interval reaches 0 (``Estimate.unresolved``): B = tr(·Σ)/(·) with a numerator not told apart
    from 0 is known only to be at most its upper end, whatever its status; the note names them, what was not
    resolved, and the fix (a longer measurement; for training-step windows, more steps per window)."""
    found = {key: [f"{r.step} (≤ {fmt(getattr(r, key).hi)})" for r in report.measurements
                   if getattr(r, key) is not None and getattr(r, key).unresolved] for key in UNRESOLVED}
    found = {key: ends for key, ends in found.items() if ends}
    if not found:
        return
    numerators = list(dict.fromkeys(UNRESOLVED[key][1] for key in found))
    fixes = ["a longer measurement resolves it (a larger --measure-budget, or 0 to stop by --rel-error alone; "
             "--max-seconds, --max-examples)"] if set(found) - {"b_simple_window"} else []
    fixes += ["for a training-step window, more steps between measurements resolve it (--measure-every)"] \
        if "b_simple_window" in found else []
    report.diagnose("unresolved", "; ".join(f"{UNRESOLVED[key][0]} at step {', '.join(ends)}" for key, ends in
                                            found.items())
                    + f": the interval reaches 0 ({' and '.join(numerators)} not told apart from 0), so the estimate "
                    f"is unresolved: known only to be at most its upper end, not the value shown; {'; '.join(fixes)}")


def _curvature(report: Report) -> None:
    """B_noise = tr(HΣ)/GᵀHG left undetermined where the measured curvature along the gradient, GᵀHG, is not positive
    (its draws then never bound an interval: they end on the time limits)."""
    least = report.config.get("min_draws", 5)
    short = [r for r in report.measurements if r.b_noise is not None and not r.b_noise.ok and r.hessian is not None
             and r.hessian.gHg > 0 and r.hessian.n_draws < least]
    if short:
        report.diagnose("b_noise_short", f"B_noise at step {', '.join(str(r.step) for r in short)}: only "
                        f"{', '.join(str(r.hessian.n_draws) for r in short[:3])} of the {least} draws it needs at "
                        "least (--min-draws) fit in --max-seconds, so it is left undetermined (an interval over so few "
                        "draws covers poorly); a larger --max-seconds gives it the draws")
    rows = [r for r in report.measurements if r.b_noise is not None and not r.b_noise.ok and r.hessian is not None
            and not r.hessian.gHg > 0]
    if rows:
        report.diagnose("b_noise_curvature", f"B_noise is undetermined at step {', '.join(str(r.step) for r in rows)}: "
                        f"the curvature along the gradient GᵀHG was not positive there (estimated "
                        f"{', '.join(f'{r.hessian.gHg:.3g}' for r in rows[:3])}{' …' if len(rows) > 3 else ''}). "
                        "B_noise = tr(HΣ)/GᵀHG is defined where the loss curves up along the gradient (near a "
                        "minimum); at these weights it does not (early training, a saddle, a recurrent model), so "
                        "read B_simple there; its draws stopped at the measurement's time limits")


LOSS_ROSE = 1.5  # the last measured loss over the first: the probe's training went the wrong way
LOSS_FELL = 0.1  # the least relative fall of the loss over a probe without a note (a trial's 1.11 → 1.05)


def _implausible(report: Report) -> None:
    """Numbers a user should not act on without a second look: a critical batch above the dataset or below one
    example, and a probe whose loss rose (a diverging lr measures a trajectory the real training will not take)."""
    rows = [r for r in report.measurements if math.isfinite(r.loss)]
    if len(rows) >= 2 and rows[0].loss > 0 and rows[-1].loss > LOSS_ROSE * rows[0].loss:
        report.diagnose("loss_rose", f"the training loss rose from {rows[0].loss:.4g} (step {rows[0].step}) to "
                        f"{rows[-1].loss:.4g} (step {rows[-1].step}): the probe's lr is too high for this batch, "
                        "and the noise scales of a diverging run are not those of your training. Lower the lr "
                        "(--lr, or the spec optimizer's lr).")
    low = min(rows, key=lambda r: r.loss, default=None)
    rose = low is not None and low is not rows[-1] and low.loss > 0 and rows[-1].loss > LOSS_ROSE * low.loss
    # each measured loss is a mean over the draws' examples, noisy (a trial's lr 1e-7: 21.8, 21.7, 21.2, 26.0, 19.4):
    # the first and the last half of the measurements are compared by their means
    k = len(rows) // 2
    early = sum(r.loss for r in rows[:k]) / k if k else math.nan
    late = sum(r.loss for r in rows[-k:]) / k if k else math.nan
    span = (f"{early:.4g} over steps {rows[0].step}–{rows[k - 1].step} and {late:.4g} over steps "
            f"{rows[-k].step}–{rows[-1].step}" if k > 1 else
            f"{early:.4g} at step {rows[0].step}, {late:.4g} at step {rows[-1].step}") if k else ""
    if len(rows) >= 3 and early <= late <= LOSS_ROSE * early and not rose:
        report.diagnose("loss_flat", f"the training loss did not fall (measured {span}): the probe did not train "
                        "(an lr too high, so that the loss bounces, or too low; or weights at a plateau), and noise "
                        "scales along a run that does not train say little about training from here. Check the lr "
                        "(--lr, or the spec optimizer's lr) and the loss.")
    elif len(rows) >= 3 and 0 < late < early < late / (1 - LOSS_FELL) and not rose:
        report.diagnose("loss_flat", f"the training loss fell only {1 - late / early:.0%} over the probe (measured "
                        f"{span}): the noise scale grows as the loss falls, so this measures the start of training "
                        "(or a plateau), not its later stages; check the lr (too low?), then train the probe longer "
                        "(--steps) or measure from a later checkpoint (--checkpoint).")
    if rose:
        report.diagnose("loss_rose", f"the training loss fell to {low.loss:.4g} (step {low.step}), then rose to "
                        f"{rows[-1].loss:.4g} (step {rows[-1].step}): the probe's training is unstable (an lr too "
                        "high for this batch?), and the later noise scales belong to weights that got worse. Lower "
                        "--lr, or stop the probe earlier (--steps).")
    b = report.summary.critical_batch
    if b is None or not b.ok:
        return
    tokens = report.config.get("tokens_per_example") if report.unit == "tokens" else None
    n = report.config.get("dataset_size")
    n = n * tokens if n and tokens else n
    unit = report.unit
    if n and b.value > n:
        report.diagnose("critical_batch_above_dataset", f"the critical batch {fmt(b.value)} is above the dataset's "
                        f"{n:,} {unit}: every batch up to the whole dataset is below it, so larger batches keep "
                        "paying off in steps up to full-batch training; what limits you is compute per step.")
    elif n and b.hi is not None and b.hi > n:
        report.diagnose("critical_batch_interval_above_dataset", f"the critical batch's interval [{fmt(b.lo)}, "
                        f"{fmt(b.hi)}] reaches above the dataset's {n:,} {unit}: batches up to the whole dataset are "
                        f"not ruled out as efficient; the value {fmt(b.value)} is the estimate to act on, and `bsprof "
                        "sweep` can check the large batches directly.")
    elif b.value < 1:
        report.diagnose("critical_batch_below_one", f"the critical batch {fmt(b.value)} is below one {unit[:-1]}: "
                        "at these weights the gradient's noise is small next to its signal, so steps, not "
                        f"{unit}, limit training; any batch is past critical (the smallest that runs efficiently "
                        "is enough), and the learning rate matters more than the batch.")

