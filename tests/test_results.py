"""Typed results and the report codec: schema 2 round trips, schema 1 (release 0.1.0) files still load,
render, and feed `schedule` and `check`."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bsprof.cli import app
from bsprof.errors import ReportError
from bsprof.output import codec
from bsprof.output.report import Report
from bsprof.results import Estimate, Measurement, Status, Summary, is_adam_family, json_clean

V1 = Path(__file__).parent / "assets" / "v1"  # written by `bsprof measure` of release 0.1.0 (schema 1)
runner = CliRunner()


def test_estimate_status_and_the_one_relative_half_width():
    e = Estimate(100.0, 80.0, 130.0, "ok")
    assert e.status is Status.OK and e.status == "ok" and e.rel_halfwidth == pytest.approx(0.3)
    assert Estimate(math.nan, 50.0, math.inf, "lower_bound").rel_halfwidth == math.inf
    assert e.scaled(16) == Estimate(1600.0, 1280.0, 2080.0, Status.OK)
    assert Estimate.from_dict(e.to_dict()) == e
    with pytest.raises(ValueError):
        Estimate(1.0, 1.0, 1.0, "fine")
    assert type(Estimate(__import__("numpy").float64(2.0), 1, 3).value) is float


def test_json_clean_makes_strict_json():
    data = json_clean({"a": math.nan, "b": [math.inf, 1.5], "c": Status.LOWER_BOUND, "d": Estimate(1, 0, 2)})
    assert data == {"a": None, "b": [None, 1.5], "c": "lower_bound",
                    "d": {"value": 1.0, "lo": 0.0, "hi": 2.0, "status": "ok"}}
    json.dumps(data, allow_nan=False)


def test_adam_family_is_one_list():
    assert is_adam_family("AdamW") and is_adam_family("adam") and not is_adam_family("SGD")


@pytest.mark.parametrize("name", ["report_adam_hessian.json", "report_least_squares.json"])
def test_schema_1_rows_round_trip_exactly(name):
    data = json.loads((V1 / name).read_text())
    report = codec.decode(data)
    for old, new in zip(data["measurements"], report.measurements):
        assert json_clean(new.to_row()) == old  # every column of the old row, same values
        assert Measurement.from_dict(json.loads(json.dumps(new.to_dict()))) == new
    assert json_clean(report.summary.to_row()) == data["summary"]


def test_schema_2_round_trip(tmp_path):
    report = Report.from_json(V1 / "report_adam_hessian.json")
    path = report.to_json(tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and data["summary"]["b_simple"]["status"] == "ok"
    again = Report.from_json(path)
    assert again.measurements == report.measurements and again.layers == report.layers
    assert isinstance(again.summary, Summary) and again.summary == report.summary
    last = again.measurements[-1]
    assert last.b_noise.ok and last.b_pre.ok and last.hessian.eps_max.ok and last.regression is not None
    assert again.measurements[0].b_pre.status is Status.NOT_AVAILABLE


def test_layers_add_up_to_the_totals():
    report = Report.from_json(V1 / "report_adam_hessian.json")
    for m in report.measurements:
        layers = [r for r in report.layers if r.step == m.step]
        assert sum(r.g2 for r in layers) == pytest.approx(m.g2.value, rel=1e-9)
        assert sum(r.trace_sigma for r in layers) == pytest.approx(m.trace_sigma, rel=1e-9)


def test_layers_are_named_by_module_path_and_type(tmp_path):
    """A layer is its path in the model plus its class; the type reaches report.json, layers.csv and the table;
    a schema-1 report (no type) still reads, its layers labelled by path alone."""
    import io

    import torch
    from rich.console import Console
    from torch import nn

    import bsprof
    from bsprof.output.render import layers_table

    x = torch.randn(256, 3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 1)))
    report = bsprof.measure(model=model, dataset=torch.utils.data.TensorDataset(x, x.sum(1)), steps=0,
                            loss=lambda m, b: (m(b[0]).squeeze(-1) - b[1]) ** 2, device="cpu", rel_error=0.5)
    assert [r.label for r in report.layers] == ["0 (Linear)", "2.0 (LayerNorm)", "2.1 (Linear)"]
    paths = report.write(tmp_path, figures=False)
    assert Report.from_json(paths["json"]).layers == report.layers
    assert paths["layers"].read_text().splitlines()[0].startswith("step,layer,type,")
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(layers_table(report))
    assert "2.0 (LayerNorm)" in console.export_text()
    old = Report.from_json(V1 / "report_adam_hessian.json").layers
    assert old and all(r.type == "" and r.label == r.layer == "(root)" for r in old)


@pytest.mark.parametrize("bad, says", [
    ({"schema_version": 3, "measurements": [], "summary": {}, "config": {}}, "schema_version 3"),
    ({"schema_version": 2, "measurements": [{"step": 0}], "summary": {}, "config": {}}, "measurements[0]"),
    ({"schema_version": 1, "measurements": [{"step": "x"}], "summary": {}, "config": {}}, "measurements[0]"),
    ({"schema_version": 2, "measurements": {}, "summary": {}, "config": {}}, "'measurements' must be a list"),
    ({"schema_version": 1, "measurements": [], "summary": {}, "config": None}, "'config' must be an object"),
    ([1, 2], "not a report object"),
])
def test_malformed_reports_are_report_errors(bad, says):
    with pytest.raises(ReportError, match=says.replace("[", r"\[").replace("]", r"\]")):
        codec.decode(bad)


@pytest.mark.parametrize("target", ["-1", "0", "nan"])
def test_report_target_loss_must_be_a_positive_number(tmp_path, target):
    src = tmp_path / "old.json"
    shutil.copy(V1 / "report_adam_hessian.json", src)
    r = runner.invoke(app, ["report", str(src), "--target-loss", target])
    assert r.exit_code == 2 and "--target-loss must be a positive number" in r.output, r.output
    assert isinstance(r.exception, SystemExit)


def test_a_release_0_1_report_renders_and_feeds_schedule_and_check(tmp_path):
    src = tmp_path / "old.json"
    shutil.copy(V1 / "report_adam_hessian.json", src)
    shown = runner.invoke(app, ["report", str(src)])
    assert shown.exit_code == 0 and "B_simple at step 30" in shown.output, shown.output
    planned = runner.invoke(app, ["schedule", str(src), "--target-loss", "0.3", "--format", "json"])
    assert planned.exit_code == 0, planned.output
    assert json.loads(planned.stdout)["stages"]
    b = Report.from_json(src).summary.b_simple.value  # 16.1 [13.6, 19.2] in that file
    assert runner.invoke(app, ["check", str(src), "-b", str(round(b))]).exit_code == 0
    large = runner.invoke(app, ["check", str(src), "-b", str(round(b * 100))])   # its noise scale grew 1.96× along
    assert large.exit_code == 0 and "too large only for the probe's path" in large.output   # the path: a warning
    assert runner.invoke(app, ["check", str(src), "-b", str(round(b * 100)), "--at-loss", "0.35"]).exit_code == 1


def test_report_files_are_written_atomically(tmp_path, monkeypatch):
    report = Report.from_json(V1 / "report_least_squares.json")
    report.write(tmp_path, figures=False)
    before = (tmp_path / "report.json").read_text()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(codec, "dumps", lambda r: "{" + "x" * 10 + boom())
    with pytest.raises(OSError):
        report.to_json(tmp_path / "report.json")
    assert (tmp_path / "report.json").read_text() == before  # the old file stands, whole
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_the_figure_draws_every_quantity_bounds_and_exact_values(tmp_path):
    """Lower bounds (▲), exact values (◆), B_noise, B_pre and the training-steps B_simple, on log axes."""
    pytest.importorskip("matplotlib")
    report = Report.from_json(V1 / "report_adam_hessian.json")
    rows = [m.to_row() for m in report.measurements]
    rows[1].update(status="lower_bound", b_simple=math.nan, b_simple_hi=math.inf)
    rows[2].update(b_simple_window=20.0, b_simple_window_lo=15.0, b_simple_window_hi=30.0,
                   b_simple_window_status="ok", window_steps=10)
    rows[3].update(stopped_by="exact")
    figure = Report(config=report.config, measurements=rows).write(tmp_path)["figure"]
    assert figure.stat().st_size > 10_000


def test_growth_wording_says_a_fall_as_a_fraction_and_a_percentage():
    from bsprof.output.render import growth_text

    assert growth_text(6.6) == "grew 6.6×"
    assert growth_text(0.9) == "fell to 0.90× (−10%)"
    assert growth_text(0.5) == "fell to 0.50× (−50%)"


def test_a_column_of_lower_bounds_only_is_shown():
    """B_simple over training-step windows that are all lower bounds: the column shows '> 435', not hidden."""
    from rich.console import Console

    from bsprof.output.render import report_table

    rows = [{"step": s, "loss": 1.0 / (s + 1), "b_simple": 20.0, "b_simple_lo": 18.0, "b_simple_hi": 22.0,
             "status": "ok", "b_simple_window_lo": lo, "b_simple_window_status": "lower_bound"}
            for s, lo in ((20, 434.7), (40, 265.6))]
    console = Console(width=160, record=True)
    console.print(report_table(Report(measurements=rows)))
    text = console.export_text()
    assert "B_simple (training)" in text and "> 435" in text and "> 266" in text


def test_growth_beside_a_lower_bound_says_it_is_the_determined_values():
    """`B_simple at step 299: > 569 (grew 6.1× over the run)`: the 6.1× came from earlier, determined rows; said."""
    from rich.console import Console

    from bsprof.output.render import report_table

    rows = [{"step": s, "loss": 1.0 / (s + 1), "b_simple": b, "b_simple_lo": 0.9 * b, "b_simple_hi": 1.1 * b,
             "status": "ok"} for s, b in ((0, 10.0), (10, 61.0))]
    rows.append({"step": 20, "loss": 0.05, "b_simple": math.nan, "b_simple_lo": 569.0, "b_simple_hi": math.inf,
                 "status": "lower_bound"})
    console = Console(width=200, record=True)
    console.print(report_table(Report(measurements=rows)))
    assert "(its determined values grew 6.1× over the run)" in console.export_text()
    rows = [{"step": s, "loss": 1.0 / (s + 1), "b_simple": b, "b_simple_lo": lo, "b_simple_hi": hi, "status": "ok"}
            for s, b, lo, hi in ((0, 250.0, 150.0, 400.0), (10, 125.0, 100.0, 200.0))]
    console = Console(width=200, record=True)
    console.print(report_table(Report(measurements=rows)))
    assert "(fell to 0.50× (−50%) over the run; their intervals overlap)" in console.export_text()
    # imprecise ends that do not overlap (a trial: 1.4 → 51, "grew 36×", each to ±70–120%): the range they allow
    rows = [{"step": s, "loss": 1.0 / (s + 1), "b_simple": b, "b_simple_lo": lo, "b_simple_hi": hi, "status": "ok"}
            for s, b, lo, hi in ((0, 1.4, 0.8, 3.0), (10, 51.0, 20.0, 110.0))]
    console = Console(width=200, record=True)
    console.print(report_table(Report(measurements=rows)))
    assert "(grew 36.4× over the run; 6.67–138× by their intervals)" in console.export_text()
    rows[0]["b_simple_lo"] = 0.0   # an unresolved first value (its interval reaching 0): no range, no error
    console = Console(width=200, record=True)
    console.print(report_table(Report(measurements=rows)))
    assert "(grew 36.4× over the run)" in console.export_text()


def test_the_summary_says_which_probe_measured_and_why():
    from rich.console import Console

    from bsprof.output.render import report_table

    rows = [{"step": 0, "loss": 1.0, "b_simple": 20.0, "b_simple_lo": 18.0, "b_simple_hi": 22.0, "status": "ok"}]
    report = Report(measurements=rows, config={"method": "auto", "method_resolved": "hooks",
                                               "method_reason": "auto: per-example gradients are valid; timed"})
    console = Console(width=160, record=True)
    console.print(report_table(report))
    assert "probe: hooks (auto: per-example gradients are valid; timed)" in console.export_text()


def test_the_probe_chosen_by_the_trial_is_explained_once():
    """auto's trial picked micro-batches: the probe line gives the reason, and the method_trial note that holds the
    same text (kept in report.json) is not printed again below it (a new user's finding)."""
    from rich.console import Console

    from bsprof.output.render import report_table

    why = ("auto: per-example gradients are valid; a timed draw of 64 examples took 9 ms by per-example hooks and 2 "
           "ms by micro-batches of 8: micro-batches are more than 1.5× faster, so micro-batches")
    rows = [{"step": 0, "loss": 1.0, "b_simple": 20.0, "b_simple_lo": 18.0, "b_simple_hi": 22.0, "status": "ok"}]
    report = Report(measurements=rows, config={"method": "auto", "method_resolved": "microbatch", "method_reason": why},
                    diagnostics=[{"code": "method_trial", "message": why}, {"code": "other", "message": "kept"}])
    console = Console(width=1000, record=True)
    console.print(report_table(report))
    text = console.export_text()
    assert text.count("so micro-batches") == 1 and f"probe: microbatch ({why})" in text
    assert "note [method_trial]" not in text and "note [other]: kept" in text


def test_report_prints_json_and_csv_for_scripts(tmp_path):
    """`bsprof report --format json` is report.json's content (its summary to --target-loss when given), `--format
    csv` the measurements; a wrong format is one line and exit 2."""
    src = tmp_path / "old.json"
    shutil.copy(V1 / "report_adam_hessian.json", src)
    report = Report.from_json(src)
    r = runner.invoke(app, ["report", str(src), "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["summary"]["critical_batch"]["value"] == pytest.approx(report.summary.critical_batch.value)
    assert len(data["measurements"]) == len(report.measurements)
    last = report.measurements[-1].loss
    at = json.loads(runner.invoke(app, ["report", str(src), "-f", "json", "-t", str(last * 1.5)]).stdout)
    assert at["summary"]["critical_batch"]["value"] == pytest.approx(
        report.summary_at(last * 1.5).critical_batch.value)
    csv = runner.invoke(app, ["report", str(src), "-f", "csv"]).stdout.splitlines()
    assert csv[0].startswith("step,") and len(csv) == len(report.measurements) + 1
    layers = runner.invoke(app, ["report", str(src), "-f", "csv", "--layers"]).stdout.splitlines()
    assert layers[0].startswith("step,layer,") and len(layers) == len(report.layers) + 1
    bad = runner.invoke(app, ["report", str(src), "-f", "xml"])
    assert bad.exit_code == 2 and "--format must be one of table, json, csv" in bad.output


def test_an_unresolved_estimate_is_shown_as_its_upper_bound():
    """'−0.0509 [0, 0.0067]' read as an estimate outside its own interval (a new user's log): an interval reaching 0
    is shown as the bound it is."""
    from bsprof.output.render import estimate_text
    from bsprof.results import Estimate

    assert estimate_text(Estimate(-0.0509, 0.0, 0.0067)) == "≤ 0.0067 (unresolved)"
    assert estimate_text(Estimate(26.1, 24.9, 27.4)) == "26.1 [24.9, 27.4]"


def test_numbers_in_text_stay_readable():
    """Tables and messages: no '1.152e+05' for a batch of 115,200 nor '±37906%' (a new user's findings)."""
    from bsprof.output.render import fmt
    from bsprof.results import plus_minus

    assert [fmt(x) for x in (12.3456, 6190.4, 115200.0, 1234567.0, 3.3e9)] == ["12.3", "6190", "115,000",
                                                                               "1,230,000", "3.3e+09"]
    assert (plus_minus(0.2), plus_minus(379.06), plus_minus(float("inf"))) == ("±20%", "a half-width 379× the value",
                                                                               "unbounded")


def test_the_table_fits_a_narrow_terminal_by_leaving_out_columns():
    """At 80 columns the table leaves out examples, stopped by, draws, … (in that order) until it fits, and says
    where they are, instead of cutting the intervals to '[0.9…' or wrapping them; wide, or piped, every column."""
    from rich.console import Console

    from bsprof.output.render import Fitted

    rows = [{"step": s, "loss": 1.0 / (s + 1), "b_simple": 1234.5, "b_simple_lo": 1000.25, "b_simple_hi": 4780.5,
             "status": "ok", "b_simple_window": 125.0, "b_simple_window_lo": 84.4, "b_simple_window_hi": 202.0,
             "b_simple_window_status": "ok", "examples": 8128, "n_draws": 7, "stopped_by": "budget"}
            for s in (0, 50)]
    report = Report(measurements=rows)
    for width, gone in ((80, ("examples", "stopped by", "draws")), (160, ())):
        console = Console(width=width, record=True)
        console.print(report)   # a Report prints as the fitted table
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        assert "[1000, 4780]" in text and "[84.4, 202]" in text   # the intervals whole, on one line
        header = next(line for line in text.splitlines() if "step" in line and "loss" in line)
        assert all(name not in header for name in gone) and ("in --format csv or json" in text) == bool(gone)
    full = Console(width=300, record=True)
    full.print(Fitted(report).full())
    assert "stopped by" in full.export_text()


def test_measure_at_answer_round_trips_through_json():
    """AtWeights.to_dict() keeps how it was measured (|G|², tr(Σ), method, draws, …) and from_dict reads it back
    whole, through JSON too (it kept only value, lo, hi and status)."""
    import torch

    import bsprof
    from bsprof.results import AtWeights

    torch.manual_seed(0)
    x, y = torch.randn(200, 4), torch.randn(200)
    est = bsprof.measure_at(torch.nn.Linear(4, 1), lambda m, b: (m(b[0]).squeeze(-1) - b[1]) ** 2, (x, y))
    back = AtWeights.from_dict(json.loads(json.dumps(est.to_dict())))
    assert back == est and back.method and back.draws > 0 and math.isfinite(back.trace_sigma)


def test_every_csv_has_the_window_columns_and_reads_back():
    """A run without training-step windows (micro-batches only, or stopped early) wrote 26 columns where others
    wrote 31: CSVs of two runs did not concatenate (a trial's finding). The window columns are always there, blank
    where there is no window, and a CSV line reads back through ``Measurement.from_row`` (blanks as absent)."""
    import io

    import pandas as pd

    from bsprof.output.report import WINDOW_COLUMNS, Report
    from bsprof.results import Estimate, Measurement

    bare = Measurement(step=0, loss=1.0, b_simple=Estimate(50.0, 40.0, 60.0), g2=Estimate(1.0, 0.9, 1.1),
                       trace_sigma=50.0)
    windowed = Measurement(step=10, loss=0.5, b_simple=Estimate(80.0, 60.0, 99.0), g2=Estimate(0.5, 0.4, 0.6),
                           trace_sigma=40.0, b_simple_window=Estimate(70.0, 50.0, 90.0), window_steps=10)
    without, with_ = (Report(measurements=rows).to_frame() for rows in ([bare], [bare, windowed]))
    assert list(without.columns) == list(with_.columns) and set(WINDOW_COLUMNS) <= set(without.columns)
    lines = pd.read_csv(io.StringIO(with_.to_csv(index=False))).to_dict("records")
    back = [Measurement.from_row(line) for line in lines]
    assert back[0].b_simple_window is None and back[0].window_steps == 0
    assert back[1].b_simple_window == windowed.b_simple_window and back[1].window_steps == 10


def test_a_cut_short_rows_undetermined_window_keeps_its_column():
    """The window_cut_short note names the last row's B_simple (training), which was undetermined: the column was
    dropped, as for a report without windows, and the note pointed at nothing (a trial's finding)."""
    from rich.console import Console

    from bsprof.output.report import Report
    from bsprof.results import Estimate, Measurement, Status

    rows = [Measurement(step=0, loss=1.0, b_simple=Estimate(50.0, 40.0, 60.0), g2=Estimate(1.0, 0.9, 1.1),
                        trace_sigma=50.0),
            Measurement(step=3, loss=0.9, b_simple=Estimate.none(Status.NOT_AVAILABLE),
                        g2=Estimate.none(Status.NOT_AVAILABLE), trace_sigma=float("nan"), stopped_by="cut_short",
                        method="track", b_simple_window=Estimate.none(Status.UNDETERMINED), window_steps=3)]
    console = Console(width=150, record=True)
    console.print(Report(measurements=rows))
    text = console.export_text()
    assert "B_simple (training)" in text and "undetermined" in text
