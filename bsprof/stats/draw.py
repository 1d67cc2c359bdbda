"""Raw gradient statistics: the numbers that flow from the probes to the estimators.

A *draw* is one nested small/big batch pair at fixed weights (McCandlish et al. 2018, App. A.1):
B examples drawn without replacement, split into small batches of b examples each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Draw:
    """One nested pair, per parameter group (arrays of length L, one entry per group).

    small_sq: mean over the B/b small batches of |G_b|²   (b = 1: mean of per-example |g_i|²)
    big_sq:   |G_B|² of the mean gradient of all B examples
    loss:     mean loss of the B examples
    n:        population size the B examples were drawn from (None: infinite / with replacement)
    """

    small_sq: np.ndarray
    big_sq: np.ndarray
    b: int
    B: int
    loss: float
    n: int | None = None
    # |G_{jb}|² of the partial sums j = 1..k (for the 1/B regression); optional, totals only
    partial_sq: tuple[float, ...] = field(default=())
    # data-parallel ranks (bsprof.distributed): mean over the W ranks of |G|² of each rank's B/W examples
    local_sq: np.ndarray | None = None
    world: int = 1

    @classmethod
    def of_totals(cls, small_sq: float, big_sq: float, b: int, B: int, loss: float, n: int | None = None) -> Draw:
        """One group's pair from its two totals (the tracker's steps), which are kept as given rather than summed
        again from the arrays."""
        draw = cls(np.array([small_sq]), np.array([big_sq]), b, B, loss, n)
        draw.__dict__.update(small_sq_total=float(small_sq), big_sq_total=float(big_sq))  # the cached properties
        return draw

    @property
    def exact(self) -> bool:
        """Every example of a finite dataset, one by one: |G|² and tr(Σ) are known exactly."""
        return self.n is not None and self.B == self.n and self.b == 1

    @cached_property  # read several times per tracker step; a numpy sum costs ~10 µs there (the arrays never change)
    def small_sq_total(self) -> float:
        return float(self.small_sq.sum())

    @cached_property
    def big_sq_total(self) -> float:
        return float(self.big_sq.sum())
