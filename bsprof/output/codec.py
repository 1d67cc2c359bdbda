"""The one JSON codec of reports: schema 2 (typed rows: estimates as {value, lo, hi, status}), and a reader of
schema 1 (flat rows: b_simple, b_simple_lo, b_simple_hi, status, …) written by bsprof 0.1.

Non-finite floats are written as null and read back as NaN. Anything that does not match the schema is a
``ReportError`` naming the field, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from bsprof.errors import ReportError
from bsprof.results import LayerEstimate, Measurement, json_clean

SCHEMA_VERSION = 2
READS = (1, 2)
REQUIRED = ("schema_version", "measurements", "summary", "config")
_FIX = "pass the report.json written by `bsprof measure`"
MAX_BYTES = 256 << 20
_KIND = {dict: "an object", list: "a list"}


def encode(report) -> dict:
    """The report as strict-JSON data (schema 2)."""
    return json_clean({
        "schema_version": SCHEMA_VERSION, "bsprof_version": report.bsprof_version, "created": report.created,
        "unit": report.unit, "spec": report.spec, "config": report.config, "environment": report.environment,
        "measurements": report.measurements, "summary": report.summary, "layers": report.layers,
        "diagnostics": report.diagnostics, "incomplete": report.incomplete,
    })


def _expect(data: dict, key: str, kind: type, where: str, optional: bool = False):
    value = data.get(key)
    if value is None and optional:
        return kind()
    if not isinstance(value, kind):
        raise ReportError(f"{where} does not match the report schema: {key!r} must be {_KIND[kind]}, "
                          f"found {type(value).__name__}", _FIX)
    return value


def decode(data, where: str = "report"):
    """A ``Report`` from schema-1 or schema-2 data; ReportError on anything malformed."""
    from bsprof.output.report import Report

    if not isinstance(data, dict):
        raise ReportError(f"{where} holds a {type(data).__name__}, not a report object", _FIX)
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ReportError(f"{where} is not a bsprof report: missing {', '.join(missing)}", _FIX)
    version = data["schema_version"]
    if version not in READS or isinstance(version, bool):
        raise ReportError(f"{where}: schema_version {version!r} is not one this bsprof reads ({READS})",
                          "upgrade bsprof, or re-run `bsprof measure`")
    rows = _expect(data, "measurements", list, where)
    layers = _expect(data, "layers", list, where, optional=True)
    read_row = Measurement.from_row if version == 1 else Measurement.from_dict
    measurements, layer_rows = [], []
    for i, row in enumerate(rows):
        measurements.append(_read(read_row, row, f"{where}: measurements[{i}]"))
    for i, row in enumerate(layers):
        layer_rows.append(_read(LayerEstimate.from_dict, row, f"{where}: layers[{i}]"))
    diagnostics = _expect(data, "diagnostics", list, where, optional=True)
    if not all(isinstance(d, dict) and isinstance(d.get("code"), str) and isinstance(d.get("message"), str)
               for d in diagnostics):
        raise ReportError(f"{where}: diagnostics must be objects with a code and a message", _FIX)
    incomplete = data.get("incomplete")
    if incomplete is not None and not isinstance(incomplete, dict):
        raise ReportError(f"{where}: 'incomplete' must be an object or null", _FIX)
    return Report(spec=_expect(data, "spec", dict, where, optional=True), config=_expect(data, "config", dict, where),
                  environment=_expect(data, "environment", dict, where, optional=True), measurements=measurements,
                  layers=layer_rows, diagnostics=diagnostics, incomplete=incomplete,
                  unit=str(data.get("unit") or "examples"), created=str(data.get("created") or ""),
                  bsprof_version=str(data.get("bsprof_version") or ""))


def _read(reader, row, where: str):
    if not isinstance(row, dict):
        raise ReportError(f"{where} does not match the report schema: it is {type(row).__name__}, not an object",
                          _FIX)
    try:
        return reader(row)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ReportError(f"{where} does not match the report schema ({what})", _FIX)


def read(path: str | Path):
    """Load a report.json (or the report.json inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise ReportError(f"report not found: {path}", _FIX)
    if path.stat().st_size > MAX_BYTES:
        raise ReportError(f"{path} is {path.stat().st_size >> 20} MiB, too large for a report", _FIX)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path} is not valid JSON ({e})", _FIX)
    except RecursionError:
        raise ReportError(f"{path} nests too deeply to be a report", _FIX)
    return decode(data, str(path))


def dumps(report) -> str:
    return json.dumps(encode(report), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
