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
