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
    sq = torch.stack(torch._foreach_norm(grads)).to(accum_dtype(losses.device)).square() / count ** 2
    return ChunkStats(list(grads), sq, 1, loss_sum.detach(), count)


def microbatch_sums(model: nn.Module, loss_fn: LossFn, chunks, B: int) -> tuple[ChunkStats, list]:
    """The micro-batch probe over a whole draw, fast: the same sums as ``microbatch`` chunk by chunk.

    Backward passes accumulate Σ_i g_i in the parameters' .grad (as plain gradient accumulation does, no copies);
    a hook on each parameter sees each micro-batch's own gradient b·G_b on its way and keeps |b·G_b|².
    The model is bsprof's own: its .grad is restored afterwards. Returns the sums and the partial |G|² at b·2^j.
    """
    _, params = trainable(model)
    saved = [p.grad for p in params]
    parts: list = []  # (parameter index, |b·G_b| of one micro-batch)
    handles = [p.register_hook(lambda g, k=k: parts.append((k, torch.linalg.vector_norm(g))))
               for k, p in enumerate(params)]
    loss_sum, seen, n_small, partial, b = 0.0, 0, 0, [], None
    try:
        for p in params:
            p.grad = None
        for batch, count in chunks:
            b = b or count
            if count != b:
                raise ValueError(f"micro-batches must be equal: {count} after {b}")
            losses = per_example_losses(model, loss_fn, batch, count)
            losses.sum().backward()
            loss_sum, seen, n_small = loss_sum + losses.detach().sum(), seen + count, n_small + 1
            if n_small & (n_small - 1) == 0 and seen < B:  # partial sums at b·2^j, for the 1/B regression
                grads = [p.grad for p in params if p.grad is not None]
                partial.append((seen, torch.stack(torch._foreach_norm(grads)).square().sum() / seen ** 2))
        grad_sum = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    finally:
        for h in handles:
            h.remove()
        for p, g in zip(params, saved):
            p.grad = g
    device = grad_sum[0].device
    sq = torch.zeros(len(params), dtype=accum_dtype(device), device=device)
    if parts:
        ks, norms = zip(*parts)
        sq.index_add_(0, torch.tensor(ks, device=device), torch.stack(norms).to(sq.dtype).square())
    partial = [(size, float(v)) for size, v in partial]
    return ChunkStats(grad_sum, sq / b ** 2, n_small, loss_sum, seen), partial
