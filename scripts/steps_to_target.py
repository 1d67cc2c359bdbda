"""Steps to a target training loss per constant batch size on sklearn digits, against the McCandlish model.

    python scripts/steps_to_target.py [--target 0.1] [--seeds 2]

MLP 64 → 128 → 10 (configs/digits_mlp.py), plain SGD, the learning rate tuned per batch over a small grid. For each
batch B: the fewest steps (best lr, median over seeds) until the full-dataset training loss is ≤ target. Then
  1. fit S(B) = S_min(1 + B_crit/B) to those steps (McCandlish et al. 2018, eq. 2.11);
  2. measure B_simple along a training run (`bsprof.loop.measure`, batch 32 at its tuned lr) and let the planner predict
     S(B) = ∫(1 + B_n/B) ds_min to the same target, and B_crit = E_min/S_min.
Prints a table; writes scripts/results/steps_to_target.json. About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "configs"))

import digits_mlp  # noqa: E402

from bsprof.config import MeasureConfig, resolve  # noqa: E402
from bsprof.schedule import ScheduleConfig, plan  # noqa: E402
from bsprof.validation.nqm import fit_critical_batch  # noqa: E402

BATCHES = [8, 16, 32, 64, 128, 256, 512]
LRS = [0.1, 0.2, 0.4, 0.8, 1.2, 1.6]


def steps_to(target: float, batch: int, lr: float, seed: int, max_steps: int) -> float:
    """Steps of SGD at (batch, lr) until the full training loss ≤ target (∞ if not within max_steps or diverged)."""
    x, y = digits_mlp.digits_tensors()
    torch.manual_seed(seed)
    model = digits_mlp.model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    every = max(1, min(10, 128 // batch))  # loss checks: ≈1–2% resolution in steps at every batch
    for step in range(1, max_steps + 1):
        idx = torch.randperm(len(x), generator=gen)[:batch]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if step % every == 0:
            with torch.no_grad():
                full = float(F.cross_entropy(model(x), y))
            if not math.isfinite(full) or full > 50:
                return math.inf
            if full <= target:
                return float(step)
    return math.inf


def sweep(target: float, seeds: int, max_steps: int) -> list[dict]:
    rows = []
    for b in BATCHES:
        best = (math.inf, None)
        for lr in LRS:
            runs = sorted(steps_to(target, b, lr, s, max_steps if best[0] == math.inf else int(best[0] * 1.5) + 2)
                          for s in range(seeds))
            med = runs[len(runs) // 2] if seeds % 2 else 0.5 * (runs[seeds // 2 - 1] + runs[seeds // 2])
            if med < best[0]:
                best = (med, lr)
        rows.append({"batch_size": b, "steps": best[0], "lr": best[1]})
        print(f"  B={b:4d}: {best[0]:7.0f} steps (lr {best[1]})", flush=True)
    return rows


def planner(target: float, measure_steps: int, lr: float) -> tuple[dict, object]:
    """Measure along a batch-32 run at the lr tuned for batch 32 (the planner assumes a near-optimal lr)."""
    import dataclasses

    from bsprof.engine.loop import measure
    from bsprof.engine.spec import load_spec

    spec = dataclasses.replace(load_spec(ROOT / "configs" / "digits_mlp.py"),
                               optimizer=lambda params: torch.optim.SGD(params, lr=lr))
    cfg = resolve(MeasureConfig, None, {"steps": measure_steps, "batch_size": 32, "lr": lr,
                                        "measure_every": max(1, measure_steps // 8), "max_seconds": 8.0,
                                        "rel_error": 0.15, "device": "cpu"})
    report = measure(spec, cfg)
    sched = plan(report, ScheduleConfig(target_loss=target, allow_extrapolation=True, max_batch=4096))
    return {"measurements": [m.to_row() for m in report.measurements]}, sched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--measure-steps", type=int, default=0, help="0: 1.3 × the steps batch 32 needed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    print(f"steps to training loss {args.target} on digits (lr tuned over {LRS}):")
    rows = sweep(args.target, args.seeds, args.max_steps)
    ok = [r for r in rows if math.isfinite(r["steps"])]
    s_min, b_crit = fit_critical_batch([r["batch_size"] for r in ok], [r["steps"] for r in ok])
    print("measuring B_simple along a batch-32 run (bsprof.loop.measure) ...", flush=True)
    at32 = next(r for r in rows if r["batch_size"] == 32)
    report, sched = planner(args.target, args.measure_steps or int(1.3 * at32["steps"]), at32["lr"])
    p = sched.prediction
    pred = {b["batch_size"]: b["steps"] for b in sched.baselines}
    print(f"\n{'B':>6} {'measured S':>11} {'fit S_min(1+Bc/B)':>18} {'planner S(B)':>13}")
    for r in rows:
        fit_s = s_min * (1 + b_crit / r["batch_size"])
        print(f"{r['batch_size']:>6} {r['steps']:>11.0f} {fit_s:>18.0f} {pred.get(r['batch_size'], math.nan):>13.0f}")
    b_simple = [(m["step"], m["loss"], m["b_simple"]) for m in report["measurements"] if m.get("status") == "ok"]
    print(f"\nfitted from the sweep: S_min = {s_min:.0f} steps, B_crit = {b_crit:.0f}")
    print(f"planner (measured B_simple): S_min = {p['s_min']:.0f}, B_crit = {p['b_crit']:.0f}")
    print("measured B_simple (step, loss, B_simple): " + ", ".join(f"({s}, {l:.3f}, {b:.0f})" for s, l, b in b_simple))
    out = ROOT / "scripts" / "results" / "steps_to_target.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "target_loss": args.target, "lrs": LRS, "seeds": args.seeds,
        "sweep": [dict(r, steps=r["steps"] if math.isfinite(r["steps"]) else None) for r in rows],
        "fit": {"s_min": s_min, "b_crit": b_crit},
        "planner": {"s_min": p["s_min"], "b_crit": p["b_crit"], "steps_by_batch": pred,
                    "stages": [s._asdict() for s in sched.stages]},
        "b_simple_measured": b_simple, "seconds": time.time() - t0,
    }, indent=2, default=str) + "\n")
    print(f"wrote {out.relative_to(ROOT)} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
