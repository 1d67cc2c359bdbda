"""bsprof: measure the critical batch size of a PyTorch model (gradient noise scale, with error bars).

    report = bsprof.measure("model.py", bsprof.MeasureConfig(steps=200))
    report.summary["b_simple"], report.summary["b_simple_lo"], report.summary["b_simple_hi"]

The public names are imported on first use (PEP 562), so ``import bsprof`` and ``bsprof --help`` do not pay for
torch, pandas or scipy; ``tests/test_packaging.py`` holds that line.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "BsprofError": "bsprof.errors",
    "MeasureConfig": "bsprof.config",
    "NoiseScale": "bsprof.stats.estimators",
    "Report": "bsprof.output.report",
    "Schedule": "bsprof.schedule",
    "measure": "bsprof.engine.loop",
    "noise_scale": "bsprof.stats.estimators",
}

__all__ = ["BsprofError", "MeasureConfig", "NoiseScale", "Report", "Schedule", "measure", "noise_scale",
           "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'bsprof' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
