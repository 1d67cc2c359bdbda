"""Does anything the probe measures predict the factor a task needs? (issue 14)

    python scripts/factor_features.py   # reads scripts/results/validation_table*.json, writes factor_features.txt

Per task of the validation table (geometric means over its probe seeds): the factor it needs, swept B_crit over the
training-step windows' path average without the family's factor (``raw_candidates``), beside what the probe saw:
the fixed-weight B_simple's path average over the windows', B_pre's over the windows', the windows' growth from the
first to the last determined window, and the loss's fall (first over lowest). A constant factor brings every task of
a family within 1.5× only where the needed factors span at most 2.25×; the spread per family is printed last.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results"
FAMILY = {"adam": "adam", "adamw": "adam", "mom": "momentum", "nesterov": "nesterov", "mom05": "momentum 0.5"}


def family(name: str) -> str:
    for key in ("nesterov", "mom05", "mom", "adamw", "adam"):
        if key in name.split("_"):
            return FAMILY[key]
    return "sgd"


def geo(xs) -> float:
    xs = [x for x in xs if x and math.isfinite(x) and x > 0]
    return math.exp(float(np.mean(np.log(xs)))) if xs else math.nan


def main():
    tasks = {}
    for f in sorted(OUT.glob("validation_table*.json")):
        if "independent" in f.name:
            continue
        tasks.update(json.loads(f.read_text())["tasks"])
    rows = []
    for name, t in tasks.items():
        sweep, feats = t["sweep"]["critical"]["value"], []
        for p in t["probes"]:
            raw = p["raw_candidates"]
            w, fixed, pre = raw.get("b_simple_window"), raw.get("b_simple"), raw.get("b_pre")
            windows = [r["b_simple_window"] for r in p["rows"] if r.get("b_simple_window")]
            losses = [r["loss"] for r in p["rows"]]
            if not w:
                continue
            feats.append(dict(need=sweep / w, fixed=(fixed or math.nan) / w, pre=(pre or math.nan) / w,
                              growth=windows[-1] / windows[0] if len(windows) > 1 else math.nan,
                              fall=losses[0] / min(losses)))
        if feats:
            rows.append((family(name), name, sweep, *(geo(f[k] for f in feats)
                                                      for k in ("need", "fixed", "pre", "growth", "fall"))))
    lines = [f"{'family':12s} {'task':22s} {'sweep':>7s} {'needs':>6s} {'fix/w':>6s} {'pre/w':>6s} {'growth':>6s} "
             f"{'L0/Lmin':>7s}"]
    for r in sorted(rows, key=lambda r: (r[0], r[3])):
        lines.append(f"{r[0]:12s} {r[1]:22s} {r[2]:7.1f} " + " ".join(f"{x:6.2f}" for x in r[3:7]) + f" {r[7]:7.2f}")
    for fam in sorted({r[0] for r in rows}):
        need = [r[3] for r in rows if r[0] == fam]
        lines.append(f"{fam}: {len(need)} tasks, needed factor {min(need):.2f}–{max(need):.2f} "
                     f"(spread ×{max(need) / min(need):.2f}; a constant can bring all within 1.5× only at ≤ ×2.25)")
    text = "\n".join(lines)
    (OUT / "factor_features.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
