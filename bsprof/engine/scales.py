"""Noise scales beyond the pair estimate of B_simple, as extra fields of one ``Measurement``.

- ``regression``: the 1/B regression over partial sums (``stats.regression``), with its goodness of fit;
- ``b_noise`` and ``hessian`` (GᵀHG, tr(HΣ), ε_max): with ``--hessian`` (``probes.hessian``);
- ``b_pre``: with an Adam-family optimizer, the preconditioned noise scale (``probes.precondition``).
B_noise and B_pre stop by the same rule as B_simple (``bsprof.stats.stopping``).
Batch sizes are multiplied by ``scale`` (the report's unit); every interval is at the configured confidence.
"""

from __future__ import annotations

import dataclasses
import math
import time

from bsprof.engine.sampling import measure_at
from bsprof.engine.source import DrawSource
from bsprof.probes import trainable
from bsprof.probes.hessian import measure_b_noise
from bsprof.probes.precondition import adam_preconditioner, preconditioned
from bsprof.results import Estimate, Hessian, Regression, Status, is_adam_family, optimizer_kind
from bsprof.stats import regression


def regression_part(draws, scale: float) -> Regression:
    f = regression.fit(draws)
    return Regression(f.b_simple * scale, f.g2, f.trace_sigma, f.p_value, f.dof, bool(f.failed))


def hessian_fields(model, loss_fn, examples: DrawSource, draws, cfg, scale: float, sampling=None) -> dict:
    """B_noise (in the report's unit) and the Hessian part (GᵀHG, tr(HΣ), ε_max in the loss's units). ``sampling``:
    the measurement's time limits after B_simple (``loop._left``: what is left of the budget, and the hard cap that,
    from ``--min-draws`` on, also ends draws whose interval never bounds, GᵀHG ≤ 0); None: ``cfg.max_seconds`` alone."""
    cap = float("inf") if sampling is None else sampling.max_seconds
    budget = float("inf") if sampling is None else sampling.budget_seconds
    est = measure_b_noise(model, loss_fn, examples, draws[-1].B, rel_error=cfg.rel_error, confidence=cfg.confidence,
                          min_draws=cfg.min_draws, max_examples=cfg.max_examples, max_seconds=cfg.max_seconds,
                          budget_seconds=budget, cap_seconds=cap)
    r, e = est.b_noise, est.eps_max
    b_noise = Estimate(r.value, r.lo, r.hi, r.status).scaled(scale)
    if est.n_draws < cfg.min_draws:  # --max-seconds ended it before --min-draws: a few-draw interval is not one
        b_noise = Estimate.none(Status.UNDETERMINED)
    return {"b_noise": b_noise,
            "hessian": Hessian(est.gHg, est.trace_h_sigma, Estimate(e.value, e.lo, e.hi, e.status), est.n_draws),
            "b_noise_stopped_by": getattr(est, "stopped_by", "")}


def preconditioned_fields(model, loss_fn, examples: DrawSource, optimizer, sampling, group, cfg,
                          scale: float) -> dict:
    """B_pre for Adam-family optimizers: status not_available before Adam has any state.

    Per-example through vmap when B_simple was measured with vmap, else with micro-batches (``preconditioned``).
    """
    if not is_adam_family(optimizer_kind(optimizer)):
        return {}
    p = adam_preconditioner(optimizer, trainable(model)[1])
    if p is None:
        return {"b_pre": Estimate.none(Status.NOT_AVAILABLE)}
    probe = preconditioned(sampling.probe, p)
    # the measurement's cap (``loop._left``) applies from --min-draws on, as B_noise's: a cap shared with B_noise
    # left B_pre one draw and no interval (a reviewer's finding); --max-seconds stays the hard limit
    s = dataclasses.replace(sampling, probe=probe, b=1 if probe.per_example else cfg.micro_batch,
                            max_seconds=cfg.max_seconds, cap_seconds=sampling.max_seconds)
    est, _, stopped = measure_at(model, loss_fn, examples, s, group)
    return {"b_pre": Estimate(est.b_simple, est.b_simple_lo, est.b_simple_hi, est.status).scaled(scale),
            "b_pre_stopped_by": stopped}


def extra_fields(model, loss_fn, examples, draws, cfg, optimizer, sampling, group, scale: float) -> dict:
    """Measurement fields beyond the pair estimate: regression, and B_noise / B_pre when they apply.

    ``sampling``'s time limits (``loop._left``: what is left of the budget, and the hard cap) are shared: when both
    B_noise and B_pre follow under a budget, B_noise gets half of each and B_pre what B_noise left, so that the
    measurement takes B_simple's time plus one cap, not two."""
    # one draw of the whole dataset is exact: a line through its noisy partial sums is not (a trial: 212 beside 273)
    out = {} if len(draws) == 1 and draws[0].exact else {"regression": regression_part(draws, scale)}
    pre = is_adam_family(optimizer_kind(optimizer)) and bool(getattr(optimizer, "state", None))
    if cfg.hessian:
        t0 = time.perf_counter()
        shared = pre and sampling is not None and math.isfinite(sampling.budget_seconds)
        out.update(hessian_fields(model, loss_fn, examples, draws, cfg, scale,
                                  _limits(sampling, share=0.5) if shared else sampling))
        if shared:
            sampling = _limits(sampling, spent=time.perf_counter() - t0)
    out.update(preconditioned_fields(model, loss_fn, examples, optimizer, sampling, group, cfg, scale))
    return out


def _limits(sampling, share: float = 1.0, spent: float = 0.0):
    """``sampling`` with its budget and hard cap (``max_seconds``) cut to ``share`` of them, less ``spent``."""
    def cut(x: float) -> float:
        return max(0.0, x * share - spent) if math.isfinite(x) else x
    return dataclasses.replace(sampling, budget_seconds=cut(sampling.budget_seconds),
                               max_seconds=cut(sampling.max_seconds))
