"""The 1/B regression over partial sums and its goodness-of-fit test."""
import numpy as np
import pytest

from bsprof.stats.regression import fit
from bsprof.validation.closed_forms import LeastSquares, draws_from_grads


def test_regression_recovers_b_simple_and_passes_the_fit():
    m = LeastSquares.isotropic(20, 1.0, 0.25)
    rng = np.random.default_rng(0)
    f = fit(draws_from_grads(m.grads(rng, 200, 256), 8))
    assert f.batch_sizes == (8, 16, 256) and f.dof == 1  # b, 2b (sampling.partial_marks) and B
    assert f.b_simple == pytest.approx(26.0, rel=0.1)
    assert f.p_value > 1e-3 and not f.failed


def test_regression_flags_coupled_examples():
    """Blocks of 32 examples sharing a random component: |G_B|² is not linear in 1/B below the block size."""
    m = LeastSquares.isotropic(20, 1.0, 0.25)
    rng = np.random.default_rng(1)
    g = m.grads(rng, 60, 256) + np.repeat(rng.standard_normal((60, 8, 20)), 32, axis=1)
    f = fit(draws_from_grads(g, 8))
    assert f.failed and f.p_value < 1e-6


def test_not_testable_with_two_points():
    m = LeastSquares.isotropic(5, 1.0, 0.5)
    f = fit(draws_from_grads(m.grads(np.random.default_rng(2), 20, 16), 1, step=64))
    assert np.isnan(f.p_value) and not f.failed and f.dof == 0
