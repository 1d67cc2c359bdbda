"""The noise scale inside your own training loop: each optimizer step becomes one nested pair at its weights.

    tracker = bsprof.Tracker(model, optimizer, accumulation_steps=4, batch_size=64, log="gns.jsonl")
    for x, y in loader:                     # 4 micro-batches of 16 per optimizer step
        (loss_fn(model(x), y) / 4).backward()
        if tracker.ready:                   # or count the micro-steps yourself
            tracker.step(loss=loss); optimizer.step(); optimizer.zero_grad()
    tracker.estimate(window=100)            # Estimate: B_simple over the last 100 steps, with its interval

One step at fixed weights gives (McCandlish et al. 2018, App. A.1, with E|G_B|² = |G|² + tr(Σ)/B)
    |G|²_est = (B|G_B|² − b|G_b|²)/(B − b),     tr(Σ)_est = (|G_b|² − |G_B|²)/(1/b − 1/B),     b < B,
from one of these sources (``sources.py``), chosen per step by ``source="auto"``, best (smallest b) first:
  per_example    backward inside ``with tracker.per_example():`` → b = 1, B = the step's batch;
  accumulation   k ≥ 2 backward passes per step → b = the micro-batch, B = k·b;
  ddp            a DistributedDataParallel model on W ≥ 2 ranks → b = the per-rank micro-batch, B = W·k·b
                 (with accumulation the micro-batch of one rank: the smallest b; ``no_sync`` is fine).
  fsdp           an FSDP2 (``fully_shard``, 1-D mesh) model on W ranks → b = the per-rank micro-batch, B = W·k·b:
                 |G_b|² from hooks on the unsharded parameters before the reduce-scatter, |G_B|² as the sum over
                 ranks of the squared norms of the gradient shards after it (exact; no full gradient is gathered).
                 Chosen for DTensor parameters; per-example norms and ``precondition`` are not available there.

Scale. The hooks see u·(gradient of the mean loss), where u is what the backward's loss was multiplied by:
``accumulation_steps=k`` declares the usual ``(loss / k).backward()`` (u = 1/k); without it each backward is
taken to be on the plain mean loss (u = 1), and k is counted. ``step(loss_scale=scaler.get_scale())`` removes
an AMP loss scale (before ``scaler.update()``). B_simple is invariant to any constant u; |G|² and tr(Σ) in the
log are right only when u is. The loss must be a MEAN over the examples (a sum is not a constant scale).

Correct by construction: the norms are taken by hooks during backward, so clipping, ``unscale_`` or anything
else done to ``.grad`` afterwards changes nothing; steps with non-finite gradients are skipped and counted
(``skipped``), and so are steps whose batch does not split into equal micro-batches, in one process or on every
rank (``uneven``). The user's objects are never changed: the tracker adds hooks and removes them in ``close()``
(also when it raises). Call ``zero_grad()`` between steps, as every loop does.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
import weakref

import torch
import torch.distributed as dist
from torch import nn

from bsprof.errors import BsprofError, ConfigError, known_options
from bsprof.probes.base import trainable
from bsprof.probes.handles import forward_hook
from bsprof.probes.precondition import adam_preconditioner
from bsprof.results import Estimate, Measurement, is_adam_family, optimizer_kind, optimizer_momentum
from bsprof.stats.draw import Draw
from bsprof.track.log import LogWriter
from bsprof.track.sources import Backwards, FsdpHooks, PerExample, StepHooks, fsdp_param_groups, fsdp_problem
from bsprof.track.window import Ema, EmaView, b_simple_of, measurement, windowed

SOURCES = ("auto", "accumulation", "per_example", "ddp", "fsdp")
UNITS = ("examples", "sequences", "tokens")


_OPEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> weakref to its open tracker


def open_tracker(model: nn.Module) -> Tracker | None:
    """The open (not closed) tracker on ``model`` (or on the module a DDP wrapper holds), if any: one per model."""
    ref = _OPEN.get(getattr(model, "module", model))
    tracker = ref() if ref is not None else None
    return tracker if tracker is not None and not tracker.closed else None


class TrackerError(BsprofError):
    """The tracker cannot turn this training step into a nested pair; the hooks are removed, ``.grad`` is
    untouched, and training can go on without it."""


def _updated_by(optimizer) -> set[int] | None:
    """ids of the tensors an optimizer updates (None: no optimizer, or one without param_groups)."""
    groups = getattr(optimizer, "param_groups", None)
    if not groups:
        return None
    return {id(p) for g in groups for p in g.get("params", ())}


def _listed(names: list[str], most: int = 3) -> str:
    """'a, b, c' or 'a, b, c and 4 more'."""
    head = ", ".join(names[:most])
    return head if len(names) <= most else f"{head} and {len(names) - most} more"


class _InputRows:
    """Dim 0 of the model's first input over a step's forwards, counted two ways, both by a forward hook.

    Cheap (from the start): the rows of every forward with grad enabled whose output requires grad, taken as the
    step's rows when the step ran exactly one such forward per backward pass. Exact (from the first step where it
    did not: a validation forward with grad enabled, two forwards per pass, …): each forward also puts a hook on the
    autograd node of its output, which counts the forward when a backward reaches it, once however many passes do
    (a gradient penalty's autograd.grad, then the backward); a forward that no backward reaches counts nothing, and
    nothing outlives the graph. A node hook costs ~12 µs per forward and backward on the CPU (~2% of a small
    model's accumulation step), so it is paid only where the cheap count cannot be trusted. (A plain object, so that
    a copy or pickle of the model with the tracker attached still works.)"""

    def __init__(self):
        self.exact = False
        self.seen = 0    # exact: rows of the forwards a backward reached
        self.rows = 0    # rows of every forward with grad enabled
        self.calls = 0   # forwards with grad enabled (backward passes beyond them: ``step``)
        self.flat = False  # a forward whose tensor inputs disagree on dim 0: its rows are not examples

    def __call__(self, module, args, kwargs, out) -> None:
        if not torch.is_grad_enabled():
            return
        self.calls += 1
        x = args[0] if args else next(iter(kwargs.values()), None)
        t = _first_grad_tensor(out) if isinstance(x, torch.Tensor) and x.dim() > 0 else None
        if t is not None and _flat(args, kwargs, x.shape[0]):
            self.flat = True  # (tokens [N], offsets [B]) as nn.EmbeddingBag takes them: N is no batch size
        elif t is not None:
            self.rows += x.shape[0]
            if self.exact:  # on the node: cheaper than Tensor.register_hook's Python wrapper
                reached = functools.partial(self._reached, [x.shape[0]])
                t.register_hook(reached) if t.grad_fn is None else t.grad_fn.register_prehook(reached)

    def _reached(self, rows: list, *_) -> None:
        self.seen += rows[0]
        rows[0] = 0

    def reset(self, passes: int) -> tuple[int, int]:
        """(the step's rows, 0 where unknown; its forwards with grad enabled), given its backward passes. A cheap
        count that is not one forward per pass is unknown, and turns the exact count on for the next steps."""
        if self.flat:
            rows = 0
        elif self.exact:
            rows = self.seen
        elif self.calls == passes:
            rows = self.rows
        else:
            rows, self.exact = 0, True
        out = (rows, self.calls)
        self.seen, self.rows, self.calls, self.flat = 0, 0, 0, False
        return out


def _flat(args, kwargs, rows: int) -> bool:
    """Whether the forward takes nn.EmbeddingBag's flat layout, (tokens [N], offsets [B]): a 1-D first input and a
    shorter 1-D tensor beside it, so that the first one's rows are tokens, not examples. (A mask [D] or [T, T], an
    h0 [L, B, H] or position ids [1, T] beside an input [B, …] leave its rows the examples.)"""
    if not (args and isinstance(args[0], torch.Tensor) and args[0].dim() == 1):
        return False
    return any(isinstance(a, torch.Tensor) and a.dim() == 1 and a.shape[0] < rows
               for a in (*args[1:], *kwargs.values()))


def _release(input_hooks, hooks, per_example_source, log) -> None:
    """Remove a tracker's hooks and close its log (``Tracker.close``, or its finalizer when it is collected)."""
    for h in input_hooks:
        h.remove()
    hooks.remove()
    if per_example_source is not None:
        per_example_source.armed = False
        per_example_source.remove()
    if log is not None:
        log.close()


class _Uneven(Exception):
    """A step whose batch does not split into its micro-steps equally (inside the tracker: never raised to the user)."""

    def __init__(self, batch_size: int, passes: int, declared: int | None = None):
        super().__init__(batch_size, passes)
        self.batch_size, self.passes, self.declared = batch_size, passes, declared  # declared: fewer passes than it


def positive_int(value) -> bool:
    """An int (numpy's too, not a bool, not a string) of at least 1."""
    return not isinstance(value, (bool, str, bytes)) and hasattr(value, "__index__") and value.__index__() >= 1


def check_window(window) -> None:
    """A window of steps: at least 2 (one step's pair has no interval: the Fieller interval needs two), or None."""
    if window is not None and not (positive_int(window) and window >= 2):
        raise TrackerError(f"window must be a number of steps, at least 2, or None for all kept steps (got "
                           f"{window!r})", "a window of N steps averages their pairs; e.g. window=100")


def _first_grad_tensor(out, depth: int = 0):
    """The first tensor that requires grad in a model's output (a tensor, or inside tuples, lists, dicts: a Hugging
    Face ``ModelOutput``), or None."""
    if isinstance(out, torch.Tensor):
        return out if out.requires_grad else None
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) and depth < 3 else ()
    return next((t for o in items if (t := _first_grad_tensor(o, depth + 1)) is not None), None)


def _unwrapped(optimizer):
    """The torch optimizer inside a wrapper (accelerate's ``AcceleratedOptimizer``, as the HF Trainer hands it
    over, or Lightning's ``LightningOptimizer``): its class names the family (Adam's factor, B_pre), its state
    holds Adam's second moment."""
    for _ in range(3):
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    return optimizer


def _ddp_of(model: nn.Module):
    from torch.nn.parallel import DistributedDataParallel

    return model if isinstance(model, DistributedDataParallel) else None


def _world(ddp, group) -> int:
    if ddp is None or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _has_dtensor(params) -> bool:
    return any(type(p).__name__ == "DTensor" or type(getattr(p, "data", None)).__name__ == "DTensor"
               for p in params)


class Tracker:
    """Turns each optimizer step of the user's loop into a ``Draw`` (module docstring); keeps them, logs them.

    model: the module whose ``backward`` passes to watch (the DDP wrapper under DDP).
    optimizer: optional; gives the learning rate in the log and, with ``precondition=True`` under the Adam family,
        the preconditioner P = 1/(√v̂ + ε) for B_pre = tr(PΣ)/(GᵀPG) (one more multiply per gradient element per
        backward, and one parameter-sized tensor per step: off by default).
    accumulation_steps: k backward passes per optimizer step on ``loss / k`` (checked at each step).
    batch_size: examples per optimizer step on this process (all its micro-batches; under DDP/FSDP per rank, not the
        global batch); or pass it to ``step``.
    source: "auto", or one of "accumulation", "per_example", "ddp", "fsdp" to insist on it (module docstring).
    log: a path for the JSONL log (``bsprof.track.log``), written by rank 0.
    unit: the unit of ``batch_size`` ("examples", "sequences", "tokens"), written to the log header; in tokens
        under per-example norms (which count sequences) b = ``batch_size`` ÷ sequences, one sequence's tokens.
    population: the number of examples (in ``batch_size``'s unit) that each step's batch is drawn from without
        replacement: ``len(dataset)`` for a shuffling DataLoader, whose batches within an epoch are disjoint
        (``drop_last=True``). It applies the finite-population correction c(B) = (1/B − 1/n)·n/(n − 1)
        (``stats.estimators``); without it each step counts as drawn i.i.d., and on a small dataset B_simple is
        biased high by about B_simple/n. Leave it None for a large or streamed dataset.
    """

    @known_options
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 accumulation_steps: int | None = None, batch_size: int | None = None, source: str = "auto",
                 log=None, unit: str = "examples", precondition: bool = False, ema_beta: float = 0.99,
                 process_group=None, confidence: float = 0.9, population: int | None = None):
        if not isinstance(model, nn.Module):
            raise TrackerError(f"model must be a torch.nn.Module (got {type(model).__name__})",
                               "pass the model you train: bsprof.Tracker(model, optimizer, ...)")
        if source not in SOURCES:
            raise TrackerError(f"unknown source {source!r}", f"use one of {', '.join(SOURCES)}")
        if accumulation_steps is not None and not positive_int(accumulation_steps):
            raise TrackerError(f"accumulation_steps must be an int of at least 1 (got {accumulation_steps!r})",
                               "pass the number of backward passes per optimizer step")
        if batch_size is not None and not positive_int(batch_size):
            raise TrackerError(f"batch_size must be an int of at least 1 (got {batch_size!r})",
                               "pass the examples per optimizer step on this process (int(...) of a value read "
                               "from a config), or None to pass it at each tracker.step(batch_size=...)")
        if unit not in UNITS:
            raise TrackerError(f"unknown unit {unit!r}", f"use one of {', '.join(UNITS)} (what batch_size counts)")
        if optimizer is not None and not hasattr(_unwrapped(optimizer), "param_groups"):
            raise TrackerError(f"optimizer must be a torch optimizer (got {type(optimizer).__name__}: "
                               f"{str(optimizer)[:40]})", "bsprof.Tracker(model, optimizer, ...); the other options "
                               "by name (accumulation_steps=..., batch_size=...)")
        if population is not None and not (isinstance(population, int) and population >= 2):
            raise TrackerError(f"population must be an int of at least 2 (got {population!r})",
                               "pass len(dataset), or None for a large or streamed dataset")
        self.population = population
        inner = getattr(model, "module", model)
        if open_tracker(model) is not None:
            raise TrackerError("this model already has an open bsprof tracker: two would both watch its backward "
                               "passes (a NoiseScale callback added twice, or a tracker not closed before the next)",
                               "close the first (tracker.close(), or `with bsprof.Tracker(...) as tracker:`), "
                               "or keep one tracker per model")
        optimizer = _unwrapped(optimizer)
        self.model, self.optimizer, self.source = model, optimizer, source
        self.closed_by: str | None = None  # the error that closed the tracker
        self.accumulation_steps = None if accumulation_steps is None else int(accumulation_steps)
        self.batch_size, self.unit = None if batch_size is None else int(batch_size), unit
        self.group, self.confidence = process_group, confidence
        self.ddp = _ddp_of(model)
        names, self.params = trainable(model)
        if not self.params:
            raise TrackerError("the model has no parameter that requires a gradient", "pass the model you train")
        updated = _updated_by(optimizer)
        self._optimizer, self._not_updated = optimizer, []  # trainable but not the optimizer's: checked at each step
        if updated and not any(id(p) in updated for p in self.params):   # another model's optimizer?
            warnings.warn(f"bsprof tracker: the optimizer updates none of the model's {len(self.params)} trainable "
                          f"parameters (it holds {len(updated)} other tensors): is it this model's optimizer? The "
                          "noise scale is measured over every trainable parameter of the model, and the lr logged is "
                          "that optimizer's; pass Tracker(model, optimizer) with the optimizer that trains the model",
                          stacklevel=2)
        if updated is not None and any(id(p) in updated for p in self.params):
            left = [n for n, p in zip(names, self.params) if id(p) not in updated]
            if left:  # gradients the optimizer never applies are not the training's noise
                warnings.warn(f"bsprof tracker: the optimizer does not update {len(left)} of the model's "
                              f"{len(self.params)} trainable parameters ({_listed(left)}): the noise scale is "
                              "measured over the ones it updates", stacklevel=2)
                self._not_updated = [(n, p) for n, p in zip(names, self.params) if id(p) not in updated]
                names, self.params = map(list, zip(*[(n, p) for n, p in zip(names, self.params) if id(p) in updated]))
        tracked = {id(p) for p in self.params}
        self._asleep = [(n, p) for n, p in model.named_parameters() if id(p) not in tracked and not p.requires_grad
                        and (updated is None or id(p) in updated)]   # frozen now: checked at each step
        self.fsdp = _has_dtensor(self.params)
        self.no_per_example = None  # why per-example norms are off regardless of the model's layers
        if self.fsdp:
            self.world, self.group = self._fsdp_world(model, source, process_group)
            self.no_per_example = "per-example norms under FSDP2 (fully_shard) are not supported"
        else:
            if source == "fsdp":
                raise TrackerError("source='fsdp' needs a model whose parameters were sharded by fully_shard (FSDP2)",
                                   "call torch.distributed.fsdp.fully_shard on the model, or use source='auto'")
            self.world = _world(self.ddp, process_group)
            ranks = dist.get_world_size(process_group) if dist.is_available() and dist.is_initialized() else 1
            if self.ddp is None and source == "auto" and ranks > 1:
                raise TrackerError(f"a process group of {ranks} ranks is initialised, but the model is not a "
                                   "DistributedDataParallel (or FSDP2) model: if DDP wraps it (the Tracker made on "
                                   "ddp_model.module, or before DDP(model)), .grad holds the ranks' averaged gradient "
                                   "and the one-process pair would be silently wrong",
                                   "make the Tracker after wrapping, on the wrapper: bsprof.Tracker(ddp_model, ...) "
                                   "(under FSDP2, after fully_shard(model)); "
                                   "if each rank trains a model of its own, without gradient sync, say so with "
                                   "source='accumulation' or source='per_example'")
        self.rank = dist.get_rank(self.group) if self.world > 1 else 0
        if source == "ddp" and self.world < 2:
            raise TrackerError("source='ddp' needs a DistributedDataParallel model on 2 or more ranks; this is "
                               "one process", "use accumulation_steps >= 2 or `with tracker.per_example():`")
        self.precondition = precondition and optimizer is not None and is_adam_family(optimizer_kind(optimizer))
        if precondition and not self.precondition:
            warnings.warn("precondition=True needs an Adam-family optimizer: B_pre is not tracked", stacklevel=2)
        elif self.precondition and source == "per_example":
            warnings.warn("precondition=True with source='per_example': B_pre comes from the accumulation or DDP "
                          "pair only, so it is not tracked (docs/tracker.md); use accumulation for it",
                          stacklevel=2)
        if self.precondition and self.fsdp:
            self.precondition = False
            warnings.warn("precondition=True is not supported under FSDP2 (Adam's state is sharded, the small-batch "
                          "gradients are not): B_pre is not tracked", stacklevel=2)
        self.per_example_source = None
        if source in ("auto", "per_example") and not self.fsdp:
            self.per_example_source = PerExample(model.module if self.ddp else model, names, self.params)
            if source == "per_example" and self.per_example_source.problem:
                raise TrackerError(f"per-example norms are not available: {self.per_example_source.problem}",
                                   "use gradient accumulation (accumulation_steps >= 2) instead")
            if source == "per_example" and self.per_example_source.recurrent:
                raise TrackerError("per-example norms are not available: no per-example rule for the recurrent "
                                   f"layer(s) {', '.join(self.per_example_source.recurrent[:3])}",
                                   "use gradient accumulation (accumulation_steps >= 2) instead, or DDP on 2+ ranks")
            if not (accumulation_steps and accumulation_steps > 1) or source == "per_example":
                self.per_example_source.install()
        weights = (lambda: adam_preconditioner(optimizer, self.params)) if self.precondition else None
        every = accumulation_steps if source != "per_example" else None
        self.hooks = (FsdpHooks(model, self.params, every) if self.fsdp
                      else StepHooks(self.params, self.ddp, weights, self.per_example_source, every))
        self.draws: list[Draw] = []
        self.draws_pre: list[Draw] = []
        self.steps: list[int] = []         # the step number of each draw
        self.skipped = 0                   # steps with non-finite gradients
        self.uneven = 0                    # one process: steps left out, their batch not split equally (``step``)
        self.examples = 0                  # examples (in ``unit``) seen before the next step
        self.step_count = 0
        self.ema = Ema(ema_beta)
        self.closed = False
        self.rows = _InputRows()  # dim 0 of the model's first input, summed over this step's forwards with grad
        self._rows_warned = False
        self._rows_agree = False  # a step's rows equalled the tracker's batch_size: a shorter step is a short batch
        self._short_warned = False
        self._scale_warned = False
        self._few_warned = self._split_warned = False   # said once: a short step, an uneven split (``_uneven``)
        self._back_warned = False                       # and a step number going back (``_arguments``)
        # a recurrent or attention layer fed [T, B, …]: dim 0 of the model's input is then not the batch
        self._seq_first = any(isinstance(m, (nn.RNNBase, nn.MultiheadAttention)) and not getattr(m, "batch_first", True)
                              for m in model.modules())
        self._passes_warned = False
        self._input_hook = (forward_hook(model, self.rows, with_kwargs=True),)  # (not carried by a copy)
        self.log = None
        if log is not None and self.rank == 0:
            try:
                self.log = LogWriter(log, unit, source=source, world_size=self.world,
                                     accumulation_steps=accumulation_steps,
                                     optimizer=optimizer_kind(optimizer) if optimizer is not None else None,
                                     optimizer_momentum=optimizer_momentum(optimizer))
            except BaseException as e:
                self.close()   # no hook left behind on the user's model
                if isinstance(e, ConfigError):   # the log held by another process: one type to catch
                    raise TrackerError(e.message, e.hint) from None
                raise
        _OPEN[inner] = weakref.ref(self)
        # a tracker dropped without close() (a notebook cell that raised) takes its hooks with it when collected:
        # they had stayed on the model, slowing every step, with a new tracker accepted on top of them
        self._release = weakref.finalize(self, _release, self._input_hook, self.hooks, self.per_example_source,
                                         self.log)

    # ------------------------------------------------------------------ the loop
    @contextlib.contextmanager
    def per_example(self, model: nn.Module | None = None):
        """Per-example norms (b = 1) of the backward passes inside the block: ``with tracker.per_example():
        loss.backward()``. The forward may run before the block (its layers are hooked from the start)."""
        if self.closed:
            raise self._closed("per_example")
        src = self.per_example_source
        if model is not None and model is not self.model and model is not getattr(self.model, "module", None):
            self._fail("tracker.per_example(model) got another model than the tracker's",
                       "pass the model given to Tracker(...), or nothing")
        if src is None or src.problem or not src.handles:  # the tracker stays usable for other sources
            why = self.no_per_example or (src.problem if src is not None and src.problem else
                                          "the tracker was made for accumulation (source='auto' with "
                                          "accumulation_steps hooks no layers)")
            raise TrackerError(f"per-example norms are not available: {why}",
                               "use gradient accumulation (accumulation_steps >= 2)" if self.source == "per_example"
                               or src is not None and src.problem else
                               "drop the `with tracker.per_example():` block (this tracker measures "
                               + ("across the ranks" if self.world > 1 else "the micro-batches of your accumulation")
                               + ")" + ("" if self.no_per_example else
                                        ", or make the tracker with source='per_example'"))
        src.armed = True
        try:
            yield self
        finally:
            src.armed = False

    @property
    def micro_steps(self) -> int:
        """Backward passes since the last ``step``."""
        return self.hooks.record.count

    @property
    def ready(self) -> bool:
        """``accumulation_steps`` backward passes have run since the last ``step`` (always True without it)."""
        return self.micro_steps >= (self.accumulation_steps or 1)

    def step(self, batch_size: int | None = None, *, loss=None, lr: float | None = None,
             loss_scale: float | None = 1.0, step: int | None = None) -> Draw | None:
        """Close the optimizer step (after its last backward, before or after clipping, before ``scaler.update``):
        turn its backward passes into a Draw, keep it and log it. Returns None for a skipped (non-finite) step.

        batch_size: examples in this step on this process (default: the tracker's); loss: the step's loss (for the
        log); lr: default from the optimizer; loss_scale: the AMP loss scale of this step's backward passes (None:
        1.0, no scale); step: this step's number (default: one more than the last; pass it once when resuming from a
        checkpoint, and the log continues the earlier run's, ``read_log``).
        """
        if self.closed:
            raise self._closed("step")
        try:
            loss_scale, lr, step, batch_size, loss = self._arguments(loss_scale, lr, step, batch_size, loss)
        except TrackerError:
            if self.world > 1:  # the other ranks are in this step's all-reduce: join it, flagged, so they raise too
                self._reduce_step(math.nan, math.nan, True, 0, 0)
            raise
        record = self.hooks.take()
        rows, calls = self.rows.reset(record.count)
        if record.count == 0 and self.hooks.taken == 1 and self.world == 1:  # made between a step's backward and step
            self.step_count = (self.step_count if step is None else step) + 1
            self.examples += batch_size if batch_size is not None else self.batch_size or 0
            warnings.warn("bsprof tracker: no backward pass ran between the Tracker's creation and its first "
                          "tracker.step(): either the tracker was made after this step's backward passes (then "
                          "measuring starts with the next step), or tracker.step() is called before the backward "
                          "passes, at the top of the loop (then every step would log the previous step's pair with "
                          "this step's lr): call it after the step's last backward, before optimizer.step()",
                          stacklevel=2)
            return None
        given = batch_size if batch_size is not None else self.batch_size
        if self.world == 1 and not record.per_example and given and not self._seq_first:
            if rows == given:
                self._rows_agree = True   # the rows counted are this model's examples
            elif batch_size is None and self._rows_agree and 0 < rows < given and calls == record.count:
                batch_size = given = rows  # an epoch's short last batch (drop_last=False): the rows it saw
        declared = self.accumulation_steps if self.source != "per_example" else None
        if (self.world == 1 and not record.per_example and declared and 0 < record.count < declared
                and (self.draws or self.skipped or self.uneven)):
            # after full steps, fewer micro-steps than declared: an epoch's short last step (its batch came short)
            return self._uneven(rows or (given or 0) * record.count // declared, record.count, step, declared)
        if self.world == 1 and not record.per_example and given and record.count > 1 and given % record.count:
            return self._uneven(given, record.count, step)
        src = self.per_example_source
        if src is not None and record.per_example and src.square_mods:  # once: layers fed [N, N, …], N = examples
            why = src.check_layout()
            record.per_example_failure = record.per_example_failure or why
        number = self.step_count if step is None else step
        self.step_count = number + 1
        if 0 < calls < record.count:  # a forward backpropagated more than once
            what = (f"{record.count} backward passes ran in this step through {calls} forward(s) of the model (two "
                    "losses, each with its own backward and retain_graph=True; torch.autograd.grad on the parameters "
                    "before the backward; a reentrant checkpoint, use_reentrant=True, which runs a backward of its "
                    "own)")
            if record.per_example:  # per-example norms of one forward's examples, taken twice: wrong
                if self.world > 1:
                    self._reduce_step(math.nan, math.nan, True, 0, 0)
                self._fail(f"{what}: the per-example norms would count the forward's examples once per pass",
                           "sum the losses and call backward once: (l1 + l2).backward(); checkpoint with "
                           "use_reentrant=False")
            if not self._passes_warned:  # micro-batches: right for losses on disjoint slices of one forward's batch
                self._passes_warned = True
                warnings.warn(f"bsprof tracker: {what}. Each pass is taken for a micro-batch: right when each loss "
                              "covers its own slice of the batch, wrong when they are terms of one loss on the same "
                              "examples (sum them and call backward once) (shown once)", stacklevel=2)
        try:
            draw, pre = self._pair(record, batch_size if batch_size is not None else self.batch_size, loss,
                                   loss_scale, rows, given=batch_size is not None)
        except _Uneven as e:  # over several ranks, every rank's batch uneven: left out on all of them
            return self._uneven(e.batch_size, e.passes, step, e.declared)
        if not record.per_example:  # the per-example hooks count the examples themselves (checked in the pair)
            self._check_rows(draw.B // self.world, rows, calls, record.count)
        lr = self._lr() if lr is None else lr
        small, big = draw.small_sq_total, draw.big_sq_total  # once: a numpy sum right after a backward costs ~10 µs
        line = {"step": number, "examples": self.examples, "b": draw.b, "B": draw.B, "small_sq": small,
                "big_sq": big, "loss": draw.loss, "lr": lr}
        if draw.n is not None:
            line["n"] = draw.n
        if pre is not None:
            line.update(small_sq_pre=pre.small_sq_total, big_sq_pre=pre.big_sq_total)
        self.examples += draw.B
        if not (math.isfinite(small) and math.isfinite(big)):
            self.skipped += 1
            if loss_scale and loss_scale > 1e15 and not self._scale_warned and self.rank == 0:
                self._scale_warned = True
                warnings.warn(f"bsprof tracker: step {number}'s squared gradient norms were not finite at loss scale "
                              f"{loss_scale:.3g}; if the GradScaler found no overflow (bf16 or fp32 training, where "
                              "its scale only grows), the squares of the scaled gradients passed float32's range "
                              "(the per-example norms, or any on an accelerator; the accumulation source on the CPU "
                              "takes them in float64 there): GradScaler is not needed under bf16 (drop it), or cap "
                              "its growth (a larger growth_interval) (shown once)", stacklevel=2)
            if self.log:
                self.log.write({**line, "small_sq": None, "big_sq": None, "skipped": "non-finite"})
            return None
        self.draws.append(draw)
        self.steps.append(number)
        if pre is not None and math.isfinite(pre.small_sq_total) and math.isfinite(pre.big_sq_total):
            self.draws_pre.append(pre)
        self.ema.update(draw)
        if self.log:
            self.log.write(line)
        return draw

    def _uneven(self, batch_size: int, passes: int, step: int | None, declared: int | None = None) -> None:
        """A step whose batch does not split into its micro-steps equally (an epoch's short last batch chunked
        into k, 41 = 11 + 11 + 11 + 8), in one process or on every rank: the pair needs equal micro-batches, so the
        step is left out, counted in ``uneven``, and its examples still counted; said once (on rank 0). (Over
        several ranks, a step uneven on some ranks only is an error on every rank: their batches differ.)"""
        self.step_count = (self.step_count if step is None else step) + 1
        self.examples += batch_size * self.world
        self.uneven += 1
        if declared is not None and not self._few_warned:  # fewer passes than declared (``step``, ``_local_pair``)
            self._few_warned = True
            if self.rank != 0:
                return
            warnings.warn(f"bsprof tracker: a step of {passes} backward passes, after steps of accumulation_steps="
                          f"{declared} (an epoch's short last step?): left out, as every such step will be "
                          "(tracker.uneven counts them; drop_last=True on the loader avoids them) (shown once)",
                          stacklevel=3)
        elif declared is None and not self._split_warned and self.rank == 0:
            self._split_warned = True
            warnings.warn(f"bsprof tracker: a step of {batch_size} examples in {passes} backward passes"
                          f"{f' on each of {self.world} ranks' if self.world > 1 else ''} does not split into equal "
                          "micro-batches (an epoch's short last batch?): left out, as every such step will be "
                          "(tracker.uneven counts them; drop_last=True avoids them) (shown once)", stacklevel=3)

    def _arguments(self, loss_scale, lr, step, batch_size, loss) -> tuple:
        """``step``'s arguments checked (a TrackerError closes the tracker before any state moves), and the
        parameters frozen at construction still frozen."""
        loss_scale = 1.0 if loss_scale is None else self._number("loss_scale", loss_scale, float,
                                                                  "pass scaler.get_scale() under AMP, or nothing")
        lr = None if lr is None else self._number("lr", lr, float, "pass the step's lr, or nothing (the optimizer's)")
        step = None if step is None else self._number("step", step, int, "pass the step's number, or nothing")
        if step is not None and step < 0:
            self._fail(f"tracker.step(): step must be at least 0 (got {step})", "pass the step's number, or nothing")
        if step is not None and self.step_count and step < self.step_count and not self._back_warned:
            self._back_warned = True
            warnings.warn(f"bsprof tracker: step={step} comes before step {self.step_count - 1}, logged already by "
                          "this tracker: the log's reader takes a step count going back for a new run (shown once)",
                          stacklevel=3)
        if batch_size is not None:
            batch_size = self._number("batch_size", batch_size, int, "pass the examples in this optimizer step")
            if batch_size < 1:
                self._fail(f"tracker.step(): batch_size must be at least 1 (got {batch_size})",
                           "pass the examples in this optimizer step on this process")
        if loss is not None and not (torch.is_tensor(loss) and loss.numel() == 1):
            loss = self._number("loss", loss, float, "pass the step's loss (a number or a one-element tensor), or "
                                "nothing")
        woke = [n for n, p in self._asleep if p.requires_grad]
        if self._not_updated:  # a parameter group added since (staged fine-tuning: add_param_group)
            now = _updated_by(self._optimizer) or set()
            woke += [n for n, p in self._not_updated if id(p) in now]
        if woke:
            self._fail(f"{_listed(woke)} became trainable (or joined the optimizer) after the Tracker was made: its "
                       "hooks do not see their "
                       "gradients, so |G|² and tr(Σ) would leave them out",
                       "make the Tracker after unfreezing: tracker.close(), then a new Tracker(model, …)")
        return loss_scale, lr, step, batch_size, loss

    def _number(self, name: str, value, kind, hint: str):
        """``kind(value)`` (a 0-d tensor too), or close the tracker with a TrackerError before any state moves. A
        string or a bool is not a number here ("1024", True), though ``float`` would take them."""
        if type(value) is kind:  # the usual case, at every step
            return value
        try:
            if isinstance(value, (str, bytes, bool)):
                raise TypeError(type(value).__name__)
            x = value.item() if torch.is_tensor(value) else value
            out = kind(x)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            self._fail(f"tracker.step(): {name} must be a number (got {type(value).__name__})", hint)
        if kind is int and out != x:   # 1.5 would have been taken as 1
            self._fail(f"tracker.step(): {name} must be a whole number (got {x!r})", hint)
        return out

    def discard(self, batch_size: int | None = None, uneven: bool = False) -> None:
        """Forget the backward passes since the last ``step`` without measuring them: a step that is not measured
        (every N-th step only, an epoch's short last step). The step counter still advances, and ``examples`` by
        ``batch_size`` when given; ``uneven``: it is left out for want of equal micro-batches (an epoch's short last
        step), counted in ``uneven`` as ``step`` counts its own."""
        if self.closed:
            raise self._closed("discard")
        self.rows.reset(self.hooks.take().count)
        self.step_count += 1
        self.examples += int(batch_size or 0) * self.world
        self.uneven += bool(uneven)

    # ------------------------------------------------------------------ the pair
    def _pair(self, r: Backwards, batch_size: int | None, loss, loss_scale: float,
              rows_seen: int = 0, given: bool = True) -> tuple[Draw, Draw | None]:
        """(|G_b|², |G_B|²) of one step in per-example units (module docstring), b and B (global); ``rows_seen``:
        dim 0 of the model's inputs in this step's forwards (for the messages).

        Over W ranks the step's checks are agreed in the step's one all-reduce (``_reduce_step``): a rank whose own
        checks failed still joins it, flagged, so every rank raises together (a rank that raised alone, and was
        caught, left the others in a collective it never joined), and ranks whose batches differ in size are an
        error on every rank (DDP's mean of the ranks' means is then not the mean over the examples)."""
        uneven = None
        try:
            t, k, u, small_sum, b, per_rank, n_small = self._local_pair(r, batch_size, loss_scale, rows_seen, given)
        except _Uneven as e:  # over several ranks: left out if every rank's is, else an error on every rank
            uneven, t, small_sum, per_rank, b = e, {"big": math.nan}, math.nan, 0, 0
        except Exception:  # a TrackerError, or anything else: the other ranks still get this rank's flag
            if self.world > 1:
                self._reduce_step(math.nan, math.nan, True, 0, 0)
            raise
        rows = 0 if self._seq_first else rows_seen   # a [T, B, …] model's rows are positions, which may differ
        small_total, big_total, failed, per_rank_sum, per_rank_sq, b_sum, rows_sum, rows_sq, rows_known, as_passed, \
            n_uneven = self._reduce_step(small_sum, t["big"] if self.fsdp else 0.0, False, per_rank, b, rows,
                                         uneven is not None)
        if round(n_uneven) == self.world:
            raise uneven
        if uneven is not None and uneven.declared is not None:
            self._fail(f"this step ran {uneven.passes} backward passes (accumulation_steps={uneven.declared}) on this "
                       f"rank, and all {uneven.declared} on {self.world - round(n_uneven)} other rank(s)",
                       "give every rank the same number of micro-steps per step (DistributedSampler gives every rank "
                       "the same number of batches; drop_last=True drops a short last step)")
        if uneven is not None:
            self._fail(f"batch_size={uneven.batch_size} does not split into {uneven.passes} equal micro-batches, and "
                       f"on {self.world - round(n_uneven)} other rank(s) the step's batch does",
                       "give every rank equal batches (DistributedSampler; drop_last=True), in equal micro-batches")
        failed += n_uneven
        if failed:
            self._fail(f"{failed:.0f} other rank(s) failed this step's checks: their errors say why",
                       "fix what the failing rank's error says; every rank stops tracking at the same step")
        # W·Σ B_r² − (Σ B_r)² = W·Σ (B_r − mean)²: zero only for equal batches (in integers: exact at any size)
        if round(per_rank_sq) * self.world != round(per_rank_sum) ** 2 or round(b_sum) != b * self.world:
            self._fail(f"the ranks' batches differ in size at this step (this rank: {per_rank}, mean "
                       f"{per_rank_sum / self.world:g} over {self.world} ranks)",
                       "give every rank the same batch (DistributedSampler with drop_last=True): DDP averages the "
                       "ranks' mean gradients, which is the mean over the examples only when the batches are equal")
        # rows that differ across ranks where some rank saw exactly its batch_size: a rank fed fewer examples (rows
        # that are no rank's batch, a graph's nodes or a packed sequence's tokens, stay the one-rank warning)
        if round(rows_known) == self.world > 1 and round(rows_sq) * self.world != round(rows_sum) ** 2 and as_passed:
            self._fail(f"the ranks' forward passes saw different numbers of rows at this step (this rank: {rows}, "
                       f"mean {rows_sum / self.world:g} over {self.world} ranks), though each passed batch_size="
                       f"{per_rank}", "give every rank the same batch (DistributedSampler with drop_last=True) and "
                       "pass each step's batch_size: DDP's mean of the ranks' means is the mean over the examples "
                       "only when the batches are equal")
        small = small_total / self.world / n_small   # mean over the W·n_small small batches
        big = (big_total if self.fsdp else t["big"]) / (u * k) ** 2   # FSDP: Σ_ranks of the local shards' norms
        loss_value = math.nan if loss is None else float(loss.detach() if torch.is_tensor(loss) else loss)
        n = self.population
        if n is not None and per_rank * self.world > n:
            self._fail(f"this step's batch of {per_rank * self.world} is larger than population={n}",
                       "pass population=len(dataset) (the examples the batches are drawn from), or None")
        draw = Draw.of_totals(small, big, b, per_rank * self.world, loss_value, n)
        pre = None
        if self.precondition and r.small_pre and r.big_pre is not None and k * self.world > 1:
            small_pre = self._mean_over_ranks(t["small_pre"] / u ** 2) / k
            pre = Draw.of_totals(small_pre, t["big_pre"] / (u * k) ** 2, per_rank // k, per_rank * self.world,
                                 loss_value, n)
        return draw, pre

    def _reduce_step(self, small_sum: float, big: float, failed: bool, per_rank: int, b: int,
                     rows: int = 0, uneven: bool = False) -> list[float]:
        """Σ over the ranks of (Σ|G_b|², FSDP's local |G_B|² part, failed, batch, batch², b, rows seen, rows²,
        rows known, rows = batch, uneven): one all-reduce per step, the same on every rank whatever its checks
        found; the values as they are in one process."""
        return self._sum_over_ranks(small_sum, big, float(failed), float(per_rank), float(per_rank) ** 2, float(b),
                                    float(rows), float(rows) ** 2, float(rows > 0), float(rows == per_rank > 0),
                                    float(uneven))

    def _local_pair(self, r: Backwards, batch_size: int | None, loss_scale: float, rows_seen: int,
                    given: bool = True) -> tuple:
        """This rank's checks of the step and its numbers: (totals, k, u, Σ|G_b|² in per-example units, b, the
        rank's batch, the number of small batches); a TrackerError when a check fails. ``given``: the batch size
        was passed to this step (else it is the Tracker's default, which a short last batch undercuts)."""
        k, declared = r.count, self.accumulation_steps
        t = r.totals()  # the one device-to-host read of the step
        if r.failure:
            self._fail(f"the tracker's hooks failed in this step's backward: {r.failure}",
                       "report this with the model; meanwhile track with gradient accumulation")
        if r.per_example_failure:
            self._drop_per_example(r.per_example_failure)
        if t["stale"]:
            self._fail("this step's first backward began with the previous step's gradients still in .grad",
                       "call optimizer.zero_grad() after each optimizer.step() (the tracker reads |G_B|² from .grad); "
                       "with gradient accumulation, call tracker.step() once per optimizer step, after its last "
                       "micro-step, not after every backward")
        if r.changed:
            self._fail(".grad changed between this step's backward passes (clip_grad_norm_, zero_grad() or another "
                       "change to the gradients inside the accumulation loop): |G_B|², read from .grad after the last "
                       "pass, would not be the sum of the micro-batches whose norms the hooks took",
                       "change .grad only after the step's last backward: clip once, before or after tracker.step(), "
                       "and call zero_grad() after optimizer.step()")
        if k == 0:
            self._fail("tracker.step() was called before any backward pass of this step (or twice for one step)",
                       "call it once per optimizer step, after the step's last loss.backward()")
        if (declared is not None and 0 < k < declared and self.world > 1 and r.synced
                and (self.draws or self.skipped or self.uneven)):
            # after full steps, fewer synced micro-steps than declared: an epoch's short last step, left out if
            # every rank's is (``_pair``); one process decides this in ``step``
            raise _Uneven(rows_seen or (batch_size or 0) * k // declared, k, declared)
        if declared is not None and k != declared:
            self._fail(f"{k} backward pass{'' if k == 1 else 'es'} in this step, but accumulation_steps={declared}",
                       "call tracker.step() once per optimizer step, after all its micro-steps "
                       "(or fix accumulation_steps)")
        if self.world > 1 and not r.synced:
            self._fail("the last backward of this step ran without gradient sync (DDP's no_sync(), or FSDP's "
                       "set_requires_gradient_sync(False)): its gradients were not reduced over the ranks",
                       "run the last micro-step with gradient sync on, then call tracker.step()")
        u = float(loss_scale) / (declared or 1)  # the backward's loss = u × the micro-batch's mean loss
        if not (u > 0 and math.isfinite(u)):
            self._fail(f"loss_scale must be a positive finite number (got {loss_scale})", "pass scaler.get_scale()")
        per_example = bool(t["per_example"])
        if self.source == "per_example" and not per_example:
            self._fail("source='per_example' but no backward of this step ran inside tracker.per_example()",
                       "wrap loss.backward() in `with tracker.per_example():`")
        if per_example:
            rows = [n for _, n in t["per_example"]]
            local = sum(rows)
            if len(rows) != k or len(set(rows)) != 1:
                self._fail("some backward passes of this step ran outside tracker.per_example(), or their batches "
                           "differ in size", "wrap every backward of the step in `with tracker.per_example():`")
            tokens = self.unit == "tokens"   # the hooks count sequences; b is one sequence's tokens
            if tokens and (batch_size is None or batch_size % local):
                self._fail(f"unit='tokens': batch_size={batch_size} is not a whole number of tokens for each of the "
                           f"{local} sequences the per-example hooks saw" if batch_size is not None else
                           "unit='tokens' with per-example norms needs the step's batch_size in tokens (the hooks "
                           "count sequences)",
                           "pass batch_size = sequences × tokens per sequence (Tracker(batch_size=...) or "
                           "tracker.step(batch_size=...)), with every sequence of one length and the loss each "
                           "sequence's mean over its tokens; or unit='sequences'")
            if tokens:
                small_sum = sum(s * (n / u) ** 2 for s, n in t["per_example"])  # Σ_i |g_i|², i over sequences
                return t, k, u, small_sum, batch_size // local, batch_size, local
            if batch_size is not None and local < batch_size and not given:   # an epoch's short last batch
                if not self._short_warned:
                    self._short_warned = True
                    warnings.warn(f"bsprof tracker: a step of {local} examples (the Tracker's batch_size is "
                                  f"{batch_size}: an epoch's short last batch?) is counted at its own size, which "
                                  "the per-example hooks count; if every step is so, the Tracker's batch_size is "
                                  "wrong: the hooks' count is used either way (shown once)", stacklevel=4)
                batch_size = local
            if batch_size is not None and batch_size != local:
                self._fail(f"batch_size={batch_size}, but the per-example hooks saw {local} rows on dim 0 of the "
                           "model's layers", "pass the number of examples in this optimizer step on this process; "
                           "if that is right, a layer sees the examples off dim 0 ([T, B, …], batch_first=False): "
                           "make it batch_first=True, or track with gradient accumulation")
            small_sum = sum(s * (n / u) ** 2 for s, n in t["per_example"])  # Σ_i |g_i|²
            b, per_rank, n_small = 1, local, local
        else:
            if k == 1 and self.world == 1:  # before the batch size: without a pair it would not help
                per_micro = bool(batch_size and 0 < rows_seen < batch_size and batch_size % rows_seen == 0)
                self._fail("one process, one backward per step: b = B" + (f" = {batch_size}" if batch_size else "")
                           + ", no nested pair" + (f" (this step's forward saw {rows_seen} rows of the "
                                                   f"batch_size={batch_size}: is tracker.step() called after every "
                                                   "micro-step?)" if per_micro else ""),
                           (f"call tracker.step() once per optimizer step, after its last micro-step, and pass "
                            f"accumulation_steps={batch_size // rows_seen}" if per_micro else
                            "use accumulation_steps >= 2, wrap loss.backward() in `with tracker.per_example():`, "
                            "or train with DDP on 2+ ranks" if not self._no_per_example() else
                            "use accumulation_steps >= 2, or train with DDP on 2+ ranks (per-example norms are not "
                            f"available for this model: {self._no_per_example()})"))
            if batch_size is None:
                self._fail("the tracker does not know the batch size of this step",
                           "pass Tracker(batch_size=...) or tracker.step(batch_size=...): examples per optimizer "
                           "step on this process" + (f" (the model's forwards in this step saw {rows_seen} rows on "
                                                     "dim 0 of their input)" if rows_seen else ""))
            if batch_size % k:
                if self.world > 1:  # agreed in the step's all-reduce (``_pair``)
                    raise _Uneven(batch_size, k)
                self._fail(f"batch_size={batch_size} does not split into {k} equal micro-batches",
                           "use equal micro-batches (drop the last, smaller one) and pass their total")
            if self.source == "accumulation" and k == 1:
                self._fail("source='accumulation' but this step had one backward pass",
                           "pass accumulation_steps >= 2 and call tracker.step() after all micro-steps")
            small_sum = t["small"] / u ** 2  # Σ_k |G_b^(k)|²
            b, per_rank, n_small = batch_size // k, batch_size, k
        return t, k, u, small_sum, b, per_rank, n_small

    def _sum_over_ranks(self, *xs: float) -> list[float]:
        if self.world == 1:
            return list(xs)
        t = torch.tensor(xs, dtype=torch.float64, device=self._collective_device())
        try:
            dist.all_reduce(t, group=self.group)
        except Exception as e:  # gloo/NCCL: a peer gone (its own error says why), a timeout, mismatched collectives
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self._fail(f"the all-reduce of this step's statistics over {self.world} ranks failed "
                       f"({type(e).__name__}: {first[:200]}): another rank stopped (its own error says why), or not "
                       "every rank called tracker.step() at this step",
                       "fix what the other rank's error says; call tracker.step() on every rank at every optimizer "
                       "step (it all-reduces)")
        return [float(v) for v in t]

    @staticmethod
    def _fsdp_world(model: nn.Module, source: str, group) -> tuple[int, object]:
        """(W, process group) of an FSDP2 model: the ranks its 1-D device mesh shards over."""
        problem = fsdp_problem(model, trainable(model)[1])
        if problem:
            raise TrackerError(f"this FSDP2 (fully_shard) model cannot be tracked: {problem}",
                               "track it with DDP, or measure it with `bsprof measure`")
        if source in ("per_example", "ddp"):
            raise TrackerError(f"source={source!r} is not available for an FSDP2 (fully_shard) model",
                               "use source='fsdp' (or 'auto'); with gradient accumulation b is one rank's micro-batch")
        mesh = fsdp_param_groups(model)[0].fsdp_params[0].sharded_param.device_mesh
        world = mesh.size()
        if world > 1:
            group = mesh.get_group() if group is None else group
            if dist.get_world_size(group) != world:
                raise TrackerError(f"process_group has {dist.get_world_size(group)} ranks but the FSDP mesh has "
                                   f"{world}", "pass the FSDP mesh's group, or no process_group")
        return world, group

    def _mean_over_ranks(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t, group=self.group)
        return float(t[0]) / self.world

    def _collective_device(self):
        backend = dist.get_backend(self.group)
        return self.params[0].device if backend == "nccl" else "cpu"

    def _lr(self) -> float:
        if self.optimizer is None or not self.optimizer.param_groups:
            return math.nan
        lr = self.optimizer.param_groups[0].get("lr", math.nan)
        return float(lr.item() if torch.is_tensor(lr) else lr)

    def _drop_per_example(self, why: str):
        """Per-example norms failed in this step: switch that source off for good (its hooks removed), leave this
        step unmeasured, and raise; the tracker stays open, and later steps use accumulation or DDP."""
        src = self.per_example_source
        src.armed = False
        src.remove()
        src.problem = why
        self.no_per_example = why
        if self.source == "per_example":
            self._fail(f"per-example norms failed in this step: {why}",
                       "use gradient accumulation (accumulation_steps >= 2) instead")
        raise TrackerError(f"per-example norms failed in this step, which is left unmeasured: {why}; per-example "
                           "norms are now off, later steps are measured from gradient accumulation or DDP",
                           "run 2 or more micro-batches per optimizer step (or DDP) to keep measuring")

    def _no_per_example(self) -> str | None:
        """Why this model has no per-example source (BatchNorm in train mode, a layer without a rule), or None."""
        source = self.per_example_source
        problem = source.problem if source is not None else None
        return problem.split(": use accumulation")[0] if problem else None

    def _fail(self, message: str, hint: str):
        """Remove every hook (the user's step goes on untouched), then raise."""
        self.close()
        self.closed_by = message
        raise TrackerError(message, hint)

    def _closed(self, call: str) -> TrackerError:
        why = f" by an earlier error ({self.closed_by})" if self.closed_by else ""
        return TrackerError(f"tracker.{call}() after the tracker was closed{why}",
                            "make a new Tracker (after fixing what the error said)" if why else "make a new Tracker")

    # ------------------------------------------------------------------ answers
    def estimate(self, window: int | None = None) -> Estimate:
        """B_simple over the last ``window`` steps (all kept steps for None): ratio of means, Fieller interval."""
        check_window(window)
        if not self.draws:
            return Estimate.none()
        return b_simple_of(windowed(self.draws, window, self.confidence))

    def estimate_pre(self, window: int | None = None) -> Estimate:
        """B_pre = tr(PΣ)/(GᵀPG) over the last ``window`` steps (needs ``precondition=True`` and Adam)."""
        check_window(window)
        if not self.draws_pre:
            return Estimate.none()
        return b_simple_of(windowed(self.draws_pre, window, self.confidence))

    def measurement(self, window: int | None = None) -> Measurement:
        """A report row (``bsprof.results.Measurement``) over the last ``window`` steps."""
        if not self.draws:
            raise TrackerError("no step has been tracked yet", "call tracker.step() after each optimizer step")
        m = measurement(self.draws, step=self.steps[-1], examples_seen=self.examples, window=window,
                        method=f"track:{self.source}", confidence=self.confidence)
        if len(self.draws_pre) >= 2:
            from dataclasses import replace

            m = replace(m, b_pre=self.estimate_pre(window))
        return m

    @property
    def ema_view(self) -> EmaView:
        """EMA(tr(Σ)_est)/EMA(|G|²_est) for logging (no interval)."""
        return self.ema.view

    # ------------------------------------------------------------------ lifetime
    def _check_rows(self, batch_size: int, seen: int, calls: int = 0, passes: int = 0) -> None:
        """Warn once (on rank 0) when the step's batch differs from the rows the model's forwards saw in this step
        (B_simple scales with it). A warning, not an error: a model fed [T, B, …], or run twice per batch, sees other
        rows; with more forwards than backward passes, the same examples may have been seen twice."""
        if (not seen or seen == batch_size or self._rows_warned or self._seq_first or self.rank != 0
                or self.unit == "tokens" and batch_size % seen == 0):   # tokens: the rows are sequences
            return
        self._rows_warned = True
        if calls > passes > 0:  # two forwards per pass: of the same examples (a siamese loss) or of others?
            advice = (f"they ran {calls} forwards for {passes} backward passes: if a forward sees the same examples "
                      f"again (a siamese or consistency loss), batch_size={batch_size} is right, keep it; if they "
                      f"see other examples, pass {seen}")
        else:
            advice = f"B_simple scales with the batch size passed, so if {seen} examples is right, pass that"
        warnings.warn(f"bsprof tracker: batch_size={batch_size}, but the model's forward passes in this step saw "
                      f"{seen} rows on dim 0 of their input; {advice} (shown once)", stacklevel=3)

    def close(self) -> None:
        """Remove every hook and close the log. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        release = getattr(self, "_release", None)
        if release is not None:
            release()   # runs once: the finalizer is then dead
        else:
            _release(self._input_hook, self.hooks, self.per_example_source, self.log)
        inner = getattr(self.model, "module", self.model)
        if _OPEN.get(inner) is not None and _OPEN[inner]() is self:
            del _OPEN[inner]

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
