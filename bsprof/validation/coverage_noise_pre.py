"""Coverage of the nominal intervals on B_noise and B_pre against closed-form truths (scripts/coverage_noise_pre.py).

Ground truth: V2 least squares (``closed_forms.LeastSquares``, docs/science.md §5), where
    B_noise = tr(HΣ)/(GᵀHG) = (ΔᵀΛ³Δ + (ΔᵀΛΔ + σ²)·tr Λ²)/ΔᵀΛ³Δ,
    B_pre   = tr(PΣ)/(GᵀPG)  for a fixed diagonal P (at a measurement, Adam's P is the optimizer's state: fixed).
P here is Adam's at its fixed point, P = diag(1/√E[g²]) with E[g_j²] = 2G_j² + (ΔᵀΛΔ + σ²)λ_j.

- ``noise_cell``: the tool's own ``probes.hessian.combine`` on ``QuadDraw``s simulated in numpy exactly as
  ``quad_draw`` makes them (k = 4 small batches of b = B/4 for G, an independent batch of B for H̃ = mean xxᵀ);
- ``pre_cell``: the tool's ``noise_scale`` on draws of the √P-scaled per-example gradients (what the
  preconditioned probe feeds it), per-example (b = 1) or micro-batch (b = 8) pairs — ``coverage.cell`` reused;
- ``loop_study``: the real torch code on fresh data: ``hessian.measure_b_noise`` (Hessian-vector products, its
  stopping rule) and ``sampling.measure_at`` with ``precondition.preconditioned`` probes (vmap and micro-batch).

Covers: lo ≤ truth ≤ hi (a lower bound has hi = ∞; undetermined covers), as in ``coverage``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from bsprof.results import Status
from bsprof.validation import coverage
from bsprof.validation.closed_forms import FreshLeastSquares, LeastSquares


def adam_p(model: LeastSquares) -> np.ndarray:
    """Adam's preconditioner at its fixed point: 1/√E[g²] per coordinate (E[g_j²] = 2G_j² + (ΔᵀΛΔ + σ²)λ_j)."""
    G = model.lam * model.delta
    return 1.0 / np.sqrt(2 * G ** 2 + model._s * model.lam)


@dataclass(frozen=True)
class Preconditioned:
    """A LeastSquares model seen through √P: its per-example gradients are √P·g, its "B_simple" is B_pre."""

    base: LeastSquares
    p: np.ndarray
    n = None

    @property
    def lam(self) -> np.ndarray:
        return self.base.lam

    @property
    def b_simple(self) -> float:
        return self.base.b_pre(self.p)

    def grads(self, rng, reps: int, count: int) -> np.ndarray:
        return self.base.grads(rng, reps, count) * np.sqrt(self.p)


def models() -> dict:
    lam = np.linspace(0.1, 2.0, 20)
    aniso = np.random.default_rng(0).standard_normal(20)
    aniso /= np.linalg.norm(aniso)
    return {
        "V2 iso d=20 |Δ|²=1": LeastSquares.isotropic(20, 1.0, 0.25),
        "V2 iso d=20 |Δ|²=0.02": LeastSquares.isotropic(20, 0.02, 0.25),
        "V2 aniso d=20": LeastSquares(lam, aniso, 0.25),
        "V2 aniso d=20 small Δ": LeastSquares(lam, 0.1 * aniso, 0.25),
    }


def quad_draws(model: LeastSquares, rng: np.random.Generator, reps: int, B: int, k: int = 4) -> list:
    """``reps`` independent ``QuadDraw``s at big batch B (module docstring; ``probes.hessian.quad_draw``)."""
    from bsprof.probes.hessian import QuadDraw

    d, b = len(model.lam), B // k
    g = model.grads(rng, reps, b * k)
    small = g.reshape(reps, k, b, d).mean(2)                              # G_{b,i}
    big = small.mean(1)                                                   # G_B
    x = rng.standard_normal((reps, B, d)) * np.sqrt(model.lam)            # the independent Hessian batch
    h = np.einsum("rbd,rbe->rde", x, x) / B                               # H̃ = mean xxᵀ
    hs = np.einsum("rde,rke->rkd", h, small)
    small_q, big_q = (small * hs).sum(-1).mean(1), (big * hs.mean(1)).sum(-1)
    small_sq, big_sq = np.square(small).sum(-1).mean(1), np.square(big).sum(-1)
    return [QuadDraw(float(small_sq[r]), float(big_sq[r]), float(small_q[r]), float(big_q[r]), b, b * k, None)
            for r in range(reps)]


def standard_errors(coverage_: float, reps: int, nominal: float = 0.9) -> dict:
    """Binomial standard errors of a coverage over ``reps``: of the measured proportion, and at the nominal one."""
    return {"se": math.sqrt(coverage_ * (1 - coverage_) / reps),
            "se_nominal": math.sqrt(nominal * (1 - nominal) / reps)}


def covers(est, truth: float) -> tuple[bool, str]:
    """(covered, how it missed) for an ``Estimate``-like (value, lo, hi, status)."""
    if est.status == Status.UNDETERMINED:
        return True, ""
    if est.lo > truth:
        return False, "low"
    if est.hi < truth:
        return False, "high"
    return True, ""


def _row(kind: str, name: str, truth: float, reps: int, hits: int, miss: dict, status: dict, t0: float,
         **extra) -> dict:
    cov = hits / reps
    return {"quantity": kind, "model": name, "truth": truth, **extra, "reps": reps, "coverage": cov,
            **standard_errors(cov, reps), "miss_lo_above_truth": miss["low"] / reps,
            "miss_hi_below_truth": miss["high"] / reps,
            **{f"frac_{k}": v / reps for k, v in status.items()}, "seconds": round(time.perf_counter() - t0, 2)}


def noise_cell(name: str, model: LeastSquares, B: int, m: int, reps: int, rng, confidence: float = 0.9) -> dict:
    """Coverage of ``reps`` simulated B_noise measurements of ``m`` Hessian draws at big batch B each."""
    from bsprof.probes.hessian import combine

    t0, hits, miss = time.perf_counter(), 0, {"low": 0, "high": 0}
    status = {"ok": 0, "lower_bound": 0, "undetermined": 0}
    chunk = max(1, min(reps, int(2e7 // (B * len(model.lam) * m))))
    done = 0
    while done < reps:
        k = min(chunk, reps - done)
        per_draw = [quad_draws(model, rng, k, B) for _ in range(m)]
        for draws in zip(*per_draw):
            est = combine(list(draws), confidence).b_noise
            ok, how = covers(est, model.b_noise)
            hits += ok
            status[str(est.status)] += 1
            if how:
                miss[how] += 1
        done += k
    return _row("b_noise", name, model.b_noise, reps, hits, miss, status, t0, b=B // 4, B=B, draws=m)


def pre_cell(name: str, model: LeastSquares, b: int, B: int, m: int, reps: int, rng) -> dict:
    """Coverage of ``reps`` simulated B_pre measurements (``coverage.cell`` on the √P-scaled gradients)."""
    row = coverage.cell(name, Preconditioned(model, adam_p(model)), b, B, m, reps, rng)
    return {"quantity": "b_pre", **row, **standard_errors(row["coverage"], reps)}


def simulated_study(reps: int, seed: int = 0, quick: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for name, model in models().items():
        if quick and "small" in name:
            continue
        for B in coverage.batch_sizes(model.b_noise, 4):
            for m in ((5,) if quick else (5, 20)):
                rows.append(noise_cell(name, model, B, m, reps, rng))
        if "aniso" not in name:
            continue  # isotropic inputs: Adam's P ∝ I, B_pre ≡ B_simple (scripts/coverage.py covers it)
        truth = model.b_pre(adam_p(model))
        for b in (1, 8):
            for B in coverage.batch_sizes(truth, b):
                for m in ((5,) if quick else (5, 20)):
                    rows.append(pre_cell(name, model, b, B, m, reps, rng))
    return rows


# -- the real torch code ----------------------------------------------------------------------------------------
LOOP_MODELS = ("V2 iso d=20 |Δ|²=1", "V2 aniso d=20", "V2 iso d=20 |Δ|²=0.02")


def loop_study(reps: int, seed: int = 2, max_seconds: float = 600.0, names=LOOP_MODELS) -> list[dict]:
    """measure_b_noise and measure_at with preconditioned probes, on fresh data (stops a case at max_seconds)."""
    import torch

    from bsprof.engine.sampling import Sampling, measure_at
    from bsprof.probes import PROBES
    from bsprof.probes.hessian import measure_b_noise
    from bsprof.probes.precondition import preconditioned

    rows = []
    for name in names:
        model = models()[name]
        net = coverage.net_at(model)
        truth = model.b_noise
        B = 4 * 2 ** round(math.log2(max(2 * truth / 4, 4)))
        t0, hits, miss, n = time.perf_counter(), 0, {"low": 0, "high": 0}, 0
        status = {"ok": 0, "lower_bound": 0, "undetermined": 0}
        for r in range(reps):
            est = measure_b_noise(net, coverage.ls_loss, FreshLeastSquares(model, seed * 10_000 + r), B,
                                  rel_error=0.2, min_draws=5, max_examples=10 ** 7, max_seconds=60.0).b_noise
            ok, how = covers(est, truth)
            hits, n = hits + ok, n + 1
            status[str(est.status)] += 1
            if how:
                miss[how] += 1
            if time.perf_counter() - t0 > max_seconds:
                break
        rows.append(_row("b_noise (measure_b_noise)", name, truth, n, hits, miss, status, t0, B=B, rel_error=0.2))
        p = adam_p(model)
        truth = model.b_pre(p)
        p_t = [torch.tensor(p, dtype=torch.float64).unsqueeze(0)]  # P of nn.Linear(d, 1).weight
        for probe, b in (("vmap", 1), ("microbatch", 8)):
            s = Sampling(preconditioned(PROBES[probe], p_t), b, 256, 64, False, 0.2, 0.9, 5, 10 ** 7, 60.0)
            t0, hits, miss, n = time.perf_counter(), 0, {"low": 0, "high": 0}, 0
            status = {"ok": 0, "lower_bound": 0, "undetermined": 0}
            for r in range(reps):
                est, _, _ = measure_at(net, coverage.ls_loss, FreshLeastSquares(model, seed * 20_000 + r), s,
                                       np.zeros(1, dtype=int))
                ok, how = covers(est.b_simple_estimate, truth)
                hits, n = hits + ok, n + 1
                status[str(est.status)] += 1
                if how:
                    miss[how] += 1
                if time.perf_counter() - t0 > max_seconds:
                    break
            rows.append(_row(f"b_pre ({probe}_preconditioned)", name, truth, n, hits, miss, status, t0, b=b,
                             rel_error=0.2))
    return rows
