"""Per-example probe through module hooks: Σ_i |g_i|² per parameter in the same backward pass as Σ_i g_i.

One forward with forward hooks on the known layers (``layers.RULES``) saving each call's input and hooking its
output; one backward of Σ_i ℓ_i (times ``loss_scale``), during which each output hook receives δ = ∂Σℓ/∂output
and turns (input, δ) into Σ_i |g_i|² by the layer's rule. Extra memory is O(batch) plus one layer's transient.

Parameters of other modules (a GRU, attention's packed in-projection), parameters a known layer's hooks cannot
account for (used functionally, e.g. ``F.linear(h, emb.weight)``, found by counting their uses in the autograd
graph), and layers whose input does not carry the examples on dim 0 go through torch.func (vmap over grad,
differentiating only those parameters). A parameter used by several hooked calls (tied embedding and LM head, a
layer applied twice) gets its cross terms: per-example gradients add, their squared norms do not.

Valid only when ℓ_i depends on example i alone: see ``base.batch_coupled`` and ``losses_mix_examples`` (both
read by ``probes.choose``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from bsprof.errors import ConfigError
from bsprof.probes.base import (
    ChunkStats,
    LossFn,
    accum_dtype,
    batch_coupled,
    coupled_reason,
    per_example_losses,
    trainable,
)
from bsprof.probes.layers import rule_for, sq_sum, total_sq_sum
from bsprof.probes.vmap import _Objective


def _rows(batch, start: int, stop: int):
    """Examples start..stop of a collated batch (every tensor leaf sliced on dim 0)."""
    return tree_map(lambda x: x[start:stop] if isinstance(x, Tensor) and x.dim() > 0 else x, batch)


def losses_mix_examples(model: nn.Module, loss_fn: LossFn, batch, rtol: float = 1e-4) -> bool:
    """True if example 0's loss or gradient changes when example 1 joins it (a contrastive loss, batch
    statistics, a loss normalised by the batch). Two tiny passes; dropout left on reads as mixing."""
    _, params = trainable(model)
    alone, pair = _rows(batch, 0, 1), _rows(batch, 0, 2)
    try:
        l1 = per_example_losses(model, loss_fn, alone, 1)[0]
    except Exception:  # the model cannot see one example alone: it needs the batch
        return True
    l2 = per_example_losses(model, loss_fn, pair, 2)[0]
    g1 = torch.autograd.grad(l1, params, allow_unused=True, materialize_grads=True)
    g2 = torch.autograd.grad(l2, params, allow_unused=True, materialize_grads=True)
    close = partial(torch.allclose, rtol=rtol, atol=rtol * 1e-3)
    return not (close(l1.detach(), l2.detach()) and all(close(a, b) for a, b in zip(g1, g2)))


def _graph_uses(root) -> tuple[Counter, set]:
    """Edges into each leaf's AccumulateGrad node (uses of the leaf), and every node reached from ``root``."""
    uses, seen, stack = Counter(), set(), [root] if root is not None else []
    while stack:
        for nxt, _ in stack.pop().next_functions:
            if nxt is None:
                continue
            if hasattr(nxt, "variable"):
                uses[id(nxt.variable)] += 1
            elif nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return uses, seen


class _Pass:
    """One probe call's hook state: which module owns which parameter, the calls seen, the sums made."""

    def __init__(self, model: nn.Module, params: list[Tensor], count: int):
        self.count, self.params, self.armed = count, params, False
        index = {id(p): k for k, p in enumerate(params)}
        self.owned, self.fallback = {}, set()
        for mod in model.modules():
            direct = [(n, index[id(p)]) for n, p in mod.named_parameters(recurse=False) if id(p) in index]
            if not direct:
                continue
            rule = rule_for(mod)
            if rule is None:
                self.fallback |= {index[id(p)] for p in mod.parameters() if id(p) in index}
            else:
                self.owned[mod] = (rule, direct)
        self.calls = []  # (slots, output grad_fn)
        self.expected, self.pending, self.parts, self.handles = Counter(), defaultdict(list), [], []

    def forward_hook(self, mod, args, kwargs, out):
        rule, slots = self.owned[mod]
        x = args[0] if args else next(iter(kwargs.values()))
        if not (isinstance(out, Tensor) and out.requires_grad):
            return
        if x.dim() == 0 or x.shape[0] != self.count or out.shape[0] != self.count:
            self.fallback |= {k for _, k in slots}  # examples are not on dim 0
            return
        self.calls.append((slots, out.grad_fn))
        self.handles.append(out.register_hook(partial(self.backward_hook, rule, mod, slots, x.detach())))

    def check_uses(self, losses: Tensor) -> None:
        """Send to the fallback every parameter whose graph uses differ from the hooked calls reaching the loss."""
        uses, seen = _graph_uses(losses.grad_fn)
        for slots, fn in self.calls:
            if fn in seen or fn is losses.grad_fn:
                self.expected.update(k for _, k in slots)
        for k, p in enumerate(self.params):
            if k not in self.fallback and uses[id(p)] != self.expected[k]:
                self.fallback.add(k)

    def backward_hook(self, rule, mod, slots, x, d):
        if not self.armed:  # a backward pass bsprof did not start
            return
        with torch.autocast(d.device.type, enabled=False):
            found = rule(mod, _wide(x), _wide(d))
            for name, k in slots:
                if k in self.fallback or name not in found:
                    continue
                shape = self.params[k].shape
                if self.expected[k] == 1:
                    self.parts.append((k, sq_sum(found[name], shape)))
                    continue
                self.pending[k].append(found[name])
                if len(self.pending[k]) == self.expected[k]:
                    self.parts.append((k, total_sq_sum(self.pending.pop(k), shape)))


def _wide(t: Tensor) -> Tensor:
    """At least float32 for the norm arithmetic (fp16/bf16 squares overflow or lose digits)."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def _fallback_sq(model: nn.Module, loss_fn: LossFn, batch, names: list[str], params: list[Tensor],
                 chosen: list[int], count: int) -> Tensor:
    """Σ_i |g_i|² of the ``chosen`` parameters only: torch.func where it can batch the model, else a loop."""
    try:
        return _vmap_sq(model, loss_fn, batch, names, params, chosen)
    except RuntimeError:  # no batching rule (e.g. nn.GRU's in-place hidden state under vmap)
        return _loop_sq(model, loss_fn, batch, [params[k] for k in chosen], count)


def _loop_sq(model: nn.Module, loss_fn: LossFn, batch, chosen: list[Tensor], count: int) -> Tensor:
    """Σ_i |g_i|² one example at a time: B backward passes, works for every model."""
    sq = torch.zeros(len(chosen), dtype=accum_dtype(chosen[0].device), device=chosen[0].device)
    for i in range(count):
        one = _rows(batch, i, i + 1)
        loss = per_example_losses(model, loss_fn, one, 1)[0]
        grads = torch.autograd.grad(loss, chosen, allow_unused=True, materialize_grads=True)
        sq += torch.stack([g.to(sq.dtype).square().sum() for g in grads])
    return sq


def _vmap_sq(model: nn.Module, loss_fn: LossFn, batch, names: list[str], params: list[Tensor],
             chosen: list[int]) -> Tensor:
    """Σ_i |g_i|² of the ``chosen`` parameters, by vmap over grad of one example."""
    objective = _Objective(model, loss_fn)
    sub = {"model." + names[k]: params[k].detach() for k in chosen}

    def one(weights, example):
        single = tree_map(lambda x: x.unsqueeze(0) if isinstance(x, Tensor) else x, example)
        return functional_call(objective, weights, (single,))

    with torch.no_grad():  # torch.func.grad still differentiates ``sub``; the other weights stay untracked
        grads = vmap(grad(one), in_dims=(None, 0), randomness="different")(sub, batch)
    dtype = accum_dtype(params[0].device)
    return torch.stack([g.to(dtype).square().sum() for g in grads.values()])


def per_example_hooks(model: nn.Module, loss_fn: LossFn, batch, count: int, *,
                      loss_scale: float = 1.0) -> ChunkStats:
    """Σ_i g_i and [P] Σ_i |g_i|² per trainable parameter from one backward pass of Σ_i ℓ_i.

    ``loss_scale`` (an AMP loss scale, as torch.amp.GradScaler uses) multiplies the loss before the backward
    pass, against fp16 underflow; it is removed again: gradients are divided by it, squared norms by its square.
    Norms are taken in float32 or wider and accumulated in float64 (``accum_dtype``).
    """
    coupled = batch_coupled(model)
    if coupled:
        raise ConfigError(f"{coupled_reason(coupled)}: per-example gradients are undefined",
                          "use --method microbatch (or model.eval() if BatchNorm should use its running statistics)")
    names, params = trainable(model)
    state = _Pass(model, params, count)
    handles = [m.register_forward_hook(state.forward_hook, with_kwargs=True) for m in state.owned]
    try:
        losses = per_example_losses(model, loss_fn, batch, count)
        for h in handles:
            h.remove()
        state.check_uses(losses)
        state.armed = True
        total = losses.sum()
        grads = torch.autograd.grad(total * loss_scale if loss_scale != 1.0 else total, params,
                                    allow_unused=True, materialize_grads=True)
    finally:
        state.armed = False
        for h in handles + state.handles:
            h.remove()
    dtype = accum_dtype(losses.device)
    sq = torch.zeros(len(params), dtype=dtype, device=losses.device)
    if state.parts:
        ks, parts = zip(*state.parts)
        sq.index_add_(0, torch.tensor(ks).to(sq.device, non_blocking=True), torch.stack(parts).to(dtype))
    if loss_scale != 1.0:
        grads = [g / loss_scale for g in grads]
        sq = sq / loss_scale ** 2
    if state.fallback:
        chosen = sorted(state.fallback)
        sq[chosen] = _fallback_sq(model, loss_fn, batch, names, params, chosen, count)
    return ChunkStats(list(grads), sq, count, total.detach(), count)
