"""`bsprof schedule (REPORT.json | SPEC.py) --target-loss L`: a batch-size (and lr) plan with predicted savings."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from bsprof.cli.app import app, console, err_console, user_errors, write_output
from bsprof.cli.source import load
from bsprof.config import parse_list, read_yaml, resolve
from bsprof.errors import ConfigError
from bsprof.results import json_clean, number

O = typer.Option
FORMATS = ("table", "json", "yaml", "csv", "megatron", "olmo", "deepspeed", "tokens")


@app.command()
def schedule(
    source: Path = typer.Argument(..., help="report.json (or its folder) from `bsprof measure`, a tracker's "
                                  "JSONL log, or a SPEC.py."),
    target_loss: Optional[float] = O(None, "--target-loss", "-t", help="Training loss the schedule should reach "
                                     "(or target_loss in --config)."),
    config: Optional[Path] = O(None, "--config", "-c", help="YAML file of schedule options (flags win)."),
    rule: Optional[str] = O(None, help="mccandlish (B = √(r·B_n), fewest steps for its examples), noise (B = B_n), "
                            "adadamp, padadamp, geodamp, doubling. [mccandlish]"),
    exchange_rate: Optional[float] = O(None, help="mccandlish: examples one step is worth (0: auto, the B_crit "
                                       "over the path). [0]"),
    f_star: Optional[float] = O(None, help="adadamp: the optimal loss F*. [0]"),
    b0: Optional[int] = O(None, help="Initial batch of adadamp/padadamp/geodamp/doubling (0: training batch). [0]"),
    rate: Optional[float] = O(None, help="padadamp: examples added per step. [1]"),
    factor: Optional[float] = O(None, help="geodamp: growth factor. [2]"),
    every: Optional[int] = O(None, help="geodamp: steps between growths. [1000]"),
    multiple_of: Optional[int] = O(None, help="Round batches to multiples of N, in the report's unit (0: powers of "
                                   "two); a tokens report rounds to whole sequences as well. [0]"),
    min_batch: Optional[int] = O(None, help="Smallest batch (0: auto = max(8, the probe's micro-batch), at most "
                                 "the training batch). [0]"),
    max_batch: Optional[str] = O(None, help="Largest batch, or 'auto': measure the largest micro-batch that "
                                 "fits on the device (SPEC.py + CUDA) and accumulate above it. [65536]"),
    micro_batch: Optional[int] = O(None, help="Largest per-rank micro-batch; above it: accumulation. [a tracker "
                                   "log's micro-batch, else no limit]"),
    world_size: Optional[int] = O(None, help="Data-parallel ranks (0: a tracker log's ranks, else 1). [0]"),
    dwell: Optional[int] = O(None, help="Minimum steps between two batch changes. [50]"),
    lr_rule: Optional[str] = O(None, help="linear (SGD), sqrt (Adam), none, auto (by optimizer). [auto]"),
    lr: Optional[float] = O(None, help="Learning rate at the training batch. [the report's]"),
    lr_cap: Optional[float] = O(None, help="Emit at most this × the training batch's lr (lrs beyond the probed "
                                "one are the rule's extrapolation; 0: no cap). [0]"),
    noise: Optional[str] = O(None, help="Noise scale to follow: auto (by evidence: 0.74 × the training-steps "
                             "B_simple under plain SGD, else B_noise when measured, 3.2 × it under Adam, 2.8 × it "
                             "under SGD with momentum 0.9 (without windows the fixed-weight B_simple, × 2.5 under "
                             "Adam), else B_simple), b_simple, "
                             "b_simple_window, b_noise, "
                             "b_pre, b_simple_ranks, b_simple_regression. [auto]"),
    form: Optional[str] = O(None, help="Fit of the noise scale vs loss: auto (AICc), power, hyperbola. [auto]"),
    allow_extrapolation: Optional[bool] = O(None, "--allow-extrapolation", help="Plan even far beyond the "
                                            "measured losses (a loud warning instead of exit 2). [off]"),
    max_extrapolation: Optional[float] = O(None, help="'Far': target below the lowest measured loss by more than "
                                           "this fraction of the measured log-loss range. [0.5]"),
    fmt: str = O("table", "--format", "-f", help="table, json, yaml, csv, or for a training framework: megatron "
                 "(--rampup-batch-size or a sample-keyed schedule), olmo (BatchSizeSchedulerCallback), deepspeed "
                 "(JSON for set_train_batch_size), tokens (a token-keyed text schedule)."),
    seq_length: Optional[int] = O(None, "--seq-length", help="Tokens per sequence, to convert batches between "
                                  "sequences and tokens for megatron/olmo/deepspeed/tokens; a tokens report's "
                                  "batches round to whole sequences. [a tokens report's tokens_per_example]"),
    output: Optional[Path] = O(None, "--output", "-o", help="Write the output to this file."),
    compare_batches: Optional[str] = O(None, "--compare-batches", help="Constant batches to predict beside the "
                                       "schedule, in the report's unit (examples; tokens for a tokens report), e.g. "
                                       "16,32,...,512 as a sweep ran them. [powers of two up to 16 × the largest "
                                       "noise scale, at most 12]"),
    steps: int = O(300, help="SPEC.py only: probe-training steps of the measurement."),
    window: Optional[int] = O(None, help="Tracker log (.jsonl) only: steps per windowed estimate (default: 100, or "
                                         "a fifth of a shorter log's steps, at least 10)."),
):
    """Plan the batch size (and learning rate) to a target loss from the measured noise scale."""
    from bsprof.schedule import ScheduleConfig, plan

    overrides = {k: v for k, v in locals().items() if k in ScheduleConfig.__dataclass_fields__}
    with user_errors(json_out=fmt == "json" and output is None):
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})", "e.g. --format json")
        if output is not None:
            from bsprof.output.files import check_file

            check_file(output, "--output")  # before measuring a SPEC.py
        overrides["max_batch"], memory_note = _max_batch(max_batch, source, overrides)
        if compare_batches is not None:
            overrides["compare_batches"] = parse_list(compare_batches, int, "--compare-batches")
            if not overrides["compare_batches"]:
                raise ConfigError("--compare-batches is empty", "list the batches, e.g. --compare-batches 16,32,64")
        if target_loss is None and "target_loss" not in (read_yaml(config) if config is not None else {}):
            raise ConfigError("no target loss: the schedule plans to a training loss you choose",
                              "pass --target-loss L (-t L), or set target_loss: L in the YAML of --config")
        cfg = resolve(ScheduleConfig, config, overrides, command="schedule", flags=True)
        result = plan(load(source, "schedule", window=window, steps=steps), cfg)
        if memory_note:
            result.notes.append(memory_note)
        text = render(result, fmt, cfg.seq_length) if output is not None or fmt != "table" else ""
    shown = fmt == "table" and output is None   # else the table's assumptions are not on the terminal
    for w in result.warnings + ([] if shown else [a for a in lr_warnings(result) if a not in result.warnings]):
        err_console.print(f"[bold yellow]warning:[/] {w}", highlight=False)
    if fmt in LR_NOTES and result.stages:
        err_console.print(f"note: {lr_note(result, fmt)}", highlight=False)
    if output is not None:
        with user_errors():
            write_output(output, text)
        err_console.print(f"wrote {output}")
    elif fmt == "table":
        for part in tables(result):
            console.print(part, highlight=False)
    else:
        typer.echo(text, nl=False)


def _change(x: float) -> str:
    """A relative change in whole percents; −99.6% stays −99.6% (rounded, it read −100%: none at all)."""
    text = f"{x:+.0%}"
    return f"{max(x, -0.999):+.1%}" if text == "-100%" and x > -1 else text   # −99.96%: −99.9%, not −100.0%


def _max_batch(value: str | None, source: Path, overrides: dict) -> tuple[int | None, str]:
    """--max-batch N, or auto: probe the largest micro-batch (becomes --micro-batch) and leave the total cap."""
    if value is None:
        return None, ""
    if value != "auto":
        try:
            return int(value), ""
        except ValueError:
            raise ConfigError(f"--max-batch must be an integer or 'auto' (got {value!r})", "e.g. --max-batch 4096")
    from bsprof.schedule.memory import DEFAULT_MICRO_BATCH, probe_micro_batch

    if overrides.get("micro_batch"):
        return None, f"max micro-batch {overrides['micro_batch']}: given by --micro-batch"
    if source.suffix == ".jsonl":  # plan keeps the log's own micro-batch (plan.logged_micro_batch)
        return None, "--max-batch auto: not measurable from a tracker log (needs SPEC.py and CUDA); the log's " \
                     "micro-batch is kept"
    if source.suffix != ".py":
        found, why = None, f"not measurable from a report (needs SPEC.py and CUDA); using {DEFAULT_MICRO_BATCH}"
    else:
        found, why = probe_micro_batch(source)
    overrides["micro_batch"] = found or DEFAULT_MICRO_BATCH
    return None, f"max micro-batch {overrides['micro_batch']}: {why}"


# -- rendering ---------------------------------------------------------------------------------------------
LR_NOTES = {  # formats that carry no lr: how the framework sets it
    "megatron": "Megatron-LM sets the lr itself: --lr with its own warmup and decay (--lr-warmup-init, "
                "--lr-warmup-samples, --lr-decay-style); e.g. a warmup from the first stage's lr to the last's "
                "across the ramp follows these stages",
    "olmo": "OLMo-core sets the lr with the optimizer's lr and the train module's scheduler (olmo_core.optim."
            "scheduler, e.g. a warmup from the first stage's lr to the last's over the batch schedule)",
    "tokens": "set each stage's lr in the loop (bsprof.schedule.apply.ScheduleLR reads the --format json schedule)",
}


def lr_note(result, fmt: str) -> str:
    """The per-stage lrs a format cannot carry, and how its framework sets them."""
    lrs = ", ".join(f"{s.lr:.4g} from step {s.start_step:,}" for s in result.stages)
    return f"the {fmt} format carries no learning rate; the schedule's: {lrs}. {LR_NOTES[fmt]}"


def lr_warnings(result) -> list[str]:
    """The lr the rule extrapolates to (an assumption the table prints), for outputs that print no table."""
    from bsprof.schedule.plan import extrapolated_lr

    note = extrapolated_lr(result.stages, result.lr_train) if result.lr_train else ""
    return [note] if note and note in result.assumptions else []


def render(result, fmt: str, seq_length: int = 0) -> str:
    from bsprof.schedule.export import WRITERS

    if fmt in WRITERS:
        return WRITERS[fmt](result, seq_length)
    if fmt in ("json", "yaml"):  # the lr the rule extrapolates to is a warning for a script too, as on stderr
        data = json_clean(result.to_dict())
        data["warnings"] = [*data.get("warnings", []), *(w for w in lr_warnings(result)
                                                          if w not in data.get("warnings", []))]
        if fmt == "json":
            return json.dumps(data, indent=2) + "\n"
        import yaml

        return yaml.safe_dump(data, sort_keys=False)
    if fmt == "csv":
        import pandas as pd

        return pd.DataFrame([s._asdict() for s in result.stages]).to_csv(index=False)
    buf = Console(file=io.StringIO(), width=110, force_terminal=False)
    for part in tables(result):
        buf.print(part)
    return "".join(line.rstrip() + "\n" for line in buf.file.getvalue().splitlines())  # no padding at line ends


def tables(result) -> list:
    p, u = result.prediction, result.unit
    st = Table(title=f"Batch-size schedule to loss {result.target_loss:g} (rule {result.rule}, lr {result.lr_rule})",
               title_justify="left")
    for col in ("from step", "at loss", f"batch ({u})", "lr", "micro × accum × ranks"):
        st.add_column(col, justify="right")
    for s in result.stages:
        st.add_row(f"{s.start_step:,}", f"{s.start_loss:.4g}", f"{s.batch_size:,}", f"{s.lr:.4g}",
                   f"{s.micro_batch} × {s.accumulation} × {s.world_size}")
    bt = Table(title=f"Predicted to loss {result.target_loss:g}: the schedule {p['steps']:,.0f} steps, "
                     f"{p['examples']:,.0f} {u}", title_justify="left")
    for col in ("constant batch", "steps", u, "schedule vs this: steps", u):
        bt.add_column(col, justify="right")
    for b in result.baselines:
        mark = " (current)" if b.get("current") else ""
        bt.add_row(f"{b['batch_size']:,}{mark}", f"{b['steps']:,.0f}", f"{b['examples']:,.0f}",
                   _change(0.0 - b.get('steps_saved', 0)), _change(0.0 - b.get('examples_saved', 0)))
    lowest = (result.fit or {}).get("loss_min", -math.inf)
    what = (f"interval from sampling and from the fit's extrapolation below the lowest measured loss {lowest:.4g}"
            if result.target_loss < lowest else "sampling interval only")
    lines = [f"B_crit over the path to loss {result.target_loss:g} ≈ {number(p['b_crit'])} "
             f"[{number(p.get('b_crit_lo'))}, {number(p.get('b_crit_hi'))}] {u} (S_min {p['s_min']:,.0f} "
             f"step{'' if round(p['s_min']) == 1 else 's'} over the path{_lead_text(p)}; {what}: the report's "
             "headline ends its path at the lowest measured "
             f"loss and "
             f"adds the model range); noise scale at the target {number(p['b_noise_target'])} "
             f"[{number(p['b_noise_target_lo'])}, {number(p['b_noise_target_hi'])}]"]
    if result.recommendation:
        lines.insert(0, f"recommendation: {result.recommendation['text']}")
    lines += [f"assumption: {a}" for a in result.assumptions if a not in result.warnings]  # warnings print once
    return [st, bt, "\n".join(lines + [f"note: {n}" for n in result.notes])]


def _lead_text(p: dict) -> str:
    """', plus N before it (the lead-in)' when the path starts after step 0 (``prediction.lead_in``)."""
    lead = p.get("lead_in") or {}
    return f", plus {lead['s_min']:,.0f} before it (the lead-in)" if lead.get("s_min", 0) >= 0.5 else ""
