"""The closed forms of bsprof.closed_forms against big samples (the derivation of Σ for anisotropic x)."""
import numpy as np
import pytest

from bsprof.validation.closed_forms import LeastSquares, OneD

LAM = np.array([0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0])
DELTA = np.array([1.0, 1.0, 1.0, 0.5, 0.2, 0.05, 0.05, 0.05])


def test_anisotropic_sigma_matches_a_big_sample():
    """Σ = ΛΔΔᵀΛ + (ΔᵀΛΔ + σ²)Λ, G = ΛΔ, tr(HΣ) with H = Λ, from 10⁶ exact per-example gradients."""
    m = LeastSquares(LAM, DELTA, 0.1)
    g = m.grads(np.random.default_rng(0), 1, 1_000_000)[0]
    cov = np.cov(g.T)
    assert np.abs(g.mean(0) - LAM * DELTA).max() < 0.02
    assert np.abs(cov - m.sigma()).max() < 0.05 * np.abs(m.sigma()).max()
    assert np.trace(cov) == pytest.approx(m.trace_sigma, rel=0.01)
    assert np.trace(np.diag(LAM) @ cov) == pytest.approx(m.trace_h_sigma, rel=0.01)
    # B_noise ≠ B_simple here: 59.918 and 31.404 evaluated by hand (numpy) from the docstring's |G|² = ΔᵀΛ²Δ,
    # tr(Σ) = ΔᵀΛ²Δ + (ΔᵀΛΔ + σ²)·tr Λ, GᵀHG = ΔᵀΛ³Δ, tr(HΣ) = ΔᵀΛ³Δ + (ΔᵀΛΔ + σ²)·tr Λ² for LAM, DELTA, σ² = 0.1
    assert m.b_noise / m.b_simple == pytest.approx(59.918 / 31.404, rel=1e-3)


def test_isotropic_is_mccandlish():
    m = LeastSquares.isotropic(20, 1.0, 0.25)
    assert m.b_simple == pytest.approx(26.0) and m.b_noise == pytest.approx(26.0)
    assert m.b_pre(np.ones(20)) == pytest.approx(26.0)
    assert OneD(0.1).b_simple == pytest.approx(100.0)
