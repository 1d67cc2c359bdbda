"""B_noise = tr(HΣ)/(GᵀHG) through Hessian-vector products, against the closed forms (anisotropic inputs)."""
import numpy as np
import pytest
import torch

from bsprof.probes.hessian import hvps, measure_b_noise
from bsprof.validation.closed_forms import FreshLeastSquares, LeastSquares
from bsprof.validation.coverage import ls_loss, net_at

LAM = np.array([0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0])
DELTA = np.array([1.0, 1.0, 1.0, 0.5, 0.2, 0.05, 0.05, 0.05])


def test_hvp_is_the_batch_hessian():
    x = torch.randn(50, 8, dtype=torch.float64)
    net = net_at(LeastSquares(LAM, DELTA, 0.1))
    v = [torch.randn(1, 8, dtype=torch.float64)]
    (hv,), = hvps(net, ls_loss, (x, torch.zeros(50, dtype=torch.float64)), 50, [v])
    assert torch.allclose(hv, v[0] @ (x.T @ x / 50))


def test_b_noise_matches_the_closed_form_and_differs_from_b_simple():
    m = LeastSquares(LAM, DELTA, 0.1)  # B_noise = 59.9, B_simple = 31.4 (closed forms; test_closed_forms.py)
    est = measure_b_noise(net_at(m), ls_loss, FreshLeastSquares(m, 3), 256, rel_error=0.05, max_seconds=120)
    assert est.b_noise.value == pytest.approx(m.b_noise, rel=0.1)
    assert est.eps_max.value == pytest.approx(m.eps_max, rel=0.1)
    assert est.gHg == pytest.approx(m.gHg, rel=0.1) and est.trace_h_sigma == pytest.approx(m.trace_h_sigma, rel=0.1)
    assert est.b_noise.lo > 1.3 * m.b_simple


def test_b_noise_equals_b_simple_when_isotropic():
    m = LeastSquares.isotropic(20, 1.0, 0.25)  # H = I: B_noise = B_simple = 26
    est = measure_b_noise(net_at(m), ls_loss, FreshLeastSquares(m, 4), 64, rel_error=0.08, max_seconds=120)
    assert est.b_noise.lo <= 26.0 <= est.b_noise.hi
    assert est.b_noise.value == pytest.approx(26.0, rel=0.1)
