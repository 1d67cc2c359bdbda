"""Does bsprof's estimate predict the empirical critical batch? Digits MLP, plain SGD, on 2 CPU cores.

    python scripts/validate_critical_batch.py [--seeds 3] [--target 0.1]

1. ``bsprof.measure``: B_simple along an SGD run at batch 32 (lr 0.8, the lr tuned for 32 in
   scripts/steps_to_target.py) until past the target loss.
2. ``bsprof.sweep.global_``: steps to the full-dataset training loss ``--target`` at B = 16 … 512 with a 3-point lr
   grid per batch (lr₀ = 0.5 at B = 16 × {0.5, 1, 2}, scaled by the linear rule saturating at the B_simple measured
   at initialisation), fitted by S = S_min(1 + B_crit/B), bootstrap over seeds.
3. ``bsprof.sweep.local``: equal examples per branch, 1% tolerance.
Writes scripts/results/validate_critical_batch.json and prints the comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bsprof  # noqa: E402
import bsprof.sweep  # noqa: E402
from bsprof.engine.spec import load_spec  # noqa: E402


def sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--measure-steps", type=int, default=250)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    spec = load_spec(ROOT / "configs" / "digits_mlp.py")

    print("1. bsprof measure: B_simple along a batch-32 SGD run (lr 0.8) ...", flush=True)
    report = bsprof.measure(dataclasses.replace(spec, optimizer=sgd(0.8)), steps=args.measure_steps, batch_size=32,
                            measure_every=25, rel_error=0.15, max_seconds=8.0, device="cpu")
    rows = [(m.step, m.loss, m.b_simple.value, m.b_simple.lo, m.b_simple.hi) for m in report.measurements]
    for r in rows:
        print(f"   step {r[0]:4d}  loss {r[1]:.3f}  B_simple {r[2]:7.1f} [{r[3]:.1f}, {r[4]:.1f}]")
    b_init = rows[0][2]
    first = next((i for i, r in enumerate(rows) if r[1] < args.target), len(rows))
    path = rows[:first]                                   # the measurements before the loss first reached the target
    b_path = sum(r[2] for r in path) / len(path)
    meas_examples = sum(m.examples for m in report.measurements)
    meas_seconds = sum(m.seconds for m in report.measurements)

    print(f"2. global sweep to training loss {args.target} (B = 16..512, lr grid ×0.5,1,2, {args.seeds} seeds) ...",
          flush=True)
    common = dict(lr_grid=[0.5, 1, 2], b_noise=b_init, eval_examples=0, holdout=False, device="cpu", seeds=args.seeds)
    g = bsprof.sweep.global_(dataclasses.replace(spec, optimizer=sgd(0.5)), args.target,
                             batches=[16, 32, 64, 128, 256, 512], max_steps=1500, n_boot=1000, **common)
    for s in g.batches:
        print(f"   B {s.batch:4d}  lr {s.lr:.3g}  steps {s.steps:6.0f}  (reached {s.reached}/{args.seeds})")
    f = g.fit
    print(f"   B_crit {f.b_crit.value:.1f} [{f.b_crit.lo:.1f}, {f.b_crit.hi:.1f}]  S_min {f.s_min.value:.1f}  "
          f"E_min {f.e_min.value:.0f}   ({g.compute.train_examples:,} training examples, {g.compute.seconds:.0f} s)")

    print("3. local sweep (equal examples per branch, tolerance 1%) ...", flush=True)
    lo = bsprof.sweep.local(dataclasses.replace(spec, optimizer=sgd(0.5)), 16, doublings=5, examples=16 * 300,
                            tolerance=0.01, **common)
    for s in lo.batches:
        print(f"   B {s.batch:4d}  lr {s.lr:.3g}  steps {s.steps:5.0f}  loss {s.loss:.4f} ± {s.loss_se:.4f}  "
              f"{'pass' if s.passed else 'fail'}")
    print(f"   local critical batch {lo.critical.lo:.0f} (bracket [{lo.critical.lo:.0f}, {lo.critical.hi:.0f}]), "
          f"per seed {list(lo.critical_by_seed)}")

    out = {
        "task": "configs/digits_mlp.py (MLP 64-128-10, sklearn digits 1797), plain SGD, CPU",
        "target_loss": args.target, "seeds": args.seeds,
        "measure": {"rows": [dict(zip(("step", "loss", "b_simple", "lo", "hi"), r)) for r in rows],
                    "b_simple_init": b_init, "b_simple_mean_to_target": b_path,
                    "b_simple_summary": report.summary.b_simple.to_dict(), "examples": meas_examples,
                    "seconds": meas_seconds},
        "global": g.to_dict(), "local": lo.to_dict(),
        "ratios": {"b_crit_over_b_simple_init": f.b_crit.value / b_init,
                   "b_crit_over_b_simple_path_mean": f.b_crit.value / b_path,
                   "local_over_b_crit": lo.critical.lo / f.b_crit.value},
        "seconds": time.time() - t0,
    }
    path_out = ROOT / "scripts" / "results" / "validate_critical_batch.json"
    path_out.parent.mkdir(parents=True, exist_ok=True)
    path_out.write_text(json.dumps(bsprof.results.json_clean(out), indent=2) + "\n")
    print(f"\nB_crit (global sweep) {f.b_crit.value:.1f} [{f.b_crit.lo:.1f}, {f.b_crit.hi:.1f}] vs B_simple at init "
          f"{b_init:.1f} (ratio {f.b_crit.value / b_init:.2f}) and averaged to the target {b_path:.1f} (ratio "
          f"{f.b_crit.value / b_path:.2f}); local critical batch {lo.critical.lo:.0f}")
    print(f"cost: measure {meas_examples:,} examples / {meas_seconds:.1f} s; global sweep "
          f"{g.compute.train_examples:,} examples / {g.compute.seconds:.0f} s; local sweep "
          f"{lo.compute.train_examples:,} examples / {lo.compute.seconds:.0f} s")
    print(f"wrote {path_out.relative_to(ROOT)} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
