"""Does B_noise's sequential stopping rule keep its coverage? measure_b_noise with the stopping rule (rel 0.2,
min 5 draws) against fixed numbers of draws (5, 20), on fresh V2 least-squares data (closed-form truth).

    nice python scripts/coverage_b_noise_stopping.py [REPS=150]

Follow-up of scripts/coverage_noise_pre.py, whose 30-repetition loop cells for measure_b_noise read 0.77 and 0.73
(±0.08): the stopping rule, or chance? Writes scripts/results/coverage_b_noise_stopping.json.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bsprof.validation import coverage, coverage_noise_pre  # noqa: E402
from bsprof.validation.closed_forms import FreshLeastSquares  # noqa: E402

MODES = {"stop_rel0.2": (0.2, 5), "fixed_m5": (1e-12, 5), "fixed_m20": (1e-12, 20)}  # (rel_error, draws)


def main(reps: int) -> dict:
    import torch

    from bsprof.probes.hessian import measure_b_noise

    torch.set_num_threads(1)
    out = {}
    for name in ("V2 iso d=20 |Δ|²=1", "V2 aniso d=20"):
        model = coverage_noise_pre.models()[name]
        net, truth = coverage.net_at(model), model.b_noise
        B = 4 * 2 ** round(math.log2(max(2 * truth / 4, 4)))
        for mode, (rel, m) in MODES.items():
            hits, draws, t0 = 0, [], time.time()
            for r in range(reps):
                cap = 10 ** 7 if mode.startswith("stop") else 2 * B * m  # fixed: the budget stops it at m draws
                e = measure_b_noise(net, coverage.ls_loss, FreshLeastSquares(model, 7_000 + r), B, rel_error=rel,
                                    min_draws=m, max_examples=cap)
                hits += coverage_noise_pre.covers(e.b_noise, truth)[0]
                draws.append(e.n_draws)
            cov = hits / reps
            out[f"{name} {mode}"] = {"B": B, "reps": reps, "coverage": cov, "se": math.sqrt(cov * (1 - cov) / reps),
                                     "mean_draws": float(np.mean(draws)), "seconds": round(time.time() - t0, 1)}
            print(name, mode, out[f"{name} {mode}"], flush=True)
    path = Path(__file__).parent / "results" / "coverage_b_noise_stopping.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150)
