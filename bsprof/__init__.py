"""bsprof: measure the critical batch size of a PyTorch model (gradient noise scale, with error bars)."""

__version__ = "0.1.0"

from .errors import BsprofError  # noqa: E402
from .report import Report  # noqa: E402

__all__ = ["BsprofError", "Report", "__version__"]
