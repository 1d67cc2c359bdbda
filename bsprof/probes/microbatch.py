"""Micro-batch probe: the mean gradient of one micro-batch of b examples. Works for every model.

Nested inside a draw of B = k·b examples it gives the small batch of the pair (McCandlish App. A.1):
|G_b|² per micro-batch, and Σ b·G_b accumulates to B·G_B. BatchNorm in train mode is fine here (its
statistics are those of the micro-batch, as in training at batch b).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ChunkStats, LossFn, accum_dtype, per_example_losses, trainable


def microbatch(model: nn.Module, loss_fn: LossFn, batch, count: int) -> ChunkStats:
    """|G_b|² per parameter of one micro-batch, G_b = ∇ mean_i ℓ_i, and b·G_b."""
    _, params = trainable(model)
    losses = per_example_losses(model, loss_fn, batch, count)
    loss_sum = losses.sum()
    grads = torch.autograd.grad(loss_sum, params, allow_unused=True, materialize_grads=True)
    sq = torch.stack(torch._foreach_norm(grads)).to(accum_dtype(losses.device)).square_().div_(count ** 2)
    return ChunkStats(list(grads), sq, 1, loss_sum.detach(), count)

