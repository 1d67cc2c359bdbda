"""A Lightning ``Callback`` over ``bsprof.Tracker``: the noise scale of the run, logged through its loggers.

    trainer = L.Trainer(..., callbacks=[NoiseScale(window=100)])

Where the pair comes from (``bsprof.track``): with ``accumulate_grad_batches = k ≥ 2`` the k micro-batches of each
optimizer step (b = micro-batch, B = k·b); with k = 1 per-example norms (b = 1) taken in the same backward
(``on_before_backward`` arms them, ``on_after_backward`` disarms); under DDP the ranks. Lightning divides each
micro-step's loss by k, and a mixed-precision GradScaler multiplies it by its scale: the callback passes both to
``tracker.step(loss_scale=...)``.

When. The tracker's norms are taken by hooks while autograd runs, so the numbers are those of the gradients
before Lightning clips them (``on_before_optimizer_step`` runs before ``clip_gradients``, and clipping after it
would change nothing anyway). ``tracker.step()`` runs once per optimizer step, in ``on_before_optimizer_step``.

Logged, every ``log_every`` optimizer steps (default: ``trainer.log_every_n_steps``), to every logger of
``trainer.loggers`` at ``trainer.global_step``: the ``bsprof/…`` scalars of ``bsprof.integrations.loggers``; and
at the end of ``fit`` once more, when steps were measured since the last record. The
JSONL log of raw pairs is written always, to ``log`` (default ``<trainer.log_dir>/bsprof.jsonl``).

A schedule (``bsprof.schedule.Schedule``) makes the run follow a planned batch: at the first micro-batch of
each optimizer step the callback sets ``trainer.accumulate_grad_batches`` to
``schedule.accumulation_at(step, micro_batch, world_size)``. Lightning closes a step when the micro-batches of
the epoch so far are a multiple of k, so a change waits for the first step boundary where that holds (one step
late at most for a doubling); ``applied`` lists (planned step, step it took effect, k). Pair it with
``ScheduleLR`` for the learning rate: the callback tells it the batch in force (``ScheduleLR.follow_batch``), so
a change that waits a step keeps the old batch's lr for that step. Automatic optimization only (with manual
optimization use the Tracker).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from bsprof.errors import ConfigError, known_options
from bsprof.integrations.loggers import PREFIX, scalars, write
from bsprof.integrations.steps import (
    Steps,
    check_options,
    listed_again,
    loader_population,
    once_per_event,
    rows_of,
    tokens_of,
)
from bsprof.schedule.apply import ScheduleLR
from bsprof.track import Tracker
from bsprof.track.tracker import open_tracker

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone pytorch_lightning package
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as e:
        raise ImportError("bsprof.integrations.lightning needs Lightning: pip install lightning (or "
                          "pip install -e '.[lightning]' in a bsprof clone)") from e


def _model(trainer, pl_module):
    """The module whose backward passes to watch: the DDP wrapper under DDP (the tracker's ``ddp`` source)."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped = getattr(trainer.strategy, "model", None)
    return wrapped if isinstance(wrapped, DistributedDataParallel) else pl_module


def _grad_scale(trainer) -> float:
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0


class NoiseScale(Callback):
    """Measures B_simple at every ``every``-th optimizer step through a ``bsprof.Tracker`` (module docstring).

    every: measure every N-th optimizer step (the others are not measured: no per-example work);
    window: optimizer steps per logged estimate; log_every: log every N steps (default the trainer's);
    log: path of the JSONL log ("auto": ``<trainer.log_dir>/bsprof.jsonl``);
    source, precondition, unit, ema_beta, population: as for ``Tracker``; population "auto" (default): len(the
        training set) when the loader shuffles without replacement (``steps.loader_population``: the
        finite-population correction), else None;
    batch_rows: function batch → examples (default: dim 0 of the batch's first tensor; with unit="tokens", its
        token positions: the size of its integer tensor [B, T], padding included), or → tokens with unit="tokens";
    schedule, micro_batch: a Schedule to follow; ``micro_batch`` default the batch's rows.
    After training: ``tracker`` (closed, its draws kept), ``latest`` (the last logged scalars), ``applied``.
    """

    bsprof_callback = True   # (``once_per_event``: a hook called on the class, not an object, does nothing)

    @known_options
    def __init__(self, *, every: int = 1, window: int | None = 100, log_every: int | None = None, log="auto",
                 source: str = "auto", precondition: bool = False, unit: str = "examples", ema_beta: float = 0.99,
                 population: int | str | None = "auto",
                 batch_rows=rows_of, schedule=None, micro_batch: int | None = None, prefix: str = PREFIX):
        check_options(every, window, log_every)
        self.every, self.window, self.log_every, self.log_path = every, window, log_every, log
        self.population = population
        self.options = dict(source=source, precondition=precondition, unit=unit, ema_beta=ema_beta,
                            population=None if population == "auto" else population)
        self.batch_rows, self.schedule, self.micro_batch, self.prefix = batch_rows, schedule, micro_batch, prefix
        self.tracker: Tracker | None = None
        self.steps: Steps | None = None
        self.latest: dict[str, float] = {}
        self.applied: list[tuple[int, int, int]] = []
        self._pending: tuple[int, int] | None = None   # (planned step, k) of a change not yet applied
        self._logged_at = 0                             # the tracker's draws at the last record written

    # -- lifetime ------------------------------------------------------------------------------------------
    def setup(self, *args, **kwargs) -> None:
        if not isinstance(self, NoiseScale):   # Trainer(callbacks=[NoiseScale]): Lightning calls it on the class
            raise ConfigError("bsprof's NoiseScale was given to the Trainer as a class, not a callback object",
                              "make one: Trainer(callbacks=[NoiseScale()])")

    def on_fit_start(self, trainer, pl_module) -> None:
        if not pl_module.automatic_optimization:
            warnings.warn("bsprof's NoiseScale callback needs automatic optimization: not measuring "
                          "(with manual optimization, call a bsprof.Tracker yourself)", stacklevel=2)
            return
        if listed_again(self):
            return
        model = _model(trainer, pl_module)
        if open_tracker(model) is not None:
            warnings.warn("bsprof: this model already has an open tracker (is the NoiseScale callback in the "
                          "trainer's callbacks twice?): this NoiseScale callback stays off", stacklevel=2)
            return
        log = self.log_path
        if log == "auto":
            log = Path(trainer.log_dir or trainer.default_root_dir) / "bsprof.jsonl"
            log.parent.mkdir(parents=True, exist_ok=True)
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.tracker = Tracker(model, optimizer, log=log, **self.options)
        self.steps = Steps(self.tracker, self.every)

    @once_per_event
    def on_train_start(self, trainer, pl_module) -> None:
        if self.tracker is not None and self.population == "auto" and self.tracker.unit != "tokens":
            self.tracker.population = loader_population(trainer.train_dataloader)   # the loaders exist from here

    @once_per_event
    def on_fit_end(self, trainer, pl_module) -> None:
        if self.tracker is None:
            return
        if self._logged_at < len(self.tracker.draws) and (latest := scalars(self.tracker, self.window,
                                                                             self.prefix)):
            self.latest = latest   # steps measured since the last record (a run shorter than log_every): one more
            for logger in trainer.loggers:
                write(logger, latest, max(trainer.global_step - 1, 0))
        self.tracker.close()

    @once_per_event
    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_fit_end(trainer, pl_module)

    # -- one optimizer step --------------------------------------------------------------------------------
    @once_per_event
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.steps is None:
            return
        rows = self.batch_rows(batch)
        if not self.steps.sizes and self.schedule is not None:
            self._follow_schedule(trainer, batch_idx, rows)
        tokens = self.tracker.unit == "tokens" and self.batch_rows is rows_of   # (a batch_rows given counts them)
        self.steps.sizes.append(tokens_of(batch) if tokens else rows)

    @once_per_event
    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.steps is None:
            return
        self.steps.loss += float(loss.detach())   # Lightning's loss / k: the sum is the step's mean loss
        if trainer.accumulate_grad_batches == 1 and self.steps.due(trainer.global_step):
            self.steps.arm()

    @once_per_event
    def on_after_backward(self, trainer, pl_module) -> None:
        if self.steps is not None:
            self.steps.disarm()

    @once_per_event
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.steps is None:
            return
        step = trainer.global_step
        scale = _grad_scale(trainer) / trainer.accumulate_grad_batches
        ran = self.tracker.micro_steps
        if 0 < ran < trainer.accumulate_grad_batches:   # an epoch's short last step: each loss was still ÷ k
            self.steps.loss *= trainer.accumulate_grad_batches / ran   # the mean over the micro-batches that ran
        self.steps.close(step, loss_scale=scale)
        every = self.log_every or trainer.log_every_n_steps or 1
        # every log step logs the window over the steps measured so far, whether or not this step was measured
        # (with every=N, or on an epoch's short last step, it may not be)
        if (step + 1) % every == 0 and (latest := scalars(self.tracker, self.window, self.prefix)):
            self.latest, self._logged_at = latest, len(self.tracker.draws)
            for logger in trainer.loggers:
                write(logger, self.latest, step)

    # -- a planned batch -----------------------------------------------------------------------------------
    def _follow_schedule(self, trainer, batch_idx: int, rows: int | None) -> None:
        step, micro = trainer.global_step, self.micro_batch or rows
        k = self.schedule.accumulation_at(step, micro, trainer.world_size)
        if k == trainer.accumulate_grad_batches:
            self._pending = None
        elif self._pending is None or self._pending[1] != k:
            self._pending = (step, k)
        if self._pending is not None and batch_idx % self._pending[1] == 0:
            planned, k = self._pending
            trainer.accumulate_grad_batches = k
            self.applied.append((planned, step, k))
            self._pending = None
        for config in getattr(trainer, "lr_scheduler_configs", None) or ():   # the lr of the batch in force
            if isinstance(config.scheduler, ScheduleLR):
                config.scheduler.follow_batch(trainer.accumulate_grad_batches * micro * trainer.world_size)

    @property
    def unmeasured(self):
        return self.steps.unmeasured if self.steps is not None else {}
