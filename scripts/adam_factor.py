"""Where ``plan.ADAM_FACTORS`` (``MOMENTUM_FACTORS``, ``SGD_FACTORS``) come from: swept B_crit / a noise scale's
path average, under Adam (SGD with momentum, plain SGD), per quantity.

    python scripts/adam_factor.py [--family adam|momentum|sgd]

Reads scripts/results/validation_table.json (probes at the sweep's tuned lr; ``raw_candidates``: the path average
of each noise scale without any factor) for the two quantities the Adam headline can follow: B_simple over the
training-step windows (``b_simple_window``) and the fixed-weight B_simple (``b_simple``, its fallback), and adds
to the latter issue 14's char transformer (sweep 81, path 50: measured by the issue's author, not rerunnable
here). Per task the needed factor is the geometric mean over probe seeds of sweep / path average; the factor is
the geometric mean over tasks (each task once). Prints, per task, headline / sweep with that factor, with the
factor fitted on the other tasks only (leave-one-out: how far a task we have not seen may land), and with the
factor in use (``plan.ADAM_FACTORS``, the fitted one rounded). Writes scripts/results/adam_factor.json
(``--family momentum``: the tasks with SGD momentum 0.9, ``plan.MOMENTUM_FACTORS``, momentum_factor.json;
``--family sgd``: plain SGD, ``plan.SGD_FACTORS``, sgd_factor.json: the windows only).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsprof.schedule.plan import FACTORS  # noqa: E402

OUT = ROOT / "scripts" / "results"
EXTERNAL = {"b_simple": {"issue14_char_transformer": [81 / 50]}}   # issue 14's table: sweep 81, B_simple path 50


def geo(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


FAMILY = "adam"   # --family
MARK = {"adam": lambda n: "adam" in n, "momentum": lambda n: "_mom_" in n,   # a family's validation tasks, by name
        "sgd": lambda n: n.endswith("_sgd") and not any(m in n for m in ("mom", "nesterov"))}


def needed(quantity: str) -> dict[str, list[float]]:
    tasks = json.loads((OUT / "validation_table.json").read_text())["tasks"]
    out = {}
    for name, t in tasks.items():
        if not MARK[FAMILY](name):
            continue
        sweep = t["sweep"]["critical"]["value"]
        per_seed = [sweep / p["raw_candidates"][quantity] for p in t["probes"]
                    if (p.get("raw_candidates") or {}).get(quantity) and p["raw_candidates"][quantity] > 0]
        if per_seed:
            out[name] = per_seed
    return {**out, **(EXTERNAL.get(quantity, {}) if FAMILY == "adam" else {})}


def fit(quantity: str) -> dict:
    need = needed(quantity)
    per_task = {k: geo(v) for k, v in need.items()}
    factor, in_use = geo(list(per_task.values())), FACTORS[FAMILY][quantity]
    rows = {}
    print(f"== {quantity}")
    for k, v in per_task.items():
        loo = geo([x for j, x in per_task.items() if j != k])
        rows[k] = dict(needed=v, needed_per_seed=need[k], ratio=factor / v,
                       ratio_per_seed=[factor / x for x in need[k]], factor_without=loo, ratio_without=loo / v,
                       ratio_in_use=in_use / v, ratio_in_use_per_seed=[in_use / x for x in need[k]])
        print(f"{k:26s} needed {v:5.2f} ({min(need[k]):.2f}–{max(need[k]):.2f})  headline/sweep {factor / v:5.2f}"
              f"  leave-one-out {loo / v:5.2f} (factor {loo:.2f})  with {in_use:g}: {in_use / v:.2f}")
    every = [r for x in rows.values() for r in x["ratio_in_use_per_seed"]]
    loo = [x["ratio_without"] for x in rows.values()]
    used = [x["ratio_in_use"] for x in rows.values()]
    within = sum(1 for r in used if 1 / 1.5 <= r <= 1.5)
    print(f"factor {factor:.2f} over {len(rows)} tasks; with {in_use:g} (in use): headline/sweep per task "
          f"{min(used):.2f}–{max(used):.2f} ({within} of {len(used)} within 1.5×), per seed {min(every):.2f}–"
          f"{max(every):.2f}; leave-one-out per task {min(loo):.2f}–{max(loo):.2f}")
    return dict(factor=factor, factor_in_use=in_use, tasks=rows, ratio_in_use=[min(used), max(used)],
                within_1_5=within, ratio_in_use_per_seed=[min(every), max(every)], leave_one_out=[min(loo), max(loo)],
                shortfall=[min(per_task.values()), max(per_task.values())])


def main() -> None:
    global FAMILY
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=sorted(MARK), default="adam")
    FAMILY = ap.parse_args().family
    doc = {q: fit(q) for q in FACTORS[FAMILY]}
    (OUT / f"{FAMILY}_factor.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
