"""Per-example probe through torch.func: vmap over grad. Slow, memory O(batch × parameters), obviously right.

It is the reference every fast path is tested against, and the fallback for modules the hooks do not know.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_map

from bsprof.probes.base import ChunkStats, LossFn, accum_dtype, per_example_losses, trainable


class _Objective(nn.Module):
    """Wraps (model, loss_fn) so that functional_call swaps the weights the user's loss sees."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return per_example_losses(self.model, self.loss_fn, batch, 1)[0]


def per_example_grads(model: nn.Module, loss_fn: LossFn, batch) -> tuple[dict, torch.Tensor]:
    """All per-example gradients {name: [c, *shape]} and losses [c], by vmap(grad) over the batch."""
    names, params = trainable(model)
    objective = _Objective(model, loss_fn)

    def one(weights, example):
        single = tree_map(lambda x: x.unsqueeze(0) if isinstance(x, torch.Tensor) else x, example)
        return functional_call(objective, {"model." + k: v for k, v in weights.items()}, (single,))

    weights = {n: p.detach() for n, p in zip(names, params)}
    grads, losses = vmap(grad_and_value(one), in_dims=(None, 0), randomness="different")(weights, batch)
    return grads, losses


def per_example_vmap(model: nn.Module, loss_fn: LossFn, batch, count: int) -> ChunkStats:
    """Σ_i |g_i|² per parameter and Σ_i g_i, from all per-example gradients."""
    grads, losses = per_example_grads(model, loss_fn, batch)
    if losses.shape != (count,):
        per_example_losses(model, loss_fn, batch, count)  # raises the shape error
    dtype = accum_dtype(losses.device)
    sq = torch.stack([g.to(dtype).flatten(1).square().sum() for g in grads.values()])
    return ChunkStats([g.sum(0) for g in grads.values()], sq, count, losses.sum().detach(), count)
