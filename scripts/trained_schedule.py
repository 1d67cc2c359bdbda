"""Does the schedule, followed as written, beat constant batches in training (not in prediction)? (issue 14)

    python scripts/trained_schedule.py [--tasks digits,mnist] [--seeds 3] [--json scripts/results/trained_schedule.json]

Per task (a spec in configs/, SGD): one probe run (``bsprof.measure``: 600 steps at batch 32, lr 0.1, a measurement
every 100), then ``bsprof.schedule.plan`` to a target loss inside the measured range (the lowest measured loss,
rounded up: no extrapolation). Then, from the same initial weights and seeds, training until the mean loss over
the whole training set first reaches the target (evaluated every ``--eval-every`` steps, at most ``--max-steps``):
  schedule     the stages as written: at step t the batch and lr of ``schedule.stage_at(step=t)``;
  schedule as written   the default plan (its lrs: the probe's lr scaled by the linear rule, capped at 2×);
  schedule     the plan with its lr at the training batch tuned like the constants' (× 1/4 … 8, no cap);
  constant B   for B = 8 … 1024 (powers of 2): lr = lr_train·B/B_train × {1/4, 1/2, 1, 2, 4, 8}, the best kept
               (fewest steps, median over seeds).
Examples = Σ batch sizes. The issue's criterion: the schedule needs fewer steps than every constant batch that
uses no more examples than it. Batches are sampled without replacement within an epoch (a fresh permutation per
epoch and seed). One CPU thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bsprof  # noqa: E402
from bsprof.engine.spec import load_spec  # noqa: E402
from bsprof.schedule import ScheduleConfig, plan  # noqa: E402

TASKS = {"digits": ROOT / "configs" / "digits_mlp.py", "mnist": ROOT / "configs" / "mnist_mlp.py"}


def full_loss(model, loss_fn, data) -> float:
    with torch.no_grad():
        return float(loss_fn(model, data).mean())


def train(spec, init_state, data, n, target, batch_lr, max_steps, eval_every, seed) -> tuple[int | None, int]:
    """Steps and examples to reach ``target`` following ``batch_lr(step) -> (batch, lr)`` (None: not reached)."""
    model = spec.model()
    model.load_state_dict(init_state)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(seed)
    perm, pos, examples = torch.randperm(n, generator=gen), 0, 0
    for step in range(max_steps):
        if step % eval_every == 0 and full_loss(model, spec.loss, data) <= target:
            return step, examples
        batch, lr = batch_lr(step)
        batch = min(batch, n)
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + batch]
        pos += batch
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        spec.loss(model, tuple(t[idx] for t in data)).mean().backward()
        opt.step()
        examples += batch
    return None, examples


def run_task(name: str, args) -> dict:
    spec = load_spec(TASKS[name])
    ds = spec.dataset()
    data = tuple(torch.stack([ds[i][j] for i in range(len(ds))]) for j in range(2))
    n = len(ds)
    t0 = time.perf_counter()
    report = bsprof.measure(TASKS[name], steps=600, measure_every=100, batch_size=32, lr=0.1, rel_error=0.2,
                            seed=0)
    probe_s = time.perf_counter() - t0
    losses = [m.loss for m in report.measurements]
    target = float(f"{min(losses) * 1.02:.3g}")
    sched = plan(report, ScheduleConfig(target_loss=target))
    lr_train, b_train = sched.lr_train, sched.batch_train
    torch.manual_seed(0)
    init = copy.deepcopy(spec.model().state_dict())
    out = {"task": name, "target": target, "probe_seconds": round(probe_s, 1),
           "probe_examples": int(sum(m.examples for m in report.measurements)),
           "stages": [s._asdict() for s in sched.stages], "prediction": sched.prediction,
           "recommendation": sched.recommendation, "runs": {}}

    def runs(label, batch_lr):
        res = [train(spec, init, data, n, target, batch_lr, args.max_steps, args.eval_every, seed)
               for seed in range(args.seeds)]
        steps = [s for s, _ in res]
        ok = all(s is not None for s in steps)
        return {"steps": statistics.median(steps) if ok else None,
                "examples": statistics.median(e for _, e in res) if ok else None,
                "per_seed": [[s, e] for s, e in res]}

    def follow(sc):
        return lambda t: (sc.stage_at(step=t).batch_size, sc.stage_at(step=t).lr)

    out["runs"]["schedule as written"] = runs("schedule", follow(sched))
    grid = (1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0)
    best = None
    for f in grid:  # the same lr tuning as every constant batch gets: one scalar on the linear rule, no cap
        sc = plan(report, ScheduleConfig(target_loss=target, lr=lr_train * f, lr_cap=0))
        r = runs("schedule", follow(sc))
        r["lr_factor"], r["stages"] = f, [[st.batch_size, st.start_step, st.lr] for st in sc.stages]
        if r["steps"] is not None and (best is None or r["steps"] < best["steps"]):
            best = r
    out["runs"]["schedule"] = best or {"steps": None, "examples": None}
    for B in [2 ** k for k in range(3, 11)]:
        best = None
        for f in grid:
            r = runs(f"B={B}", lambda t, B=B, lr=lr_train * B / b_train * f: (B, lr))
            r["lr"] = lr_train * B / b_train * f
            if r["steps"] is not None and (best is None or r["steps"] < best["steps"]):
                best = r
        out["runs"][f"constant {B}"] = best or {"steps": None, "examples": None, "lr": None}
        print(f"{name} constant {B}: {out['runs'][f'constant {B}']['steps']} steps", file=sys.stderr, flush=True)
    s = out["runs"]["schedule"]
    rivals = [(k, r) for k, r in out["runs"].items() if k.startswith("constant") and r["steps"] is not None
              and s["examples"] is not None and r["examples"] <= s["examples"]]
    out["beats_every_constant_using_no_more_examples"] = (
        s["steps"] is not None and all(s["steps"] < r["steps"] for _, r in rivals))
    out["rivals"] = [k for k, _ in rivals]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="digits,mnist")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = [run_task(t, args) for t in args.tasks.split(",")]
    for r in results:
        print(f"\n{r['task']}: target loss {r['target']} (probe {r['probe_seconds']} s, {r['probe_examples']:,} "
              f"examples measured); stages " + ", ".join(f"{s['batch_size']}@{s['start_step']} lr {s['lr']:.3g}"
                                                         for s in r["stages"]))
        print(f"  recommendation: {r['recommendation'].get('text')}")
        for k, v in r["runs"].items():
            print(f"  {k:20s} steps {v['steps']}  examples {v['examples']}" +
                  (f"  lr {v['lr']:.3g}" if v.get("lr") else "") +
                  (f"  lr ×{v['lr_factor']:g}: {v['stages']}" if v.get("lr_factor") else ""))
        print(f"  schedule beats every constant batch using no more examples ({', '.join(r['rivals']) or 'none'}):"
              f" {r['beats_every_constant_using_no_more_examples']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
