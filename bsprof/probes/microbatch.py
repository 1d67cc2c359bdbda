"""Micro-batch probe: the mean gradient of one micro-batch of b examples. Works for every model.

Nested inside a draw of B = k·b examples it gives the small batch of the pair (McCandlish App. A.1):
|G_b|² per micro-batch, and Σ b·G_b accumulates to B·G_B. BatchNorm in train mode is fine here (its
statistics are those of the micro-batch, as in training at batch b).

Two implementations with one result:

- ``microbatch``: one chunk, through ``torch.autograd.grad`` (the plain reference, and the chunk probe that
  ``preconditioned`` wraps);
- ``accumulate``: a whole draw run like plain gradient accumulation, whose only extra work per micro-batch is
  |b·G_b|² (``_Norms``: on the CPU a dot product in a tensor hook while the gradient is in cache; on an
  accelerator one fused ``_foreach_norm``); everything else is done once per draw.
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
    """|Σ_{i∈micro-batch} g_i|² per parameter of each backward, with the draw's gradient sum.

    CPU: ``.backward()`` accumulates into ``.grad`` inside the engine (a Python ``_foreach_add_`` is a slow loop
    there) and tensor hooks, armed only during bsprof's own backward (never inside other code's autograd calls),
    take a dot product of each gradient while it is still in cache.
    Accelerators, where every kernel launch counts: ``autograd.grad``, then one fused ``_foreach_add_`` into the
    sum and one fused ``_foreach_norm``; nothing leaves the device until the draw ends.
    """

    def __init__(self, params: list[Tensor], in_cache: bool):
        self.params = params
        self.in_cache = in_cache
        self.armed = False
        self.values: list[Tensor] = []  # squares (CPU) or norms (accelerators), one per parameter per backward
        self.index: list[int] = []  # which parameter each value belongs to
        self.weight: list[float] = []  # 1/count² of its micro-batch
        self.acc: list[Tensor] | None = None  # accelerators: the running sum
        self.handles = [p.register_hook(self._hook(i)) for i, p in enumerate(params)] if self.in_cache else []

    def _hook(self, i: int):
        def hook(g: Tensor) -> None:
            if self.armed:
                self.index.append(i)
                self.values.append(_sq(g))
        return hook

    def backward(self, loss_sum: Tensor, count: int) -> None:
        before = len(self.index)
        if self.in_cache:
            self.armed = True
            try:
                loss_sum.backward(inputs=self.params)
            finally:
                self.armed = False
        else:
            grads = torch.autograd.grad(loss_sum, self.params, allow_unused=True, materialize_grads=True)
            grads = [g.coalesce().to_dense() if g.is_sparse else g for g in grads]
            if self.acc is None:
                self.acc = list(grads)
            else:
                torch._foreach_add_(self.acc, grads)
            self.values.extend(torch._foreach_norm(grads))
            self.index.extend(range(len(grads)))
        self.weight.extend([1.0 / count ** 2] * (len(self.index) - before))

    def grad_sum(self) -> list[Tensor]:
        if self.acc is not None:
            return self.acc
        return [torch.zeros_like(p) if p.grad is None else p.grad.to_dense() if p.grad.is_sparse else p.grad
                for p in self.params]

    def squares(self) -> Tensor:
        """|G_b|² of every (micro-batch, parameter) entry in the order recorded, float64 on the CPU: the only copy
        from the device in a draw."""
        if not self.values:
            return torch.zeros(0, dtype=torch.float64)
        v = torch.stack(self.values).to("cpu", torch.float64)
        return (v if self.in_cache else v.square()) * torch.tensor(self.weight, dtype=torch.float64)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def accumulate(model: nn.Module, loss_fn, chunks, marks: set[int],
               in_cache: bool | None = None) -> tuple[ChunkStats, list]:
    """One draw of micro-batches by plain gradient accumulation; the same sums as ``microbatch`` chunk by chunk.

    ``marks``: the partial-sum sizes at which |Σ g|²/seen² is recorded (for the 1/B regression); all norms are
    turned into numbers once, at the end of the draw. The model's own ``.grad`` is set aside and restored, so a
    draw between training steps changes nothing. ``in_cache``: the CPU way (default: on the CPU) or the
    accelerator way (``_Norms``).
    """
    _, params = trainable(model)
    saved = [p.grad for p in params]
    norms = _Norms(params, params[0].device.type == "cpu" if in_cache is None else in_cache)
    losses, at_marks, seen, first = [], [], 0, None
    try:
        for p in params:
            p.grad = None
        for batch, count in chunks:
            loss = per_example_losses(model, loss_fn, batch, count).sum()
            norms.backward(loss, count)
            losses.append(loss.detach())
            seen += count
            del batch, loss
            if first is None:  # the partial sum of one micro-batch is its small batch
                first = (seen, len(norms.index))
            elif seen in marks:
                at_marks.append((seen, torch._foreach_norm([g for g in norms.grad_sum() if g is not None])))
        grad_sum = norms.grad_sum()
        sq = norms.squares()
    finally:
        norms.remove()
        for p, g in zip(params, saved):
            p.grad = g
    small = torch.zeros(len(params), dtype=torch.float64).index_add_(0, torch.tensor(norms.index, dtype=torch.long),
                                                                      sq)
    partial = []
    if first is not None and first[0] in marks:
        partial.append((first[0], float(sq[:first[1]].sum())))
    if at_marks:
        flat = torch.stack([x for _, n in at_marks for x in n]).to("cpu", torch.float64).square()
        totals = [float(t.sum()) for t in flat.split([len(n) for _, n in at_marks])]
        partial += [(size, t / size ** 2) for (size, _), t in zip(at_marks, totals)]
    return ChunkStats(grad_sum, small, len(losses), torch.stack(losses).sum(), seen), partial


microbatch.whole_draw = accumulate  # the probe loop runs whole micro-batch draws through ``accumulate``
