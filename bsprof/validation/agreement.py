"""Per-example, micro-batch and 1/B-regression estimates of B_simple at the same weights, against the exact value
(the study behind scripts/agreement.py).

A spec (``configs/digits_mlp.py`` in the repository: 64 → 128 → 10, per-example cross-entropy) at its initial
weights (seed 0) is measured three ways by ``bsprof.engine.loop.measure``: per-example norms (b = 1),
micro-batches (b = 8), and the GLS 1/B regression over the micro-batch draws' partial sums. The reference is
B_simple over the whole dataset from every per-example gradient (``reference.exact_noise_scale``, torch.func).
"""

from __future__ import annotations

from pathlib import Path


def exact_b_simple(spec_path: str | Path, seed: int = 0) -> float:
    """tr(Σ)/|G|² over the whole dataset from every per-example gradient (the slow, obviously right reference)."""
    import torch

    from bsprof.engine.spec import load_spec
    from bsprof.validation.reference import exact_noise_scale

    spec = load_spec(spec_path)
    torch.manual_seed(seed)
    return exact_noise_scale(spec.model(), spec.loss, spec.dataset())["b_simple"]


def run(spec_path: str | Path, rel_error: float = 0.1) -> dict:
    """{"exact": B, "per_example": (B, lo, hi, draws, examples), "microbatch": (…), "regression": (B, p, dof)}."""
    from bsprof.config import MeasureConfig
    from bsprof.engine.loop import measure

    out = {"exact": exact_b_simple(spec_path)}
    for method in ("per_example", "microbatch"):
        rep = measure(spec_path, MeasureConfig(steps=0, method=method, rel_error=rel_error, micro_batch=8, seed=0,
                                               max_seconds=120))
        r = rep.measurements[0]
        out[method] = (r.b_simple.value, r.b_simple.lo, r.b_simple.hi, r.n_draws, r.examples)
        if method == "microbatch":
            reg = r.regression
            out["regression"] = ((reg.b_simple, reg.p_value, reg.dof) if reg is not None
                                 else (float("nan"), float("nan"), 0))
    return out
