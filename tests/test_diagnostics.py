"""Each diagnostic fires on a tiny case (and stays quiet otherwise)."""
from types import SimpleNamespace

import torch
from torch import nn

from bsprof.engine import diagnostics
from bsprof.output.report import Report
from bsprof.probes.choose import per_example_invalid

CFG = SimpleNamespace(micro_batch=8, batch_size=32)


def _codes(model=None, optimizer=None, iterable=False, invalid=None):
    r = Report()
    model = model or nn.Linear(2, 1)
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    diagnostics.before_run(r, model, optimizer, SimpleNamespace(iterable=iterable), invalid, CFG)
    return {d["code"] for d in r.diagnostics}


def test_batchnorm_in_train_mode():
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    invalid = per_example_invalid(model)
    assert invalid and "batchnorm_train" in _codes(model, invalid=invalid)
    assert per_example_invalid(model.eval()) is None


def test_not_iid_temperature_weight_decay_adam():
    assert "not_iid" in _codes(iterable=True) and "not_iid" not in _codes()
    assert "temperature" in _codes()
    m = nn.Linear(2, 1)
    assert "weight_decay" in _codes(m, torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=1e-4))
    assert "adam" in _codes(m, torch.optim.AdamW(m.parameters()))


def test_each_sgd_family_says_the_factor_its_critical_batch_uses():
    """Plain SGD (the windows read high: × 0.74) and SGD with momentum (they read low) each say so; Adam neither."""
    m = nn.Linear(2, 1)
    plain = _codes(m, torch.optim.SGD(m.parameters(), lr=0.1))
    heavy = _codes(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    assert "plain_sgd" in plain and "momentum" not in plain
    assert "momentum" in heavy and "plain_sgd" not in heavy
    assert not {"plain_sgd", "momentum"} & _codes(m, torch.optim.Adam(m.parameters()))


def test_temperature_note_says_whether_training_happened():
    def message(**cfg):
        r = Report()
        m = nn.Linear(2, 1)
        diagnostics.before_run(r, m, torch.optim.SGD(m.parameters(), lr=0.1), SimpleNamespace(iterable=False),
                               None, SimpleNamespace(micro_batch=8, batch_size=32, **cfg))
        return next(d["message"] for d in r.diagnostics if d["code"] == "temperature")

    assert "measured along training at lr=0.1, batch 32" in message(steps=200)
    at_init = message(steps=0)
    assert "at the initial weights (no training steps), at lr=0.1 / batch 32" in at_init
    assert "along training at" not in at_init
    assert "the checkpoint's weights (no training steps)" in message(steps=0, checkpoint="w.pt")


def test_temperature_note_gives_the_batch_in_tokens_under_unit_tokens():
    """Under --unit tokens the noise scale (and check's --batch-size) is in tokens: "batch 32" read as 32 tokens."""
    r = Report(unit="tokens", config={"tokens_per_example": 32})
    m = nn.Linear(2, 1)
    diagnostics.before_run(r, m, torch.optim.SGD(m.parameters(), lr=0.1), SimpleNamespace(iterable=False), None,
                           SimpleNamespace(micro_batch=8, batch_size=32, steps=200))
    note = next(d["message"] for d in r.diagnostics if d["code"] == "temperature")
    assert "at lr=0.1, batch 32 sequences = 1,024 tokens." in note, note


def test_clipping_from_the_spec_or_the_optimizer():
    CLIP_GRAD_NORM = 1.0  # noqa: F841  (read from the loss function's globals, as in a spec file)
    globals()["CLIP_GRAD_NORM"] = 1.0
    spec = SimpleNamespace(loss=lambda model, batch: None)
    m = nn.Linear(2, 1)
    r = Report()
    diagnostics.clipping(r, spec, torch.optim.SGD(m.parameters(), lr=0.1))
    assert [d["code"] for d in r.diagnostics] == ["clipping"] and "before clipping" in r.diagnostics[0]["message"]
    del globals()["CLIP_GRAD_NORM"]
    r = Report()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.param_groups[0]["max_grad_norm"] = 0.5
    diagnostics.clipping(r, spec, opt)
    assert r.diagnostics and r.diagnostics[0]["code"] == "clipping"
    r = Report()
    diagnostics.clipping(r, spec, torch.optim.SGD(m.parameters(), lr=0.1))
    assert not r.diagnostics


def test_the_regression_misfit_note_holds_a_runs_false_alarms_to_its_level():
    """Each measurement's fit test is calibrated at 1e-3 (scripts/regression_calibration.py); over a run of k tested
    measurements the note needs p < 1e-3/k (a new user's valid spec got the note for p = 0.00046 at one of five
    steps); a coupled batch's p (1e-9 and below) still gets it."""
    def run(ps):
        r = Report()
        for i, p in enumerate(ps):
            r.add({"step": 10 * i, "regression_fit_failed": p < 1e-3, "regression_fit_p": p, "regression_dof": 1,
                   "b_simple_regression": 50.0})
        diagnostics.after_run(r)
        return {d["code"]: d["message"] for d in r.diagnostics}

    assert "regression_misfit" not in run([0.3, 0.00046, 0.5, 0.2, 0.7])
    assert "regression_misfit" in run([0.00046])                      # one test: its own level
    note = run([0.3, 1e-9, 0.5, 0.2, 0.7])["regression_misfit"]
    assert "at step 10 (fit p = 1e-09, of 5 measurement(s) tested)" in note


def test_layer_spread_regression_misfit_and_b_pre():
    r = Report()
    r.add({"step": 0, "regression_fit_failed": True, "regression_fit_p": 1e-9, "b_pre_status": "not_available"},
          [{"step": 0, "layer": "a", "b_simple": 5.0, "status": "ok"},
           {"step": 0, "layer": "b", "b_simple": 500.0, "status": "ok"}])
    diagnostics.after_run(r)
    assert {"layer_spread", "regression_misfit", "b_pre_unavailable"} <= {d["code"] for d in r.diagnostics}
    quiet = Report()
    quiet.add({"step": 0}, [{"step": 0, "b_simple": 5.0, "status": "ok"}, {"step": 0, "b_simple": 6.0, "status": "ok"}])
    diagnostics.after_run(quiet)
    assert not quiet.diagnostics


def _run(rows, **config):
    r = Report(config=config)
    for row in rows:
        r.add(row)
    diagnostics.after_run(r)
    return {d["code"]: d["message"] for d in r.diagnostics}


def _row(step, loss, b):
    return {"step": step, "loss": loss, "g2": 1.0, "trace_sigma": b, "b_simple": b, "b_simple_lo": 0.9 * b,
            "b_simple_hi": 1.1 * b, "status": "ok", "method": "microbatch", "n_draws": 9, "examples": 100}


def test_implausible_critical_batches_and_a_rising_loss():
    above = _run([_row(0, 2.0, 900.0), _row(10, 1.5, 1000.0)], dataset_size=256, optimizer="SGD")
    assert "critical_batch_above_dataset" in above and "256 examples" in above["critical_batch_above_dataset"]
    assert "critical_batch_interval_above_dataset" not in above  # one note, not two
    reaching = _run([_row(0, 2.0, 220.0), _row(10, 1.5, 250.0)], dataset_size=256, optimizer="SGD")
    assert "critical_batch_above_dataset" not in reaching
    assert "256 examples" in reaching["critical_batch_interval_above_dataset"]
    below = _run([_row(0, 2.0, 0.5), _row(10, 1.5, 0.4)], dataset_size=10_000, optimizer="SGD")
    assert "critical_batch_below_one" in below and "below one example" in below["critical_batch_below_one"]
    rose = _run([_row(0, 1.0, 20.0), _row(10, 1.8, 30.0)], dataset_size=10_000, optimizer="SGD")
    assert "loss_rose" in rose
    assert "Lower the lr (--lr, or the spec optimizer's lr)" in " ".join(rose["loss_rose"].split())
    fine = _run([_row(0, 2.0, 20.0), _row(10, 1.5, 30.0)], dataset_size=10_000, optimizer="SGD")
    assert not {"critical_batch_above_dataset", "critical_batch_interval_above_dataset", "critical_batch_below_one",
                "loss_rose"} & set(fine)
    # fell, then rose above its lowest (8.6 → 1.94 → 3.05, a new user's run): below step 0's loss, still said
    bounced = _run([_row(0, 8.6, 20.0), _row(10, 1.94, 30.0), _row(20, 2.24, 30.0), _row(30, 3.05, 40.0)],
                   dataset_size=10_000, optimizer="SGD")
    assert "fell to 1.94 (step 10), then rose to 3.05 (step 30)" in bounced["loss_rose"]
    # no progress at all (a trial's Adam at lr 50: 6.8e8 → 7.1e8, too little for loss_rose): said, once
    flat = _run([_row(0, 6.8e8, 20.0), _row(10, 6.5e8, 30.0), _row(20, 7.1e8, 30.0)], dataset_size=10_000,
                optimizer="Adam")
    assert "loss_rose" not in flat and "did not fall (measured 6.8e+08 at step 0, 7.1e+08 at step 20)" in flat[
        "loss_flat"]
    # the noisy values of a run that did not train (a trial's lr 1e-7; first to last they fell 11%): the halves' means
    noisy = _run([_row(s, v, 20.0) for s, v in zip(range(0, 101, 25), (21.82, 21.66, 21.22, 25.97, 19.42))],
                 dataset_size=10_000, optimizer="SGD")
    assert "did not fall (measured 21.74 over steps 0–25 and 22.7 over steps 75–100)" in noisy["loss_flat"]
    assert "loss_flat" not in fine and "loss_flat" not in bounced and "loss_flat" not in rose
    little = _run([_row(0, 1.11, 20.0), _row(10, 1.08, 30.0), _row(20, 1.05, 30.0)], dataset_size=10_000,
                  optimizer="AdamW")   # a trial's model that barely learned got "Critical batch ≈ 1170" and no note
    assert "fell only 5% over the probe (measured 1.11 at step 0, 1.05 at step 20)" in little["loss_flat"]
    falls = _run([_row(0, 2.0, 20.0), _row(10, 1.5, 30.0), _row(20, 1.2, 30.0)], dataset_size=10_000,
                 optimizer="SGD")
    assert "loss_flat" not in falls


def test_an_interval_reaching_zero_is_called_unresolved_whatever_its_status():
    """B_pre 12.8 [0, 18.1] with status ok (a new user's finding): the note says it is unresolved, an upper bound,
    and how to resolve it; the same for B_noise and the training-step windows, and nothing when every lower end is
    positive."""
    rows = [{**_row(10, 1.5, 20.0), "b_pre": 12.8, "b_pre_lo": 0.0, "b_pre_hi": 18.1, "b_pre_status": "ok"},
            {**_row(20, 1.2, 30.0), "b_noise": 9.0, "b_noise_lo": -1.0, "b_noise_hi": 25.0, "b_noise_status": "ok",
             "b_simple_window": 8.0, "b_simple_window_lo": 0.0, "b_simple_window_hi": 40.0,
             "b_simple_window_status": "ok"}]
    note = _run(rows, optimizer="Adam")["unresolved"]
    assert note.startswith("B_simple (training) at step 20 (≤ 40); B_noise at step 20 (≤ 25); B_pre at step 10 "
                           "(≤ 18.1): the interval reaches 0 (tr(Σ) and tr(HΣ) and tr(PΣ) not told apart from 0)")
    assert "known only to be at most its upper end" in note and "--measure-budget" in note and "--measure-every" in note
    resolved = [{**_row(10, 1.5, 20.0), "b_pre": 12.8, "b_pre_lo": 1.0, "b_pre_hi": 18.1, "b_pre_status": "ok"}]
    assert "unresolved" not in _run(resolved, optimizer="Adam")


def test_list_items_note_only_for_the_default_collate():
    """Items holding Python lists of numbers get the default_collate note; a spec's own collate made its batches
    as they are (kept as a list on purpose: a new user's spec still got told to define collate). String fields
    (ids, raw text) collate to one list of the batch's strings, as they should: no note (a new user's ids were)."""
    from torch.utils.data import default_collate

    from bsprof.engine.diagnostics import data
    from bsprof.output.report import Report

    items = [{"id": "ex0", "v": [1.0, 2.0, 3.0], "x": torch.zeros(3)}, {"id": "ex1", "v": [4.0, 5.0, 6.0],
                                                                         "x": torch.zeros(3)}]
    pair = default_collate(items)
    for collate, said in ((None, True), (default_collate, True), (lambda items: items, False)):
        report = Report()
        data(report, pair, collate)
        assert any(d["code"] == "list_items" for d in report.diagnostics) is said
    strings_only = default_collate([{"id": i["id"], "x": i["x"]} for i in items])
    assert strings_only["id"] == ["ex0", "ex1"]
    report = Report()
    data(report, strings_only, None)
    assert not any(d["code"] == "list_items" for d in report.diagnostics)


def test_the_terminal_lists_a_runs_own_notes_before_those_every_run_carries():
    """The temperature and optimizer-factor notes are on almost every run: printed after the run's own findings,
    dimmed, so that a fallback or an unresolved estimate is not buried under them (a trial's finding)."""
    from rich.console import Console

    from bsprof.output.render import report_table

    r = Report(config={"optimizer": "SGD", "dataset_size": 10_000})
    r.add(_row(0, 2.0, 20.0))
    r.diagnose("temperature", "the noise scale depends on the temperature lr/B")
    r.diagnose("plain_sgd", "plain SGD: measured as it is")
    r.diagnose("fallback", "2 parameters by the slow path")
    console = Console(width=200, record=True)
    console.print(report_table(r))
    text = console.export_text()
    assert text.index("note [fallback]") < text.index("note [temperature]") < text.index("note [plain_sgd]")


def test_a_stretch_of_training_many_times_slower_is_named_as_cpu_contention():
    """A run beside another busy process: its first 100 steps took 71 s, each later 100 about 3.6 s (torch's two
    threads waiting on each other). A note says so, with the fix; a run with even steps, a one-thread run, or a
    first stretch slower by a set-up's fraction of a second gets none."""
    def run(between, threads=2, device="cpu"):
        r = Report()
        for step in range(0, 100 * (len(between) + 1), 100):
            r.add({"step": step, "b_simple": 50.0, "status": "ok"})
        r.timing = {"training_between_s": between}
        r.environment = {"device": device, "threads": threads}
        diagnostics.after_run(r)
        return {d["code"]: d["message"] for d in r.diagnostics}

    note = run([71.1, 3.6, 3.6, 3.7, 3.6, 3.6])["cpu_contention"]
    assert note.startswith("training from step 0 to 100 took 20× the run's median time per step") and \
        "OMP_NUM_THREADS=1" in note
    assert "cpu_contention" not in run([3.7, 3.6, 3.6, 3.7])
    assert "cpu_contention" not in run([71.1, 3.6, 3.6, 3.7], threads=1)
    assert "cpu_contention" not in run([71.1, 3.6, 3.6, 3.7], device="cuda")
    assert "cpu_contention" not in run([0.5, 0.03, 0.03, 0.03])   # 17× per step, but half a second: a set-up
