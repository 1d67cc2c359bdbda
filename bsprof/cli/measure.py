"""`bsprof measure SPEC.py`: probe training with noise-scale measurements; writes the report folder."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bsprof import distributed
from bsprof.cli import signals
from bsprof.cli.app import app, console, err_console, show, user_errors
from bsprof.config import MeasureConfig, resolve
from bsprof.errors import BsprofError, ConfigError
from bsprof.output import files
from bsprof.output.render import cut_short_text, estimate_text, fmt, plural
from bsprof.output.report import OUTPUTS, Report
from bsprof.results import Estimate, plus_minus

O = typer.Option


@app.command()
def measure(
    spec: Path = typer.Argument(..., help="Spec file defining model(), dataset(), loss(model, batch)."),
    config: Optional[Path] = O(None, "--config", "-c", help="YAML file of options (command-line flags win)."),
    out: Path = O(Path("bsprof-out"), "--out", "-o", help="Report folder."),
    steps: Optional[int] = O(None, help="Probe-training steps; 0 measures the initial (or checkpoint) weights. [200]"),
    batch_size: Optional[int] = O(None, help="Training batch size. [32]"),
    lr: Optional[float] = O(None, help="Learning rate of the default SGD optimizer. [0.1]"),
    measure_every: Optional[int] = O(None, help="Steps between measurements (0: at step 0 and four more, evenly "
                                 "spaced to the last). [0]"),
    rel_error: Optional[float] = O(None, help="Target relative half-width of the B_simple interval. [0.2]"),
    confidence: Optional[float] = O(None, help="Confidence level of the intervals. [0.9]"),
    method: Optional[str] = O(None, help="Probe: auto, per_example, hooks, vmap, microbatch. [auto]"),
    micro_batch: Optional[int] = O(None, help="Small batch b of the micro-batch probe. [8]"),
    probe_batch: Optional[int] = O(None, help="Big batch B of each draw (0: adapt to ≈2·B_simple). [0]"),
    chunk: Optional[int] = O(None, help="Examples per forward pass while measuring (memory). [256]"),
    max_examples: Optional[int] = O(None, help="Budget of examples per measurement. [200000]"),
    max_seconds: Optional[float] = O(None, help="Budget of seconds per measurement of B_simple (B_pre and --hessian's "
                                      "B_noise draw after it, within --measure-budget: under Adam B_simple and B_pre "
                                      "share it). "
                                      "[60]"),
    measure_budget: Optional[float] = O(None, help="A measurement stops (after --min-draws) once it took this many "
                                        "times the training time since the previous one (the first: until the "
                                        "next); 0: stop by --rel-error alone. [1]"),
    min_draws: Optional[int] = O(None, help="Draws before the stopping rule may stop. [5]"),
    device: Optional[str] = O(None, help="auto (CUDA, MPS, CPU), cpu, cuda, mps. [auto]"),
    seed: Optional[int] = O(None, help="Random seed. [0]"),
    checkpoint: Optional[str] = O(None, help="Measure at these saved weights (torch.save(state_dict))."),
    unit: Optional[str] = O(None, help="Batch unit: examples or tokens. [examples]"),
    tokens_per_example: Optional[int] = O(None, help="Tokens per example for --unit tokens (0: from the spec). [0]"),
    hessian: Optional[bool] = O(None, "--hessian/--no-hessian", help="Also measure B_noise (Hessian-aware). [off]"),
    track_training: Optional[bool] = O(None, "--track-training/--no-track-training", help="Also estimate B_simple "
                                       "from the training steps between measurements (per-example norms; for "
                                       "BatchNorm or layers without a rule, two micro-batches per step). [on]"),
    strict: Optional[bool] = O(None, "--strict/--no-strict", help="Never the slow torch.func path: with --method "
                               "hooks a parameter that would take it is an error (register a rule instead), under "
                               "auto micro-batches are taken. [off]"),
    figures: bool = O(True, "--figures/--no-figures", help="Write noise_scale.png."),
    quiet: bool = O(False, "--quiet", "-q", help="Print only errors (the results are in --out)."),
    verbose: bool = O(False, "--verbose", "-v", help="Also say which probe was chosen and why, and a detail line "
                      "per measurement (loss, |G|², tr(Σ), precision, draws)."),
    debug: bool = O(False, "--debug", help="On an error in your code, also print the full traceback."),
):
    """Measure the gradient noise scale B_simple = tr(Σ)/|G|² along a short probe training."""
    overrides = {k: v for k, v in locals().items() if k in MeasureConfig.__dataclass_fields__}
    report = Report()
    with user_errors():
        if quiet and verbose:
            raise ConfigError("--quiet and --verbose contradict each other", "pass one of them")
        cfg = resolve(MeasureConfig, config, overrides, flags=True)
        with distributed.session(cfg.device) as comm:  # one process unless launched by torchrun
            with _output_folder(out, comm):
                _run(spec, cfg, report, out, figures, quiet or not comm.is_main, comm, debug,
                     verbose and comm.is_main)


@contextlib.contextmanager
def _output_folder(out: Path, comm: distributed.Comm):
    """Before any training: the report folder exists, is writable, and no other run writes there (rank 0 only);
    made here and left empty, it is removed at the end."""
    if not comm.is_main:
        yield
        return
    created = not out.exists()
    files.check_folder(out, "--out", tuple(OUTPUTS.values()))
    try:
        with files.folder_lock(out, "--out"):
            yield
    finally:
        if created:  # a run that wrote nothing (stopped before its first measurement) leaves no empty folder
            with contextlib.suppress(OSError):
                out.rmdir()


def _run(spec: Path, cfg: MeasureConfig, report: Report, out: Path, figures: bool, quiet: bool,
         comm: distributed.Comm = distributed.LOCAL, debug: bool = False, verbose: bool = False) -> None:
    """Measure and write the report; under torchrun only rank 0 writes and prints (other ranks stay quiet).
    Progress goes to stderr: a live bar on a terminal, else a line per measurement; ``verbose`` adds the probe
    chosen and why, and a detail line per measurement (on a terminal too)."""
    from bsprof.engine.loop import measure as run_measure

    failure: BaseException | None = None
    started = time.perf_counter()
    with signals.as_interrupt() if comm.world == 1 else _nothing():  # SIGTERM/SIGHUP: like Ctrl-C
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err_console,
                      disable=quiet or not err_console.is_terminal, transient=True) as bar:  # logs: lines
            task = bar.add_task("probe training", total=cfg.steps, status="")

            def say(line: str) -> None:
                err_console.print(line, highlight=False, markup=False, soft_wrap=True)  # grep-able logs

            def progress(kind: str, info: dict) -> None:
                if kind == "setup" and verbose:
                    say(f"probe: {info['method']} ({info['why']})")
                    say(f"device {info['device']}; optimizer {info['optimizer']} (lr {info['lr']}); dataset "
                        f"{info['dataset_size']} examples")
                elif kind == "train":
                    bar.update(task, completed=info["step"], status=f"loss {info['loss']:.4g}")
                elif kind == "draw":
                    bar.update(task, status=f"measuring at step {info['step']}: B_simple "
                               f"{estimate_text(_estimate(info['estimate']))}")
                elif kind == "measured" and (verbose or not (quiet or err_console.is_terminal)):  # logs: a line
                    row = info["row"]
                    elapsed = time.perf_counter() - started
                    other = max(0.0, elapsed - info["measuring_s"] - info["training_s"])
                    extra = info.get("step_s", 0.0) - row.seconds   # after B_simple's draws: B_noise, B_pre, ...
                    more = " and ".join(q for q, est in (("B_noise", row.b_noise), ("B_pre", row.b_pre))
                                        if est is not None and est.status.value != "not_available")
                    also = f", {extra:.1f} s more for {more or 'its other statistics'}" if extra >= 0.05 else ""
                    say(f"step {row.step}: B_simple {estimate_text(row.b_simple)} ({plural(row.n_draws, 'draw')}, "
                        f"{row.examples} examples, {row.seconds:.1f} s{also}); so far measuring "
                        f"{info['measuring_s']:.1f} s"
                        f", training {info['training_s']:.1f} s, setup and other {other:.1f} s "
                        f"({elapsed:.1f} s elapsed)")
                    if verbose:
                        h = row.b_simple.rel_halfwidth
                        say(f"  loss {fmt(row.loss, 4)}, |G|² {fmt(row.g2.value)}, tr(Σ) {fmt(row.trace_sigma)}; "
                            f"{plus_minus(h)} (asked ±{cfg.rel_error:.0%}), stopped by "
                            f"{row.stopped_by}; probe {row.method}, draws of b = {row.b}, B = {row.B}")
                elif kind == "measured":  # the live bar
                    bar.update(task, status=f"measuring {info['measuring_s']:.1f} s, training "
                               f"{info['training_s']:.1f} s so far")

            try:
                with distributed.stop_on_sigterm(comm):
                    run_measure(spec, cfg, report, progress, comm)
            except (KeyboardInterrupt, BsprofError) as e:
                failure = e
            except Exception as e:  # the user's code failed mid-run: keep what was measured, then show it
                failure = e
        signals.hold()  # a second SIGTERM/SIGHUP must not cut the report short
        hurry = isinstance(failure, signals.Terminated)  # a grace period runs (docker stop: 10 s): no figure
        written, write_error = _write(report, out, figures and not hurry, quiet, comm)
    kept = "the partial report was written" if written else "no report was written"
    if written and hurry and figures and report.measurements:
        kept += (f" (without the figure, to exit within the signal's grace period: `bsprof report "
                 f"{out / 'report.json'} --out {out}` draws it)")
    if isinstance(failure, KeyboardInterrupt):
        cut = cut_short_text(report)  # the measurement it was stopped inside: kept, or too few draws
        err_console.print(f"[bold red]{signals.describe(failure)}[/]: {escape(cut) + '; ' if cut else ''}{kept}")
        raise typer.Exit(signals.exit_code(failure))
    if isinstance(failure, distributed.RankFailure) and not comm.is_main:
        raise typer.Exit(failure.exit_code)  # rank 0 says what happened
    if isinstance(failure, ConfigError) and not comm.is_main:
        raise typer.Exit(failure.exit_code)  # options and data are the same on every rank: rank 0 says it once
    if failure is not None and not isinstance(failure, BsprofError):
        if debug:
            import traceback

            traceback.print_exception(failure)
        failure = _user_failure(failure, report, kept, debug)
    if failure is not None:
        raise failure
    if write_error is not None:
        raise write_error


@contextlib.contextmanager
def _nothing():
    yield


def _write(report: Report, out: Path, figures: bool, quiet: bool,
           comm: distributed.Comm) -> tuple[bool, BsprofError | None]:
    """Write the report folder (rank 0) and say so; (written, the error if it could not be written)."""
    if not (comm.is_main and (report.measurements or report.config)):
        return False, None
    replaced = _previous(out)
    try:
        paths = report.write(out, figures=figures)
    except OSError as e:
        err = ConfigError(f"cannot write the report to {out}: {e.strerror or e}", "free space or pass another --out")
        err_console.print(f"[bold red]error:[/] {escape(err.message)}", highlight=False)
        return False, err
    if not quiet:
        show(report)
        console.print(f"wrote {escape(', '.join(str(p) for p in paths.values()))}{escape(replaced)}", highlight=False)
    return True, None


def _previous(out: Path) -> str:
    """' (replacing the report of SPEC from TIME there)' when ``out`` holds an earlier report (its spec and time as far
    as the file says them: a report written by the Python API has no spec path), else ''."""
    path = out / OUTPUTS["json"]
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return " (replacing the report there)" if path.exists() else ""
    old = old if isinstance(old, dict) else {}
    spec = old.get("spec") if isinstance(old.get("spec"), dict) else {}
    name = spec.get("path") or spec.get("tracker_log")
    what = f"the report of {Path(name).name}" if isinstance(name, str) and name else "the report"
    try:
        when = datetime.fromisoformat(str(old["created"])).astimezone(timezone.utc)
    except (KeyError, ValueError, TypeError):
        return f" (replacing {what} there)"
    return f" (replacing {what} from {when:%Y-%m-%d %H:%M} UTC there)"


def _user_failure(e: Exception, report: Report, kept: str, debug: bool = False) -> BsprofError:
    """The user's code raised: what, in which phase and step, where in their file, and the fix."""
    info = report.incomplete or {}
    where = f" in {info['where']}" if info.get("where") else ""
    layer = f", inside the model's {info['module']}" if info.get("module") else ""
    at = f" at step {info['step']}" if info.get("step") is not None else ""
    what = f"{info.get('phase', 'the run')}{at} failed{where}{layer}: {type(e).__name__}: {e}"
    data = [d["message"] for d in report.diagnostics if d["code"] == "list_items"]
    if data:
        return BsprofError(what, f"{data[0]} ({kept})")
    fix = (f"fix {info['module'].split(' (')[0]} of model() or what it is given (its input's shape, dtype or device)"
           if layer else f"fix the spec{where}")
    return BsprofError(what, f"{fix}; {kept}" + ("" if debug else " (--debug shows the traceback)"))


def _estimate(e) -> Estimate:
    return Estimate(e.b_simple, e.b_simple_lo, e.b_simple_hi, e.status)
