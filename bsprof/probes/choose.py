"""The one place that decides which probe measures a model (``--method``), and why.

    auto         when per-example gradients are the training gradient's parts, both hooks (b = 1) and micro-batches
                 are exact: a short timed trial picks the cheaper per unit of precision (``probes.trial``; hooks
                 when no trial can run); else microbatch, with the reason (``per_example_invalid``) for the
                 report's diagnostic
    per_example  hooks; an error when per-example gradients are invalid
    hooks, vmap  that probe; an error when per-example gradients are invalid
    microbatch   micro-batches, always valid (nothing is checked)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from bsprof.errors import BsprofError, ConfigError
from bsprof.probes import PROBES
from bsprof.probes.base import LossFn, Probe, batch_coupled, coupled_reason, eval_mode, per_example_losses
from bsprof.probes.hooks import fallback_text, fallbacks, losses_mix_examples
from bsprof.probes.trial import prefer, time_draws


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
    if pair is not None and not _examples_on_dim0(pair):
        return UNSPLIT
    failure: list = []
    if loss_fn is not None and pair is not None and _mixes(model, loss_fn, pair, failure):
        return _mixing_text(failure)
    return None


MIXING = "the loss of one example changes when another joins the batch (the loss mixes examples)"


def _mixing_text(failure: list) -> str:
    """Why per-example gradients are invalid when the mixing check says so: the loss raised on one example alone
    (its error kept: it may be the user's bug, not mixing), or the two losses differed."""
    if failure:
        return (f"loss(model, batch) failed on one example alone ({failure[0]}), so each example's loss cannot be "
                "taken on its own (a model that needs the batch; or fix the loss if that is a bug)")
    return MIXING


UNSPLIT = ("the collated batch does not hold the examples on dim 0 of every tensor (a custom collate: EmbeddingBag "
           "offsets, packed sequences, a tensor shared by the batch), which per-example gradients need")


def _examples_on_dim0(pair) -> bool:
    """Every tensor of a collated batch of two examples has them on dim 0 (so one example is a slice of it)."""
    from torch import Tensor
    from torch.utils._pytree import tree_leaves

    return all(x.dim() > 0 and x.shape[0] == 2 for x in tree_leaves(pair) if isinstance(x, Tensor))


def training_pairs(model: nn.Module, loss_fn: LossFn, pair) -> tuple[str | None, str | None]:
    """Where the probe's training steps get their nested pairs, whichever probe measures at fixed weights: (source,
    why). "per_example" (b = 1) when per-example gradients are valid; "accumulation" (micro-batches) when BatchNorm
    couples the examples but the loss does not (checked in eval mode, where BatchNorm uses its running
    statistics); None when the loss mixes examples: a micro-batch's loss is then another loss."""
    failure: list = []
    try:
        mixes = pair is not None and _examples_on_dim0(pair) and _mixes(model, loss_fn, pair, failure)
    except ConfigError:  # a loss summed over the batch: the user's to fix
        raise
    except Exception:  # noqa: BLE001 - a model that cannot run on two examples: its probe choice said why
        mixes = False
    if mixes:
        return None, _mixing_text(failure)
    if pair is not None and not _examples_on_dim0(pair):
        return "accumulation", UNSPLIT
    coupled = batch_coupled(model)
    return ("accumulation", coupled_reason(coupled)) if coupled else ("per_example", None)


def _mixes(model: nn.Module, loss_fn: LossFn, pair, failure: list | None = None) -> bool:
    with eval_mode(model):
        per_example_losses(model, loss_fn, pair, 2)  # a wrong shape is the user's to fix, not "mixing"
        return losses_mix_examples(model, loss_fn, pair, failure=failure)


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


@dataclass(frozen=True)
class Choice:
    """The probe ``decide`` picked, and why.

    invalid:    why per-example gradients are invalid (None when valid, or unchecked for ``--method microbatch``)
    why:        which rule picked the probe, in words (``--verbose``, the report's ``method_reason``)
    fallbacks:  {parameter: reason} the hooks measure by torch.func (empty unless the probe is hooks)
    seconds:    the trial's seconds per draw {probe name: seconds}, when a trial ran
    """

    probe: Probe
    invalid: str | None
    why: str
    fallbacks: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] | None = None


def decide(method: str, model: nn.Module, loss_fn: LossFn | None = None, pair=None, *, draw=None,
           micro_batch: int = 8, strict: bool = False, seconds: dict[str, float] | None = None) -> Choice:
    """``choose``, plus what the hooks would send to torch.func (found on ``pair``, one forward pass) and, for
    auto with valid per-example gradients, the timed trial (``probes.trial``).

    draw:     the trial's draw: (chunks of one example set for hooks, the same examples in micro-batches of
              ``micro_batch``, their number), or None: no trial, hooks are kept
    strict:   any parameter the hooks would measure by torch.func is an error (``BsprofError``), before anything
              runs on the model; under auto, micro-batches (exact, no slow path) are taken instead
    seconds:  the trial's seconds per draw, given instead of timed (tests)
    """
    probe, invalid = choose(method, model, loss_fn, pair)
    slow = fallbacks(model, loss_fn, pair, 2) if probe.name == "hooks" and pair is not None else {}
    if strict and slow and method == "auto":
        return Choice(PROBES["microbatch"], None, f"auto with --strict: the hooks would measure {len(slow)} "
                      "parameter(s) by the slow torch.func path, so micro-batches")
    if strict and slow:
        functional = any("applied functionally" in why for why in slow.values())
        raise BsprofError(f"strict: {len(slow)} parameter(s) would be measured by the slow torch.func path: "
                          f"{fallback_text(slow)}",
                          ("for a weight applied functionally (F.linear(h, emb.weight)), tie an nn.Linear to it "
                           "instead (head.weight = emb.weight; a transposed tie, F.linear(h, enc.weight.t()), has "
                           "no layer form); for a layer without a rule, " if functional else "")
                          + "register a per-example rule for the layer with bsprof.probes.register_rule(Layer, rule) "
                          "(see its docstring), or drop --strict to accept the slow path (the report lists it)")
    why = reason(method, probe, invalid)
    trial = method == "auto" and not invalid and micro_batch >= 2 and (draw is not None or seconds is not None)
    if not trial:
        return Choice(probe, invalid, why, slow)
    if seconds is None:
        hooks_chunks, micro_chunks, total = draw
        try:
            seconds = time_draws({"hooks": (PROBES["hooks"], hooks_chunks),
                                  "microbatch": (PROBES["microbatch"], micro_chunks)}, model, loss_fn, total)
        except Exception as e:  # the user's loss failed on these examples, not on the first two: say which phase
            e.bsprof_phase = f"timing the probes (--method auto) on a draw of the first {total} examples"
            raise
        total_examples = total
    else:
        total_examples = draw[2] if draw is not None else 0
    name, why = prefer(seconds, slow, micro_batch, total_examples)
    return Choice(PROBES[name], None, f"auto: per-example gradients are valid; {why}",
                  slow if name == "hooks" else {}, dict(seconds))


def reason(method: str, probe: Probe, invalid: str | None) -> str:
    """Which rule of ``choose`` picked ``probe``, in words (``bsprof measure --verbose``)."""
    if method != "auto":
        return f"asked with --method {method}"
    if invalid:
        return f"auto: {invalid}, so micro-batches"
    return "auto: per-example gradients are valid (no batch-coupled layer; the loss does not mix examples)"


__all__ = ["Choice", "choose", "decide", "per_example_invalid", "reason", "training_pairs"]
