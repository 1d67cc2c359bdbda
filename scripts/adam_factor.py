"""Where ``plan.ADAM_FACTOR`` comes from: swept B_crit / the fixed-weight B_simple's path average, under Adam.

    python scripts/adam_factor.py

Reads scripts/results/validation_table.json (probes at the sweep's tuned lr; their headline is
plan.ADAM_FACTOR × the path average at the time they ran, recorded in ``headline.reason``) and adds issue 14's
char transformer (sweep 81, path 50: measured by the issue's author, not rerunnable here). Per task the needed
factor is the geometric mean over probe seeds of sweep / path average; ADAM_FACTOR is the geometric mean over
tasks (each task once). Also prints, per task, the ratio headline / sweep with that factor and with the factor
fitted on the other tasks only (leave-one-out: how far a task we have not seen may land), and with the factor in
use (``plan.ADAM_FACTOR``, the fitted one rounded). Writes
scripts/results/adam_factor.json.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsprof.schedule.plan import ADAM_FACTOR  # noqa: E402

OUT = ROOT / "scripts" / "results"
EXTERNAL = {"issue14_char_transformer": [81 / 50]}   # issue 14's table: sweep 81, B_simple path 50


def geo(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def needed() -> dict[str, list[float]]:
    tasks = json.loads((OUT / "validation_table.json").read_text())["tasks"]
    out = {}
    for name, t in tasks.items():
        if "adam" not in name:
            continue
        sweep = t["sweep"]["critical"]["value"]
        per_seed = []
        for p in t["probes"]:
            m = re.match(r"([\d.]+) ×", p["headline"]["reason"] or "")
            factor = float(m.group(1)) if m else 1.0          # the factor the probe's headline was computed with
            per_seed.append(sweep / (p["headline"]["value"] / factor))
        out[name] = per_seed
    return {**out, **EXTERNAL}


def main() -> None:
    need = needed()
    per_task = {k: geo(v) for k, v in need.items()}
    factor = geo(list(per_task.values()))
    rows = {}
    for k, v in per_task.items():
        loo = geo([x for j, x in per_task.items() if j != k])
        rows[k] = dict(needed=v, needed_per_seed=need[k], ratio=factor / v,
                       ratio_per_seed=[factor / x for x in need[k]], factor_without=loo, ratio_without=loo / v,
                       ratio_in_use=ADAM_FACTOR / v, ratio_in_use_per_seed=[ADAM_FACTOR / x for x in need[k]])
        print(f"{k:26s} needed {v:5.2f} ({min(need[k]):.2f}–{max(need[k]):.2f})  headline/sweep {factor / v:5.2f}"
              f"  leave-one-out {loo / v:5.2f} (factor {loo:.2f})  with {ADAM_FACTOR:g}: {ADAM_FACTOR / v:.2f}")
    every = [r for x in rows.values() for r in x["ratio_per_seed"]]
    loo = [x["ratio_without"] for x in rows.values()]
    print(f"ADAM_FACTOR = {factor:.2f} over {len(rows)} tasks; headline/sweep per seed {min(every):.2f}–"
          f"{max(every):.2f}; leave-one-out per task {min(loo):.2f}–{max(loo):.2f}")
    used = [x["ratio_in_use"] for x in rows.values()]
    print(f"with ADAM_FACTOR = {ADAM_FACTOR:g} (in use): headline/sweep per task {min(used):.2f}–{max(used):.2f}")
    doc = dict(factor=factor, tasks=rows, ratio_per_seed=[min(every), max(every)], leave_one_out=[min(loo), max(loo)],
               factor_in_use=ADAM_FACTOR, ratio_in_use=[min(used), max(used)])
    (OUT / "adam_factor.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
