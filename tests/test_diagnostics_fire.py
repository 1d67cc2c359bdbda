"""Diagnostics no other test made fire: each from the smallest input that should raise it, with its words checked."""

import json
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bsprof
from bsprof.schedule.plan import more_rows_fix
from bsprof.track import report_from_log


def _codes(report) -> dict:
    return {d["code"]: d["message"] for d in report.diagnostics}


def _data(n=256, d=4, same=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1 if same else n, d, generator=g).expand(n, d).clone()
    y = torch.randn(1 if same else n, generator=g).expand(n).clone()
    return torch.utils.data.TensorDataset(x, y)


def mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x).squeeze(-1), y, reduction="none")


def test_zero_variance_when_every_example_is_the_same():
    """Identical examples: every per-example gradient equals the mean, tr Σ = 0."""
    report = bsprof.measure(model=torch.nn.Linear(4, 1), dataset=_data(same=True), loss=mse, steps=0,
                            rel_error=0.2, batch_size=16)
    notes = _codes(report)
    assert report.measurements[0].stopped_by == "zero_variance"
    assert "the examples' gradients agree at step 0" in notes["zero_variance"]


def test_zero_gradient_when_the_loss_ignores_the_weights():
    """A loss that does not depend on the trainable weights (the model's output times zero): every g_i = 0."""
    def flat(model, batch):
        x, y = batch
        return 0.0 * model(x).squeeze(-1) + y ** 2

    report = bsprof.measure(model=torch.nn.Linear(4, 1), dataset=_data(), loss=flat, steps=0, rel_error=0.2,
                            batch_size=16)
    assert report.measurements[0].stopped_by == "zero_gradient"
    assert "every gradient drawn is exactly zero at step 0" in _codes(report)["zero_gradient"]


def test_lr_not_used_names_the_spec_optimizers_own_rate():
    report = bsprof.measure(model=torch.nn.Linear(4, 1), dataset=_data(), loss=mse, steps=4, measure_every=4,
                            rel_error=0.5, batch_size=16, lr=0.5,
                            optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    assert "--lr 0.5 was not used" in _codes(report)["lr_not_used"]
    assert "(0.01)" in _codes(report)["lr_not_used"]


def _log(path, steps):
    path.write_text("\n".join(json.dumps(x) for x in steps) + "\n")
    return path


HEADER = {"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "accumulation",
          "accumulation_steps": 2, "optimizer": "SGD"}


def test_skipped_steps_counts_the_non_finite_ones(tmp_path):
    rng = np.random.default_rng(0)
    lines = [HEADER]
    for step in range(30):
        if step % 10 == 3:
            lines.append({"step": step, "examples": 64 * step, "b": 32, "B": 64, "skipped": "non-finite",
                          "small_sq": None, "big_sq": None, "loss": None, "lr": 0.1})
            continue
        lines.append({"step": step, "examples": 64 * step, "b": 32, "B": 64, "small_sq": 3 * rng.gamma(50, 1 / 50),
                      "big_sq": 2 * rng.gamma(50, 1 / 50), "loss": 1.0 - 0.01 * step, "lr": 0.1})
    report = report_from_log(_log(tmp_path / "skips.jsonl", lines), window=5)
    assert _codes(report)["skipped_steps"] == "3 logged steps had non-finite gradients and were skipped"
    assert report.config["steps_skipped"] == 3


def test_no_windows_when_every_step_was_skipped(tmp_path):
    lines = [HEADER] + [{"step": s, "examples": 64 * s, "b": 32, "B": 64, "skipped": "non-finite", "small_sq": None,
                         "big_sq": None, "loss": None, "lr": 0.1} for s in range(3)]
    report = report_from_log(_log(tmp_path / "empty.jsonl", lines), window=5)
    notes = _codes(report)
    assert not report.measurements
    words = "has no window to estimate: 0 step(s) with a pair were logged (3 skipped as non-finite)"
    assert words in notes["no_windows"]
    fix = more_rows_fix(report)   # what `bsprof schedule` then says
    assert "the log has 0 usable logged step(s) (3 more skipped as non-finite" in fix


def test_lr_not_used_even_when_the_lr_given_is_the_default():
    """--lr 0.1 (the default SGD's) given beside a spec optimizer was not named: the check compared it with the
    default. An lr not given is None (the default SGD takes 0.1), and the report records the lr the probe used."""
    def run(**options):
        return bsprof.measure(model=torch.nn.Linear(4, 1), dataset=_data(), loss=mse, steps=2, measure_every=2,
                              rel_error=0.5, batch_size=16, **options)

    own = lambda p: torch.optim.SGD(p, lr=0.01)  # noqa: E731
    assert "--lr 0.1 was not used" in _codes(run(lr=0.1, optimizer=own))["lr_not_used"]
    same = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    assert "lr_not_used" not in _codes(run(lr=0.1, optimizer=same))   # the quick start's YAML and spec agree
    quiet = run(optimizer=own)
    assert "lr_not_used" not in _codes(quiet) and quiet.config["lr"] == 0.01
    assert run().config["lr"] == 0.1 and run(lr=0.05).config["lr"] == 0.05


def test_optional_options_written_either_way_take_their_type():
    """``float | None`` (PEP 604) and ``Optional[float]`` annotations both accept a float and None."""
    from bsprof.config import _check_type

    for hint in (float | None, typing.Optional[float]):
        assert _check_type("lr", 0.5, hint) == (0.5, None) and _check_type("lr", None, hint) == (None, None)
        assert _check_type("lr", "x", hint)[1]


def test_bsprof_first_imported_under_no_grad_works():
    """A new user's loop imported bsprof inside ``torch.no_grad()`` (an evaluation block): the import failed inside
    bsprof. A fresh interpreter, so that the import is the first."""
    import subprocess
    import sys

    code = ("import torch\nwith torch.no_grad():\n    import bsprof, bsprof.probes.hooks\n"
            "    bsprof.Tracker(torch.nn.Linear(3, 1), accumulation_steps=2, batch_size=8)\n"
            "with torch.inference_mode():\n    from bsprof.integrations.lightning import NoiseScale\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_measure_at_inside_no_grad_or_inference_mode(mode):
    """Called from an evaluation block it failed with torch's 'element 0 of tensors does not require grad'."""
    net, data = torch.nn.Linear(4, 1), _data()
    with mode():
        est = bsprof.measure_at(net, mse, data, rel_error=0.5, seed=0)
    assert est.status.value == "ok" and est.value > 0
    assert torch.is_grad_enabled()


def test_a_tracker_given_another_models_optimizer_says_so():
    """An optimizer over none of the model's parameters was taken silently (the lr logged was that optimizer's)."""
    model, other = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    with pytest.warns(UserWarning, match="the optimizer updates none of the model's 2 trainable parameters"):
        bsprof.Tracker(model, torch.optim.SGD(other.parameters(), lr=0.1), accumulation_steps=2, batch_size=32).close()


def test_a_tracker_log_in_tokens_labels_its_column_tokens(tmp_path):
    """A new user's finding: a tokens log's table titled its column "examples" over token counts (5 steps × 1,024)."""
    from rich.console import Console

    from bsprof.output.render import report_table

    rng = np.random.default_rng(0)
    lines = [dict(HEADER, unit="tokens")] + [
        {"step": s, "examples": 1024 * s, "b": 512, "B": 1024, "small_sq": 3 * rng.gamma(50, 1 / 50),
         "big_sq": 2 * rng.gamma(50, 1 / 50), "loss": 1 - 0.01 * s, "lr": 0.1} for s in range(20)]
    report = report_from_log(_log(tmp_path / "tokens.jsonl", lines), window=5)
    console = Console(width=200, record=True)
    console.print(report_table(report))
    header = next(line for line in console.export_text().splitlines() if "draws" in line)
    assert "tokens" in header and "examples" not in header
    assert report.measurements[0].examples == 5 * 1024
