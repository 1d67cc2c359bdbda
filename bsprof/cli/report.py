"""`bsprof report REPORT.json`: re-render a saved run (table, and optionally the CSV and figures again)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bsprof.cli.app import app, console, user_errors
from bsprof.output.report import Report


@app.command("report")
def report_command(
    source: Path = typer.Argument(..., help="report.json (or its folder) from `bsprof measure`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also rewrite the CSV files and figures here."),
    layers: bool = typer.Option(False, "--layers", help="Show the per-layer breakdown of the last measurement."),
):
    """Show a saved report: the measurements, the summary, the diagnostics."""
    with user_errors():
        report = Report.from_json(source / "report.json" if source.is_dir() else source)
    console.print(report)
    if layers and report.layers:
        from bsprof.output.render import layers_table

        console.print(layers_table(report))
    if out is not None:
        paths = report.write(out)
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
