"""bsprof where people train (docs/integrations.md): thin layers over ``bsprof.Tracker``, one module per framework.

    loggers      the tracker's scalars (bsprof/b_simple, …) to TensorBoard, W&B, a Lightning logger or a callable
    lightning    ``NoiseScale``, a Lightning Callback            (pip install -e '.[lightning]')
    hf           ``NoiseScaleCallback``, a Hugging Face TrainerCallback   (pip install -e '.[hf]')
    steps        the shared rule for which framework steps the tracker can measure

The framework modules import their framework when they are imported, never before: ``import bsprof`` and
``bsprof.integrations.loggers`` need neither. A schedule drives a run through ``bsprof.schedule.apply.ScheduleLR``
and ``Schedule.accumulation_at``.
"""

from bsprof.integrations.loggers import log_to, scalars

__all__ = ["log_to", "scalars"]
