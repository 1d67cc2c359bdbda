"""The noisy quadratic model (Zhang et al. 2019, arXiv 1907.04164, §3), where steps-to-target are exact.

    L(θ) = ½ Σ_i h_i θ_i²,   stochastic gradient g = Hθ + ξ,   cov(ξ) = C/B = diag(c_i)/B.

SGD with learning rate α evolves the second moments of every coordinate independently and exactly:
    E[θ_i²]_{t+1} = (1 − αh_i)²·E[θ_i²]_t + α²c_i/B,
    E[θ_i²]_t = r_i^t (m_i0 − m_i∞) + m_i∞,   r_i = (1 − αh_i)²,   m_i∞ = αc_i / (B h_i (2 − αh_i)),
and the expected loss is E[L]_t = ½ Σ h_i E[θ_i²]_t (Zhang et al. eq. 6). Steps are treated as a continuous
variable (the same closed form), so steps-to-target are smooth in α and B.

The noise scales at the expected state (per-example covariance Σ = C, G = Hθ):
    B_simple = tr(C)/Σ h_i² E[θ_i²],    B_noise = tr(HC)/Σ h_i³ E[θ_i²]    (McCandlish et al. 2018, eqs. 2.8–2.9).
The default problem: d = 100, h_i = c_i = 1/i, θ_0 = 1 per coordinate, target 5% of the initial loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize as _opt

from bsprof.sweep.fit import fit_critical_batch  # noqa: F401  (moved; kept importable from here)


@dataclass(frozen=True)
class NQM:
    h: np.ndarray
    c: np.ndarray
    m0: np.ndarray   # E[θ_i²] at t = 0

    @classmethod
    def default(cls, d: int = 100) -> NQM:
        h = 1.0 / np.arange(1, d + 1)
        return cls(h, h.copy(), np.ones(d))

    @property
    def loss0(self) -> float:
        return 0.5 * float(self.h @ self.m0)

    def moments(self, t, lr: float, batch: float, m0=None) -> np.ndarray:
        """E[θ_i²] after t SGD steps (closed form above); t may be an array (then shape [len(t), d])."""
        m0 = self.m0 if m0 is None else m0
        r = (1 - lr * self.h) ** 2
        m_inf = lr * self.c / (batch * self.h * (2 - lr * self.h))
        t = np.asarray(t, float)[..., None]
        return r ** t * (m0 - m_inf) + m_inf

    def loss(self, t, lr: float, batch: float) -> np.ndarray:
        return 0.5 * self.moments(t, lr, batch) @ self.h

    def noise_scales(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B_simple, B_noise) at second moments ``m`` (rows)."""
        return self.c.sum() / (m @ self.h ** 2), (self.h @ self.c) / (m @ self.h ** 3)

    def steps_to(self, target: float, lr: float, batch: float) -> float:
        """The (continuous) number of steps until E[L] ≤ target; ∞ if the noise floor is above the target."""
        if not 0 < lr < 2 / self.h.max() or self.loss(1e9, lr, batch) >= target:
            return math.inf
        hi = 1.0
        while self.loss(hi, lr, batch) > target:
            hi *= 2
        return _opt.brentq(lambda t: float(self.loss(t, lr, batch)) - target, 0.0, hi, xtol=1e-6)

    def optimal_steps(self, target: float, batch: float) -> tuple[float, float]:
        """(steps, lr) with the learning rate tuned for this batch: grid in ln α, then a bounded refinement."""
        grid = np.exp(np.linspace(math.log(1e-4), math.log(1.999 / self.h.max()), 60))
        steps = [self.steps_to(target, a, batch) for a in grid]
        k = int(np.argmin(steps))
        lo, hi = math.log(grid[max(k - 1, 0)]), math.log(grid[min(k + 1, len(grid) - 1)])
        r = _opt.minimize_scalar(lambda x: self.steps_to(target, math.exp(x), batch), bounds=(lo, hi),
                                 method="bounded", options={"xatol": 1e-5})
        return (float(r.fun), math.exp(r.x)) if r.fun < steps[k] else (float(steps[k]), float(grid[k]))


def sweep(model: NQM, target_fraction: float = 0.05, batches=None) -> dict:
    """Exact steps to target per batch (lr tuned per batch) and the fitted S_min, B_crit."""
    batches = [2 ** k for k in range(0, 13)] if batches is None else batches
    target = target_fraction * model.loss0
    rows = [(b, *model.optimal_steps(target, b)) for b in batches]
    s_min, b_crit = fit_critical_batch([r[0] for r in rows], [r[1] for r in rows])
    return {"target": target, "s_min": s_min, "b_crit": b_crit,
            "rows": [{"batch_size": b, "steps": s, "lr": a} for b, s, a in rows]}


def measurement_rows(model: NQM, batch: float, lr: float, steps: int, n: int = 12, rel: float = 0.02) -> list[dict]:
    """Report rows of a training run at (batch, lr): expected loss, B_simple, B_noise at ``n`` steps in [0, steps],
    with ±``rel`` intervals, as a noise-scale measurement would record them."""
    t = np.linspace(0, steps, n).round()
    m = model.moments(t, lr, batch)
    b_simple, b_noise = model.noise_scales(m)
    rows = []
    for ti, mi, bs, bn in zip(t, m, b_simple, b_noise):
        rows.append({"step": int(ti), "examples_seen": int(ti * batch), "loss": 0.5 * float(mi @ model.h),
                     "g2": float(mi @ model.h ** 2), "trace_sigma": float(model.c.sum()),
                     "b_simple": float(bs), "b_simple_lo": float(bs) * (1 - rel), "b_simple_hi": float(bs) * (1 + rel),
                     "b_noise": float(bn), "b_noise_lo": float(bn) * (1 - rel), "b_noise_hi": float(bn) * (1 + rel),
                     "status": "ok", "method": "nqm-exact", "n_draws": 1, "examples": 0})
    return rows
