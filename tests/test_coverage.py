"""Nominal 90% intervals cover the closed-form truth (bsprof.validation.coverage; scripts/coverage.py runs the full
study)."""
import math

import numpy as np
import pytest

from bsprof.validation import coverage
from bsprof.validation.closed_forms import LeastSquares, OneD

REPS = 400
BAND = 3 * math.sqrt(0.9 * 0.1 / REPS)  # ±3 binomial standard deviations around 90%


@pytest.mark.parametrize("name, model, b, B", [
    ("V2 iso, per-example, B = B_simple", LeastSquares.isotropic(20, 1.0, 0.25), 1, 32),
    ("V1 finite n=2000, micro-batch 8, B ≈ B_simple", OneD(0.1, (lambda y: (y - y.mean()) / y.std())(
        np.random.default_rng(5).standard_normal(2000))), 8, 128),
])
def test_coverage_fast(name, model, b, B):
    row = coverage.cell(name, model, b, B, 5, REPS, np.random.default_rng(11))
    assert abs(row["coverage"] - 0.9) <= BAND, row


@pytest.mark.slow
def test_coverage_study_reduced():
    fixed, sequential = coverage.fixed_study(300, quick=True), coverage.sequential_study(60)
    cov = np.array([r["coverage"] for r in fixed])
    assert 0.87 <= cov.mean() <= 0.93
    # never anti-conservative beyond 4σ; cells dominated by lower bounds are conservative (up to ~0.98)
    assert (cov >= 0.9 - 4 * math.sqrt(0.09 / 300)).all(), cov
    assert all(abs(r["coverage"] - 0.9) <= 4 * math.sqrt(0.09 / 60) for r in sequential)


# -- B_noise and B_pre (bsprof.validation.coverage_noise_pre; scripts/coverage_noise_pre.py runs the full study) --
def test_b_noise_coverage_fast():
    """B_noise's interval (probes.hessian.combine on exactly simulated Hessian draws) covers the closed form
    tr(HΣ)/(GᵀHG) 90% of the time, within 3 binomial standard deviations, on anisotropic inputs (B_noise ≠ B_simple)."""
    from bsprof.validation import coverage_noise_pre as cnp

    model = cnp.models()["V2 aniso d=20"]
    assert model.b_noise != pytest.approx(model.b_simple, rel=0.02)
    row = cnp.noise_cell("V2 aniso", model, 32, 5, REPS, np.random.default_rng(3))
    assert abs(row["coverage"] - 0.9) <= BAND, row


def test_b_pre_coverage_fast():
    """B_pre's interval (noise_scale on √P-scaled per-example gradients, as the preconditioned probe feeds it)
    covers tr(PΣ)/(GᵀPG) for Adam's fixed-point P, within 3 binomial standard deviations."""
    from bsprof.validation import coverage_noise_pre as cnp

    model = cnp.models()["V2 aniso d=20"]
    p = cnp.adam_p(model)
    assert model.b_pre(p) != pytest.approx(model.b_simple, rel=0.05)
    row = cnp.pre_cell("V2 aniso", model, 1, 32, 5, REPS, np.random.default_rng(4))
    assert abs(row["coverage"] - 0.9) <= BAND, row


def test_preconditioned_probe_and_hessian_loop_run_on_the_closed_form():
    """The real torch code paths of the study (measure_b_noise, measure_at with preconditioned probes) run on
    fresh closed-form data (one measurement each; the coverage itself is the script's)."""
    import torch

    from bsprof.validation import coverage_noise_pre as cnp

    torch.set_num_threads(1)
    rows = cnp.loop_study(1, max_seconds=30, names=("V2 aniso d=20",))
    assert {r["quantity"] for r in rows} == {"b_noise (measure_b_noise)", "b_pre (vmap_preconditioned)",
                                            "b_pre (microbatch_preconditioned)"}
