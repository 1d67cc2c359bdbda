"""Gradient probes, chosen by name (``PROBES``; ``probes.choose`` decides which one a model gets).

Each is a ``Probe``: one chunk of a draw at fixed weights → ``ChunkStats`` (and optionally a whole draw at once).

    hooks        per-example squared norms (b = 1) through module hooks, torch.func for unknown layers (fast)
    vmap         per-example squared norms through torch.func (the slow reference)
    microbatch   micro-batch gradients (b > 1): works for every model, BatchNorm in train mode included;
                 whole draws by plain gradient accumulation (``microbatch.accumulate``)

B_noise is another statistic (Hessian quadratic forms, not squared norms): ``QUAD_PROBES``, whose draw function
returns a ``hessian.QuadDraw`` and whose draws combine into a ``hessian.HessianEstimate``.
"""

from __future__ import annotations

from bsprof.probes.base import ChunkStats, LossFn, Probe, batch_coupled, trainable
from bsprof.probes.hessian import HESSIAN, QuadProbe
from bsprof.probes.hooks import check_rule, per_example_hooks
from bsprof.probes.layers import register_rule
from bsprof.probes.microbatch import accumulate, measurement_hooks, microbatch
from bsprof.probes.vmap import per_example_vmap

PROBES: dict[str, Probe] = {
    "hooks": Probe("hooks", per_example=True, chunk=per_example_hooks),
    "vmap": Probe("vmap", per_example=True, chunk=per_example_vmap),
    "microbatch": Probe("microbatch", per_example=False, chunk=microbatch, whole_draw=accumulate,
                        measuring=measurement_hooks),
}
QUAD_PROBES: dict[str, QuadProbe] = {"hessian": HESSIAN}

__all__ = ["PROBES", "QUAD_PROBES", "ChunkStats", "LossFn", "Probe", "QuadProbe", "batch_coupled", "check_rule",
           "register_rule", "trainable"]
