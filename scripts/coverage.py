"""Coverage study: do bsprof's nominal 90% intervals on B_simple cover the truth 85–95% of the time?

    python scripts/coverage.py [--reps 500] [--seq-reps 100] [--quick]

Ground truth from the closed forms of science.md §5 (bsprof.closed_forms): V1 (1-D, infinite and finite
population), V2 least squares with isotropic and anisotropic Gaussian inputs, B_simple from 1 to 10⁴. Exact
per-example gradients are simulated in numpy and turned into ``Draw`` objects, then combined by the tool's own
``bsprof.estimators.noise_scale``. Each cell: per-example (b = 1) or micro-batch (b = 8) pairs, big batch B at
B_simple/8, B_simple or 8·B_simple (a power of two in [16, 4096]), 5 or 20 draws. A second part runs the real
``sampling.measure_at`` loop (adaptive B, the stopping rule) on fresh least-squares data, to check that
sequential stopping keeps the coverage.

An interval covers when lo ≤ truth ≤ hi (a lower bound has hi = ∞; an undetermined result is the whole half-line
and covers). Prints a table and writes scripts/results/coverage.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bsprof.stats.estimators import noise_scale  # noqa: E402
from bsprof.validation.closed_forms import FreshLeastSquares, LeastSquares, OneD, simulate  # noqa: E402


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
    if est.status == "undetermined":
        return True, ""
    if est.b_simple_lo > truth:
        return False, "low"  # the interval lies above the truth
    if est.b_simple_hi < truth:
        return False, "high"
    return True, ""


def cell(name: str, model, b: int, B: int, m: int, reps: int, rng, confidence: float = 0.9) -> dict:
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
def sequential_study(reps: int, seed: int = 1) -> list[dict]:
    """measure_at with its stopping rule (min 5 draws, adaptive B ≈ 2·B_simple) on fresh data."""
    import torch
    from torch import nn

    from bsprof.engine.sampling import Sampling, measure_at
    from bsprof.probes import PROBES

    torch.set_num_threads(1)
    rows = []
    cases = [("V2 iso d=20 |Δ|²=1", LeastSquares.isotropic(20, 1.0, 0.25)),
             ("V2 aniso d=20", LeastSquares(np.linspace(0.1, 2.0, 20), np.linspace(-1, 1, 20) / 2.64, 0.25)),
             ("V2 iso d=20 |Δ|²=0.02", LeastSquares.isotropic(20, 0.02, 0.25))]
    for name, model in cases:
        for probe, b, rel in (("vmap", 1, 0.2), ("microbatch", 8, 0.2), ("microbatch", 8, 0.1)):
            net = nn.Linear(len(model.lam), 1, bias=False).double()
            with torch.no_grad():
                net.weight.copy_(torch.tensor(model.delta).unsqueeze(0))  # w* = 0, so w = Δ

            def loss(mod, batch):
                x, y = batch
                return 0.5 * (mod(x).squeeze(-1) - y).square()

            s = Sampling(PROBES[probe], b, 256, 64, False, rel, 0.9, 5, 10 ** 7, 60.0)
            t0, hits, draws_used, miss = time.perf_counter(), 0, [], {"low": 0, "high": 0}
            for r in range(reps):
                est, draws, stopped = measure_at(net, loss, FreshLeastSquares(model, seed * 10_000 + r), s,
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
    half = k * math.sqrt(p * (1 - p) / reps)
    return p - half, p + half


def print_table(rows: list[dict], seq: list[dict]) -> None:
    print(f"{'model':26} {'B_simple':>9} {'b':>2} {'B':>5} {'m':>3} {'cover':>6} {'lo>T':>5} {'hi<T':>5} "
          f"{'ok':>5} {'lower':>5}")
    for r in rows:
        print(f"{r['model']:26} {r['truth']:9.1f} {r['b']:2d} {r['B']:5d} {r['draws']:3d} {r['coverage']:6.3f} "
              f"{r['miss_lo_above_truth']:5.3f} {r['miss_hi_below_truth']:5.3f} {r['frac_ok']:5.2f} "
              f"{r['frac_lower_bound']:5.2f}")
    if seq:
        print("\nsequential (sampling.measure_at, stopping rule, adaptive B):")
        print(f"{'model':26} {'B_simple':>9} {'probe':>10} {'rel':>4} {'cover':>6} {'lo>T':>5} {'hi<T':>5} "
              f"{'draws':>6}")
        for r in seq:
            print(f"{r['model']:26} {r['truth']:9.1f} {r['probe']:>10} {r['rel_error']:4.2f} {r['coverage']:6.3f} "
                  f"{r['miss_lo_above_truth']:5.3f} {r['miss_hi_below_truth']:5.3f} {r['mean_draws']:6.1f}")
    cov = np.array([r["coverage"] for r in rows + seq])
    print(f"\ncoverage over {len(cov)} cells: min {cov.min():.3f}, mean {cov.mean():.3f}, max {cov.max():.3f}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--seq-reps", type=int, default=100)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "coverage.json"))
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = fixed_study(a.reps, quick=a.quick)
    seq = sequential_study(a.seq_reps) if a.seq_reps else []
    print_table(rows, seq)
    result = {"nominal": 0.9, "band_3sigma": binomial_band(a.reps), "fixed": rows, "sequential": seq,
              "seconds": round(time.perf_counter() - t0, 1)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
