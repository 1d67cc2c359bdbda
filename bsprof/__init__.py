"""bsprof: measure the critical batch size of a PyTorch model (gradient noise scale, with error bars).

    report = bsprof.measure("model.py", bsprof.MeasureConfig(steps=200))
    report.summary["b_simple"], report.summary["b_simple_lo"], report.summary["b_simple_hi"]
"""

__version__ = "0.1.0"

from .config import MeasureConfig  # noqa: E402
from .errors import BsprofError  # noqa: E402
from .estimators import NoiseScale, noise_scale  # noqa: E402
from .loop import measure  # noqa: E402
from .report import Report  # noqa: E402
from .schedule import Schedule  # noqa: E402

__all__ = ["BsprofError", "MeasureConfig", "NoiseScale", "Report", "Schedule", "measure", "noise_scale",
           "__version__"]
