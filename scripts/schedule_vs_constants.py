"""Does the schedule, followed as written, beat every constant batch that uses no more examples? (issue 14, trained)

    python scripts/schedule_vs_constants.py [--tasks digits_sgd,digits_adam] [--json FILE]

Per task (the tasks of scripts/critical_batch_evidence.py):
1. a probe: ``bsprof.measure`` at batch 32 with the lr the task's sweep found best at 32 (rel_error 0.2, no Hessian);
2. ``bsprof.schedule.plan(report, ScheduleConfig(target_loss))`` with default options — the schedule as written,
   its batches and learning rates (lr rule and cap of the defaults) — saved as schedule.json;
3. ``bsprof.sweep.global_(..., schedule=schedule.json)``: the constant batches with the lr tuned on the task's grid
   and the schedule as written, trained the same way from the same initial weights and seeds, each until the
   evaluation loss first reaches the target. ``result.schedule`` says whether the schedule needed fewer steps than
   every constant batch using no more examples (medians over seeds).
One CPU thread.
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
sys.path.insert(0, str(ROOT / "scripts"))

from critical_batch_evidence import TASKS, adam, sgd  # noqa: E402

import bsprof  # noqa: E402
import bsprof.sweep  # noqa: E402
from bsprof.schedule import ScheduleConfig, plan  # noqa: E402

OUT = ROOT / "scripts" / "results"
SWEEPS = {   # the options of each task's reference sweep (critical_batch_evidence.py, validate_critical_batch.py)
    "digits_sgd": dict(opt=sgd(0.5), batches=[16, 32, 64, 128, 256, 512], lr_grid=[0.5, 1, 2], b_noise=81.6,
                       eval_examples=0, seeds=3, max_steps=1500, probe_lr=0.8591),
    "digits_adam": dict(opt=adam(0.01), batches=[16, 32, 64, 128, 256], lr_grid=[1, 2, 4, 8], b_noise=0.0,
                        eval_examples=0, seeds=2, max_steps=1500, probe_lr=0.0283),
    "mnist_cnn_sgd": dict(opt=sgd(0.2), batches=[16, 32, 64, 128, 256], lr_grid=[0.5, 1, 2], b_noise=32.0,
                          eval_examples=1024, seeds=2, max_steps=800, probe_lr=0.3),
    "shakespeare_adam": dict(opt=adam(2e-3), batches=[16, 32, 64, 128, 256], lr_grid=[0.5, 1, 2, 4], b_noise=0.0,
                             eval_examples=512, seeds=1, max_steps=2500, probe_lr=None),
    # tenth session: the next-character MLP LM, whose noise scale grows ~10× along the path (room for a schedule)
    "char_mlp_sgd": dict(opt=sgd(0.1), batches=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096], lr_grid=[0.5, 1, 2, 4, 8],
                         b_noise=274.2, eval_examples=1024, seeds=1, max_steps=4000, probe_lr=0.2),
    "char_mlp_adam": dict(opt=adam(1e-3), batches=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
                          lr_grid=[1, 2, 4, 8, 16], b_noise=0.0, eval_examples=1024, seeds=1, max_steps=4000,
                          probe_lr=0.00283),
}


def run(name: str, out_dir: Path, lr_cap: float | None = None, plan_only: bool = False) -> dict:
    task, sw = TASKS[name], SWEEPS[name]
    lr = sw["probe_lr"] or json.loads((OUT / "critical_batch_shakespeare.json").read_text())[
        "tasks"][name]["sweep"]["ref_lr_tuned"]
    spec = task["spec"]()
    t0 = time.time()
    report = bsprof.measure(dataclasses.replace(spec, optimizer=task["opt"](lr)), steps=task["probe_steps"],
                            batch_size=task["batch"], measure_every=max(5, task["probe_steps"] // 12),
                            rel_error=0.2, max_seconds=4.0, device="cpu", hessian=False, seed=0)
    probe_s = time.time() - t0
    options = {} if lr_cap is None else {"lr_cap": lr_cap}
    sched = plan(report, ScheduleConfig(target_loss=task["target"], allow_extrapolation=True, **options))
    path = out_dir / f"schedule_{name}{'' if lr_cap is None else f'_lr_cap_{lr_cap:g}'}.json"
    path.write_text(json.dumps(sched.to_dict(), indent=2, default=str))
    stages = [(s.start_step, s.batch_size, round(s.lr, 5)) for s in sched.stages]
    print(f"== {name}: probe lr {lr:.4g} ({probe_s:.0f} s); schedule {stages}; "
          f"recommendation: {sched.recommendation.get('text')}", flush=True)
    if plan_only:
        return dict(stages=stages)
    g = bsprof.sweep.global_(dataclasses.replace(spec, optimizer=sw["opt"]), task["target"], batches=sw["batches"],
                             lr_grid=sw["lr_grid"], b_noise=sw["b_noise"], eval_examples=sw["eval_examples"],
                             holdout=False, device="cpu", seeds=sw["seeds"], max_steps=sw["max_steps"],
                             n_boot=300, schedule=str(path))
    for s in g.batches:
        print(f"   constant {s.batch:4d}  lr {s.lr:.3g}  steps {s.steps:7.1f}  examples {s.examples:9,.0f}")
    v = g.schedule
    print(f"   {v['text']}", flush=True)
    return dict(probe_lr=lr, probe_seconds=probe_s, stages=stages, recommendation=sched.recommendation,
                predicted=dict(steps=sched.prediction.get("steps"), examples=sched.prediction.get("examples")),
                constants=[s.to_dict() for s in g.batches], schedule=v, sweep_b_crit=g.critical.to_dict()
                if hasattr(g.critical, "to_dict") else dataclasses.asdict(g.critical),
                compute=g.compute.to_dict())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="digits_sgd,digits_adam")
    ap.add_argument("--json", default=str(OUT / "schedule_vs_constants.json"))
    ap.add_argument("--lr-cap", type=float, default=None, help="the schedule's --lr-cap (default: bsprof's); the "
                    "results are kept under NAME@lr_cap=X")
    ap.add_argument("--plan-only", action="store_true", help="probe and plan only, and compare each schedule with "
                    "the trained ones in --json (same stages: its trained result stands for it)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.json)
    results = json.loads(out.read_text()) if out.is_file() else {}
    if args.plan_only:
        for name in args.tasks.split(","):
            stages = run(name, out.parent, args.lr_cap, plan_only=True)["stages"]
            same = [k for k, r in results.items() if k.split("@")[0] == name and
                    [tuple(x) for x in r["stages"]] == stages]
            print(f"   trained with the same stages: {', '.join(same) or 'none'}", flush=True)
        return
    for name in args.tasks.split(","):
        key = name if args.lr_cap is None else f"{name}@lr_cap={args.lr_cap:g}"
        results[key] = run(name, out.parent, args.lr_cap)
        out.write_text(json.dumps(bsprof.results.json_clean(results), indent=2) + "\n")
    for name, r in results.items():
        print(f"{name}: beats every constant using no more examples: {r['schedule']['beats_constants']}")


if __name__ == "__main__":
    main()
