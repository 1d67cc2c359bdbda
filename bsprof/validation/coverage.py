"""Coverage of the nominal intervals on B_simple against closed-form truths (the study behind scripts/coverage.py).

Ground truth from the closed forms of docs/science.md §5 (``bsprof.validation.closed_forms``): V1 (1-D, infinite and
finite population), V2 least squares with isotropic and anisotropic Gaussian inputs, B_simple from 1 to 10⁴.

- ``fixed_study``: exact per-example gradients simulated in numpy, turned into ``Draw`` objects and combined by the
  tool's own ``noise_scale``; cells of (model, b = 1 or 8, B from B_simple/8 to 8·B_simple, 5 or 20 draws).
- ``sequential_study``: the real ``measure_at`` loop (adaptive B, the stopping rule) on fresh least-squares data,
  to check that sequential stopping keeps the coverage.

An interval covers when lo ≤ truth ≤ hi (a lower bound has hi = ∞; an undetermined result is the whole half-line
and covers). A cell of ``reps`` repetitions is within sampling error of 90% when it lies in ``binomial_band``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from bsprof.results import Status
from bsprof.stats.estimators import noise_scale
from bsprof.validation.closed_forms import FreshLeastSquares, LeastSquares, OneD, simulate


def models(rng: np.random.Generator) -> dict:
    y = rng.standard_normal(2000)
    y = (y - y.mean()) / y.std()
    lam = np.linspace(0.1, 2.0, 20)
    aniso = rng.standard_normal(20)
    return {
        "V1 w=1": OneD(1.0),
        "V1 w=0.1": OneD(0.1),
        "V1 w=0.01": OneD(0.01),
        "V1 finite n=2000 w=0.1": OneD(0.1, y),
        "V2 iso d=20 |Δ|²=1": LeastSquares.isotropic(20, 1.0, 0.25),
        "V2 iso d=20 |Δ|²=0.02": LeastSquares.isotropic(20, 0.02, 0.25),
        "V2 iso d=20 |Δ|²=5e-4": LeastSquares.isotropic(20, 5e-4, 0.25),
        "V2 aniso d=20": LeastSquares(lam, aniso / np.linalg.norm(aniso), 0.25),
        "V2 aniso d=20 small Δ": LeastSquares(lam, 0.03 * aniso / np.linalg.norm(aniso), 0.25),
    }


def covers(est, truth: float) -> tuple[bool, str]:
    """(covered, how it missed)"""
    if est.status == Status.UNDETERMINED:
        return True, ""
    if est.b_simple_lo > truth:
        return False, "low"  # the interval lies above the truth
    if est.b_simple_hi < truth:
        return False, "high"
    return True, ""


def cell(name: str, model, b: int, B: int, m: int, reps: int, rng, confidence: float = 0.9) -> dict:
    """Coverage of ``reps`` simulated measurements of ``m`` draws (b, B) each."""
    t0 = time.perf_counter()
    truth = model.b_simple
    hits, miss, status = 0, {"low": 0, "high": 0}, {"ok": 0, "lower_bound": 0, "undetermined": 0}
    batch = max(1, min(reps, int(4e7 // (B * m * getattr(model, "lam", [1]).__len__()))))
    done = 0
    while done < reps:
        k = min(batch, reps - done)
        for draws in simulate(model, rng, k, m, b, B):
            est = noise_scale(draws, confidence)
            ok, how = covers(est, truth)
            hits += ok
            status[est.status] += 1
            if how:
                miss[how] += 1
        done += k
    return {"model": name, "truth": truth, "b": b, "B": B, "draws": m, "reps": reps, "coverage": hits / reps,
            "miss_lo_above_truth": miss["low"] / reps, "miss_hi_below_truth": miss["high"] / reps,
            "frac_ok": status["ok"] / reps, "frac_lower_bound": status["lower_bound"] / reps,
            "seconds": round(time.perf_counter() - t0, 2)}


def batch_sizes(truth: float, b: int) -> list[int]:
    out = []
    for f in (1 / 8, 1, 8):
        B = int(2 ** round(math.log2(max(truth * f, 1))))
        B = min(max(B, 16, 2 * b), 4096)
        if B not in out:
            out.append(B)
    return out


def fixed_study(reps: int, seed: int = 0, quick: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for name, model in models(rng).items():
        if quick and "small" in name:
            continue
        for b in (1, 8):
            for B in batch_sizes(model.b_simple, b):
                for m in ((5,) if quick else (5, 20)):
                    rows.append(cell(name, model, b, B, m, reps, rng))
    return rows


# -- the real sampling loop -------------------------------------------------------------------------------------
def net_at(model: LeastSquares):
    """nn.Linear at w = Δ (w* = 0), float64: the least-squares model at its closed-form point."""
    import torch
    from torch import nn

    net = nn.Linear(len(model.lam), 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor(np.asarray(model.delta, float)).unsqueeze(0))
    return net


def ls_loss(model, batch):
    """Per-example ½(xᵀw − y)²."""
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y).square()


def sequential_study(reps: int, seed: int = 1) -> list[dict]:
    """measure_at with its stopping rule (min 5 draws, adaptive B ≈ 2·B_simple) on fresh data."""
    from bsprof.engine.sampling import Sampling, measure_at
    from bsprof.probes import PROBES

    rows = []
    cases = [("V2 iso d=20 |Δ|²=1", LeastSquares.isotropic(20, 1.0, 0.25)),
             ("V2 aniso d=20", LeastSquares(np.linspace(0.1, 2.0, 20), np.linspace(-1, 1, 20) / 2.64, 0.25)),
             ("V2 iso d=20 |Δ|²=0.02", LeastSquares.isotropic(20, 0.02, 0.25))]
    for name, model in cases:
        for probe, b, rel in (("vmap", 1, 0.2), ("microbatch", 8, 0.2), ("microbatch", 8, 0.1)):
            net = net_at(model)
            s = Sampling(PROBES[probe], b, 256, 64, False, rel, 0.9, 5, 10 ** 7, 60.0)
            t0, hits, draws_used, miss = time.perf_counter(), 0, [], {"low": 0, "high": 0}
            for r in range(reps):
                est, draws, stopped = measure_at(net, ls_loss, FreshLeastSquares(model, seed * 10_000 + r), s,
                                                 np.zeros(1, dtype=int))
                ok, how = covers(est, model.b_simple)
                hits += ok
                if how:
                    miss[how] += 1
                draws_used.append(len(draws))
            rows.append({"model": name, "truth": model.b_simple, "probe": probe, "b": b, "rel_error": rel,
                         "reps": reps, "coverage": hits / reps, "miss_lo_above_truth": miss["low"] / reps,
                         "miss_hi_below_truth": miss["high"] / reps, "mean_draws": float(np.mean(draws_used)),
                         "seconds": round(time.perf_counter() - t0, 2)})
    return rows


def binomial_band(reps: int, p: float = 0.9, k: float = 3.0) -> tuple[float, float]:
    """p ± k binomial standard deviations of a coverage measured over ``reps`` repetitions."""
    half = k * math.sqrt(p * (1 - p) / reps)
    return p - half, p + half
