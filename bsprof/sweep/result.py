"""What a sweep found: one row per branched run (``Branch``), one per batch size (``BatchSummary``), the critical
batch with its interval, the compute it cost, and (with a bsprof report) the estimate beside it.

Written as ``sweep.json`` (``to_dict``) and ``sweep.csv`` (the branches), atomically; renders itself (``__rich__``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from bsprof.results import Estimate, json_clean
from bsprof.sweep.fit import CriticalFit

SCHEMA = 1


@dataclass(frozen=True)
class Branch:
    """One branched run. ``loss``/``loss_se``: mean per-example loss on the fixed evaluation draw and its standard
    error s/√n over that draw; ``steps_to_target``: global only (∞ when the target was not reached);
    ``lowest_loss``: global only, the lowest evaluation loss the branch reached (a loss that fell and rose again,
    as when the model memorises noisy labels, ends far above it)."""

    batch: int
    lr: float
    lr_multiplier: float
    seed: int                 # its seed: --seed + the repeat's index
    steps: int
    examples: int
    loss: float
    loss_se: float
    seconds: float
    diverged: bool = False
    steps_to_target: float | None = None
    lowest_loss: float | None = None
    lowest_step: int | None = None   # the step of the evaluation that gave ``lowest_loss``
    stalled: bool = False            # global: stopped on a plateau (no lower loss in the last 3/4 of its steps)

    def to_dict(self) -> dict:
        return json_clean(dataclasses.asdict(self))


@dataclass(frozen=True)
class BatchSummary:
    """One batch size: its best learning rate over the grid and the result there (mean over seeds).

    local: ``loss`` (mean over seeds), ``loss_se`` (the evaluation draw's s/√n with one seed; across seeds
    otherwise), ``passed`` the tolerance test. global: ``steps`` = median steps-to-target over seeds (∞: never)."""

    batch: int
    lr: float
    lr_multiplier: float
    loss: float
    loss_se: float
    steps: float
    examples: float
    passed: bool | None = None
    reached: int = 0          # global: seeds that reached the target at the best lr
    ran: int = 0              # global: seeds run at the best lr (fewer than asked in an interrupted sweep)
    partial: bool = False     # a stopped sweep ran only some of this batch's lrs × seeds

    def to_dict(self) -> dict:
        return json_clean(dataclasses.asdict(self))


@dataclass(frozen=True)
class Compute:
    """What the sweep (or the measurement it is compared with) cost."""

    train_examples: int
    eval_examples: int
    seconds: float

    def to_dict(self) -> dict:
        return json_clean(dataclasses.asdict(self))


@dataclass(frozen=True)
class Comparison:
    """A bsprof report's estimate beside the sweep: B_simple (summary, latest weights), B_pre/B_noise if measured,
    the ratio sweep/estimate, and what the measurement cost (sum over its measurements). Batch figures are in
    examples, the sweep's unit (a tokens report's divided by ``tokens_per_example``)."""

    report: str
    b_simple: Estimate
    b_pre: Estimate | None
    b_noise: Estimate | None
    ratio: float                  # the sweep's critical batch / B_simple
    measure_examples: int
    measure_seconds: float
    probe_train_examples: int
    critical_batch: Estimate | None = None   # the report's headline (to the sweep's target loss when global)
    critical_ratio: float = float("nan")      # the sweep's critical batch / the headline
    tokens_per_example: float = 1.0           # a tokens report's figures were divided by this (all in examples)
    probe_lr: float | None = None             # the lr and batch (examples) the report's probe trained at
    probe_batch: float | None = None
    ratio_status: str = "ok"                  # "lower_bound": the sweep's critical batch, so both ratios, are ≥
    critical_batch_to: str = ""               # the loss the headline is to, in words (the sweep's target, or why not)

    def to_dict(self) -> dict:
        return json_clean({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


@dataclass(frozen=True)
class SweepResult:
    """A sweep's answer. ``critical``: local — value = lo = the largest passing batch, hi = the first failing one
    (LOWER_BOUND when all pass); global — the fitted B_crit with its bootstrap interval (``fit`` has S_min, E_min)."""

    method: str
    critical: Estimate
    batches: tuple[BatchSummary, ...]
    branches: tuple[Branch, ...]
    compute: Compute
    config: dict
    spec: dict
    initial_loss: float
    critical_by_seed: tuple[float, ...] = ()
    fit: CriticalFit | None = None
    comparison: Comparison | None = None
    notes: tuple[str, ...] = ()
    incomplete: dict | None = None
    unit: str = "examples"
    schedule: dict | None = None     # global with --schedule: its runs and ``summary.schedule_verdict``
    warnings: tuple[str, ...] = ()   # what puts the answer itself in doubt (printed first: an untuned lr, …)
    data: dict | None = None         # examples of the dataset, the evaluation draw, training; the intervals' limit

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json_clean({"schema": SCHEMA, "kind": "bsprof-sweep", **d})

    @classmethod
    def from_dict(cls, d: dict) -> SweepResult:
        """A sweep.json read back (``bsprof report sweep.json`` shows it): JSON's null for ∞ or NaN reads as NaN."""
        fit = d.get("fit")
        return _read(cls, d, batches=tuple(_read(BatchSummary, x) for x in d.get("batches") or ()),
                     branches=tuple(_read(Branch, x) for x in d.get("branches") or ()),
                     compute=_read(Compute, d.get("compute") or {}),
                     fit=_read(CriticalFit, fit) if isinstance(fit, dict) else None,
                     comparison=_read(Comparison, d["comparison"]) if isinstance(d.get("comparison"), dict) else None)

    def to_csv(self) -> str:
        import pandas as pd

        cols = [f.name for f in dataclasses.fields(Branch)]
        return pd.DataFrame([b.to_dict() for b in self.branches], columns=cols).to_csv(index=False)

    def write(self, out: str | Path) -> dict[str, Path]:
        """``out``/sweep.json and ``out``/sweep.csv, each written whole (``output.files.write_text``)."""
        from bsprof.output.files import write_text

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        return {"json": write_text(out / "sweep.json", json.dumps(self.to_dict(), indent=2) + "\n"),
                "csv": write_text(out / "sweep.csv", self.to_csv())}

    def __rich__(self):
        from bsprof.sweep.render import result_view

        return result_view(self)


def _read(kind, d: dict, **given):
    """``kind`` (a dataclass) from its dict: Estimates rebuilt, null floats NaN, tuples from lists."""
    values = {}
    for f in dataclasses.fields(kind):
        if f.name in given or f.name not in d:
            continue
        v = d[f.name]
        if "Estimate" in str(f.type):
            v = Estimate.from_dict(v) if isinstance(v, dict) else None
        elif f.type == "float" and v is None:
            v = math.nan
        elif str(f.type).startswith("tuple") and isinstance(v, list):
            v = tuple(v)
        values[f.name] = v
    return kind(**values, **given)


def is_finite(x) -> bool:
    return x is not None and math.isfinite(x)
