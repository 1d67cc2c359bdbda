"""Options of a batch-size sweep (`bsprof sweep`), validated up front with every problem reported together."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from bsprof.config import DEVICES, as_flags
from bsprof.errors import ConfigError

METHODS = ("local", "global")
LR_RULES = ("auto", "linear", "sqrt", "none")
TOLERANCE_MODES = ("rel", "abs")
GLOBAL_GRID = (0.5, 1.0, 2.0)   # the global method's default lr multipliers: eq. 2.11 needs the lr tuned per batch
EVAL_EXAMPLES = 1024            # the default evaluation draw, capped at a quarter of a dataset it would halve


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep and how long. Batch sizes and budgets in examples.

    Batches: ``batches`` if given, else base_batch·2^k for k = 0..doublings. Learning rate at batch B:
    lr₀ × lr_factor(rule, B, smallest batch) × each ``lr_grid`` multiplier, lr₀ the spec optimizer's lr (or
    ``lr`` for the default SGD).
    """

    method: str = "local"            # local (equal examples, tolerance) or global (steps to a target loss)
    base_batch: int = 32
    doublings: int = 4
    batches: tuple[int, ...] = ()
    lr: float | None = None          # learning rate of the default SGD optimizer (None: DEFAULT_LR; a spec optimizer
    #                                  keeps its own)
    lr_rule: str = "auto"            # auto (linear for SGD, sqrt for the Adam family, else none), linear, sqrt, none
    lr_grid: tuple[float, ...] | None = None   # None: [1] (local), GLOBAL_GRID (global)
    b_noise: float = 0.0             # noise scale for the saturating linear rule (0: pure linear; from --report)
    examples: int = 0                # local: training examples per branch (0: 32 × the largest batch)
    tolerance: float = 0.01          # local: pass if loss ≤ ref·(1 + tol) (rel) or ref + tol (abs)
    tolerance_mode: str = "rel"
    target_loss: float = 0.0         # global: the evaluation loss to reach
    max_steps: int = 2000            # global: steps per branch before giving up
    seeds: int = 1
    eval_examples: int | None = None  # the fixed evaluation draw (0 or ≥ dataset: the whole dataset; None: 1024,
    #                                   capped at a quarter of a dataset it would hold out more than half of)
    holdout: bool = True             # exclude the evaluation draw from training
    checkpoint: str | None = None    # start every branch from these weights (else the spec's initial weights)
    schedule: str | None = None      # global: also train this schedule.json as written (batch and lr by step)
    max_seconds: float = math.inf    # whole-sweep budgets; the sweep stops (partial result) when one is spent
    max_examples: int = 0            # 0: no limit
    n_boot: int = 1000               # global: bootstrap fits for the interval
    confidence: float = 0.9
    device: str = "auto"
    seed: int = 0
    any_spec: bool = False           # accept a report or schedule recorded for another spec file

    def __post_init__(self):
        if self.lr_grid is None:   # resolved here: sweep.json records the grid that ran
            object.__setattr__(self, "lr_grid", GLOBAL_GRID if self.method == "global" else (1.0,))

    def batch_sizes(self) -> list[int]:
        if self.batches:
            return list(self.batches)
        return [self.base_batch * 2 ** k for k in range(self.doublings + 1)]

    def problems(self) -> list[str]:
        p = []
        if self.method not in METHODS:
            p.append(f"method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if self.lr_rule not in LR_RULES:
            p.append(f"lr_rule must be one of {', '.join(LR_RULES)} (got {self.lr_rule!r})")
        if self.tolerance_mode not in TOLERANCE_MODES:
            p.append(f"tolerance_mode must be rel or abs (got {self.tolerance_mode!r})")
        if self.device not in DEVICES:
            p.append(f"device must be one of {', '.join(DEVICES)} (got {self.device!r})")
        b = self.batch_sizes()
        if any(not isinstance(x, int) or x < 1 for x in b):
            p.append(f"batch sizes must be positive integers (got {list(b)})")
        elif len(b) < 2:
            p.append(f"a sweep needs at least two batch sizes (got {list(b)}): raise --doublings or list more "
                     "in --batches")
        elif any(y <= x for x, y in zip(b, b[1:])):
            p.append(f"batch sizes must be strictly increasing (got {list(b)})")
        if self.base_batch < 1 or self.doublings < 0:
            p.append(f"base_batch must be ≥ 1 and doublings ≥ 0 (got {self.base_batch}, {self.doublings})")
        if not self.lr_grid or any(not (m > 0 and math.isfinite(m)) for m in self.lr_grid):
            p.append(f"lr_grid multipliers must be positive numbers (got {list(self.lr_grid)})")
        if self.lr is not None and not self.lr > 0:
            p.append(f"lr must be positive (got {self.lr})")
        if self.tolerance < 0:
            p.append(f"tolerance must be 0 or more (got {self.tolerance})")
        if self.schedule and self.method != "global":
            p.append("--schedule needs the global method (the schedule is trained to the target loss like the "
                     "constant batches): add --method global --target-loss L")
        if self.method == "global" and not self.target_loss > 0:
            p.append("the global method needs --target-loss L > 0 (an evaluation loss every batch should reach)")
        for name in ("seeds", "max_steps"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("examples", "eval_examples", "max_examples", "n_boot"):
            if (getattr(self, name) or 0) < 0:
                p.append(f"{name} must be 0 or more (got {getattr(self, name)})")
        b = self.batch_sizes()
        if self.method == "local" and self.max_examples > 0 and b and all(isinstance(x, int) and x > 0 for x in b):
            first = self.branch_steps(b[0]) * b[0]
            if self.max_examples < first:
                total = sum(self.branch_steps(x) * x for x in b) * len(self.lr_grid or ()) * max(self.seeds, 1)
                p.append(f"max_examples ({self.max_examples:,}) is smaller than one branch: batch {b[0]} trains "
                         f"{first:,} examples (the whole sweep {total:,}); raise max_examples to at least {first:,}, "
                         "or train fewer examples per branch")
        elif self.method == "global" and 0 < self.max_examples < (b[0] if b and isinstance(b[0], int) else 0):
            p.append(f"max_examples ({self.max_examples:,}) is smaller than one step of batch {b[0]}: raise it")
        if not self.max_seconds > 0:
            p.append(f"max_seconds must be positive (got {self.max_seconds})")
        if not 0.5 <= self.confidence < 1:
            p.append(f"confidence must be in [0.5, 1) (got {self.confidence})")
        return p

    def branch_examples(self) -> int:
        return self.examples or 32 * self.batch_sizes()[-1]

    def branch_steps(self, batch: int) -> int:
        """Local: the steps of a branch at ``batch``, round(examples/batch), at least 1."""
        return max(1, round(self.branch_examples() / batch))

    def to_dict(self) -> dict:
        from bsprof.results import json_clean

        return json_clean(dataclasses.asdict(self))


def sweep_config(flags: bool = False, **options) -> SweepConfig:
    """A SweepConfig from keyword options (None values ignored): unknown names and every problem in one error,
    naming the options as command-line flags when ``flags`` (they came from them)."""
    names = {f.name for f in dataclasses.fields(SweepConfig)}
    unknown = sorted(set(options) - names)
    values = {k: v for k, v in options.items() if v is not None and k in names}
    for k in ("batches", "lr_grid"):
        if k in values and not isinstance(values[k], tuple):
            try:
                values[k] = tuple(values[k])
            except TypeError:
                values[k] = (values[k],)
    problems = [f"unknown option {k!r}" for k in unknown]
    cfg = SweepConfig(**values)
    problems += cfg.problems()
    if problems and flags:
        problems = [as_flags(x, list(values)) for x in problems]
    if problems:
        raise ConfigError("bad sweep options:\n  - " + "\n  - ".join(problems),
                          "fix these; `bsprof sweep --help` lists every option")
    return cfg
