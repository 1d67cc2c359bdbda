"""Per-example, micro-batch and 1/B-regression estimates of B_simple agree on the digits MLP (within intervals).

    python scripts/agreement.py [--rel-error 0.1]

configs/digits_mlp.py (64 → 128 → 10, per-example cross-entropy) at its initial weights (seed 0), measured three
ways by ``bsprof.loop.measure``: per-example norms (b = 1), micro-batches (b = 8), and the GLS 1/B regression over
the micro-batch draws' partial sums. Prints them with their 90% intervals and an exact reference: B_simple from
all 1,797 per-example gradients (torch.func).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsprof.config import MeasureConfig  # noqa: E402
from bsprof.engine.loop import measure  # noqa: E402
from bsprof.engine.spec import load_spec  # noqa: E402

SPEC = ROOT / "configs" / "digits_mlp.py"


def exact_b_simple() -> float:
    """tr(Σ)/|G|² over the whole dataset from every per-example gradient (the slow, obviously right reference)."""
    from bsprof.probes.vmap import per_example_grads

    spec = load_spec(SPEC)
    torch.manual_seed(0)
    model = spec.model()
    x, y = spec.dataset().tensors
    grads, _ = per_example_grads(model, spec.loss, (x, y))
    g = torch.cat([v.flatten(1).double() for v in grads.values()], 1)
    G = g.mean(0)
    return float((g - G).square().sum(1).mean() / G.square().sum())


def run(rel_error: float = 0.1) -> dict:
    out = {"exact": exact_b_simple()}
    for method in ("per_example", "microbatch"):
        rep = measure(SPEC, MeasureConfig(steps=0, method=method, rel_error=rel_error, micro_batch=8, seed=0,
                                          max_seconds=120))
        r = rep.measurements[0]
        out[method] = (r["b_simple"], r["b_simple_lo"], r["b_simple_hi"], r["n_draws"], r["examples"])
        if method == "microbatch":
            out["regression"] = (r["b_simple_regression"], r["regression_fit_p"], r["regression_dof"])
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rel-error", type=float, default=0.1)
    a = ap.parse_args(argv)
    res = run(a.rel_error)
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
