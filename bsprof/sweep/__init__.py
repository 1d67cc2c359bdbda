"""Empirical critical batch on the user's own model: branched runs at several batch sizes (a check of the estimate).

    import bsprof.sweep
    result = bsprof.sweep.local("model.py", base_batch=32, doublings=4)          # equal examples, tolerance
    result = bsprof.sweep.global_("model.py", target_loss=0.2, lr_grid=[0.5, 1, 2])  # McCandlish S(B) fit
    result.critical, result.to_dict()

``fit`` holds the pure fits (S(B) = S_min(1 + B_crit/B), the tolerance bracket), ``branches`` the engine.
"""

from bsprof.sweep.api import comparison, global_, local, run
from bsprof.sweep.branches import TargetNotReached
from bsprof.sweep.config import SweepConfig, sweep_config
from bsprof.sweep.fit import CriticalFit, bootstrap_fit, fit_critical_batch, local_critical
from bsprof.sweep.result import BatchSummary, Branch, Comparison, Compute, SweepResult

__all__ = ["BatchSummary", "Branch", "Comparison", "Compute", "CriticalFit", "SweepConfig", "SweepResult",
           "TargetNotReached", "bootstrap_fit", "comparison", "fit_critical_batch", "global_", "local",
           "local_critical", "run", "sweep_config"]
