"""Does a short sweep to an early loss measure Adam's factor? (issue 14, evidence; a study, not a test)

    python scripts/adam_short_sweep.py [--tasks digits_adam,mnist_cnn_adam] [--fraction 0.33]

Adam's critical batch exceeds the noise scale by a task-dependent factor (1.1–5.2 on seven tasks,
scripts/adam_factor.py). If that factor is the same early and late along the path, a cheap measurement early in
training could calibrate it: a global sweep (``bsprof.sweep.global_``) at batches 32, 128, 512 to an intermediate
loss L_mid (the probe's loss after ``fraction`` of its steps to the target; lr grid ×0.5…×4 around the tuned lr,
√-scaled with the batch), against the headline path average of B_simple to L_mid from a probe
(the fixed-weight B_simple's path average to L_mid,
without the Adam factor). For each task: factor_short = B_crit(short sweep) /
B_simple path to L_mid, against the factor the full sweep needs (scripts/results/adam_factor.json), and the cost of
the short sweep against the full one. Writes scripts/results/adam_short_sweep.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import critical_batch_evidence as cbe  # noqa: E402
from validation_table import path_b_crit  # noqa: E402

import bsprof  # noqa: E402
import bsprof.sweep  # noqa: E402
from bsprof.schedule.plan import calibration  # noqa: E402

OUT = ROOT / "scripts" / "results"
TASKS = ("digits_adam", "digits_cnn_adam", "teacher_mlp_adam", "mnist_cnn_adam", "mnist_mlp_adam",
         "shakespeare_adam")


def run(name: str, fraction: float, seed: int) -> dict:
    task = cbe.TASKS[name]
    vt = json.loads((OUT / "validation_table.json").read_text())["tasks"][name]
    need = json.loads((OUT / "adam_factor.json").read_text())["tasks"][name]["needed"]
    lr, target = vt["probe_lr"], vt["target"]
    rows = vt["probes"][0]["rows"]
    reach = next((r["step"] for r in rows if r["loss"] <= target), rows[-1]["step"])
    early = [r for r in rows if 0 < r["step"] <= fraction * reach] or rows[1:2]
    mid = early[-1]["loss"]
    t0 = time.time()
    spec = dataclasses.replace(task["spec"](), optimizer=task["opt"](lr))
    report = bsprof.measure(spec, steps=int(task["probe_steps"] * fraction * 1.5) + 20, batch_size=32,
                            measure_every=max(5, int(reach * fraction) // 6), rel_error=0.2, max_seconds=4.0,
                            device="cpu", seed=seed)
    path = path_b_crit(report, "b_simple", mid) / calibration(report.config.get("optimizer"), "b_simple")
    if not math.isfinite(path):
        print(f"   [{name}] no path to {mid:.3g}", flush=True)
    probe_s = time.time() - t0
    t0 = time.time()
    sw = bsprof.sweep.global_(dataclasses.replace(task["spec"](), optimizer=task["opt"](lr / math.sqrt(2))), mid,
                              batches=[32, 128, 512], lr_grid=[0.5, 1, 2, 4], seeds=1, b_noise=0.0,
                              max_steps=task["sweep"]["max_steps"], eval_examples=task["sweep"]["eval_examples"],
                              holdout=False, device="cpu", n_boot=300, seed=seed, max_seconds=900)
    c = sw.critical
    d = sw.to_dict()
    factor = c.value / path if path > 0 else math.nan
    full = json.loads((OUT / cbe_source(name)).read_text())["tasks"][name]["sweep"].get("compute") or {}
    out = dict(task=name, mid_loss=mid, target=target, path_mid=path, short_sweep=d["critical"],
               short_batches=[(b["batch"], b["lr"], b["steps"]) for b in d["batches"]], factor_short=factor,
               factor_needed=need, ratio=factor / need, short_examples=(d.get("compute") or {}).get("train_examples"),
               full_examples=full.get("train_examples"), probe_seconds=probe_s, sweep_seconds=time.time() - t0)
    print(f"[{name}] L_mid {mid:.3g}: short sweep B_crit {c.value:.1f} [{c.lo:.1f}, {c.hi:.1f}], B_simple path "
          f"{path:.1f} → factor {factor:.2f}, needed {need:.2f} (ratio {factor / need:.2f}); examples "
          f"{out['short_examples']} vs full {out['full_examples']}", flush=True)
    return out


def cbe_source(name: str) -> str:
    import validation_table
    return validation_table.SOURCES[name]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--fraction", type=float, default=0.33)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    path = OUT / "adam_short_sweep.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in a.tasks.split(","):
        results[f"{name}/{a.fraction:g}/{a.seed}"] = run(name, a.fraction, a.seed)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(bsprof.results.json_clean(results), indent=1))
        tmp.replace(path)


if __name__ == "__main__":
    main()
