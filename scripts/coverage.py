"""Coverage study: do bsprof's nominal 90% intervals on B_simple cover the truth 85–95% of the time?

    python scripts/coverage.py [--reps 500] [--seq-reps 100] [--quick]

Ground truth from the closed forms of docs/science.md §5 (bsprof.validation.closed_forms): V1 (1-D, infinite and finite
population), V2 least squares with isotropic and anisotropic Gaussian inputs, B_simple from 1 to 10⁴. Exact
per-example gradients are simulated in numpy and turned into ``Draw`` objects, then combined by the tool's own
``bsprof.stats.estimators.noise_scale``. Each cell: per-example (b = 1) or micro-batch (b = 8) pairs, big batch B at
B_simple/8, B_simple or 8·B_simple (a power of two in [16, 4096]), 5 or 20 draws. A second part runs the real
``sampling.measure_at`` loop (adaptive B, the stopping rule) on fresh least-squares data, to check that
sequential stopping keeps the coverage.

An interval covers when lo ≤ truth ≤ hi (a lower bound has hi = ∞; an undetermined result is the whole half-line
and covers). The study is ``bsprof.validation.coverage``; this script runs it, prints a table and writes
scripts/results/coverage.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bsprof.validation.coverage import binomial_band, fixed_study, sequential_study  # noqa: E402


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
    if a.seq_reps:
        import torch

        torch.set_num_threads(1)
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
