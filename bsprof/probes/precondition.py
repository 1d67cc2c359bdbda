"""The preconditioned noise scale B_pre = tr(PΣ)/(GᵀPG) (Pollux/AdaptDL; docs/science.md §2 "Adam").

With a diagonal preconditioner P, the noise scale that matters for the update P·G_B is that of the rescaled
gradients P^{1/2}g: |G|²_P = GᵀPG, tr(Σ_P) = tr(PΣ). So a probe that multiplies every per-example (or
micro-batch) gradient elementwise by √P before its squared norm, and the same estimators, give B_pre.
P = I gives B_simple exactly.

For Adam/AdamW, P = diag(1/(√v̂ + ε)) with v̂ = exp_avg_sq/(1 − β₂^t) the bias-corrected running second moment
(``max_exp_avg_sq`` with amsgrad). Choice at step 0, when the optimizer has no state yet: B_pre is reported as
not available (NaN, with a note) rather than guessed from the measurement's own gradients, because Adam's v̂ is
an average over the training batches of past steps, which do not exist yet.
The hooks probe cannot weight per-example gradients elementwise; B_pre falls back to micro-batches there
(``preconditioned`` of any probe but vmap is the weighted micro-batch probe).
"""

from __future__ import annotations

import torch
from torch import nn

from bsprof.probes.base import ChunkStats, LossFn, Probe, accum_dtype, per_example_losses, trainable
from bsprof.probes.vmap import per_example_grads


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """P per parameter from Adam's state, or None when the state is empty (before the first step)."""
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for p in params:
        state, group = optimizer.state.get(p, {}), groups.get(id(p))
        if group is None or "exp_avg_sq" not in state:
            return None
        v = state.get("max_exp_avg_sq", state["exp_avg_sq"]) if group.get("amsgrad") else state["exp_avg_sq"]
        step = float(state["step"])
        v_hat = v.detach().double() / (1.0 - group["betas"][1] ** step)
        out.append((1.0 / (v_hat.sqrt() + group["eps"])).to(p.dtype))
    return out


def preconditioned(base: Probe, p: list[torch.Tensor]) -> Probe:
    """A probe like ``base`` whose gradients are multiplied elementwise by √P before any norm: per-example through
    torch.func when ``base`` is vmap, else micro-batches (hooks cannot weight per-example gradients elementwise)."""
    root = [q.sqrt() for q in p]

    def per_example(model: nn.Module, loss_fn: LossFn, batch, count: int) -> ChunkStats:
        grads, losses = per_example_grads(model, loss_fn, batch)
        if losses.shape != (count,):
            per_example_losses(model, loss_fn, batch, count)  # raises the shape error
        scaled = [g * r for g, r in zip(grads.values(), root)]
        dtype = accum_dtype(losses.device)
        sq = torch.stack([g.to(dtype).square().sum() for g in scaled])
        return ChunkStats([g.sum(0) for g in scaled], sq, count, losses.sum().detach(), count)

    def microbatch(model: nn.Module, loss_fn: LossFn, batch, count: int) -> ChunkStats:
        _, params = trainable(model)
        losses = per_example_losses(model, loss_fn, batch, count)
        grads = torch.autograd.grad(losses.sum(), params, allow_unused=True, materialize_grads=True)
        scaled = [g * r for g, r in zip(grads, root)]
        sq = torch.stack(torch._foreach_norm(scaled)).to(accum_dtype(losses.device)).square() / count ** 2
        return ChunkStats(scaled, sq, 1, losses.sum().detach(), count)

    if base.name == "vmap":
        return Probe("vmap_preconditioned", True, per_example)
    return Probe("microbatch_preconditioned", False, microbatch)
