"""The report's headline critical batch, recomputed from the probe runs of scripts/critical_batch_evidence.py,
against each task's global sweep.

    nice python scripts/headline_vs_sweep.py

Reads scripts/results/critical_batch_evidence.json (probe rows hold values only, no intervals: the fit weights are
then uniform and the headline's interval is not meaningful here, so only values are compared). The headline's
path runs to the lowest loss the probe measured, which is below the sweep's target on every task: the comparison
mixes two targets, and B_crit grows as the target loss falls. Writes scripts/results/headline_vs_sweep.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bsprof.output.report import Report  # noqa: E402
from bsprof.schedule import ScheduleConfig, plan  # noqa: E402

RESULTS = Path(__file__).parent / "results"
OPTIMIZER = {"digits_sgd": "SGD", "mnist_cnn_sgd": "SGD", "digits_adam": "Adam"}


def probe_report(task: dict, probe: dict, optimizer: str) -> Report:
    rows = []
    for r in probe["rows"]:
        row = {"step": r["step"], "loss": r["loss"], "b_simple": r["b_simple"],
               "status": "ok" if r["b_simple"] else "undetermined"}
        for k in ("b_simple_window", "b_noise", "b_pre"):
            if r.get(k) is not None and r[k] > 0:
                row.update({k: r[k], f"{k}_status": "ok"})
        rows.append(row)
    return Report(config={"optimizer": optimizer, "batch_size": task["batch"], "lr": probe["lr"]}, measurements=rows)


def main() -> list[dict]:
    evidence = json.loads((RESULTS / "critical_batch_evidence.json").read_text())
    out = []
    for name, task in evidence["tasks"].items():
        sweep = task["sweep"]["critical"]["value"]
        for probe in task["probes"]:
            report = probe_report(task, probe, OPTIMIZER[name])
            s = report.summary
            at_target = plan(report, ScheduleConfig(target_loss=task["target"], allow_extrapolation=True))
            row = {"task": name, "probe_lr": probe["lr"], "sweep": sweep, "target": task["target"],
                   "lowest_loss": min(m.loss for m in report.measurements), "quantity": s.critical_batch_quantity,
                   "headline": s.critical_batch.value, "headline_ratio": s.critical_batch.value / sweep,
                   "path_to_target": at_target.prediction["b_crit"],
                   "path_to_target_ratio": at_target.prediction["b_crit"] / sweep}
            out.append(row)
            print(f"{name:14} lr {probe['lr']:<8.4g} sweep {sweep:6.1f} | headline (to loss {row['lowest_loss']:.3f}) "
                  f"{row['headline']:6.1f} ({row['headline_ratio']:.2f}×) | path to target {task['target']}: "
                  f"{row['path_to_target']:6.1f} ({row['path_to_target_ratio']:.2f}×)  [{row['quantity']}]")
    (RESULTS / "headline_vs_sweep.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
