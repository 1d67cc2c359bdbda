"""The schedule a training loop follows: stages of (batch size, learning rate) and look-ups by step or loss."""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from bsprof.errors import BsprofError


class ScheduleError(BsprofError):
    """The schedule cannot be run or written as asked (a batch that does not split into micro-batches × ranks)."""


class Stage(NamedTuple):
    """From ``start_step`` (predicted, reached at ``start_loss``) on: batch = accumulation × micro × world."""

    start_step: int
    start_loss: float
    batch_size: int
    lr: float
    micro_batch: int
    accumulation: int
    world_size: int


@dataclass
class Schedule:
    """Stages (batch sizes never shrink), predictions of the McCandlish model, and constant-batch baselines."""

    stages: list[Stage]
    target_loss: float
    unit: str = "examples"
    rule: str = "noise"
    lr_rule: str = "none"
    prediction: dict = field(default_factory=dict)
    baselines: list[dict] = field(default_factory=list)
    fit: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    batch_train: float = 0.0
    lr_train: float = 0.0
    assumptions: list[str] = field(default_factory=list)   # what the predictions rest on, with its effect
    recommendation: dict = field(default_factory=dict)     # use the schedule or a constant batch that beats it
    spec: dict = field(default_factory=dict)               # the report's spec (path, sha256): what it was planned for

    def stage_at(self, step: float | None = None, loss: float | None = None) -> Stage:
        """The stage in force at ``step`` (by predicted start steps) or at ``loss`` (by start losses); one of."""
        if (step is None) == (loss is None):
            raise ValueError("pass exactly one of step= or loss=")
        if step is not None:
            i = bisect.bisect_right([s.start_step for s in self.stages], step) - 1
        else:
            i = sum(1 for s in self.stages if s.start_loss >= loss) - 1
        return self.stages[max(i, 0)]

    def batch_size_at(self, step: float | None = None, loss: float | None = None) -> int:
        """The batch of the stage in force at ``step`` or at ``loss`` (``stage_at``)."""
        return self.stage_at(step, loss).batch_size

    def lr_at(self, step: float | None = None, loss: float | None = None) -> float:
        """The learning rate of the stage in force at ``step`` or at ``loss`` (``stage_at``): set it on the optimizer's
        param groups before each optimizer step (``apply.ScheduleLR`` does it as an lr scheduler)."""
        return self.stage_at(step, loss).lr

    def accumulation_at(self, step: float, micro_batch: int, world_size: int | None = None) -> int:
        """Gradient-accumulation steps per optimizer step at ``step`` for a per-rank ``micro_batch`` (in the
        schedule's unit): batch_size_at(step) / (micro_batch × world_size), world size default the stage's.
        Raises ScheduleError when the batch does not split into whole micro-batches."""
        stage = self.stage_at(step=step)
        world = stage.world_size if world_size is None else int(world_size)
        per_step = int(micro_batch) * world
        if per_step < 1 or stage.batch_size % per_step:
            raise ScheduleError(f"the batch {stage.batch_size} of the stage from step {stage.start_step} is not a "
                                f"multiple of micro-batch {micro_batch} × world size {world} = {per_step}",
                                "plan with --micro-batch and --world-size matching the run, or --multiple-of "
                                f"{per_step}")
        return stage.batch_size // per_step

    def to_dict(self) -> dict:
        out = asdict(self)
        out["stages"] = [s._asdict() for s in self.stages]
        out["steps"], out["examples"] = self.prediction.get("steps"), self.prediction.get("examples")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Schedule:
        data = {k: v for k, v in data.items() if k not in ("steps", "examples")}
        data["stages"] = [Stage(**s) for s in data["stages"]]
        return cls(**data)
