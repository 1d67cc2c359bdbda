"""False alarms of the 1/B regression's goodness-of-fit test under its own model (``stats.regression``).

    python scripts/regression_calibration.py [--reps 4000] [--json scripts/results/regression_calibration.json]

Draws of B = 64 i.i.d. per-example gradients g_i = G + ε_i in d dimensions (ε Gaussian, or Student t with 3 degrees
of freedom: heavy tails), |mean|² at the nested sizes b = 8, 2b and B (the partial sums a draw records), m draws a
measurement, and the test as ``stats.regression.fit`` computes it (Hotelling's T² on the K − 2 contrasts, F
distribution). Under the model the p-value is uniform: the fraction below α should be α. Prints that fraction at
α = 1e-3 (``FIT_ALPHA``), 0.01 and 0.05 per (d, tails, m).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import stats as st


def p_value(y: np.ndarray, sizes) -> float:
    m, K = y.shape
    X = np.column_stack([np.ones(K), 1 / np.asarray(sizes, float)])
    ybar, q = y.mean(0), K - 2
    W = np.linalg.inv(np.cov(y, rowvar=False, ddof=1) / m)
    beta = np.linalg.solve(X.T @ W @ X, X.T @ W @ ybar)
    r = ybar - X @ beta
    return float(st.f.sf((m - q) / (q * (m - 1)) * float(r @ W @ r), q, m - q))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=4000)
    ap.add_argument("--json", default="scripts/results/regression_calibration.json")
    args = ap.parse_args()
    rng, b, B, rows = np.random.default_rng(0), 8, 64, []
    sizes = [b, 2 * b, B]
    for d in (2, 50):
        for heavy in (False, True):
            for m in (5, 8, 20):
                ps = []
                for _ in range(args.reps):
                    eps = rng.standard_t(3, size=(m, B, d)) if heavy else rng.normal(size=(m, B, d))
                    g = eps + 0.3
                    ps.append(p_value(np.stack([(g[:, :s].mean(1) ** 2).sum(-1) for s in sizes], 1), sizes))
                ps = np.array(ps)
                row = dict(d=d, tails="t3" if heavy else "gaussian", draws=m,
                           **{f"below_{a:g}": float(np.mean(ps < a)) for a in (1e-3, 0.01, 0.05)})
                rows.append(row)
                print(row, flush=True)
    with open(args.json, "w") as f:
        json.dump(dict(reps=args.reps, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
