"""The probe loop: train with the user's optimizer, and measure the noise scale at fixed weights along the way.

    step 0 ──measure──> train ... ──measure──> train ... ──measure (last step)

Measurements never step the optimizer and never change the weights. The report is filled as rows arrive, so an
interrupted or failed run still holds everything measured (``report.incomplete`` says why it stopped); a measurement
interrupted (Ctrl-C, SIGTERM) after enough draws is kept with the interval of its draws so far (``stopped_by``
"interrupted", ``sampling.so_far``).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from bsprof import distributed
from bsprof.config import DEFAULT_LR, MeasureConfig, as_dict
from bsprof.engine import cost, diagnostics, scales
from bsprof.engine.data import Examples, named_indices
from bsprof.engine.rng import caller_rng, seed_all
from bsprof.engine.sampling import Sampling, group_types, groups_of, loss_at_batch, measure_at, so_far
from bsprof.engine.spec import Spec, _where, build_dataset, build_model, build_optimizer, load_spec, module_at
from bsprof.errors import BsprofError, ConfigError, NonFiniteError, SpecError
from bsprof.output.report import Report
from bsprof.probes import Probe
from bsprof.probes.base import batch_coupled
from bsprof.probes.choose import decide, training_pairs
from bsprof.results import (
    Estimate,
    LayerEstimate,
    Measurement,
    Status,
    is_adam_family,
    optimizer_kind,
    optimizer_momentum,
)
from bsprof.stats.estimators import NoiseScale
from bsprof.stats.stopping import INTERRUPTED
from bsprof.track.window import b_simple_of, windowed

Progress = Callable[[str, dict], None]


def pick_device(name: str) -> torch.device:
    """auto: CUDA, then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BsprofError("--device cuda was asked but CUDA is not available", "use --device auto or cpu")
    return torch.device(name)


def load_checkpoint(model: nn.Module, path: str) -> None:
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"checkpoint not found: {file}", "pass a file saved with torch.save(model.state_dict(), FILE)")
    with open(file, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip archive, or a legacy pickle
        raise SpecError(f"{file} is not a torch checkpoint (not a file written by torch.save)",
                        "pass a file saved with torch.save(model.state_dict(), FILE)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only load failed" in str(e).lower():   # torch's advice (weights_only=False) runs pickled code
            what = "it holds objects other than tensors, which bsprof does not unpickle (weights_only=True)"
        raise SpecError(f"cannot load checkpoint {file}: {what}",
                        "save it with torch.save(model.state_dict(), FILE) (tensors only; weights_only=True)")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise SpecError(f"checkpoint {file} does not fit model(): {e}", "pass a checkpoint of the same model")


@contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Measuring runs forward passes in train mode, which would move BatchNorm's running statistics (and any
    other buffer); a measurement leaves the model as it found it."""
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in saved:
                    b.copy_(saved[name])


def measure_steps(steps: int, every: int) -> list[int]:
    """Steps at which to measure: 0, every `every` steps, and the last step; with every = 0, step 0 and four
    evenly spaced steps ending at the last (150 steps: 0, 38, 75, 112, 150, not 0, 37, …, 148, 150)."""
    if not every:
        return sorted({round(i * steps / 4) for i in range(5)})
    return sorted({*range(0, steps + 1, every), steps})


def train_step(model, optimizer, loss_fn, examples: Examples, batch_size: int, step: int,
               comm: distributed.Comm = distributed.LOCAL, tracker=None, parts: int = 1,
               start_loss: float | None = None) -> float:
    """One optimizer step on the mean loss of a batch; under DDP each rank takes its share of the batch and
    the gradients Σ_local ∇ℓ_i / batch_size are summed over ranks (``distributed.sync_gradients``).

    ``parts`` > 1: the batch as that many equal micro-batches, one backward each (gradient accumulation: the same
    gradient, unless a layer couples the examples, BatchNorm then normalising over each micro-batch). With a
    ``tracker`` the backward passes also give the step's nested pair: per-example norms (b = 1, B = batch), or its
    micro-batches (b = B/parts), or under DDP (``distributed.TrainingPairs``) each rank's share against the
    batch; a step whose batch did not split is not measured. ``start_loss`` (the first measurement's loss, when
    there is one) tells a diverging run from bad examples when only some losses are not finite."""
    from bsprof.probes.base import per_example_losses

    batches, count = examples.train_batch(batch_size, parts)
    optimizer.zero_grad(set_to_none=True)
    denom = batch_size if comm.world > 1 else count
    total = 0.0
    for j, (batch, n) in enumerate(batches):
        losses = per_example_losses(model, loss_fn, batch, n)
        loss = losses.sum() / denom
        if not torch.isfinite(loss):
            indices = examples.last_indices[j] if examples.last_indices else None
            raise _non_finite_loss(model, losses.detach(), loss.item(), step, indices, start_loss)
        if isinstance(tracker, distributed.TrainingPairs):
            loss.backward()
        elif tracker is not None and tracker.source == "per_example" and not tracker.closed:
            with tracker.per_example():
                loss.backward()
        else:
            loss.backward()
        total = total + loss.detach()
    if isinstance(tracker, distributed.TrainingPairs):
        loss = distributed.sync_gradients(model, total, comm, tracker, count, batch_size)
        optimizer.step()
        return float(loss.detach())
    if tracker is not None:
        from bsprof.track import TrackerError

        try:
            if tracker.accumulation_steps in (None, len(batches)):
                tracker.step(count, loss=total)
            else:
                tracker.discard(count)
        except TrackerError as e:  # the tracker removed its hooks; the step goes on (the loop says why, switches)
            tracker.close()
            tracker.closed_by = tracker.closed_by or e.message
    loss = distributed.sync_gradients(model, total, comm)
    optimizer.step()
    return float(loss.detach())


DIVERGED = 1e3  # the others' median loss over the first measurement's: training diverged, not a bad example


def _non_finite_loss(model, losses: torch.Tensor, loss: float, step: int, indices: list[int] | None,
                     start_loss: float | None = None):
    """Why a training loss is not finite: weights gone non-finite, every example's loss at once, or some examples'
    with the others' ≥ ``DIVERGED`` × the first measured loss (a trial's lr 5: 3.7e35): the lr; or some
    examples' losses only, the others' as before (those examples: NaN/Inf in their data, a label out of range)."""
    bad = ~torch.isfinite(losses)
    weights_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if bool(bad.all()) or not weights_finite or losses.numel() < 2:
        return NonFiniteError(f"the training loss became {loss} at step {step}",
                              "lower --lr (or the spec optimizer's lr); what was measured before is kept", step)
    others = float(losses[~bad].median())
    if start_loss is not None and math.isfinite(start_loss) and 0 < start_loss * DIVERGED < others:
        return NonFiniteError(f"the training diverged at step {step}: the loss of {int(bad.sum())} of the "
                              f"{losses.numel()} examples in its batch was {losses[bad][0].item()} and the others' "
                              f"median {others:.3g}, against {start_loss:.4g} at the first measurement",
                              "lower --lr (or the spec optimizer's lr); what was measured before is kept", step)
    rows = bad.nonzero().flatten().tolist()
    which = ([indices[r] for r in rows] if indices is not None and len(indices) == losses.numel() else None)
    named = f" ({named_indices(which)})" if which else ""
    value = losses[rows[0]].item()
    return NonFiniteError(f"the loss of {len(rows)} of the {losses.numel()} examples in the batch of step {step} was "
                          f"{value}{named}, the others' finite, at finite weights: a bad example, not the lr",
                          "check those examples for NaN or Inf in their inputs or targets (or a label out of range "
                          "for the loss), and clean or drop them; what was measured before is kept", step)


def _sampling(cfg: MeasureConfig, probe: Probe, n: int | None) -> Sampling:
    b = 1 if probe.per_example else cfg.micro_batch
    start = cfg.probe_batch or max(cfg.batch_size, 64 if b == 1 else 8 * b)
    if n is not None and n < 2 * b:
        raise BsprofError(f"the dataset has {n} examples, too few for micro-batches of {b}",
                          "lower --micro-batch or use --method per_example")
    return Sampling(probe, b, cfg.chunk, start, bool(cfg.probe_batch), cfg.rel_error, cfg.confidence,
                    cfg.min_draws, cfg.max_examples, cfg.max_seconds)


def _row(step: int, cfg: MeasureConfig, est: NoiseScale, draws, stopped_by: str, seconds: float,
         probe: str, scale: float) -> Measurement:
    """The typed row of one measurement; batch sizes × ``scale`` (the report's unit), |G|² and tr(Σ) unscaled."""
    return Measurement(
        step=step, loss=est.loss, b_simple=Estimate(est.b_simple, est.b_simple_lo, est.b_simple_hi,
                                                    est.status).scaled(scale),
        g2=Estimate(est.g2, est.g2_lo, est.g2_hi, Status.OK if est.g2 > 0 else Status.UNDETERMINED),
        trace_sigma=est.trace_sigma, examples_seen=step * cfg.batch_size, method=probe, n_draws=est.n_draws,
        examples=est.examples, b=draws[-1].b, B=draws[-1].B, stopped_by=stopped_by, seconds=round(seconds, 3),
        diversity_bound=float(est.gradient_diversity_bound * scale))


def _cut(drawn: list, kept: bool, after: bool, cfg: MeasureConfig, optimizer) -> dict:
    """What ``report.incomplete`` says of a measurement interrupted with ``drawn`` draws (none: nothing): ``draws``,
    whether its row was ``kept`` (``sampling.so_far``) and, interrupted ``after`` its B_simple draws had stopped, the
    statistics drawn after them that it is kept without (``left_out``: B_noise with --hessian, B_pre under Adam)."""
    if not drawn:
        return {}
    if not after:
        return {"draws": len(drawn), "kept": kept}
    pre = is_adam_family(optimizer_kind(optimizer)) and bool(optimizer.state)
    return {"draws": len(drawn), "kept": True,
            "left_out": [q for q, asked in (("B_noise", cfg.hessian), ("B_pre", pre)) if asked]}


def _layer_rows(step: int, names: list[str], types: list[str], est: NoiseScale,
                scale: float) -> list[LayerEstimate]:
    return [LayerEstimate(step, names[j], g2, tr, Estimate(b, lo, hi, st).scaled(scale), types[j])
            for j, (g2, tr, b, lo, hi, st) in est.layers.items()]


def _environment(device: torch.device, cfg: MeasureConfig, world: int = 1) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": device.type, "device_name": name, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "seed": cfg.seed,
            "threads": torch.get_num_threads(), "world_size": world}


def measure(spec: Spec | str | Path, cfg: MeasureConfig, report: Report | None = None,
            progress: Progress | None = None, comm: distributed.Comm | None = None) -> Report:
    """Run the probe training and measure along it; returns (and fills) the report.

    ``progress(kind, info)`` hears: setup (the probe chosen and why, device, optimizer), measure, draw, measured
    (the row; seconds spent measuring and training so far), train (step, loss). ``report.timing`` holds the
    seconds measuring vs training (``engine.cost``). ``comm``: the data-parallel ranks (``distributed.session``);
    default: the caller's process group, if any. An interrupt (KeyboardInterrupt: Ctrl-C, SIGTERM) inside a
    measurement adds its row from the draws so far, if enough (``sampling.so_far``; no "measured" then), and goes on.
    """
    report = report if report is not None else Report()
    if report.measurements:   # two runs' rows in one report: steps 0, 2, …, 10, 0, 2, … (a new user's notebook)
        raise ConfigError(f"the report passed already holds {len(report.measurements)} measurement(s) of another "
                          "run", "pass a new bsprof.Report() (or none) to each run")
    comm = comm or distributed.current()
    seed_all(cfg.seed)   # before the spec's import: data made there repeats with the seed
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    say = progress or (lambda kind, info: None)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = build_model(spec).to(device)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint)
    distributed.broadcast_parameters(model, comm)
    distributed.check_batch(cfg.batch_size, comm)
    examples = Examples(build_dataset(spec), spec.collate, device, gen, comm.rank, comm.world)
    optimizer = build_optimizer(spec, model, DEFAULT_LR if cfg.lr is None else cfg.lr)
    pair = examples.first_two()
    diagnostics.data(report, pair, spec.collate)
    try:
        t0 = time.perf_counter()
        with buffers_kept(model), caller_rng():  # calls loss() on two examples; auto may time a draw of each
            choice = decide(cfg.method, model, spec.loss, pair, draw=_trial_draw(cfg, examples, comm),
                            micro_batch=cfg.micro_batch, strict=cfg.strict)
        choosing = time.perf_counter() - t0
    except BsprofError:
        raise
    except Exception as e:
        where, layer = _where(e, spec.path), module_at(e, model)
        report.incomplete = {"reason": f"{type(e).__name__}: {e}", "step": None,
                             "phase": getattr(e, "bsprof_phase", "calling loss(model, batch) on the first two "
                                                                  "examples"),
                             **({"where": where} if where else {}), **({"module": layer} if layer else {})}
        raise
    chosen, invalid = choice.probe, choice.invalid
    probe = chosen.name
    sampling = _sampling(cfg, chosen, examples.n)
    scale = _unit_scale(cfg, spec)
    report.spec, report.environment = spec.info(), _environment(device, cfg, comm.world)
    report.unit = cfg.unit
    why = choice.why
    if probe == "hooks" and not choice.fallbacks:  # said, not only left to a missing note (--strict, --verbose)
        n = sum(1 for p in model.parameters() if p.requires_grad)
        why += f"; every trainable parameter ({n} tensor{'s' if n != 1 else ''}) by a hook rule, none by the slow path"
    report.config = {**as_dict(cfg), "method_resolved": probe, "method_reason": why,
                     "method_trial_s": choice.seconds and {k: round(v, 4) for k, v in choice.seconds.items()},
                     "optimizer": optimizer_kind(optimizer),
                     "optimizer_lr": optimizer.param_groups[0].get("lr"),
                     "optimizer_momentum": optimizer_momentum(optimizer), "dataset_size": examples.n,
                     "tokens_per_example": (spec.tokens_per_example or cfg.tokens_per_example) or None}
    report.config["lr"] = report.config["optimizer_lr"]   # the lr the probe trained at (a spec optimizer's own)
    batch_size = _fit_batch(cfg.batch_size, examples.n, report)
    if batch_size != cfg.batch_size:
        report.config.update(batch_size=batch_size, batch_size_asked=cfg.batch_size)
        cfg = dataclasses.replace(cfg, batch_size=batch_size)
    diagnostics.before_run(report, model, optimizer, examples, invalid, cfg)
    diagnostics.method(report, choice)
    say("setup", {"method": probe, "why": why, "device": str(device),
                  "optimizer": report.config["optimizer"], "lr": report.config["optimizer_lr"],
                  "dataset_size": examples.n})
    own = optimizer.param_groups[0].get("lr")
    if spec.optimizer is not None and cfg.lr is not None and not (isinstance(own, float) and own == cfg.lr):
        report.diagnose("lr_not_used", f"--lr {cfg.lr:g} was not used: the spec's optimizer() sets its own "
                        f"learning rate ({optimizer.param_groups[0].get('lr')}); change it there.")
    diagnostics.clipping(report, spec, optimizer)
    names, group_index = trainable_groups(model)
    types = group_types(model, names)
    points = measure_steps(cfg.steps, cfg.measure_every)
    step, trained, tracker, phase, clock = 0, 0, None, "timing a training batch", cost.RunClock(choosing=choosing)
    window = None  # the training steps' window closed for the measurement at this step, until its row is added
    carried: list = []  # the steps of windows too short to determine |G|², joined to the next (``_close``)
    last_ok = None      # (row index, draws) of the latest determined window (``_join_last``)
    try:  # from the first call of the user's code on, a failure names its phase, step and line (a user's collate)
        with buffers_kept(model):
            first = _first_budget(model, spec.loss, examples, cfg, points, comm)
        points = set(points)
        phase = "setting up the training steps' pairs"
        track, coupled = _track_source(report, cfg, comm, model, spec.loss, pair, examples)  # how steps give pairs
        norm_coupled = comm.world == 1 and any("Embedding" not in n for n in batch_coupled(model))  # BatchNorm
        for step in range(cfg.steps + 1):
            phase = "measuring"
            if step in points:
                (window, carried), tracker = _close(tracker, cfg.confidence, scale, carried), None
                t0 = time.perf_counter()
                say("measure", {"step": step})
                budget = _budget(sampling, cfg, clock, first) if comm.world == 1 else sampling
                how, drawn, row, stop = _shared(budget, optimizer), [], None, None  # drawn: filled as they arrive
                with buffers_kept(model):
                    try:
                        est, draws, stopped = measure_at(model, spec.loss, examples, how, group_index,
                                                         lambda e, s=step: say("draw", {"step": s, "estimate": e}),
                                                         comm, drawn)
                        row = _row(step, cfg, est, draws, stopped, time.perf_counter() - t0, probe, scale)
                        whole = examples if comm.world == 1 else examples.whole()  # B_noise, B_pre: not sharded
                        row = dataclasses.replace(row, ranks=distributed.rank_estimate(draws, cfg.confidence, scale),
                                                  **scales.extra_fields(model, spec.loss, whole, draws, cfg,
                                                                        optimizer, _left(budget, t0), group_index,
                                                                        scale))
                    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: its draws so far make its row, if enough
                        after = row is not None     # in B_noise's or B_pre's draws: B_simple's row as it stopped
                        est = est if after else so_far(model, drawn, how)
                        e.cut = _cut(drawn, est is not None, after, cfg, optimizer)
                        if est is None:
                            raise
                        stop = e   # raised again once the row is added
                        row = row if after else _row(step, cfg, est, drawn, INTERRUPTED, time.perf_counter() - t0,
                                                     probe, scale)
                        row = dataclasses.replace(row, ranks=distributed.rank_estimate(drawn, cfg.confidence, scale),
                                                  regression=scales.regression_part(drawn, scale))
                if norm_coupled and stop is None and row.b < cfg.batch_size:  # an interrupted one: as drawn
                    with buffers_kept(model):
                        row = dataclasses.replace(row, loss=loss_at_batch(model, spec.loss, examples, cfg.batch_size,
                                                                          row.B))
                if window is not None:
                    row = dataclasses.replace(row, b_simple_window=window.estimate, window_steps=window.steps)
                    if window.estimate.status is Status.OK:
                        last_ok = (len(report.measurements), window.draws)
                report.add(row, _layer_rows(step, names, types, est, scale))
                window = None
                took = time.perf_counter() - t0   # B_simple's draws (row.seconds) and B_noise / B_pre after them
                clock.measured(took)
                report.timing = clock.to_dict()
                if stop is not None:   # kept what it drew; the interrupt goes on
                    raise stop
                say("measured", {"step": step, "row": report.measurements[-1], "measuring_s": clock.measuring,
                                 "training_s": clock.training, "step_s": took})
            if step < cfg.steps:
                phase = "training"
                if tracker is None and track:
                    tracker, track = _training_tracker(report, track, model, optimizer, batch_size, cfg.confidence,
                                                       None if examples.iterable else examples.n, coupled)
                t0 = time.perf_counter()
                live = None if getattr(tracker, "closed", False) else tracker
                loss = train_step(model, optimizer, spec.loss, examples, batch_size, step, comm, live,
                                  TRAINING_PARTS if track == "accumulation" and live is not None else 1,
                                  report.measurements[0].loss if report.measurements else None)
                trained = step + 1
                if live is not None and live.closed:
                    track = _tracking_failed(report, live, track, step, batch_size)
                    tracker = tracker if len(tracker.draws) >= 2 else None  # too few for a window: start over
                clock.trained(time.perf_counter() - t0)
                say("train", {"step": step + 1, "loss": loss})
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP raised as one (bsprof.cli.signals)
        report.incomplete = {"reason": f"terminated by {e.name}" if hasattr(e, "signum") else "interrupted",
                             "step": step, **getattr(e, "cut", {})}
        raise
    except NonFiniteError as e:
        where = "" if "at step" in e.message else f" at step {step}"
        report.incomplete = {"reason": e.message + where, "step": step}
        raise NonFiniteError(e.message + where, e.hint, step) from None
    except BsprofError as e:
        report.incomplete = {"reason": e.message, "step": getattr(e, "step", None) or step}
        raise
    except Exception as e:  # a failure in the user's code mid-run: keep what was measured
        where, layer = _where(e, spec.path), module_at(e, model)
        report.incomplete = {"reason": f"{type(e).__name__}: {e}", "step": step, "phase": phase,
                             **({"where": where} if where else {}), **({"module": layer} if layer else {})}
        raise
    finally:
        complete = window is not None  # closed for the measurement that was interrupted: every step of it ran
        window = window or _close(tracker, cfg.confidence, scale, carried)[0]
        if report.incomplete and window is not None:
            _cut_short(report, window, trained, batch_size, complete)
        elif not report.incomplete and carried and last_ok is not None:
            _join_last(report, last_ok, carried, cfg.confidence, scale)
        report.timing = clock.to_dict()
        if examples.stream_length is not None:
            report.diagnose("stream_wrapped", f"the iterable dataset has only {examples.stream_length:,} items and was "
                            "read round again: measurement draws are runs of consecutive items (examples repeat in a "
                            "draw larger than it), without the finite-population correction, so on a dataset this "
                            "small B_simple reads high (a trial's 200 items: 26.4 [25.1, 27.5] against the exact "
                            "21.7). Give dataset() as a map-style Dataset (a list of the items): bsprof then draws "
                            "without replacement and applies the correction.")
        diagnostics.after_run(report)
    return report


def _budget(sampling: Sampling, cfg: MeasureConfig, clock: cost.RunClock, first: float | None) -> Sampling:
    """The measurement's time budget: ``measure_budget`` × the training seconds it interleaves with, those since
    the previous measurement; for the first, ``first``: the training until the next one, estimated at setup
    (``_first_budget``; None: the first runs by ``--rel-error`` alone). Budget 0: none."""
    if not cfg.measure_budget:
        return sampling
    seconds = clock.since if clock.measurements else first
    if seconds is None:
        return sampling
    return dataclasses.replace(sampling, budget_seconds=cfg.measure_budget * seconds)


def _first_budget(model, loss_fn, examples: Examples, cfg: MeasureConfig, points: list[int],
                  comm: distributed.Comm) -> float | None:
    """Training seconds until the second measurement, estimated before any training: (steps until then) × one
    training batch's forward and backward (the faster of two, the first examples, no optimizer step, nothing
    kept). None where no budget applies: --measure-budget 0, no second measurement, an iterable dataset, or
    several ranks (each would time its own clock, and ranks must stop at the same draw)."""
    from bsprof.probes.base import per_example_losses, trainable

    if not cfg.measure_budget or len(points) < 2 or examples.iterable or comm.world > 1:
        return None
    batch, count = next(examples.batches(list(range(min(cfg.batch_size, examples.n))), cfg.batch_size))
    params = trainable(model)[1]
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        torch.autograd.grad(per_example_losses(model, loss_fn, batch, count).mean(), params, allow_unused=True)
        best = min(best, time.perf_counter() - t0)
    return (points[1] - points[0]) * best


def _shared(sampling: Sampling, optimizer) -> Sampling:
    """B_simple's part of the measurement's budget: half when B_pre's draws follow (an Adam-family optimizer with
    state), so that the two together stay near the budget (``_left`` gives B_pre the rest); all of it otherwise."""
    if sampling.budget_seconds == float("inf") or not (is_adam_family(optimizer_kind(optimizer)) and optimizer.state):
        return sampling
    return dataclasses.replace(sampling, budget_seconds=sampling.budget_seconds / 2)


def _left(sampling: Sampling, t0: float) -> Sampling:
    """What is left of the budget for B_noise and B_pre after B_simple's draws (started at ``t0``), and a hard cap
    of the largest of that, half the budget (B_pre's share, ``_shared``) and B_simple's own time (which ran until
    its interval was bounded): the budget alone stops a measurement only once its interval is bounded, so an
    unresolved B_pre ran on to ``--max-seconds`` (52 s after a 1.8 s B_simple, for a lower bound)."""
    if sampling.budget_seconds == float("inf"):
        return sampling
    spent = time.perf_counter() - t0
    left = max(0.0, sampling.budget_seconds - spent)
    cap = max(left, sampling.budget_seconds / 2, spent)
    return dataclasses.replace(sampling, budget_seconds=left, max_seconds=min(sampling.max_seconds, cap))


TRIAL_EXAMPLES = 64  # examples in the timed trial's draw (``probes.trial``)


def _trial_draw(cfg: MeasureConfig, examples: Examples, comm: distributed.Comm):
    """The draw ``--method auto`` times each exact probe on: the first ``TRIAL_EXAMPLES`` examples (a multiple of
    the micro-batch), chunked for hooks and in micro-batches; None where no trial runs (another method, an
    iterable dataset, several ranks, which must not choose apart, or too few examples for two micro-batches)."""
    b = cfg.micro_batch
    if cfg.method != "auto" or examples.iterable or comm.world > 1 or b < 2:
        return None
    k = min(examples.n, TRIAL_EXAMPLES) // b * b
    if k < 2 * b:
        return None
    drawn = list(range(k))
    return list(examples.batches(drawn, cfg.chunk)), list(examples.batches(drawn, b)), k


TRAINING_PARTS = 2  # micro-batches per training step where per-example norms are not available


def _track_source(report: Report, cfg: MeasureConfig, comm: distributed.Comm, model, loss_fn,
                  pair, examples=None) -> tuple[str | None, bool]:
    """Where the training steps' nested pairs come from (B_simple over training-step windows; ``_training_tracker``)
    and whether BatchNorm couples the examples: "ranks" under DDP (each rank's share against the step's batch, as a
    DDP training step sees it); else as ``probes.choose.training_pairs`` decides, whichever probe measures at fixed
    weights: "per_example" (b = 1, in the step's own backward), "accumulation" (the step as ``TRAINING_PARTS``
    micro-batches of B/2: BatchNorm then normalises over B/2, as on two data-parallel ranks, said in the report), or
    None, with the reason in the report (a loss that mixes examples; an odd batch BatchNorm cannot split). A layer
    fed [T, B, …] (found on a few of ``examples`` at two batch sizes) has no valid per-example norms in the step's
    backward: micro-batches, said in the report."""
    if not cfg.track_training or cfg.steps == 0:
        return None, False
    if comm.world > 1:
        return "ranks", False
    with buffers_kept(model):
        source, why = training_pairs(model, loss_fn, pair)
    if source is None:
        return _no_windows(report, f"{why}, so the training steps give no nested pairs"), False
    if source == "per_example" and examples is not None:
        from bsprof.probes.hooks import fed_sequence_first

        rows = examples.first(8)
        with buffers_kept(model):
            fed = fed_sequence_first(model, loss_fn, rows, examples.n if examples.n and examples.n < 8 else 8)
        if fed:
            source, why = "accumulation", f"{', '.join(fed[:3])} {'is' if len(fed) == 1 else 'are'} fed [T, B, …]"
            report.diagnose("training_micro_batches",
                            f"{why} (the examples off dim 0: batch_first=False, or a transpose): per-example norms "
                            f"in the training steps would take T for the examples, so each step runs as "
                            f"{TRAINING_PARTS} micro-batches of B/2 for the training-step windows")
            return (source, False) if cfg.batch_size % TRAINING_PARTS == 0 else (_no_windows(
                report, f"{why}, and the training batch of {cfg.batch_size} does not split into {TRAINING_PARTS} "
                        "equal micro-batches (use an even --batch-size)"), False)
    if source == "accumulation" and cfg.batch_size % TRAINING_PARTS:
        return _no_windows(report, f"{why}, so the training steps would run as {TRAINING_PARTS} micro-batches, and "
                                   f"the training batch of {cfg.batch_size} does not split into {TRAINING_PARTS} "
                                   "equal ones (use an even --batch-size)"), False
    from bsprof.probes.choose import UNSPLIT

    if why == UNSPLIT:
        said = any(d["code"] == "batch_layout" for d in report.diagnostics)  # not with an explicit --method
        report.diagnose("training_micro_batches", ("as for the measurements (batch_layout)" if said else why)
                        + f", each training step runs as {TRAINING_PARTS} micro-batches of B/{TRAINING_PARTS}, each "
                        "collated on its own, for the training-step windows")
    return source, source == "accumulation" and why != UNSPLIT


def _training_tracker(report: Report, source: str, model, optimizer, batch_size: int, confidence: float,
                      population: int | None, coupled: bool = False):
    """(A tracker over the training steps until the next measurement, the source it uses): per-example norms in
    their backward, their micro-batches, or the ranks' shares (``_track_source``); a model whose layers have no
    per-example rule is tracked by micro-batches, which for it give the same training gradient.
    Training batches are disjoint within an epoch (``Examples.train_batch``): each is drawn without replacement
    from the ``population`` of n examples."""
    from bsprof.track import Tracker, TrackerError

    if source == "ranks":
        return distributed.TrainingPairs(confidence, population), source
    if source == "per_example":
        try:
            return Tracker(model, optimizer, source="per_example", batch_size=batch_size, confidence=confidence,
                           population=population), source
        except TrackerError as e:  # e.g. an encoder layer with batch_first=False: said, then micro-batches
            source = "accumulation"
            why = e.message.removeprefix("per-example norms are not available: ")
            report.diagnose("training_micro_batches", f"per-example norms in the training steps are not available "
                            f"({why}; the training steps use hook rules only, where a measurement's draws may use "
                            f"torch.func): each step runs as {TRAINING_PARTS} micro-batches of B/{TRAINING_PARTS} "
                            "for the training-step windows")
    if batch_size % TRAINING_PARTS:
        return None, _no_windows(report, f"the training batch of {batch_size} does not split into "
                                         f"{TRAINING_PARTS} equal micro-batches (use an even --batch-size)")
    try:
        tracker = Tracker(model, optimizer, source="accumulation", accumulation_steps=TRAINING_PARTS,
                          batch_size=batch_size, confidence=confidence, population=population)
    except TrackerError as e:
        return None, _no_windows(report, e.message)
    tracker._rows_warned = True  # the loop passes the batch it drew; dim 0 of the input may be tokens, not examples
    if coupled:
        report.diagnose("training_micro_batches", f"each training step ran as {TRAINING_PARTS} micro-batches of "
                        f"B/{TRAINING_PARTS} (gradient accumulation), for B_simple over training-step windows: "
                        f"the batch's statistics (BatchNorm's, an Embedding's scale_grad_by_freq) taken over "
                        f"B/{TRAINING_PARTS} examples, as they would be on {TRAINING_PARTS} data-parallel ranks. "
                        "--no-track-training trains on whole batches (and the headline then follows the fixed-weight "
                        "measurements, whose critical batch has a wider model range).")
    return tracker, source


def _tracking_failed(report: Report, tracker, source: str, step: int, batch_size: int) -> str | None:
    """The training-step tracker stopped at ``step`` (``tracker.closed_by`` says why): per-example norms give way to
    micro-batches from the next window on (the windows so far are kept); micro-batches that fail end the windows.
    Said in the report either way."""
    why = tracker.closed_by
    if source == "per_example" and batch_size % TRAINING_PARTS:
        return _no_windows(report, f"per-example norms of the training steps stopped at step {step}: {why}; and the "
                                   f"training batch of {batch_size} does not split into {TRAINING_PARTS} equal "
                                   "micro-batches (use an even --batch-size)")
    if source == "per_example":
        report.diagnose("training_pairs_switched", f"per-example norms of the training steps stopped at step {step}: "
                        f"{why}; later training steps are tracked as {TRAINING_PARTS} micro-batches each")
        return "accumulation"
    return _no_windows(report, f"the training-step tracker stopped at step {step}: {why}")


def _no_windows(report: Report, why: str) -> bool:
    """Say why the curve has no training-step windows (the headline then follows fixed-weight B_simple); False."""
    report.diagnose("no_training_windows", f"no B_simple over training-step windows: {why}. The curve and the "
                    "headline use the fixed-weight measurements, whose critical batch has a wider model range")
    return False


class Window(NamedTuple):
    """B_simple over the tracked training steps since the previous measurement, their number, their mean loss."""

    estimate: Estimate
    steps: int
    loss: float
    draws: tuple = ()  # the steps' pairs (a last undetermined window joins the one before: ``_join_last``)


def _close(tracker, confidence: float, scale: float, carried: list) -> tuple[Window | None, list]:
    """(the tracked training steps' ``Window``, B_simple in the report's unit, the steps carried to the next), the
    tracker's hooks removed; no window without a tracker or with fewer than two steps (a window needs two pairs for
    an interval). ``carried``: the steps of the windows before it that did not determine |G|² (lower bounds), which
    join this one, so that every step counts once in the windows the headline follows (left out, the windows whose
    |G|² came out high by chance would be kept: a low bias); this window's steps are carried on when it, too,
    leaves |G|² undetermined."""
    if tracker is None:
        return None, carried
    tracker.close()
    draws = [*carried, *tracker.draws]
    if len(draws) < 2:
        return None, draws
    est = b_simple_of(windowed(draws, None, confidence))
    weights = [d.B for d in draws]
    loss = sum(d.loss * w for d, w in zip(draws, weights)) / sum(weights)
    return (Window(est.scaled(scale), len(draws), float(loss), tuple(draws)),
            [] if est.status is Status.OK else draws)


def _join_last(report: Report, last_ok: tuple, carried: list, confidence: float, scale: float) -> None:
    """The run's last training-step windows left |G|² undetermined: their steps join the latest determined window
    (its row re-estimated over both), as a tracker log's last steps do (``track.log.measurements``), so that they
    count in the curve; left out, the end of the run, where B_simple is largest, was lost (a reviewer's finding)."""
    index, draws = last_ok
    joined = [*draws, *carried]
    est = b_simple_of(windowed(joined, None, confidence))
    if est.status is Status.OK:
        row = report.measurements[index]
        report.measurements[index] = dataclasses.replace(row, b_simple_window=est.scaled(scale),
                                                         window_steps=len(joined))


def _cut_short(report: Report, window: Window, step: int, batch_size: int, complete: bool = False) -> None:
    """A run that stopped early (``report.incomplete``) keeps the training-step window it was in the middle of (or,
    ``complete``, the whole window whose closing measurement it stopped in), by the rule of every window (at least
    two steps): a last row at ``step`` (the training steps done) with only B_simple (training) and the window's mean
    training loss; no fixed-weight measurement ended it, so the row has no B_simple and the headline and `bsprof
    schedule`, which follow measured rows, leave it out. A note says so."""
    report.add(Measurement(step=step, loss=window.loss, b_simple=Estimate.none(Status.NOT_AVAILABLE),
                           g2=Estimate.none(Status.NOT_AVAILABLE), trace_sigma=float("nan"),
                           examples_seen=step * batch_size, method="track", stopped_by="cut_short",
                           b_simple_window=window.estimate, window_steps=window.steps))
    from bsprof.output.render import estimate_text

    where = (f"in the fixed-weight measurement at step {step}, after the whole training-step window before it "
             f"(steps {step - window.steps}–{step - 1})" if complete else
             f"{window.steps} training steps into a training-step window (steps {step - window.steps}–{step - 1})")
    report.diagnose("window_cut_short", f"the run stopped early ({report.incomplete.get('reason')}) "
                    f"{where}: kept as the last row, at step {step}, B_simple (training) "
                    + (f"{estimate_text(window.estimate)} {report.unit}" if window.estimate.ok else
                       estimate_text(window.estimate))
                    + f" at mean training loss {window.loss:.4g}; cut "
                    "short, with no fixed-weight measurement after it, so the critical batch and `bsprof schedule` "
                    "leave it out")


def _fit_batch(batch_size: int, n: int | None, report: Report) -> int:
    """Shrink a training batch larger than the dataset to the dataset, with a warning in the report."""
    if n is None or batch_size <= n:
        return batch_size
    report.diagnose("batch_shrunk", f"--batch-size {batch_size} is larger than the dataset ({n} examples): "
                    f"trained with batch {n} (full-batch gradient descent). Use a smaller --batch-size.")
    return n


def trainable_groups(model: nn.Module):
    from bsprof.probes import trainable

    names, _ = trainable(model)
    return groups_of(names)


def _unit_scale(cfg: MeasureConfig, spec: Spec) -> float:
    """Multiply batch sizes by tokens per example when the unit is tokens."""
    if cfg.unit == "examples":
        return 1.0
    tpe = cfg.tokens_per_example or spec.tokens_per_example
    if not tpe:
        raise BsprofError("--unit tokens needs the number of tokens per example",
                          "pass --tokens-per-example N, or set TOKENS_PER_EXAMPLE = N in the spec file")
    return float(tpe)


__all__ = ["measure", "pick_device", "measure_steps"]
