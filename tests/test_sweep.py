"""bsprof sweep: the pure fits against known curves, and the engine end to end through the CLI on tiny specs."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from torch import nn
from typer.testing import CliRunner

import bsprof.sweep as sweep
from bsprof.cli import app
from bsprof.errors import ConfigError
from bsprof.output.report import Report
from bsprof.results import Status
from bsprof.sweep import api as sweep_api
from bsprof.sweep import branches, summary
from bsprof.sweep import render as sweep_render
from bsprof.sweep.fit import bootstrap_fit, fit_critical_batch, local_critical, lr_factor

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "assets" / "tiny_linear.py"
runner = CliRunner()
FAST = ["--device", "cpu", "--eval-examples", "256", "--lr", "0.05"]


def cli(*args):
    result = runner.invoke(app, ["sweep", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


# -- pure fits ---------------------------------------------------------------------------------------------
def test_fit_recovers_b_crit_and_bootstrap_covers_truth():
    rng = np.random.default_rng(0)
    b = np.array([4, 8, 16, 32, 64, 128, 256, 512])
    s = 100 * (1 + 60 / b) * np.exp(rng.normal(0, 0.05, len(b)))
    f = bootstrap_fit(b, [[x] for x in s], confidence=0.9, n_boot=400, seed=1)
    assert f.b_crit.value == pytest.approx(60, rel=0.2) and f.s_min.value == pytest.approx(100, rel=0.1)
    assert f.b_crit.lo <= 60 <= f.b_crit.hi and f.s_min.lo <= 100 <= f.s_min.hi
    assert f.e_min.value == pytest.approx(f.s_min.value * f.b_crit.value)
    assert f.resampled == "points" and f.n_boot > 300


def test_bootstrap_over_seeds():
    rng = np.random.default_rng(3)
    b = [8, 32, 128, 512]
    per_seed = [list(50 * (1 + 100 / x) * np.exp(rng.normal(0, 0.05, 5))) for x in b]
    f = bootstrap_fit(b, per_seed, n_boot=200)
    assert f.resampled == "seeds" and f.b_crit.lo <= 100 <= f.b_crit.hi


def test_nqm_exact_b_crit_through_the_moved_fit():
    from bsprof.validation import nqm

    assert nqm.fit_critical_batch is fit_critical_batch  # moved, still importable from validation.nqm
    model = nqm.NQM.default(30)
    batches = [1, 4, 16, 64, 256]
    steps = [model.optimal_steps(0.05 * model.loss0, x)[0] for x in batches]
    exact = nqm.sweep(model, batches=batches)["b_crit"]
    f = bootstrap_fit(batches, [[x] for x in steps], n_boot=50)
    assert f.b_crit.value == pytest.approx(exact, rel=1e-6)


def test_local_bracket():
    est, passed = local_critical([8, 16, 32, 64], [1.0, 1.005, 1.02, 1.5], tolerance=0.01)
    assert (est.value, est.lo, est.hi, passed) == (16, 16, 32, [True, True, False, False])
    est, _ = local_critical([8, 16], [1.0, 1.0], tolerance=0.01)
    assert est.status is Status.LOWER_BOUND and est.lo == 16 and est.hi == math.inf
    est, passed = local_critical([8, 16, 32], [1.0, 1.2, 1.0], tolerance=0.01)  # contiguous from the smallest
    assert est.value == 8 and passed == [True, False, True]
    est, _ = local_critical([8, 16], [1.0, 1.05], tolerance=0.1, mode="abs")
    assert est.status is Status.LOWER_BOUND
    est, _ = local_critical([8, 16], [math.inf, 1.0], tolerance=0.1)
    assert est.status is Status.UNDETERMINED


def test_a_bracket_resting_on_evaluation_noise_is_said():
    """A new user's local sweep failed batch 32 on 0.2695 against a limit of 0.2693 with ± 0.014 on each loss: the
    note says the bracket rests on noise; a failure by many standard errors gets no note."""
    from bsprof.sweep.config import SweepConfig
    from bsprof.sweep.result import BatchSummary

    cfg = SweepConfig(tolerance=0.01)
    noisy = [BatchSummary(16, 0.1, 1.0, 0.2666, 0.014, 10, 512, True),
             BatchSummary(32, 0.1, 1.0, 0.2695, 0.015, 5, 512, False)]
    note, = sweep_api._within_noise(noisy, cfg)
    assert "batch 32 failed by" in note and "rests on evaluation noise" in note and "--seeds" in note
    clear = [dataclasses.replace(noisy[0], loss_se=0.001), dataclasses.replace(noisy[1], loss=0.30, loss_se=0.001)]
    assert sweep_api._within_noise(clear, cfg) == []
    assert sweep_api._within_noise(noisy[:1], cfg) == []
    # the other end: batch 64 passed by 0.005 with ± 0.03 (a new user's sweep, 0.2381 against 0.2434)
    narrow = [BatchSummary(32, 0.1, 1.0, 0.241, 0.02, 10, 512, True),
              BatchSummary(64, 0.1, 1.0, 0.2381, 0.032, 10, 512, True),
              BatchSummary(128, 0.1, 1.0, 0.40, 0.03, 5, 512, False)]
    note, = sweep_api._within_noise(narrow, cfg)
    assert note.startswith("batch 64 passed by 0.00531 under the tolerance's limit 0.2434"), note
    both = sweep_api._within_noise([narrow[0], narrow[1], dataclasses.replace(noisy[1], batch=128, loss=0.245)], cfg)
    assert [n.split(" by")[0] for n in both] == ["batch 64 passed", "batch 128 failed"]
    comp = sweep_api.Comparison("r.json", None, None, None, math.nan, 0, 0.0, 0, None, math.nan)
    far = sweep_api._different_quantities(dataclasses.replace(comp, critical_ratio=0.19), noisy)
    assert len(far) == 1 and "0.19× the report's headline" in far[0] and "--method global" in far[0]
    # near 1 it is no confirmation either: every local ratio gets the note (0.10–2.1× of a known B_crit, measured)
    near, = sweep_api._different_quantities(dataclasses.replace(comp, critical_ratio=1.3), noisy)
    assert "1.3× the report's headline, which does not check it" in near and "0.10–2.1×" in near
    assert sweep_api._different_quantities(comp, noisy) == []   # no ratio, no note


def test_lr_rules():
    assert lr_factor("linear", 64, 16) == 4 and lr_factor("sqrt", 64, 16) == 2 and lr_factor("none", 64, 16) == 1
    assert lr_factor("linear", 1024, 16, b_noise=16) == pytest.approx((1 + 1) / (1 + 16 / 1024))  # saturates


# -- the engine, from Python -------------------------------------------------------------------------------
def test_more_eval_examples_than_the_dataset_holds_is_said():
    """--eval-examples beyond the dataset: everything is evaluated and nothing can be held out — said, not only
    "(also used for training)"."""
    from types import SimpleNamespace

    from bsprof.results import Estimate
    from bsprof.sweep.api import _notes
    from bsprof.sweep.config import sweep_config

    setup = SimpleNamespace(optimizer="SGD", base_lr=0.1, rule="linear", b_noise=None, n_eval=2000, held_out=False,
                            n_data=2000, spec=SimpleNamespace(optimizer=None))
    for asked, said in ((5000, True), (2000, True), (0, False), (1999, False)):
        cfg = sweep_config(method="local", base_batch=4, eval_examples=asked)
        if asked == 1999:   # 1,999 evaluated, one left to train on (not said), or with --no-holdout all 2,000
            setup.n_eval, setup.held_out = 1999, True
        notes = " ".join(_notes(setup, cfg, Estimate(8.0, 8.0, 16.0), [], []))
        assert ("is not below the dataset's 2000 examples" in notes) == said, notes


def test_an_lr_the_specs_own_optimizer_overrides_is_said():
    """`bsprof sweep spec.py --lr 0.05` with a spec whose optimizer() sets lr 0.1: the sweep ran at 0.1 and
    recorded 0.05 in its config, without a word (`bsprof measure` says so)."""
    from types import SimpleNamespace

    from bsprof.results import Estimate
    from bsprof.sweep.api import _notes
    from bsprof.sweep.config import sweep_config

    for own, lr, said in ((object(), 0.05, True), (object(), None, False), (None, 0.05, False)):
        setup = SimpleNamespace(optimizer="SGD", base_lr=0.1 if own else 0.05, rule="linear", b_noise=None,
                                n_eval=100, held_out=True, n_data=2000, spec=SimpleNamespace(optimizer=own))
        cfg = sweep_config(method="local", base_batch=4, **({"lr": lr} if lr else {}))
        notes = " ".join(_notes(setup, cfg, Estimate(8.0, 8.0, 16.0), [], []))
        assert ("--lr 0.05 was not used: the spec's optimizer() sets its own learning rate (0.1)" in notes) == said


def test_library_local_and_partial_results_on_interrupt():
    seen = []

    def progress(kind, info):
        if kind == "branch" and info["i"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.local(TINY, 4, doublings=3, examples=400, eval_examples=256, lr=0.05, device="cpu",
                    progress=progress, on_result=seen.append)
    last = seen[-1]
    assert last.incomplete["reason"] == "interrupted" and len(last.branches) == 2
    assert [b.batch for b in last.batches] == [4, 8]
    d = json.loads(json.dumps(last.to_dict()))
    assert d["kind"] == "bsprof-sweep" and d["incomplete"]["branches"] == 2


def test_a_seed_cut_short_by_an_interrupt_is_left_out_and_said():
    """Seeds run one after another: stopped after seed 2's first batch, the per-batch results and the critical batch
    per seed are over seeds 0 and 1 only (they read "per seed: 4, 4, 4", batch 4 averaged over three seeds and the
    others over two: a trial's finding), and a note says which seed was left out."""
    seen = []

    def progress(kind, info):
        if kind == "branch" and info["i"] == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.local(TINY, 4, doublings=2, examples=200, eval_examples=256, lr=0.05, seeds=3, device="cpu",
                    progress=progress, on_result=seen.append)
    last = seen[-1]
    assert len(last.branches) == 7 and {b.seed for b in last.branches} == {0, 1, 2}
    assert len(last.critical_by_seed) == 2 and [b.batch for b in last.batches] == [4, 8, 16]
    means = {b.batch: np.mean([r.loss for r in last.branches if r.batch == b.batch and r.seed < 2])
             for b in last.batches}
    assert all(b.loss == pytest.approx(means[b.batch]) for b in last.batches)
    assert any("seed 2 ran 1 of 3 batch and lr points before the sweep was stopped" in n for n in last.notes)


def test_library_global_with_objects_and_seeds():
    import torch

    torch.manual_seed(0)
    x = torch.randn(2000, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(2000)
    net = torch.nn.Linear(3, 1, bias=False)
    r = sweep.global_(model=net, dataset=torch.utils.data.TensorDataset(x, y),
                      loss=lambda m, b: 0.5 * (m(b[0]).squeeze(-1) - b[1]) ** 2, target_loss=0.3,
                      batches=[2, 4, 8, 16], lr=0.05, lr_grid=[0.5, 1], seeds=2, eval_examples=256, n_boot=100,
                      device="cpu")
    assert r.method == "global" and r.fit is not None and r.fit.resampled == "seeds"
    assert len(r.branches) == 4 * 2 * 2 and all(b.reached == 2 for b in r.batches)
    steps = [b.steps for b in r.batches]
    assert steps[0] >= steps[-1]                        # larger batches need no more steps
    assert r.fit.e_min.value == pytest.approx(r.fit.s_min.value * r.fit.b_crit.value)
    assert r.compute.train_examples == sum(b.examples for b in r.branches)
    assert torch.equal(net.weight, net.weight)  # the caller's model is untouched (Spec.of trains copies)


def test_an_interrupted_global_sweep_counts_the_runs_that_ran():
    """Stopped after 2 of batch 2's 4 runs (2 lrs × 2 seeds): the table's 'reached' is out of the seeds that ran,
    and the note says the batch's runs were cut short; it read 'reached 0/3' and 'did not reach the target within N
    steps at any lr of the grid' after one run (a new user's finding)."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(500, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(500)

    def progress(kind, info):
        if kind == "branch" and info["i"] == 2:
            raise KeyboardInterrupt

    seen = []
    with pytest.raises(KeyboardInterrupt):
        sweep.global_(model=torch.nn.Linear(3, 1, bias=False), dataset=torch.utils.data.TensorDataset(x, y),
                      loss=lambda m, b: 0.5 * (m(b[0]).squeeze(-1) - b[1]) ** 2, target_loss=1e-6,
                      batches=[2, 4, 8], lr=0.05, lr_grid=[0.5, 1], seeds=2, max_steps=20, eval_examples=128,
                      n_boot=50, device="cpu", progress=progress, on_result=seen.append)
    last = seen[-1]
    assert last.incomplete["reason"] == "interrupted" and len(last.branches) == 2
    (b,) = last.batches
    assert (b.batch, b.reached, b.ran) == (2, 0, 1)  # the best lr's one seed that ran
    notes = " ".join(last.notes)
    assert "batch 2: 2 of its 4 runs (lrs × seeds) finished before the sweep was stopped" in notes
    assert "at any lr of the grid" not in notes


def test_an_interrupt_in_the_final_fit_leaves_a_result_marked_incomplete(monkeypatch):
    """Ctrl-C during the bootstrap after every branch ran: the last result written is marked incomplete, with a
    small bootstrap (it read as complete, with no interval, a new user's finding); an interrupt mid-sweep also uses
    the small bootstrap, so that Ctrl-C takes effect at once."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(2000, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(2000)
    real, fits, seen = summary.global_fit, [], []

    def interrupted(rows, summaries, confidence, n_boot, seed):
        fits.append(n_boot)
        if n_boot == 1000:
            raise KeyboardInterrupt
        return real(rows, summaries, confidence, n_boot, seed)

    monkeypatch.setattr(summary, "global_fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.global_(model=torch.nn.Linear(3, 1, bias=False), dataset=torch.utils.data.TensorDataset(x, y),
                      loss=lambda m, b: 0.5 * (m(b[0]).squeeze(-1) - b[1]) ** 2, target_loss=0.3,
                      batches=[2, 4, 8], lr=0.05, lr_grid=[1], eval_examples=256, n_boot=1000, device="cpu",
                      on_result=seen.append)
    assert fits[-2:] == [1000, sweep_api.INTERRUPTED_N_BOOT]
    assert "bootstrap" in seen[-1].incomplete["reason"] and len(seen[-1].branches) == 3


def test_steps_still_falling_as_one_over_b_give_a_lower_bound(monkeypatch):
    """Steps ∝ 1/B up to the largest batch that reached the target (and that one diverged at every lr): the sweep's
    critical batch is 'above 64', not a fitted 1e6 with no interval, and the note says the batch diverged (a new
    user's finding: '1.280e+06 [–, –]' and 'did not reach the target')."""
    import torch

    from bsprof.sweep.result import Branch

    def fake(setup, seed, batch, multiplier, cap, budget, say, schedule=None):
        if batch == 128:
            return Branch(batch, 0.1, multiplier, seed, 3, 384, math.inf, math.nan, 0.0, True, math.inf)
        steps = 6400 / batch
        return Branch(batch, 0.1, multiplier, seed, int(steps), int(steps) * batch, 0.3, 0.01, 0.0, False, steps)

    monkeypatch.setattr(branches, "run_to_target", fake)
    x = torch.randn(512, 3)
    r = sweep.global_(model=torch.nn.Linear(3, 1), dataset=torch.utils.data.TensorDataset(x, x.sum(1)),
                      loss=lambda m, b: (m(b[0]).squeeze(-1) - b[1]) ** 2, target_loss=0.5,
                      batches=[8, 16, 32, 64, 128], lr=0.05, lr_grid=[1], n_boot=50, device="cpu")
    assert r.critical.status is Status.LOWER_BOUND and r.critical.lo == 64
    notes = " ".join(r.notes)
    assert "the critical batch is above 64" in notes and "batch 128 diverged at every lr of the grid" in notes
    assert "B_crit (McCandlish fit): > 64" in " ".join(" ".join(sweep_render.summary_lines(r)).split())


# -- the CLI -----------------------------------------------------------------------------------------------
def test_cli_local_writes_json_and_csv(tmp_path):
    r = cli(TINY, "--base-batch", 4, "--doublings", 3, "--examples", 400, "--seeds", 2, *FAST, "-o", tmp_path)
    assert r.exit_code == 0, r.output
    assert "critical batch (local)" in r.output and "per seed" in r.output
    assert "branch 8/8: batch 32," in r.output and not r.output.startswith("\n")   # into a pipe: a line per branch
    again = cli(TINY, "--base-batch", 4, "--doublings", 1, "--examples", 100, "--seeds", 2, "--seed", 5, *FAST, "-o",
                tmp_path / "s5")
    assert again.exit_code == 0 and "seed 5:" in again.output and "seed 6:" in again.output, again.output
    assert {b["seed"] for b in json.loads((tmp_path / "s5" / "sweep.json").read_text())["branches"]} == {5, 6}
    d = json.loads((tmp_path / "sweep.json").read_text())
    assert d["method"] == "local" and len(d["branches"]) == 8 and d["incomplete"] is None
    assert {"batch", "lr", "steps", "examples", "loss", "loss_se", "seconds"} <= set(d["branches"][0])
    assert [b["examples"] for b in d["batches"]] == [400, 400, 400, 384] and d["batches"][0]["steps"] == 100
    assert d["branches"][1]["lr"] == pytest.approx(0.1)          # linear rule for SGD
    assert len((tmp_path / "sweep.csv").read_text().splitlines()) == 9
    assert d["compute"]["train_examples"] == 2 * (3 * 400 + 384)


def test_cli_global_with_report(tmp_path):
    Report(measurements=[{"step": 0, "loss": 0.7, "b_simple": 8.6, "b_simple_lo": 8.0, "b_simple_hi": 9.3,
                          "status": "ok", "examples": 640, "seconds": 0.5}]).to_json(tmp_path / "report.json")
    r = cli(TINY, "--method", "global", "--batches", "2,4,8,16", "-t", 0.3, "--lr-grid", "0.5,1,2",
            "--n-boot", 100, "--report", tmp_path / "report.json", *FAST, "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert "B_crit (McCandlish fit)" in r.output and "sweep/B_simple" in r.output and "E_min" in r.output
    d = json.loads((tmp_path / "s" / "sweep.json").read_text())
    c = d["comparison"]
    assert c["measure_examples"] == 640 and c["ratio"] == pytest.approx(d["critical"]["value"] / 8.6)
    head = Report.from_json(tmp_path / "report.json").summary.critical_batch   # one measurement: its value
    assert c["critical_batch"]["value"] == pytest.approx(head.value)
    assert c["critical_ratio"] == pytest.approx(d["critical"]["value"] / head.value)
    assert "sweep / critical batch" in r.output
    inside = head.lo <= d["critical"]["value"] <= head.hi   # a verdict beside the ratio (a new user asked for one)
    assert f"({'inside' if inside else 'outside'} the headline's interval)" in " ".join(r.output.split())
    # the report's path (loss 0.7) does not reach the target 0.3: the headline beside the sweep says which it is (it
    # printed a number with no loss, which `bsprof report -t 0.3` refuses: a user's out-of-sample check)
    assert "the sweep's target loss 0.3 is outside the path" in c["critical_batch_to"]
    assert "the sweep's target loss 0.3 is outside" in " ".join(r.output.split())
    assert d["fit"]["b_crit"]["lo"] <= d["fit"]["b_crit"]["value"] <= d["fit"]["b_crit"]["hi"]


def test_comparison_cost_counts_every_second_the_measurements_took(tmp_path):
    """B_pre and B_noise draw after B_simple's: the estimate's cost is the report's measuring time (plus choosing
    the probe), not the B_simple rows' seconds alone (a new user saw 6.9 s printed for 62.9 s)."""
    from bsprof.sweep.api import comparison

    report = Report(measurements=[{"step": 0, "loss": 0.7, "b_simple": 8.6, "b_simple_lo": 8.0, "b_simple_hi": 9.3,
                                   "status": "ok", "examples": 640, "seconds": 0.5}],
                    timing={"measuring_s": 7.5, "choosing_s": 0.25, "training_s": 3.0})
    c = comparison(report, Report(measurements=[]).summary.b_simple)
    assert c.measure_seconds == pytest.approx(7.75) and c.measure_examples == 640
    report.timing = {}
    assert comparison(report, Report(measurements=[]).summary.b_simple).measure_seconds == pytest.approx(0.5)


def test_comparison_with_a_tokens_report_is_in_examples():
    """The sweep's batches are examples: a --unit tokens report's figures are divided by its tokens per example
    (a new user saw 587 tokens labelled examples and sweep / critical batch 10× too small)."""
    from types import SimpleNamespace

    from bsprof.results import Estimate
    from bsprof.sweep.api import _report_noise, comparison
    from bsprof.sweep.render import summary_lines

    rows = [{"step": 0, "loss": 0.7, "b_simple": 860.0, "b_simple_lo": 800.0, "b_simple_hi": 930.0,
             "status": "ok", "examples": 640, "seconds": 0.5}]
    tokens = Report(measurements=rows, unit="tokens", config={"tokens_per_example": 10})
    examples = Report(measurements=rows)
    crit = Estimate(43.0, 43.0, 86.0)
    c, ref = comparison(tokens, crit), comparison(examples, crit)
    assert c.b_simple.value == pytest.approx(86.0) and c.ratio == pytest.approx(0.5)
    assert c.critical_batch.value == pytest.approx(ref.critical_batch.value / 10)
    assert c.critical_ratio == pytest.approx(10 * ref.critical_ratio) and c.tokens_per_example == 10
    assert _report_noise(tokens) == pytest.approx(_report_noise(examples) / 10)   # the linear rule saturates there
    view = SimpleNamespace(unit="examples", method="local", critical=crit, critical_by_seed=(), notes=(),
                           incomplete=None, compute=SimpleNamespace(train_examples=0, eval_examples=0, seconds=0.0),
                           comparison=c)
    text = "\n".join(summary_lines(view))
    assert "examples (the report's tokens ÷ 10 tokens per example)" in text and "B_simple 86 [80, 93]" in text
    with pytest.raises(ConfigError, match="tokens_per_example"):
        comparison(Report(measurements=rows, unit="tokens"), crit)


def test_a_sweep_that_found_only_a_lower_bound_gives_lower_bound_ratios():
    """Every batch passed: the sweep's critical batch is ≥ its largest, and so are the ratios to the estimate —
    "≥ 1.01" and ``ratio_status`` lower_bound, not "= 1.01" (which reads as agreement within 1%)."""
    from types import SimpleNamespace

    from bsprof.results import Estimate, Status
    from bsprof.sweep.api import comparison, comparison_ratio
    from bsprof.sweep.render import summary_lines

    rows = [{"step": 0, "loss": 0.7, "b_simple": 860.0, "b_simple_lo": 800.0, "b_simple_hi": 930.0,
             "status": "ok", "examples": 640, "seconds": 0.5}]
    c = comparison(Report(measurements=rows), Estimate(43.0, 43.0, 86.0))
    bound = comparison_ratio(Estimate(math.nan, 128.0, math.inf, Status.LOWER_BOUND), c)
    value = comparison_ratio(Estimate(128.0, 128.0, 256.0), c)
    assert bound.ratio_status == "lower_bound" and value.ratio_status == "ok"
    assert bound.ratio == pytest.approx(value.ratio) == pytest.approx(128 / 860)
    for view_incomplete, said in ((None, "every batch passed"), ({"reason": "interrupted", "branches": 1},
                                                                 "every batch run so far passed")):
        view = SimpleNamespace(unit="examples", method="local", critical=Estimate(math.nan, 128.0, math.inf,
                                                                                  Status.LOWER_BOUND),
                               critical_by_seed=(), notes=(), incomplete=view_incomplete, comparison=bound,
                               compute=SimpleNamespace(train_examples=0, eval_examples=0, seconds=0.0))
        text = "\n".join(summary_lines(view))
        assert f"≥ 128 examples ({said})" in text and "sweep/B_simple ≥ 0.149" in text, text
        label = "local sweep (a different quantity: see the note) / critical batch"
        assert f"{label} ≥ " in text and "= " not in text.split(label)[1][:3]


def _schedule_file(path, stages, unit="examples", **config):
    from bsprof.schedule.stages import Schedule, Stage

    sched = Schedule([Stage(s, 1.0, b, lr, b, 1, 1) for s, b, lr in stages], target_loss=0.3, unit=unit,
                     config=config)
    path.write_text(json.dumps(sched.to_dict()))
    return path


def test_cli_global_trains_a_schedule_as_written(tmp_path):
    """--schedule: the schedule's batch and lr at each step, to the same target, judged against the constants."""
    f = _schedule_file(tmp_path / "schedule.json", [(0, 2, 0.025), (10, 8, 0.1)])
    r = cli(TINY, "--method", "global", "--batches", "2,4,8,16", "--lr-grid", 1, "-t", 0.3, "--n-boot", 50,
            "--seeds", 2, "--schedule", f, *FAST, "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "s" / "sweep.json").read_text())
    v = d["schedule"]
    assert v["seeds"] == 2 and len(v["runs"]) == 2 and len(d["branches"]) == 8   # constants unchanged
    run = v["runs"][0]
    assert run["batch"] == 0 and run["steps_to_target"] == run["steps"]
    steps = int(run["steps"])                       # 2 examples a step for 10 steps, then 8
    assert run["examples"] == 2 * min(steps, 10) + 8 * max(steps - 10, 0)
    assert run["lr"] == pytest.approx(0.1 if steps > 10 else 0.025)
    assert "the schedule as written" in r.output and isinstance(v["beats_constants"], bool)
    assert d["compute"]["train_examples"] == sum(b["examples"] for b in d["branches"]) + sum(
        x["examples"] for x in v["runs"])


def test_a_schedule_the_training_set_cannot_fill_or_planned_elsewhere(tmp_path):
    """A schedule of batch 16,384 on a training set of 8,976 trained without a word (its constants are
    refused); one planned at another lr, or to another target, is trained with a note."""
    huge = _schedule_file(tmp_path / "huge.json", [(0, 32768, 0.1)])   # tiny_linear holds 20,000
    r = cli(TINY, "--method", "global", "--batches", "2,4,8", "--lr-grid", 1, "-t", 0.3, "--schedule", huge, *FAST,
            "-o", tmp_path / "h")
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "its largest batch (32,768) exceeds the" in said and "--max-batch" in said, said
    other = _schedule_file(tmp_path / "other.json", [(0, 4, 0.05)])
    data = json.loads(other.read_text())
    data.update(lr_train=5.0, target_loss=1.0)
    other.write_text(json.dumps(data))
    r = cli(TINY, "--method", "global", "--batches", "2,4,8", "--lr-grid", 1, "-t", 0.3, "--n-boot", 20,
            "--schedule", other, *FAST, "-o", tmp_path / "o")
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "planned from a training lr of 5" in said and "planned to loss 1 and" in said, said


def test_cli_global_trains_a_tokens_schedule_in_examples(tmp_path):
    """A schedule planned from a tokens report (batches in tokens, its seq_length recorded) trains its batches as
    examples of the spec: 20 and 80 tokens of sequences of 10 are 2 and 8 examples (it trained 20 and 80 examples a
    step, a new user's finding)."""
    f = _schedule_file(tmp_path / "schedule.json", [(0, 20, 0.025), (10, 80, 0.1)], unit="tokens", seq_length=10)
    r = cli(TINY, "--method", "global", "--batches", "2,4,8", "--lr-grid", 1, "-t", 0.3, "--n-boot", 20,
            "--schedule", f, *FAST, "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "s" / "sweep.json").read_text())
    run = d["schedule"]["runs"][0]
    steps = int(run["steps"])
    assert run["examples"] == 2 * min(steps, 10) + 8 * max(steps - 10, 0)
    assert any("is in tokens: its batches were divided by 10 tokens per sequence (its seq_length) into examples, "
               "20 → 2, 80 → 8" in n for n in d["notes"])


def test_a_tokens_schedule_converts_to_examples_or_is_refused():
    from bsprof.schedule.stages import Schedule, Stage
    from bsprof.sweep.api import in_examples

    def sched(batches, unit="tokens", **config):
        return Schedule([Stage(10 * i, 1.0, b, 0.1, b, 1, 1) for i, b in enumerate(batches)], 0.3, unit=unit,
                        config=config)

    same, note = in_examples(sched([2, 8], "sequences"), "s.json")     # a tracker log in sequences: as written
    assert [s.batch_size for s in same.stages] == [2, 8] and note is None
    conv, note = in_examples(sched([64, 256]), "s.json", spec_tokens=32)  # no seq_length: the spec's
    assert [s.batch_size for s in conv.stages] == [2, 8] and conv.unit == "examples" and "TOKENS_PER_EXAMPLE" in note
    for bad, tokens, message in ((sched([64]), None, "records no sequence length"),
                                 (sched([64], seq_length=16), 32, "TOKENS_PER_EXAMPLE = 32"),
                                 (sched([64, 100], seq_length=16), None, "batch 100 from step 10 is not a whole"),
                                 (sched([64], unit="steps"), None, "counts its batches in 'steps'")):
        with pytest.raises(ConfigError, match=message) as e:
            in_examples(bad, "s.json", tokens)
        assert e.value.hint


def test_schedule_verdict_counts_only_constants_using_no_more_examples():
    from bsprof.sweep.result import BatchSummary, Branch
    from bsprof.sweep.summary import schedule_verdict

    const = [BatchSummary(b, 0.1, 1.0, 0.2, 0.01, s, s * b) for b, s in ((8, 400), (32, 120), (128, 60))]
    run = [Branch(0, 0.1, 1.0, seed, 100, 5000, 0.29, 0.01, 1.0, False, 100.0) for seed in range(3)]
    v = schedule_verdict(const, run, "s.json")
    assert v["rivals"] == [8, 32] and v["beats_constants"] and v["steps"] == 100   # 128 uses 7,680 > 5,000
    v = schedule_verdict(const, [r.__class__(**{**r.to_dict(), "steps_to_target": 130.0}) for r in run], "s.json")
    assert not v["beats_constants"] and v["faster_constants"] == [32] and "no faster than constant batch 32" in \
        v["text"] and "best lr of the grid (0.1)" in v["text"]
    v = schedule_verdict(const, [run[0].__class__(**{**run[0].to_dict(), "steps_to_target": math.inf})] * 3, "s")
    assert not v["beats_constants"] and "0 of 3" in v["text"]


def test_cli_interrupt_keeps_partial_result(tmp_path, monkeypatch):
    real, calls = branches.run_fixed, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(branches, "run_fixed", flaky)
    r = cli(TINY, "--base-batch", 4, "--doublings", 3, "--examples", 400, *FAST, "-o", tmp_path, "-q")
    assert r.exit_code == 130
    d = json.loads((tmp_path / "sweep.json").read_text())
    assert d["incomplete"]["reason"] == "interrupted" and len(d["branches"]) == 2


def test_cli_sigterm_keeps_the_partial_result_and_files_say_in_progress_until_the_end(tmp_path, monkeypatch):
    """SIGTERM (timeout, SLURM, docker stop) stops a sweep as Ctrl-C does, exit 143 and the partial result marked;
    the files written after each branch say "in progress" until the last one, so a killed run is never read as
    finished (a trial's SIGTERM had left a sweep.json with 1 of 18 branches and "incomplete": null)."""
    import signal

    from bsprof.cli import signals

    real, seen = branches.run_fixed, []

    def stopped(*a, **k):
        if (tmp_path / "sweep.json").is_file():
            seen.append(json.loads((tmp_path / "sweep.json").read_text())["incomplete"])
        if len(seen) == 2:
            raise signals.Terminated(signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(branches, "run_fixed", stopped)
    r = cli(TINY, "--base-batch", 4, "--doublings", 3, "--examples", 400, *FAST, "-o", tmp_path, "-q")
    assert r.exit_code == 143 and "terminated (SIGTERM): the partial result was written" in r.output, r.output
    assert [s["reason"] for s in seen] == ["in progress"] * 2
    d = json.loads((tmp_path / "sweep.json").read_text())
    assert d["incomplete"] == {"reason": "terminated by SIGTERM", "branches": 2}
    monkeypatch.setattr(branches, "run_fixed", real)
    r = cli(TINY, "--base-batch", 4, "--doublings", 3, "--examples", 400, *FAST, "-o", tmp_path / "whole", "-q")
    assert r.exit_code == 0 and json.loads((tmp_path / "whole" / "sweep.json").read_text())["incomplete"] is None


def test_cli_interrupt_before_any_branch_says_nothing_was_written(tmp_path, monkeypatch):
    def at_once(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(branches, "prepare", at_once)   # a Ctrl-C while the spec's model and data are built
    r = cli(TINY, "--base-batch", 4, "--doublings", 3, "--examples", 400, *FAST, "-o", tmp_path / "s", "-q")
    assert r.exit_code == 130 and "nothing was written" in r.output, r.output
    assert "partial result was written" not in r.output
    assert not (tmp_path / "s").exists()   # the folder it made for the result is not left behind, empty


def test_cli_interrupt_while_writing_writes_again(tmp_path, monkeypatch):
    """A Ctrl-C inside the write after a branch (sweep.json written, sweep.csv not yet): both files are written
    once more after the interrupt, and the exit is 130 (it was a KeyError traceback)."""
    from bsprof.sweep.result import SweepResult

    real, calls = SweepResult.write, []

    def torn(self, out):
        calls.append(1)
        if len(calls) <= 2:   # the first write, and the sweep's own retry on the interrupt: no file written
            raise KeyboardInterrupt
        return real(self, out)

    monkeypatch.setattr(SweepResult, "write", torn)
    r = cli(TINY, "--base-batch", 4, "--doublings", 3, "--examples", 400, *FAST, "-o", tmp_path, "-q")
    assert r.exit_code == 130 and "partial result was written" in r.output, r.output
    assert (tmp_path / "sweep.csv").is_file() and (tmp_path / "sweep.json").is_file()


def test_cli_budget_stops_with_partial_result(tmp_path):
    r = cli(TINY, "--base-batch", 4, "--doublings", 3, "--examples", 400, "--max-examples", 900, *FAST,
            "-o", tmp_path)
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "sweep.json").read_text())
    assert "max-examples" in d["incomplete"]["reason"] and len(d["branches"]) == 2
    assert "incomplete" in r.output


@pytest.mark.parametrize("args,expected", [
    (["--batches", "16,abc"], "--batches must be a comma-separated list of ints"),
    (["--batches", "32,16"], "strictly increasing"),
    (["--batches", "32"], "at least two batch sizes"),
    (["--batches", "0,4"], "positive integers"),
    (["--lr-grid", "1,-2"], "--lr-grid multipliers must be positive"),
    (["--method", "global"], "needs --target-loss"),
    (["--method", "sideways"], "--method must be one of local, global"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--batches", "4,65536"], "exceeds the"),
    (["--method", "global", "-t", "5"], "not below the initial evaluation loss"),
    (["--report", "nope.json"], "report not found"),
    (["--schedule", "nope.json"], "--schedule needs the global method"),
    (["--method", "global", "-t", "0.3", "--schedule", "nope.json"], "no such file"),
])
def test_cli_bad_input(tmp_path, args, expected):
    r = cli(TINY, *args, *FAST, "-o", tmp_path, "-q")
    assert r.exit_code == 2 and expected in r.output, r.output


def test_cli_an_output_folder_it_cannot_write_is_refused_before_training(tmp_path):
    (tmp_path / "afile").write_text("")
    r = cli(TINY, *FAST, "-o", tmp_path / "afile" / "sw", "-q")
    assert r.exit_code == 2 and "cannot write" in r.output and "--out" in r.output, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)


def test_cli_target_never_reached_names_the_batches(tmp_path):
    r = cli(TINY, "--method", "global", "--batches", "2,4,64", "--lr-grid", 1, "-t", 0.3, "--max-steps", 4, *FAST,
            "-o", tmp_path, "-q")
    assert r.exit_code == 2, r.output
    assert "reached by" in r.output and "needs at least 3" in r.output and "--max-steps" in r.output
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["fit"] is None
    # every branch records the lowest evaluation loss it reached (the fix and the notes name it)
    for b in data["branches"]:
        assert b["lowest_loss"] is not None and b["lowest_loss"] <= b["loss"] + 1e-12
    assert "the lowest evaluation loss a run reached" in " ".join(r.output.split())


def test_a_loss_that_fell_and_rose_again_asks_for_a_higher_target_not_more_steps():
    """A new user's noisy-label sweep: every branch's evaluation loss fell below the target's neighbourhood and rose
    again (memorising the flipped labels), all ran to --max-steps, and the fix said to raise --max-steps, which
    makes it worse. With most missed runs ending ROSE× above their lowest loss, the fix names a target above it."""
    from types import SimpleNamespace

    from bsprof.sweep.result import Branch

    def row(loss, lowest):
        return Branch(16, 0.1, 1.0, 0, 2000, 32000, loss, 0.01, 1.0, False, math.inf, lowest)

    setup = SimpleNamespace(initial_loss=1.4)
    rose = SimpleNamespace(branches=(row(0.85, 0.62), row(1.2, 0.60), row(0.63, 0.62)))
    fix = sweep_api._unreached_fix(rose, setup, None)
    assert "fell to 0.6 and rose again in 2 of the 3 runs" in fix and "--target-loss above 0.6" in fix
    assert "raise --max-steps" not in fix
    flat = SimpleNamespace(branches=(row(0.63, 0.62), row(0.61, 0.60)))
    fix = sweep_api._unreached_fix(flat, setup, None)
    assert fix.startswith("raise --max-steps") and "the lowest evaluation loss a run reached: 0.6" in fix
    # a plateau (a new user's noisy labels: lowest 0.793–0.802, the final 1–2% above): the runs reached their lowest
    # in their first half and never improved on it: a floor, not too few steps
    stalled = SimpleNamespace(branches=tuple(dataclasses.replace(row(1.02 * low, low), lowest_step=at)
                                             for low, at in ((0.793, 400), (0.802, 900), (0.80, 1500))))
    fix = sweep_api._unreached_fix(stalled, setup, None)
    assert fix.startswith("the evaluation loss levelled off: 2 of the 3 runs") and "above about 0.802" in fix
    assert "raise --max-steps" not in fix


def test_spec_errors_are_one_line(tmp_path):
    r = cli(ROOT / "tests" / "assets" / "bad_syntax.py", "-o", tmp_path, "-q")
    assert r.exit_code == 2 and "syntax error" in r.output


def test_config_reports_every_problem_together():
    with pytest.raises(ConfigError) as e:
        sweep.sweep_config(method="x", seeds=0, tolerance=-1, bogus=1)
    text = str(e.value)
    assert all(k in text for k in ("method", "seeds", "tolerance", "bogus"))


# -- docs/sweep.md is a tested artifact --------------------------------------------------------------------
def test_docs_command_runs(tmp_path, monkeypatch):
    doc = (ROOT / "docs" / "sweep.md").read_text()
    commands = [c for c in re.findall(r"```bash\n(.*?)```", doc, flags=re.S) if c.startswith("bsprof sweep")]
    assert commands, "docs/sweep.md shows a bsprof sweep command"
    args = shlex.split(commands[0].replace("\\\n", " "))[1:]
    args = [str(tmp_path) if a == "bsprof-sweep" else a for a in args]
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sweep.json").is_file() and "critical batch" in result.output


def test_a_flat_steps_curve_does_not_determine_b_crit():
    """S(B) that does not fall with B (the first MNIST sweep of scripts/critical_batch_evidence.py) fits a B_crit
    far below the tested batches: undetermined, with a note, never status ok."""
    from types import SimpleNamespace

    from bsprof.sweep import api
    from bsprof.sweep.config import SweepConfig
    from bsprof.sweep.result import Branch

    rows = [Branch(b, 0.1, 1.0, s, 100, 100 * b, 0.2, 0.01, 1.0, False, 100.0 * (1 + 0.02 * s))
            for b in (16, 32, 64, 128) for s in (0, 1)]
    cfg = SweepConfig(method="global", target_loss=0.2, batches=(16, 32, 64, 128))
    setup = SimpleNamespace(spec=SimpleNamespace(info=lambda: {}, optimizer=None), initial_loss=1.0, optimizer="SGD",
                            base_lr=0.1, rule="linear", b_noise=None, n_eval=100, held_out=True, n_data=1000)
    budget = SimpleNamespace(train_examples=0, eval_examples=0, seconds=0.0)
    result = api._global_result(setup, cfg, rows, budget, None, None, 200)
    assert result.critical.status == "undetermined"
    assert any("does not determine B_crit" in n for n in result.notes)
    from bsprof.sweep.render import summary_lines

    said = "\n".join(summary_lines(result))
    assert "B_crit: undetermined" in said and "B_crit (McCandlish fit)" not in said   # no number to take home


def test_steps_that_rise_with_the_batch_are_flagged_and_leave_no_ratio(tmp_path):
    """A new user's global sweep: 188 steps at batch 16, 47 at 32, 270 at 128 (the grid missed a stable lr at 128).
    A note says the steps rose where a tuned lr only lowers them; a sweep that determines no critical batch gives
    no ratio to the report's estimate (it printed 'sweep / critical batch = 4.43e-05')."""
    from types import SimpleNamespace

    from bsprof.output.report import Report
    from bsprof.results import Estimate, Status
    from bsprof.sweep import api
    from bsprof.sweep.config import SweepConfig
    from bsprof.sweep.render import summary_lines
    from bsprof.sweep.result import Branch

    steps = {16: 188, 32: 47, 64: 60, 128: 270}
    rows = [Branch(b, 0.1, 1.0, s, 100, 100 * b, 0.2, 0.01, 1.0, False, float(steps[b]))
            for b in steps for s in (0, 1)]
    cfg = SweepConfig(method="global", target_loss=0.2, batches=tuple(steps))
    setup = SimpleNamespace(spec=SimpleNamespace(info=lambda: {}, optimizer=None), initial_loss=1.0, optimizer="SGD",
                            base_lr=0.1, rule="linear", b_noise=None, n_eval=100, held_out=True, n_data=1000)
    budget = SimpleNamespace(train_examples=0, eval_examples=0, seconds=0.0)
    result = api._global_result(setup, cfg, rows, budget, None, None, 200)
    assert any("the steps rose with the batch (47 at batch 32 → 270 at 128)" in n for n in result.notes)
    comp = api.comparison(Report(), Estimate.none())
    undetermined = api.comparison_ratio(Estimate(0.016, 0.016, 3.2e5, Status.UNDETERMINED), comp)
    assert undetermined.ratio != undetermined.ratio and undetermined.critical_ratio != undetermined.critical_ratio
    assert "sweep/B_simple" not in "\n".join(summary_lines(dataclasses.replace(result, comparison=undetermined)))


def test_batches_that_reach_the_target_in_one_or_two_steps_say_to_lower_it():
    """S(B) counts whole steps: a batch at the target after 1–2 steps says little about the fit, and a note says
    to lower the target; with every batch taking many steps there is no such note."""
    from types import SimpleNamespace

    from bsprof.sweep import api
    from bsprof.sweep.config import SweepConfig
    from bsprof.sweep.result import Branch

    def result(scale):
        rows = [Branch(b, 0.1, 1.0, s, 1, b, 0.2, 0.01, 1.0, False, max(1.0, round(scale * 20 * (1 + 32 / b))))
                for b in (16, 32, 64, 128) for s in (0, 1)]
        cfg = SweepConfig(method="global", target_loss=0.2, batches=(16, 32, 64, 128))
        setup = SimpleNamespace(spec=SimpleNamespace(info=lambda: {}, optimizer=None), initial_loss=1.0,
                                optimizer="SGD", base_lr=0.1, rule="linear", b_noise=None, n_eval=100, held_out=True,
                                n_data=1000)
        budget = SimpleNamespace(train_examples=0, eval_examples=0, seconds=0.0)
        return api._global_result(setup, cfg, rows, budget, None, None, 50)

    notes = " ".join(result(0.05).notes)   # steps 3, 2, 2, 1
    assert "batch 32, 64, 128 reached the target in 2, 2, 1 step(s)" in notes and "lower --target-loss" in notes
    assert "lower --target-loss" not in " ".join(result(1.0).notes)


def test_a_probe_at_another_lr_than_the_sweeps_is_said():
    """The report's probe trained at a quarter of the lr the sweep tuned at its batch: the comparison mixes two
    temperatures (lr/B), and a note says so; within 2× it says nothing (a new user's finding: ratio 0.31 there,
    0.73 re-probed at the tuned lr)."""
    from types import SimpleNamespace

    from bsprof.results import Estimate
    from bsprof.sweep.api import lr_note
    from bsprof.sweep.result import Comparison

    rows = [SimpleNamespace(batch=16, lr=0.1, steps=200.0), SimpleNamespace(batch=32, lr=0.2, steps=120.0)]
    comp = Comparison("r.json", Estimate(50.0, 40.0, 60.0), None, None, 1.0, 0, 0.0, 0, probe_lr=0.05,
                      probe_batch=32)
    note = lr_note(comp, rows)
    assert note and "0.25× the lr this sweep tuned at its batch 32 (0.2)" in note
    assert lr_note(dataclasses.replace(comp, probe_lr=0.15), rows) is None
    assert lr_note(dataclasses.replace(comp, probe_batch=64), rows) is None   # no tuned lr at that batch


def test_constants_anchored_elsewhere_than_the_schedule_are_said():
    """A new user's `--batches 16,32,64,128 --schedule` of a report probed at lr 0.1, batch 32: the constants were
    scaled from lr 0.1 at 16, so at 32 they ran 1.7× hotter than the schedule and the verdict went the other way.
    The note names both anchors; starting --batches at the schedule's batch gives none."""
    from types import SimpleNamespace

    from bsprof.sweep.config import SweepConfig

    setup = SimpleNamespace(n_data=1797, n_eval=0, held_out=False, base_lr=0.1, rule="linear", b_noise=60.0)
    sched = SimpleNamespace(stages=[SimpleNamespace(batch_size=64)], lr_train=0.1, batch_train=32.0, target_loss=0.25)
    cfg = SweepConfig(batches=(16, 32, 64, 128), target_loss=0.25)
    note, = sweep_api._schedule_fits(sched, cfg, setup)
    assert "scaled from lr 0.1 at batch 16" in note and "from lr 0.1 at batch 32" in note, note
    assert "start --batches at 32" in note
    assert sweep_api._schedule_fits(sched, SweepConfig(batches=(32, 64, 128), target_loss=0.25), setup) == []


def test_a_batch_that_did_not_train_is_said():
    """A new user's local sweep: batch 256 ended at 2.295 from an initial 2.31 (outputs collapsed to uniform) and
    was counted as an ordinary failure; batch 512 reached 1.13. A failing batch no lower than the start is named."""
    from bsprof.sweep.result import BatchSummary

    rows = [BatchSummary(32, 0.05, 1.0, 0.24, 0.01, 100, 3200, True),
            BatchSummary(256, 0.4, 1.0, 2.295, 0.01, 12, 3200, False),
            BatchSummary(512, 0.8, 1.0, 1.13, 0.01, 6, 3200, False)]
    note, = sweep_api._no_progress(rows, 2.31)
    assert note.startswith("batch 256 (loss 2.295 at lr 0.4) did not train") and "--lr-grid" in note, note
    assert sweep_api._no_progress(rows[:1] + rows[2:], 2.31) == []
    assert sweep_api._no_progress(rows, float("nan")) == []


def test_cli_a_finished_sweep_without_a_critical_batch_exits_2(tmp_path, monkeypatch):
    """The runs are written and shown, then an error line and exit 2: a script must not take it for an answer."""
    from types import SimpleNamespace

    import bsprof.sweep as sweep_pkg
    from bsprof.sweep import api
    from bsprof.sweep.result import Branch

    rows = [Branch(b, 0.1, 1.0, s, 100, 100 * b, 0.2, 0.01, 1.0, False, 100.0 * (1 + 0.02 * s))
            for b in (16, 32, 64, 128) for s in (0, 1)]
    cfg = sweep.SweepConfig(method="global", target_loss=0.2, batches=(16, 32, 64, 128))
    setup = SimpleNamespace(spec=SimpleNamespace(info=lambda: {}, optimizer=None), initial_loss=1.0, optimizer="SGD",
                            base_lr=0.1, rule="linear", b_noise=None, n_eval=100, held_out=True, n_data=1000)
    flat = api._global_result(setup, cfg, rows, SimpleNamespace(train_examples=0, eval_examples=0, seconds=0.0),
                              None, None, 200)

    def fake_run(spec, cfg, report=None, progress=None, on_result=None):
        on_result(flat)
        return flat

    monkeypatch.setattr(sweep_pkg, "run", fake_run)
    r = cli(TINY, "--method", "global", "--lr-grid", 1, "-t", 0.2, *FAST, "-o", tmp_path)
    assert r.exit_code == 2, r.output
    assert "B_crit: undetermined" in r.output and "did not determine the critical batch" in r.output
    assert (tmp_path / "sweep.json").is_file() and "Traceback" not in r.output


def test_best_lrs_at_one_end_of_a_two_point_grid_are_flagged():
    """lr_grid [1, 2] with every batch best at ×2: the optimum likely lies above the grid, so the sweep says so (a
    new user's sweeps reported a critical batch without a word); mixed ends on 2 points, or interior bests on 3+,
    are not flagged."""
    from bsprof.sweep.result import BatchSummary
    from bsprof.sweep.summary import grid_edges

    def s(b, m):
        return BatchSummary(batch=b, lr=0.1 * m, lr_multiplier=m, steps=10.0, examples=10.0 * b, loss=0.5,
                            loss_se=0.01, passed=True)

    assert grid_edges([s(16, 2.0), s(32, 2.0), s(64, 2.0)], [1.0, 2.0]) == [16, 32, 64]
    assert grid_edges([s(16, 1.0), s(32, 2.0)], [1.0, 2.0]) == []
    assert grid_edges([s(16, 2.0), s(32, 2.0), s(64, 4.0)], [1.0, 2.0, 4.0]) == [64]


# -- a new user's trial of `bsprof sweep` --------------------------------------------------------------------
def test_a_report_or_schedule_from_another_spec_is_refused(tmp_path):
    """A report of least_squares.py set the lrs of a digits sweep and was compared with it, without a word: refused
    (both files named) unless --any-spec; the same file edited since the report is a warning."""
    from bsprof.engine.spec import load_spec

    spec = load_spec(TINY)
    other = {"path": str(ROOT / "configs" / "least_squares.py"), "sha256": "f" * 64}
    with pytest.raises(ConfigError) as e:
        sweep_api.same_spec(other, spec, "--report r.json")
    assert "least_squares.py" in e.value.message and "tiny_linear.py" in e.value.message
    assert "--any-spec" in e.value.hint and "bsprof measure" in e.value.hint
    assert "accepted by --any-spec" in sweep_api.same_spec(other, spec, "--report r.json", any_spec=True)
    assert sweep_api.same_spec({"path": "elsewhere/x.py", "sha256": spec.sha256}, spec, "--report r.json") is None
    assert sweep_api.same_spec({"path": "old/tiny_linear.py"}, spec, "--report r.json") is None   # only names
    edited = sweep_api.same_spec({"path": str(TINY), "sha256": "0" * 64}, spec, "--report r.json")
    assert "has changed since" in edited and "measure it again" in edited
    assert sweep_api.same_spec({}, spec, "--report r.json") is None    # a report of Python objects: nothing to check

    Report(measurements=[{"step": 0, "loss": 0.7, "b_simple": 8.6, "b_simple_lo": 8.0, "b_simple_hi": 9.3,
                          "status": "ok", "examples": 640, "seconds": 0.5}],
           spec=other).to_json(tmp_path / "report.json")
    r = cli(TINY, "--report", tmp_path / "report.json", *FAST, "-o", tmp_path / "s", "-q")
    assert r.exit_code == 2 and "made from another spec" in r.output and not (tmp_path / "s").exists(), r.output
    f = _schedule_file(tmp_path / "schedule.json", [(0, 2, 0.025)])
    data = json.loads(f.read_text())
    f.write_text(json.dumps({**data, "spec": other}))
    r = cli(TINY, "--method", "global", "-t", 0.3, "--schedule", f, *FAST, "-o", tmp_path / "s", "-q")
    assert r.exit_code == 2 and "--schedule" in r.output and "bsprof schedule" in r.output, r.output


def test_a_global_sweep_at_one_lr_warns_and_the_default_grid_tunes_it():
    """McCandlish's fit takes the fewest steps over lrs: with one lr per batch a new user's B_crit came out 472
    (56.2 with a grid of three). The global default grid is three lrs; one lr is warned about beside B_crit."""
    from types import SimpleNamespace

    from bsprof.sweep.config import GLOBAL_GRID, SweepConfig
    from bsprof.sweep.render import summary_lines
    from bsprof.sweep.result import Branch

    assert SweepConfig(method="global").lr_grid == GLOBAL_GRID and SweepConfig().lr_grid == (1.0,)
    rows = [Branch(b, 0.1, 1.0, 0, 0, 0, 0.2, 0.01, 1.0, False, 100.0 * (1 + 64 / b)) for b in (16, 32, 64, 128)]
    setup = SimpleNamespace(spec=SimpleNamespace(info=lambda: {}, optimizer=None), initial_loss=1.0, optimizer="SGD",
                            base_lr=0.1, rule="linear", b_noise=None, n_eval=100, held_out=True, n_data=1000)
    budget = SimpleNamespace(train_examples=0, eval_examples=0, seconds=0.0)
    one = sweep_api._global_result(setup, SweepConfig(method="global", target_loss=0.2,
                                                batches=(16, 32, 64, 128), lr_grid=(1.0,)), rows, budget, None,
                                                None, 50)
    warning, = one.warnings
    assert "not tuned per batch" in warning and "usually high" in warning and "--lr-grid 0.5,1,2" in warning
    assert one.to_dict()["warnings"] == list(one.warnings)
    text = "\n".join(summary_lines(one))
    assert "warning:[/] the lr was not tuned" in text and text.index("not tuned") < text.index("sweep cost"), text
    tuned = sweep_api._global_result(setup, SweepConfig(method="global", target_loss=0.2, batches=(16, 32, 64, 128)),
                                     rows, budget, None, None, 50)
    assert tuned.warnings == ()


def test_a_budget_smaller_than_one_branch_is_refused_before_training():
    """--max-examples 100 ran nothing and exited 0 with an empty table: known before starting, refused with what one
    branch needs."""
    with pytest.raises(ConfigError) as e:
        sweep.sweep_config(method="local", base_batch=32, doublings=4, max_examples=100)
    assert "smaller than one branch: batch 32 trains 16,384 examples" in e.value.message
    sweep.sweep_config(method="local", base_batch=32, doublings=4, max_examples=16_384)
    r = cli(TINY, "--base-batch", 4, "--doublings", 1, "--examples", 400, "--max-examples", 100, *FAST, "-q")
    assert r.exit_code == 2 and "--max-examples (100) is smaller than one branch" in r.output, r.output


def test_the_default_evaluation_draw_is_capped_and_the_training_left_said():
    """The default 1,024 held out 57% of digits' 1,797 without a word: a default that would hold out more than half
    is capped at a quarter, with a note; the training examples left and the passes over them are said."""
    import torch

    x = torch.randn(400, 3)
    data = torch.utils.data.TensorDataset(x, x.sum(1))
    common = dict(model=torch.nn.Linear(3, 1), dataset=data, loss=lambda m, b: (m(b[0]).squeeze(1) - b[1]) ** 2,
                  batches=[4, 8], examples=200, lr=0.05, device="cpu")
    r = sweep.local(**common)
    assert r.data["eval"] == 100 and r.data["train"] == 300 and r.data["eval_capped"]
    note = next(n for n in r.notes if n.startswith("evaluation:"))
    assert "capped at a quarter" in note and "300 examples left to train on, 0.67 passes" in note, note
    given = sweep.local(**common, eval_examples=300)   # asked for: kept
    assert given.data["eval"] == 300 and not given.data["eval_capped"]


def test_an_incomplete_sweep_is_not_overwritten_and_report_shows_a_sweep(tmp_path):
    """A budget-stopped sweep's folder was overwritten by the next sweep without a word, and `bsprof report
    sweep.json` said "is not a bsprof report"."""
    args = ["--base-batch", 4, "--doublings", 2, "--examples", 400, *FAST, "-o", tmp_path, "-q"]
    assert cli(TINY, *args, "--max-examples", 500).exit_code == 0
    r = cli(TINY, *args)
    assert r.exit_code == 2 and "holds an incomplete sweep" in r.output and "--overwrite" in r.output, r.output
    shown = runner.invoke(app, ["report", str(tmp_path / "sweep.json")])
    assert shown.exit_code == 0 and "critical batch (local)" in shown.output and "incomplete:" in shown.output
    assert runner.invoke(app, ["report", str(tmp_path)]).exit_code == 0      # its folder, too
    wrong = runner.invoke(app, ["report", str(tmp_path / "sweep.json"), "--target-loss", "0.5", "--layers"])
    assert wrong.exit_code == 2 and "--target-loss and --layers do not apply to a `bsprof sweep` result" in \
        " ".join(wrong.output.split())   # they were ignored without a word (a new user's trial)
    r = cli(TINY, *args, "--overwrite")
    assert r.exit_code == 0 and json.loads((tmp_path / "sweep.json").read_text())["incomplete"] is None
    assert cli(TINY, *args).exit_code == 0     # a finished sweep is replaced, as `bsprof measure` replaces reports
    with pytest.raises(Exception, match="result of `bsprof sweep`"):
        Report.from_json(tmp_path / "sweep.json")


def test_a_half_tried_batch_is_marked_partial():
    """Stopped after 1 of the 2 lrs of batch 8: its row looked like any other."""
    from types import SimpleNamespace

    from bsprof.sweep.config import SweepConfig
    from bsprof.sweep.render import batches_table
    from bsprof.sweep.result import Branch

    rows = [Branch(4, 0.1 * m, m, 0, 10, 40, 1.0 / m, 0.01, 1.0) for m in (1.0, 2.0)]
    rows.append(Branch(8, 0.2, 1.0, 0, 5, 40, 1.0, 0.01, 1.0))
    setup = SimpleNamespace(spec=SimpleNamespace(info=lambda: {}, optimizer=None), initial_loss=2.0, optimizer="SGD",
                            base_lr=0.1, rule="linear", b_noise=None, n_eval=100, held_out=True, n_data=1000)
    budget = SimpleNamespace(train_examples=0, eval_examples=0, seconds=0.0)
    cfg = SweepConfig(batches=(4, 8, 16), lr_grid=(1.0, 2.0))
    r = sweep_api._local_result(setup, cfg, rows, budget, {"reason": "interrupted", "branches": 3}, None)
    assert [b.partial for b in r.batches] == [False, True]
    assert any("batch 8 (1 of 2) ran only some of its lrs" in n for n in r.notes)
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(batches_table(r))
    assert "8 (partial)" in console.export_text()
    done = sweep_api._local_result(setup, cfg, rows[:2], budget, None, None)
    assert not any(b.partial for b in done.batches)


def test_an_interval_past_the_training_set_is_printed_as_a_bound():
    """B_crit 252 [133, 640,000] on 1,797 examples: the upper end past where the fit means anything (the training
    set, or 100× the largest batch) prints as '> N'; S_min's lower end below one step as '< 1'."""
    from types import SimpleNamespace

    from bsprof.results import Estimate
    from bsprof.sweep.fit import CriticalFit
    from bsprof.sweep.render import summary_lines

    assert sweep_api.interval_limit([16, 128], 1348) == 1348 and sweep_api.interval_limit([16, 128], 10**6) == 12800
    f = CriticalFit(Estimate(43.4, 0.0179, 70.7), Estimate(252.0, 133.0, 640_000.0), Estimate(1.1e4, 9e3, 1.5e4),
                    4, 1000, "points", 0.9)
    view = SimpleNamespace(unit="examples", method="global", critical=f.b_crit, fit=f, notes=(), incomplete=None,
                           comparison=None, data={"interval_limit": 1348.0},
                           compute=SimpleNamespace(train_examples=0, eval_examples=0, seconds=0.0))
    text = "\n".join(summary_lines(view))
    assert "B_crit (McCandlish fit): 252 [133, > 1,348] examples" in text and "S_min 43.4 [< 1, 70.7]" in text, text


def test_a_global_branch_runs_past_its_seeds_best_when_the_median_is_over_seeds():
    """A global branch stopped at the fewest steps an earlier lr took (same batch, same seed) was scored "not
    reached": with two seeds, lr B at 132 and 200 steps (median 166) lost to lr A at 180 and 200 (190) once B's
    second seed was stopped at 180 (a user's out-of-sample check). One seed keeps the exact cut; several run to 3×."""
    from bsprof.sweep.api import CAP_FACTOR, stop_at

    assert stop_at(180.0, 1) == 180
    assert stop_at(180.0, 2) == 3 * 180 == CAP_FACTOR * 180
    assert np.median([132, min(200, stop_at(180.0, 2))]) < np.median([180, 200])


def test_a_batch_whose_lrs_all_missed_the_target_shows_the_lr_with_the_lowest_loss():
    """No lr of the grid reached the target at a batch (a partial sweep): the row showed the grid's first lr, loss
    1.049, beside another's 1.042 (a trial's finding). It shows the lowest final loss; reached beats not reached."""
    from bsprof.sweep.result import Branch

    def run(m, loss, steps=math.inf):
        return Branch(64, 0.0015 * m, m, 0, 200, 200 * 64, loss, 0.01, 1.0, False, steps)

    [row] = summary.global_batches([run(1, 1.049), run(2, 1.042), run(4, 1.100)])
    assert row.lr_multiplier == 2 and row.loss == pytest.approx(1.042) and not math.isfinite(row.steps)
    [row] = summary.global_batches([run(1, 1.049, 150), run(2, 1.042), run(4, 0.9, 180)])
    assert row.lr_multiplier == 1 and row.steps == 150


def test_a_global_sweep_runs_the_rules_lr_first_and_cuts_the_far_ones(monkeypatch):
    """A grid listed high to low (×12 … ×0.5) ran its far, slow lrs first at every batch, each to --max-steps before
    any cut applied (a trial's plateau at ×12). The rule's lr runs first, then outward; a later lr is cut at the steps
    the best so far took (one seed), whatever order the grid was given in."""
    import torch

    from bsprof.sweep.result import Branch

    ran = []

    def fake(setup, seed, batch, multiplier, cap, budget, say, schedule=None):
        ran.append((multiplier, cap))
        steps = {1: 100.0, 0.5: 150.0, 2: 90.0}.get(multiplier, math.inf)   # ×12: a plateau, never reached
        return Branch(batch, 0.1 * multiplier, multiplier, seed, int(min(steps, cap)), 0, 0.3, 0.01, 0.0, False,
                      steps if steps <= cap else math.inf)

    monkeypatch.setattr(branches, "run_to_target", fake)
    x = torch.randn(256, 3)
    sweep.global_(model=torch.nn.Linear(3, 1), dataset=torch.utils.data.TensorDataset(x, x.sum(1)),
                  loss=lambda m, b: (m(b[0]).squeeze(-1) - b[1]) ** 2, target_loss=0.5, batches=[16, 32, 64],
                  lr=0.05, lr_grid=[12, 2, 1, 0.5], max_steps=2000, n_boot=20, device="cpu")
    assert [m for m, _ in ran] == [1, 0.5, 2, 12] * 3
    assert ran[0][1] == 2000 and ran[3][1] == 90   # ×12 cut at the 90 steps ×2 took


def test_a_target_loss_picks_the_global_method(tmp_path):
    """`bsprof sweep SPEC -t 0.3` ran the local method, where the target only sets the loss a --report's headline is
    compared at; a target alone now asks for the global method, the headline's quantity. With local's own options
    (--examples, --tolerance) or an explicit --method local, the sweep stays local, as before."""
    r = cli(TINY, "--batches", "2,4,8,16", "-t", 0.3, "--lr-grid", "0.5,1,2", "--n-boot", 50, *FAST,
            "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["method"] == "global"
    for extra in (["--tolerance", 0.02], ["--method", "local"]):
        r = cli(TINY, *extra, "--batches", "2,4", "-t", 0.3, *FAST, "-o", tmp_path / "l", "--overwrite")
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / "l" / "sweep.json").read_text())["method"] == "local"


def test_a_fit_resting_on_batches_timed_in_a_few_steps_is_noted(tmp_path, monkeypatch):
    """A new user's sweep gave B_crit 376 [325, 423] with S_min 3.5 steps at one target and 648 at a lower one: a
    fit of batches timed in a few whole steps is firmer than its bootstrap says. Below FEW_STEPS a note says so (the
    tiny task's S_min is about 5.5: the threshold is moved around it to see both sides)."""
    args = (TINY, "--method", "global", "--batches", "2,4,8,16", "-t", 0.3, "--lr-grid", "0.5,1,2", "--n-boot", 50,
            *FAST, "-q")
    monkeypatch.setattr(sweep_api, "FEW_STEPS", 1000)
    r = cli(*args, "-o", tmp_path / "a")
    notes = json.loads((tmp_path / "a" / "sweep.json").read_text())["notes"]
    assert r.exit_code == 0 and any(n.startswith("S_min is ") and "a lower --target-loss" in n for n in notes)
    monkeypatch.setattr(sweep_api, "FEW_STEPS", 0)
    cli(*args, "-o", tmp_path / "b")
    assert not any(n.startswith("S_min is ") for n in json.loads((tmp_path / "b" / "sweep.json").read_text())["notes"])


def test_piped_progress_lines_are_one_line_each(tmp_path):
    """Piped (a CI log), each branch's progress line stays whole, whatever the width: they wrapped mid-token ("(0.0"
    then "s)"), leaving stray lines after a grep (a new user's finding)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "50"}
    out = subprocess.run([sys.executable, "-m", "bsprof", "sweep", str(TINY), "--batches", "2,4", "--examples", "64",
                          *map(str, FAST), "-o", str(tmp_path)], capture_output=True, text=True, env=env).stderr
    lines = [ln for ln in out.splitlines() if ln.startswith("branch ")]
    assert len(lines) == 2 and all(ln.endswith(" s)") and len(ln) > 50 for ln in lines), out


def test_a_model_with_dropout_is_noted_when_the_sweep_is_compared_with_training_losses(tmp_path):
    """A validation task with dropout: the sweep's target is an evaluation loss (dropout off), the report's path a
    training loss (dropout on, higher at the same weights: eval 0.45 was train 0.523), and nothing said so. With a
    --report (or --schedule) and a layer whose output depends on the mode, a note says it; Dropout(p=0) is not one."""
    from bsprof.sweep.branches import mode_layers

    assert mode_layers(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.BatchNorm1d(2), nn.Dropout(0.2))) == \
        ("BatchNorm1d", "Dropout")
    assert mode_layers(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0))) == ()
    spec = tmp_path / "dropped.py"
    spec.write_text(TINY.read_text() + "\n\n_linear = model\n\n\ndef model():\n"
                    "    return nn.Sequential(nn.Dropout(0.1), _linear())\n")
    Report(measurements=[{"step": 0, "loss": 0.7, "b_simple": 8.6, "b_simple_lo": 8.0, "b_simple_hi": 9.3,
                          "status": "ok", "examples": 640, "seconds": 0.5}]).to_json(tmp_path / "report.json")
    notes = {}
    for name, path in (("dropout", spec), ("plain", TINY)):
        r = cli(path, "--method", "global", "--batches", "2,4,8,16", "-t", 0.3, "--n-boot", 50, "--any-spec",
                "--report", tmp_path / "report.json", *FAST, "-o", tmp_path / name, "-q")
        assert r.exit_code == 0, r.output
        notes[name] = json.loads((tmp_path / name / "sweep.json").read_text())["notes"]
    assert any(n.startswith("the model has Dropout, whose output differs in train and eval mode") for n in
               notes["dropout"])
    assert not any("differs in train and eval mode" in n for n in notes["plain"])


def test_the_grid_edge_note_gives_a_wider_grid():
    """"widen --lr-grid" came with no value (a new user's sweep had every best lr at ×2, the default grid's top):
    the note now gives the grid doubled past the end the best lrs sat at."""
    from bsprof.sweep.result import BatchSummary

    top = [BatchSummary(b, 0.1, 2.0, 0.3, 0.01, 10, 100, None) for b in (16, 32)]
    assert sweep_api._wider(top, [16, 32], (0.5, 1.0, 2.0)) == " (e.g. --lr-grid 0.5,1,2,4,8)"
    both = [dataclasses.replace(top[0], lr_multiplier=0.5), top[1]]
    assert sweep_api._wider(both, [16, 32], (0.5, 1.0, 2.0)) == " (e.g. --lr-grid 0.125,0.25,0.5,1,2,4,8)"


def test_a_branch_that_levelled_off_stops_early(tmp_path):
    """A target below the loss's floor (least squares with noise: the floor is σ²/2 = 0.25) ran every branch to
    --max-steps (a new user's took 61 s, 20× the reachable sweep); a branch whose lowest loss is from its first
    quarter (after 200 steps and a quarter of --max-steps) now stops as levelled off, and says so."""
    r = cli(TINY, "--batches", "2,4,8", "-t", 0.1, "--max-steps", 3000, *FAST, "-o", tmp_path, "-q")
    assert r.exit_code == 2
    data = json.loads((tmp_path / "sweep.json").read_text())
    runs = data["branches"]
    stalled = [b for b in runs if b["stalled"]]
    assert 2 * len(stalled) > len(runs)   # a run still finding lower losses late (none here) goes on, as before
    assert all(750 <= b["steps"] < 3000 and b["steps"] >= 4 * b["lowest_step"] for b in stalled)
    assert all(b["stalled"] or b["lowest_step"] > b["steps"] / 4 for b in runs)
    assert any("levelled off above the target at every lr of the grid" in n for n in data["notes"])
    assert "stalled" in (tmp_path / "sweep.csv").read_text().splitlines()[0]
