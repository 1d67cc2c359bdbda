"""Gradient probes, chosen by name. Each maps (model, loss_fn, batch, count) at fixed weights to ChunkStats.

    per_example  per-example squared norms (b = 1): fast hooks where every layer is known, else torch.func
    vmap         per-example squared norms through torch.func (the slow reference)
    microbatch   micro-batch gradients (b > 1): works for every model, BatchNorm in train mode included
"""

from __future__ import annotations

from bsprof.probes.base import ChunkStats, LossFn, trainable
from bsprof.probes.hooks import per_example_hooks
from bsprof.probes.microbatch import microbatch
from bsprof.probes.vmap import per_example_vmap

PROBES = {
    "vmap": per_example_vmap,
    "microbatch": microbatch,
    "hooks": per_example_hooks,
}
PER_EXAMPLE = {"vmap", "hooks"}  # probes whose small batch is one example

__all__ = ["PROBES", "PER_EXAMPLE", "ChunkStats", "LossFn", "trainable"]
