"""Per-example probe through torch.func: vmap over grad. Slow, memory O(batch × parameters), obviously right.

It is the reference every fast path is tested against, and the fallback for modules the hooks do not know.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_map

from bsprof.errors import ConfigError
from bsprof.probes.base import ChunkStats, LossFn, accum_dtype, per_example_losses, trainable


class _Objective(nn.Module):
    """Wraps (model, loss_fn) so that functional_call swaps the weights the user's loss sees."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return per_example_losses(self.model, self.loss_fn, batch, 1)[0]


@contextlib.contextmanager
def quiet_fallbacks():
    """torch.func's "There is a performance drop because we have not yet implemented the batching rule for …":
    bsprof reports which parameters took its slow path itself (``ChunkStats.fallbacks``, the report's notes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        yield


def plain_fields(batch) -> list[str]:
    """The fields of a collated batch that are not tensors (a list of strings or lengths): vmap cannot map them."""
    if isinstance(batch, dict):
        return [repr(k) for k, v in batch.items() if not isinstance(v, torch.Tensor)]
    if isinstance(batch, (list, tuple)):
        return [f"item {i}" for i, v in enumerate(batch) if not isinstance(v, torch.Tensor)]
    return []


def per_example_grads(model: nn.Module, loss_fn: LossFn, batch) -> tuple[dict, torch.Tensor]:
    """All per-example gradients {name: [c, *shape]} and losses [c], by vmap(grad) over the batch."""
    names, params = trainable(model)
    objective = _Objective(model, loss_fn)

    def one(weights, example):
        single = tree_map(lambda x: x.unsqueeze(0) if isinstance(x, torch.Tensor) else x, example)
        return functional_call(objective, {"model." + k: v for k, v in weights.items()}, (single,))

    weights = {n: p.detach() for n, p in zip(names, params)}
    with quiet_fallbacks():
        grads, losses = vmap(grad_and_value(one), in_dims=(None, 0), randomness="different")(weights, batch)
    return grads, losses


def per_example_vmap(model: nn.Module, loss_fn: LossFn, batch, count: int) -> ChunkStats:
    """Σ_i |g_i|² per parameter and Σ_i g_i, from all per-example gradients. A model torch.func cannot batch (its
    loss runs, but not under vmap) is a ``ConfigError`` that names the other methods, not a fault in the spec."""
    try:
        grads, losses = per_example_grads(model, loss_fn, batch)
    except (RuntimeError, ValueError) as e:   # ValueError: vmap's own complaints about its inputs
        per_example_losses(model, loss_fn, batch, count)  # the user's own error, if it is one, surfaces here
        plain = plain_fields(batch) if isinstance(e, ValueError) else []
        if plain:
            raise ConfigError(f"torch.func cannot map over the batch's field(s) that are not tensors "
                              f"({', '.join(plain[:3])}): --method vmap slices tensors only",
                              "use --method auto or hooks (they split such fields with the tensors), or "
                              "--method microbatch") from e
        raise ConfigError(f"torch.func cannot batch this model's per-example gradients ({str(e).splitlines()[0]})",
                          "use --method hooks (a per-example loop covers such layers) or --method microbatch") from e
    if losses.shape != (count,):
        per_example_losses(model, loss_fn, batch, count)  # raises the shape error
    dtype = accum_dtype(losses.device)
    sq = torch.stack([g.to(dtype).square().sum() for g in grads.values()])
    return ChunkStats([g.sum(0) for g in grads.values()], sq, count, losses.sum().detach(), count)
