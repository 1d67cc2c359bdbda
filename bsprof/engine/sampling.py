"""One measurement at fixed weights: draw nested pairs until the interval on B_simple is narrow enough.

The stopping rule and the sizing of B are ``bsprof.stats.stopping`` (shared with B_noise and B_pre): stop when
max(hi − B, B − lo) ≤ rel_error·B ("precision"), looked at after ``min_draws`` draws and then at the draw counts the
spread predicts are needed, or when the examples or seconds budget is spent ("examples", "time"), or after
``min_draws`` when the measurement's share of time is spent ("budget", ``Sampling.budget_seconds``). A draw of the
whole finite dataset with per-example norms is exact ("exact"). The big batch B of each draw adapts to ≈ 2·B_simple.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bsprof import distributed
from bsprof.distributed import LOCAL, Comm
from bsprof.engine.data import named_indices
from bsprof.engine.source import DrawSource
from bsprof.errors import NonFiniteError
from bsprof.probes import ChunkStats, Probe
from bsprof.probes.base import per_example_losses
from bsprof.stats import stopping
from bsprof.stats.draw import Draw
from bsprof.stats.estimators import NoiseScale, noise_scale
from bsprof.stats.stopping import EXACT, Stopper


@dataclass(frozen=True)
class Sampling:
    """How to draw: the probe, its small batch b (1 for per-example probes), the start B, the budgets."""

    probe: Probe
    b: int
    chunk: int
    start_B: int
    fixed_B: bool
    rel_error: float
    confidence: float
    min_draws: int
    max_examples: int
    max_seconds: float
    budget_seconds: float = math.inf  # after min_draws, stop once this many seconds are spent ("budget")
    cap_seconds: float = math.inf     # from min_draws on, stop before a draw would end past it, bounded or not


def groups_of(names: list[str]) -> tuple[list[str], np.ndarray]:
    """Parameter groups = owning modules ('fc1.weight' → 'fc1'); returns the group names and each param's group."""
    owners = [n.rsplit(".", 1)[0] if "." in n else "(root)" for n in names]
    order = list(dict.fromkeys(owners))
    return order, np.array([order.index(o) for o in owners])


def group_types(model: nn.Module, names: list[str]) -> list[str]:
    """The class name of each group's module ('Linear'); the model's own class for '(root)', '' if not found."""
    def kind(name: str) -> str:
        try:
            return type(model if name == "(root)" else model.get_submodule(name)).__name__
        except AttributeError:
            return ""
    return [kind(n) for n in names]


def one_draw(model: nn.Module, loss_fn, examples: DrawSource, s: Sampling, B: int, group: np.ndarray,
             loss_scale: float = 1.0, comm: Comm = LOCAL) -> Draw:
    """B examples without replacement, chunked through the probe; sums chunk statistics into one Draw.

    Under DDP ``examples.draw`` gives this rank's disjoint share of the global draw, and the sums are all-reduced
    (``distributed.reduce_sums``; the identity in one process), which also gives the across-ranks pair's small
    statistic ``local_sq`` = mean over ranks of |G^{(r)}_{B/W}|².
    """
    step = s.b if s.b > 1 else s.chunk
    drawn = examples.draw(B)
    sums, partial = chunk_sums(s.probe, model, loss_fn, examples.batches(drawn, step), B, step)
    total, local = distributed.reduce_sums(sums, comm)
    grad_sum, small, n_small, loss_sum, seen = (total.grad_sum, total.small_sq_sum, total.n_small,
                                                total.loss_sum, total.count)
    big = (total.big_sq.numpy() if total.big_sq is not None else _sq_norms(grad_sum)) / seen ** 2
    small = small.double().cpu().numpy() / n_small
    loss = float(loss_sum) / seen
    if not (math.isfinite(loss) and np.isfinite(big).all() and np.isfinite(small).all()):
        raise _non_finite(loss, big, small, _bad_examples(model, loss_fn, examples, drawn, step, comm))
    scale2, n_groups = loss_scale ** 2, int(group.max()) + 1
    return Draw(np.bincount(group, small, n_groups) / scale2, np.bincount(group, big, n_groups) / scale2,
                seen // n_small, seen, loss, examples.n, tuple(partial),
                None if local is None
                else np.bincount(group, local.cpu().numpy(), n_groups) / scale2, comm.world)


def _non_finite(loss: float, big: np.ndarray, small: np.ndarray, bad: tuple | None = None) -> NonFiniteError:
    """What went non-finite: some examples' losses at finite weights (``bad``: those examples, from
    ``_bad_examples``), the loss (NaN/Inf in the model or data, or training diverged), a squared gradient norm that
    overflowed (finite loss, infinite |g|²: norms above ~1.8e19 square past float32's 3.4e38), or the gradient
    itself."""
    if bad is not None:
        rows, drawn, value, others = bad
        return NonFiniteError(f"the loss of {len(rows)} of the {drawn} examples drawn to measure was {value} "
                              f"({named_indices(rows)}), the others' finite (median {others:.3g}), at finite "
                              "weights: bad examples, unless that median is far above the training loss (then the "
                              "training diverged: lower the lr)",
                              "check those examples for NaN or Inf in their inputs or targets (or a label out of "
                              "range for the loss), and clean or drop them; what was measured before is kept")
    if not math.isfinite(loss):
        return NonFiniteError(f"the loss is {loss} while measuring", "check the model and data for NaN/Inf; if it "
                              "appears only after training steps, lower the learning rate")
    if not (np.isnan(big).any() or np.isnan(small).any()):
        return NonFiniteError("a squared gradient norm overflowed float32 to inf while measuring (the loss is "
                              "finite, but |g|² > 3.4e38)", "check the inputs and the loss's scale (unnormalised "
                              "features, a sum where a mean was meant), or measure in float64 (model().double()); "
                              "if it appears only after training steps, lower the learning rate")
    return NonFiniteError("a gradient is NaN while measuring (the loss is finite)",
                          "check the model for operations with undefined gradients (sqrt(0), log(0)); if it appears "
                          "only after training steps, lower the learning rate")


def _bad_examples(model: nn.Module, loss_fn, examples: DrawSource, drawn, step: int, comm: Comm) -> tuple | None:
    """(dataset indices, examples drawn, a value, the others' median loss) of the drawn examples whose own loss is
    not finite, when only some are and the weights are finite (one process, a map-style dataset: indices to name);
    else None. Run only after a draw went non-finite: the losses again, without gradients."""
    if comm.world > 1 or not isinstance(drawn, list) or not all(isinstance(i, int) for i in drawn) \
            or not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return None
    try:
        with torch.no_grad():
            losses = torch.cat([per_example_losses(model, loss_fn, batch, count).detach().float().cpu()
                                for batch, count in examples.batches(drawn, step)])
    except Exception:  # the diagnosis must not hide the error it explains
        return None
    bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
    if not bad or len(bad) == len(drawn) or len(losses) != len(drawn):
        return None
    return [drawn[r] for r in bad], len(drawn), losses[bad[0]].item(), float(losses[torch.isfinite(losses)].median())


LOSS_BATCHES = (4, 64)  # the fewest and most training batches forwarded for a BatchNorm model's measurement loss


def loss_at_batch(model: nn.Module, loss_fn, examples: DrawSource, batch_size: int, examples_wanted: int) -> float:
    """The mean loss of about ``examples_wanted`` drawn examples (a measurement's big batch B; ``LOSS_BATCHES``
    batches at least and at most, fewer in a small dataset) in batches of ``batch_size``, each forwarded whole
    without gradients: a BatchNorm model's loss as its training batches see it, where a measurement's micro-batches
    normalise over b examples and their loss depends on b. The caller keeps the buffers (running statistics)."""
    n = examples.n
    k = min(max(-(-examples_wanted // batch_size), LOSS_BATCHES[0]), LOSS_BATCHES[1])
    k = k if n is None else min(k, n // batch_size)
    if k < 1:
        k, batch_size = 1, n
    total, seen = 0.0, 0
    with torch.no_grad():
        for batch, count in examples.batches(examples.draw(k * batch_size), batch_size):
            total += float(per_example_losses(model, loss_fn, batch, count).double().sum())
            seen += count
    return total / seen


def partial_marks(step: int, B: int) -> set[int]:
    """The partial-sum sizes below B at which a draw records |G|² for the 1/B regression: step (free: the first
    small batch) and 2·step. With b and B they give the regression three points, c(B) = 1/b, 1/(2b), 1/B: the
    middle one halfway in c between the ends when B ≫ b, where a bend of |G_B|² in c shows most. Marks at 4b, 8b,
    … sit near c = 0 beside B's own point and each costs one read of the whole gradient (docs/speed.md)."""
    return {m for m in (step, 2 * step) if m < B}


def chunk_sums(probe: Probe, model: nn.Module, loss_fn, chunks, B: int, step: int) -> tuple[ChunkStats, list]:
    """Sum the probe's statistics over the chunks of one draw, with |G|² of the partial sums at ``partial_marks``.

    A probe with a ``whole_draw`` (micro-batches: plain gradient accumulation) runs the draw itself. Otherwise
    ``probe.chunk`` runs chunk by chunk: gradients are added in place (chunk functions return fresh tensors); the
    small per-chunk numbers are stacked and summed once per draw, with one device sync per draw.
    """
    marks = partial_marks(step, B)
    if probe.whole_draw is not None:
        return probe.whole_draw(model, loss_fn, chunks, marks, B)
    grad_sum, smalls, losses, partial = None, [], [], []
    n_small, seen = 0, 0
    for batch, count in chunks:
        st: ChunkStats = probe.chunk(model, loss_fn, batch, count)
        if grad_sum is None:
            grad_sum = st.grad_sum
        else:
            torch._foreach_add_(grad_sum, st.grad_sum)
        smalls.append(st.small_sq_sum)
        losses.append(st.loss_sum)
        n_small, seen = n_small + st.n_small, seen + count
        del st, batch  # free this chunk's gradients before the next one is computed
        if seen in marks:
            partial.append((seen, torch.stack(torch._foreach_norm(grad_sum)).square().sum() / seen ** 2))
    partial = [(size, float(sq)) for size, sq in partial]
    small = torch.stack(smalls).sum(0)
    return ChunkStats(grad_sum, small, n_small, torch.stack(losses).sum(), seen), partial


def _sq_norms(tensors: list[torch.Tensor]) -> np.ndarray:
    return torch.stack(torch._foreach_norm(tensors)).double().cpu().square().numpy()


def next_batch(est: NoiseScale | None, s: Sampling, B: int, n: int | None, world: int = 1) -> int:
    """The next draw's B by ``stopping.next_batch`` (≈ 2·B_simple, a multiple of b·world, at most n)."""
    return stopping.next_batch(None if est is None else est.b_simple_estimate, B, s.b, s.start_B, s.fixed_B, n, world)


def measure_at(model: nn.Module, loss_fn, examples: DrawSource, s: Sampling, group: np.ndarray,
               on_draw: Callable[[NoiseScale], None] | None = None, comm: Comm = LOCAL,
               drawn: list[Draw] | None = None) -> tuple[NoiseScale, list[Draw], str]:
    """Draw until the stopping rule (``stopping.Stopper``) fires. Returns the estimate, the draws, and what stopped
    it ("precision", "examples", "time", "budget", "exact"). ``drawn``: the list the draws are appended to as they
    arrive, so that a caller interrupted mid-measurement (Ctrl-C, SIGTERM) keeps them (``so_far``).

    Under DDP every rank follows rank 0's estimate and clock, so all ranks stop at the same draw. A probe's
    ``measuring`` context (the micro-batch probe's hooks) is held around all the draws.
    """
    with s.probe.measuring(model) if s.probe.measuring is not None else contextlib.nullcontext():
        return _measure(model, loss_fn, examples, s, group, on_draw, comm, [] if drawn is None else drawn)


def so_far(model: nn.Module, draws: list[Draw], s: Sampling) -> NoiseScale | None:
    """The estimate of a measurement cut short after ``draws``, as ``measure_at`` would have returned it there
    (stopped by ``stopping.INTERRUPTED``); None with too few draws to keep (``stopping.kept_from``)."""
    if len(draws) < stopping.kept_from(s.min_draws):
        return None
    return noise_scale(draws, s.confidence, same_weights=not _dropout(model))


def _measure(model: nn.Module, loss_fn, examples: DrawSource, s: Sampling, group: np.ndarray,
             on_draw: Callable[[NoiseScale], None] | None, comm: Comm,
             draws: list[Draw]) -> tuple[NoiseScale, list[Draw], str]:
    stop = Stopper(s.rel_error, s.min_draws, s.max_examples, s.max_seconds, s.budget_seconds)
    masks = _dropout(model)  # whole-dataset draws are then not exact: each has its own dropout masks
    B, spent, t0 = next_batch(None, s, s.start_B, examples.n, comm.world), 0, time.perf_counter()
    while True:
        draws.append(one_draw(model, loss_fn, examples, s, B, group, comm=comm))
        spent += draws[-1].B
        est, elapsed = distributed.follow_main((noise_scale(draws, s.confidence, same_weights=not masks),
                                                time.perf_counter() - t0), comm)
        if on_draw:
            on_draw(est)
        if s.b == 1 and examples.n is not None and B == examples.n and not masks:
            return est, draws, stopping.degenerate(est.g2_hi, _ratio(est)) or EXACT
        why = stop(len(draws), est.rel_halfwidth, spent, elapsed, est.g2_hi, _ratio(est))
        n = len(draws)
        if why is None and n >= s.min_draws and elapsed * (n + 1) / n > s.cap_seconds:
            why = stopping.TIME  # the measurement's hard cap, once it has its minimum of draws
        if why is not None:
            return est, draws, why
        B = next_batch(est, s, B, examples.n, comm.world)


def _dropout(model: nn.Module) -> bool:
    """A dropout layer active in train mode: a draw of the whole dataset then depends on its masks, so one such draw
    is not the exact value (a trial: 1220, 1190, 1290 "exact" for three seeds of a BERT); the draws go on."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0 for m in model.modules())


def _ratio(est: NoiseScale) -> float:
    """tr Σ/|G|² as estimated (B_simple's point value, whatever its status); NaN when |G|² ≤ 0."""
    return est.trace_sigma / est.g2 if est.g2 > 0 else math.nan
