"""A schedule's learning rate as a ``torch.optim.lr_scheduler`` (and its batch as accumulation steps).

    scheduler = ScheduleLR(optimizer, schedule)      # lr = schedule.lr_at(step) from step 0 on
    for step in ...:
        k = schedule.accumulation_at(step, micro_batch=8)     # micro-batches in this optimizer step
        ...; optimizer.step(); optimizer.zero_grad(); scheduler.step()

Parameter groups keep their ratios: group g gets lr_at(step) × base_lr_g / base_lr_0 (all the same lr when the
groups start equal). ``step`` counts optimizer steps, as the schedule's ``start_step`` does.
"""

from __future__ import annotations

from torch.optim.lr_scheduler import LRScheduler


class ScheduleLR(LRScheduler):
    """lr of the stage in force at each optimizer step (``Schedule.lr_at``); ``scheduler.step()`` after
    ``optimizer.step()``, as for every torch scheduler. Works in Lightning (``"interval": "step"``) and as the
    Hugging Face Trainer's ``optimizers=(optimizer, scheduler)``."""

    def __init__(self, optimizer, schedule, last_epoch: int = -1):
        self.schedule = schedule
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lr = float(self.schedule.lr_at(step=max(self.last_epoch, 0)))
        first = self.base_lrs[0] or 1.0
        return [lr * (base / first if first else 1.0) for base in self.base_lrs]

    _get_closed_form_lr = get_lr


__all__ = ["ScheduleLR"]
