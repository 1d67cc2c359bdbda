"""The report: what a run measured, as rows plus a summary. Round-trips through report.json (schema_version 1).

Fields may be added, never silently changed. Non-finite floats are written as null.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bsprof import __version__
from bsprof.errors import ReportError

if TYPE_CHECKING:
    import pandas as pd  # imported where used: pandas costs ~0.5 s, and `bsprof --help` needs none of it

SCHEMA_VERSION = 1
REQUIRED = ("schema_version", "measurements", "summary", "config")


def json_safe(x):
    """x with every non-finite float (at any depth of dicts and lists) replaced by None, for strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def _none_to_nan(row: dict) -> dict:
    return {k: (math.nan if v is None and k.startswith(("b_", "g2", "trace")) else v) for k, v in row.items()}


@dataclass
class Report:
    """A run's measurements (one row per estimate) and everything needed to reproduce it."""

    spec: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    measurements: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)
    incomplete: dict | None = None
    unit: str = "examples"
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    bsprof_version: str = __version__

    # -- building -------------------------------------------------------------------------------------------
    def add(self, row: dict, layers: list[dict] = ()) -> None:
        self.measurements.append(row)
        self.layers.extend(layers)

    def diagnose(self, code: str, message: str) -> None:
        """Record a warning about whether the theory applies (once per code)."""
        if all(d["code"] != code for d in self.diagnostics):
            self.diagnostics.append({"code": code, "message": message})

    # -- reading --------------------------------------------------------------------------------------------
    @property
    def summary(self) -> dict:
        """The noise scale at the latest weights measured, and how much it grew over the run."""
        rows = self.measurements
        if not rows:
            return {"status": "undetermined", "b_simple": None, "b_simple_lo": None, "b_simple_hi": None,
                    "unit": self.unit, "reason": "nothing was measured"}
        last = rows[-1]
        out = {k: last.get(k) for k in ("b_simple", "b_simple_lo", "b_simple_hi", "status", "step", "loss",
                                         "g2", "trace_sigma")}
        out.update(unit=self.unit, n_measurements=len(rows),
                   examples_measured=int(sum(r.get("examples", 0) for r in rows)))
        for key in ("b_noise", "b_noise_lo", "b_noise_hi", "b_pre", "b_pre_lo", "b_pre_hi"):
            if last.get(key) is not None:
                out[key] = last[key]
        ok = [r for r in rows if r.get("status") == "ok"]
        if len(ok) >= 2 and ok[0]["b_simple"] > 0:
            out["growth"] = ok[-1]["b_simple"] / ok[0]["b_simple"]
        return out

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.measurements)

    def to_dict(self) -> dict:
        return json_safe({
            "schema_version": SCHEMA_VERSION, "bsprof_version": self.bsprof_version, "created": self.created,
            "unit": self.unit, "spec": self.spec, "config": self.config, "environment": self.environment,
            "measurements": self.measurements, "summary": self.summary, "layers": self.layers,
            "diagnostics": self.diagnostics, "incomplete": self.incomplete,
        })

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ReportError(f"not a bsprof report: missing {', '.join(missing)}",
                              "pass the report.json written by `bsprof measure`")
        if data["schema_version"] != SCHEMA_VERSION:
            raise ReportError(f"report schema_version {data['schema_version']} is not {SCHEMA_VERSION}",
                              "re-run `bsprof measure` with this version of bsprof")
        return cls(spec=data.get("spec", {}), config=data["config"], environment=data.get("environment", {}),
                   measurements=[_none_to_nan(r) for r in data["measurements"]], layers=data.get("layers", []),
                   diagnostics=data.get("diagnostics", []), incomplete=data.get("incomplete"),
                   unit=data.get("unit", "examples"), created=data.get("created", ""),
                   bsprof_version=data.get("bsprof_version", ""))

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> Report:
        path = Path(path)
        if not path.is_file():
            raise ReportError(f"report not found: {path}", "pass the report.json written by `bsprof measure`")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ReportError(f"{path} is not valid JSON ({e})", "pass the report.json written by `bsprof measure`")
        if not isinstance(data, dict):
            raise ReportError(f"{path} holds a {type(data).__name__}, not a report object",
                              "pass the report.json written by `bsprof measure`")
        return cls.from_dict(data)

    def write(self, out: str | Path, figures: bool = True) -> dict[str, Path]:
        """Write report.json, measurements.csv, layers.csv and the figures into the folder ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": self.to_json(out / "report.json"), "csv": out / "measurements.csv"}
        self.to_frame().to_csv(paths["csv"], index=False)
        if self.layers:
            paths["layers"] = out / "layers.csv"
            import pandas as pd

            pd.DataFrame(self.layers).to_csv(paths["layers"], index=False)
        if figures and self.measurements:
            from bsprof.output.figures import plot_noise_scale

            figure = plot_noise_scale(self, out / "noise_scale.png")  # None without matplotlib (a note says so)
            if figure is not None:
                paths["figure"] = figure
        return paths

    def __rich__(self):
        from bsprof.output.render import report_table

        return report_table(self)
