"""Batch-size schedules from a noise-scale measurement: fits of B_n(L), rules, McCandlish predictions, plans.

    from bsprof.schedule import plan, ScheduleConfig
    schedule = plan(report, ScheduleConfig(target_loss=0.1))
    schedule.batch_size_at(step=1200), schedule.lr_at(step=1200)

``ScheduledBatchSampler`` (``bsprof.schedule.sampler``, needs torch) makes a DataLoader follow it.
"""

from bsprof.schedule.plan import ExtrapolationError, ScheduleConfig, plan
from bsprof.schedule.stages import Schedule, ScheduleError, Stage

__all__ = ["ExtrapolationError", "Schedule", "ScheduleConfig", "ScheduleError", "Stage", "plan"]
