"""bsprof: measure the critical batch size of a PyTorch model (gradient noise scale, with error bars).

    import bsprof
    report = bsprof.measure("model.py", steps=200)                  # or model=…, dataset=…, loss=…
    report.summary.b_simple                                          # Estimate(value, lo, hi, status)
    bsprof.measure_at(model, loss, (x, y))                           # at the current weights, no training

The public names are imported on first use (PEP 562), so ``import bsprof`` and ``bsprof --help`` do not pay for
torch, pandas or scipy; ``tests/test_packaging.py`` holds that line.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> the module that defines it
_PUBLIC = {
    "AtWeights": "bsprof.results",
    "BsprofError": "bsprof.errors",
    "Estimate": "bsprof.results",
    "MeasureConfig": "bsprof.config",
    "Measurement": "bsprof.results",
    "NoiseScale": "bsprof.stats.estimators",
    "Report": "bsprof.output.report",
    "Schedule": "bsprof.schedule",
    "Status": "bsprof.results",
    "Summary": "bsprof.results",
    "Tracker": "bsprof.track",
    "measure": "bsprof.api",
    "measure_at": "bsprof.api",
    "noise_scale": "bsprof.stats.estimators",
}

__all__ = [*_PUBLIC, "sweep", "__version__"]


def __getattr__(name: str):
    if name == "sweep":  # the package bsprof.sweep (branched runs), imported on first use
        return importlib.import_module("bsprof.sweep")
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'bsprof' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
