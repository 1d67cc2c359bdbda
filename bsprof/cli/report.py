"""`bsprof report (REPORT.json | LOG.jsonl)`: re-render a saved run or a tracker log (table, and optionally the
CSV and figures again)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from bsprof.cli.app import app, console, show, user_errors
from bsprof.cli.source import empty_source, is_spec, load
from bsprof.errors import ConfigError, ReportError


@app.command("report")
def report_command(
    source: Path = typer.Argument(..., help="report.json (or its folder) from `bsprof measure`, or a tracker's "
                                 "JSONL log (bsprof.Tracker(log=...))."),
    window: Optional[int] = typer.Option(None, "--window", help="Tracker logs: steps per windowed estimate (default: "
                                                                 "100, or a fifth of a shorter log's steps, at least "
                                                                 "10)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also rewrite the CSV files and figures here."),
    layers: bool = typer.Option(False, "--layers", help="Show the per-layer breakdown of the last measurement."),
    target_loss: Optional[float] = typer.Option(None, "--target-loss", "-t", help="End the headline critical "
                                                "batch's path at this loss (default: the lowest loss at which the "
                                                "noise scale it follows is resolved)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json (the report, with its summary to "
                            "--target-loss) or csv (the measurements; with --layers the layers), on stdout."),
):
    """Show a saved report: the measurements, the summary, the diagnostics."""
    with user_errors():
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})", "e.g. --format json")
        if is_spec(source):
            from bsprof.engine.spec import not_spec

            if source.is_file() and not_spec(source):
                raise ConfigError(f"`bsprof report` shows a saved report or a tracker's log, and {source.name} is a "
                                  "Python file that is not a spec file (no model(), dataset(), loss(model, batch))",
                                  "pass the report.json of `bsprof measure`, or the log your Tracker wrote "
                                  "(Tracker(..., log='gns.jsonl'))")
            raise ConfigError(f"`bsprof report` shows a saved report, and {source.name} is a spec file",
                              f"measure it first: bsprof measure {source}, then bsprof report bsprof-out")
        if target_loss is not None and not (math.isfinite(target_loss) and target_loss > 0):
            raise ConfigError(f"--target-loss must be a positive number (got {target_loss:g})",
                              "pass a loss the run reaches, e.g. its lowest measured loss or a little above")
        swept = saved_sweep(source)
        if swept is not None:   # a sweep's result: shown as `bsprof sweep` printed it
            given = [o for o, on in (("--target-loss", target_loss is not None), ("--layers", layers),
                                     ("--out", out is not None), ("--window", window is not None)) if on]
            if given:
                raise ConfigError(f"{' and '.join(given)} do{'es' if len(given) == 1 else ''} not apply to a `bsprof "
                                  f"sweep` result ({source.name}): it is shown as the sweep printed it",
                                  "drop " + " and ".join(given) + "; the report of `bsprof measure` (or a tracker's "
                                  "log) takes them")
            if fmt == "json":
                typer.echo(swept[1], nl=False)
            elif fmt == "csv":
                typer.echo(swept[0].to_csv(), nl=False)
        if swept is None and out is not None:
            from bsprof.output.files import check_folder

            check_folder(out, "--out")  # before reading or measuring anything
    if swept is not None:
        if fmt == "table":
            show(swept[0])
        return
    with user_errors():
        report = load(source, "report", window=window)
        empty = empty_source(source, report, "no noise scale to show")
        if empty is not None:
            raise empty
        if layers and not report.layers:
            raise no_layers(source, report)
        if fmt != "table":
            typer.echo(as_text(report, fmt, target_loss, layers), nl=False)
        elif target_loss is not None:
            from bsprof.output.render import Fitted

            shown = Fitted(report, report.summary_at(target_loss))
    if fmt == "table":
        show(report if target_loss is None else shown)
    if layers and report.layers and fmt == "table":
        from bsprof.output.render import layers_table

        show(layers_table(report))
    if out is not None:
        with user_errors():
            paths = report.write(out)
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


FORMATS = ("table", "json", "csv")


def saved_sweep(source: Path):
    """(SweepResult, its text) when ``source`` is a `bsprof sweep` result (sweep.json, or its folder without a
    report.json), else None."""
    import json

    from bsprof.sweep.result import SweepResult

    path = source / "sweep.json" if source.is_dir() and not (source / "report.json").exists() else source
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        text = path.read_text()
        data = json.loads(text)
    except (OSError, ValueError, RecursionError):  # not JSON, or nested too deeply: the report reader says which
        return None
    if not isinstance(data, dict) or data.get("kind") != "bsprof-sweep":
        return None
    try:
        return SweepResult.from_dict(data), text
    except (TypeError, ValueError, KeyError) as e:
        raise ReportError(f"{path} is a `bsprof sweep` result this bsprof cannot read ({type(e).__name__}: {e})",
                          "run the sweep again with this bsprof") from None


def no_layers(source: Path, report) -> ReportError:
    """--layers on a source without per-layer rows: a tracker log never has them (the tracker pairs the whole
    model's gradient, one pair per training step); a report may predate them or have measured nothing."""
    fix = ("`bsprof measure SPEC.py` measures per layer and writes layers.csv (`bsprof report bsprof-out --layers` "
           "shows it)")
    if report.spec.get("tracker_log"):
        return ReportError(f"{source} is a tracker log: it has no per-layer table (the tracker's pairs are of the "
                           "whole model's gradient, one per training step)", f"{fix}; without --layers this command "
                           "shows the log's windows")
    return ReportError(f"{source} has no per-layer rows (nothing was measured per layer)", f"{fix}; without "
                       "--layers this command shows the report")


def as_text(report, fmt: str, target_loss: float | None, layers: bool = False) -> str:
    """The report as JSON (report.json's content, its summary ending the headline's path at ``target_loss``) or
    the measurements as CSV (measurements.csv's content; with ``layers``, layers.csv's)."""
    if fmt == "csv" and layers:
        import pandas as pd

        return pd.DataFrame([r.to_row() for r in report.layers]).to_csv(index=False)
    if fmt == "csv":
        return report.to_frame().to_csv(index=False)
    import json

    from bsprof.output import codec
    from bsprof.results import json_clean

    data = codec.encode(report)
    if target_loss is not None:
        data["summary"] = json_clean(report.summary_at(target_loss))
    return json.dumps(data, indent=2) + "\n"
