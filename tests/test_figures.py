"""The figure: measured noise scales with their intervals, and the fit `bsprof schedule` follows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from bsprof.output.figures import noise_scale_figure, plot_noise_scale  # noqa: E402
from bsprof.output.report import Report  # noqa: E402
from bsprof.schedule.plan import ADAM_FACTORS, ScheduleConfig, noise_fit  # noqa: E402

V1 = Path(__file__).parent / "assets" / "v1"
FIT = "that `bsprof schedule` uses"


def _labels(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def test_the_loss_panel_draws_the_schedules_fit(tmp_path):
    import matplotlib.pyplot as plt

    report = Report.from_json(V1 / "report_adam_hessian.json")  # Adam, no windows: `schedule` follows 2.5 × B_simple
    fig = noise_scale_figure(report)
    by_step, by_loss = fig.axes
    assert not any(FIT in t for t in _labels(by_step))
    [line] = [ln for ln in by_loss.get_lines() if FIT in ln.get_label()]
    fit, col, _ = noise_fit(report, ScheduleConfig())
    assert col == "b_simple" and line.get_label().startswith(
        f"fit of {ADAM_FACTORS['b_simple']:g} × B_simple (fixed weights) that `bsprof schedule` uses")
    x, y = line.get_data()
    np.testing.assert_allclose(y, fit(x))  # the very curve `schedule` fits, over the measured losses
    if fit.form == "power":  # the exponent itself ("α = -2" read oddly for a noise scale that fell with the loss)
        assert line.get_label().endswith("B ∝ L^" + f"{-1 / fit.alpha:.2g}".replace("-", "−"))
    assert x.min() == pytest.approx(fit.loss_min) and x.max() == pytest.approx(fit.loss_max)
    assert by_loss.get_xscale() == "log" and by_loss.get_xlabel() and by_loss.get_ylabel()
    # the points the fit went through, k × B_simple, so that the line does not float above the measured points
    [pts] = [c for c in by_loss.collections if c.get_label().endswith("the points fitted")]
    ok = [m for m in report.measurements if m.b_simple.ok]
    np.testing.assert_allclose(sorted(pts.get_offsets()[:, 1]),
                               sorted(ADAM_FACTORS["b_simple"] * m.b_simple.value for m in ok))
    plt.close(fig)
    assert plot_noise_scale(report, tmp_path / "f.png").stat().st_size > 1000


def test_no_fit_line_from_a_single_measurement():
    import matplotlib.pyplot as plt

    report = Report.from_json(V1 / "report_least_squares.json")  # --steps 0: one measurement
    assert len(report.measurements) == 1
    fig = noise_scale_figure(report)
    assert not any(FIT in t for ax in fig.axes for t in _labels(ax))
    assert any("B_simple" in t for t in _labels(fig.axes[1]))
    plt.close(fig)


def test_one_legend_below_both_panels_inside_the_figure():
    """A legend under each panel, two columns wide, ran into its neighbour and was clipped at the figure's edge
    with many series (a trial's B_pre run: "the points fitt"). Now one legend for both panels: each label once,
    drawn inside the figure and below both panels."""
    import matplotlib.pyplot as plt

    report = Report.from_json(V1 / "report_adam_hessian.json")
    fig = noise_scale_figure(report)
    fig.canvas.draw()
    [legend] = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == len(set(labels)) and any(FIT in t for t in labels)
    assert not any(ax.get_legend() for ax in fig.axes)
    box, page = legend.get_window_extent(), fig.bbox
    assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0
    assert all(box.y1 <= ax.get_tightbbox().y0 + 1 for ax in fig.axes)   # below the panels and their tick labels
    plt.close(fig)
