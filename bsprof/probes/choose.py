"""The one place that decides which probe measures a model (``--method``), and why.

    auto         hooks (per-example, b = 1) when per-example gradients are the training gradient's parts; else
                 microbatch, with the reason (``per_example_invalid``) for the report's diagnostic
    per_example  hooks; an error when per-example gradients are invalid
    hooks, vmap  that probe; an error when per-example gradients are invalid
    microbatch   micro-batches, always valid (nothing is checked)
"""

from __future__ import annotations

from torch import nn

from bsprof.errors import BsprofError
from bsprof.probes import PROBES
from bsprof.probes.base import LossFn, Probe, batch_coupled, coupled_reason, per_example_losses
from bsprof.probes.hooks import losses_mix_examples


def per_example_invalid(model: nn.Module, loss_fn: LossFn | None = None, pair=None) -> str | None:
    """Why per-example gradients are not the training gradient's parts (None when they are).

    BatchNorm normalising with batch statistics couples a batch's examples (``base.batch_coupled``); so does a loss
    that mixes them (contrastive, normalised by the batch): example 0's loss and gradient must not change when
    example 1 joins it (checked on ``pair``, a collated batch of two, in eval mode so that dropout does not read as
    mixing). A message about BatchNorm starts with "BatchNorm".
    """
    coupled = batch_coupled(model)
    if coupled:
        return coupled_reason(coupled)
    if loss_fn is not None and pair is not None and _mixes(model, loss_fn, pair):
        return "the loss of one example changes when another joins the batch (the loss mixes examples)"
    return None


def _mixes(model: nn.Module, loss_fn: LossFn, pair) -> bool:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        per_example_losses(model, loss_fn, pair, 2)  # a wrong shape is the user's to fix, not "mixing"
        return losses_mix_examples(model, loss_fn, pair)
    finally:
        for m, training in modes.items():
            m.train(training)


def choose(method: str, model: nn.Module, loss_fn: LossFn | None = None, pair=None) -> tuple[Probe, str | None]:
    """The probe for ``method`` (module docstring) and, when per-example gradients are invalid for this model and
    loss, why (None when they are valid, or when ``method`` is microbatch and nothing was checked)."""
    if method not in (*PROBES, "auto", "per_example"):
        raise BsprofError(f"unknown --method {method!r}", f"use one of auto, per_example, {', '.join(PROBES)}")
    invalid = None if method == "microbatch" else per_example_invalid(model, loss_fn, pair)
    if method == "auto":
        return (PROBES["microbatch"], invalid) if invalid else (PROBES["hooks"], None)
    probe = PROBES["hooks" if method == "per_example" else method]
    if probe.per_example and invalid:
        raise BsprofError(f"--method {method} needs per-example gradients, but {invalid}",
                          "use --method microbatch (or auto)")
    return probe, invalid


def reason(method: str, probe: Probe, invalid: str | None) -> str:
    """Which rule of ``choose`` picked ``probe``, in words (``bsprof measure --verbose``)."""
    if method != "auto":
        return f"asked with --method {method}"
    if invalid:
        return f"auto: {invalid}, so micro-batches"
    return "auto: per-example gradients are valid (no batch-coupled layer; the loss does not mix examples)"


__all__ = ["choose", "per_example_invalid", "reason"]
