"""The report's headline critical batch (bsprof.schedule.headline): the schedule's path average with an interval
and a one-line reason; in the summary, report.json, the terminal and `bsprof report`; old reports still render."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from bsprof.output.report import Report
from bsprof.schedule import ScheduleConfig, plan
from bsprof.schedule.headline import MODEL_RANGE, critical_batch
from bsprof.schedule.plan import ADAM_FACTORS, SGD_FACTORS

ADAM_FACTOR = ADAM_FACTORS["b_simple"]  # the fallback without training-step windows

V1 = Path(__file__).parent / "assets" / "v1"


def report(optimizer="SGD", quantity="b_simple_window", factor=0.5, n=5):
    """B_simple = 40·L^(−2) on a loss falling 2.3 → 0.4, the quantity = factor × B_simple with a ±20% interval."""
    rows = []
    for i in range(n):
        loss = 2.3 * (0.4 / 2.3) ** (i / (n - 1))
        b = 40 * loss ** -2
        row = dict(step=100 * i, loss=loss, b_simple=b, b_simple_lo=0.85 * b, b_simple_hi=1.2 * b, status="ok")
        if quantity != "b_simple":
            q = factor * b
            row.update({quantity: q, f"{quantity}_lo": 0.8 * q, f"{quantity}_hi": 1.25 * q, f"{quantity}_status": "ok"})
        rows.append(row)
    return Report(config={"optimizer": optimizer, "batch_size": 32, "lr": 0.1}, measurements=rows)


def test_value_is_the_schedules_path_average_to_the_lowest_loss():
    r = report()
    s = r.summary
    lowest = min(m.loss for m in r.measurements)
    sched = plan(r, ScheduleConfig(target_loss=lowest))
    assert s.critical_batch_quantity == "b_simple_window"
    assert s.critical_batch.value == pytest.approx(sched.prediction["b_crit"], rel=1e-9)
    p = sched.prediction  # the schedule's interval is the sampling part; the headline adds the model part
    low, high = MODEL_RANGE[("sgd", "b_simple_window")]
    assert (s.critical_batch.lo, s.critical_batch.hi) == pytest.approx((p["b_crit_lo"] * low, p["b_crit_hi"] * high),
                                                                       rel=1e-9)
    assert s.critical_batch.lo < s.critical_batch.value < s.critical_batch.hi
    # the training-window B_simple under SGD: both ends widened by MODEL_RANGE beyond the measurements' own
    assert 0.7 * low < s.critical_batch.lo / s.critical_batch.value < 0.95 * low
    assert 1.05 * high < s.critical_batch.hi / s.critical_batch.value < 1.4 * high
    assert "B_simple over training-step windows" in s.critical_batch_reason
    # under plain SGD the value is SGD_FACTORS × the measured windows' path (the schedule follows the same)
    assert s.critical_batch_reason.startswith(f"{SGD_FACTORS['b_simple_window']:g} × B_simple over training-step")
    assert sched.config["noise_factor"] == SGD_FACTORS["b_simple_window"]
    assert "SGD" in s.critical_batch_reason and "\n" not in s.critical_batch_reason


def test_interval_follows_the_measurements_intervals():
    narrow, wide = report(), report()
    wide.measurements = [m.__class__(**{**m.__dict__, "b_simple_window": m.b_simple_window.__class__(
        m.b_simple_window.value, 0.5 * m.b_simple_window.value, 2 * m.b_simple_window.value)})
        for m in wide.measurements]
    a, b = narrow.summary.critical_batch, wide.summary.critical_batch
    assert a.value == pytest.approx(b.value, rel=0.02)
    assert b.lo < a.lo and b.hi > a.hi


def test_adam_follows_twice_the_fixed_weight_b_simple():
    """Under the Adam family: ADAM_FACTOR × the fixed-weight B_simple (B_pre is not followed), the schedule's own
    path (so headline, schedule and predicted steps agree), widened by MODEL_RANGE, and said in the reason."""
    r = report("AdamW", "b_pre", 2.0)
    s = r.summary
    low, high = MODEL_RANGE[("adam", "*")]
    assert s.critical_batch_quantity == "b_simple" and 1.5 <= ADAM_FACTOR <= 4
    lowest = min(m.loss for m in r.measurements)
    sched = plan(r, ScheduleConfig(target_loss=lowest))
    assert s.critical_batch.value == pytest.approx(sched.prediction["b_crit"], rel=1e-9)
    sgd = report("SGD", "b_simple").summary.critical_batch       # the same B_simple rows under SGD
    assert s.critical_batch.value / sgd.value == pytest.approx(ADAM_FACTOR, rel=0.25)
    assert s.critical_batch.hi / s.critical_batch.value > high  # × high on top of the sampling interval
    assert s.critical_batch.lo / s.critical_batch.value < low
    assert s.critical_batch_reason.startswith(f"{ADAM_FACTOR:g} × fixed-weight B_simple") and "bsprof sweep" in \
        s.critical_batch_reason
    assert any(f"{ADAM_FACTOR:g} × the measured b_simple" in n for n in sched.notes)
    asked = plan(r, ScheduleConfig(target_loss=lowest, noise="b_pre"))   # --noise b_pre: calibrated as well
    assert asked.prediction["b_crit"] > sched.prediction["b_crit"]


def test_adam_follows_the_training_windows_times_their_factor():
    """With training-step windows, the Adam family follows ADAM_FACTORS["b_simple_window"] × their path average
    (the steadier quantity across tasks and seeds, docs/science.md §6), widened ×2 either way, said in the reason,
    the schedule's notes and the report's tracker-log rows alike."""
    r = report("Adam", "b_simple_window", 0.5)
    s, k = r.summary, ADAM_FACTORS["b_simple_window"]
    assert s.critical_batch_quantity == "b_simple_window" and 2 <= k <= 5 and k != ADAM_FACTOR
    sgd = report("SGD", "b_simple_window", 0.5).summary.critical_batch
    assert s.critical_batch.value / sgd.value == pytest.approx(k, rel=0.25)  # the path's weights move with it
    low, high = MODEL_RANGE[("adam", "b_simple_window")]
    assert s.critical_batch.lo / s.critical_batch.value < low < 1 < high < s.critical_batch.hi / s.critical_batch.value
    assert s.critical_batch_reason.startswith(f"{k:g} × B_simple over training-step windows")
    sched = plan(r, ScheduleConfig(target_loss=min(m.loss for m in r.measurements)))
    assert sched.prediction["b_crit"] == pytest.approx(s.critical_batch.value, rel=1e-9)
    assert any(f"{k:g} × the measured b_simple_window" in n for n in sched.notes)
    log = report("Adam", quantity="b_simple")   # a tracker log: its b_simple rows are windows
    log.measurements = [m.__class__(**{**m.__dict__, "stopped_by": "window"}) for m in log.measurements]
    assert log.summary.critical_batch_reason.startswith(f"{k:g} × B_simple over training-step windows")
    same = report("Adam", "b_simple_window", 1.0).summary.critical_batch   # windows holding the same values
    assert log.summary.critical_batch.value == pytest.approx(same.value, rel=1e-9)


def test_sgd_fixed_weight_b_simple_lower_end_widened():
    s = report(quantity="b_simple").summary
    assert s.critical_batch_quantity == "b_simple"
    assert s.critical_batch.lo < 0.25 * s.critical_batch.value
    assert "training-step windows" in s.critical_batch_reason


def test_windows_that_are_lower_bounds_are_named_when_the_headline_falls_back():
    """One window determined and four lower bounds: the headline follows the fixed-weight B_simple, and its reason
    said "training-step windows, where the model allows them, came closer" of a model that had them. Now it says
    how many windows there were, how many were bounds, and what resolves them."""
    rows = [m.to_row() for m in report().measurements]
    for row in rows[1:]:
        row.update(b_simple_window=math.nan, b_simple_window_hi=math.inf, b_simple_window_status="lower_bound")
    s = Report(config=report().config, measurements=rows).summary
    assert s.critical_batch_quantity == "b_simple"
    assert "this run has 5 training-step window(s), 4 of them only a lower bound" in s.critical_batch_reason
    assert "--measure-every" in s.critical_batch_reason
    assert "lower bound" not in report().summary.critical_batch_reason   # determined windows: nothing to say
    # followed, with one window of five only a lower bound: it is left out of the path, and the reason says so (a
    # validation probe had 5–6 of 13, unsaid)
    rows = [m.to_row() for m in report().measurements]
    rows[2].update(b_simple_window=math.nan, b_simple_window_hi=math.inf, b_simple_window_status="lower_bound")
    s = Report(config=report().config, measurements=rows).summary
    assert s.critical_batch_quantity == "b_simple_window"
    assert "1 of its 5 training-step windows only a lower bound" in s.critical_batch_reason
    assert "left out of the path, which may then read low" in s.critical_batch_reason


def test_sgd_b_noise_without_windows_is_widened_both_ways():
    """B_noise under SGD was 0.57–1.36× of the sweeps on six tasks and 3.08× on a BatchNorm CNN (ninth session):
    its interval carries ×1.8 / ÷3.1 (it carried none, from two tasks), and the reason says so."""
    s = report(quantity="b_noise", factor=0.6).summary
    sched = plan(report(quantity="b_noise", factor=0.6),
                 ScheduleConfig(target_loss=min(m.loss for m in report().measurements), noise="b_noise"))
    p = sched.prediction
    assert s.critical_batch_quantity == "b_noise"
    assert (s.critical_batch.lo, s.critical_batch.hi) == pytest.approx((p["b_crit_lo"] / 3.1, p["b_crit_hi"] * 1.8),
                                                                       rel=1e-9)
    assert "×1.8/÷3.1" in s.critical_batch_reason


def test_one_measurement_is_a_point_and_says_so():
    r = report(n=5)
    r.measurements = r.measurements[:1]
    h = critical_batch(r)
    assert h.quantity == "b_simple" and h.estimate.value == r.measurements[0].b_simple.value
    assert "only (no path" in h.reason


def test_in_json_terminal_and_old_reports(tmp_path):
    r = report()
    data = json.loads(json.dumps(r.to_dict()))
    cb = data["summary"]["critical_batch"]
    assert cb["status"] == "ok" and cb["lo"] < cb["value"] < cb["hi"]
    assert data["summary"]["critical_batch_quantity"] == "b_simple_window"
    assert data["summary"]["critical_batch_reason"]
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(r)
    text = console.export_text()
    summary = text.split("┘")[-1].strip().splitlines()
    assert summary[0].startswith("Critical batch ≈ ")  # the first line of the summary
    for name in ("report_adam_hessian.json", "report_least_squares.json"):  # release 0.1 reports
        old = Report.from_json(V1 / name)
        s = old.summary
        assert s.critical_batch is not None and math.isfinite(s.critical_batch.value)
        console.print(old)
        assert "Critical batch ≈" in console.export_text()


def test_bsprof_report_shows_it():
    from typer.testing import CliRunner

    from bsprof.cli import app

    res = CliRunner().invoke(app, ["report", str(V1 / "report_adam_hessian.json")])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.stdout.split())
    assert "Critical batch ≈" in flat and "bsprof sweep" in flat


def test_headline_to_a_target_loss(tmp_path):
    """`bsprof report --target-loss L`: the same path average ending at L (the schedule's B_crit to L)."""
    from typer.testing import CliRunner

    from bsprof.cli import app

    r = report()
    h = critical_batch(r, 0.8)
    assert h.estimate.value == pytest.approx(plan(r, ScheduleConfig(target_loss=0.8)).prediction["b_crit"], rel=1e-9)
    assert h.estimate.value < r.summary.critical_batch.value  # B_crit grows as the target loss falls
    assert "→ 0.8" in h.reason
    path = r.to_json(tmp_path / "report.json")
    res = CliRunner().invoke(app, ["report", str(path), "--target-loss", "0.8"])
    assert res.exit_code == 0, res.output
    assert "→ 0.8;" in " ".join(res.stdout.split())
    res = CliRunner().invoke(app, ["report", str(path), "--target-loss", "0.01"])  # far below the measured losses
    assert res.exit_code == 2 and "extrapolation" in res.output


def test_tracker_log_rows_are_training_windows():
    """A tracker log's B_simple column comes from training-step windows (stopped_by "window"): the window's
    lower-end widening (÷2.4), not the fixed-weight ÷4."""
    r = report(quantity="b_simple")
    r.measurements = [m.__class__(**{**m.__dict__, "stopped_by": "window"}) for m in r.measurements]
    s = r.summary
    assert s.critical_batch_quantity == "b_simple_window"
    assert s.critical_batch.lo > 0.3 * s.critical_batch.value    # ÷4 on a ±15% interval would be < 0.22
    assert "training-step windows" in s.critical_batch_reason


def test_other_optimizers_are_not_called_sgd():
    s = report("RMSprop", quantity="b_simple").summary
    assert "RMSprop: never compared with sweeps" in s.critical_batch_reason and "SGD" not in s.critical_batch_reason
    assert s.critical_batch.hi > 3 * s.critical_batch.value


def test_a_target_whose_interval_cannot_be_followed_is_an_error_not_a_point(monkeypatch):
    """Asked for a loss (report -t), a path whose interval ends cannot be followed there is one error line; without
    a target the headline still falls back to the latest measurement, and says so."""
    import sys

    from bsprof.errors import ReportError

    planning = sys.modules["bsprof.schedule.plan"]  # the module (bsprof.schedule.plan is also the function)

    monkeypatch.setattr(planning, "b_crit_bounds", lambda *a, **k: (math.nan, math.nan))
    r = report()
    with pytest.raises(ReportError, match="no critical batch to loss 0.5"):
        critical_batch(r, 0.5)
    assert "only" in critical_batch(r).reason


def test_sgd_with_momentum_follows_its_own_factor():
    """SGD with momentum > 0 is its own family (the report's optimizer_momentum): measured the plain-SGD way the
    noise scale fell short of swept critical batches there as under Adam, so the headline, the schedule and `check`
    follow MOMENTUM_FACTORS × the window B_simple, widened by its model range; momentum 0 is plain SGD."""
    from bsprof.gate.policy import judge
    from bsprof.results import MOMENTUM_SGD, optimizer_family, optimizer_name
    from bsprof.schedule.plan import MOMENTUM_FACTORS

    plan_module = sys.modules["bsprof.schedule.plan"]

    assert optimizer_name({"optimizer": "SGD", "optimizer_momentum": 0.9}) == f"{MOMENTUM_SGD}=0.9"
    assert optimizer_name({"optimizer": "SGD", "optimizer_momentum": 0.0}) == "SGD"
    assert optimizer_name({"optimizer": "SGD", "optimizer_momentum": "fast"}) == "SGD"   # a hand-edited report
    assert optimizer_family(f"{MOMENTUM_SGD}=0.9") == "momentum" and optimizer_family("SGD") == "sgd"
    # measured at β = 0.9; elsewhere k0 (k9/k0)^(log10 1/(1 − β)): plain SGD's factor k0 at β → 0
    k9, k0 = MOMENTUM_FACTORS["b_simple_window"], SGD_FACTORS["b_simple_window"]
    assert plan_module.calibration(f"{MOMENTUM_SGD}=0.9", "b_simple_window") == k9
    assert plan_module.calibration(f"{MOMENTUM_SGD}=0.5", "b_simple_window") == pytest.approx(
        k0 * (k9 / k0) ** 0.30103, abs=0.01)
    assert plan_module.calibration(f"{MOMENTUM_SGD}=0.01", "b_simple_window") == pytest.approx(k0, abs=0.01)
    assert plan_module.calibration("SGD", "b_simple_window") == k0
    # the fixed-weight B_simple is followed as measured under plain SGD: its factor at β → 0 is 1
    assert plan_module.calibration(f"{MOMENTUM_SGD}=0.5", "b_simple") == pytest.approx(
        MOMENTUM_FACTORS["b_simple"] ** 0.30103, abs=0.01)
    assert plan_module.calibration("SGD", "b_simple") == plan_module.calibration("SGD", "b_noise") == 1.0
    plain = report("SGD", "b_simple_window", 0.5)
    mom = report("SGD", "b_simple_window", 0.5)
    mom.config["optimizer_momentum"] = 0.9
    k = MOMENTUM_FACTORS["b_simple_window"]
    s = mom.summary
    assert s.critical_batch.value / plain.summary.critical_batch.value == pytest.approx(k / k0, rel=0.25)
    low, high = MODEL_RANGE[("momentum", "b_simple_window")]
    assert s.critical_batch.lo / s.critical_batch.value < low < 1 < high < s.critical_batch.hi / s.critical_batch.value
    assert s.critical_batch_reason.startswith(f"{k:g} × B_simple over training-step windows")
    assert "SGD with momentum" in s.critical_batch_reason
    sched = plan(mom, ScheduleConfig(target_loss=min(m.loss for m in mom.measurements)))
    assert sched.prediction["b_crit"] == pytest.approx(s.critical_batch.value, rel=1e-9)
    assert any("under SGD with momentum the schedule follows" in n for n in sched.notes)
    assert (sched.config["noise_followed"], sched.config["noise_factor"]) == ("b_simple_window", k)  # in its JSON
    assert any("under SGD with momentum the critical batch is" in n for n in judge(mom, 64).notes)
    # plain SGD says its factor too; once, when the run's own note (its diagnostic) says it already
    said = [n for n in judge(plain, 64).notes if "under plain SGD the critical batch is 0.74 × " in n]
    assert len(said) == 1 and "with the factor 0.68–" in said[0]
    plain.diagnose("plain_sgd", "plain SGD: … 0.74 × …")
    assert not any("under plain SGD the critical batch is" in n for n in judge(plain, 64).notes)


def test_momentum_is_read_from_the_optimizer_as_users_write_it():
    """A subclass of torch.optim.SGD is SGD (it was an unknown optimizer), the momentum is the largest parameter
    group's, and an SGD report without the field (an older bsprof) says the headline reads it as plain SGD (new-user
    findings)."""
    import torch

    from bsprof.results import optimizer_kind, optimizer_momentum

    class MySGD(torch.optim.SGD):
        pass

    small, big = torch.nn.Linear(2, 2), torch.nn.Linear(50, 50)
    opt = MySGD([{"params": small.parameters(), "momentum": 0.0}, {"params": big.parameters()}], lr=0.1,
                momentum=0.9)
    assert optimizer_kind(opt) == "SGD" and optimizer_momentum(opt) == 0.9
    assert optimizer_kind(torch.optim.AdamW(small.parameters())) == "AdamW"
    assert optimizer_momentum(torch.optim.AdamW(small.parameters())) is None
    old = report("SGD")
    assert "does not record SGD's momentum" in old.summary.critical_batch_reason
    old.config["optimizer_momentum"] = 0.0
    assert "momentum" not in old.summary.critical_batch_reason


def test_a_report_without_its_optimizer_is_read_as_plain_sgd_and_says_so():
    """A tracker log of a Tracker given no optimizer records none: read as plain SGD (× 0.74 on the windows), and
    the reason says so and how to record it (under Adam the factor would be 3.2)."""
    r = report(None)
    r.config.pop("optimizer")
    s = r.summary
    assert s.critical_batch_reason.startswith(f"{SGD_FACTORS['b_simple_window']:g} × ")
    assert "does not record its optimizer" in s.critical_batch_reason and "Tracker(model, optimizer" in \
        s.critical_batch_reason
    assert "does not record its optimizer" not in report("SGD").summary.critical_batch_reason


def test_a_diverging_run_has_no_headline():
    """The loss rose 2.3 → 3.9e5 (an lr of 1e6, a trial): a critical batch over that path was printed beside the
    loss_rose note; now none, and the reason says why."""
    rows = [dict(step=100 * i, loss=loss, b_simple=20.0, b_simple_lo=15.0, b_simple_hi=25.0, status="ok",
                 b_simple_window=20.0, b_simple_window_lo=15.0, b_simple_window_hi=25.0,
                 b_simple_window_status="ok") for i, loss in enumerate((2.3, 5.0, 3.9e5, 2.9e5))]
    r = Report(config={"optimizer": "SGD", "batch_size": 32, "lr": 1e6}, measurements=rows)
    h = critical_batch(r)
    assert not h.estimate.ok and h.quantity is None and "a diverging run" in h.reason


def test_one_determined_window_is_not_called_undetermined():
    """A run cut short after one training-step window, determined (33.6 [27.6, 38.6]), was told "too few of them
    determined … more steps between measurements resolve them" (a new user's trial): one window is no path, and the
    fix is more windows."""
    rows = [m.to_row() for m in report().measurements]
    for row in rows[1:]:
        row.update(b_simple_window=math.nan, b_simple_window_lo=math.nan, b_simple_window_hi=math.nan,
                   b_simple_window_status="not_available")
    s = Report(config=report().config, measurements=rows).summary
    assert s.critical_batch_quantity == "b_simple"
    assert "one training-step window, determined, and a path needs two" in s.critical_batch_reason
    assert "not determined" not in s.critical_batch_reason and "too few of them" not in s.critical_batch_reason
