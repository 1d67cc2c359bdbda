"""Figures: the noise scale against step and against loss, with its interval.

matplotlib is an extra (``pip install -e '.[figures]'`` in a clone, or ``pip install matplotlib``): without it
the report is written all the same, and a one-line note on the ``bsprof`` logger (stderr, unless configured
otherwise) says how to get the PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bsprof.results import Status

MISSING = "note: noise_scale.png not written: matplotlib is not installed (pip install matplotlib)"


def plot_noise_scale(report, path: Path) -> Path | None:
    """Write the figure to ``path``; None (and the note) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        logging.getLogger("bsprof").warning(MISSING)
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bsprof.output.files import atomic_path

    fig = noise_scale_figure(report)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def noise_scale_figure(report):
    """The matplotlib Figure: each noise scale against step and against loss; on the loss panel, the fit of
    B(L) that `bsprof schedule` follows (``schedule.plan.noise_fit``) when the report has one."""
    import matplotlib.pyplot as plt

    df = report.to_frame()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.0), layout="constrained")
    for ax, x, label in ((axes[0], "step", "training step"), (axes[1], "loss", "training loss")):
        _series(ax, df, x)
        ax.set_xlabel(label)
        ax.set_ylabel(f"noise scale ({report.unit})")
    _draw_fit(axes[1], report)
    if (df["loss"] > 0).all():
        axes[1].set_xscale("log")  # the noise scale changes most at low loss: spread those points
        axes[1].set_xlabel("training loss (log scale; falls to the right)")
        _label_all_ticks(axes[1].xaxis, *axes[1].get_xlim())
    axes[1].invert_xaxis()
    for ax in axes:
        if _positive(df):
            ax.set_yscale("log")
            _label_all_ticks(ax.yaxis, *ax.get_ylim())
        ax.grid(alpha=0.3, which="both")
    # one legend for both panels, below them: inside the axes "best" still covered points (a new user's fitted
    # 3.2 × B_simple), and one under each panel ran into its neighbour and was clipped (a trial's B_pre run)
    entries = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(text, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", fontsize=8, frameon=False,
                   ncol=min(3, len(entries)))
    conf = report.config.get("confidence", 0.9)
    exact = "stopped_by" in df and (df["stopped_by"] == "exact").any()
    missing = int((df["status"] == Status.UNDETERMINED.value).sum())
    marks = [m for m, shown in (("▲ lower bound", _has(df, "lower_bound")), ("◆ exact: the whole dataset", exact),
                                (f"B_simple undetermined at {missing} of {len(df)} steps, not shown", missing))
             if shown]
    fig.suptitle(f"Gradient noise scale along training ({'; '.join([f'{conf:.0%} intervals', *marks])})")
    return fig


def _draw_fit(ax, report) -> None:
    """B(L) as `bsprof schedule` fits it (default options), over the measured losses; nothing when it cannot fit."""
    from bsprof.errors import BsprofError
    from bsprof.results import optimizer_name
    from bsprof.schedule.plan import ScheduleConfig, calibration, measured_as, noise_fit

    try:
        fit, col, _ = noise_fit(report, ScheduleConfig(confidence=report.config.get("confidence", 0.9)))
    except (BsprofError, ValueError):
        return
    loss = np.geomspace(fit.loss_min, fit.loss_max, 100)
    name = {k: label for k, label, _, _ in SERIES}[col]
    k = calibration(optimizer_name(report.config), measured_as(col, report.measurements))
    name = f"{k:g} × {name}" if k != 1 else name   # the Adam family: the schedule follows k × the noise scale
    form = (f"B ∝ L^{_signed(-1 / fit.alpha)}" if fit.form == "power"  # the exponent itself: "α = -2" read oddly
            else "B = a + b/(L − L*), L* = %.3g" % fit.floor)
    ax.plot(loss, fit(loss), "-", color="k", lw=1.2, alpha=0.7, zorder=4,
            label=f"fit of {name} that `bsprof schedule` uses:\n{form}")
    if k != 1:  # the points the fit went through, so that the line does not float above the measured ones
        df = report.to_frame()
        ok = df[(df.get(f"{col}_status", df["status"]) == Status.OK.value) & df[col].notna()] if col in df else df[:0]
        color = {c: colour for c, _, _, colour in SERIES}[col]
        ax.scatter(ok["loss"], k * ok[col], marker="o", s=18, facecolors="none", edgecolors=color, zorder=4,
                   label=f"{name}: the points fitted")


SERIES = (("b_simple", "B_simple (fixed weights)", "o-", "C0"), ("b_simple_window", "B_simple (training steps)",
                                                                   "v:", "C2"),
          ("b_noise", "B_noise (Hessian)", "s--", "C1"), ("b_pre", "B_pre (Adam)", "D-.", "C4"))


def _series(ax, df, x: str) -> None:
    """Each measured noise scale: value with its interval; lower bounds as ▲ at the bound; exact values as ◆.
    Joined in time order against step; points alone against loss (where the fit is the line)."""
    for name, label, style, color in SERIES:
        if name not in df or not df[name].notna().any():
            continue
        status = df.get(f"{name}_status", df["status"] if name == "b_simple" else None)
        ok = df[(status == Status.OK.value) if status is not None else df[name].notna()]
        if len(ok):
            err = np.vstack([(ok[name] - ok[f"{name}_lo"]).clip(lower=0), (ok[f"{name}_hi"] - ok[name]).clip(lower=0)])
            ax.errorbar(ok[x], ok[name], yerr=err, fmt=style if x == "step" else style[0], color=color, capsize=3,
                        label=label, ms=4)
        if status is not None:
            lb = df[status == Status.LOWER_BOUND.value]
            if len(lb):
                ax.scatter(lb[x], lb[f"{name}_lo"], marker="^", color=color, label=f"{label}: lower bound")
        if name == "b_simple" and "stopped_by" in df:
            exact = df[df["stopped_by"] == "exact"]
            if len(exact):
                ax.scatter(exact[x], exact[name], marker="D", s=60, facecolors="none", edgecolors="k",
                           label="exact (whole dataset)", zorder=5)


def _positive(df) -> bool:
    return bool(df["b_simple"].notna().any() and (df["b_simple"].dropna() > 0).all())


def _signed(x: float) -> str:
    """An exponent with a true minus sign: −0.72, 1.5."""
    return f"{x:.2g}".replace("-", "−")


def _has(df, status: str) -> bool:
    return any(c.endswith("status") and (df[c] == status).any() for c in df.columns)


def _label_all_ticks(axis, lo: float, hi: float) -> None:
    """Plain-number labels on a log axis at 1, 2, 5 × 10^k; denser on a range of under 1.5 decades (1, 1.5, 2, 3,
    5, 7) or 0.8 (1, 1.5, 2, …, 8); about six evenly spaced under 0.5. matplotlib alone leaves the top of a
    short range unlabelled, and labels minor ticks as 3×10²."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    lo, hi = sorted((lo, hi))
    decades = np.log10(hi / lo) if lo > 0 else np.inf
    subs = (1, 1.5, 2, 3, 4, 5, 6, 7, 8) if decades < 0.8 else (1, 1.5, 2, 3, 5, 7) if decades < 1.5 else (1, 2, 5)
    axis.set_major_locator(MaxNLocator(6) if decades < 0.5 else LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
