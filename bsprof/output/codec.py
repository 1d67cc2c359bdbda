"""The one JSON codec of reports: schema 2 (typed rows: estimates as {value, lo, hi, status}), and a reader of
schema 1 (flat rows: b_simple, b_simple_lo, b_simple_hi, status, …) written by bsprof 0.1.

Non-finite floats are written as null and read back as NaN. Anything that does not match the schema is a
``ReportError`` naming the field, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from bsprof.errors import ReportError, clip, short
from bsprof.results import LayerEstimate, Measurement, json_clean

SCHEMA_VERSION = 2
READS = (1, 2)
REQUIRED = ("schema_version", "measurements", "summary", "config")
_FIX = "pass the report.json written by `bsprof measure`"
MAX_BYTES = 256 << 20
_KIND = {dict: "an object", list: "a list"}
MAX_DEPTH = 32          # a report nests 4 levels; deeper is not a report
MAX_ABS = 1e100         # |numbers| beyond this (or an integer beyond 2**63) would overflow the math downstream


def _check_values(data, where: str) -> None:
    """Every number finite and within ``MAX_ABS`` (integers within 2**63), nesting within ``MAX_DEPTH``: a
    ReportError naming the field, before any value reaches float(), a fit or a solver."""
    stack = [(data, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ReportError(f"{where}: {path or 'the report'} nests deeper than {MAX_DEPTH} levels", _FIX)
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))
        elif isinstance(node, bool) or node is None or isinstance(node, str):
            continue
        elif isinstance(node, int) and abs(node) >= 1 << 63:
            raise ReportError(f"{where}: {path} is an integer of {node.bit_length()} bits, beyond 2**63", _FIX)
        elif isinstance(node, float) and not abs(node) <= MAX_ABS:
            raise ReportError(f"{where}: {path} is {short(node, 40)}, not a finite number within ±{MAX_ABS:g}",
                              _FIX)


def encode(report) -> dict:
    """The report as strict-JSON data (schema 2)."""
    return json_clean({
        "schema_version": SCHEMA_VERSION, "bsprof_version": report.bsprof_version, "created": report.created,
        "unit": report.unit, "spec": report.spec, "config": report.config, "environment": report.environment,
        "measurements": report.measurements, "summary": report.summary, "layers": report.layers,
        "diagnostics": report.diagnostics, "incomplete": report.incomplete, "timing": report.timing,
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
    if missing and data.get("kind") == "bsprof-sweep":
        raise ReportError(f"{where} is the result of `bsprof sweep`, not a bsprof report",
                          f"show it with `bsprof report {where}`; where a report is asked for, {_FIX}")
    if missing:
        raise ReportError(f"{where} is not a bsprof report: missing {', '.join(missing)}", _FIX)
    version = data["schema_version"]
    if type(version) is not int or version not in READS:
        what = f"{short(version, 40)} (a {type(version).__name__})" if type(version) is not int else str(version)
        raise ReportError(f"{where}: schema_version {what} is not one this bsprof reads (the integers "
                          f"{', '.join(map(str, READS))})", "upgrade bsprof, or re-run `bsprof measure`")
    _check_values(data, where)
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
                  timing=_expect(data, "timing", dict, where, optional=True),
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


def _first_json_line(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.readline())
    except (ValueError, UnicodeDecodeError, OSError):
        return None


def _what_it_is(path: Path) -> str:
    """What a file that is not a report looks like: a tracker log, a CSV bsprof wrote."""
    first = _first_json_line(path)
    if isinstance(first, dict) and first.get("schema") == "bsprof.track":
        return ": it is a tracker log (one JSON object per line)"
    if path.suffix.lower() == ".csv":
        return ": it is a CSV (bsprof writes measurements.csv and layers.csv beside report.json)"
    return ""


def _fix_for(path: Path) -> str:
    first = _first_json_line(path)
    if isinstance(first, dict) and first.get("schema") == "bsprof.track":
        return ("read it with bsprof.track.report_from_log(path) (or `bsprof report`, `schedule`, `check` on it, "
                "which take a log as they take a report)")
    if path.suffix.lower() == ".csv":
        return "pass the report.json in the same folder (or the folder itself)"
    return _FIX


def read(path: str | Path):
    """Load a report.json (or the report.json inside a folder)."""
    path = Path(path)
    logs = sorted(path.glob("*.jsonl")) if path.is_dir() else []
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():   # a folder a Lightning or HF callback wrote its log into: name the log
        raise ReportError(f"report not found: {path}", f"{_FIX}, or a tracker's log"
                          + (f": this folder has {', '.join(str(x) for x in logs[:3])}" if logs else ""))
    if path.stat().st_size > MAX_BYTES:
        raise ReportError(f"{path} is {path.stat().st_size >> 20} MiB, too large for a report", _FIX)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, or an integer of over 4,300 digits
        raise ReportError(f"{path} is not valid JSON ({clip(str(e))})" + _what_it_is(path), _fix_for(path))
    except RecursionError:
        raise ReportError(f"{path} nests too deeply to be a report", _FIX)
    return decode(data, str(path))


def dumps(report) -> str:
    return json.dumps(encode(report), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
