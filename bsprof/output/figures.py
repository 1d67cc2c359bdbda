"""Figures: the noise scale against step and against loss, with its interval.

matplotlib is an extra (``pip install 'bsprof[figures]'``): without it the report is written all the same, and a
one-line note on the ``bsprof`` logger (stderr, unless configured otherwise) says how to get the PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bsprof.results import Status

MISSING = "note: noise_scale.png not written: matplotlib is not installed (pip install 'bsprof[figures]')"


def plot_noise_scale(report, path: Path) -> Path | None:
    """Write the figure to ``path``; None (and the note) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        logging.getLogger("bsprof").warning(MISSING)
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = report.to_frame()
    ok = df[df["status"] == Status.OK.value]
    lb = df[df["status"] == Status.LOWER_BOUND.value]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, x, label in ((axes[0], "step", "training step"), (axes[1], "loss", "loss")):
        if len(ok):
            err = np.vstack([ok["b_simple"] - ok["b_simple_lo"], ok["b_simple_hi"] - ok["b_simple"]])
            ax.errorbar(ok[x], ok["b_simple"], yerr=err, fmt="o-", capsize=3, label="B_simple")
        if len(lb):
            ax.scatter(lb[x], lb["b_simple_lo"], marker="^", color="C3", label="lower bound")
        if "b_noise" in df and df["b_noise"].notna().any():
            ax.plot(df[x], df["b_noise"], "s--", label="B_noise")
        ax.set_xlabel(label)
        ax.set_ylabel(f"noise scale ({report.unit})")
        if len(ok) and (ok["b_simple"] > 0).all():
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[1].invert_xaxis()
    conf = report.config.get("confidence", 0.9)
    fig.suptitle(f"Gradient noise scale B_simple = tr(Σ)/|G|² ({conf:.0%} intervals)")
    from bsprof.output.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
