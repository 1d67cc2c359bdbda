"""Coverage study of B_noise and B_pre: do the nominal 90% intervals cover the closed-form truth?

    nice python scripts/coverage_noise_pre.py [--reps 300] [--loop-reps 40] [--quick]

Truths from V2 least squares (bsprof.validation.closed_forms; docs/science.md §5): B_noise = tr(HΣ)/(GᵀHG), and
B_pre = tr(PΣ)/(GᵀPG) with Adam's fixed-point preconditioner P = diag(1/√E[g²]). Part 1 simulates exact draws in
numpy and combines them with the tool's own code (``probes.hessian.combine``; ``noise_scale`` on √P-scaled
gradients): cells of (model, big batch B at truth/8, truth, 8·truth, 5 or 20 draws). Part 2 runs the real torch
code on fresh data: ``hessian.measure_b_noise`` (Hessian-vector products, stopping rule) and ``measure_at`` with the
preconditioned vmap and micro-batch probes. Each coverage comes with its binomial standard error. The study is
``bsprof.validation.coverage_noise_pre``; this script prints a table and writes
scripts/results/coverage_noise_pre.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bsprof.validation.coverage_noise_pre import loop_study, simulated_study  # noqa: E402


def print_table(rows: list[dict]) -> None:
    print(f"{'quantity':34} {'model':24} {'truth':>7} {'b':>2} {'B':>5} {'m':>3} {'reps':>5} {'cover':>6} {'±se':>6} "
          f"{'lo>T':>5} {'hi<T':>5} {'ok':>5}")
    for r in rows:
        print(f"{r['quantity']:34} {r['model']:24} {r['truth']:7.1f} {r.get('b', ''):>2} {r.get('B', ''):>5} "
              f"{r.get('draws', ''):>3} {r['reps']:5d} {r['coverage']:6.3f} {r['se']:6.3f} "
              f"{r['miss_lo_above_truth']:5.3f} {r['miss_hi_below_truth']:5.3f} {r['frac_ok']:5.2f}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--loop-reps", type=int, default=40)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "coverage_noise_pre.json"))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sim = simulated_study(a.reps, quick=a.quick)
    loop = loop_study(a.loop_reps) if a.loop_reps else []
    print_table(sim + loop)
    summary = {}
    for kind in ("b_noise", "b_pre"):
        cells = [r for r in sim if r["quantity"] == kind]
        cov = np.array([r["coverage"] for r in cells])
        n = sum(r["reps"] for r in cells)
        pooled = float(np.average(cov, weights=[r["reps"] for r in cells]))
        summary[kind] = {"cells": len(cells), "min": float(cov.min()), "max": float(cov.max()), "pooled": pooled,
                         "pooled_se": float(np.sqrt(pooled * (1 - pooled) / n))}
        print(f"{kind}: {len(cells)} simulated cells, coverage min {cov.min():.3f}, max {cov.max():.3f}, pooled "
              f"{pooled:.3f} ± {summary[kind]['pooled_se']:.3f} (se)")
    result = {"nominal": 0.9, "simulated": sim, "loop": loop, "summary": summary,
              "seconds": round(time.perf_counter() - t0, 1)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
