"""`bsprof sweep SPEC.py`: the empirical critical batch from branched runs (a check of the noise-scale estimate)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bsprof.cli import signals
from bsprof.cli.app import app, console, err_console, user_errors
from bsprof.config import parse_list
from bsprof.errors import BsprofError

O = typer.Option


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="Spec file defining model(), dataset(), loss(model, batch)."),
    method: Optional[str] = O(None, help="global: steps to --target-loss per batch, fit S = S_min(1 + B_crit/B) "
                              "(the headline's quantity); local: equal examples per branch, largest batch within "
                              "--tolerance (Merrill et al.; another quantity). [global with --target-loss, unless "
                              "--examples, --tolerance or --tolerance-mode are given; else local]"),
    base_batch: Optional[int] = O(None, help="Smallest batch B; the sweep runs B·2^k, k = 0..--doublings. [32]"),
    doublings: Optional[int] = O(None, help="Number of doublings K of the base batch. [4]"),
    batches: Optional[str] = O(None, help="Explicit increasing batch list, e.g. 16,32,64 (overrides base/doublings)."),
    lr: Optional[float] = O(None, help="Learning rate of the default SGD optimizer at the smallest batch. [0.1]"),
    lr_rule: Optional[str] = O(None, help="lr scaling with batch: auto (linear for SGD, sqrt for Adam), linear, sqrt, "
                               "none. [auto]"),
    lr_grid: Optional[str] = O(None, help="lr multipliers tried at every batch, e.g. 0.5,1,2 (best per batch). "
                            "[1 local, 0.5,1,2 global]"),
    examples: Optional[int] = O(None, help="local: training examples per branch (0: 32 × the largest batch). [0]"),
    tolerance: Optional[float] = O(None, help="local: a batch passes if its loss ≤ ref·(1 + tol) (rel) or ref + tol "
                                   "(abs), ref = the smallest batch's loss. [0.01]"),
    tolerance_mode: Optional[str] = O(None, help="rel or abs. [rel]"),
    target_loss: Optional[float] = O(None, "--target-loss", "-t", help="global: evaluation loss to reach."),
    max_steps: Optional[int] = O(None, help="global: steps per branch before giving up. [2000]"),
    seeds: Optional[int] = O(None, help="Repeat every branch with this many seeds (variability). [1]"),
    eval_examples: Optional[int] = O(None, help="Size of the fixed evaluation draw (0: the whole dataset). "
                                     "[1024, at most a quarter of a dataset it would hold out more than half of]"),
    holdout: Optional[bool] = O(None, "--holdout/--no-holdout", help="Exclude the evaluation draw from training. "
                                "[holdout]"),
    checkpoint: Optional[str] = O(None, help="Start every branch from these weights (torch.save(state_dict))."),
    schedule: Optional[str] = O(None, help="global: also train this schedule.json (from `bsprof schedule`) as "
                                "written, and say whether it beats every constant batch using no more examples."),
    max_seconds: Optional[float] = O(None, help="Budget of seconds for the whole sweep (partial result kept). [none]"),
    max_examples: Optional[int] = O(None, help="Budget of training examples for the whole sweep (0: none). [0]"),
    n_boot: Optional[int] = O(None, help="global: bootstrap fits for the B_crit interval. [1000]"),
    confidence: Optional[float] = O(None, help="Level of the intervals. [0.9]"),
    report: Optional[Path] = O(None, "--report", "-r", help="A bsprof report.json to compare with (and to saturate "
                               "the linear lr rule at its headline critical batch)."),
    device: Optional[str] = O(None, help="auto (CUDA, MPS, CPU), cpu, cuda, mps. [auto]"),
    seed: Optional[int] = O(None, help="Random seed. [0]"),
    out: Path = O(Path("bsprof-sweep"), "--out", "-o", help="Output folder (sweep.json, sweep.csv)."),
    any_spec: bool = O(False, "--any-spec", help="Accept a --report or --schedule made from another spec file "
                       "(the same model under another name)."),
    overwrite: bool = O(False, "--overwrite", help="Replace an incomplete sweep's results in --out."),
    quiet: bool = O(False, "--quiet", "-q", help="No progress bar or table."),
):
    """Measure the critical batch empirically: short branched runs at several batch sizes on your own model."""
    from bsprof.sweep import config as sweep_options

    with user_errors():
        if method is None:  # a target loss asks steps to it, the headline's B_crit: global, unless local's own
            local_only = (examples, tolerance, tolerance_mode)  # options are given (then it is local's comparison)
            method = "global" if target_loss and all(v is None for v in local_only) else "local"
        options = {k: v for k, v in locals().items() if k in sweep_options.SweepConfig.__dataclass_fields__}
        if batches is not None:
            options["batches"] = parse_list(batches, int, "--batches")
        if lr_grid is not None:
            options["lr_grid"] = parse_list(lr_grid, float, "--lr-grid")
        cfg = sweep_options.sweep_config(flags=True, **options)
        if report is not None and not report.exists():
            raise BsprofError(f"report not found: {report}", "pass the report.json written by `bsprof measure`")
        from bsprof.output.files import check_folder

        fresh = not out.exists()
        check_folder(out, "--out")  # before any branch trains
        if not overwrite:
            _keep_incomplete(out)
    _run(spec, cfg, report, out, quiet, fresh)


def _keep_incomplete(out: Path) -> None:
    """Refuse to overwrite an incomplete sweep's results (stopped by a budget, Ctrl-C or a failure: what it
    measured may be all there is); a finished sweep is replaced, as `bsprof measure` replaces its report."""
    import json

    try:
        old = json.loads((out / "sweep.json").read_text())
    except (OSError, ValueError):
        return
    cut = old.get("incomplete") if isinstance(old, dict) and old.get("kind") == "bsprof-sweep" else None
    if isinstance(cut, dict):
        n = cut.get("branches", 0)
        raise BsprofError(f"{out / 'sweep.json'} holds an incomplete sweep ({cut.get('reason', 'stopped')}, after "
                          f"{n} branch{'' if n == 1 else 'es'}), which this sweep would overwrite",
                          "pass another --out, or --overwrite to replace it")


def _run(spec: Path, cfg, report: Path | None, out: Path, quiet: bool, fresh: bool = False) -> None:
    """Run the sweep, writing its result after every branch; ``fresh``: ``out`` was made for it (removed again,
    empty, when nothing was written)."""
    from bsprof.sweep import run

    written: dict = {}
    failure: BaseException | None = None

    def keep(result) -> None:  # after every branch: the files always hold what was measured so far
        written["result"] = result
        written["paths"] = result.write(out)

    live = not quiet and err_console.is_terminal   # a bar on a terminal; into a pipe, a line per branch
    total: dict = {}
    with signals.as_interrupt():  # SIGTERM/SIGHUP: like Ctrl-C
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err_console,
                      disable=not live, transient=True) as bar:
            task = bar.add_task(f"{cfg.method} sweep", total=None, status="")

            def progress(kind: str, info: dict) -> None:
                if kind == "start":
                    bar.update(task, total=info["total"])
                    total["n"] = info["total"]
                elif kind == "branch_start":
                    what = ("schedule" if info.get("schedule") else
                            f"batch {info['batch']} × lr {info['multiplier']:g}")
                    bar.update(task, status=f"{what} seed {info['seed']}")
                elif kind == "branch":
                    bar.update(task, completed=info["i"])
                    if not live and not quiet:
                        r = info["row"]
                        capped = (r.steps_to_target == float("inf") and not r.diverged and not r.stalled
                                  and r.steps < cfg.max_steps)   # stopped where an earlier lr had done better
                        reached = ("" if r.steps_to_target is None else
                                   f", target at step {r.steps_to_target:g}" if r.steps_to_target != float("inf")
                                   else f", stopped at step {r.steps}: slower than an earlier lr at this batch"
                                   if capped else f", stopped at step {r.steps}: no lower loss since step "
                                   f"{r.lowest_step} (levelled off)" if r.stalled else ", target not reached")
                        err_console.print(f"branch {info['i']}/{total.get('n', '?')}: batch {r.batch}, lr {r.lr:.4g}, "
                                          f"seed {r.seed}: loss {r.loss:.4g}{reached} ({r.seconds:.1f} s)",
                                          highlight=False, soft_wrap=True)   # one line each, for grep in CI logs

            try:
                run(spec, cfg, report=report, progress=progress, on_result=keep)
            except (KeyboardInterrupt, BsprofError) as e:
                failure = e
            except Exception as e:  # the user's code failed mid-sweep: the branches so far were written
                failure = BsprofError(f"the sweep failed: {type(e).__name__}: {e}", "fix the spec; the partial "
                                      "result was kept")
        signals.hold()  # a second signal must not cut the last write short
        result = written.get("result")
        if result is not None and not quiet:
            console.print(result, highlight=False)
        paths = written.get("paths")
        if result is not None and paths is None:  # interrupted while writing: write once more, now uninterruptible
            try:
                paths = result.write(out)
            except (OSError, KeyboardInterrupt):
                paths = None
    if paths is not None:
        (err_console if quiet else console).print(f"wrote {paths['json']}, {paths['csv']}", highlight=False)
    elif fresh:
        with contextlib.suppress(OSError):   # only if empty
            out.rmdir()
    if isinstance(failure, KeyboardInterrupt):
        err_console.print(f"[bold red]{signals.describe(failure)}[/]: " + (
            "the partial result was written" if paths is not None else
            "nothing was measured yet, nothing was written" if result is None else
            "the partial result could not be written"))
        raise typer.Exit(signals.exit_code(failure))
    if failure is not None:
        with user_errors():
            raise failure
    result = written.get("result")
    if result is not None and result.method == "global" and result.critical.status.value == "undetermined":
        with user_errors():   # a finished sweep without its answer: scripts must not take it for one
            raise BsprofError("the sweep did not determine the critical batch (the notes above say why)",
                              "test smaller batches (--batches) or widen --lr-grid; the runs are in "
                              f"{out / 'sweep.json'}")
