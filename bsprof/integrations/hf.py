"""A Hugging Face ``TrainerCallback`` over ``bsprof.Tracker``: the noise scale in the Trainer's own reporting.

    trainer = Trainer(model, args, train_dataset=...)
    noise = attach(trainer, window=100)          # a NoiseScaleCallback, first among the trainer's callbacks
    trainer.train()                              # bsprof/b_simple, … in trainer.state.log_history and report_to

Where to measure. The Trainer clips the gradients (``max_grad_norm``) before ``on_pre_optimizer_step``, so a
callback reading ``.grad`` there sees clipped gradients. The tracker does not: every number of the pair is taken
while autograd runs (per-parameter |u·g|² from tensor hooks, |G_B|² from ``.grad`` in a callback queued at the end
of each backward pass, ``bsprof.track.sources``), i.e. before the Trainer clips. ``on_pre_optimizer_step`` only
closes the step (``tracker.step()``); tests/test_integrations.py shows that ``max_grad_norm=0.01`` and ``1e9``
give the same pair at the same weights.

The pair: with ``gradient_accumulation_steps = k ≥ 2`` the k micro-batches (b = micro-batch, B = k·b); with k = 1
per-example norms (b = 1), armed from ``on_step_begin`` to the step's close. The Trainer divides each micro-step's
loss by the number of micro-batches in the step (unless the model takes ``num_items_in_batch``: then by its share
of the step's items, the same 1/k for equal micro-batches): ``loss_scale = 1/k``. Rows of each micro-batch come from
a forward pre-hook on the model (dim 0 of the first tensor argument), removed at the end of training.

Under DDP (``torchrun``, W ≥ 2 ranks) the tracker must watch the ``DistributedDataParallel`` wrapper, but the
Trainer hands callbacks its unwrapped model: ``attach(trainer)`` lets the callback take
``trainer.model_wrapped``, so b = one rank's micro-batch and B = W·k·b (per-example norms for k = 1: b = 1,
B = W·batch). A callback without the trainer raises under multi-process DDP rather than log a
pair taken from the all-reduced gradient as if it were one rank's. Rank 0 writes the JSONL log.

A schedule (``bsprof.schedule.Schedule``): before each optimizer step the callback sets
``args.gradient_accumulation_steps`` to ``schedule.accumulation_at(step, micro_batch, world_size)``; the Trainer
reads it for each step's micro-batches (a change waits for a step boundary where the epoch's micro-batch count
divides by the new k; ``applied`` lists (planned step, step it took effect, k)). The learning rate: pass
``optimizers=(optimizer, ScheduleLR(optimizer, schedule))`` to the Trainer; the callback tells it the batch in
force (``ScheduleLR.follow_batch``), so a change that waits a step keeps the old batch's lr for that step.

Logged: every ``log_every`` optimizer steps (default ``args.logging_steps``) the scalars join the Trainer's next
log record in ``on_log``, so they are in ``state.log_history`` and, when the callback runs before the reporting
callbacks (``attach`` puts it first; ``Trainer(callbacks=[...])`` puts it last, and a warning says so when
``report_to`` names an integration), in every ``report_to`` integration and the printed logs. (Calling
``trainer.log`` from a callback would reset ``should_log`` and drop the Trainer's own loss record of that step.)
The JSONL log goes to ``<output_dir>/bsprof.jsonl``.
"""

from __future__ import annotations

import warnings
import weakref
from pathlib import Path

import torch

from bsprof.errors import known_options
from bsprof.integrations.loggers import PREFIX, scalars
from bsprof.integrations.steps import (
    Steps,
    check_options,
    listed_again,
    loader_population,
    once_per_event,
    rows_of,
    tokens_of,
)
from bsprof.probes.handles import forward_hook
from bsprof.schedule.apply import ScheduleLR
from bsprof.track import Tracker
from bsprof.track.tracker import TrackerError, open_tracker

try:
    from transformers import TrainerCallback
except ImportError as e:
    raise ImportError("bsprof.integrations.hf needs transformers: pip install transformers accelerate (or "
                      "pip install -e '.[hf]' in a bsprof clone)") from e


class NoiseScaleCallback(TrainerCallback):
    """Measures B_simple at every ``every``-th optimizer step of a ``transformers.Trainer`` (module docstring).

    every, window, log_every, log, source, precondition, unit, ema_beta, population: as for the Lightning
    ``NoiseScale``;
    schedule, micro_batch: a Schedule to follow (module docstring); ``micro_batch`` default
    ``args.per_device_train_batch_size``. trainer: the Trainer, for its DDP wrapper (``attach`` passes it).
    After training: ``tracker`` (closed, its draws kept), ``latest`` (the last logged scalars, or those at the end of
    training when steps were measured after the last log), ``unmeasured``.
    """

    bsprof_callback = True   # (``once_per_event``)

    @known_options
    def __init__(self, *, every: int = 1, window: int | None = 100, log_every: int | None = None, log="auto",
                 source: str = "auto", precondition: bool = False, unit: str = "examples", ema_beta: float = 0.99,
                 population: int | str | None = "auto",
                 prefix: str = PREFIX, schedule=None, micro_batch: int | None = None, trainer=None):
        check_options(every, window, log_every)
        self._trainer = weakref.ref(trainer) if trainer is not None else None
        self.every, self.window, self.log_every, self.log_path, self.prefix = every, window, log_every, log, prefix
        self.population = population
        self.options = dict(source=source, precondition=precondition, unit=unit, ema_beta=ema_beta,
                            population=None if population == "auto" else population)
        self.tracker: Tracker | None = None
        self.steps: Steps | None = None
        self.schedule, self.micro_batch = schedule, micro_batch
        self.applied: list[tuple[int, int, int]] = []
        self._pending: tuple[int, int] | None = None
        self._micro_in_epoch = 0
        self._loss_is_share = False  # the model was given num_items_in_batch: its loss is already ÷ the step's items
        self.latest: dict[str, float] = {}
        self._unlogged: dict[str, float] = {}
        self._handles = []
        self._first = False   # ``attach`` put it first among the trainer's callbacks
        self._latest_at = 0   # the tracker's draws when ``latest`` was last set

    # -- lifetime ------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if listed_again(self):
            return
        tracked = self._tracked(args, model)
        if open_tracker(tracked) is not None:
            warnings.warn("bsprof: this model already has an open tracker (is a NoiseScaleCallback in the "
                          "trainer's callbacks twice?): this NoiseScaleCallback stays off", stacklevel=2)
            return
        log = self.log_path
        if log == "auto":
            log = Path(args.output_dir) / "bsprof.jsonl"
            log.parent.mkdir(parents=True, exist_ok=True)
        self.tracker = Tracker(tracked, optimizer,
                               log=log if state.is_world_process_zero else None, **self.options)
        if self.population == "auto" and self.tracker.unit != "tokens":
            self.tracker.population = loader_population(kwargs.get("train_dataloader"))
        self.steps = Steps(self.tracker, self.every)
        self._handles = [forward_hook(model, self._rows, pre=True, with_kwargs=True),   # (not carried by a copy)
                         forward_hook(model, self._loss, with_kwargs=True)]
        self._follow_schedule(args, state)
        reporting = [args.report_to] if isinstance(args.report_to, str) else list(args.report_to or [])
        reporting = [r for r in reporting if r and r != "none"]
        if reporting and not self._first and state.is_world_process_zero:
            warnings.warn(f"bsprof: a NoiseScaleCallback given in Trainer(callbacks=[...]) runs after the report_to "
                          f"integrations ({', '.join(map(str, reporting))}): its values reach "
                          "trainer.state.log_history, the printed logs and bsprof.jsonl, not them. Add it with "
                          "bsprof.integrations.hf.attach(trainer), which puts it first", stacklevel=2)

    def _tracked(self, args, model):
        """The model to track: the Trainer's ``DistributedDataParallel`` wrapper of ``model`` when there is one."""
        from torch.nn.parallel import DistributedDataParallel

        trainer = self._trainer() if self._trainer is not None else None
        wrapped = getattr(trainer, "model_wrapped", None)
        if isinstance(wrapped, DistributedDataParallel) and wrapped.module is model:
            return wrapped
        if trainer is None and args.world_size > 1 and not (args.fsdp or args.deepspeed):
            raise TrackerError("under multi-process DDP the callback needs the Trainer's DistributedDataParallel "
                               "wrapper (callbacks are given the unwrapped model)",
                               "add it with bsprof.integrations.hf.attach(trainer)")
        return model

    @once_per_event
    def on_epoch_begin(self, args, state, control, **kwargs):
        self._micro_in_epoch = 0

    @once_per_event
    def on_train_end(self, args, state, control, **kwargs):
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.tracker is not None:
            if self._latest_at < len(self.tracker.draws) and (latest := scalars(self.tracker, self.window,
                                                                                 self.prefix)):
                self.latest = latest   # steps measured since the last record (a run shorter than logging_steps)
            self.tracker.close()

    def _rows(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled() and self.steps is not None:
            batch = kwargs if "input_ids" in kwargs else list(args) + list(kwargs.values())
            self.steps.sizes.append((tokens_of if self.tracker.unit == "tokens" else rows_of)(batch))
            self._micro_in_epoch += 1

    def _loss(self, module, args, kwargs, out):
        if module.training and torch.is_grad_enabled() and self.steps is not None:
            loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
            if torch.is_tensor(loss) and loss.numel() == 1:
                self.steps.loss += float(loss.detach())
                # given the step's item count, the model's loss is already its share of the step's mean loss
                self._loss_is_share = kwargs.get("num_items_in_batch") is not None

    # -- one optimizer step --------------------------------------------------------------------------------
    @once_per_event
    def on_step_begin(self, args, state, control, **kwargs):
        if self.steps is not None and args.gradient_accumulation_steps == 1 and self.steps.due(state.global_step):
            self.steps.arm()

    @once_per_event
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.steps is None:
            return
        k = max(self.tracker.micro_steps, 1)
        if not self._loss_is_share:
            self.steps.loss /= k   # the mean of the micro-batches' mean losses
        elif args.world_size > 1 and getattr(args, "average_tokens_across_devices", False):
            # the items were counted over every rank: the model's loss is this rank's share of the global mean,
            # which the Trainer multiplies back by the ranks after; rank 0's own mean is W × it
            self.steps.loss *= args.world_size
        self.steps.close(state.global_step, loss_scale=1.0 / k)
        every = self.log_every or int(args.logging_steps) or 1
        # every log step gets the window over the steps measured so far, whether or not this step was measured
        if (state.global_step + 1) % every == 0 and (latest := scalars(self.tracker, self.window, self.prefix)):
            self.latest, self._latest_at = latest, len(self.tracker.draws)
            self._unlogged = dict(self.latest)

    @once_per_event
    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        if self.steps is not None:
            self._follow_schedule(args, state, lr_scheduler)

    def _follow_schedule(self, args, state, lr_scheduler=None) -> None:
        """Set ``args.gradient_accumulation_steps`` for the next optimizer step. The Trainer reads it for every
        step's micro-batches, but syncs and steps when the epoch's micro-batch count is a multiple of it, so a
        change waits for the first step boundary where that count divides by the new k (as in Lightning)."""
        if self.schedule is None:
            return
        step = state.global_step
        micro = self.micro_batch or args.per_device_train_batch_size
        k = self.schedule.accumulation_at(step, micro, args.world_size)
        if k == args.gradient_accumulation_steps:
            self._pending = None
        elif self._pending is None or self._pending[1] != k:
            self._pending = (step, k)
        if self._pending is not None and self._micro_in_epoch % self._pending[1] == 0:
            planned, k = self._pending
            args.gradient_accumulation_steps = k
            self.applied.append((planned, step, k))
            self._pending = None
        if isinstance(lr_scheduler, ScheduleLR):   # the lr of the batch in force, also while a change waits
            lr_scheduler.follow_batch(args.gradient_accumulation_steps * micro * args.world_size)

    @once_per_event
    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._unlogged and logs is not None:  # join the Trainer's own record of this step
            logs.update(self._unlogged)
            if state.log_history:
                state.log_history[-1].update(self._unlogged)
            self._unlogged = {}

    @property
    def unmeasured(self):
        return self.steps.unmeasured if self.steps is not None else {}


def attach(trainer, **options) -> NoiseScaleCallback:
    """A ``NoiseScaleCallback`` added to ``trainer`` FIRST among its callbacks, so that its values join each log
    record before the ``report_to`` integrations (TensorBoard, W&B, …) and the printer see it."""
    if any(isinstance(c, NoiseScaleCallback) for c in trainer.callback_handler.callbacks):
        raise TrackerError("this trainer already has a bsprof NoiseScaleCallback",
                           "attach once: either attach(trainer) or NoiseScaleCallback in callbacks=[...], not both")
    callback = NoiseScaleCallback(trainer=trainer, **options)   # an unknown option: an OptionError naming it
    callback._first = True
    done = getattr(getattr(trainer, "state", None), "global_step", 0) or 0
    if done:
        warnings.warn(f"bsprof: attach(trainer) after the trainer trained ({done} steps): the callback measures from "
                      "the next trainer.train(); attach before training to measure it", stacklevel=2)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
