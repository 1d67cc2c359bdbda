"""Ground truth (docs/science.md §5): models whose noise scales are known in closed form, and exact gradient draws.

V1, the 1-D example: f_i = ½(y_i − w)², g_i = w − y_i, H = 1, so B_simple = B_noise = s²/(w − ȳ)².

V2, linear least squares with x ~ N(0, Λ), Λ = diag(λ), y = xᵀw* + ξ, ξ ~ N(0, σ²), ℓ = ½(xᵀw − y)², Δ = w − w*:
    g = x(xᵀΔ − ξ),  G = ΛΔ,  H = E[xxᵀ] = Λ.
    For Gaussian x, E[xxᵀΔΔᵀxxᵀ] = 2ΛΔΔᵀΛ + (ΔᵀΛΔ)Λ (Isserlis), hence
    Σ = E[ggᵀ] − GGᵀ = ΛΔΔᵀΛ + (ΔᵀΛΔ + σ²)Λ
    |G|² = ΔᵀΛ²Δ,  tr(Σ) = ΔᵀΛ²Δ + (ΔᵀΛΔ + σ²)·tr Λ
    GᵀHG = ΔᵀΛ³Δ,  tr(HΣ) = ΔᵀΛ³Δ + (ΔᵀΛΔ + σ²)·tr Λ²
    with a diagonal preconditioner P = diag(p): GᵀPG = Σ p λ²Δ², tr(PΣ) = Σ p λ²Δ² + (ΔᵀΛΔ + σ²)·Σ p λ.
    Λ = I gives McCandlish's B_simple = B_noise = d + 1 + dσ²/|Δ|².

Everything but ``FreshLeastSquares`` is numpy: the coverage study simulates draws from these models through the
same estimator code as the tool (``bsprof.estimators.noise_scale`` on ``Draw`` objects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bsprof.stats.draw import Draw


@dataclass(frozen=True)
class OneD:
    """V1 with y ~ N(0, 1) (infinite population), or a finite population ``y`` drawn without replacement."""

    w: float
    y: np.ndarray | None = None

    @property
    def n(self) -> int | None:
        return None if self.y is None else len(self.y)

    @property
    def b_simple(self) -> float:
        if self.y is None:
            return 1.0 / self.w ** 2
        return float(self.y.var() / (self.w - self.y.mean()) ** 2)

    b_noise = b_simple

    def grads(self, rng: np.random.Generator, reps: int, count: int) -> np.ndarray:
        """[reps, count, 1] per-example gradients; without replacement inside each rep for a finite y."""
        if self.y is None:
            y = rng.standard_normal((reps, count))
        else:
            y = self.y[np.argsort(rng.random((reps, len(self.y))), axis=1)[:, :count]]
        return (self.w - y)[..., None]


@dataclass(frozen=True)
class LeastSquares:
    """V2 with anisotropic Gaussian inputs x ~ N(0, diag(lam)); formulas in the module docstring."""

    lam: np.ndarray
    delta: np.ndarray
    sigma2: float
    n = None

    @classmethod
    def isotropic(cls, d: int, delta_sq: float, sigma2: float) -> LeastSquares:
        return cls(np.ones(d), np.full(d, np.sqrt(delta_sq / d)), sigma2)

    @property
    def _s(self) -> float:  # ΔᵀΛΔ + σ²
        return float(self.lam @ self.delta ** 2 + self.sigma2)

    @property
    def g2(self) -> float:
        return float((self.lam * self.delta) @ (self.lam * self.delta))

    @property
    def trace_sigma(self) -> float:
        return self.g2 + self._s * float(self.lam.sum())

    @property
    def b_simple(self) -> float:
        return self.trace_sigma / self.g2

    @property
    def gHg(self) -> float:
        return float(self.lam ** 3 @ self.delta ** 2)

    @property
    def trace_h_sigma(self) -> float:
        return self.gHg + self._s * float((self.lam ** 2).sum())

    @property
    def b_noise(self) -> float:
        return self.trace_h_sigma / self.gHg

    @property
    def eps_max(self) -> float:
        return self.g2 / self.gHg

    def b_pre(self, p: np.ndarray) -> float:
        """tr(PΣ)/(GᵀPG) for P = diag(p)."""
        gpg = float(p * self.lam ** 2 @ self.delta ** 2)
        return (gpg + self._s * float(p @ self.lam)) / gpg

    def sigma(self) -> np.ndarray:
        """The full covariance Σ = ΛΔΔᵀΛ + (ΔᵀΛΔ + σ²)Λ."""
        G = self.lam * self.delta
        return np.outer(G, G) + self._s * np.diag(self.lam)

    def grads(self, rng: np.random.Generator, reps: int, count: int) -> np.ndarray:
        """[reps, count, d] exact per-example gradients g = x(xᵀΔ − ξ)."""
        x = rng.standard_normal((reps, count, len(self.lam))) * np.sqrt(self.lam)
        r = x @ self.delta - np.sqrt(self.sigma2) * rng.standard_normal((reps, count))
        return x * r[..., None]


def draws_from_grads(g: np.ndarray, b: int, n: int | None = None, step: int | None = None) -> list[Draw]:
    """One ``Draw`` per rep from per-example gradients [reps, B, d], with small batches of b and partial sums at
    ``sampling.partial_marks(step, B)`` (step = b for micro-batches, as in ``sampling.one_draw``)."""
    from bsprof.engine.sampling import partial_marks
    reps, B, _ = g.shape
    big = np.square(g.mean(1)).sum(-1)
    small = np.square(g.reshape(reps, B // b, b, -1).mean(2)).sum(-1).mean(1)
    step = step or (b if b > 1 else 16)
    csum = np.cumsum(g, axis=1)
    marks = sorted(partial_marks(step, B))
    partial = [np.square(csum[:, m - 1] / m).sum(-1) for m in marks]
    return [Draw(np.array([small[r]]), np.array([big[r]]), b, B, 0.0, n,
                 tuple((m, float(p[r])) for m, p in zip(marks, partial))) for r in range(reps)]


def simulate(model, rng: np.random.Generator, reps: int, draws: int, b: int, B: int) -> list[list[Draw]]:
    """``reps`` independent measurements of ``draws`` draws each (b, B fixed): a list of draw lists."""
    out = []
    for _ in range(draws):
        out.append(draws_from_grads(model.grads(rng, reps, B), b, model.n))
    return [list(ds) for ds in zip(*out)]


class FreshLeastSquares:
    """An endless i.i.d. stream from a LeastSquares model (w* = 0), a ``bsprof.engine.source.DrawSource``, so
    that ``sampling.measure_at`` and ``hessian.measure_b_noise`` run on fresh data from the closed form (torch,
    float64)."""

    n = None
    iterable = True

    def __init__(self, model: LeastSquares, seed: int):
        import torch

        self.torch, self.model = torch, model
        self.gen = torch.Generator().manual_seed(seed)
        self.w_star = torch.zeros(len(model.lam), dtype=torch.float64)

    def draw(self, B: int):
        t = self.torch
        x = t.randn(B, len(self.model.lam), generator=self.gen, dtype=t.float64) * t.tensor(self.model.lam).sqrt()
        y = x @ self.w_star + math.sqrt(self.model.sigma2) * t.randn(B, generator=self.gen, dtype=t.float64)
        return x, y

    def batches(self, drawn, size: int):
        x, y = drawn
        for s in range(0, len(x), size):
            yield (x[s:s + size], y[s:s + size]), len(x[s:s + size])
