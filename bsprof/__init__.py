"""bsprof: measure the critical batch size of a PyTorch model (gradient noise scale, with error bars).

    report = bsprof.measure("model.py", bsprof.MeasureConfig(steps=200))
    report.summary["b_simple"], report.summary["b_simple_lo"], report.summary["b_simple_hi"]
"""

__version__ = "0.1.0"

from bsprof.config import MeasureConfig  # noqa: E402
from bsprof.engine.loop import measure  # noqa: E402
from bsprof.errors import BsprofError  # noqa: E402
from bsprof.output.report import Report  # noqa: E402
from bsprof.schedule import Schedule  # noqa: E402
from bsprof.stats.estimators import NoiseScale, noise_scale  # noqa: E402
from bsprof.track import Tracker  # noqa: E402

__all__ = ["BsprofError", "MeasureConfig", "NoiseScale", "Report", "Schedule", "Tracker", "measure", "noise_scale",
           "__version__"]
