"""What `report`, `schedule` and `check` read: a saved report, a tracker's JSONL log, or a spec file measured now
— one way for all.

A SPEC.py goes through ``bsprof.measure`` with the command's few measurement options; anything the user's code
raises becomes a SpecError naming the failing step and the command that shows the full error.
"""

from __future__ import annotations

from pathlib import Path

from bsprof.errors import BsprofError, ReportError, SpecError
from bsprof.output.report import Report


def is_spec(source: Path) -> bool:
    return source.suffix == ".py"


def measure_spec(spec: Path, command: str, report: Report | None = None, **options) -> Report:
    """Measure ``spec`` with ``MeasureConfig`` ``options`` into ``report`` (a new one by default; on an interrupt
    it holds what was measured); the report or a clear error."""
    from bsprof.api import measure

    if not spec.is_file():
        raise SpecError(f"spec file not found: {spec}", f"pass the SPEC.py you give `bsprof measure` to `bsprof "
                        f"{command}`, or a report.json it wrote")
    report = Report() if report is None else report
    try:
        measure(spec, report=report, **{k: v for k, v in options.items() if v is not None})
    except BsprofError:
        raise
    except Exception as e:  # the user's code failed: say so without a traceback
        step = (report.incomplete or {}).get("step")
        args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items() if v is not None and not callable(v))
        raise SpecError(f"measuring {spec.name} failed{f' at step {step}' if step is not None else ''}: "
                        f"{type(e).__name__}: {e}", f"fix the spec, then run `bsprof measure {spec} {args}` "
                        "to see the full error")
    return report


def load(source: Path, command: str, window: int | None = None, **measure_options) -> Report:
    """A report.json (or its folder) as it was written, a tracker log (``.jsonl``: windowed estimates every
    ``window`` steps; None: ``track.log.auto_window``), or a spec measured now."""
    if is_spec(source):
        return measure_spec(source, command, **measure_options)
    if source.suffix == ".jsonl":
        from bsprof.track.log import report_from_log

        return report_from_log(source, window=window)
    return Report.from_json(source)


def empty_source(source: Path, report: Report, what: str) -> ReportError | None:
    """A tracker log with no window to estimate (fewer than two usable logged steps: a window needs two), or a
    report.json with no measurement (a run stopped before its first), has nothing to show or judge: the error that
    says so first, and the fix; None for anything else."""
    if report.measurements:
        return None
    if not report.spec.get("tracker_log"):  # a report.json of a run that stopped before its first measurement
        from bsprof.output.render import cut_short_text

        why = "; ".join(filter(None, ((report.incomplete or {}).get("reason"), cut_short_text(report))))
        return ReportError(f"{source} holds no measurement" + (f" (the run stopped early: {why})" if why else "")
                           + f": {what}", "measure again, letting the run reach its first measurement (step 0 "
                           "is measured first: `bsprof measure SPEC --steps 0` takes seconds)")
    logged, skipped = int(report.config.get("steps_logged") or 0), int(report.config.get("steps_skipped") or 0)
    if logged == 0 and skipped == 0:
        has = "no logged steps (only its header)"
    elif logged == 0:
        has = f"no usable logged step (all {skipped} had non-finite gradients and were skipped)"
    else:
        has = f"only {logged} usable logged step" + (f" ({skipped} skipped as non-finite)" if skipped else "")
    fix = ("log some optimizer steps: call tracker.step(loss=loss) after the last backward pass of each optimizer "
           "step (docs/tracker.md); a window needs at least two")
    if skipped:
        fix += ", with finite gradients (under AMP, an overflow on every step is skipped)"
    return ReportError(f"{source} is a tracker log with {has}: {what}", fix)
