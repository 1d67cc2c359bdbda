"""AIC or AICc for the form of the noise-scale fit (power law or hyperbola): paired on the validation tasks.

    python scripts/aicc_study.py [--tasks all] [--seeds 3] [--out scripts/results/aicc_study.json]

The schedule fits B_n(L) as a power law (2 parameters) or a hyperbola (3) and keeps the one with the lower AIC
(bsprof/schedule/fit.py; AICc since this study). AICc, n·ln(RSS/n) + 2k + 2k(k+1)/(n − k − 1), adds the small-sample
term that the validation probes' 5–13 rows make large (at n = 6: +4 for the power law, +12 for the hyperbola). Which
criterion brings the headline nearer the sweeps? Each probe of ``scripts/validation_table.py`` (same spec, batch, tuned
lr, options and seed) is run once and its report read twice, with plain AIC and with AICc: the headline
(``report.summary_at(target)``), the form each chose for the followed noise scale, and the predicted steps at the swept
batches, against the sweep and its measured steps stored in scripts/results/validation_table*.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from critical_batch_evidence import TASKS  # noqa: E402
from validation_table import predicted_steps  # noqa: E402

import bsprof  # noqa: E402
from bsprof.schedule import ScheduleConfig  # noqa: E402

FIT = importlib.import_module("bsprof.schedule.fit")
P = importlib.import_module("bsprof.schedule.plan")
OUT = ROOT / "scripts" / "results"
STORED = ("validation_table.json", "validation_table_gru_char_adam.json", "validation_table_mnist_bn_res_mom_sgd.json")
COMMITTED = FIT._aic  # AICc since this study (twenty-fourth session)


def aic(rss: float, n: int, k: int) -> float:
    """Plain AIC, as the fit used it before (infinite for n ≤ k + 1 too)."""
    return math.inf if n <= k + 1 else n * math.log(max(rss, 1e-300) / n) + 2 * k


def aicc(rss: float, n: int, k: int) -> float:
    return aic(rss, n, k) + (2 * k * (k + 1) / (n - k - 1) if n > k + 1 else math.inf)


@contextlib.contextmanager
def criterion(name: str):
    FIT._aic = aicc if name == "aicc" else aic
    try:
        yield
    finally:
        FIT._aic = COMMITTED


def read(report, target, batches) -> dict:
    try:
        s = report.summary_at(target)
    except bsprof.BsprofError:
        s = report.summary
    h = s.critical_batch
    cfg = ScheduleConfig(target_loss=target, allow_extrapolation=True)
    rows, col = P.usable_rows(report, cfg)
    form = P.fit_rows(rows, cfg.confidence, cfg.form)[0].form
    try:
        steps = predicted_steps(report, target, batches)[1]
    except Exception:  # noqa: BLE001 - recorded as none
        steps = {}
    return dict(value=h.value, lo=h.lo, hi=h.hi, form=form, rows=len(rows), steps=steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(OUT / "aicc_study.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    stored = {}
    for f in STORED:
        stored.update(json.loads((OUT / f).read_text())["tasks"])
    names = list(stored) if args.tasks == "all" else args.tasks.split(",")
    out = {}
    for name in names:
        t, task = stored[name], TASKS[name]
        sweep, swept = t["sweep"]["critical"]["value"], {int(b): s for b, s in t["sweep_steps"].items() if s}
        probes = []
        for seed in range(args.seeds):
            spec = dataclasses.replace(task["spec"](), optimizer=task["opt"](t["probe_lr"]))
            t0 = time.time()
            report = bsprof.measure(spec, steps=task["probe_steps"], batch_size=task["batch"],
                                    measure_every=max(5, task["probe_steps"] // 12), rel_error=0.2, max_seconds=4.0,
                                    device="cpu", hessian=False, seed=seed)
            res = {}
            for c in ("aic", "aicc"):
                with criterion(c):
                    res[c] = read(report, t["target"], sorted(swept))
            probes.append(dict(seed=seed, wall=round(time.time() - t0, 1), **res))
            a, b = res["aic"], res["aicc"]
            print(f"{name} seed {seed}: AIC {a['value']:.1f} ({a['form']}, {a['rows']} rows) AICc {b['value']:.1f} "
                  f"({b['form']}) sweep {sweep:.1f}", flush=True)
        out[name] = dict(sweep=sweep, swept_steps=swept, probes=probes)
        Path(args.out).write_text(json.dumps(bsprof.results.json_clean(dict(tasks=out)), indent=1) + "\n")
    summarise(out)


def summarise(out: dict) -> None:
    for c in ("aic", "aicc"):
        ratios, within, steps_ok, steps_n, forms = [], 0, 0, 0, {}
        for t in out.values():
            vals = [p[c]["value"] for p in t["probes"] if p[c]["value"] and math.isfinite(p[c]["value"])]
            r = math.exp(float(np.mean(np.log(vals)))) / t["sweep"]
            ratios.append(r)
            within += 1 / 1.5 <= r <= 1.5
            for p in t["probes"]:
                forms[p[c]["form"]] = forms.get(p[c]["form"], 0) + 1
                for b, s in p[c]["steps"].items():
                    if int(b) in t["swept_steps"]:
                        steps_n += 1
                        steps_ok += abs(s / t["swept_steps"][int(b)] - 1) <= 0.25
        print(f"{c}: within 1.5× on {within} of {len(ratios)} tasks; mean |ln ratio| "
              f"{np.mean(np.abs(np.log(ratios))):.3f}; predicted steps within 25% at {steps_ok} of {steps_n} points; "
              f"forms {forms}")


if __name__ == "__main__":
    main()
