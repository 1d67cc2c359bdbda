"""What a gradient probe is and returns, and the helpers probes share.

A ``Probe`` turns (model, loss_fn, one collated batch) at fixed weights into ``ChunkStats`` (its ``chunk``
function); the probe loop sums the chunks of one draw into a ``bsprof.stats.draw.Draw``. A probe may also run a
whole draw itself (``whole_draw``, e.g. micro-batches by plain gradient accumulation), with the same sums.

``loss_fn(model, batch)`` returns per-example losses of shape [batch]; the objective is their *mean*, so the
per-example gradient is g_i = ∇ℓ_i (never a sum over a batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

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
    fallbacks:    {parameter name: reason} for the parameters a fast probe measured by the slow torch.func
                  path (``hooks``), None when there are none
    """

    grad_sum: list[torch.Tensor]
    small_sq_sum: torch.Tensor
    n_small: int
    loss_sum: torch.Tensor
    count: int
    big_sq: torch.Tensor | None = None
    fallbacks: dict[str, str] | None = None


ChunkFn = Callable[[nn.Module, LossFn, Any, int], ChunkStats]
"""(model, loss_fn, batch, count) → ChunkStats of that one collated chunk of ``count`` examples."""
DrawFn = Callable[[nn.Module, LossFn, Iterable[tuple[Any, int]], set[int], int | None], tuple[ChunkStats, list]]
"""(model, loss_fn, chunks, marks, total) → (ChunkStats of the whole draw, [(size, |G_size|²) at the marks])."""


@dataclass(frozen=True)
class Probe:
    """A gradient probe of nested pairs (McCandlish App. A.1): its small batch and how it computes a draw.

    name:         as in ``--method`` and the report's ``method`` column
    per_example:  True: the small batch is one example (b = 1); False: a micro-batch of b > 1 examples
                  (every chunk the probe sees is one micro-batch)
    chunk:        one chunk → ``ChunkStats`` (always there: the reference every faster path is tested against)
    whole_draw:   optional: one whole draw of chunks → (``ChunkStats``, partial sums); used instead of ``chunk``
    measuring:    optional: model → a context manager held around all the draws of one measurement (the micro-batch
                  probe registers its hooks there once, not per draw)
    """

    name: str
    per_example: bool
    chunk: ChunkFn
    whole_draw: DrawFn | None = None
    measuring: Callable[[nn.Module], AbstractContextManager] | None = None


def batch_coupled(model: nn.Module) -> list[str]:
    """The modules that use statistics of the batch, so that example i's loss or gradient depends on the others.

    A BatchNorm in train mode, or without running statistics (``track_running_stats=False``: batch statistics in
    eval mode too); an Embedding with ``scale_grad_by_freq=True`` (each row's gradient divided by the row's frequency
    in the batch). Per-example gradients are then undefined; micro-batches stay approximately right (McCandlish
    App. A), since training at batch b takes the statistics over b examples as well.
    """
    return [f"'{name}' ({type(m).__name__})" if name else type(m).__name__ for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and (m.training or not m.track_running_stats)
            or isinstance(m, nn.Embedding) and m.scale_grad_by_freq]


def coupled_reason(names: list[str]) -> str:
    """Why per-example gradients are undefined, for the modules ``batch_coupled`` found (it starts with "BatchNorm"
    when a BatchNorm is among them: a report diagnostic tells the two apart by that)."""
    def listed(ns):
        return ", ".join(ns[:3]) + ("…" if len(ns) > 3 else "")

    scaled = [n for n in names if "Embedding" in n]
    norms = [n for n in names if n not in scaled]
    parts = ([f"BatchNorm normalises with batch statistics in the module{'s' if len(norms) > 1 else ''} "
              f"{listed(norms)} (train mode, or no running statistics)"] if norms else []) + (
             [f"an Embedding with scale_grad_by_freq=True ({listed(scaled)}) divides each row's gradient by the "
              "row's frequency in the batch"] if scaled else [])
    return "; and ".join(parts) + ", which couples the examples of a batch"


def trainable(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """Names and tensors of the parameters that require a gradient, in ``named_parameters`` order."""
    pairs = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in pairs], [p for _, p in pairs]


def accum_dtype(device: torch.device) -> torch.dtype:
    """float64 for accumulating squared norms, where the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def defined_at(fn) -> str:
    """" (file.py:line)" where a Python function is defined, "" for anything else."""
    import inspect

    try:
        code = inspect.unwrap(fn).__code__
    except AttributeError:
        return ""
    return f" ({Path(code.co_filename).name}:{code.co_firstlineno})"


def per_example_losses(model: nn.Module, loss_fn: LossFn, batch: Any, count: int) -> torch.Tensor:
    """Call the user's loss and check it returned per-example losses of shape [count]."""
    from bsprof.errors import SpecError

    losses = loss_fn(model, batch)
    if isinstance(losses, torch.Tensor) and losses.shape != (count,) and losses.dim() > 1 \
            and losses.shape[0] == count and losses[0].numel() == 1:
        losses = losses.reshape(count)  # [count, 1] (a regression's MSE with reduction='none'): one per example
    if not isinstance(losses, torch.Tensor) or losses.shape != (count,):
        return _wrong_losses(losses, loss_fn, count)
    if torch.is_grad_enabled() and not losses.requires_grad:
        raise SpecError(f"loss(model, batch){defined_at(loss_fn)} returned {losses.dtype} losses that do not depend "
                        "on the model's trainable parameters (detached, computed under torch.no_grad(), or not "
                        "floating point)", "return the losses autograd can differentiate: no .detach(), .item(), "
                        ".long() or no_grad inside loss()")
    return losses


def _wrong_losses(losses, loss_fn: LossFn, count: int):
    from bsprof.errors import SpecError

    if not isinstance(losses, torch.Tensor):
        raise SpecError(f"loss(model, batch){defined_at(loss_fn)} returned {type(losses).__name__}, not a tensor",
                        "return per-example losses: a tensor of shape [batch_size], e.g. "
                        "F.cross_entropy(model(x), y, reduction='none')")
    if count > 1 and tuple(losses.shape) == (count, count):
        raise SpecError(f"loss(model, batch){defined_at(loss_fn)} returned shape {tuple(losses.shape)} for a batch of "
                        f"{count} examples: most likely an output of shape [{count}, 1] against targets of shape "
                        f"[{count}] (or the other way round), which broadcast to [{count}, {count}] and pair every "
                        "output with every target", "give the output and the targets one shape: "
                        "F.mse_loss(model(x).squeeze(-1), y, reduction='none') (averaging over a dimension of the "
                        f"[{count}, {count}] loss would train on the wrong objective)")
    raise SpecError(f"loss(model, batch){defined_at(loss_fn)} returned shape {tuple(losses.shape)} for a batch of "
                    f"{count} examples", f"return per-example losses of shape [{count}] (use reduction='none', and "
                    "average over any other dimension such as tokens yourself); bsprof takes their mean")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block; afterwards every submodule back in its own mode (``model.train()``
    would also switch on the submodules the user left in eval, such as a frozen backbone)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
