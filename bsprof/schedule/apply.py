"""A schedule's learning rate as a ``torch.optim.lr_scheduler`` (and its batch as accumulation steps).

    scheduler = ScheduleLR(optimizer, schedule)      # lr = schedule.lr_at(step) from step 0 on
    for step in ...:
        k = schedule.accumulation_at(step, micro_batch=8)     # micro-batches in this optimizer step
        ...; optimizer.step(); optimizer.zero_grad(); scheduler.step()

Parameter groups keep their ratios: group g gets lr_at(step) × base_lr_g / base_lr_0 (all the same lr when the
groups start equal). ``step`` counts optimizer steps, as the schedule's ``start_step`` does.

Lightning and the Hugging Face Trainer change the accumulation only at a step boundary where the micro-batch count
divides, so a planned batch can take effect a step late; their callbacks then call ``follow_batch`` with the batch
in force, and the lr stays that batch's (the latest stage with that batch) until the change lands.
"""

from __future__ import annotations

from torch.optim.lr_scheduler import LRScheduler


class ScheduleLR(LRScheduler):
    """lr of the stage in force at each optimizer step (``Schedule.lr_at``); ``scheduler.step()`` after
    ``optimizer.step()``, as for every torch scheduler. Works in Lightning (``"interval": "step"``) and as the
    Hugging Face Trainer's ``optimizers=(optimizer, scheduler)``."""

    def __init__(self, optimizer, schedule, last_epoch: int = -1):
        self.schedule = schedule
        self.batch_in_force: int | None = None   # set by ``follow_batch`` while a planned change waits
        super().__init__(optimizer, last_epoch)

    def lr_now(self) -> float:
        """The schedule's lr at this step, or, while ``batch_in_force`` differs from the stage's batch, the lr of
        the latest stage so far with the batch in force."""
        step = max(self.last_epoch, 0)
        stage = self.schedule.stage_at(step=step)
        if self.batch_in_force is not None and stage.batch_size != self.batch_in_force:
            held = [s for s in self.schedule.stages if s.start_step <= step and s.batch_size == self.batch_in_force]
            if held:
                return float(held[-1].lr)
        return float(self.schedule.lr_at(step=step))

    def get_lr(self) -> list[float]:
        lr = self.lr_now()
        first = self.base_lrs[0] or 1.0
        return [lr * (base / first if first else 1.0) for base in self.base_lrs]

    def follow_batch(self, batch: int) -> None:
        """The batch the run trains with at this step (a callback's, after the step's lr was set): the lr of this
        step becomes that batch's stage's, now."""
        self.batch_in_force = int(batch)
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    _get_closed_form_lr = get_lr


__all__ = ["ScheduleLR"]
