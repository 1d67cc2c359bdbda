"""Micro-batch probe: the mean gradient of one micro-batch of b examples. Works for every model.

Nested inside a draw of B = k·b examples it gives the small batch of the pair (McCandlish App. A.1):
|G_b|² per micro-batch, and Σ b·G_b accumulates to B·G_B. BatchNorm in train mode is fine here (its
statistics are those of the micro-batch, as in training at batch b).

Two implementations with one result:

- ``microbatch``: one chunk, through ``torch.autograd.grad`` (the plain reference, and the chunk probe that
  ``preconditioned`` wraps);
- ``accumulate``: a whole draw run exactly like plain gradient accumulation. ``loss.backward()`` adds each
  micro-batch's gradient into ``.grad`` inside the autograd engine, and a tensor hook on every parameter takes
  |b·G_b|² of the gradient as it arrives: on the CPU one dot product while the gradient is still in cache, on an
  accelerator one fused ``_foreach_norm`` after each backward. That norm is the only extra work per micro-batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ChunkStats, accum_dtype, per_example_losses, trainable


def microbatch(model: nn.Module, loss_fn, batch, count: int) -> ChunkStats:
    """|G_b|² per parameter of one micro-batch, G_b = ∇ mean_i ℓ_i, and b·G_b."""
    _, params = trainable(model)
    losses = per_example_losses(model, loss_fn, batch, count)
    loss_sum = losses.sum()
    grads = torch.autograd.grad(loss_sum, params, allow_unused=True, materialize_grads=True)
    sq = torch.stack(torch._foreach_norm(grads)).to(accum_dtype(losses.device)).square_().div_(count ** 2)
    return ChunkStats(list(grads), sq, 1, loss_sum.detach(), count)


def _sq(g: Tensor) -> Tensor:
    """|g|² as a 0-d tensor (float32 at least; sparse gradients by their values)."""
    if g.is_sparse:
        g = g.coalesce().values()
    f = g.reshape(-1)
    if f.dtype in (torch.float16, torch.bfloat16):
        f = f.float()
    return torch.dot(f, f)


class _Norms:
    """Tensor hooks on the parameters that record |Σ_{i∈micro-batch} g_i|² per parameter, armed only while
    ``accumulate`` runs its own backward (never inside other code's autograd calls)."""

    def __init__(self, params: list[Tensor]):
        self.in_cache = params[0].device.type == "cpu"
        self.armed = False
        self.values: list[Tensor] = []  # squares (CPU) or norms (accelerators), one per parameter per backward
        self.index: list[int] = []  # which parameter each value belongs to
        self.weight: list[float] = []  # 1/count² of its micro-batch
        self.fresh: list[Tensor] = []
        self.handles = [p.register_hook(self._hook(i)) for i, p in enumerate(params)]

    def _hook(self, i: int):
        def hook(g: Tensor) -> None:
            if self.armed:
                self.index.append(i)
                if self.in_cache:
                    self.values.append(_sq(g))
                else:
                    self.fresh.append(g if not g.is_sparse else g.coalesce().values())
        return hook

    def backward(self, loss_sum: Tensor, params: list[Tensor], count: int) -> None:
        before = len(self.index)
        self.armed = True
        try:
            loss_sum.backward(inputs=params)
        finally:
            self.armed = False
        if self.fresh:
            self.values.extend(torch._foreach_norm(self.fresh))
            self.fresh.clear()
        self.weight.extend([1.0 / count ** 2] * (len(self.index) - before))

    def squares(self, device: torch.device) -> Tensor:
        """|G_b|² of every (micro-batch, parameter) entry, in the order recorded."""
        dtype = accum_dtype(device)
        if not self.values:
            return torch.zeros(0, dtype=dtype, device=device)
        v = torch.stack(self.values).to(dtype)
        return (v if self.in_cache else v.square()) * torch.tensor(self.weight, dtype=dtype, device=device)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def accumulate(model: nn.Module, loss_fn, chunks, marks: set[int]) -> tuple[ChunkStats, list]:
    """One draw of micro-batches by plain gradient accumulation; the same sums as ``microbatch`` chunk by chunk.

    ``marks``: the partial-sum sizes at which |Σ g|²/seen² is recorded (for the 1/B regression); all norms are
    turned into numbers once, at the end of the draw. The model's own ``.grad`` is set aside and restored, so a
    draw between training steps changes nothing.
    """
    _, params = trainable(model)
    device = params[0].device
    saved = [p.grad for p in params]
    norms = _Norms(params)
    losses, at_marks, seen, first = [], [], 0, None
    try:
        for p in params:
            p.grad = None
        for batch, count in chunks:
            loss = per_example_losses(model, loss_fn, batch, count).sum()
            norms.backward(loss, params, count)
            losses.append(loss.detach())
            seen += count
            del batch, loss
            if first is None:  # the partial sum of one micro-batch is its small batch
                first = (seen, len(norms.index))
            elif seen in marks:
                at_marks.append((seen, torch._foreach_norm([p.grad for p in params if p.grad is not None])))
        grad_sum = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        sq = norms.squares(device)
        small = torch.zeros(len(params), dtype=sq.dtype, device=device).index_add_(
            0, torch.tensor(norms.index, dtype=torch.long, device=device), sq)
    finally:
        norms.remove()
        for p, g in zip(params, saved):
            p.grad = g
    partial = []
    if first is not None and first[0] in marks:
        partial.append((first[0], float(sq[:first[1]].sum())))
    if at_marks:
        flat = torch.stack([x for _, n in at_marks for x in n]).double().square()
        totals = torch.stack([t.sum() for t in flat.split([len(n) for _, n in at_marks])]).tolist()
        partial += [(size, t / size ** 2) for (size, _), t in zip(at_marks, totals)]
    return ChunkStats(grad_sum, small, len(losses), torch.stack(losses).sum(), seen), partial


microbatch.whole_draw = accumulate  # the probe loop runs whole micro-batch draws through ``accumulate``
