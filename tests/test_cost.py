"""What measuring costs against training (engine.cost): the clock, the shares, the precision note."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from bsprof.cli import app
from bsprof.engine.cost import RunClock, interleaved, precision_text, share_text

ASSETS = Path(__file__).parent / "assets"


def test_clock_adds_up_and_keeps_training_between_measurements():
    c = RunClock()
    c.measured(2.0)
    c.trained(1.0)
    c.trained(0.5)
    assert c.since == 1.5
    c.measured(3.0)
    c.trained(4.0)
    c.measured(1.0)
    d = c.to_dict()
    assert d["measuring_s"] == 6.0 and d["training_s"] == 5.5
    assert d["measurement_s"] == [2.0, 3.0, 1.0] and d["training_between_s"] == [1.5, 4.0]
    assert interleaved(d) == [1.5, 1.5, 4.0]  # the first measurement: the training until the next one


def test_share_and_precision_notes():
    timing = {"measuring_s": 12.0, "training_s": 22.0, "measurement_s": [1.0, 9.2, 1.8],
              "training_between_s": [4.0, 4.0]}
    assert share_text(timing) == "measurements took 35% of the run (12 s measuring vs 22 s training)"
    rows = [SimpleNamespace(step=s, stopped_by=b) for s, b in ((0, "precision"), (50, "precision"), (100, "time"))]
    text = precision_text(timing, rows, 0.1)
    assert "reaching ±10% at step 50 took 2.3× the training time" in text
    assert f"--rel-error {0.1 * math.sqrt(2.3):.2g}" in text
    rows[1] = SimpleNamespace(step=50, stopped_by="time")  # a budget, not the precision asked
    assert precision_text(timing, rows, 0.1) is None
    assert share_text({"measuring_s": 1.0, "training_s": 0.0}) is None  # --steps 0: nothing to compare


def test_cli_reports_measuring_vs_training(tmp_path):
    r = CliRunner().invoke(app, ["measure", str(ASSETS / "tiny_linear.py"), "--steps", "10", "--measure-every", "5",
                                 "--rel-error", "0.3", "-o", str(tmp_path), "--no-figures"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "training" in out and "s so far" in out  # the per-measurement line (not a terminal: logs)
    assert "note [measure_cost]: measurements took" in out
    report = json.loads((tmp_path / "report.json").read_text())
    t = report["timing"]
    assert t["measuring_s"] > 0 and t["training_s"] > 0 and len(t["measurement_s"]) == 3
    assert len(t["training_between_s"]) == 2
    assert any(d["code"] == "measure_cost" for d in report["diagnostics"])
    shown = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert "measurements took" in " ".join(shown.output.split())
