"""`bsprof check (REPORT.json | SPEC.py) --batch-size B`: the CI gate.

Exit 0: within policy. 1: violates it (the message says what, by how much, and what value passes).
2: cannot judge (unreadable report, schema mismatch, undetermined measurement, a batch too large for a measurement
at the initial weights only, bad options). A batch too large only for a path along which the noise scale was still
growing passes with a warning (exit 0; ``policy.GROWING``).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from bsprof.cli import signals
from bsprof.cli.app import app, console, err_console, user_errors, write_output
from bsprof.cli.source import empty_source, load, measure_spec
from bsprof.config import MAX_BATCH, limit, resolve
from bsprof.errors import BsprofError, ConfigError, ReportError, SpecError, clip
from bsprof.gate import formats as ci_output
from bsprof.gate.policy import CANNOT_JUDGE, FAIL, PASS, Policy, Verdict, judge
from bsprof.gate.training_config import BATCH_KEYS, LR_KEYS, values_from_config
from bsprof.output import codec
from bsprof.output.files import check_file
from bsprof.output.report import Report
from bsprof.results import Status

O = typer.Option

STYLE = {PASS: "[bold green]PASS[/]", FAIL: "[bold red]FAIL[/]", CANNOT_JUDGE: "[bold yellow]CANNOT JUDGE[/]"}


# -- inputs --------------------------------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """Seconds from '90', '60s', '2m', '1.5h' or '500ms'."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min|h)?\s*", text or "")
    if not m:
        raise ConfigError(f"--budget {text!r} is not a duration", "write e.g. --budget 60s, 2m or 90 (seconds)")
    seconds = float(m.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "min": 60, "h": 3600, None: 1}[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"--budget {text!r} must be positive", "write e.g. --budget 60s")
    return seconds


# -- the measured report -------------------------------------------------------------------------------------
def read_report(target: Path) -> Report:
    """The report in a file or a report folder; anything malformed is a ReportError (exit 2)."""
    return Report.from_json(target)


def measure_now(spec: Path, budget_s: float, steps: int, seed: int | None = None,
                rel_error: float | None = None, save_to: Path | None = None) -> tuple[Report, dict]:
    """A quick CPU measurement within ``budget_s`` seconds (split over the measurements when steps > 0; each stops
    at --rel-error or its share, not at ``measure``'s share of the training time before it), written
    to ``save_to`` when given — also when interrupted (Ctrl-C, SIGTERM, SIGHUP: the partial report, marked
    incomplete; the interrupt then goes on up with ``kept`` saying what was kept)."""
    from bsprof.engine.loop import measure_steps
    from bsprof.output.render import cut_short_text, estimate_text, plural

    share = budget_s / (len(measure_steps(steps, 0)) + 1) if steps else budget_s
    t0 = time.perf_counter()
    report = Report()

    def say(line: str) -> None:   # a line per measurement on stderr: a long check is not silent
        err_console.print(line, highlight=False, markup=False, soft_wrap=True)

    def progress(kind: str, info: dict) -> None:
        if kind == "measured":
            row = info["row"]
            say(f"check: {spec.name} at step {row.step}: B_simple {estimate_text(row.b_simple)} "
                f"({plural(row.n_draws, 'draw')}; {time.perf_counter() - t0:.1f} s elapsed, budget {budget_s:g} s "
                "for measuring)")

    say(f"check: measuring {spec.name} on the CPU ({steps} training steps, {budget_s:g} s for measuring; --budget, "
        "--steps)")
    with signals.as_interrupt():
        try:
            measure_spec(spec, "check", report=report, device="cpu", steps=steps, max_seconds=share, measure_budget=0,
                         seed=seed, rel_error=rel_error, progress=progress)
        except KeyboardInterrupt as e:
            signals.hold()  # a second signal must not cut the write short (the handlers come back after the block)
            cut = cut_short_text(report)   # the measurement it was stopped inside: kept, or too few draws
            e.kept = (("nothing was saved" if cut else "nothing was measured yet, nothing was saved")
                      if not report.measurements else
                      "the partial report was not saved (--save-report PATH keeps it)" if save_to is None else None)
            if e.kept is None:
                write_output(save_to, codec.dumps(report), "--save-report")
                e.kept = f"the partial report was saved to {save_to}"
            e.kept = f"{escape(cut)}; {e.kept}" if cut else e.kept
            raise
    if save_to is not None:
        write_output(save_to, codec.dumps(report), "--save-report")
    info = {"seconds": round(time.perf_counter() - t0, 2), "budget_seconds": budget_s, "device": "cpu",
            "steps": steps, "examples": report.summary.examples_measured, "rel_halfwidth": None}
    return report, info


def _precision_note(info: dict, verdict: Verdict) -> str:
    noise = verdict.noise
    trained = f", training {info['steps']} steps on top" if info.get("steps") else ""
    head = (f"measured on the CPU in {info['seconds']:.1f} s in all (the budget, {info['budget_seconds']:g} s, is for "
            f"measuring{trained}; set-up too) from {info['examples'] or 0:,} examples")
    if noise is None or noise.status == Status.UNDETERMINED:
        return head + ": the noise scale stayed undetermined; raise --budget"
    if noise.status == Status.LOWER_BOUND:
        return head + ": only a lower bound on the noise scale; raise --budget"
    spread = (f"−{100 * (1 - noise.lo / noise.value):.0f}%/+{100 * (noise.hi / noise.value - 1):.0f}%"
              if noise.value > 0 else f"±{100 * noise.rel_halfwidth:.0f}%")
    if noise.model_range:   # the headline's interval, or at --at-loss as wide: the model range and the sampling
        return head + (f": {noise.name} known to {spread} (the interval's ends against the value; it includes how "
                       "far the headline was from swept critical batches, docs/science.md §6)")
    return head + f": {noise.name} known to {spread} (the interval's ends against the value)"


# -- output --------------------------------------------------------------------------------------------------
def _render_text(verdict: Verdict, out) -> None:
    """The verdict as text lines; data (messages, notes) one line each, rich markup escaped, no workflow command."""
    line = lambda text: escape(ci_output.plain(text))  # noqa: E731
    if verdict.noise is not None:
        out.print(f"noise scale: {line(verdict.noise.describe())}", highlight=False, soft_wrap=True)
    for c in verdict.checks:
        mark = "[bold yellow]PASS, with a warning[/]" if c.status == PASS and c.warning else STYLE[c.status]
        out.print(f"{mark} {line(ci_output.TITLES.get(c.name, c.name))}: {line(c.message)}",
                  highlight=False, soft_wrap=True)
        for n in c.notes:
            out.print(f"  [yellow]warning:[/] {line(n)}", highlight=False, soft_wrap=True)
    for n in verdict.notes:
        out.print(f"  [dim]note: {line(n)}[/]", highlight=False, soft_wrap=True)


FORMATS = ("text", "json", "junit", "github", "markdown")


def parse_formats(values: list[str], junit: Path | None, github: bool, as_json: bool) -> list[tuple[str, Path | None]]:
    """``--format FMT[:PATH]`` (repeatable; default text) plus the older --junit/--github/--json spellings."""
    out = []
    for v in values or []:
        name, _, path = v.partition(":")
        if name not in FORMATS:
            raise ConfigError(f"--format {v!r}: unknown format {name!r}", f"use one of {', '.join(FORMATS)}, "
                              "optionally with :PATH (e.g. --format junit:bsprof.xml)")
        out.append((name, Path(path) if path else None))
    out += [("junit", junit)] if junit is not None else []
    out += [("github", None)] if github else []
    out += [("json", None)] if as_json else []
    if not any(path is None and name != "github" for name, path in out):
        out.insert(0, ("text", None))
    stdout = [name for name, path in out if path is None and name != "github"]
    if len(stdout) > 1:
        raise ConfigError(f"formats {', '.join(stdout)} would all print to stdout", "give all but one a file: "
                          "--format FMT:PATH")
    return out


def _emit(verdict: Verdict, outputs: list[tuple[str, Path | None]], extra: dict) -> None:
    """Every requested output. Machine formats on stdout keep stdout to themselves (the text goes to stderr)."""
    machine_stdout = any(path is None and name in ("json", "junit", "markdown") for name, path in outputs)
    text_out = err_console if machine_stdout else console
    shown = verdict.checks and not (len(verdict.checks) == 1 and verdict.checks[0].name in ("report", "options",
                                                                                           "measure"))
    for name, path in outputs:
        if name == "text":
            if shown and path is None:
                _render_text(verdict, text_out)
            elif shown:
                buf = Console(file=io.StringIO(), width=200, force_terminal=False)
                _render_text(verdict, buf)
                write_output(path, buf.file.getvalue(), "--format text:PATH")
            continue
        if name == "github":
            for line in ci_output.to_github(verdict):
                typer.echo(line, err=machine_stdout)
            _append_step_summary(verdict)
            continue
        text = {"json": lambda: ci_output.to_json(verdict, extra) + "\n", "junit": lambda: ci_output.to_junit(verdict),
                "markdown": lambda: ci_output.to_markdown(verdict)}[name]()
        if path is None:
            typer.echo(text, nl=False)
        else:
            write_output(path, text, f"--format {name}:PATH")
    if shown and not any(name == "text" for name, _ in outputs):
        _render_text(verdict, text_out)


def _append_step_summary(verdict: Verdict) -> None:
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(ci_output.to_markdown(verdict))
        except OSError as e:
            err_console.print(f"[yellow]warning:[/] cannot append to GITHUB_STEP_SUMMARY {summary}: {e}")


def _error_kind(e: BsprofError) -> str:
    return {ReportError: "report", SpecError: "measure"}.get(type(e), "options")


@app.command(short_help="Gate a batch size (and learning rate) against the measured noise scale (exit 0, 1 or 2).")
def check(
    target: Path = typer.Argument(..., help="report.json (or its folder) from `bsprof measure`, a tracker log "
                                            "(.jsonl, bsprof.Tracker(log=...)), or a SPEC.py to measure now on the "
                                            "CPU within --budget."),
    batch_size: Optional[int] = O(None, "--batch-size", "-b", help="The batch size to judge, in the report's unit "
                                  "(examples, or tokens for a tokens report; see --batch-unit)."),
    batch_unit: Optional[str] = O(None, help="What the batch size counts: examples (or sequences, the same) or "
                                  "tokens; on a tokens report sequences are multiplied by its tokens per example. "
                                  "[the report's unit; a --training-config batch: sequences]"),
    lr: Optional[float] = O(None, "--lr", help="The learning rate to judge against the optimizer's scaling rule."),
    training_config: Optional[Path] = O(None, "--training-config", "-t", help="Your training config (YAML, JSON "
                                        "or TOML) holding the batch size and lr; command-line values win."),
    config: Optional[Path] = O(None, "--config", "-c", help="YAML file of check options (factor, "
                               "max_extra_compute, max_extra_steps, lr_factor, lr_cap, baseline_factor); flags win."),
    batch_key: Optional[str] = O(None, help="Dotted key of the batch size in --training-config, e.g. "
                                 f"trainer.batch_size (else tries {', '.join(BATCH_KEYS)})."),
    lr_key: Optional[str] = O(None, help="Dotted key of the lr in --training-config, e.g. optim.lr "
                                f"(else tries {', '.join(LR_KEYS)})."),
    at_loss: Optional[float] = O(None, help="Judge at this loss: log B_simple interpolated between measurements "
                                 "(never extrapolated), with the headline's factor and model range; a batch too "
                                 "large there fails even where the noise scale was still growing along the path. "
                                 "[the report's critical batch]"),
    factor: Optional[float] = O(None, help="A batch passes within this factor of the noise scale: "
                                "B_n/F ≤ B ≤ F·B_n. [4]"),
    max_extra_compute: Optional[float] = O(None, help="Fail if B/B_n = E/E_min − 1 exceeds this. [--factor]"),
    max_extra_steps: Optional[float] = O(None, help="Fail if B_n/B = S/S_min − 1 exceeds this. [--factor]"),
    lr_factor: Optional[float] = O(None, help="Fail if the lr is off its scaling rule by more than this factor. [4]"),
    lr_cap: Optional[float] = O(None, help="Suggest and pass at most this × the probed lr, as `bsprof schedule` "
                                "(higher lrs are untested: a warning, not a failure; 0: no cap). [0]"),
    baseline: Optional[Path] = O(None, help="An older report.json: fail if the noise scale moved beyond both "
                                 "intervals by more than --baseline-factor."),
    baseline_factor: Optional[float] = O(None, help="Allowed movement of the noise scale against --baseline. [2]"),
    budget: Optional[str] = O(None, help="With a SPEC.py: seconds of CPU measurement ('60s', '2m', '90'). [60s]"),
    steps: int = O(0, help="With a SPEC.py: probe-training steps, measured along (0: the initial weights only, "
                   "which can show a batch too small but not too large; a short probe shows a batch too large for "
                   "its own path only: a warning while the noise scale still grows)."),
    seed: Optional[int] = O(None, help="With a SPEC.py: random seed. [0]"),
    rel_error: Optional[float] = O(None, help="With a SPEC.py: stop measuring once the interval on B_simple is "
                                   "this tight (relative half-width) or the budget is spent. [0.2]"),
    save_report: Optional[Path] = O(None, help="With a SPEC.py: write the measured report.json here "
                                    "(e.g. to become the next --baseline)."),
    formats: Optional[list[str]] = O(None, "--format", "-f", help="Output, repeatable: text, json (the verdict), "
                                     "junit (one testcase per check), github (annotations + job summary), "
                                     "markdown; FMT:PATH writes it to a file, e.g. -f junit:bsprof.xml. [text]"),
    window: Optional[int] = O(None, "--window", help="Tracker logs: steps per windowed estimate (default: 100, or a "
                                                     "fifth of a shorter log's steps, at least 10)."),
    junit: Optional[Path] = O(None, "--junit", help="Same as --format junit:PATH."),
    github: bool = O(False, "--github", help="Same as --format github."),
    as_json: bool = O(False, "--json", help="Same as --format json."),
):
    """Gate a batch size (and learning rate) against the measured noise scale: exit 0 within policy,
    1 violated, 2 cannot judge.

    Extra steps S/S_min − 1 = B_n/B and extra compute E/E_min − 1 = B/B_n (McCandlish et al. 2018): a batch
    fails only if it violates the policy even at the most favourable end of the interval on B_n; too large only for
    a probe's path along which the noise scale still grew is a warning (--at-loss judges at one loss).
    """
    extra: dict = {}
    with user_errors(2):
        outputs = parse_formats(formats or [], junit, github, as_json)
        for name, path in outputs:  # every output file is writable before anything is measured
            if path is not None:
                check_file(path, f"--format {name}:PATH")
        if save_report is not None:
            check_file(save_report, "--save-report")
    overrides = dict(factor=factor, max_extra_compute=max_extra_compute, max_extra_steps=max_extra_steps,
                     lr_factor=lr_factor, lr_cap=lr_cap, baseline_factor=baseline_factor)
    try:
        policy = resolve(Policy, config, overrides, command="check", flags=True)
        verdict, extra = _judge_all(target, batch_size, lr, training_config, batch_key, lr_key, at_loss, policy,
                                    baseline, budget, steps, seed, rel_error, save_report, window, batch_unit)
    except KeyboardInterrupt as e:  # while measuring a SPEC.py: no verdict; what was kept is said
        err_console.print(f"[bold red]{signals.describe(e)}[/]: " + getattr(e, "kept", "nothing was judged"))
        raise typer.Exit(signals.exit_code(e))
    except (BsprofError, Exception) as e:
        if not isinstance(e, BsprofError):  # anything that is not a verdict exits 2, never 1 ("violated")
            e = BsprofError(f"cannot judge: {type(e).__name__}: {clip(str(e))}",
                            "this is a bsprof bug or an input it does not expect; please report it")
        with user_errors(2):
            try:
                _emit(Verdict.from_error(_error_kind(e), e.message, e.hint), outputs, extra)
            except BsprofError:
                pass  # the original error is the one to show
            raise e
    with user_errors(2):
        _emit(verdict, outputs, extra)
    raise typer.Exit(verdict.exit_code)


BATCH_UNITS = ("examples", "sequences", "tokens")


def in_report_unit(report, batch_size: int, from_config: bool, unit: str | None = None
                   ) -> tuple[int, list[str], str | None]:
    """The batch to judge in the report's unit, notes, and a question for the checks' messages. ``unit``
    (--batch-unit): what the batch counts, examples (= sequences) or tokens; by default the report's unit, but
    sequences for a training config's batch on a tokens report (a new user's config batch of 32 was judged as 32
    tokens and failed the probe's own settings). On a tokens report with T tokens per example, sequences are
    multiplied by T; a --batch-size that looks like sequences (the probe's batch in sequences, or less than one
    sequence's tokens) gets the question "did you mean …?", one that is not a whole number of sequences a note."""
    tpe = report.config.get("tokens_per_example")
    tpe = int(tpe) if report.unit == "tokens" and isinstance(tpe, (int, float)) and tpe >= 1 else None
    seqs = "examples" if unit == "sequences" else unit
    if seqs == "tokens" and report.unit != "tokens":
        raise ConfigError(f"--batch-unit tokens: the report's noise scale is in {report.unit}, not tokens",
                          "pass --batch-size in examples, or measure in tokens (`bsprof measure --unit tokens`)")
    if seqs == "examples" and report.unit == "tokens" and tpe is None:
        raise ConfigError(f"--batch-unit {unit}: the report is in tokens and does not record tokens per example "
                          "(a tracker log records its batch in tokens)", "pass --batch-size in tokens")
    if tpe is None or seqs == "tokens" or (seqs is None and tpe == 1):
        return batch_size, [], None
    batch_size = int(batch_size) if float(batch_size).is_integer() else batch_size
    tokens = f"{batch_size:,} × {tpe} tokens per example = {batch_size * tpe:,} tokens, the report's unit"
    if seqs == "examples":
        given = "the training config's batch size" if from_config else "--batch-size"
        return batch_size * tpe, [f"{given} {batch_size:,} is in {unit} (--batch-unit): judged as {tokens}"], None
    if from_config:
        return batch_size * tpe, [f"the training config's batch size {batch_size:,} is read as sequences and judged "
                                  f"as {tokens} (--batch-size in tokens, or --batch-unit tokens, overrides it)"], None
    fix = f"for {batch_size:,} sequences pass --batch-size {batch_size * tpe:,}, or --batch-unit sequences"
    if batch_size < tpe or batch_size == report.config.get("batch_size"):
        probe = " (the probe's batch)" if batch_size == report.config.get("batch_size") else ""
        return batch_size, [], (f"did you mean {batch_size:,} sequences{probe} = {batch_size * tpe:,} tokens? "
                                f"--batch-size is in tokens, the report's unit: {fix}")
    if batch_size % tpe:
        return batch_size, [f"--batch-size {batch_size:,} is in tokens, the report's unit, and is not a whole number "
                            f"of {tpe}-token examples: {fix}"], None
    return batch_size, [], None


def _ask(verdict: Verdict, question: str) -> Verdict:
    """``question`` at the end of the batch (and lr) check's message where it did not pass, else a warning on it."""
    def ask(c):
        if c.name not in ("batch_size", "lr") or (c.name == "lr" and c.status == PASS):
            return c
        if c.status == PASS:
            return dataclasses.replace(c, notes=(question, *c.notes))
        return dataclasses.replace(c, message=f"{c.message}; {question}")
    return dataclasses.replace(verdict, checks=tuple(ask(c) for c in verdict.checks))


def _judge_all(target, batch_size, lr, config, batch_key, lr_key, at_loss, policy, baseline, budget, steps,
               seed, rel_error, save_report, window=None, batch_unit=None) -> tuple[Verdict, dict]:
    """Parse → one library call (judge) → the verdict plus extra figures for the JSON output."""
    is_spec = target.suffix == ".py"
    problems = []
    if not is_spec:
        problems += [f"{flag} applies to a SPEC.py, not a report" for flag, v in
                     (("--budget", budget), ("--save-report", save_report), ("--seed", seed),
                                                  ("--rel-error", rel_error)) if v is not None]
        problems += ["--steps applies to a SPEC.py, not a report"] if steps else []
    if steps < 0:
        problems.append(f"--steps must be 0 or more (got {steps})")
    if (batch_key or lr_key) and config is None:
        problems.append("--batch-key and --lr-key need --training-config FILE")
    if batch_unit is not None and batch_unit not in BATCH_UNITS:
        problems.append(f"--batch-unit must be one of {', '.join(BATCH_UNITS)} (got {batch_unit!r})")
    if problems:
        raise ConfigError("bad options:\n  - " + "\n  - ".join(problems), "see `bsprof check --help`")
    notes = []
    from_config = False
    if config is not None:
        from_config = batch_size is None
        batch_size, lr, notes = values_from_config(config, batch_key, lr_key, batch_size, lr)
    if batch_size is None and config is not None:
        from bsprof.gate.training_config import BATCH_KEYS, read_training_config

        data = read_training_config(config)
        found = ", ".join(list(data)[:12]) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"no batch size in {config}: none of the keys tried ({', '.join(BATCH_KEYS)}) is there "
                          f"(found: {found})", "name it with --batch-key KEY (dotted for a nested one, e.g. "
                          "trainer.global_batch_size), or pass --batch-size B")
    if batch_size is None:
        raise ConfigError("no batch size to judge", "pass --batch-size B, or --training-config FILE --batch-key KEY")
    problems = [p for p in (limit("--batch-size", batch_size, 1, MAX_BATCH),
                            limit("--lr", lr, 0, 1e6, low_open=True) if lr is not None else None,
                            limit("--at-loss", at_loss, -1e30, 1e30) if at_loss is not None else None) if p]
    if problems:
        raise ConfigError("bad options:\n  - " + "\n  - ".join(problems), "see `bsprof check --help`")
    budget_s = parse_duration(budget) if budget is not None else 60.0
    old = read_report(baseline) if baseline is not None else None
    extra, info = {}, None
    if is_spec:
        report, info = measure_now(target, budget_s, steps, seed, rel_error, save_report)
    else:
        report = load(target, "check", window=window)
        empty = empty_source(target, report, "no noise scale to judge by")
        if empty is not None:
            raise empty
        world = int(report.config.get("world_size") or 1) if report.spec.get("tracker_log") else 1
        if world > 1:  # the Tracker's batch_size is per rank; the noise scale, and so -b, are the global batch's
            notes.append(f"the log is from {world} ranks: its critical batch, and --batch-size, are the global batch "
                         f"(all ranks together: {world} × the per-rank batch_size the Tracker was given)")
    batch_size, unit_notes, question = in_report_unit(report, batch_size, from_config, batch_unit)
    notes += unit_notes
    try:
        verdict = judge(report, batch_size, lr, policy, at_loss, old)
    except ValueError as e:
        further = ("train (and log) further, or use a smaller --window" if report.spec.get("tracker_log") else
                   "measure more steps per training-step window (a larger `bsprof measure --measure-every`) to "
                   "resolve them" if "lower bounds or undetermined" in str(e) else
                   "measure to lower losses with more `bsprof measure --steps`")
        hint = (f"pick a loss inside the measured range, or {further}" if "extrapolate" in str(e) else
                "see `bsprof check --help`")
        raise ConfigError(str(e), hint)
    if question:
        verdict = _ask(verdict, question)
    if info is not None:
        info["rel_halfwidth"] = verdict.noise.rel_halfwidth if verdict.noise else None
        extra["measured_now"] = info
        notes.append(_precision_note(info, verdict))
    if notes:
        verdict = dataclasses.replace(verdict, notes=tuple(notes) + verdict.notes)
    return verdict, extra
