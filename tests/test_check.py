"""`bsprof check`: the policy, its exit codes (0 pass, 1 fail, 2 cannot judge) and its CI outputs."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from bsprof.cli import app
from bsprof.gate.policy import (
    CANNOT_JUDGE,
    FAIL,
    PASS,
    Policy,
    Reading,
    check_baseline,
    check_batch,
    check_lr,
    judge,
    noise_at,
    target_lr,
)
from bsprof.output.report import Report

runner = CliRunner()


def _row(step, loss, b, lo, hi, status="ok", **extra):
    return dict(step=step, examples_seen=step * 32, loss=loss, g2=1.0 / b if b else 0.0, trace_sigma=1.0,
                b_simple=b, b_simple_lo=lo, b_simple_hi=hi, status=status, method="vmap", n_draws=12,
                examples=6000, **extra)


def make_report(rows=None, optimizer="SGD", lr=0.1, batch_size=32, unit="examples") -> Report:
    """A run whose noise scale stays at 1000 [800, 1250] as the loss falls 2.3 → 0.5: its headline critical batch
    (the path average `check` judges by) is 1000 [800/4, 1250] (fixed-weight B_simple under SGD: lower end ÷4)."""
    rows = rows if rows is not None else [_row(0, 2.3, 1000.0, 800.0, 1250.0), _row(50, 1.0, 1000.0, 800.0, 1250.0),
                                          _row(100, 0.5, 1000.0, 800.0, 1250.0)]
    cfg = {"batch_size": batch_size, "lr": lr, "optimizer": optimizer, "optimizer_lr": lr, "steps": 100}
    return Report(config=cfg, measurements=rows, unit=unit)


@pytest.fixture
def report(tmp_path):
    return str(make_report().to_json(tmp_path / "report.json"))


def run(*args, env=None):
    result = runner.invoke(app, ["check", *map(str, args)], env=env)
    assert "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


# -- policy (pure) -------------------------------------------------------------------------------------------
def test_a_tokens_report_suggests_whole_sequences():
    """In tokens (sequences of 10) the suggested batch and the "at least"/"at most" batches are whole sequences:
    check had suggested 228 tokens (a new user's finding)."""
    noise = Reading(1000.0, 800.0, 1250.0, "ok", unit="tokens")
    ok = check_batch(1000, noise, tokens_per_example=10)
    assert ok.status == PASS and ok.passing["suggest"] % 10 == 0 and ok.passing["suggest"] // 10 in (64, 128)
    small = check_batch(30, noise, tokens_per_example=10)
    assert small.status == FAIL and "at least 200 (20 sequences of 10) tokens" in small.message, small.message
    large = check_batch(10 ** 6, noise, tokens_per_example=10)
    assert large.status == FAIL and "at most 5,000 (500 sequences of 10) tokens" in large.message, large.message
    assert check_batch(1000, Reading(1000.0, 800.0, 1250.0, "ok")).passing["suggest"] == 1024
    rep = make_report(unit="tokens")
    rep.config = {**rep.config, "tokens_per_example": 10}
    assert judge(rep, 1000).checks[0].passing["suggest"] % 10 == 0


def test_an_interval_wider_than_the_policy_has_no_clean_range():
    """hi/4 > lo·4: no batch passes across the whole interval; the note said "B in [75.9, 63.6] passes cleanly"
    (a new user's finding)."""
    wide = Reading(90.0, 15.0, 300.0, "ok")
    r = check_batch(64, wide)
    assert r.status == PASS and r.notes
    assert "passes cleanly" not in r.notes[0] and "No batch passes across the whole interval" in r.notes[0]
    assert "passes cleanly" in check_batch(4096, Reading(1000.0, 800.0, 1250.0, "ok")).notes[0]


def test_policy_uses_the_favourable_end_of_the_interval():
    noise = Reading(1000.0, 800.0, 1250.0, "ok")
    assert check_batch(1024, noise).status == PASS and not check_batch(1024, noise).notes
    ambiguous = check_batch(4096, noise)            # 4096/1000 > 4 at the estimate, 4096/1250 < 4 at the top
    assert ambiguous.status == PASS and "not across the whole interval" in ambiguous.notes[0]
    assert "passes only because the interval" in ambiguous.message and "within policy:" not in ambiguous.message
    assert "is within policy" in check_batch(1024, noise).message
    too_big = check_batch(8192, noise)
    assert too_big.status == FAIL and "7.55× the minimal compute" in too_big.message
    assert too_big.passing["max"] == pytest.approx(5000)
    too_small = check_batch(100, noise)
    assert too_small.status == FAIL and "too small" in too_small.message and "at least 200" in too_small.message
    assert check_batch(8192, noise, Policy(max_extra_compute=8)).status == PASS
    assert check_batch(100, noise, Policy(max_extra_steps=0.5)).status == FAIL
    assert check_batch(1000, noise, Policy(max_extra_steps=0.5)).status == FAIL   # 800/1000 > 0.5


def test_lower_bound_can_only_prove_a_batch_too_small():
    bound = Reading(math.nan, 500.0, math.inf, "lower_bound")
    assert check_batch(64, bound).status == FAIL           # 500/64 > 4 whatever B_n above 500 is
    assert check_batch(4096, bound).status == CANNOT_JUDGE
    assert check_batch(64, Reading(math.nan, math.nan, math.nan, "undetermined")).status == CANNOT_JUDGE


def test_a_measurement_at_the_initial_weights_can_show_a_batch_too_small_never_too_large(tmp_path):
    """`bsprof check SPEC.py` (no --steps) judged a char LM under AdamW at step 0, B_crit 4.7 [1.56, 11.4], and failed
    B = 64 as too large; a trained run's report (66.6) passed it. The noise scale grows as the loss falls, so a
    measurement at initialisation can prove a batch too small, never too large: that side cannot be judged (exit 2)."""
    initial = make_report([_row(0, 2.3, 10.0, 8.0, 12.5)], optimizer="AdamW", lr=0.003)
    large = judge(initial, 1000).checks[0]
    assert large.status == CANNOT_JUDGE and "initial weights" in large.message, large.message
    assert any("--steps" in n for n in large.notes) and large.passing["max"] == math.inf
    assert judge(initial, 1).checks[0].status == FAIL                    # too small stays provable
    assert any("initial weights" in n for n in judge(initial, 64).checks[0].notes)   # a pass says what it shows
    trained = make_report([_row(0, 2.3, 10.0, 8.0, 12.5), _row(100, 1.0, 10.0, 8.0, 12.5)], optimizer="AdamW")
    assert judge(trained, 1000).checks[0].status == FAIL
    checkpoint = make_report([_row(0, 2.3, 10.0, 8.0, 12.5)], optimizer="AdamW")
    checkpoint.config["checkpoint"] = "trained.pt"                       # step 0 of a probe from trained weights
    # one point, not at initialisation: how the noise scale grows after it is unknown (a tracker log of one window
    # failed B = 4,096 by default and passed with --window 12, a trial's finding): a warning that says so, not a fail
    one = judge(checkpoint, 1000).checks[0]
    assert one.status == PASS and "too large at the one point it can be judged" in one.message, one.message
    assert any("--at-loss" in n for n in one.notes) and one.passing["max"] == math.inf
    path = tmp_path / "initial.json"
    initial.to_json(path)
    r = run(path, "-b", 1000, "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["noise_scale"]["initial"] is True


def _short_probe(growth=4.0) -> Report:
    """A 60-step AdamW probe whose noise scale grew ``growth``× as the loss fell 3.2 → 2.62 (a new user's char LM)."""
    path = ((0, 3.2, 1.0), (20, 2.9, growth ** (1 / 3)), (40, 2.75, growth ** (2 / 3)), (60, 2.62, growth))
    return make_report([_row(s, loss, 10.0 * k, 8.0 * k, 12.5 * k) for s, loss, k in path], optimizer="AdamW",
                       lr=0.003)


def test_too_large_on_a_path_still_growing_is_a_warning_unless_judged_at_a_loss(tmp_path):
    """`bsprof check SPEC.py --steps 60` failed B = 512 as too large against a 60-step path average of 23.6 (at most
    272 passes); 150 steps gave 72.2 (721 passes). The critical batch grows as the loss falls: "too large" on a path
    along which it still grew holds for a training that ends there only, so it passes with a warning (exit 0)
    saying so, unless judged at a loss the path reached (--at-loss). Too small stays a failure."""
    rep = _short_probe()
    v = judge(rep, 4096)
    c = v.checks[0]
    assert v.noise.growth == pytest.approx(4.0) and v.noise.path == (3.2, 2.62)
    assert c.status == PASS and v.exit_code == 0 and "too large only for the probe's path" in c.message, c.message
    assert "judged on the probe's path, loss 3.2 → 2.62: the noise scale grew 4× along it" in c.notes[0], c.notes
    assert "--at-loss L (a loss the path reached, 2.62–3.2" in c.notes[0] and "--steps" in c.notes[0]
    assert c.passing["max"] == math.inf and c.passing["max_path"] < 4096 and c.measured["growth"] == 4.0
    assert f"at most {math.floor(c.passing['max_path']):,} examples pass" in c.message
    at = judge(rep, 4096, at_loss=2.62).checks[0]                      # asked at a loss the probe reached: fails
    assert at.status == FAIL and "too large" in at.message and at.passing["max"] < 4096
    assert judge(rep, 2).checks[0].status == FAIL                       # too small: the noise scale only grows
    assert judge(_short_probe(growth=1.2), 4096).checks[0].status == FAIL   # levelled off: the path stands for it
    assert judge(make_report(), 100_000).checks[0].status == FAIL
    log = check_batch(4096, Reading(50.0, 20.0, 100.0, "ok", growth=3.0, path=(3.2, 2.62), from_log=True))
    assert log.status == PASS and "the log's path" in log.message and "train (and log) further" in log.notes[0]
    # the machine outputs say the same: exit 0, status pass, no <failure>, a ::warning:: annotation
    path = rep.to_json(tmp_path / "short.json")
    data = json.loads(run(path, "-b", 4096, "--json").stdout)
    assert data["status"] == "pass" and data["exit_code"] == 0 and data["checks"][0]["passing"]["max"] is None
    assert data["noise_scale"]["growth"] == pytest.approx(4.0) and data["noise_scale"]["path"] == [3.2, 2.62]
    assert data["checks"][0]["warning"] is True and c.warning and not judge(rep, 2).checks[0].warning
    assert "PASS, with a warning" in run(path, "-b", 4096).stdout   # not a bare PASS beside "too large"
    assert "PASS, with a warning" not in run(path, "-b", 100).stdout
    junit = tmp_path / "junit.xml"
    r = run(path, "-b", 4096, "--junit", junit, "--github")
    assert r.exit_code == 0 and ET.parse(junit).getroot().find("testsuite").get("failures") == "0"
    assert any(line.startswith("::warning ") and "--at-loss L" in line for line in r.stdout.splitlines())
    assert run(path, "-b", 4096, "--at-loss", 2.62).exit_code == 1


def test_at_loss_interpolates_log_b_simple_and_refuses_to_extrapolate():
    rep = make_report([_row(0, 2.3, 100.0, 80.0, 125.0), _row(50, 1.0, 300.0, 250.0, 370.0),
                       _row(100, 0.5, 1000.0, 800.0, 1250.0)])
    mid = noise_at(rep, 0.75)                       # halfway between loss 1.0 (300) and 0.5 (1000) in log
    assert mid.value == pytest.approx(math.sqrt(300 * 1000))
    assert noise_at(rep, 1.0).value == pytest.approx(300)
    with pytest.raises(ValueError, match="extrapolate"):
        noise_at(rep, 0.1)
    rep.measurements[0] = dataclasses.replace(rep.measurements[0], loss=2.2996)   # shown as 2.3 in the table
    assert noise_at(rep, 2.3).value == pytest.approx(100)   # typed from the table: the end it rounds, not refused
    with pytest.raises(ValueError, match=r"outside the losses \[0.5, 2.3\] where the headline's noise scale, "
                                         r"fixed-weight B_simple, was determined; bsprof does not extrapolate"):
        noise_at(rep, 2.31)
    # rows further down that are only lower bounds: said, with how far the run went (a new user read "outside the
    # measured losses [0.4638, 0.5535]" of a run whose table went down to 0.4111)
    bounded = make_report([*(m.to_row() for m in rep.measurements), _row(150, 0.3, 2000.0, 1000.0, math.inf,
                                                                          "lower_bound")])
    with pytest.raises(ValueError, match=r"its rows at lower losses, down to 0.3, are lower bounds or undetermined"):
        noise_at(bounded, 0.35)
    rep.measurements[0] = dataclasses.replace(rep.measurements[0], loss=2.3)
    rep.config = {**rep.config, "optimizer": "AdamW"}   # under Adam: the factor the headline and schedule apply
    from bsprof.schedule.plan import ADAM_FACTORS

    adam = noise_at(rep, 1.0)
    assert adam.value == pytest.approx(ADAM_FACTORS["b_simple"] * 300) and "under Adam" in adam.where


def test_at_loss_reads_the_quantity_the_headline_follows():
    """A report whose headline follows the training-step windows (0.74 × B_simple over them under plain SGD,
    ×1.7/÷1.8): ``--at-loss`` interpolates those windows with the same factor and range, not the fixed-weight
    B_simple × 1 with the lower end ÷4 (a trial's finding: the same report passed or failed depending on whether
    --at-loss was given)."""
    from bsprof.schedule.headline import model_range
    from bsprof.schedule.plan import calibration

    def win(b):
        return dict(b_simple_window=b, b_simple_window_lo=0.8 * b, b_simple_window_hi=1.25 * b, window_steps=25)

    rows = [_row(0, 2.3, 100.0, 80.0, 125.0), _row(50, 1.0, 300.0, 250.0, 370.0, **win(200.0)),
            _row(100, 0.5, 1000.0, 800.0, 1250.0, **win(600.0))]
    rep = make_report(rows)
    assert rep.summary.critical_batch_quantity == "b_simple_window"
    k, (down, up) = calibration("SGD", "b_simple_window"), model_range("SGD", "b_simple_window")
    at = noise_at(rep, 1.0)
    assert (at.value, at.lo, at.hi) == pytest.approx((k * 200, k * 160 * down, k * 250 * up))
    assert at.quantity == "b_simple_window" and at.factor == k and at.model_range == (down, up)
    assert at.name == f"{k:g} × B_simple over training-step windows"
    mid = noise_at(rep, 0.75)
    assert mid.value == pytest.approx(k * math.sqrt(200 * 600))
    plain = noise_at(make_report(rows[:1] + [{**r, "b_simple_window": None} for r in rows[1:]]), 1.0)
    assert plain.quantity == "b_simple" and plain.value == pytest.approx(300)   # no windows: the fixed-weight one


def test_at_loss_carries_the_headlines_model_range():
    """B_simple at a loss is widened by the model range the headline would apply for the optimizer family (under
    SGD the fixed-weight B_simple's lower end ÷4, under Adam ×2.3/÷2.8 around 2.5 × it), and says so; it was the
    sampling interval alone (a new user's finding)."""
    rows = [_row(0, 2.3, 100.0, 80.0, 125.0), _row(50, 1.0, 300.0, 250.0, 370.0), _row(100, 0.5, 1000.0, 800.0, 1250.0)]
    sgd = noise_at(make_report(rows), 1.0)
    assert (sgd.value, sgd.lo, sgd.hi) == pytest.approx((300, 250 / 4, 370)) and sgd.model_range == (1 / 4, 1.0)
    assert "interval widened ÷4 by the model range, as the headline's" in sgd.where
    adam = noise_at(make_report(rows, optimizer="Adam"), 1.0)
    assert (adam.value, adam.lo, adam.hi) == pytest.approx((750, 2.5 * 250 / 2.8, 2.5 * 370 * 2.3))
    assert "widened ×2.3/÷2.8" in adam.describe()
    v = judge(make_report(rows, optimizer="Adam"), 256, at_loss=1.0)
    assert v.to_dict()["noise_scale"]["model_range"] == pytest.approx([1 / 2.8, 2.3])
    assert "the interval includes the headline's model range" in check_batch(256, adam).notes[0]
    assert noise_at(make_report(rows, optimizer="Adam")).model_range == (1 / 2.8, 2.3)   # the headline's own


def test_lr_rules():
    assert target_lr("sqrt", 1e-3, 32, 128) == pytest.approx(2e-3)
    assert target_lr("linear", 0.1, 32, 128) == pytest.approx(0.4)             # no noise scale: linear
    sat = target_lr("linear", 0.1, 32, 1e9, b_noise=1000.0)                     # saturates at lr_ref(1 + B_n/B_ref)
    assert sat == pytest.approx(0.1 * (1 + 1000 / 32), rel=1e-5)
    assert target_lr("linear", 0.1, 32, 1e9, b_noise=1000.0, eps_max=1.0) == pytest.approx(1.0, rel=1e-5)
    rep = make_report(optimizer="Adam", lr=1e-3)
    v = judge(rep, 512, lr=4e-3)                                                # √(512/32) = 4
    assert v.status == PASS and any("Adam" in n for n in v.notes)
    assert judge(rep, 512, lr=4e-2).status == FAIL and "too high" in judge(rep, 512, lr=4e-2).messages[1]
    assert judge(make_report(optimizer="RMSprop"), 512, lr=0.1).checks[1].status == CANNOT_JUDGE


def test_an_lr_passing_only_across_the_interval_says_so():
    """SGD probed at lr 0.05, B = 32; noise scale 200 [60, 700]: at B = 512 the rule gives ≈ 0.23 at the estimate,
    more than 4× the lr 0.05, but less across the interval. The PASS line said "within 4× of … (≈ 0.215)" above a
    warning that it was more than 4× off (a new user's finding): it now says where it passes."""
    r = check_lr(0.05, 512, {"lr": 0.05, "batch_size": 32, "optimizer": "SGD"}, Reading(200.0, 60.0, 700.0, "ok"))
    assert r.status == PASS
    assert "somewhere on the noise scale's interval" in r.message and "at the estimate" in r.message, r.message
    assert any("more than 4× off the rule at the estimate" in n for n in r.notes)
    clear = check_lr(0.2, 512, {"lr": 0.05, "batch_size": 32, "optimizer": "SGD"}, Reading(200.0, 60.0, 700.0, "ok"))
    assert clear.status == PASS and "somewhere" not in clear.message


def test_the_lr_check_suggests_and_passes_no_lr_the_schedule_would_cap(tmp_path):
    """AdamW probed at lr 0.003, B = 32, judged at B = 4096: the rule's 0.0339 is 11× the probed lr. With --lr-cap 2,
    as `bsprof schedule --lr-cap 2` caps lrs at 2 × it (0.006), check failed lr 0.003 as "too low, use lr ≈ 0.0339
    (anything in [0.00849, 0.136] passes)": it suggests and passes at most the cap, judges "too low" against it,
    says the rule's lr was capped, and an lr above the cap that the rule allows is untested, not failed. Without a
    cap (the default, as the schedule's) it suggests the rule's own lr."""
    rep = make_report(optimizer="AdamW", lr=0.003)
    cap2 = Policy(lr_cap=2)
    at_cap = judge(rep, 4096, lr=0.003, policy=cap2).checks[1]
    assert at_cap.status == PASS and at_cap.passing["suggest"] == pytest.approx(0.006), at_cap.message
    assert at_cap.passing["max_tested"] == pytest.approx(0.006)                  # what passes and was probed
    assert at_cap.passing["max"] == pytest.approx(4 * 0.003 * 128 ** 0.5)          # what passes (untested above)
    rule = at_cap.measured["target_rule"]       # √ up to the headline critical batch 2,500 < 4,096, flat above it
    assert rule == pytest.approx(0.003 * (2500 / 32) ** 0.5)
    assert any("--lr-cap 2" in n and "0.0265" in n for n in at_cap.notes), at_cap.notes
    low = judge(rep, 4096, lr=0.0003, policy=cap2).checks[1]                       # 20× below the capped 0.006
    assert low.status == FAIL and "use lr ≈ 0.006 " in low.message and "[0.0015, 0.006] passes; up to 0.136" in \
        low.message
    above = judge(rep, 4096, lr=0.03, policy=cap2).checks[1]                       # the rule's, but untested
    assert above.status == PASS and "untested" in above.message and any("not failing" in n for n in above.notes)
    assert judge(rep, 4096, lr=1.0, policy=cap2).checks[1].status == FAIL          # too high by the rule itself
    lifted = judge(rep, 4096, lr=0.003).checks[1]                                  # the default: no cap
    assert lifted.status == FAIL and lifted.passing["suggest"] == pytest.approx(rule)
    assert "flat above it" in lifted.message and not any("capped" in n for n in lifted.notes)
    assert any("is 8.8 × the probed lr 0.003: an extrapolation" in n for n in lifted.notes), lifted.notes
    assert "--lr-cap must be 0" in str(pytest.raises(ValueError, judge, rep, 64, 0.003, Policy(lr_cap=0.5)).value)
    # the rule's lr just above the cap, its interval not: the PASS line gives both numbers, as the warning does
    near = judge(make_report(optimizer="SGD", lr=0.1), 75, lr=0.15, policy=cap2).checks[1]
    assert near.status == PASS and "(≈ 0.2: the rule's ≈ 0.225 capped at --lr-cap 2 × that lr)" in near.message
    rep.to_json(tmp_path / "adamw.json")
    r = run(tmp_path / "adamw.json", "-b", 4096, "--lr", 0.003, "--lr-cap", 2)
    assert r.exit_code == 0 and "capped at 2 × that lr = 0.006" in r.stdout, r.stdout
    r = run(tmp_path / "adamw.json", "-b", 4096, "--lr", 0.003)
    assert r.exit_code == 1 and "use lr ≈ 0.0265" in r.stdout, r.stdout


def test_the_square_root_rule_is_flat_above_the_noise_scale():
    """Adam's lr rises as √B up to the noise scale and no further (Li et al. 2024): below the critical batch the check
    is plain √ scaling, above its whole interval the lr of the critical batch itself."""
    from bsprof.gate.policy import target_lr
    assert target_lr("sqrt", 1e-3, 32, 128) == pytest.approx(2e-3)                 # B_n unknown: √(B/B_ref)
    assert target_lr("sqrt", 1e-3, 32, 128, 1e4) == pytest.approx(2e-3)           # far below B_n: √
    assert target_lr("sqrt", 1e-3, 32, 1e6, 512) == pytest.approx(4e-3)           # above B_n: √(512/32)
    assert target_lr("sqrt", 1e-3, 1024, 4096, 512) == pytest.approx(1e-3)         # both above it: flat
    rep = make_report(optimizer="Adam", lr=1e-3)                  # headline 2,500 [≈ 800·2.5/4, 1250·2.5·…]
    below = judge(rep, 128, lr=2e-3).checks[1]
    assert below.status == PASS and below.passing["suggest"] == pytest.approx(2e-3)
    far = judge(rep, 10 ** 6, lr=1e-3 * 177).checks[1]     # √(10⁶/32) = 177× would be the plain rule's
    assert far.status == FAIL and "too high" in far.message, far.message
    # the end the ratio is taken from is named: "133× off the nearer end of the range" beside "[…, 0.006] passes"
    # read as 33× to a new user (the passing range is the rule's widened by the limit)
    end, off = far.measured["target_rule_hi"], 0.177 / far.measured["target_rule_hi"]
    from bsprof.gate.policy import _fmt
    assert f"{_fmt(off)}× off the nearer end, {_fmt(end)}, of the range" in far.message, far.message


def test_a_training_configs_batch_on_a_tokens_report_counts_sequences(tmp_path):
    """A tokens report (32 sequences of 10 tokens at lr 3e-3) and the training config it was probed with (batch 32,
    lr 3e-3): the config's 32 was judged as 32 tokens and failed both checks. It counts sequences, said in a note;
    a --batch-size that is not a whole number of sequences gets a note."""
    rep = make_report(optimizer="Adam", lr=3e-3, unit="tokens")
    rep.config = {**rep.config, "tokens_per_example": 10}
    rep.to_json(tmp_path / "tokens.json")
    cfg = tmp_path / "train.yaml"
    cfg.write_text("trainer:\n  batch_size: 32\noptim:\n  lr: 0.003\n")
    r = run(tmp_path / "tokens.json", "--training-config", cfg, "--json")
    v = json.loads(r.stdout)
    lr_check = [c for c in v["checks"] if c["name"] == "lr"][0]
    assert lr_check["status"] == "pass" and lr_check["measured"]["target"] == pytest.approx(3e-3), r.stdout
    assert any("batch size 32 is read as sequences and judged as 32 × 10 tokens per example = 320 tokens" in n
               for n in v["notes"]), v["notes"]
    r = run(tmp_path / "tokens.json", "-b", 32, "--lr", 3e-3)
    assert "for 32 sequences pass --batch-size 320" in " ".join(r.output.split()), r.output


def test_a_batch_in_sequences_on_a_tokens_report_is_asked_about(tmp_path):
    """A tokens report (32 sequences of 32 tokens): `-b 32` was judged as 32 tokens, "too small … at least 64 (2
    sequences of 32) tokens passes", while the probe itself trained with 32 sequences = 1,024 tokens. A batch that
    looks like sequences (the probe's batch, or under one sequence's tokens) is asked about in the message;
    --batch-unit sequences gives the batch in sequences."""
    rep = make_report(unit="tokens")
    rep.config = {**rep.config, "tokens_per_example": 32}
    path = rep.to_json(tmp_path / "tokens.json")
    small = json.loads(run(path, "-b", 32, "--json").stdout)
    assert small["exit_code"] == 1 and small["checks"][0]["measured"]["batch_size"] == 32
    assert ("did you mean 32 sequences (the probe's batch) = 1,024 tokens? --batch-size is in tokens, the report's "
            "unit: for 32 sequences pass --batch-size 1,024, or --batch-unit sequences") in small["messages"][0]
    assert "did you mean 8 sequences = 256 tokens?" in json.loads(run(path, "-b", 8, "--json").stdout)["messages"][0]
    seqs = json.loads(run(path, "-b", 32, "--batch-unit", "sequences", "--json").stdout)
    assert seqs["exit_code"] == 0 and seqs["checks"][0]["measured"]["batch_size"] == 1024
    assert "did you mean" not in r_text(seqs) and any("judged as 32 × 32 tokens per example = 1,024 tokens" in n
                                                       for n in seqs["notes"])
    assert "did you mean" not in r_text(json.loads(run(path, "-b", 2048, "--json").stdout))
    assert "did you mean" not in r_text(json.loads(run(path, "-b", 32, "--batch-unit", "tokens", "--json").stdout))
    passed = json.loads(run(path, "-b", 32, "--factor", 40, "--json").stdout)   # a pass: the question is a warning
    assert passed["exit_code"] == 0 and "did you mean 32 sequences" in passed["checks"][0]["notes"][0]
    cfg = tmp_path / "train.yaml"
    cfg.write_text("batch_size: 2048\n")                                # a config holding tokens
    as_tokens = json.loads(run(path, "-t", cfg, "--batch-unit", "tokens", "--json").stdout)
    assert as_tokens["checks"][0]["measured"]["batch_size"] == 2048
    examples = make_report().to_json(tmp_path / "examples.json")
    bad = run(examples, "-b", 32, "--batch-unit", "tokens")
    assert bad.exit_code == 2 and "not tokens" in bad.output
    assert run(examples, "-b", 32, "--batch-unit", "sequences").exit_code == 1   # examples = sequences: as given
    assert run(path, "-b", 32, "--batch-unit", "bytes").exit_code == 2


def r_text(verdict: dict) -> str:
    return " ".join([*verdict["messages"], *(n for c in verdict["checks"] for n in c["notes"]), *verdict["notes"]])


def test_lr_on_a_tokens_report_scales_from_the_training_batch_in_tokens():
    """--batch-size is in the report's unit: the training batch (32 sequences of 10 tokens) is 320 tokens."""
    rep = make_report(optimizer="Adam", lr=3e-3, unit="tokens")
    rep.config = {**rep.config, "tokens_per_example": 10}
    at_train = judge(rep, 320, lr=3e-3).checks[1]
    assert at_train.status == PASS and at_train.passing["suggest"] == pytest.approx(3e-3)
    assert "at B = 320 tokens" in at_train.message
    low = judge(rep, 320, lr=5e-4).checks[1]                            # 6× off, not 6·√10 ≈ 19×
    assert low.status == FAIL and "6× off" in low.message
    sgd = make_report(optimizer="SGD", lr=0.1, unit="tokens")
    sgd.config = {**sgd.config, "tokens_per_example": 10}
    assert judge(sgd, 320, lr=0.1).checks[1].passing["suggest"] == pytest.approx(0.1)
    sgd.config.update(batch_size=320)                                    # a tracker log: its batch in its unit
    sgd.config.pop("tokens_per_example")
    assert judge(sgd, 320, lr=0.1).checks[1].passing["suggest"] == pytest.approx(0.1)


def test_sgd_lr_is_capped_by_eps_opt_when_eps_max_was_measured():
    plain = make_report([_row(100, 0.5, 1000.0, 800.0, 1250.0)])
    capped = make_report([_row(100, 0.5, 1000.0, 800.0, 1250.0, b_noise=1000.0, b_noise_lo=900.0,
                               b_noise_hi=1100.0, eps_max=1.0)])
    assert judge(plain, 2048, lr=3.0).status == PASS            # ≈ 0.1·(1 + 1000/32)/(1 + 1000/2048) = 2.17
    v = judge(capped, 2048, lr=3.0, policy=Policy(lr_cap=0))    # ε_opt = 1/(1 + B_noise/B) ≈ 0.67 (no lr cap)
    assert v.status == FAIL and v.checks[1].measured["target"] == pytest.approx(1 / (1 + 1000 / 2048))
    assert (v.checks[1].measured["noise_scale_used"], v.checks[1].measured["noise_factor"]) == ("b_noise", 1.0)


def test_lr_check_names_the_noise_scale_it_used_with_its_factor():
    """`noise_scale_used` said b_simple for 2.6 × B_simple (a new user's finding): it names the measured quantity and
    `noise_factor` the factor, as schedule JSON's noise_followed and noise_factor; None where the rule used none."""
    rows = [_row(0, 2.3, 100.0, 80.0, 125.0), _row(50, 1.0, 300.0, 250.0, 370.0), _row(100, 0.5, 1000.0, 800.0, 1250.0)]
    momentum = make_report(rows)
    momentum.config["optimizer_momentum"] = 0.9
    for at in (None, 1.0):
        v = judge(momentum, 256, lr=0.3, at_loss=at).to_dict()
        used = v["checks"][1]["measured"]
        assert (used["noise_scale_used"], used["noise_factor"]) == ("b_simple", 2.6)
        assert (v["noise_scale"]["quantity"], v["noise_scale"]["factor"]) == ("b_simple", 2.6)
    windows = make_report([{**r, "stopped_by": "window"} for r in rows])   # a tracker log: training-step windows
    windows.config["optimizer_momentum"] = 0.9
    used = judge(windows, 256, lr=0.3).checks[1].measured
    assert (used["noise_scale_used"], used["noise_factor"]) == ("b_simple_window", 2.8)
    plain = judge(make_report(rows), 256, lr=0.3).checks[1].measured
    assert (plain["noise_scale_used"], plain["noise_factor"]) == ("b_simple", 1.0)
    adam = judge(make_report(rows, optimizer="Adam", lr=1e-3), 256, lr=3e-3).checks[1].measured
    assert adam["rule"] == "sqrt" and (adam["noise_scale_used"], adam["noise_factor"]) == ("b_simple", 2.5)


def test_baseline_gate():
    old = Reading(100.0, 80.0, 125.0, "ok")
    assert check_baseline(Reading(200.0, 170.0, 240.0, "ok"), old, 2).status == PASS
    grew = check_baseline(Reading(400.0, 300.0, 500.0, "ok"), old, 2)      # 300 > 125·2
    assert grew.status == FAIL and "grew" in grew.message
    assert check_baseline(Reading(30.0, 20.0, 35.0, "ok"), old, 2).status == FAIL   # 35 < 80/2
    assert check_baseline(Reading(math.nan, 50.0, math.inf, "lower_bound"), old, 2).status == CANNOT_JUDGE
    assert check_baseline(Reading(math.nan, 400.0, math.inf, "lower_bound"), old, 2).status == FAIL


def test_a_baseline_read_with_another_factor_is_compared_on_the_same_footing():
    """The same measurements, one report recording momentum 0.9 (its critical batch × the momentum factor) and one
    not (an older bsprof: plain SGD): the baseline gate compares the measured noise scales, not the factors, and a
    note says so (it failed with "grew 1.86×", a new user's finding)."""
    new, old = make_report(), make_report()
    new.config["optimizer_momentum"] = 0.9
    for at in (None, 1.0):
        v = judge(new, 1024, policy=Policy(baseline_factor=1.5), baseline=old, at_loss=at)
        base = next(c for c in v.checks if c.name == "baseline")
        assert base.status == PASS and base.measured["ratio"] == pytest.approx(1.0), base.message
        assert any("compared on this report's footing" in n for n in v.notes)
    at = noise_at(new, 1.0)   # the value read at a loss names its factor
    assert at.name == "2.6 × B_simple" and at.describe().startswith("2.6 × B_simple = ")
    assert not any("footing" in n for n in judge(old, 1024, baseline=make_report()).notes)


def test_a_baseline_of_another_quantity_is_said_to_be_one():
    """A baseline read from training-step windows against a report with fixed-weight values only (a run too short
    for windows): the gate still compares, with a note that the quantities differ (a new user's finding)."""
    rows = [_row(0, 2.3, 100.0, 80.0, 125.0), _row(50, 1.0, 300.0, 250.0, 370.0), _row(100, 0.5, 1000.0, 800.0, 1250.0)]
    windows = make_report([{**r, "stopped_by": "window"} for r in rows])
    v = judge(make_report(rows), 1024, baseline=windows)
    assert any("not the same quantity" in n and "training-step windows" in n for n in v.notes), v.notes
    same = judge(make_report(rows), 1024, baseline=make_report(rows))
    assert not any("not the same quantity" in n for n in same.notes)
    assert not any("do not overlap" in n for n in same.notes)
    later = [_row(200, 0.3, 1500.0, 1200.0, 1900.0), _row(300, 0.2, 2500.0, 2000.0, 3100.0)]
    v = judge(make_report(later), 1024, baseline=make_report(rows))   # another stage of training: said
    assert any("measured losses 0.5–2.3 and this report 0.2–0.3: they do not overlap" in n for n in v.notes), v.notes
    # overlapping, but this report's path goes much further down (a trial: 0.268 against 0.018): said, with a loss
    # both reached to compare at; not said of paths ending close together
    longer = rows + [_row(200, 0.3, 1500.0, 1200.0, 1900.0), _row(300, 0.2, 2500.0, 2000.0, 3100.0)]
    v = judge(make_report(longer), 1024, baseline=make_report(rows))
    assert any("down to loss 0.5 and this report's down to 0.2" in n and "--at-loss 0.5" in n for n in v.notes), \
        v.notes
    assert not any("averages its path" in n for n in same.notes)


def test_a_headline_that_is_only_a_lower_bound_is_said_when_the_latest_value_judges(monkeypatch):
    """The report's critical batch only a lower bound (training-step windows unresolved late in the run): check judges
    by the latest fixed-weight B_simple, and now says so (a new user saw it judge by another number silently)."""
    from bsprof.results import Estimate, Status
    from bsprof.schedule import headline

    report = make_report()
    assert not any("critical batch is" in n for n in judge(report, 1024).notes)
    monkeypatch.setattr(headline, "critical_batch", lambda rep, target=None: headline.Headline(
        Estimate(math.nan, 53.6, math.inf, Status.LOWER_BOUND), "b_simple_window", "at step 60 only"))
    v = judge(report, 1024)
    assert v.noise.name == "B_simple"
    assert any(n.startswith("the report's critical batch is only a lower bound (> 53.6), so this judges by the "
                            "latest measurement's B_simple (one point, not the path), with the headline's optimizer "
                            "factor and model range") for n in v.notes), v.notes
    # read as the headline reads a point: the fixed-weight B_simple under plain SGD, its lower end ÷4
    last = report.measurements[-1].b_simple
    assert v.noise.model_range == (0.25, 1.0) and v.noise.lo == pytest.approx(last.lo / 4)


def test_a_baseline_of_another_model_is_said_to_be_one():
    """A baseline whose report measured other parameter groups (another model, or this one changed) cannot judge
    this one: the baseline check says so, naming the difference (a new user's finding: an unrelated report was
    compared without comment; later, a CNN judged against a GRU's baseline passed)."""
    from bsprof.results import Estimate, LayerEstimate

    def with_layers(*layers):
        r = make_report()
        r.layers = [LayerEstimate(0, name, 1.0, 10.0, Estimate(10.0, 8.0, 12.0), kind) for name, kind in layers]
        return r

    mlp = with_layers(("0", "Linear"), ("2", "Linear"))
    v = judge(mlp, 1024, baseline=with_layers(("conv", "Conv2d"), ("0", "Linear"), ("head", "Linear")))
    check = next(c for c in v.checks if c.name == "baseline")
    assert check.status == "cannot_judge" and "cannot compare with the baseline" in check.message
    assert "(3 against 2; only in the baseline: conv (Conv2d), head (Linear); only in this report: 2 (Linear))" in \
        check.message

    def baseline_check(v):
        return next(c for c in v.checks if c.name == "baseline")

    assert baseline_check(judge(mlp, 1024, baseline=mlp)).status == "pass"
    assert baseline_check(judge(mlp, 1024, baseline=make_report())).status == "pass"   # groups unknown: judged


# -- the command: exit codes ---------------------------------------------------------------------------------
def test_exit_0_within_policy(report):
    r = run(report, "--batch-size", 1024)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.stdout and "B = 1,024 is within policy" in r.stdout


def test_exit_1_says_what_by_how_much_and_what_passes(report):
    r = run(report, "--batch-size", 8192)
    assert r.exit_code == 1, r.output
    assert "7.55× the minimal compute" in r.stdout and "at most 5,000 examples passes" in r.stdout
    r = run(report, "-b", 1024, "--lr", 100)
    assert r.exit_code == 1 and "lr = 100 is too high" in r.stdout


def test_exit_2_cannot_judge(tmp_path, report):
    undetermined = make_report([_row(0, 2.3, math.nan, math.nan, math.nan, status="undetermined")])
    r = run(undetermined.to_json(tmp_path / "u.json"), "-b", 64)
    assert r.exit_code == 2 and "undetermined" in r.stdout
    bound = make_report([_row(0, 2.3, math.nan, 500.0, math.inf, status="lower_bound")])
    path = bound.to_json(tmp_path / "lb.json")
    assert run(path, "-b", 4096).exit_code == 2
    assert run(path, "-b", 32).exit_code == 2   # 500 ÷ 4 (the model range's low end) / 32 < 4: cannot judge
    assert run(path, "-b", 16).exit_code == 1   # provably too small, even at 125 (a trial's finding: FAIL at 64
    #                                             against a raw 502 [502, 502], whose low end the sweeps put at 126)
    assert run(report, "-b", 1024, "--at-loss", 0.1).exit_code == 2   # no extrapolation
    assert run(report, "-b", 0).exit_code == 2
    assert run(report, "-b", 1024, "--factor", 0.5).exit_code == 2
    assert run(report, "-b", 1024, "--budget", "60s").exit_code == 2  # --budget needs a SPEC.py
    assert run(report).exit_code == 2                                 # no batch size at all


@pytest.mark.parametrize("content, message", [
    (None, "report not found"),
    ("{not json", "not valid JSON"),
    ('{"schema_version": 99, "measurements": [], "summary": {}, "config": {}}', "schema_version 99"),
    ('{"measurements": []}', "not a bsprof report"),
    ('{"schema_version": 1, "measurements": [1, 2], "summary": {}, "config": {}}', "does not match"),
    ('{"schema_version": 1, "measurements": [], "summary": {}, "config": [1]}', "does not match"),
])
def test_unreadable_reports_exit_2_without_traceback(tmp_path, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    r = run(path, "-b", 64, "--junit", tmp_path / "j.xml")
    assert r.exit_code == 2 and message in r.stderr, r.output
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite.get("errors") == "1" and suite.find("testcase").get("name") == "report"


# -- outputs -------------------------------------------------------------------------------------------------
def test_junit_counts(tmp_path, report):
    old = make_report([_row(0, 2.3, 30.0, 24.0, 37.0)]).to_json(tmp_path / "old.json")   # far below 1000 [200, 1250]
    junit = tmp_path / "out" / "junit.xml"
    r = run(report, "-b", 8192, "--lr", 2.0, "--baseline", old, "--junit", junit)
    assert r.exit_code == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"batch_size", "lr", "baseline"}
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "2", "0")
    assert cases["batch_size"].find("failure") is not None and cases["baseline"].find("failure") is not None
    assert cases["lr"].find("failure") is None


def test_github_annotations_and_job_summary(tmp_path, report):
    summary = tmp_path / "summary.md"
    r = run(report, "-b", 8192, "--github", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert r.exit_code == 1
    errors = [line for line in r.stdout.splitlines() if line.startswith("::error ")]
    assert len(errors) == 1 and errors[0].startswith("::error title=bsprof check%3A batch size::B = 8,192")
    assert "\n" not in errors[0] and "7.55× the minimal compute" in errors[0]
    text = summary.read_text()
    assert text.startswith("## bsprof check: ❌ fail") and "| batch size | ❌ fail |" in text
    r = run(report, "-b", 4096, "--github")
    assert r.exit_code == 0
    assert any(line.startswith("::warning ") for line in r.stdout.splitlines())
    assert any(line.startswith("::notice ") for line in r.stdout.splitlines())


def test_json_output_is_the_only_stdout(tmp_path, report):
    r = run(report, "-b", 8192, "--lr", 0.5, "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 1 and data["status"] == "fail" and data["exit_code"] == 1
    assert [c["name"] for c in data["checks"]] == ["batch_size", "lr"]
    assert data["checks"][0]["passing"]["max"] == pytest.approx(5000)
    assert data["noise_scale"]["value"] == pytest.approx(1000.0) and data["noise_scale"]["name"] == "B_crit"
    r = run(tmp_path / "missing.json", "-b", 64, "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["status"] == "cannot_judge"


def test_json_lists_the_warnings_a_pass_carries(report):
    """A pass with a warning ("status": "pass", the warning only in that check's notes) looked like a clean pass to a
    CI script reading the JSON (a trial's finding): ``warnings`` lists every check's notes, as GitHub annotates them."""
    for b in (1000, 8192):
        data = json.loads(run(report, "-b", b, "--json").stdout)
        want = [{"check": c["name"], "message": n} for c in data["checks"] for n in c["notes"]]
        assert data["warnings"] == want
    data = json.loads(run(report, "-b", 4000, "--json").stdout)   # too large at the estimate, not across it
    assert data["status"] == "pass" and data["warnings"][0]["check"] == "batch_size"
    assert "too large at the estimate" in data["warnings"][0]["message"]


# -- training configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, text", [
    ("train.yaml", "trainer:\n  batch_size: 8192\noptim:\n  lr: 3e-4\n"),
    ("train.json", '{"trainer": {"batch_size": 8192}, "optim": {"lr": 0.0003}}'),
    ("train.toml", "[trainer]\nbatch_size = 8192\n[optim]\nlr = 0.0003\n"),
])
def test_config_file_nested_keys(tmp_path, report, name, text):
    cfg = tmp_path / name
    cfg.write_text(text)
    r = run(report, "--training-config", cfg, "--batch-key", "trainer.batch_size", "--lr-key", "optim.lr", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 1, r.output                                     # 8192 is too large
    assert data["checks"][0]["measured"]["batch_size"] == 8192
    assert data["checks"][1]["measured"]["lr"] == pytest.approx(3e-4)     # YAML's "3e-4" string accepted
    assert any("read trainer.batch_size = 8192" in n for n in data["notes"])
    r = run(report, "--training-config", cfg, "--batch-key", "trainer.batch_size", "--lr-key", "optim.lr", "-b", 1024,
            "--lr", 1.0)
    assert r.exit_code == 0 and "--batch-size 1024 overrides trainer.batch_size" in r.stdout   # flags win


def test_config_default_keys_and_errors(tmp_path, report):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("training:\n  batch_size: 1024\n  lr: 0.5\n")
    assert run(report, "--training-config", cfg).exit_code == 0
    r = run(report, "--training-config", cfg, "--batch-key", "trainer.batch_size")
    assert r.exit_code == 2 and "key 'trainer.batch_size' not found" in r.stderr and "training" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    r = run(report, "--training-config", bad, "--batch-key", "a")
    assert r.exit_code == 2 and "cannot read" in r.stderr
    r = run(report, "--training-config", tmp_path / "nope.toml", "--batch-key", "a")
    assert r.exit_code == 2 and "not found" in r.stderr
    cfg.write_text("batch_size: big\n")
    assert run(report, "--training-config", cfg).exit_code == 2
    # no key tried is there: the file, the keys tried and the keys found are named (it said only "no batch size")
    cfg.write_text("trainer:\n  global_batch_size: 64\nseed: 1\n")
    r = run(report, "--training-config", cfg)
    err = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "none of the keys tried" in err and "found: trainer, seed" in err, err
    # a YAML syntax error is one line, as every error is (PyYAML's context spanned eight)
    bad.write_text("trainer: {batch_size: 64\n")
    r = run(report, "--training-config", bad)
    assert r.exit_code == 2 and len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) == 1
    assert not any(ln.strip().startswith("^") for ln in r.stderr.splitlines())


def test_config_nested_learning_rate_is_read_and_a_missing_lr_is_said(tmp_path, report):
    """training: {batch_size, learning_rate}: the batch was read, the lr not (no default key had learning_rate
    under a section) and nothing said the lr went unchecked (a trial's finding). Now it is read; a file without
    any lr key gets a note that the lr is not checked, naming the flag."""
    cfg = tmp_path / "train.yaml"
    cfg.write_text("training:\n  batch_size: 1024\n  learning_rate: 0.05\n")
    data = json.loads(run(report, "--training-config", cfg, "--json").stdout)
    assert any("read training.learning_rate = 0.05" in n for n in data["notes"])
    assert any(c["measured"].get("lr") == pytest.approx(0.05) for c in data["checks"])
    cfg.write_text("training:\n  batch_size: 1024\n")
    data = json.loads(run(report, "--training-config", cfg, "--json").stdout)
    assert any("no learning rate in" in n and "the lr is not checked" in n and "--lr-key" in n for n in data["notes"])
    data = json.loads(run(report, "--training-config", cfg, "--lr", 0.05, "--json").stdout)
    assert not any("no learning rate in" in n for n in data["notes"])


def test_no_lr_verdict_from_a_run_that_diverged():
    """A report whose probe diverged at lr 10: check scaled that lr and said "lr = 0.1 is too low … use lr ≈ 12.5",
    above the lr that blew up (a trial's finding). The lr is then not judged, and the message says why."""
    from bsprof.gate.policy import judge

    report = make_report()
    assert [c.status for c in judge(report, 64, lr=0.1).checks if c.name == "lr"] != [CANNOT_JUDGE]
    report.incomplete = {"reason": "the training diverged at step 13: the loss of 5 of the 32 examples was inf",
                         "step": 13}
    [lr] = [c for c in judge(report, 64, lr=0.1).checks if c.name == "lr"]
    assert lr.status == CANNOT_JUDGE and "the measured run diverged (the training diverged at step 13)" in lr.message


def test_hugging_face_training_arguments_count_the_accumulation(tmp_path, report):
    """TrainingArguments' per_device_train_batch_size is one device's micro-batch: the optimizer step's batch is ×
    gradient_accumulation_steps (a trial's check judged B = 16 where the step took 64), and × devices, which the note
    says to pass."""
    cfg = tmp_path / "hf.json"
    cfg.write_text('{"per_device_train_batch_size": 16, "gradient_accumulation_steps": 4, "learning_rate": 0.05}')
    r = run(report, "--training-config", cfg, "--json")
    out = json.loads(r.stdout)
    assert out["checks"][0]["measured"]["batch_size"] == 64, out
    assert "16 × gradient_accumulation_steps 4 = 64 examples per optimizer step on one device" in r.stdout


def test_toml_without_tomllib_or_tomli_says_so(tmp_path, report, monkeypatch):
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    cfg = tmp_path / "train.toml"
    cfg.write_text("batch_size = 1024\n")
    r = run(report, "--training-config", cfg)
    assert r.exit_code == 2 and "tomli" in r.stderr


# -- measuring a spec within a budget ------------------------------------------------------------------------
TINY_SPEC = '''
import torch
from torch import nn

def model():
    m = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.5)
    return m

def dataset():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 4, generator=g)
    y = x @ torch.full((4,), 0.3) + 0.5 * torch.randn(2000, generator=g)
    return torch.utils.data.TensorDataset(x, y)

def loss(model, batch):
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y) ** 2
'''


def test_spec_with_budget_and_a_measured_report(tmp_path):
    spec = tmp_path / "tiny.py"
    spec.write_text(TINY_SPEC)
    saved = tmp_path / "measured.json"
    r = run(spec, "-b", 16, "--budget", "5s", "--json", "--save-report", saved)
    assert r.exit_code in (0, 1), r.output
    data = json.loads(r.stdout)
    assert data["measured_now"]["device"] == "cpu" and data["measured_now"]["seconds"] <= 30
    assert any("known to" in n or "undetermined" in n or "lower bound" in n for n in data["notes"])
    # the report written by bsprof.loop.measure feeds the gate: 0, 1 and 2 on real reports
    b = json.loads(saved.read_text())["summary"]["b_simple"]["value"]
    # the budget is for precision: not measure's rule of "as long as the training before" (0 s at step 0; a new
    # user's --budget 30s stopped at ±315% after 2.9 s)
    assert json.loads(saved.read_text())["config"]["measure_budget"] == 0
    assert run(saved, "-b", max(1, round(b))).exit_code == 0
    large = run(saved, "-b", round(b * 100))           # at the initial weights: too large cannot be shown
    assert large.exit_code == 2 and "initial weights" in large.stdout and "--steps N" in large.stdout
    assert run(saved, "-b", round(b), "--at-loss", 1e6).exit_code == 2
    trained = tmp_path / "trained.json"
    assert run(spec, "-b", 16, "--budget", "5s", "--steps", 20, "--save-report", trained).exit_code in (0, 1)
    b = json.loads(trained.read_text())["summary"]["critical_batch"]["value"]
    assert run(trained, "-b", max(1, round(b))).exit_code == 0
    large = json.loads(run(trained, "-b", round(b * 100), "--json").stdout)   # a short probe: its path only
    growing = large["noise_scale"]["growth"] >= 1.5
    warned = any("--at-loss L" in n for n in large["checks"][0]["notes"])
    assert large["exit_code"] == (0 if growing else 1) and warned == growing, large
    assert run(trained, "-b", round(b * 100), "--at-loss", large["noise_scale"]["path"][1]).exit_code == 1
    assert run(tmp_path / "missing.py", "-b", 16, "--budget", "2s").exit_code == 2


def test_one_format_option_for_every_output(tmp_path):
    report = tmp_path / "r.json"
    make_report().to_json(report)
    junit, md = tmp_path / "out" / "j.xml", tmp_path / "v.md"
    r = run(report, "-b", 8192, "-f", "json", "-f", f"junit:{junit}", "-f", f"markdown:{md}")
    assert r.exit_code == 1 and json.loads(r.stdout)["status"] == "fail"  # stdout holds the JSON only
    assert ET.parse(junit).getroot().find(".//failure") is not None
    assert "batch size" in md.read_text()
    assert run(report, "-b", 64, "-f", "json", "-f", "junit").exit_code == 2  # two formats on stdout
    assert "unknown format" in run(report, "-b", 64, "-f", "yaml").stderr


def test_config_holds_check_options_and_training_config_the_values(tmp_path):
    report = tmp_path / "r.json"
    make_report().to_json(report)
    strict = tmp_path / "check.yaml"
    strict.write_text("factor: 1.5\n")
    assert run(report, "-b", 2048).exit_code == 0            # within 4× of the critical batch (1000)
    assert run(report, "-b", 2048, "--config", strict).exit_code == 1
    wrong = tmp_path / "train.yaml"
    wrong.write_text("trainer:\n  batch_size: 64\n")
    r = run(report, "--config", wrong, "-b", 64)
    assert r.exit_code == 2 and "unknown option 'trainer'" in r.stderr


def test_precision_note_names_the_quantity_and_what_its_interval_holds():
    """The headline (B_crit) carries its model range in the interval: the note says so instead of calling it
    B_simple's precision; a plain B_simple reading keeps its name."""
    from bsprof.cli.check import _precision_note
    from bsprof.gate.policy import Reading, Verdict
    from bsprof.results import Status

    info = {"seconds": 2.3, "budget_seconds": 60, "examples": 1000, "steps": 30}
    crit = Reading(26.0, 9.0, 35.0, Status.OK, name="B_crit", model_range=(1 / 2.4, 1.0))
    simple = Reading(26.0, 22.0, 30.0, Status.OK)
    a, b = _precision_note(info, Verdict((), crit)), _precision_note(info, Verdict((), simple))
    assert "B_crit known to −65%/+35%" in a and "swept critical batches" in a and "B_simple" not in a
    assert "B_simple known to −15%/+15%" in b   # each end against the value (the larger alone read as "±65%")
    assert "2.3 s in all (the budget, 60 s, is for measuring, training 30 steps on top" in a  # not "(budget 60 s)"


@pytest.mark.parametrize("batch,code", [(1024, 0), (100_000, 1)])
def test_a_reader_that_leaves_early_does_not_change_the_exit_code(report, batch, code):
    """`bsprof check … | head -1` in a CI gate: the pipe closes before bsprof writes, and the exit code is still
    the verdict's (rich alone exits 1, "violated", on a broken pipe)."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "bsprof", "check", report, "-b", str(batch)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdout.close()  # the reader is gone before anything is written
    assert proc.wait(timeout=120) == code


def test_an_unresolved_interval_cannot_fail_a_batch_as_too_small():
    """B_simple 100 [0, 400]: the lower end reaching 0 means the estimate is unresolved, only bounded above; the gate
    took the 0 for the value (judging [100, 400]) and failed B = 10 as too small, a false alarm. Interpolated at a
    loss next to such a row, the lower end is 0 as well; the lr check's grid starts above 0."""
    assert check_batch(10, Reading(100.0, 0.0, 400.0, "ok")).status == PASS
    one = judge(make_report([_row(100, 0.5, 100.0, 0.0, 400.0)]), 10, lr=0.1)   # the headline is that row's [0, 400]
    assert one.checks[0].status == PASS and "[0, 400]" in one.checks[0].message, one.checks[0].message
    rows = [_row(0, 2.0, 100.0, 0.0, 400.0), _row(50, 1.0, 100.0, 0.0, 400.0), _row(100, 0.5, 100.0, 50.0, 200.0)]
    rep = make_report(rows)
    at = noise_at(rep, at_loss=1.5)
    assert at.lo == 0.0 and at.hi > at.value > 0
    assert noise_at(rep, at_loss=0.75).lo == 0.0 and noise_at(rep, at_loss=0.5).lo > 0


def test_the_lr_at_the_initial_weights_is_judged_against_every_larger_noise_scale():
    """Measured at step 0 only, the noise scale will grow: SGD's rule lr(B) = lr_ref·(1 + B_n/B_ref)/(1 + B_n/B)
    rises with B_n for B above the probed batch, so an lr above 4× the rule at the step-0 interval's top (lr 3 at
    B = 4096 here; a new user's finding) is not provably too high there, only one above 4× plain linear scaling
    (0.1 × 4096/32 = 12.8); a report from training judges it as before."""
    trained = make_report([_row(0, 2.3, 100.0, 80.0, 125.0), _row(100, 0.5, 100.0, 80.0, 125.0)])
    at_init = make_report([_row(0, 2.3, 100.0, 80.0, 125.0)])
    assert noise_at(at_init).initial and not noise_at(trained).initial
    assert judge(trained, 4096, lr=3.0).checks[1].status == FAIL
    init = judge(at_init, 4096, lr=3.0).checks[1]
    assert init.status == PASS and any("initial weights" in n for n in init.notes), init.notes
    assert judge(at_init, 4096, lr=100.0).checks[1].status == FAIL   # beyond even plain linear scaling (12.8)


def test_a_run_cut_short_after_its_initial_measurement_says_so():
    """A run interrupted after 2,528 training steps with only its step-0 measurement: check said "train first" and
    schedule "not --steps 0" to a user who had trained; both now say the run was cut short."""
    from bsprof.schedule.plan import more_rows_fix

    rep = make_report(rows=[_row(0, 2.3, 100.0, 80.0, 125.0)])
    rep.incomplete = {"reason": "interrupted", "step": 2528}
    v = judge(rep, 64)
    assert any("it stopped before any measurement after the initial weights" in n for n in v.notes), v.notes
    assert "cut short at step 2528 (interrupted)" in more_rows_fix(rep)


def test_an_empty_clean_range_is_null_in_json():
    """A wide interval: no batch passes across all of it; the JSON gave min_clean 485 > max_clean 454."""
    wide = make_report(rows=[_row(0, 2.3, 100.0, 20.0, 2000.0), _row(50, 1.0, 100.0, 20.0, 2000.0)])
    passing = judge(wide, 100).checks[0].passing
    assert passing["min_clean"] is None and passing["max_clean"] is None and passing["min"] < passing["max"]
    narrow = judge(make_report(), 1000).checks[0].passing
    assert narrow["min_clean"] < narrow["max_clean"]


def test_a_report_without_measurements_says_so(tmp_path):
    """A report.json whose run stopped before its first measurement: report printed an empty table with exit 0;
    report and check now say it holds no measurement, with the reason it stopped, and exit 2."""
    rep = make_report(rows=[])
    rep.incomplete = {"reason": "interrupted (SIGTERM)"}
    path = rep.to_json(tmp_path / "report.json")
    for args in (["report", str(path)], ["check", str(path), "-b", "64"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "holds no measurement (the run stopped early: interrupted (SIGTERM))" in \
            " ".join(r.output.split()), r.output


def test_a_batch_near_or_above_the_dataset_is_said():
    """The report knows the dataset's size: a batch above it would repeat examples, one of half or more makes an
    epoch in a few steps; both are notes, not verdicts (the user may train on more data than was measured)."""
    r = make_report()
    r.config["dataset_size"] = 1500
    notes = " ".join(" ".join(judge(r, 2000).notes).split())
    assert "larger than the dataset the report measured (1,500 examples)" in notes
    assert "of the dataset" in " ".join(" ".join(judge(r, 1000).notes).split())
    assert "dataset the report measured" not in " ".join(judge(r, 256).notes)
    assert "dataset the report measured" not in " ".join(judge(make_report(), 2000).notes)  # size not recorded


def test_a_whole_batch_size_is_written_in_full():
    """A new user's finding: `check` wrote B = 1e+06 where everything else writes 1,000,000."""
    verdict = judge(make_report(), 1_000_000)
    assert "B = 1,000,000 is too large" in verdict.checks[0].message and "1e+06" not in verdict.checks[0].message
