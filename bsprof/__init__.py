"""bsprof: measure the critical batch size of a PyTorch model (gradient noise scale, with error bars).

    import bsprof
    report = bsprof.measure("model.py", steps=200)                  # or model=…, dataset=…, loss=…
    report.summary.b_simple                                          # Estimate(value, lo, hi, status)
    bsprof.measure_at(model, loss, (x, y))                           # at the current weights, no training
"""

__version__ = "0.2.0"

from bsprof import sweep  # noqa: E402  (bsprof.sweep.local / global_: the empirical critical batch)
from bsprof.api import measure, measure_at  # noqa: E402
from bsprof.config import MeasureConfig  # noqa: E402
from bsprof.errors import BsprofError  # noqa: E402
from bsprof.output.report import Report  # noqa: E402
from bsprof.results import Estimate, Measurement, Status, Summary  # noqa: E402
from bsprof.schedule import Schedule  # noqa: E402
from bsprof.stats.estimators import NoiseScale, noise_scale  # noqa: E402
from bsprof.track import Tracker  # noqa: E402

__all__ = ["BsprofError", "Estimate", "MeasureConfig", "Measurement", "NoiseScale", "Report", "Schedule", "Status",
           "Summary", "Tracker", "measure", "measure_at", "noise_scale", "sweep", "__version__"]
