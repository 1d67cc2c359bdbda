"""What measuring costs against training (engine.cost): the clock, the shares, the precision note."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from bsprof.cli import app
from bsprof.engine.cost import RunClock, interleaved, precision_text, share_text
from bsprof.results import Estimate, Status
from bsprof.stats.stopping import BUDGET, TIME, Stopper

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
    rows = [SimpleNamespace(step=s, stopped_by=b, n_draws=9) for s, b in ((0, "precision"), (50, "precision"),
                                                                         (100, "time"))]
    text = precision_text(timing, rows, 0.1)
    assert "reaching ±10% at step 50 took 2.3× the training time" in text
    assert f"--rel-error {0.1 * math.sqrt(2.3):.2g}" in text
    rows[1] = SimpleNamespace(step=50, stopped_by="time")  # a budget, not the precision asked
    assert precision_text(timing, rows, 0.1) is None
    rows[1] = SimpleNamespace(step=50, stopped_by="precision", n_draws=5)  # at the floor: a looser ε would not help
    assert precision_text(timing, rows, 0.1) == ("the minimum of 5 draws at step 50 took 2.3× the training time "
                                                 "between measurements (--min-draws, --measure-every)")
    assert share_text({"measuring_s": 1.0, "training_s": 0.0}) is None  # --steps 0: nothing to compare
    barely = {**timing, "measurement_s": [1.0, 4.1, 1.8]}  # just over the training: no "--rel-error 0.2" at 0.2
    rows[1] = SimpleNamespace(step=50, stopped_by="precision", n_draws=9)
    text = precision_text(barely, rows, 0.2)
    assert "--rel-error 0.2 " not in text and "a looser --rel-error or a larger --measure-every" in text


def test_cli_reports_measuring_vs_training(tmp_path):
    r = CliRunner().invoke(app, ["measure", str(ASSETS / "tiny_linear.py"), "--steps", "10", "--measure-every", "5",
                                 "--rel-error", "0.3", "-o", str(tmp_path), "--no-figures"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "so far measuring" in out and "training" in out  # the per-measurement line (not a terminal: logs)
    assert "setup and other" in out and "elapsed" in out       # the whole time accounted for
    assert "note [measure_cost]: measurements took" in out
    report = json.loads((tmp_path / "report.json").read_text())
    t = report["timing"]
    assert t["measuring_s"] > 0 and t["training_s"] > 0 and len(t["measurement_s"]) == 3
    assert len(t["training_between_s"]) == 2
    assert any(d["code"] == "measure_cost" for d in report["diagnostics"])
    shown = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert "measurements took" in " ".join(shown.output.split())
    # with B_noise (--hessian) the step's line says the time after B_simple's draws, so the lines add up
    h = CliRunner().invoke(app, ["measure", str(ASSETS / "tiny_linear.py"), "--steps", "5", "--measure-every", "5",
                                 "--rel-error", "0.3", "--hessian", "--measure-budget", "0", "-o", str(tmp_path / "h"),
                                 "--no-figures"])  # (with the budget, B_noise's draws end within the training's time)
    assert h.exit_code == 0, h.output
    assert "s more for B_noise" in " ".join(h.output.split())
    assert "for B_noise" not in out and "B_pre" not in out  # not measured without --hessian, under SGD: not named


def test_budget_stops_only_after_min_draws_and_after_precision():
    stop = Stopper(rel_error=0.2, min_draws=5, max_examples=1e9, max_seconds=60, budget_seconds=1.0)
    assert stop(3, 0.9, 100, 5.0) is None          # over budget, but fewer than min_draws
    assert stop(5, 0.1, 100, 5.0) == "precision"   # precise: precision wins
    assert stop(6, 0.9, 100, 5.0) == BUDGET
    assert stop(7, math.inf, 100, 5.0) is None     # unbounded (|G|² interval holds 0): the budget does not stop it
    assert Stopper(0.2, 5, 1e9, 60, budget_seconds=1.0)(5, 0.9, 100, 0.8) is None  # 6 draws at 0.16 s: 0.96 s
    assert Stopper(0.2, 5, 1e9, 60, budget_seconds=1.0)(5, 0.9, 100, 0.9) == BUDGET  # a 6th would overrun
    assert Stopper(0.2, 5, 1e9, 1.0, budget_seconds=0.5)(1, 0.9, 10, 2.0) == TIME  # the hard cap, any draw
    assert Stopper(0.2, 5, 1e9, 10.0)(1, 0.9, 10, 6.0) is None    # one draw: no interval yet, a second is allowed
    assert Stopper(0.2, 5, 1e9, 10.0)(2, 0.9, 10, 7.0) == TIME    # a third would end at ≈ 10.5 s, past the cap
    assert Stopper(0.2, 5, 1e9, 10.0)(2, 0.9, 10, 6.0) is None    # … at 9 s: drawn


def test_budget_note_says_what_the_asked_precision_would_cost():
    timing = {"measuring_s": 3.0, "training_s": 4.0, "measurement_s": [1.0, 2.0], "training_between_s": [2.0]}
    rows = [SimpleNamespace(step=0, stopped_by="precision", b_simple=Estimate(10, 9, 11, Status.OK)),
            SimpleNamespace(step=50, stopped_by="budget", b_simple=Estimate(10, 6, 14, Status.OK))]
    text = precision_text(timing, rows, 0.2)
    assert "1 measurement(s) stopped at the time budget" in text and "±40% instead of ±20%" in text
    assert "about 4.0× the training time (--measure-budget 4, or 0" in text  # 2 s × (0.4/0.2)² / 2 s
    timing["measurement_s"] = [1.0, 2.86]   # 5.72×: one rounding (up) for the text and the flag, not 5.7 and 5.8
    text = precision_text(timing, rows, 0.2)
    assert "about 5.8× the training time (--measure-budget 5.8, or 0" in text
    rows[1] = SimpleNamespace(step=50, stopped_by="budget", b_simple=Estimate(10, 1, 400, Status.OK))
    text = precision_text(timing, rows, 0.2)  # ±1995%: ≈ 10⁴× the training time is no advice
    assert "over 20× the training time" in text and "--measure-budget" not in text


def test_cli_budget_and_no_budget(tmp_path):
    args = ["measure", str(ASSETS / "tiny_linear.py"), "--steps", "4", "--measure-every", "2", "--rel-error", "0.05",
            "--no-figures", "-q"]
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "a" / "report.json").read_text())["measurements"]
    assert [m["stopped_by"] for m in rows] == ["budget"] * 3  # the first too: its budget is estimated at setup
    assert all(m["n_draws"] >= 5 for m in rows)
    r = CliRunner().invoke(app, [*args, "--measure-budget", "0", "--max-seconds", "3", "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "b" / "report.json").read_text())["measurements"]
    assert "budget" not in [m["stopped_by"] for m in rows]
