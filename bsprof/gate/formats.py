"""Render a check Verdict for CI: JUnit XML, GitHub workflow annotations and job summary, JSON.

Pure functions from a Verdict to text; the CLI decides where the text goes.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from bsprof.gate.policy import CANNOT_JUDGE, FAIL, PASS, Verdict
from bsprof.results import json_clean

TITLES = {"batch_size": "batch size", "lr": "learning rate", "baseline": "baseline", "report": "report",
          "options": "options", "measure": "measurement"}
MARKS = {PASS: "✅ pass", FAIL: "❌ fail", CANNOT_JUDGE: "⚠️ cannot judge"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")             # never printed (ANSI escapes, NUL, …)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")  # XML 1.0 forbids these
_COMMAND = re.compile(r"^(\s*):(?=:)", re.MULTILINE)                     # a GitHub workflow command: ::name ...


def neutralise(text: str) -> str:
    """No line of ``text`` can be read by GitHub Actions as a workflow command (``::error::…``): a leading
    '::' becomes ': :'. Control characters are dropped; line breaks are kept."""
    return _COMMAND.sub(r"\1: ", _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")))


def plain(text: str) -> str:
    """One printable line from data (a report field, an exception text): line breaks become spaces, then
    ``neutralise``."""
    return neutralise(" ".join(str(text).splitlines()))


def xml_text(text: str) -> str:
    """Text for JUnit XML: characters XML forbids removed, workflow commands neutralised."""
    return neutralise(_NOT_XML.sub("", str(text)))


def to_json(verdict: Verdict, extra: dict | None = None) -> str:
    """The verdict as one JSON object (non-finite numbers as null)."""
    data = verdict.to_dict()
    if extra:
        data.update(extra)
    return json.dumps(json_clean(data), indent=2, allow_nan=False, ensure_ascii=False)


def to_junit(verdict: Verdict, suite: str = "bsprof check") -> str:
    """JUnit XML: one testcase per check; fail → <failure>, cannot_judge → <error>, notes → <system-out>."""
    checks = verdict.checks
    root = ET.Element("testsuites", name="bsprof")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)),
                       failures=str(sum(c.status == FAIL for c in checks)),
                       errors=str(sum(c.status == CANNOT_JUDGE for c in checks)), skipped="0")
    if verdict.noise is not None:
        props = ET.SubElement(ts, "properties")
        for k, v in verdict.noise.to_dict().items():
            ET.SubElement(props, "property", name=f"noise_scale.{k}", value="" if v is None else xml_text(v))
    for c in checks:
        case = ET.SubElement(ts, "testcase", classname="bsprof.check", name=xml_text(c.name))
        message = xml_text(c.message)
        if c.status == FAIL:
            ET.SubElement(case, "failure", message=message, type="policy").text = message
        elif c.status == CANNOT_JUDGE:
            ET.SubElement(case, "error", message=message, type="cannot_judge").text = xml_text("\n".join(
                (c.message, *c.notes)))
        out = [c.message, *c.notes] if c.status == PASS else list(c.notes)
        out += list(verdict.notes)
        if out:
            ET.SubElement(case, "system-out").text = xml_text("\n".join(out))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_prop(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, message: str, title: str) -> str:
    """One GitHub workflow command: ``::error title=...::message`` (level error, warning or notice)."""
    return f"::{level} title={_escape_prop(title)}::{_escape_data(message)}"


def to_github(verdict: Verdict) -> list[str]:
    """Annotations: a failed or unjudged check → error, each note → warning, a passed check → notice."""
    lines = []
    for c in verdict.checks:
        title = f"bsprof check: {TITLES.get(c.name, c.name)}"
        level = {FAIL: "error", CANNOT_JUDGE: "error", PASS: "warning" if c.warning else "notice"}[c.status]
        lines.append(annotation(level, c.message, title))
        lines.extend(annotation("warning", n, title) for n in c.notes)
    lines.extend(annotation("notice", n, "bsprof check") for n in verdict.notes)
    return lines


def _cell(s: str) -> str:
    return plain(s).replace("|", "\\|")


def to_markdown(verdict: Verdict) -> str:
    """The job summary: overall status, the measured noise scale, one table row per check, then notes."""
    lines = [f"## bsprof check: {MARKS[verdict.status]}", ""]
    if verdict.noise is not None:
        lines += [f"Noise scale: {plain(verdict.noise.describe())}", ""]
    lines += ["| check | status | message |", "|---|---|---|"]
    lines += [f"| {TITLES.get(c.name, c.name)} | {'⚠️ pass, with a warning' if c.warning else MARKS[c.status]} | "
              f"{_cell(c.message)} |" for c in verdict.checks]
    notes = [n for c in verdict.checks for n in c.notes] + list(verdict.notes)
    if notes:
        lines += ["", *[f"- {_cell(n)}" for n in notes]]
    return "\n".join(lines) + "\n"
