"""Pure statistics: nested-pair draws in (``Draw``), noise scales with intervals out (``noise_scale``)."""

from bsprof.stats.draw import Draw
from bsprof.stats.estimators import noise_scale

__all__ = ["Draw", "noise_scale"]
