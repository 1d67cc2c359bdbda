"""B_noise = tr(HΣ)/(GᵀHG) (McCandlish et al. 2018, eq. 2.8) through Hessian-vector products.

The two-batch trick of App. A.1 applied to the quadratic form q_B = G_Bᵀ H̃ G_B, with H̃ the Hessian of the mean
loss of an INDEPENDENT batch (so E[H̃] = H and H̃ is independent of the G's):

    E[q_B] = GᵀHG + tr(HΣ)·c(B)

One draw: B examples split into k small batches of b = B/k; G_{b,i} their mean gradients, G_B = mean_i G_{b,i}.
k Hessian-vector products H̃G_{b,i} (double backward on the independent batch) give
    q_b = mean_i G_{b,i}ᵀH̃G_{b,i},    q_B = G_Bᵀ(mean_i H̃G_{b,i})   (linearity: no extra product),
and ``estimators.unbiased_pair`` turns (q_b, q_B) into unbiased GᵀHG and tr(HΣ), exactly as it turns
(|G_b|², |G_B|²) into |G|² and tr(Σ) from the same draw. Across draws (ratio of means, skew-corrected Fieller):
    B_noise = tr(HΣ)/(GᵀHG),   ε_max = |G|²/(GᵀHG)   (eq. 2.6; ε_opt(B) = ε_max/(1 + B_noise/B)).

Not a ``Probe`` (its statistic is a quadratic form, not ``ChunkStats``) but the same idea: ``QuadProbe`` names one
draw function and how draws combine; ``probes.QUAD_PROBES`` lists them. ``measure_b_noise`` draws until the
stopping rule shared with B_simple and B_pre (``bsprof.stats.stopping.Stopper``) fires, and records what stopped it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bsprof.engine.source import DrawSource
from bsprof.probes.base import LossFn, per_example_losses, trainable
from bsprof.stats.estimators import Ratio, ratio_of_means, unbiased_pair
from bsprof.stats.stopping import TIME, Stopper


@dataclass(frozen=True)
class QuadDraw:
    """One draw of the Hessian pair: squared norms and quadratic forms at small batch b and big batch B."""

    small_sq: float
    big_sq: float
    small_q: float
    big_q: float
    b: int
    B: int
    n: int | None


def _mean_grad(model: nn.Module, loss_fn: LossFn, batch, count: int, create_graph: bool = False):
    _, params = trainable(model)
    loss = per_example_losses(model, loss_fn, batch, count).mean()
    return torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True,
                               materialize_grads=True)


def hvps(model: nn.Module, loss_fn: LossFn, batch, count: int, vectors: list[list[torch.Tensor]]):
    """H̃v for each v in ``vectors``, H̃ the Hessian of the mean loss over ``batch`` (double backward)."""
    _, params = trainable(model)
    grads = _mean_grad(model, loss_fn, batch, count, create_graph=True)
    out = []
    for i, v in enumerate(vectors):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=i < len(vectors) - 1,
                                 allow_unused=True, materialize_grads=True)
        out.append([h.detach() for h in hv])
    return out


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def quad_draw(model: nn.Module, loss_fn: LossFn, examples: DrawSource, B: int, k: int) -> QuadDraw:
    """One draw: B examples in k small batches for G, an independent batch of B for H̃ (module docstring)."""
    b = B // k
    drawn, h_drawn = examples.draw(b * k), examples.draw(B)
    grads = [[g.detach() for g in _mean_grad(model, loss_fn, batch, count)]
             for batch, count in examples.batches(drawn, b)]
    (h_batch, h_count), = list(examples.batches(h_drawn, B))
    hv = hvps(model, loss_fn, h_batch, h_count, grads)
    big = [sum(gs) / k for gs in zip(*grads)]
    big_hv = [sum(hs) / k for hs in zip(*hv)]
    return QuadDraw(float(np.mean([_dot(g, g) for g in grads])), _dot(big, big),
                    float(np.mean([_dot(g, h) for g, h in zip(grads, hv)])), _dot(big, big_hv), b, b * k,
                    examples.n)


@dataclass(frozen=True)
class HessianEstimate:
    """GᵀHG, tr(HΣ), B_noise and ε_max with their intervals, from several draws, and what stopped the drawing
    ("precision", "examples", "time"; "" when the draws were combined outside ``measure_b_noise``)."""

    gHg: float
    trace_h_sigma: float
    b_noise: Ratio
    eps_max: Ratio
    n_draws: int
    stopped_by: str = ""

    def row(self, scale: float = 1.0) -> dict:
        """Report columns; batch sizes in the report's unit (× ``scale``), ε_max in the loss's units."""
        return {"gHg": self.gHg, "trace_HSigma": self.trace_h_sigma, "b_noise": self.b_noise.value * scale,
                "b_noise_lo": self.b_noise.lo * scale, "b_noise_hi": self.b_noise.hi * scale,
                "b_noise_status": self.b_noise.status, "eps_max": self.eps_max.value,
                "eps_max_lo": self.eps_max.lo, "eps_max_hi": self.eps_max.hi, "hessian_draws": self.n_draws,
                "b_noise_stopped_by": self.stopped_by}


def combine(draws: list[QuadDraw], confidence: float = 0.9) -> HessianEstimate:
    """Unbiased per-draw (|G|², GᵀHG, tr(HΣ)), example-weighted ratios of means with intervals."""
    g2 = np.array([unbiased_pair(d.small_sq, d.big_sq, d.b, d.B, d.n)[0] for d in draws])
    ghg, thg = map(np.array, zip(*(unbiased_pair(d.small_q, d.big_q, d.b, d.B, d.n) for d in draws)))
    w = np.array([d.B for d in draws], float)
    return HessianEstimate(float(np.average(ghg, weights=w)), float(np.average(thg, weights=w)),
                           ratio_of_means(thg, ghg, w, confidence), ratio_of_means(g2, ghg, w, confidence),
                           len(draws))


@dataclass(frozen=True)
class QuadProbe:
    """A probe of Hessian quadratic forms: ``draw(model, loss_fn, source, B, k)`` → one ``QuadDraw``, and
    ``combine(draws, confidence)`` → ``HessianEstimate``."""

    name: str
    draw: Callable[[nn.Module, LossFn, DrawSource, int, int], QuadDraw]
    combine: Callable[[list[QuadDraw], float], HessianEstimate]


HESSIAN = QuadProbe("hessian", quad_draw, combine)


def measure_b_noise(model: nn.Module, loss_fn: LossFn, examples: DrawSource, B: int, k: int = 4,
                    rel_error: float = 0.2, confidence: float = 0.9, min_draws: int = 5,
                    max_examples: int = 200_000, max_seconds: float = 60.0, probe: QuadProbe = HESSIAN,
                    on_draw: Callable[[HessianEstimate], None] | None = None,
                    budget_seconds: float = math.inf, cap_seconds: float = math.inf) -> HessianEstimate:
    """Draw Hessian pairs at big batch B (2·B examples a draw: the G batch and the independent H batch) until the
    shared stopping rule fires on B_noise's ``Estimate.rel_halfwidth``; the estimate says what stopped it.
    ``budget_seconds``: the measurement's time budget, as B_simple's (after ``min_draws``, once bounded);
    ``cap_seconds``: a time limit that applies from ``min_draws`` on whether or not the interval is bounded (GᵀHG ≤ 0
    never bounds it), where ``max_seconds`` applies from the start."""
    draws, spent, t0 = [], 0, time.perf_counter()
    stop = Stopper(rel_error, min_draws, max_examples, max_seconds, budget_seconds)
    if examples.n is not None:
        B = min(B, examples.n // 2)  # the G batch and the independent H batch must both fit
    B = max(B // k * k, k)
    while True:
        draws.append(probe.draw(model, loss_fn, examples, B, k))
        spent += 2 * B
        est = probe.combine(draws, confidence)
        if on_draw:
            on_draw(est)
        n, elapsed = len(draws), time.perf_counter() - t0
        why = stop(n, est.b_noise.estimate.rel_halfwidth, spent, elapsed)
        if why is None and n >= min_draws and elapsed * (n + 1) / n > cap_seconds:
            why = TIME
        if why is not None:
            return dataclasses.replace(est, stopped_by=why)


__all__ = ["hvps", "quad_draw", "combine", "measure_b_noise", "HessianEstimate", "QuadDraw", "QuadProbe", "HESSIAN"]
