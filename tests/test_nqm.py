"""Validation of the planner on the noisy quadratic model (Zhang et al. 2019), where steps to target are exact."""

from __future__ import annotations

import pytest

from bsprof.output.report import Report
from bsprof.schedule import ScheduleConfig, plan
from bsprof.validation.nqm import NQM, fit_critical_batch, measurement_rows, sweep


@pytest.fixture(scope="module")
def exact():
    return sweep(NQM.default())


def test_closed_form_matches_recursion():
    m = NQM.default(10)
    e = m.m0.copy()
    for _ in range(7):
        e = (1 - 0.3 * m.h) ** 2 * e + 0.3 ** 2 * m.c / 4
    assert m.moments(7, 0.3, 4) == pytest.approx(e)


def test_fit_critical_batch_exact_model():
    b = [1, 4, 16, 64, 256]
    assert fit_critical_batch(b, [30 * (1 + 50 / x) for x in b]) == pytest.approx((30, 50), rel=1e-6)


def test_exact_sweep_critical_batch(exact):
    steps = [r["steps"] for r in exact["rows"]]
    assert all(a > b for a, b in zip(steps, steps[1:]))          # larger batches never need more steps
    assert 47 <= exact["b_crit"] <= 53  # the exact sweep gives 47.6 (deterministic); the bounds pin it


def _planned(noise: str, batch: int = 32, n: int = 12) -> dict:
    model = NQM.default()
    target = 0.05 * model.loss0
    steps, lr = model.optimal_steps(target, batch)
    rows = measurement_rows(model, batch, lr, int(steps * 1.2) + 1, n=n)
    report = Report(config={"batch_size": batch, "lr": lr}, measurements=rows)
    return plan(report, ScheduleConfig(target_loss=target, noise=noise)).prediction


@pytest.mark.parametrize("batch", [8, 32, 64])
def test_planner_critical_batch_within_15_percent(exact, batch):
    """B_crit = ∫B_n ds_min/∫ds_min along the measured path, following B_simple (the default)."""
    assert _planned("b_simple", batch)["b_crit"] == pytest.approx(exact["b_crit"], rel=0.15)


def test_planner_s_min(exact):
    assert _planned("b_simple")["s_min"] == pytest.approx(exact["s_min"], rel=0.15)


def test_b_noise_underestimates_on_nqm(exact):
    """Finding: on this ill-conditioned NQM, B_noise = tr(HΣ)/GᵀHG along the path gives about half the exact B_crit
    (tuned constant lr per batch); B_simple = tr(Σ)/|G|² tracks it. Recorded so a change shows up."""
    assert 0.35 * exact["b_crit"] < _planned("b_noise")["b_crit"] < 0.7 * exact["b_crit"]
