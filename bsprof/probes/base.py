"""What every gradient probe returns, and the helpers they share.

A probe turns (model, loss_fn, one collated batch) at fixed weights into ``ChunkStats``. The probe loop sums
chunks into one draw (see ``bsprof.stats.Draw``). ``loss_fn(model, batch)`` returns per-example losses of shape
[batch]; the objective is their *mean*, so the per-example gradient is g_i = ∇ℓ_i (never a sum over a batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class ChunkStats:
    """Statistics of one collated chunk of ``count`` examples.

    grad_sum:     Σ_i g_i over the chunk, one fresh tensor per trainable parameter (= count · mean gradient);
                  the caller owns them and may accumulate into them in place
    small_sq_sum: [P] Σ over the chunk's small batches of |G_b|², per trainable parameter (on the device, or
                  float64 on the CPU)
                  (per-example probes: Σ_i |g_i|², b = 1; micro-batch probe: |G_b|² of the chunk, b = count)
    n_small:      how many small batches the chunk holds (count for per-example probes, 1 for micro-batches)
    loss_sum:     Σ_i ℓ_i (a 0-d tensor, kept on the device)
    big_sq:       optional [P] |grad_sum|² per parameter, when the probe took it already (float64, CPU)
    """

    grad_sum: list[torch.Tensor]
    small_sq_sum: torch.Tensor
    n_small: int
    loss_sum: torch.Tensor
    count: int
    big_sq: torch.Tensor | None = None


def trainable(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """Names and tensors of the parameters that require a gradient, in ``named_parameters`` order."""
    pairs = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in pairs], [p for _, p in pairs]


def accum_dtype(device: torch.device) -> torch.dtype:
    """float64 for accumulating squared norms, where the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def per_example_losses(model: nn.Module, loss_fn: LossFn, batch: Any, count: int) -> torch.Tensor:
    """Call the user's loss and check it returned per-example losses of shape [count]."""
    from bsprof.errors import SpecError

    losses = loss_fn(model, batch)
    if not isinstance(losses, torch.Tensor):
        raise SpecError(f"loss(model, batch) returned {type(losses).__name__}, not a tensor",
                        "return per-example losses: a tensor of shape [batch_size], e.g. "
                        "F.cross_entropy(model(x), y, reduction='none')")
    if losses.shape != (count,):
        raise SpecError(f"loss(model, batch) returned shape {tuple(losses.shape)} for a batch of {count} examples",
                        f"return per-example losses of shape [{count}] (use reduction='none', and average over "
                        "any other dimension such as tokens yourself); bsprof takes their mean")
    return losses
