"""Noise scales beyond the pair estimate of B_simple, as extra report columns of one measurement row.

- ``b_simple_regression``, ``regression_fit_p``: the 1/B regression over partial sums (``regression.fit``);
- ``b_noise`` (+ ``gHg``, ``trace_HSigma``, ``eps_max``, ``b_noise_stopped_by``): with ``--hessian``
  (``probes.hessian``);
- ``b_pre`` (+ ``b_pre_stopped_by``): with an Adam-like optimizer, the preconditioned noise scale
  (``probes.precondition``).
B_noise and B_pre stop by the same rule as B_simple (``bsprof.stats.stopping``).
Batch sizes are multiplied by ``scale`` (the report's unit); every interval is at the configured confidence.
"""

from __future__ import annotations

import dataclasses
import math

from bsprof.engine.sampling import measure_at
from bsprof.engine.source import DrawSource
from bsprof.probes import trainable
from bsprof.probes.hessian import measure_b_noise
from bsprof.probes.precondition import ADAM_LIKE, adam_preconditioner, preconditioned
from bsprof.stats import regression

NAN = math.nan


def regression_fields(draws, scale: float) -> dict:
    f = regression.fit(draws)
    return {"b_simple_regression": f.b_simple * scale, "regression_g2": f.g2, "regression_trace_sigma": f.trace_sigma,
            "regression_fit_p": f.p_value, "regression_dof": f.dof, "regression_fit_failed": bool(f.failed)}


def hessian_fields(model, loss_fn, examples: DrawSource, draws, cfg, scale: float) -> dict:
    est = measure_b_noise(model, loss_fn, examples, draws[-1].B, rel_error=cfg.rel_error, confidence=cfg.confidence,
                          min_draws=cfg.min_draws, max_examples=cfg.max_examples, max_seconds=cfg.max_seconds)
    return est.row(scale)


def preconditioned_fields(model, loss_fn, examples: DrawSource, optimizer, sampling, group, cfg, scale: float) -> dict:
    """B_pre for Adam-like optimizers: NaN (with b_pre_status 'not_available') before Adam has any state.

    Per-example through vmap when B_simple was measured with vmap, else with micro-batches (``preconditioned``).
    """
    if type(optimizer).__name__ not in ADAM_LIKE:
        return {}
    p = adam_preconditioner(optimizer, trainable(model)[1])
    if p is None:
        return {"b_pre": NAN, "b_pre_lo": NAN, "b_pre_hi": NAN, "b_pre_status": "not_available",
                "b_pre_stopped_by": None}
    probe = preconditioned(sampling.probe, p)
    s = dataclasses.replace(sampling, probe=probe, b=1 if probe.per_example else cfg.micro_batch)
    est, _, stopped = measure_at(model, loss_fn, examples, s, group)
    return {"b_pre": est.b_simple * scale, "b_pre_lo": est.b_simple_lo * scale, "b_pre_hi": est.b_simple_hi * scale,
            "b_pre_status": est.status, "b_pre_stopped_by": stopped}


def extra_fields(model, loss_fn, examples, draws, cfg, optimizer, sampling, group, scale: float) -> dict:
    out = regression_fields(draws, scale)
    if cfg.hessian:
        out.update(hessian_fields(model, loss_fn, examples, draws, cfg, scale))
    out.update(preconditioned_fields(model, loss_fn, examples, optimizer, sampling, group, cfg, scale))
    return out
