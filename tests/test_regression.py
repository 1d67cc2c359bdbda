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


def test_an_exact_row_has_no_regression():
    """A measurement of one draw of the whole dataset (exact) showed a 1/B regression's B_simple (212) beside the
    exact value (273), with nothing to mark it as a fit through noisy partial sums (a trial): the row has none."""
    import torch

    import bsprof

    torch.manual_seed(0)
    x = torch.randn(48, 3)
    y = x.sum(1) + torch.randn(48)
    report = bsprof.measure(model=torch.nn.Linear(3, 1), dataset=torch.utils.data.TensorDataset(x, y),
                            loss=lambda m, b: (m(b[0]).squeeze(-1) - b[1]) ** 2, steps=0, probe_batch=48,
                            rel_error=0.2)
    [row] = report.measurements
    assert row.stopped_by == "exact" and row.regression is None
    assert "b_simple_regression" not in row.to_row()
