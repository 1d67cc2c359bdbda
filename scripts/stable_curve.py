"""Do neighbouring measurements along training move more than their intervals allow? (issue 14's stable curve)

    bsprof measure configs/digits_mlp.py --config configs/digits_mlp.yaml --steps 600 --measure-every 100 --out OUT
    python scripts/stable_curve.py OUT/report.json [--json scripts/results/stable_curve_digits_sgd_check.json]

For each quantity (the windowed B_simple of the training steps, and the fixed-weight B_simple of the draws), each
pair of neighbouring measurements: the move |Δ ln B| against what the two 90% intervals allow together,
√(h₁² + h₂²) with h = (ln hi − ln lo)/2 the half-width in log space. A move larger than that is a jump the
intervals do not convey.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def moves(report: dict, col: str) -> list[dict]:
    pts = [(m["step"], m["loss"], m[col]) for m in report["measurements"]
           if isinstance(m.get(col), dict) and m[col].get("value") is not None and m[col]["value"] == m[col]["value"]
           and m[col]["value"] > 0]

    def half(e):
        lo, hi = e.get("lo"), e.get("hi")
        ok = lo is not None and hi is not None and 0 < lo < hi < math.inf
        return (math.log(hi) - math.log(lo)) / 2 if ok else 0.0
    out = []
    for (s1, l1, a), (s2, l2, b) in zip(pts, pts[1:]):
        move, allowed = abs(math.log(b["value"] / a["value"])), math.hypot(half(a), half(b))
        out.append(dict(steps=[s1, s2], losses=[l1, l2], values=[a["value"], b["value"]], move=move,
                        allowed=allowed, jump=move > allowed))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = json.loads(args.report.read_text())
    result = {col: moves(report, col) for col in ("b_simple_window", "b_simple")}
    for col, rows in result.items():
        jumps = sum(r["jump"] for r in rows)
        print(f"{col}: {jumps} of {len(rows)} neighbouring moves exceed their intervals")
        for r in rows:
            print(f"  step {r['steps'][0]:>4} → {r['steps'][1]:>4} (loss {r['losses'][0]:.3f} → {r['losses'][1]:.3f}):"
                  f" {r['values'][0]:7.0f} → {r['values'][1]:7.0f}   |Δ ln B| {r['move']:.2f}, intervals allow"
                  f" {r['allowed']:.2f}{'   JUMP' if r['jump'] else ''}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
