"""A Schedule in the formats that large-job frameworks read, and readers that parse each back.

    megatron   Megatron-LM: ``--micro-batch-size m --global-batch-size B_end --rampup-batch-size B_0 ΔB samples``
               when the stages are a linear ramp in consumed samples (Megatron's batch at s consumed samples is
               B_0 + ΔB·⌊s / (samples/n)⌋, n = (B_end − B_0)/ΔB); otherwise a step schedule keyed by consumed
               samples (and tokens with a sequence length), one ``samples tokens global_batch_size`` line per stage
    olmo       OLMo-core ``BatchSizeSchedulerCallback``: ``batch_sizes`` (global, in tokens) and ``schedule`` (a list
               of Durations ``{value, unit: steps}``), starting at 0, changing by integer factors only
    deepspeed  JSON for a loop that calls ``engine.set_train_batch_size(B)`` at each stage's step: train_batch_size,
               train_micro_batch_size_per_gpu (fixed) and gradient_accumulation_steps per stage
    tokens     plain text keyed by tokens: ``tokens batch_tokens micro_batch accumulation`` per stage

Every format fixes one per-rank micro-batch m (the smallest of the stages'; planned without a micro-batch cap, the
largest that divides every stage's) and checks each stage's batch is a multiple of m × world size; all the problems
are reported together in one ScheduleError. Batches are converted between examples (sequences) and tokens with
``seq_length`` where a format needs the other unit (a tokens schedule defaults to the one it was planned with).
"""

from __future__ import annotations

import json
import math
import shlex

from bsprof.schedule.stages import Schedule, ScheduleError

TOKEN_UNITS = ("tokens",)


class Plan:
    """The schedule's stages as (start step, global batch, start sample count) in sequences and tokens."""

    def __init__(self, schedule: Schedule, seq_length: int = 0):
        self.tokens_unit = schedule.unit in TOKEN_UNITS
        planned = (schedule.config or {}).get("seq_length") if self.tokens_unit else 0
        self.schedule, self.seq_length, self.seq_given = schedule, int(seq_length or planned or 0), bool(seq_length)
        stages = schedule.stages
        self.micro = min(s.micro_batch for s in stages)
        if all(s.accumulation == 1 for s in stages):   # no micro-batch cap: the largest dividing every stage
            self.micro = math.gcd(*(s.micro_batch for s in stages))
        self.world = stages[0].world_size
        self.steps = [s.start_step for s in stages]
        self.batches = [s.batch_size for s in stages]
        self.starts = [0]  # units consumed before each stage
        for (s0, b0), s1 in zip(zip(self.steps, self.batches), self.steps[1:]):
            self.starts.append(self.starts[-1] + b0 * (s1 - s0))

    def problems(self, need: str | None = None) -> list[str]:
        p = []
        if len({s.world_size for s in self.schedule.stages}) > 1:
            p.append("the stages use different world sizes; a framework run has one")
        per_step = self.micro * self.world
        for s, b in zip(self.steps, self.batches):
            if b % per_step:
                p.append(f"stage from step {s}: batch {b} is not a multiple of micro-batch {self.micro} × world "
                         f"size {self.world} = {per_step}")
        if need == "sequences" and self.tokens_unit and not self.seq_length:
            p.append("the schedule is in tokens and this format counts sequences: pass --seq-length")
        if need == "tokens" and not self.tokens_unit and not self.seq_length:
            p.append(f"the schedule is in {self.schedule.unit} and this format counts tokens: pass --seq-length")
        if need and self.seq_length and self.tokens_unit:
            p += [f"stage from step {s}: batch {b} tokens is not a whole number of sequences of {self.seq_length}"
                  for s, b in zip(self.steps, self.batches) if b % self.seq_length]
            if self.micro % self.seq_length:
                p.append(f"micro-batch {self.micro} tokens is not a whole number of sequences of {self.seq_length}")
        return p

    def check(self, fmt: str, need: str | None = None) -> None:
        p = self.problems(need)
        if p:
            raise ScheduleError(f"the schedule cannot be written as {fmt}: " + "; ".join(p), self.fix(p))

    def fix(self, problems: list[str]) -> str:
        """What fixes ``problems``: one hint per kind."""
        text = " ".join(problems)
        hints = []
        if "is not a multiple of micro-batch" in text:
            hints.append("plan with --micro-batch M and --world-size of the run and --multiple-of (M × world size)")
        if "whole number of sequences" in text:
            hints.append(f"plan with --seq-length {self.seq_length} so every batch rounds to whole sequences"
                         if self.seq_given else "plan with --seq-length (tokens per sequence) so every batch "
                         "rounds to whole sequences")
        if "pass --seq-length" in text:
            hints.append("pass --seq-length (tokens per sequence)")
        if "different world sizes" in text:
            hints.append("plan with the run's --world-size")
        return "; ".join(hints)

    def sequences(self, x: int) -> int:
        return x // self.seq_length if self.tokens_unit else x

    def tokens(self, x: int) -> int:
        return x if self.tokens_unit else x * self.seq_length


# -- writers -----------------------------------------------------------------------------------------------
def megatron(schedule: Schedule, seq_length: int = 0) -> str:
    p = Plan(schedule, seq_length)
    p.check("megatron", "sequences" if p.tokens_unit else None)
    b = [p.sequences(x) for x in p.batches]
    s = [p.sequences(x) for x in p.starts]
    head = f"--micro-batch-size {p.sequences(p.micro)} --global-batch-size {b[-1]}"
    ramp = _linear_ramp(b, s)
    if ramp is not None:
        return head + " --rampup-batch-size {} {} {}\n".format(*ramp)
    lines = ["# Megatron-LM batch-size schedule (the stages are not a linear ramp in samples): the global batch",
             f"# from each count of consumed samples on; micro-batch {p.sequences(p.micro)}, data-parallel size "
             f"{p.world}", f"# {head}", "# samples tokens global_batch_size"]
    lines += [f"{si} {si * p.seq_length if p.seq_length else '-'} {bi}" for si, bi in zip(s, b)]
    return "\n".join(lines) + "\n"


def _linear_ramp(b: list[int], s: list[int], tol: float = 0.1):
    """(start, increment, ramp samples) when the batches grow by one increment at evenly spaced sample counts."""
    n = len(b) - 1
    if n < 1:
        return None
    inc = b[1] - b[0]
    if inc <= 0 or any(b1 - b0 != inc for b0, b1 in zip(b, b[1:])):
        return None
    spacing = s[-1] / n
    if any(abs(si - i * spacing) > tol * spacing for i, si in enumerate(s)):
        return None
    return b[0], inc, s[-1]


def olmo(schedule: Schedule, seq_length: int = 0) -> str:
    p = Plan(schedule, seq_length)
    p.check("olmo", "tokens")
    batches = [p.tokens(x) for x in p.batches]
    bad = [f"{a} → {c}" for a, c in zip(batches, batches[1:]) if c % a]
    if bad:
        raise ScheduleError("OLMo-core changes the batch by integer factors only; this schedule has "
                            + ", ".join(bad), "plan with --multiple-of 0 (powers of two) or --rule doubling")
    return json.dumps({"batch_size_scheduler": {"batch_sizes": batches,
                                                "schedule": [{"value": st, "unit": "steps"} for st in p.steps]}},
                      indent=2) + "\n"


def deepspeed(schedule: Schedule, seq_length: int = 0) -> str:
    p = Plan(schedule, seq_length)
    p.check("deepspeed", "sequences" if p.tokens_unit else None)
    micro = p.sequences(p.micro)
    stages = [{"step": st, "train_batch_size": p.sequences(b), "train_micro_batch_size_per_gpu": micro,
               "gradient_accumulation_steps": p.sequences(b) // (micro * p.world), "lr": s.lr}
              for st, b, s in zip(p.steps, p.batches, schedule.stages)]
    return json.dumps({"schema": "bsprof.deepspeed_batch_schedule", "version": 1, "world_size": p.world,
                       "train_micro_batch_size_per_gpu": micro, "stages": stages}, indent=2) + "\n"


def tokens(schedule: Schedule, seq_length: int = 0) -> str:
    p = Plan(schedule, seq_length)
    p.check("tokens", "tokens")
    lines = [f"# bsprof batch-size schedule keyed by tokens; world size {p.world}",
             "# tokens batch_tokens micro_batch_tokens accumulation"]
    lines += [f"{p.tokens(st)} {p.tokens(b)} {p.tokens(p.micro)} {b // (p.micro * p.world)}"
              for st, b in zip(p.starts, p.batches)]
    return "\n".join(lines) + "\n"


WRITERS = {"megatron": megatron, "olmo": olmo, "deepspeed": deepspeed, "tokens": tokens}


# -- readers: each format back to [(key, global batch)] ----------------------------------------------------
def read_megatron(text: str) -> dict:
    """{"micro", "global", "ramp": (start, inc, samples) or None, "points": [(samples, batch)]}."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    flags = next(ln.lstrip("# ") for ln in lines if "--global-batch-size" in ln)
    argv = shlex.split(flags)
    opt = {argv[i]: argv[i + 1:i + 4] for i in range(len(argv)) if argv[i].startswith("--")}
    out = {"micro": int(opt["--micro-batch-size"][0]), "global": int(opt["--global-batch-size"][0]), "ramp": None}
    if "--rampup-batch-size" in opt:
        start, inc, samples = map(int, opt["--rampup-batch-size"])
        out["ramp"] = (start, inc, samples)
        n = (out["global"] - start) // inc
        out["points"] = [(samples * i // n, start + i * inc) for i in range(n + 1)]
    else:
        rows = [ln.split() for ln in lines if not ln.startswith("#")]
        out["points"] = [(int(r[0]), int(r[-1])) for r in rows]
    return out


def read_olmo(text: str) -> list[tuple[int, int]]:
    cfg = json.loads(text)["batch_size_scheduler"]
    assert {d["unit"] for d in cfg["schedule"]} == {"steps"}
    return [(d["value"], b) for d, b in zip(cfg["schedule"], cfg["batch_sizes"])]


def read_deepspeed(text: str) -> list[tuple[int, int]]:
    data = json.loads(text)
    return [(s["step"], s["train_batch_size"]) for s in data["stages"]]


def read_tokens(text: str) -> list[tuple[int, int]]:
    return [(int(r[0]), int(r[1])) for r in (ln.split() for ln in text.splitlines())
            if r and not r[0].startswith("#")]


READERS = {"megatron": read_megatron, "olmo": read_olmo, "deepspeed": read_deepspeed, "tokens": read_tokens}
