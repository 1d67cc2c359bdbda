"""Micro-batch probe: the mean gradient of one micro-batch of b examples. Works for every model.

Nested inside a draw of B = k·b examples it gives the small batch of the pair (McCandlish App. A.1):
|G_b|² per micro-batch, and Σ b·G_b accumulates to B·G_B. BatchNorm in train mode is fine here (its
statistics are those of the micro-batch, as in training at batch b).

Two implementations with one result:

- ``microbatch``: one chunk, through ``torch.autograd.grad`` (the plain reference, and the chunk probe that
  ``preconditioned`` wraps);
- ``accumulate``: a whole draw run like plain gradient accumulation, whose only extra work per micro-batch is
  |b·G_b|² (``_Norms``: on the CPU a dot product in a tensor hook while the gradient is in cache; on an
  accelerator one fused ``_foreach_norm``). |Σ g|² of the partial sums (1/B regression) and of the whole draw
  are taken on the backward passes that complete them, and every number reaches the host once per draw.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from bsprof.probes.base import ChunkStats, accum_dtype, per_example_losses, trainable


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
    if f.dtype in _HALF:
        f = f.float()
    return torch.dot(f, f)


_HALF = (torch.float16, torch.bfloat16)


class _Norms:
    """|Σ_{i∈micro-batch} g_i|² per parameter of each backward, and |Σ_draw g|² at the marks, with the draw's sum.

    CPU: ``.backward()`` accumulates into ``.grad`` inside the engine (a Python ``_foreach_add_`` is a slow loop
    there). Tensor hooks take a dot product of each incoming gradient while it is in cache, and post-accumulate
    hooks one of the running sum right after it is updated, on the backward passes that complete a mark. Both are
    armed only during bsprof's own backward (never inside other code's autograd calls).
    Accelerators, where every kernel launch counts: ``autograd.grad``, then one fused ``_foreach_add_`` into the
    sum and one fused ``_foreach_norm``; nothing leaves the device until the draw ends.
    Values are recorded as (parameter, 0-d tensor) and turned into numbers once, at the end of the draw.
    """

    def __init__(self, params: list[Tensor], in_cache: bool):
        self.params = params
        self.in_cache = in_cache
        self.armed = self.sum_armed = False
        self.values: list[Tensor] = []  # squares (CPU) or norms (accelerators), one per parameter per backward
        self.index: list[int] = []  # which parameter each value belongs to
        self.weight: list[float] = []  # 1/count² of its micro-batch
        self.sums: list[tuple[int, Tensor]] = []  # (parameter, |running sum|²) on a marked backward (CPU)
        self.acc: list[Tensor] | None = None  # accelerators: the running sum
        self.handles = []
        if in_cache:
            for i, p in enumerate(params):
                self.handles += [p.register_hook(self._hook(i)), p.register_post_accumulate_grad_hook(self._post(i))]

    def _hook(self, i: int):
        def hook(g: Tensor) -> None:
            if self.armed:
                self.index.append(i)
                self.values.append(_sq(g))
        return hook

    def _post(self, i: int):
        def post(p: Tensor) -> None:
            if self.sum_armed:
                self.sums.append((i, _sq(p.grad)))
        return post

    def backward(self, loss_sum: Tensor, count: int, mark: bool) -> list[Tensor] | None:
        """One micro-batch. With ``mark``: returns |running sum|² per parameter after it (None: read it later)."""
        before = len(self.index)
        if self.in_cache:
            self.sums.clear()
            self.armed, self.sum_armed = True, mark
            try:
                loss_sum.backward(inputs=self.params)
            finally:
                self.armed = self.sum_armed = False
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
        return self._sum_squares() if mark else None

    def _sum_squares(self) -> list[Tensor]:
        """|running sum|² per parameter (squares on the CPU, norms on accelerators)."""
        if not self.in_cache:
            return torch._foreach_norm(self.grad_sum())
        seen = dict(self.sums)  # a parameter without a gradient in this backward fired no post hook
        return [seen[i] if i in seen else torch.zeros(()) if p.grad is None else _sq(p.grad)
                for i, p in enumerate(self.params)]

    def grad_sum(self) -> list[Tensor]:
        if self.acc is not None:
            return self.acc
        return [torch.zeros_like(p) if p.grad is None else p.grad.to_dense() if p.grad.is_sparse else p.grad
                for p in self.params]

    def squares(self, values: list[Tensor]) -> np.ndarray:
        """float64 squares on the host: the only copy from the device in a draw."""
        if not values:
            return np.zeros(0)
        v = torch.stack(values).to("cpu", torch.float64).numpy()
        return v if self.in_cache else np.square(v)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def accumulate(model: nn.Module, loss_fn, chunks, marks: set[int], total: int | None = None,
               in_cache: bool | None = None) -> tuple[ChunkStats, list]:
    """One draw of micro-batches by plain gradient accumulation; the same sums as ``microbatch`` chunk by chunk.

    ``marks``: the partial-sum sizes at which |Σ g|²/seen² is recorded (for the 1/B regression); ``total``: the
    draw's size when this process sees all of it, so |Σ g|² of the whole draw is taken on the last backward
    (``ChunkStats.big_sq``). The model's own ``.grad`` is set aside and restored, so a draw between training steps
    changes nothing. ``in_cache``: the CPU way (default: on the CPU) or the accelerator way (``_Norms``).
    """
    _, params = trainable(model)
    saved = [p.grad for p in params]
    norms = _Norms(params, params[0].device.type == "cpu" if in_cache is None else in_cache)
    losses, at_marks, seen, first, last = [], [], 0, None, None
    try:
        for p in params:
            p.grad = None
        for batch, count in chunks:
            loss = per_example_losses(model, loss_fn, batch, count).sum()
            after = seen + count
            mark = first is not None and (after in marks or after == total)
            sums = norms.backward(loss, count, mark)
            losses.append(loss.detach())
            seen = after
            del batch, loss
            if first is None:  # the partial sum of one micro-batch is its small batch
                first = (seen, len(norms.index))
            elif seen == total:
                last = sums
            elif mark:
                at_marks.append((seen, sums))
        grad_sum = norms.grad_sum()
    finally:
        norms.remove()
        for p, g in zip(params, saved):
            p.grad = g
    sq = norms.squares(norms.values) * np.array(norms.weight)
    small = np.bincount(np.array(norms.index, dtype=np.int64), sq, len(params))
    partial = [(first[0], float(sq[:first[1]].sum()))] if first is not None and first[0] in marks else []
    if at_marks:
        flat = norms.squares([x for _, n in at_marks for x in n])
        ends = np.cumsum([len(n) for _, n in at_marks])
        partial += [(size, float(t.sum()) / size ** 2)
                    for (size, _), t in zip(at_marks, np.split(flat, ends[:-1]))]
    big = None if last is None else torch.from_numpy(norms.squares(last))
    return ChunkStats(grad_sum, torch.from_numpy(small), len(losses), torch.stack(losses).sum(), seen, big), partial

