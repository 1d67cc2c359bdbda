"""B_pre = tr(PΣ)/(GᵀPG): P = I is B_simple; a known diagonal P matches the closed form; Adam's P."""
import numpy as np
import pytest
import torch

from bsprof.engine.sampling import Sampling, measure_at
from bsprof.probes import PROBES
from bsprof.probes.precondition import adam_preconditioner, preconditioned
from bsprof.validation.closed_forms import FreshLeastSquares, LeastSquares
from bsprof.validation.coverage import ls_loss, net_at

LAM = np.array([0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0])
DELTA = np.array([1.0, 1.0, 1.0, 0.5, 0.2, 0.05, 0.05, 0.05])


@pytest.mark.parametrize("base", ["vmap", "microbatch"])
def test_identity_preconditioner_is_the_plain_probe(base):
    m = LeastSquares(LAM, DELTA, 0.1)
    net, batch = net_at(m), FreshLeastSquares(m, 0).draw(16)
    a = PROBES[base].chunk(net, ls_loss, batch, 16)
    b = preconditioned(PROBES[base], [torch.ones(1, 8, dtype=torch.float64)]).chunk(net, ls_loss, batch, 16)
    assert torch.allclose(a.small_sq_sum, b.small_sq_sum) and torch.allclose(a.grad_sum[0], b.grad_sum[0])


@pytest.mark.parametrize("base, b", [("vmap", 1), ("microbatch", 8)])
def test_known_diagonal_preconditioner_matches_the_closed_form(base, b):
    m = LeastSquares(LAM, DELTA, 0.1)
    p = 1.0 / np.sqrt(LAM)  # Adam-like: larger steps along flat directions
    s = Sampling(preconditioned(PROBES[base], [torch.tensor(p).unsqueeze(0)]), b, 256, 128, False, 0.05, 0.9, 5,
                 10 ** 7, 120.0)
    est, _, _ = measure_at(net_at(m), ls_loss, FreshLeastSquares(m, 5), s, np.zeros(1, dtype=int))
    assert est.b_simple == pytest.approx(m.b_pre(p), rel=0.1)
    assert abs(m.b_pre(p) - m.b_simple) > 0.3 * m.b_simple  # the test can tell them apart


def test_adam_preconditioner_from_the_state():
    net = torch.nn.Linear(3, 1, bias=False)
    opt = torch.optim.Adam(net.parameters(), lr=0.1, eps=1e-8)
    assert adam_preconditioner(opt, [net.weight]) is None  # step 0: not available yet
    net(torch.ones(2, 3)).sum().backward()
    g = net.weight.grad.clone()
    opt.step()
    (p,) = adam_preconditioner(opt, [net.weight])
    assert torch.allclose(p, 1 / (g.abs() + 1e-8))  # after one step v̂ = g²


def test_b_pre_end_to_end_under_adam():
    """Through measure(): no B_pre before Adam has state (said in a diagnostic), then B_pre with an interval."""
    from pathlib import Path

    from bsprof import MeasureConfig, measure

    spec = Path(__file__).parent / "assets" / "tiny_adam.py"
    report = measure(spec, MeasureConfig(steps=2, measure_every=1, rel_error=0.3, max_seconds=10, device="cpu",
                                         measure_budget=0))   # not cut by the training time: steady under load
    first, last = report.measurements[0], report.measurements[-1]
    assert first.b_pre.status == "not_available"  # Adam has no state before its first step
    assert last.b_pre.lo <= last.b_pre.value <= last.b_pre.hi and last.b_pre.value > 0
    codes = {d["code"] for d in report.diagnostics}
    assert {"adam", "b_pre_unavailable"} <= codes
    assert report.config["lr"] == report.config["optimizer_lr"] == 1e-2  # the spec's lr, not --lr's default 0.1
