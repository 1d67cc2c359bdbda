"""The slow exact reference: every per-example gradient of a small dataset through torch.func.

    G = (1/n) Σ g_i,   Σ = (1/n) Σ (g_i − G)(g_i − G)ᵀ,   tr(Σ) = (1/n) Σ|g_i|² − |G|²,   B_simple = tr(Σ)/|G|²

Obviously right and O(n × parameters) in memory per chunk: for tests and validation scripts only. A model torch.func
cannot batch (an RNN) is taken one example at a time, one backward each.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import default_collate

from bsprof.probes.vmap import per_example_grads


def exact_noise_scale(model: nn.Module, loss_fn, dataset, collate=None, chunk: int = 256) -> dict:
    """|G|², tr(Σ), B_simple and the mean loss over the whole dataset, in float64."""
    collate = collate or default_collate
    n = len(dataset)
    sq_sum, grad_sum, loss_sum = 0.0, None, 0.0
    for start in range(0, n, chunk):
        items = [dataset[i] for i in range(start, min(start + chunk, n))]
        try:
            grads, losses = per_example_grads(model, loss_fn, collate(items))
            flat = torch.cat([g.reshape(g.shape[0], -1).double() for g in grads.values()], dim=1)  # 0-d params too
        except RuntimeError:  # a model torch.func cannot batch (nn.GRU's in-place state): one example at a time
            flat, losses = _one_at_a_time(model, loss_fn, [collate([item]) for item in items])
        sq_sum += float(flat.square().sum())
        grad_sum = flat.sum(0) if grad_sum is None else grad_sum + flat.sum(0)
        loss_sum += float(losses.double().sum())
    g2 = float((grad_sum / n).square().sum())
    trace = sq_sum / n - g2
    return {"g2": g2, "trace_sigma": trace, "b_simple": trace / g2, "loss": loss_sum / n, "n": n}


def _one_at_a_time(model: nn.Module, loss_fn, batches: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example gradients [c, parameters] (float64) and losses [c] by one backward per single-example batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows, losses = [], []
    for batch in batches:
        loss = loss_fn(model, batch).reshape(-1)[0]
        grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
        rows.append(torch.cat([g.reshape(-1).double() for g in grads]))
        losses.append(loss.detach())
    return torch.stack(rows), torch.stack(losses)
