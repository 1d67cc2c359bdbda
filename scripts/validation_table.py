"""The validation table of docs/validation.md: bsprof's headline critical batch against global sweeps, per task.

    python scripts/validation_table.py [--tasks digits_sgd,mnist_cnn_sgd,digits_adam,shakespeare_adam] [--seeds 2]

Ground truth per task: the global sweep of scripts/critical_batch_evidence.py (steps to a target training loss per
batch with the lr tuned on a grid, S = S_min(1 + B_crit/B), bootstrap interval), read from its JSON
(``critical_batch_evidence.json``, ``critical_batch_shakespeare.json``; digits/SGD from validate_critical_batch.json).

Estimate per task and probe seed: ``bsprof.measure`` at the probe batch (32) with the sweep's tuned lr at that
batch, default options except rel_error 0.2 and no Hessian, then
  headline   ``report.summary_at(target).critical_batch`` (value, interval, quantity): what `bsprof report -t`
             prints, the path average of the noise scale the schedule follows (bsprof/schedule/headline.py),
  candidates the path average of each noise scale the report holds (fixed-weight B_simple, the training-window
             B_simple, B_pre), for the record,
  steps      predicted steps to the target at each swept batch from step 0 (the schedule's lead-in included),
             ``predict.constant_batch`` on the schedule's own
             path (the probe ran at the tuned lr, so the prediction is "at the sweep's tuned learning rates"),
             against the sweep's measured steps (median over its seeds, best lr of its grid),
  compute    examples (training + measurement) and seconds of the probe against the sweep's.
Writes scripts/results/validation_table.json and .md (the table in docs/validation.md is the .md's first table).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from critical_batch_evidence import TASKS  # noqa: E402

import bsprof  # noqa: E402
from bsprof.results import optimizer_name  # noqa: E402
from bsprof.schedule import ScheduleConfig, predict  # noqa: E402

P = importlib.import_module("bsprof.schedule.plan")

OUT = ROOT / "scripts" / "results"
SOURCES = {"digits_sgd": "critical_batch_evidence.json", "mnist_cnn_sgd": "critical_batch_evidence.json",
           "digits_adam": "critical_batch_evidence.json", "shakespeare_adam": "critical_batch_shakespeare.json",
           "mnist_cnn_adam": "critical_batch_mnist_adam.json", "mnist_mlp_adam": "critical_batch_mnist_mlp_adam.json",
           "digits_cnn_adam": "critical_batch_more_adam.json", "teacher_mlp_adam": "critical_batch_more_adam.json",
           "digits_cnn_sgd": "critical_batch_more_sgd.json", "teacher_mlp_sgd": "critical_batch_more_sgd.json",
           "digits_bn_cnn_sgd": "critical_batch_bn.json", "digits_mom_sgd": "critical_batch_momentum.json",
           "teacher_mom_sgd": "critical_batch_momentum.json", "mnist_cnn_mom_sgd": "critical_batch_momentum2.json",
           "digits_cnn_mom_sgd": "critical_batch_momentum2.json",
           "digits_nesterov_sgd": "critical_batch_momentum3.json", "digits_mom05_sgd": "critical_batch_momentum3.json",
           "shakespeare_mom_sgd": "critical_batch_momentum4.json",
           "teacher_reg_sgd": "critical_batch_regression_sgd.json",
           "teacher_reg_adam": "critical_batch_regression_adam.json",
           "mnist_mlp_sgd": "critical_batch_mnist_mlp_sgd.json", "char_mlp_sgd": "critical_batch_char_mlp_sgd.json",
           "char_mlp_adam": "critical_batch_char_mlp_adam.json",
           "char_mlp_mom_sgd": "critical_batch_char_mlp_mom_sgd.json",
           "mnist_lenet_sgd": "critical_batch_mnist_lenet_sgd.json",
           "mnist_softmax_sgd": "critical_batch_mnist_softmax.json",
           "mnist_softmax_adam": "critical_batch_mnist_softmax.json",
           "mnist_vit_adamw": "critical_batch_mnist_vit.json", "mnist_ae_adam": "critical_batch_mnist_ae.json",
           "mnist_gn_mom_sgd": "critical_batch_mnist_gn.json", "gru_char_adam": "critical_batch_gru_char_adam.json",
           "mnist_bn_res_mom_sgd": "critical_batch_mnist_bn_res.json"}
CANDIDATES = ("b_simple", "b_simple_window", "b_pre")


EXTENSIONS = {"shakespeare_adam": ("critical_batch_shakespeare_hi.json", "shakespeare_adam_hi"),
              "mnist_cnn_adam": ("critical_batch_mnist_adam_hi.json", "mnist_cnn_adam_hi"),
              "mnist_mlp_adam": ("critical_batch_mnist_mlp_adam_hi.json", "mnist_mlp_adam_hi"),
              "char_mlp_sgd": ("critical_batch_char_mlp_sgd_hi.json", "char_mlp_sgd_hi"),
              "mnist_softmax_adam": ("critical_batch_mnist_softmax_hi.json", "mnist_softmax_adam_hi"),
              "mnist_gn_mom_sgd": ("critical_batch_mnist_gn_hi.json", "mnist_gn_mom_sgd_hi"),
              "mnist_bn_res_mom_sgd": ("critical_batch_mnist_bn_res_hi.json", "mnist_bn_res_mom_sgd_hi")}


def sweep_of(name):
    d = json.loads((OUT / SOURCES[name]).read_text())["tasks"][name]["sweep"]
    if d.get("reused"):   # digits/SGD: the full record is validate_critical_batch.json's
        g = json.loads((OUT / d["reused"]).read_text())["global"]
        d = {**d, "compute": g.get("compute"), "batches": g["batches"]}
    if name in EXTENSIONS and (OUT / EXTENSIONS[name][0]).is_file():
        d = extend(d, json.loads((OUT / EXTENSIONS[name][0]).read_text())["tasks"][EXTENSIONS[name][1]]["sweep"])
    return d


def extend(a, b):
    """Two sweeps of one task (same seed, batches and target; lr grids that continue each other): per batch the
    lr with the fewest steps over both grids, S(B) refitted with its bootstrap, the compute added up."""
    from bsprof.sweep.fit import bootstrap_fit

    rows = {}
    for r in a["batches"] + b["batches"]:
        if r["batch"] not in rows or (r["steps"] or math.inf) < (rows[r["batch"]]["steps"] or math.inf):
            rows[r["batch"]] = r
    batches = [rows[k] for k in sorted(rows)]
    ok = [r for r in batches if r["steps"] is not None and math.isfinite(r["steps"])]
    f = bootstrap_fit([r["batch"] for r in ok], [[r["steps"]] for r in ok], 0.9, 1000, 0)
    ca, cb = a.get("compute") or {}, b.get("compute") or {}
    compute = {k: (ca.get(k) or 0) + (cb.get(k) or 0) for k in ("train_examples", "eval_examples", "seconds")}
    ref = next(r for r in batches if r["batch"] == 32)
    return {**a, "batches": batches, "critical": f.b_crit.to_dict(), "fit": f.to_dict() if hasattr(f, "to_dict")
            else None, "compute": compute, "ref_lr_tuned": ref["lr"], "lr_grid": a["lr_grid"] + b["lr_grid"]}


def predicted_steps(report, target, batches):
    cfg = ScheduleConfig(target_loss=target, allow_extrapolation=True)
    rows, col = P.usable_rows(report, cfg)
    batch_train, _ = P.training_batch(report)
    fit, steps, loss = P.fit_rows(rows, cfg.confidence, cfg.form)
    path = P.noise_path(fit, steps, loss, batch_train, target)
    lead = P.path_lead_in(report, steps, loss, path, batch_train)  # from step 0, as the schedule counts (and sweeps)
    return col, {int(b): predict.constant_batch(path, b)["steps"] + lead.steps(b) for b in batches}


def path_b_crit(report, col, target):
    """The path average (the headline's computation) of one noise scale the report holds."""
    try:
        cfg = ScheduleConfig(target_loss=target, allow_extrapolation=True, noise=col)
        rows, _ = P.usable_rows(report, cfg)
        fit, steps, loss = P.fit_rows(rows, cfg.confidence, cfg.form)
        path = P.noise_path(fit, steps, loss, P.training_batch(report)[0], target)
        return predict.critical_batch(path)["b_crit"]
    except Exception:  # noqa: BLE001 - a quantity the report lacks
        return math.nan


def probe(name, task, lr, seed, steps):
    spec = dataclasses.replace(task["spec"](), optimizer=task["opt"](lr))
    every = max(5, steps // 12)
    t0 = time.time()
    report = bsprof.measure(spec, steps=steps, batch_size=task["batch"], measure_every=every, rel_error=0.2,
                            max_seconds=4.0, device="cpu", hessian=False, seed=seed)
    wall = time.time() - t0
    target = task["target"]
    try:
        s, note = report.summary_at(target), None
    except bsprof.BsprofError as e:   # the target is far below the probe's losses: the headline to its lowest loss
        s, note = report.summary, f"headline to the lowest measured loss: {e}"
    h = s.critical_batch
    ms = report.measurements
    out = dict(lr=lr, seed=seed, steps=steps, wall_seconds=round(wall, 1),
               examples=int(sum(m.examples for m in ms)) + steps * task["batch"],
               headline_note=note, reached=min((m.loss for m in ms), default=math.nan) <= target,
               headline=dict(value=h.value, lo=h.lo, hi=h.hi, quantity=s.critical_batch_quantity,
                             reason=s.critical_batch_reason),
               candidates={c: path_b_crit(report, c, target) for c in CANDIDATES},
               # the same path averages without the Adam family's factor (scripts/adam_factor.py fits it on these)
               raw_candidates={c: path_b_crit(report, c, target) / P.calibration(optimizer_name(report.config), c)
                               for c in CANDIDATES},
               rows=[dict(step=m.step, loss=m.loss, **{c: getattr(getattr(m, c, None), "value", None)
                                                       for c in CANDIDATES}) for m in ms])
    try:
        out["followed"], out["predicted_steps"] = predicted_steps(report, target, task["_batches"])
    except Exception as e:  # noqa: BLE001 - recorded
        out["followed"], out["predicted_steps"] = None, {}
        out["prediction_error"] = f"{type(e).__name__}: {e}"
    print(f"   [{name}] seed {seed}: headline {h.value:.1f} [{h.lo:.1f}, {h.hi:.1f}] ({s.critical_batch_quantity}); "
          + ", ".join(f"{c} {v:.1f}" for c, v in out["candidates"].items()) + f"  ({wall:.0f} s)", flush=True)
    return out


def geo(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x) and x > 0]
    return math.exp(float(np.mean(np.log(xs)))) if xs else math.nan


SHORT = {"digits_sgd": "digits MLP (sklearn, 1,797), SGD, loss 0.1",
         "mnist_cnn_sgd": "small CNN on real MNIST (5,000 images, 14×14), SGD, loss 0.3",
         "digits_adam": "digits MLP (sklearn, 1,797), Adam, loss 0.1",
         "shakespeare_adam": "char transformer (0.1M) on tiny-shakespeare, Adam, loss 2.0",
         "mnist_cnn_adam": "small CNN on real MNIST (5,000 images, 14×14), Adam, loss 0.3 (out of sample)",
         "mnist_mlp_adam": "MLP on real MNIST (10,000 images), Adam, loss 0.2 (out of sample)",
         "digits_cnn_adam": "CNN (14k) on the 8×8 digits (sklearn, 1,797), Adam, loss 0.05",
         "teacher_mlp_adam": "MLP on 8,192 teacher-labelled Gaussian inputs, Adam, loss 0.45",
         "digits_cnn_sgd": "CNN (14k) on the 8×8 digits (sklearn, 1,797), SGD, loss 0.05",
         "digits_bn_cnn_sgd": "the same CNN with BatchNorm, SGD, loss 0.05 (out of sample; windows from 2 "
                              "micro-batches per step)",
         "digits_mom_sgd": "digits MLP, SGD with momentum 0.9, loss 0.1",
         "teacher_mom_sgd": "teacher MLP, SGD with momentum 0.9, loss 0.55",
         "digits_cnn_mom_sgd": "CNN on the 8×8 digits, SGD with momentum 0.9, loss 0.05",
         "mnist_cnn_mom_sgd": "small CNN on real MNIST, SGD with momentum 0.9, loss 0.3",
         "digits_nesterov_sgd": "digits MLP, SGD with Nesterov momentum 0.9, loss 0.1 (out of sample)",
         "digits_mom05_sgd": "digits MLP, SGD with momentum 0.5, loss 0.1 (out of sample)",
         "teacher_mlp_sgd": "MLP on 8,192 teacher-labelled Gaussian inputs, SGD, loss 0.55"}


def path_reaches(p, target) -> bool:
    """Whether the noise scale the probe's schedule followed was measured down to the target loss: else its
    predicted steps extrapolate the loss curve (one regression probe's path ended at 0.44 for a target of 0.35 and
    predicted 3.8 million steps)."""
    col = p.get("followed") or "b_simple_window"
    return min((r["loss"] for r in p["rows"] if r.get(col)), default=math.inf) <= target


def markdown(results):
    lines = ["| task (probe seeds) | sweep B_crit [90%] | bsprof headline [interval] (quantity) | ratio (per seed) | "
             "predicted / measured steps at B = 16, 32, … | compute: probe / sweep |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        c = r["sweep"]["critical"]
        ps = r["probes"]
        hv, lo, hi = (geo([p["headline"][k] for p in ps]) for k in ("value", "lo", "hi"))
        ratios = [p["headline"]["value"] / c["value"] for p in ps]
        steps, reach = [], [p for p in ps if path_reaches(p, r["target"])]   # no extrapolated steps
        for b in r["sweep_steps"]:
            pred = geo([p["predicted_steps"].get(str(b), p["predicted_steps"].get(b)) for p in reach])
            meas = r["sweep_steps"][b]
            steps.append(f"{pred / meas:.2f}" if math.isfinite(pred) and meas else "–")
        if len(reach) < len(ps):
            steps[-1] += f" ({len(reach)} of {len(ps)} seeds: the others' path ended above the target)"
        comp = r["sweep"].get("compute") or {}
        sweep_ex = comp.get("train_examples") or 0   # its evaluations (often more examples) not counted
        probe_ex = float(np.mean([p["examples"] for p in ps]))
        quantity = ps[0]["headline"]["quantity"]
        factor = re.match(r"([\d.]+) ×", ps[0]["headline"]["reason"] or "")
        quantity = {"b_simple_window": "training-step B_simple", "b_simple": f"{factor.group(1)} × B_simple"
                    if factor else "B_simple"}.get(quantity, quantity)
        lines.append(
            f"| {SHORT.get(name, r['desc'])} ({len(ps)}) | {c['value']:.0f} [{c['lo']:.0f}, {c['hi']:.0f}] | "
            f"{hv:.0f} [{lo:.0f}, {hi:.0f}] ({quantity}) | {hv / c['value']:.2f} "
            f"({min(ratios):.2f}–{max(ratios):.2f}) | {', '.join(steps)} | "
            f"{probe_ex:,.0f} / {sweep_ex:,.0f} ex = {probe_ex / sweep_ex if sweep_ex else math.nan:.2f} |")
    return "\n".join(lines)


def render_only(out_path: Path) -> None:
    """Rewrite the .md from the JSON (no probes)."""
    md = markdown(json.loads(out_path.read_text())["tasks"])
    out_path.with_suffix(".md").write_text(md + "\n")
    print(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="digits_sgd,mnist_cnn_sgd,digits_adam,shakespeare_adam")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", default=str(OUT / "validation_table.json"))
    ap.add_argument("--fresh", action="store_true", help="rerun probes already in --out")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md table from --out")
    args = ap.parse_args()
    if args.render:
        return render_only(Path(args.out))
    torch.set_num_threads(1)
    out_path = Path(args.out)
    results = json.loads(out_path.read_text())["tasks"] if out_path.is_file() else {}
    for name in args.tasks.split(","):
        if args.fresh:  # rerun this task's probes; the other tasks' rows stay
            results.pop(name, None)
        task = dict(TASKS[name])
        sw = sweep_of(name)
        batches = [b["batch"] for b in sw["batches"]]
        task["_batches"] = batches
        lr = sw.get("ref_lr_tuned") or sw["ref_lr"]
        print(f"== {name}: sweep B_crit {sw['critical']['value']:.1f}, probe lr {lr:.4g}", flush=True)
        old = results.get(name, {}).get("probes", [])
        have = {p["seed"] for p in old if abs(p["lr"] - lr) < 1e-12}
        probes = [p for p in old if p["seed"] in have] + [probe(name, task, lr, s, task["probe_steps"])
                                                          for s in range(args.seeds) if s not in have]
        results[name] = dict(desc=task["desc"], target=task["target"], batch=task["batch"], probe_lr=lr,
                             sweep=dict(critical=sw["critical"], compute=sw.get("compute")),
                             sweep_steps={int(b["batch"]): b["steps"] for b in sw["batches"]}, probes=probes)
        out_path.write_text(json.dumps(bsprof.results.json_clean(dict(tasks=results)), indent=2) + "\n")
    md = markdown(results)
    out_path.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
