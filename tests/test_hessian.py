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


def test_b_noise_draws_keep_to_the_measurements_time_limits():
    """``hessian_fields`` takes the measurement's limits after B_simple (``loop._left``: the budget left and its hard
    cap), as B_pre does: an interval that never bounds (GᵀHG ≤ 0 on an LSTM, a new user's run) went on to
    --max-seconds, 60 s a measurement against 0.1 s of training."""
    import dataclasses
    import time

    from bsprof.config import MeasureConfig
    from bsprof.engine.sampling import Sampling
    from bsprof.engine.scales import hessian_fields
    from bsprof.probes import PROBES
    from bsprof.stats.draw import Draw

    m = LeastSquares(LAM, DELTA, 0.1)
    cfg = MeasureConfig(rel_error=1e-6, max_seconds=60.0, min_draws=2)  # precision never stops it
    limits = Sampling(PROBES["hooks"], 1, 256, 64, True, 1e-6, 0.9, 2, 10**9, 0.5, budget_seconds=0.2)
    draws = [Draw(np.ones(1), np.ones(1), 1, 64, 1.0)]
    t0 = time.perf_counter()
    out = hessian_fields(net_at(m), ls_loss, FreshLeastSquares(m, 5), draws, cfg, 1.0, limits)
    assert time.perf_counter() - t0 < 5.0
    assert out["b_noise_stopped_by"] in ("time", "budget")
    unlimited = dataclasses.replace(limits, max_seconds=float("inf"), budget_seconds=float("inf"))
    out = hessian_fields(net_at(m), ls_loss, FreshLeastSquares(m, 5), draws,
                         dataclasses.replace(cfg, max_seconds=1.0), 1.0, unlimited)
    assert out["b_noise_stopped_by"] == "time"  # --max-seconds still holds


def test_an_undetermined_b_noise_at_negative_curvature_is_said():
    """GᵀHG ≤ 0 (weights where the loss curves down along the gradient) leaves B_noise undetermined: a note says why
    (a new user saw 'undetermined' on an LSTM with no word about it)."""
    from bsprof.engine.diagnostics import _curvature
    from bsprof.output.report import Report
    from bsprof.results import Estimate, Hessian, Measurement

    def row(step, gHg, b_noise):
        return Measurement(step, 1.0, Estimate(10.0, 8.0, 12.0), Estimate(1.0, 0.5, 1.5), 10.0,
                           b_noise=b_noise, hessian=Hessian(gHg, 5.0, Estimate.none(), 5))
    report = Report(measurements=[row(0, 2.0, Estimate(20.0, 15.0, 25.0)), row(15, -0.31, Estimate.none()),
                                  row(30, -0.02, Estimate.none())])
    _curvature(report)
    [note] = [d["message"] for d in report.diagnostics if d["code"] == "b_noise_curvature"]
    assert note.startswith("B_noise is undetermined at step 15, 30: the curvature along the gradient GᵀHG was not "
                           "positive there (estimated -0.31, -0.02)")
    ok = Report(measurements=[row(0, 2.0, Estimate(20.0, 15.0, 25.0))])
    _curvature(ok)
    assert not ok.diagnostics


def test_b_noise_cut_short_of_min_draws_is_undetermined_and_said():
    """--max-seconds ending B_noise before --min-draws leaves a Fieller interval over 2–4 draws, whose coverage is
    poor (a reviewer's finding): it is reported undetermined, and a note says how many draws fit. The measurement's
    own cap (``loop._left``) applies only from --min-draws on."""
    import math

    from bsprof.config import MeasureConfig
    from bsprof.engine.diagnostics import _curvature
    from bsprof.engine.sampling import Sampling
    from bsprof.engine.scales import hessian_fields
    from bsprof.output.report import Report
    from bsprof.probes import PROBES
    from bsprof.results import Estimate, Hessian, Measurement
    from bsprof.stats.draw import Draw

    m = LeastSquares(LAM, DELTA, 0.1)
    draws = [Draw(np.ones(1), np.ones(1), 1, 64, 1.0)]
    cfg = MeasureConfig(rel_error=1e-6, max_seconds=0.3, min_draws=10**6)  # (50 fit in 0.3 s on a quiet machine)
    out = hessian_fields(net_at(m), ls_loss, FreshLeastSquares(m, 6), draws, cfg, 1.0)
    assert out["hessian"].n_draws < 10**6 and math.isnan(out["b_noise"].value)
    cfg = MeasureConfig(rel_error=1e-6, max_seconds=60.0, min_draws=4)
    capped = Sampling(PROBES["hooks"], 1, 256, 64, True, 1e-6, 0.9, 4, 10**9, 1e-3, budget_seconds=1e-3)
    out = hessian_fields(net_at(m), ls_loss, FreshLeastSquares(m, 6), draws, cfg, 1.0, capped)
    assert out["hessian"].n_draws == 4 and out["b_noise_stopped_by"] == "time"  # the cap waits for --min-draws
    row = Measurement(10, 1.0, Estimate(10.0, 8.0, 12.0), Estimate(1.0, 0.5, 1.5), 10.0, b_noise=out["b_noise"],
                      hessian=Hessian(2.0, 5.0, Estimate.none(), 3))
    report = Report(config={"min_draws": 5}, measurements=[row])
    _curvature(report)
    [note] = [d["message"] for d in report.diagnostics if d["code"] == "b_noise_short"]
    assert note.startswith("B_noise at step 10: only 3 of the 5 draws it needs at least (--min-draws) fit in "
                           "--max-seconds")


def test_b_noise_and_b_pre_share_one_cap(monkeypatch):
    """Under a budget, with --hessian and an Adam-family optimizer, B_noise gets half of the limits left after
    B_simple and B_pre what B_noise left: the measurement takes B_simple's time plus one cap (a reviewer's finding:
    each got the whole cap, so two)."""
    import time

    import torch

    from bsprof.config import MeasureConfig
    from bsprof.engine import scales
    from bsprof.engine.sampling import Sampling
    from bsprof.probes import PROBES

    seen = {}

    def noise(model, loss_fn, examples, draws, cfg, scale, sampling=None):
        seen["noise"] = (sampling.budget_seconds, sampling.max_seconds)
        time.sleep(0.2)
        return {}

    def pre(model, loss_fn, examples, optimizer, sampling, group, cfg, scale):
        seen["pre"] = (sampling.budget_seconds, sampling.max_seconds)
        return {}

    monkeypatch.setattr(scales, "hessian_fields", noise)
    monkeypatch.setattr(scales, "preconditioned_fields", pre)
    monkeypatch.setattr(scales, "regression_part", lambda draws, scale: None)
    net = torch.nn.Linear(2, 1)
    adam = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 2)).sum().backward()
    adam.step()  # Adam has state: B_pre follows
    limits = Sampling(PROBES["hooks"], 1, 256, 64, True, 0.1, 0.9, 2, 10**9, 2.0, budget_seconds=1.0)
    cfg = MeasureConfig(hessian=True)
    scales.extra_fields(net, None, None, [], cfg, adam, limits, 0, 1.0)
    assert seen["noise"] == (0.5, 1.0)
    assert 0 <= seen["pre"][0] <= 0.8 and 0 < seen["pre"][1] <= 1.8  # what B_noise left of the budget and the cap
    scales.extra_fields(net, None, None, [], cfg, torch.optim.SGD(net.parameters(), lr=0.1), limits, 0, 1.0)
    assert seen["noise"] == (1.0, 2.0)  # no B_pre to follow: B_noise keeps the whole of them
