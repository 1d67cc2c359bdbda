"""The report: what a run measured, as typed rows (``Measurement``) plus a ``Summary``.

Round-trips through report.json (``output.codec``: schema 2, reads schema 1); renders itself to the terminal
(``__rich__``), to CSV (flat rows) and to figures. Every file is written atomically (``output.files``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path

from bsprof import __version__
from bsprof.output import codec, files
from bsprof.results import LayerEstimate, Measurement, Summary

# the training-step window's columns (``Measurement.to_row``), in every CSV whether or not the run had windows
WINDOW_COLUMNS = ("b_simple_window", "b_simple_window_lo", "b_simple_window_hi", "b_simple_window_status",
                  "window_steps")
# what ``Report.write`` writes, by its key in the returned paths
OUTPUTS = {"json": "report.json", "csv": "measurements.csv", "layers": "layers.csv", "figure": "noise_scale.png"}


@dataclass(repr=False)
class Report:
    """A run's measurements (one row per estimate) and everything needed to reproduce it."""

    spec: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    layers: list[LayerEstimate] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)
    incomplete: dict | None = None
    timing: dict = field(default_factory=dict)  # seconds measuring vs training (``engine.cost.RunClock``)
    unit: str = "examples"
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    bsprof_version: str = __version__

    def __post_init__(self):
        """Rows may also be given flat (dicts with the CSV columns, as in schema 1)."""
        self.measurements = [_typed(r, Measurement.from_row) for r in self.measurements]
        self.layers = [_typed(r, LayerEstimate.from_dict) for r in self.layers]

    def __repr__(self) -> str:
        """One line: what ``print(report)`` shows (the fields are attributes; ``rich.print(report)`` the table)."""
        from bsprof.output.render import headline_text, plural

        m = self.measurements
        where = f" at steps {m[0].step}–{m[-1].step}" if len(m) > 1 else f" at step {m[0].step}" if m else ""
        said = f"; {headline_text(self.summary).split(' (')[0]}" if m else ""   # the number, not its reason
        return (f"<bsprof Report: {plural(len(m), 'measurement')}{where}{said}"
                + (" (incomplete)" if self.incomplete else "") + ">")

    # -- building -------------------------------------------------------------------------------------------
    def add(self, row: Measurement | dict, layers: list[LayerEstimate] = ()) -> None:
        self.measurements.append(_typed(row, Measurement.from_row))
        self.layers.extend(_typed(r, LayerEstimate.from_dict) for r in layers)

    def diagnose(self, code: str, message: str) -> None:
        """Record a warning about whether the theory applies (once per code)."""
        if all(d["code"] != code for d in self.diagnostics):
            self.diagnostics.append({"code": code, "message": message})

    # -- reading --------------------------------------------------------------------------------------------
    @property
    def summary(self) -> Summary:
        """The headline critical batch (``schedule.headline``), the noise scale at the latest weights measured,
        and how much it grew over the run."""
        return self.summary_at()

    def summary_at(self, target_loss: float | None = None) -> Summary:
        """``summary`` with the headline's path ending at ``target_loss`` (default: the lowest measured loss)."""
        from bsprof.schedule.headline import critical_batch

        s = Summary.of(self.measurements, self.unit)
        if not self.measurements:
            return s
        h = critical_batch(self, target_loss)
        return dataclasses.replace(s, critical_batch=h.estimate, critical_batch_quantity=h.quantity,
                                   critical_batch_reason=h.reason)

    def to_frame(self):
        """The measurements as a pandas DataFrame of flat rows (the CSV columns)."""
        import pandas as pd

        frame = pd.DataFrame([m.to_row() for m in self.measurements])
        for column in WINDOW_COLUMNS:  # in every run's CSV, blank where no row has a window (one schema to concat)
            if column not in frame:
                frame[column] = "" if column.endswith("_status") else math.nan
        frame["window_steps"] = frame["window_steps"].astype("Int64")  # a count, blank where a row has no window
        return frame

    def to_dict(self) -> dict:
        return codec.encode(self)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        return codec.decode(data)

    def to_json(self, path: str | Path) -> Path:
        return files.write_text(path, codec.dumps(self))

    @classmethod
    def from_json(cls, path: str | Path) -> Report:
        return codec.read(path)

    def write(self, out: str | Path, figures: bool = True) -> dict[str, Path]:
        """Write report.json, measurements.csv, layers.csv and the figures into the folder ``out``; any of these
        that this report does not write (no measurement yet, no layers, figures off or cut short) is removed, so
        that an older run's file is never left beside it."""
        import pandas as pd

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": self.to_json(out / "report.json")}
        if self.measurements:
            paths["csv"] = files.write_text(out / "measurements.csv", self.to_frame().to_csv(index=False))
        if self.layers:
            paths["layers"] = files.write_text(out / "layers.csv",
                                               pd.DataFrame([r.to_row() for r in self.layers]).to_csv(index=False))
        if figures and self.measurements:
            from bsprof.output.figures import plot_noise_scale

            figure = plot_noise_scale(self, out / "noise_scale.png")  # None without matplotlib (a note says so)
            if figure is not None:
                paths["figure"] = figure
        for key, name in OUTPUTS.items():
            if key not in paths:
                (out / name).unlink(missing_ok=True)
        return paths

    def __rich__(self):
        from bsprof.output.render import Fitted

        return Fitted(self, self.summary)   # sized to the console's width when printed


def _typed(row, from_flat):
    return from_flat(row) if isinstance(row, dict) else row
