"""Per-example, micro-batch and 1/B-regression estimates of B_simple agree on the digits MLP (within intervals).

    python scripts/agreement.py [--rel-error 0.1]

configs/digits_mlp.py (64 → 128 → 10, per-example cross-entropy) at its initial weights (seed 0), measured three
ways by ``bsprof.engine.loop.measure``: per-example norms (b = 1), micro-batches (b = 8), and the GLS 1/B
regression over the micro-batch draws' partial sums. Prints them with their 90% intervals and an exact reference:
B_simple from all 1,797 per-example gradients (torch.func). The study is ``bsprof.validation.agreement``; this
script runs it and prints it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsprof.validation.agreement import run  # noqa: E402

SPEC = ROOT / "configs" / "digits_mlp.py"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rel-error", type=float, default=0.1)
    a = ap.parse_args(argv)
    res = run(SPEC, a.rel_error)
    print(f"digits MLP at init, 90% intervals (examples); exact B_simple (all 1797 gradients) = {res['exact']:.1f}")
    for k in ("per_example", "microbatch"):
        v, lo, hi, m, n = res[k]
        covers = lo <= res["exact"] <= hi
        print(f"  {k:12} {v:7.1f} [{lo:.1f}, {hi:.1f}]   {m} draws, {n} examples   covers exact: {covers}")
    v, p, dof = res["regression"]
    print(f"  {'regression':12} {v:7.1f}   (GLS over micro-batch partial sums; fit p = {p:.3g}, dof {dof})")
    return res


if __name__ == "__main__":
    main()
