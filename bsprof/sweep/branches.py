"""The branched-run engine: from one set of starting weights, train short runs at several batch sizes (and learning
rates), evaluate each on one fixed draw of the dataset, and hand the rows to the pure fits (``sweep.fit``).

    local   every branch trains on the same number of EXAMPLES (so B·2^k takes 2^-k as many steps);
            critical batch = the largest B whose final loss is within the tolerance of the smallest B's.
    global  every branch trains until the evaluation loss reaches a target; S(B) = S_min(1 + B_crit/B) is fitted.

A result is rebuilt and handed to ``on_result`` after every finished branch, so an interrupted or failed sweep
keeps what it measured (``incomplete`` says why it stopped). The user's model is never touched: every branch
builds its own from the spec.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import IterableDataset, Subset

from bsprof.config import DEFAULT_LR
from bsprof.engine.data import Examples
from bsprof.engine.loop import load_checkpoint, pick_device, train_step
from bsprof.engine.spec import Spec, build_dataset, build_model, build_optimizer
from bsprof.errors import BsprofError, ConfigError, DataError, NonFiniteError
from bsprof.gate.policy import lr_rule as optimizer_lr_rule
from bsprof.probes.base import eval_mode, per_example_losses
from bsprof.sweep import fit
from bsprof.sweep.config import EVAL_EXAMPLES, SweepConfig
from bsprof.sweep.result import Branch, SweepResult

Progress = Callable[[str, dict], None]
EVAL_CHUNK = 256


class TargetNotReached(BsprofError):
    """Too few batch sizes reached the target loss to fit S(B); ``result`` holds what was measured."""

    def __init__(self, message: str, hint: str, result: SweepResult):
        super().__init__(message, hint)
        self.result = result


class _Stop(Exception):
    """A whole-sweep budget is spent (``--max-seconds``, ``--max-examples``)."""


@dataclass
class _Setup:
    spec: Spec
    cfg: SweepConfig
    device: torch.device
    train: object
    eval_batches: list
    n_eval: int
    base_lr: float
    optimizer: str
    rule: str
    b_noise: float | None
    init: dict = field(default_factory=dict)
    held_out: bool = False
    initial_loss: float = math.nan
    n_data: int = 0                  # the dataset's examples
    eval_capped: bool = False        # the default evaluation draw was capped at a quarter of the dataset
    warnings: list = field(default_factory=list)   # said first (a report from an edited spec, an untuned lr)
    mode_layers: tuple = ()          # layer types whose output differs in train and eval mode (Dropout, BatchNorm)

    @property
    def n_train(self) -> int:
        return self.n_data - self.n_eval if self.held_out else self.n_data


@dataclass
class _Budget:
    max_seconds: float
    max_examples: int
    t0: float = field(default_factory=time.perf_counter)
    train_examples: int = 0
    eval_examples: int = 0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def tick(self) -> None:
        if self.seconds > self.max_seconds:
            raise _Stop(f"the --max-seconds budget ({self.max_seconds:g} s) was spent")

    def examples_left(self) -> float:
        return self.max_examples - self.train_examples if self.max_examples else math.inf


# -- set-up ------------------------------------------------------------------------------------------------
def prepare(spec: Spec, cfg: SweepConfig, b_noise: float | None = None) -> _Setup:
    """Device, the fixed evaluation draw (held out of training unless ``holdout`` is off), the starting weights of
    every seed, and the optimizer's learning rate and scaling rule."""
    device = pick_device(cfg.device)
    data = build_dataset(spec)
    if isinstance(data, IterableDataset):
        raise DataError("bsprof sweep needs a map-style dataset (a fixed evaluation draw, shuffled epochs); "
                        "dataset() returned an IterableDataset", "return a map-style Dataset (e.g. TensorDataset)")
    n = len(data)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=gen).tolist()
    asked = EVAL_EXAMPLES if cfg.eval_examples is None else cfg.eval_examples
    n_eval = n if asked == 0 or asked >= n else asked
    capped = cfg.eval_examples is None and cfg.holdout and 2 * n_eval > n   # the default would halve the data
    if capped:
        n_eval = max(1, n // 4)
    held_out = cfg.holdout and n_eval < n
    train = Subset(data, perm[n_eval:]) if held_out else data
    largest = cfg.batch_sizes()[-1]
    if largest > len(train):
        raise ConfigError(f"the largest batch ({largest}) exceeds the {len(train)} training examples"
                          + (f" ({n_eval} of {n} are held out for evaluation)" if held_out else ""),
                          "use smaller --batches/--doublings, fewer --eval-examples, or --no-holdout")
    ex = Examples(data, spec.collate, device, gen)
    eval_batches = list(ex.batches(perm[:n_eval], EVAL_CHUNK))
    init = {}
    for s in range(cfg.seeds):
        torch.manual_seed(cfg.seed + s)
        model = build_model(spec)
        if cfg.checkpoint:
            load_checkpoint(model, cfg.checkpoint)
        init[s] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(spec, model, DEFAULT_LR if cfg.lr is None else cfg.lr)
    name = type(opt).__name__
    rule = optimizer_lr_rule(name) or "none" if cfg.lr_rule == "auto" else cfg.lr_rule
    b_noise = cfg.b_noise or b_noise
    return _Setup(spec, cfg, device, train, eval_batches, n_eval, float(opt.param_groups[0]["lr"]), name, rule,
                  b_noise if rule in ("linear", "sqrt") and b_noise else None, init, held_out, n_data=n,
                  eval_capped=capped, mode_layers=mode_layers(model))


def mode_layers(model: nn.Module) -> tuple[str, ...]:
    """The layer types of ``model`` whose output differs between train and eval mode: dropout (off in eval) and
    batch normalisation (running statistics in eval), sorted, once each."""
    kinds = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
    return tuple(sorted({type(m).__name__ for m in model.modules() if isinstance(m, kinds)
                         and not (isinstance(m, nn.modules.dropout._DropoutNd) and m.p == 0)}))


def _model(setup: _Setup, seed: int, factor: float):
    model = build_model(setup.spec).to(setup.device)
    model.load_state_dict(setup.init[seed])
    opt = build_optimizer(setup.spec, model, DEFAULT_LR if setup.cfg.lr is None else setup.cfg.lr)
    for g in opt.param_groups:
        g["lr"] = g["lr"] * factor
    return model, opt


def _examples(setup: _Setup, seed: int, batch: int) -> Examples:
    gen = torch.Generator().manual_seed(setup.cfg.seed * 1_000_003 + seed * 65_537 + batch)
    return Examples(setup.train, setup.spec.collate, setup.device, gen)


def evaluate(model, setup: _Setup, budget: _Budget) -> tuple[float, float]:
    """Mean per-example loss on the fixed evaluation draw and its standard error s/√n (model in eval mode)."""
    with eval_mode(model), torch.no_grad():
        losses = torch.cat([per_example_losses(model, setup.spec.loss, b, c).detach().double().flatten()
                            for b, c in setup.eval_batches])
    budget.eval_examples += setup.n_eval
    mean = float(losses.mean())
    se = float(losses.std() / math.sqrt(len(losses))) if len(losses) > 1 else math.nan
    return (mean, se) if math.isfinite(mean) else (math.inf, math.nan)


def _factor(setup: _Setup, batch: int, multiplier: float) -> float:
    return fit.lr_factor(setup.rule, batch, setup.cfg.batch_sizes()[0], setup.b_noise) * multiplier


# -- one branch --------------------------------------------------------------------------------------------
def run_fixed(setup: _Setup, seed: int, batch: int, multiplier: float, budget: _Budget,
              say: Progress) -> Branch:
    """Local: train ``examples`` examples at ``batch`` (round(examples/batch) steps, at least 1), then evaluate."""
    steps = setup.cfg.branch_steps(batch)
    if steps * batch > budget.examples_left():
        raise _Stop(f"the --max-examples budget ({setup.cfg.max_examples:,}) would be exceeded by the next branch")
    factor = _factor(setup, batch, multiplier)
    model, opt = _model(setup, seed, factor)
    ex, t0, diverged, done = _examples(setup, seed, batch), time.perf_counter(), False, 0
    for t in range(steps):
        if not _step(model, opt, setup, ex, batch, t, budget):
            diverged = True
            break
        done = t + 1
        if t % 10 == 0:
            say("step", {"step": t + 1, "steps": steps})
    loss, se = (math.inf, math.nan) if diverged else evaluate(model, setup, budget)
    return Branch(batch, setup.base_lr * factor, multiplier, setup.cfg.seed + seed, done, done * batch, loss, se,
                  round(time.perf_counter() - t0, 4), diverged or not math.isfinite(loss))


def _step(model, opt, setup: _Setup, ex, batch: int, t: int, budget: _Budget) -> bool:
    """One training step of a branch, counted against the budget; False when it diverged (a non-finite loss)."""
    budget.tick()
    try:
        train_step(model, opt, setup.spec.loss, ex, batch, t)
    except NonFiniteError:
        return False
    budget.train_examples += batch
    return True


def _due(t: int) -> bool:
    """Evaluation steps: every step up to 50, then every ⌈t/50⌉ (steps-to-target resolved to ≈2%)."""
    return t <= 50 or t % math.ceil(t / 50) == 0


PLATEAU, PLATEAU_MIN = 4, 200  # a global branch stops when its lowest loss is from its first quarter, after at least
#                                 200 steps and a quarter of --max-steps (a long first plateau can precede the fall)


def run_to_target(setup: _Setup, seed: int, batch: int, multiplier: float, cap: int, budget: _Budget,
                  say: Progress, schedule=None) -> Branch:
    """Global: train at ``batch`` until the evaluation loss ≤ target (at most ``cap`` steps), or until it
    levelled off: no lower evaluation loss in the last 3/4 of the steps, after at least ``PLATEAU_MIN`` and cap/4
    (``stalled``; a new user's unreachable target ran every branch to --max-steps on a plateau, 20× the reachable
    sweep's time). With
    ``schedule`` (a ``bsprof.schedule.Schedule``) the batch and learning rate of each step are the schedule's at
    that step (``stage_at``), as written; the row's ``batch`` is then 0 and ``examples`` the examples it trained on."""
    target = setup.cfg.target_loss
    factor = _factor(setup, batch, multiplier) if schedule is None else multiplier
    model, opt = _model(setup, seed, factor)
    ex, t0 = _examples(setup, seed, batch), time.perf_counter()
    left = budget.examples_left()
    limit = cap if math.isinf(left) else min(cap, int(left // max(batch, 1)))
    loss, se, reached, diverged, t, seen, lowest, at = math.inf, math.nan, math.inf, False, 0, 0, math.inf, None
    stalled = False
    while t < limit:
        if schedule is not None:
            stage = schedule.stage_at(step=t)
            batch = stage.batch_size
            if stage.lr and stage.lr > 0:
                for g in opt.param_groups:
                    g["lr"] = stage.lr * multiplier
            if batch > budget.examples_left():
                break
        if not _step(model, opt, setup, ex, batch, t, budget):
            diverged = True
            break
        t += 1
        seen += batch
        if _due(t) or t == limit:
            loss, se = evaluate(model, setup, budget)
            if math.isfinite(loss) and loss < lowest:
                lowest, at = loss, t
            say("step", {"step": t, "steps": limit, "loss": loss})
            if not math.isfinite(loss) or loss > 1e6:
                diverged = True
                break
            if loss <= target:
                reached = float(t)
                break
            if at is not None and t >= max(PLATEAU_MIN, cap // PLATEAU, PLATEAU * at):   # none lower in 3/4 of it
                stalled = True
                break
    if schedule is not None:
        return Branch(0, float(opt.param_groups[0]["lr"]), multiplier, setup.cfg.seed + seed, t, seen, loss, se,
                      round(time.perf_counter() - t0, 4), diverged, reached, _finite(lowest), at, stalled)
    row = Branch(batch, setup.base_lr * factor, multiplier, setup.cfg.seed + seed, t, t * batch, loss, se,
                 round(time.perf_counter() - t0, 4), diverged, reached, _finite(lowest), at, stalled)
    if not math.isfinite(reached) and not diverged and limit < cap:
        raise _Stop(f"the --max-examples budget ({setup.cfg.max_examples:,}) was spent during batch {batch}")
    return row


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
