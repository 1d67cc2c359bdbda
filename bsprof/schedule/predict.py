"""Predictions of the McCandlish model along the loss path: steps and examples of a batch-size schedule.

McCandlish et al. 2018 (arXiv 1812.06162, eqs. 2.11–2.12): at noise scale B_n a batch B costs, per unit of
minimal steps (the steps an infinitely large batch would take),
    dS = (1 + B_n/B)·ds_min,      dE = (B_n + B)·ds_min,
so over the path    S = ∫(1 + B_n(L)/B(L)) ds_min,   E = ∫(B_n(L) + B(L)) ds_min,
and for a constant B_n this is S = S_min(1 + B_n/B), E = E_min(1 + B/B_n), B_crit = E_min/S_min.

S_min as a function of the loss is not measured directly. **Assumption:** the measured training run, between two
measurements, took Δs steps at its batch B_train with a (near-)optimal learning rate, so it made
    Δs_min = Δs/(1 + B_n(L̄)/B_train)
minimal steps, with B_n(L̄) the fitted noise scale at the geometric mean of the two losses (B_noise ≈ B_simple
when the report has no Hessian measurement). The measured losses are noisy (each is the mean loss of one
measurement's draws, and the iterate bounces); they are made monotone by a running minimum (steps taken while the
loss did not improve count towards the next improvement): the step at which a loss is first reached, as a sweep
(and a user watching a loss curve) counts it. A least-squares monotone fit of the trend (isotonic regression) reaches
each loss later; with the steps counted from step 0 it predicted 1.29× the steps swept at each batch, the running
minimum 1.15× (docs/science.md, "The loss curve behind S_min"). Below the lowest measured loss, ln S_min is
extrapolated linearly in ln L (a power-law loss curve L ∝ S^(−β)) from the last measured points. The probe's steps
before the path's first point (the start of its run to the first usable measurement) are a ``LeadIn``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LossPath:
    """A decreasing grid of losses from the start to the target, with S_min and B_n at each grid point."""

    loss: np.ndarray
    s_min: np.ndarray
    b_noise: np.ndarray

    @property
    def ds_min(self) -> np.ndarray:
        return np.diff(self.s_min)

    @property
    def b_mid(self) -> np.ndarray:
        """B_n at the segment midpoints (geometric mean of the end points)."""
        return np.sqrt(self.b_noise[:-1] * self.b_noise[1:])


def measured_minimal_steps(steps, loss, b_noise_fn, batch_train: float):
    """(losses, S_min) at the measured points made monotone (running minimum), S_min(first) = 0 (see module doc)."""
    steps, loss = running_minimum(steps, loss)
    s_min = [0.0]
    for j in range(1, len(loss)):
        mid = np.sqrt(loss[j] * loss[j - 1]) if loss[j] > 0 else 0.5 * (loss[j] + loss[j - 1])
        s_min.append(s_min[-1] + (steps[j] - steps[j - 1]) / (1 + float(b_noise_fn(mid)) / batch_train))
    return loss, np.array(s_min)


def running_minimum(steps, loss) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of the points that set a new lowest loss, in step order."""
    order = np.argsort(np.asarray(steps, float), kind="stable")
    s, l = np.asarray(steps, float)[order], np.asarray(loss, float)[order]
    keep = l < np.minimum.accumulate(np.concatenate([[np.inf], l[:-1]]))
    return s[keep], l[keep]


def _extrapolate_s_min(meas_loss, meas_s, loss):
    """ln S_min linear in ln L through the last (up to three) measured points with S_min > 0."""
    pos = meas_s > 0
    ll, ls = np.log(meas_loss[pos][-3:]), np.log(meas_s[pos][-3:])
    if len(ll) >= 2 and np.ptp(ll) > 0:
        slope, icpt = np.polyfit(ll, ls, 1)
        return np.maximum(np.exp(icpt + slope * np.log(loss)), meas_s[-1])
    slope = (meas_s[-1] - meas_s[-2]) / (np.log(meas_loss[-2]) - np.log(meas_loss[-1]))
    return meas_s[-1] + slope * (np.log(meas_loss[-1]) - np.log(loss))


def loss_path(meas_loss, meas_s, target: float, b_noise_fn, n: int = 400) -> LossPath:
    """The path from the first measured loss down to ``target`` on ``n`` segments, uniform in ln L."""
    grid = np.exp(np.linspace(np.log(meas_loss[0]), np.log(target), n + 1))
    inside = grid >= meas_loss[-1]
    s = np.empty_like(grid)
    s[inside] = np.interp(-np.log(grid[inside]), -np.log(meas_loss), meas_s)
    if (~inside).any():
        s[~inside] = _extrapolate_s_min(meas_loss, meas_s, grid[~inside])
    s = np.maximum.accumulate(s)
    return LossPath(grid, s, np.asarray(b_noise_fn(grid), float))


@dataclass(frozen=True)
class LeadIn:
    """The probe's steps from the start of its run to the path's first point, which the path does not cover (the
    first usable measurement of the followed noise scale comes after the start: e.g. the first training-step
    window ends at the first measurement after step 0).

    **Assumption:** over those Δs steps at the training batch B_train the noise scale was B_n = B_n(L_first), its
    fitted value at the path's first point (nothing was measured before it), so they made
        Δs_min = Δs/(1 + B_n/B_train)
    minimal steps, which at a batch B take Δs_min·(1 + B_n/B) steps and Δs_min·(B_n + B) examples (eqs. 2.11–2.12).
    A schedule runs its first stage's batch over them; ``start_loss`` is the loss at the start of the run."""

    start_step: float = 0.0    # the run's start (step 0 of the probe, or the log's first logged step)
    start_loss: float = float("nan")
    path_step: float = 0.0     # the path's first point, a step of that run
    path_loss: float = float("nan")
    s_min: float = 0.0         # Δs_min
    b_noise: float = 0.0       # B_n held over the lead-in

    @property
    def probe_steps(self) -> float:
        return self.path_step - self.start_step

    def steps(self, batch: float) -> float:
        return self.s_min * (1 + self.b_noise / batch)

    def examples(self, batch: float) -> float:
        return self.s_min * (self.b_noise + batch)


def lead_in(start_step: float, start_loss: float, path_step: float, path: LossPath, batch_train: float) -> LeadIn:
    """The ``LeadIn`` from the run's start (step, loss) to the first point of ``path`` (at ``path_step``)."""
    b_n, ds = float(path.b_noise[0]), max(0.0, float(path_step) - float(start_step))
    return LeadIn(float(start_step), float(start_loss), float(path_step), float(path.loss[0]),
                  ds / (1 + b_n / batch_train), b_n)


def integrate(path: LossPath, batches) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (steps, examples) at each grid point for one batch size per segment (eqs. 2.11–2.12)."""
    b = np.broadcast_to(np.asarray(batches, float), path.ds_min.shape)
    ds = (1 + path.b_mid / b) * path.ds_min
    de = (path.b_mid + b) * path.ds_min
    return np.concatenate([[0.0], np.cumsum(ds)]), np.concatenate([[0.0], np.cumsum(de)])


def critical_batch(path: LossPath) -> dict:
    """S_min, E_min = ∫B_n ds_min and B_crit = E_min/S_min over the path (eq. 2.12)."""
    s_min = float(path.ds_min.sum())
    e_min = float((path.b_mid * path.ds_min).sum())
    return {"s_min": s_min, "e_min": e_min, "b_crit": e_min / s_min if s_min > 0 else float("nan")}


def constant_batch(path: LossPath, batch: float) -> dict:
    """Predicted steps and examples to the end of the path at a constant batch."""
    s, e = integrate(path, batch)
    return {"batch_size": batch, "steps": float(s[-1]), "examples": float(e[-1])}
