"""The driver of a validation-table row set up by hand (``validation_bag_adamw.py``, ``validation_dropout_mom.py``):
a global sweep of the task's spec (the ground truth: steps to the target per batch, the lr tuned on a grid around the
optimizer's rule, S = S_min(1 + B_crit/B) with a bootstrap interval; which batches' best lr sat at the grid's edge),
then probes at batch 32 at the sweep's tuned lr there, as ``validation_table.probe`` runs them: the headline to the
target, its ratio to the sweep, whether its interval contains it, the raw path averages without the optimizer
family's factor, and predicted against measured steps. Writes the row's JSON and each probe's report beside it."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from validation_table import CANDIDATES, P, path_b_crit, predicted_steps  # noqa: E402

import bsprof  # noqa: E402
import bsprof.sweep  # noqa: E402
from bsprof.results import json_clean, optimizer_name  # noqa: E402

RULES = {"sqrt": math.sqrt, "linear": lambda r: r}   # the lr's growth with the batch the grid is centred on


def arguments(description: str, target: float, lr0: float, lr_grid: str, out: str):
    """The row's command line (a script adds its own options): the sweep's target, batches, lr grid and seeds, the
    probes' seeds and steps, and the JSON's path under scripts/results/."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--trial", action="store_true", help="batch-16 training curves at a few lrs (to pick the target)")
    ap.add_argument("--target", type=float, default=target)
    ap.add_argument("--batches", default="16,32,64,128,256,512,1024")
    ap.add_argument("--lr0", type=float, default=lr0, help="the lr at the smallest batch (grid centre)")
    ap.add_argument("--lr-grid", default=lr_grid)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--probe-seeds", type=int, default=3)
    ap.add_argument("--probe-steps", type=int, default=0, help="0: 2.5 × the sweep's steps at B = 32")
    ap.add_argument("--reuse-sweep", action="store_true", help="keep the sweep already in the JSON")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / out))
    return ap


def run_row(spec, optimizer, args, out_path: Path, task: str, rule: str) -> dict:
    """The sweep (or the one in ``out_path`` with ``args.reuse_sweep``) and ``args.probe_seeds`` probes; ``args``:
    target, batches, lr0, lr_grid, seeds, max_steps, probe_seeds, probe_steps (0: 2.5 × the sweep's steps at
    B = 32), reuse_sweep. Returns the row's summary."""
    target = args.target
    batches = [int(b) for b in args.batches.split(",")]
    grid = [float(x) for x in args.lr_grid.split(",")]
    old = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if args.reuse_sweep and old.get("sweep"):
        sweep = old["sweep"]
    else:
        t0 = time.time()
        opt0 = dataclasses.replace(spec, optimizer=lambda p: optimizer(p, args.lr0))
        g = bsprof.sweep.global_(opt0, target, batches=batches, lr_grid=grid, seeds=args.seeds,
                                 max_steps=args.max_steps, eval_examples=0, holdout=False, device="cpu",
                                 n_boot=1000, seed=0, max_seconds=2400)
        wall = time.time() - t0
        d = g.to_dict()
        per_batch, edge = [], []
        for b in d["batches"]:
            # per seed: the best lr (fewest steps) of the grid; at its edge?
            row = dict(batch=b["batch"], best_lr=b["lr"], steps=b["steps"], reached=b.get("reached"),
                       best_multiplier=b["lr"] / (args.lr0 * RULES[rule](b["batch"] / batches[0])))
            m = row["best_multiplier"]
            row["at_edge"] = "bottom" if math.isclose(m, min(grid), rel_tol=1e-6) else (
                "top" if math.isclose(m, max(grid), rel_tol=1e-6) else None)
            if row["at_edge"]:
                edge.append(b["batch"])
            # per seed (the sweep's branches): the fastest multipliers, ties kept; a seed whose best is at an edge
            seeds_best = {}
            for sd in sorted({br["seed"] for br in d["branches"]}):
                mine = {br["lr_multiplier"]: br["steps_to_target"] for br in d["branches"]
                        if br["batch"] == b["batch"] and br["seed"] == sd and br["steps_to_target"] is not None}
                fast = min(mine.values()) if mine else None
                seeds_best[sd] = sorted(k for k, v in mine.items() if v == fast)
            row["per_seed_best_multipliers"] = seeds_best
            row["per_seed_steps"] = {sd: {br["lr_multiplier"]: br["steps_to_target"] for br in d["branches"]
                                          if br["batch"] == b["batch"] and br["seed"] == sd} for sd in seeds_best}
            row["a_seed_at_edge"] = any(min(grid) in v or max(grid) in v for v in seeds_best.values())
            per_batch.append(row)
            print(f"   B {b['batch']:5d}  lr {b['lr']:.3g} (×{m:.3g})  steps {b['steps']}", flush=True)
        c = d["critical"]
        print(f"   sweep B_crit {c['value']:.1f} [{c['lo']:.1f}, {c['hi']:.1f}]  ({wall:.0f} s)", flush=True)
        sweep = dict(target=target, batches=batches, lr0=args.lr0, lr_grid=grid, seeds=args.seeds,
                     max_steps=args.max_steps, critical=c, fit=d.get("fit"), per_batch=per_batch,
                     best_lr_at_grid_edge=bool(edge), edge_batches=edge, compute=d.get("compute"),
                     wall_seconds=round(wall, 1), notes=d.get("notes"), warnings=d.get("warnings"), raw=d)
        out_path.write_text(json.dumps(json_clean(dict(task=task, sweep=sweep)), indent=2) + "\n")

    c = sweep["critical"]
    measured = {int(r["batch"]): r["steps"] for r in sweep["per_batch"]}
    ref = next(r for r in sweep["per_batch"] if r["batch"] == 32)
    lr = ref["best_lr"]
    probes, summary = [], {}
    if args.probe_steps == 0:   # the table's usual probe length: ≈ 2.5 × the sweep's steps to the target at B = 32
        args.probe_steps = int(round(2.5 * ref["steps"] / 5) * 5)
    for seed in range(args.probe_seeds):
        spec_p = dataclasses.replace(spec, optimizer=lambda p: optimizer(p, lr))
        steps = args.probe_steps
        t0 = time.time()
        report = bsprof.measure(spec_p, steps=steps, batch_size=32, measure_every=max(5, steps // 12), rel_error=0.2,
                                max_seconds=4.0, device="cpu", hessian=False, seed=seed)
        wall = time.time() - t0
        try:
            s, note = report.summary_at(target), None
        except bsprof.BsprofError as e:
            s, note = report.summary, f"headline to the lowest measured loss: {e}"
        h = s.critical_batch
        ms = report.measurements
        opt_name = optimizer_name(report.config)
        p = dict(seed=seed, lr=lr, steps=steps, wall_seconds=round(wall, 1),
                 examples=int(sum(m.examples for m in ms)) + steps * 32, headline_note=note,
                 reached=min((m.loss for m in ms), default=math.nan) <= target,
                 headline=dict(value=h.value, lo=h.lo, hi=h.hi, quantity=s.critical_batch_quantity,
                               reason=s.critical_batch_reason),
                 ratio=h.value / c["value"], interval_contains_sweep=h.lo <= c["value"] <= h.hi,
                 candidates={k: path_b_crit(report, k, target) for k in CANDIDATES},
                 raw_candidates={k: path_b_crit(report, k, target) / P.calibration(opt_name, k) for k in CANDIDATES},
                 optimizer=opt_name, method=report.config.get("method"), diagnostics=report.diagnostics,
                 incomplete=report.incomplete,
                 rows=[dict(step=m.step, loss=m.loss, **{k: getattr(getattr(m, k, None), "value", None)
                                                         for k in CANDIDATES}) for m in ms])
        try:
            p["followed"], pred = predicted_steps(report, target, list(measured))
            p["predicted_steps"] = pred
            p["predicted_over_measured"] = {b: pred[b] / measured[b] if measured[b] else None for b in measured}
        except Exception as e:  # noqa: BLE001 - recorded
            p["prediction_error"] = f"{type(e).__name__}: {e}"
        report.to_json(out_path.parent / f"{out_path.stem}_probe{seed}.json")
        probes.append(p)
        print(f"   probe seed {seed}: headline {h.value:.1f} [{h.lo:.1f}, {h.hi:.1f}] ({s.critical_batch_quantity}) "
              f"ratio {p['ratio']:.2f}; raw " + ", ".join(f"{k} {v:.1f}" for k, v in p["raw_candidates"].items())
              + f"  ({wall:.0f} s)", flush=True)
        ratios = [q["ratio"] for q in probes]
        summary = dict(probe_steps=args.probe_steps,
                       geo_mean_ratio=math.exp(statistics.fmean(math.log(r) for r in ratios)),
                       ratios=ratios, all_intervals_contain=all(q["interval_contains_sweep"] for q in probes),
                       compute_ratio_examples=statistics.fmean(q["examples"] for q in probes)
                       / ((sweep.get("compute") or {}).get("train_examples") or math.nan),
                       compute_ratio_seconds=statistics.fmean(q["wall_seconds"] for q in probes)
                       / ((sweep.get("compute") or {}).get("seconds") or math.nan))
        out_path.write_text(json.dumps(json_clean(dict(task=task, sweep=sweep, probes=probes,
                                                       summary=summary)), indent=2) + "\n")
    print(json.dumps(json_clean(summary), indent=1))
    return summary
