"""Batch-size rules: the batch a rule asks for at one point of training, before rounding, clamping and dwell.

Every rule is a plain function ``rule(state, options) -> float`` in the mapping ``RULES``; ``state`` is a
``PathState`` (where training is), ``options`` the resolved ``ScheduleConfig``. ``apply_constraints`` then turns
the wish into a batch size actually used: rounded, clamped, never smaller than before, changed at most once
per ``dwell`` steps. Learning-rate rules live in ``LR_RULES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PathState:
    """Where training is: step k, loss F(w_k), noise scale B_noise(F(w_k)), current batch, start of the path."""

    step: float
    loss: float
    b_noise: float
    batch: float          # batch size in use (the previous stage's)
    loss0: float          # F(w_0)
    batch0: float         # B_0


def noise_following(s: PathState, o) -> float:
    """B ≈ B_noise(L) ≈ B_simple(L): the critical batch at the current loss (McCandlish et al. 2018, §2.2)."""
    return s.b_noise


def mccandlish(s: PathState, o) -> float:
    """B = √(r·B_noise): minimises steps + examples/r per unit of progress (McCandlish et al. 2018, App. D).

    With S = S_min(1 + B_n/B), E = E_min(1 + B/B_n) per unit of minimal steps, d/dB [B_n/B + B/r] = 0.
    ``r`` (``--exchange-rate``) is the number of examples one step is worth.
    """
    return math.sqrt(o.exchange_rate * s.b_noise)


def adadamp(s: PathState, o) -> float:
    """AdaDamp: B_k = ⌈B_0 (F(w_0) − F*)/(F(w_k) − F*)⌉ (Sievert & Shah 2021, arXiv 1910.08222, eq. 4)."""
    gap = max(s.loss - o.f_star, 1e-12)
    return math.ceil(s.batch0 * (s.loss0 - o.f_star) / gap)


def padadamp(s: PathState, o) -> float:
    """PadaDamp: B_k = B_0 + ⌈ρ·k⌉, ρ = ``--rate`` examples per step (Sievert & Shah 2021)."""
    return s.batch0 + math.ceil(o.rate * s.step)


def geodamp(s: PathState, o) -> float:
    """GeoDamp: multiply B by ``--factor`` every ``--every`` steps (Sievert & Shah 2021; Smith et al. 2017)."""
    return s.batch0 * o.factor ** math.floor(s.step / o.every)


def doubling(s: PathState, o) -> float:
    """Doubling warm-up: double B whenever the critical batch exceeds 2B (Merrill et al. 2025)."""
    b = s.batch
    while s.b_noise > 2 * b:
        b *= 2
    return b


RULES = {"noise": noise_following, "mccandlish": mccandlish, "adadamp": adadamp, "padadamp": padadamp,
         "geodamp": geodamp, "doubling": doubling}


# -- rounding and constraints ------------------------------------------------------------------------------
def round_batch(b: float, multiple_of: int = 0, quantum: int = 1) -> int:
    """Nearest power of two in log scale (``multiple_of`` = 0), else the nearest positive multiple; in whole
    ``quantum``s (a sequence's tokens in a tokens schedule): quantum × 2^k, or multiples of
    lcm(multiple_of, quantum)."""
    q = max(int(quantum), 1)
    if multiple_of <= 0:
        return q * 2 ** int(round(math.log2(max(float(b) / q, 1.0))))
    m = math.lcm(multiple_of, q)
    return max(m, int(round(max(float(b), 1.0) / m)) * m)


def bounds(min_batch: int, max_batch: int, multiple_of: int = 0, quantum: int = 1) -> tuple[int, int]:
    """[min, max] moved onto the rounding grid (min up, max down) where the grid has a point inside."""
    q = max(int(quantum), 1)
    if multiple_of <= 0:
        lo = q * 2 ** max(0, math.ceil(math.log2(min_batch / q)))
        hi = q * 2 ** math.floor(math.log2(max_batch / q)) if max_batch >= q else 0
    else:
        m = math.lcm(multiple_of, q)
        lo, hi = m * max(1, math.ceil(min_batch / m)), m * math.floor(max_batch / m)
    return (lo, hi) if lo <= hi else (min_batch, max_batch)


def apply_constraints(wish: float, previous: int | None, step: float, last_change: float, o, quantum: int = 1) -> int:
    """Round (in whole ``quantum``s), clamp to [min, max], never shrink, and keep a batch at least ``dwell`` steps
    (no flapping)."""
    lo, hi = bounds(o.min_batch, o.max_batch, o.multiple_of, quantum)
    b = min(max(round_batch(wish, o.multiple_of, quantum), lo), hi)
    if previous is None:
        return b
    if b <= previous or step - last_change < o.dwell:
        return previous
    return b


# -- learning rate -----------------------------------------------------------------------------------------
def lr_linear(lr0: float, batch: float, batch_train: float, b_noise: float) -> float:
    """SGD: ε_opt(B) = ε_max/(1 + B_noise/B) (McCandlish et al. 2018, eq. 2.6), normalised so ε(B_train) = lr0:
    lr(B) = lr0·(1 + B_noise/B_train)/(1 + B_noise/B) — linear scaling for B ≪ B_noise, saturating above."""
    return lr0 * (1 + b_noise / batch_train) / (1 + b_noise / batch)


def lr_sqrt(lr0: float, batch: float, batch_train: float, b_noise: float) -> float:
    """Adam/AdamW: lr(B) = lr0·√(min(B, B_noise)/min(B_train, B_noise)) — square-root scaling (Malladi et al.
    2022) up to the noise scale, flat above it, where Adam's optimal lr stops rising (it peaks near B_noise: Li et
    al. 2024, "Surge phenomenon"); plain lr0·√(B/B_train) when B_noise is unknown (0 or not finite)."""
    if b_noise > 0 and math.isfinite(b_noise):
        return lr0 * math.sqrt(min(batch, b_noise) / min(batch_train, b_noise))
    return lr0 * math.sqrt(batch / batch_train)


def lr_none(lr0: float, batch: float, batch_train: float, b_noise: float) -> float:
    """The learning rate stays lr0."""
    return lr0


LR_RULES = {"linear": lr_linear, "sqrt": lr_sqrt, "none": lr_none}
EXTRAPOLATED = 2.0   # an lr above this × the probed lr is named as an extrapolation (``extrapolation_note``)


def extrapolation_note(lr: float, batch: float, lr0: float, stage: str = "", steps: str = "the first steps") -> str:
    """A note when a rule's lr is above EXTRAPOLATED × the probed lr0 ("" when not): what the rule rests on there.

    Why a note and no cap by default (eleventh session): a cap of 2 × lr0, the old default, held the schedule's lr
    at 2× the probe's on a next-character LM probed at batch 32 and cost 2.3–3× the steps of the same batch at its
    tuned lr, while the rules' own lrs were 0.72–1.04× the tuned lrs on all four trained tasks (up to 8.5× the
    probe's lr; docs/science.md §6). The cap dates from the unsaturated linear rule, which overshot on MNIST.
    ``stage``: where that lr applies, in words (a schedule's stage); ``steps``: the steps that may diverge."""
    if not lr > EXTRAPOLATED * lr0:
        return ""
    return (f"the rule's lr {lr:.4g} at batch {batch:,.0f}{f' ({stage})' if stage else ''} is {lr / lr0:.2g} × the "
            f"probed lr {lr0:.4g}: an extrapolation; on four trained tasks the rules' lrs were 0.72–1.04× the tuned "
            f"ones up to 8.5× the probe's (docs/science.md §6); if {steps} diverge, use --lr-cap 2 or probe at a "
            "batch nearer this one")


def resolve_lr_rule(rule: str, optimizer: str | None) -> str:
    """``auto``: linear for SGD (or no optimizer recorded), sqrt for Adam-like optimizers, else none."""
    if rule != "auto":
        return rule
    name = (optimizer or "SGD").lower()
    if name in ("sgd",):
        return "linear"
    if "adam" in name or name in ("lamb", "lion"):
        return "sqrt"
    return "none"
