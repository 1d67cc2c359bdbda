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

import contextlib
import math

import torch
from torch import Tensor, nn

from bsprof.probes.base import ChunkStats, accum_dtype, per_example_losses, trainable


def microbatch(model: nn.Module, loss_fn, batch, count: int) -> ChunkStats:
    """|G_b|² per parameter of one micro-batch, G_b = ∇ mean_i ℓ_i, and b·G_b."""
    _, params = trainable(model)
    losses = per_example_losses(model, loss_fn, batch, count)
    loss_sum = losses.sum()
    grads = torch.autograd.grad(loss_sum, params, allow_unused=True, materialize_grads=True)
    grads = [g.to_dense() if g.is_sparse else g for g in grads]  # Embedding(sparse=True)
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
_ENGINE = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)  # what backward() calls


class _Norms:
    """|Σ_{i∈micro-batch} g_i|² per parameter of each backward, and |Σ_draw g| at the marks, with the draw's sum.

    CPU: ``.backward()`` accumulates into ``.grad`` inside the engine (a Python ``_foreach_add_`` is a slow loop
    there). A tensor hook per parameter takes one dot product of each incoming gradient while it is in cache; the
    hooks are armed only during bsprof's own backward (never inside other code's autograd calls), and registered
    once per measurement when one is open (``measurement_hooks``), else once per draw. After a backward that
    completes a mark, one dot product per parameter of the running sum ``.grad``.
    Accelerators, where every kernel launch counts: ``autograd.grad``, then one fused ``_foreach_add_`` into the
    sum and one fused ``_foreach_norm``; nothing leaves the device until the draw ends.
    On accelerators values stay 0-d tensors (one per parameter and backward; per mark, one norm per parameter) and
    become numbers once, at the end of the draw. On the CPU each square becomes a Python float in its hook
    (``.item()``, ~1 µs, no sync there): dozens of 0-d tensors held until the draw's end interleave with the
    gradients' large blocks in glibc's heap, which then trims and regrows at every backward (docs/speed.md,
    "Page faults"): ~1,000 page faults a step and +20–40% on the 300k-parameter MLP, in some runs and not others.
    """

    def __init__(self, params: list[Tensor], in_cache: bool):
        self.params = params
        self.in_cache = in_cache
        self.armed = False
        self.values: list = []  # squares (CPU: floats) or norms (accelerators: 0-d), one per parameter per backward
        self.index: list[int] = []  # which parameter each value belongs to
        self.ends: list[int] = []  # len(values) after each backward
        self.counts: list[int] = []  # the examples of each backward's micro-batch
        self.marked: list[Tensor] = []  # |running sum| per parameter at each mark before the last backward
        self.acc: list[Tensor] | None = None  # accelerators: the running sum
        self.handles = [p.register_hook(self._hook(i)) for i, p in enumerate(params)] if in_cache else []
        # plain tensors: ``loss.backward(inputs=params)`` as the engine call it makes (its Python argument handling
        # costs ~100 µs per backward on the CPU, ~5% of a small model's micro-batch); subclasses (DTensor) keep
        # the public call and its ``__torch_function__`` dispatch
        self.inputs = tuple(params)
        self.direct = (_ENGINE is not None and len(params) > 0  # (no inputs would mean every leaf)
                       and all(type(p) in (nn.Parameter, Tensor) for p in params))

    def reset(self) -> None:
        """Forget the last draw (the lists are cleared in place: the hooks hold them)."""
        self.values.clear()
        self.index.clear()
        self.ends.clear()
        self.counts.clear()
        self.marked.clear()
        self.acc = None
        self.armed = False

    def _hook(self, i: int):
        append_value, append_index = self.values.append, self.index.append  # the lists are cleared, never replaced

        def hook(g: Tensor) -> None:
            if self.armed:
                append_index(i)
                if g.is_sparse or g.dtype in _HALF:
                    append_value(_sq(g).item())
                else:  # _sq inlined: one Python call per parameter and backward, as the floor's hook
                    f = g.reshape(-1)
                    append_value(torch.dot(f, f).item())
        return hook

    def backward(self, loss_sum: Tensor, count: int, mark: bool) -> list[Tensor] | None:
        """One micro-batch. With ``mark``: returns |running sum| per parameter after it (0-d tensors: squares on the
        CPU, norms on accelerators)."""
        if self.in_cache:
            self.armed = True
            try:
                if self.direct and type(loss_sum) is Tensor:
                    _ENGINE.run_backward((loss_sum,), (torch.ones_like(loss_sum),), False, False, self.inputs, True,
                                         True)
                else:
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
        self.ends.append(len(self.values))
        self.counts.append(count)
        if not mark:
            return None
        if self.in_cache:  # CPU: a dot product per parameter beats _foreach_norm's per-tensor norm kernels there
            return [0.0 if p.grad is None else _sq(p.grad).item() for p in self.params]
        return _norms(self.acc)

    def grad_sum(self) -> list[Tensor]:
        if self.acc is not None:
            return self.acc
        return [torch.zeros_like(p) if p.grad is None else p.grad.to_dense() if p.grad.is_sparse else p.grad
                for p in self.params]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _norms(grads: list[Tensor | None]) -> list[Tensor]:
    """|g| per tensor (0 for None): dense gradients in one fused ``_foreach_norm`` per dtype group (float32 at
    least), sparse ones by their values."""
    out: list[Tensor | None] = [None] * len(grads)
    groups: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(grads):
        if g is None:
            out[i] = torch.zeros(())
        elif g.is_sparse:
            out[i] = _sq(g).sqrt()
        else:
            groups.setdefault(g.dtype, []).append(i)
    for dtype, idx in groups.items():
        norms = torch._foreach_norm([grads[i] for i in idx], dtype=torch.float32 if dtype in _HALF else None)
        for i, n in zip(idx, norms):
            out[i] = n
    return out


def _host(values: list) -> list[float]:
    """float64 numbers on the host from floats and 0-d tensors: on the CPU item by item (no stack, no copy; numpy
    on a handful of numbers costs more, cold, after a backward), elsewhere one stack and one copy, so one device
    sync (tensors on several devices: gathered on the first's)."""
    tensors = [v for v in values if isinstance(v, Tensor)]
    if not tensors:  # the CPU's squares are floats already
        return values
    if all(v.device.type == "cpu" for v in tensors):
        return [v.item() if isinstance(v, Tensor) else float(v) for v in values]
    device = tensors[0].device
    stacked = torch.stack([v.to(device) if isinstance(v, Tensor) else torch.tensor(float(v), device=device)
                           for v in values])
    return stacked.to("cpu", torch.float64).tolist()


_MEASURING: dict[int, _Norms] = {}  # id(model) → the hooks of the measurement open on it


@contextlib.contextmanager
def measurement_hooks(model: nn.Module):
    """Register the CPU draw's tensor hooks once for a whole measurement (``sampling.measure_at``): every draw
    inside reuses them (armed only during its own backward passes). Removed when the block ends. Accelerators
    (no hooks there) and a block already open on the model change nothing."""
    _, params = trainable(model)
    if not params or params[0].device.type != "cpu" or id(model) in _MEASURING:
        yield
        return
    norms = _MEASURING[id(model)] = _Norms(params, True)
    try:
        yield
    finally:
        del _MEASURING[id(model)]
        norms.remove()


def _open_norms(model: nn.Module, in_cache: bool | None) -> tuple[_Norms, bool]:
    """(hooks for this draw, whether the draw owns them): the open measurement's (its parameters are the
    measurement's), or new ones."""
    norms = _MEASURING.get(id(model))
    if norms is not None and in_cache is not False:
        norms.reset()
        return norms, False
    _, params = trainable(model)
    return _Norms(params, params[0].device.type == "cpu" if in_cache is None else in_cache), True


def accumulate(model: nn.Module, loss_fn, chunks, marks: set[int], total: int | None = None,
               in_cache: bool | None = None) -> tuple[ChunkStats, list]:
    """One draw of micro-batches by plain gradient accumulation; the same sums as ``microbatch`` chunk by chunk.

    ``marks``: the partial-sum sizes at which |Σ g|²/seen² is recorded (for the 1/B regression); ``total``: the
    draw's size when this process sees all of it, so |Σ g|² of the whole draw is taken on the last backward
    (``ChunkStats.big_sq``). The model's own ``.grad`` is set aside and restored, so a draw between training steps
    changes nothing. ``in_cache``: the CPU way (default: on the CPU) or the accelerator way (``_Norms``).
    Every number of the draw (squares, norms at the marks, losses) reaches the host in one copy, at the end.
    """
    norms, owned = _open_norms(model, in_cache)
    params = norms.params
    saved = [p.grad for p in params]
    losses, at_marks, seen, first, last = [], [], 0, None, None
    try:
        for p in params:
            p.grad = None
        for batch, count in chunks:
            loss = per_example_losses(model, loss_fn, batch, count).sum()
            after = seen + count
            mark = first is not None and (after in marks or after == total)
            sums = norms.backward(loss, count, mark)
            losses.append(loss.item() if norms.in_cache else loss.detach())  # CPU: a float (``_Norms``)
            seen = after
            del batch, loss
            if first is None:  # the partial sum of one micro-batch is its small batch
                first = seen
            elif seen == total:
                last = sums
            elif mark:
                at_marks.append(seen)
                norms.marked.extend(sums)
        grad_sum = norms.grad_sum()
        values, marked = norms.values, norms.marked
        host = _host([*values, *marked, *(last or ()), *losses])  # the draw's one copy to the host
    finally:
        if owned:
            norms.remove()
        norms.armed = False
        for p, g in zip(params, saved):
            p.grad = g
    nv, nm, nl = len(values), len(marked), 0 if last is None else len(last)
    if not norms.in_cache:  # accelerators' values are norms, the CPU's squares
        host[:nv + nm + nl] = [v * v for v in host[:nv + nm + nl]]
    # Python floats, not numpy: a few dozen numbers, where each cold numpy call after a backward costs more
    small, start, index = [0.0] * len(params), 0, norms.index
    for end, count in zip(norms.ends, norms.counts):  # |G_b|² = |Σ_micro-batch g_i|² / count²
        w = 1.0 / (count * count)
        for j in range(start, end):
            host[j] *= w
            small[index[j]] += host[j]
        start = end
    partial = [(first, math.fsum(host[:norms.ends[0]]))] if first is not None and first in marks else []
    P = len(params)
    partial += [(size, math.fsum(host[nv + P * j:nv + P * (j + 1)]) / size ** 2) for j, size in enumerate(at_marks)]
    big = None if last is None else torch.tensor(host[nv + nm:nv + nm + nl], dtype=torch.float64)
    device = losses[0].device if losses and isinstance(losses[0], Tensor) else torch.device("cpu")
    loss_sum = torch.tensor(math.fsum(host[nv + nm + nl:]), dtype=accum_dtype(device), device=device)
    small = torch.tensor(small, dtype=torch.float64)
    return ChunkStats(grad_sum, small, len(losses), loss_sum, seen, big), partial
