"""The tracker's numbers where people look: TensorBoard, Weights & Biases, a Lightning logger, or any callable.

    log = log_to(tracker, SummaryWriter("runs/x"), every=10, window=100)
    for ...:                                   # the training loop
        ...; tracker.step(loss=loss); optimizer.step(); optimizer.zero_grad()
        log()                                  # writes on every 10th tracked step

Tags, all under one prefix (``bsprof/`` by default), written only when finite:

    b_simple, b_simple_lo, b_simple_hi   B_simple = tr(Σ)/|G|² over the last ``window`` steps, with its interval
                                         (a ratio of window means, ``bsprof.track.window``); a LOWER_BOUND window
                                         has no value and hi = ∞, so only b_simple_lo is written
    b_pre                                B_pre = tr(PΣ)/(GᵀPG) over the window (``precondition=True`` under Adam)
    tr_sigma, g2                         the window's unbiased tr(Σ) and |G|² (scale: see the tracker's docstring)
    b_simple_ema                         EMA(tr(Σ))/EMA(|G|²), no interval (the ratio of EMAs, never an EMA of ratios)

The raw per-step pairs go to the tracker's JSONL log (``Tracker(log=...)``), which the callbacks always write;
these scalars are a view of it. A sink is found by the first rule in ``SINKS`` that matches it (a plain mapping).
"""

from __future__ import annotations

from collections.abc import Callable

from bsprof.errors import ConfigError
from bsprof.results import finite
from bsprof.track.tracker import check_window, positive_int
from bsprof.track.window import windowed

PREFIX = "bsprof/"


def scalars(tracker, window: int | None = 100, prefix: str = PREFIX) -> dict[str, float]:
    """The tracker's current numbers as {tag: float} (module docstring); empty before two tracked steps."""
    if len(tracker.draws) < 2:
        return {}
    ns = windowed(tracker.draws, window, tracker.confidence)
    values = {"b_simple": ns.b_simple, "b_simple_lo": ns.b_simple_lo, "b_simple_hi": ns.b_simple_hi,
              "tr_sigma": ns.trace_sigma, "g2": ns.g2, "b_simple_ema": tracker.ema_view.b_simple}
    if len(tracker.draws_pre) >= 2:
        values["b_pre"] = tracker.estimate_pre(window).value
    return {prefix + k: float(v) for k, v in values.items() if v is not None and finite(float(v))}


# -- sinks: (does this object look like it?, write {tag: value} at step) -------------------------------------
def _tensorboard(sink, values: dict, step: int) -> None:
    for tag, v in values.items():
        sink.add_scalar(tag, v, global_step=step)


def _lightning(sink, values: dict, step: int) -> None:
    sink.log_metrics(values, step=step)


def _wandb(sink, values: dict, step: int) -> None:
    sink.log(values, step=step)


def _callable(sink, values: dict, step: int) -> None:
    sink(values, step)


SINKS: dict[str, tuple[Callable, Callable]] = {
    "tensorboard": (lambda s: callable(getattr(s, "add_scalar", None)), _tensorboard),   # SummaryWriter
    "lightning": (lambda s: callable(getattr(s, "log_metrics", None)), _lightning),      # a Lightning Logger
    "wandb": (lambda s: callable(getattr(s, "log", None)), _wandb),                      # wandb.run, wandb module
    "callable": (callable, _callable),                                                    # f(values, step)
}


def kind_of(sink) -> str:
    """The name of the first rule in ``SINKS`` that matches ``sink``."""
    for name, (matches, _) in SINKS.items():
        if matches(sink):
            return name
    if sink is None:   # wandb.run before wandb.init(), a logger not made yet
        raise ConfigError("cannot log to None (wandb.run is None until wandb.init() is called)",
                          "call wandb.init() first, or pass a SummaryWriter, a Lightning logger, or f(values, step)")
    raise ConfigError(f"cannot log to a {type(sink).__name__}: it has no add_scalar, log_metrics or log method and "
                      "is not callable", "pass a SummaryWriter, a wandb run, a Lightning logger, or f(values, step)")


def write(sink, values: dict[str, float], step: int) -> None:
    """Write ``values`` at ``step`` to ``sink`` (nothing when ``values`` is empty)."""
    if values:
        SINKS[kind_of(sink)][1](sink, values, int(step))


class LogEvery:
    """Called after ``tracker.step()``: writes ``scalars(tracker, window)`` to every sink on every ``every``-th
    tracked step (counted by the tracker). Returns what it wrote (an empty dict when it did not write)."""

    def __init__(self, tracker, sinks: list, every: int = 1, window: int | None = 100, prefix: str = PREFIX):
        if not positive_int(every):
            raise ConfigError(f"every must be at least 1 (got {every!r})", "log every N tracked steps, N >= 1")
        check_window(window)
        for s in sinks:
            kind_of(s)  # fail now, not at the first write
        self.tracker, self.sinks, self.every, self.window, self.prefix = tracker, sinks, every, window, prefix
        self.last_step = -1

    def __call__(self, step: int | None = None) -> dict[str, float]:
        step = self.tracker.step_count - 1 if step is None else int(step)
        if step == self.last_step or (step + 1) % self.every:
            return {}
        self.last_step = step
        values = scalars(self.tracker, self.window, self.prefix)
        for s in self.sinks:
            write(s, values, step)
        return values


def log_to(tracker, *sinks, every: int = 1, window: int | None = 100, prefix: str = PREFIX) -> LogEvery:
    """A ``LogEvery`` writing the tracker's scalars to ``sinks`` (module docstring)."""
    return LogEvery(tracker, list(sinks), every, window, prefix)


__all__ = ["PREFIX", "SINKS", "LogEvery", "kind_of", "log_to", "scalars", "write"]
