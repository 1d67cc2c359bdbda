"""The gradient noise scale of a user's own DDP training, from a DDP communication hook (the library path).

Each DDP step every rank r holds its local mean gradient G^{(r)}_b of b examples (its share of the step's batch);
the all-reduce turns them into G_B, B = W·b. That is a nested pair at the same weights (McCandlish et al. 2018,
App. A.1; docs/distributed.md):

    small_sq = (1/W) Σ_r |G^{(r)}_b|²,     big_sq = |G_B|²,     E|G_b|² = |G|² + tr(Σ)/b

so each step gives the unbiased |G|²_est = (B·big − b·small)/(B − b) and tr(Σ)_est = (small − big)/(1/b − 1/B),
and ``GradientNoiseScale.estimate`` combines steps as a ratio of means with a Fieller interval
(``bsprof.estimators.noise_scale``). The hook sees each bucket's local gradient before the all-reduce and the
reduced one after; squared norms add over buckets. Usage (docs/distributed.md)::

    gns = GradientNoiseScale(batch_size=per_rank_batch)
    ddp_model.register_comm_hook(gns, noise_scale_hook)
    ...  loss.backward(); gns.update(loss); optimizer.step()
    print(gns.estimate().b_simple)

Measure before gradient clipping; with AMP pass ``update(loss_scale=scaler.get_scale())`` (norms are divided by
its square). With ``no_sync`` gradient accumulation the hook runs on the last micro-step only: pass the examples
per rank per optimizer step as ``batch_size``.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
import torch.distributed as dist

from bsprof.stats.draw import Draw
from bsprof.stats.estimators import NoiseScale, noise_scale


class GradientNoiseScale:
    """The hook's state: this step's squared norms (summed over buckets) and one ``Draw`` per finished step.

    batch_size: examples per rank per step (b); B = world·b.  window: keep only the last ``window`` steps
    (the noise scale grows as the loss falls; None keeps every step since the last ``reset``).
    """

    def __init__(self, batch_size: int, process_group=None, window: int | None = None, confidence: float = 0.9):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        self.batch_size, self.group, self.confidence = batch_size, process_group, confidence
        self.draws: deque = deque(maxlen=window)  # of Draw
        self._small: torch.Tensor | None = None
        self._big: torch.Tensor | None = None

    @property
    def world(self) -> int:
        return dist.get_world_size(self.group)

    def add_bucket(self, small_sq: torch.Tensor, big_sq: torch.Tensor) -> None:
        """Add one bucket's (1/W)Σ_r|local|² and |reduced|² to this step (tensors, no device sync)."""
        self._small = small_sq if self._small is None else self._small + small_sq
        self._big = big_sq if self._big is None else self._big + big_sq

    def update(self, loss: float | torch.Tensor | None = None, loss_scale: float = 1.0) -> Draw | None:
        """Close the step (after backward, on every rank): one Draw of (small_sq, big_sq), b, B = W·b.

        Returns None when no bucket was reduced since the last call (e.g. a ``no_sync`` micro-step)."""
        if self._small is None:
            return None
        s2 = float(loss_scale) ** 2
        small, big = float(self._small) / s2, float(self._big) / s2
        self._small = self._big = None
        b = self.batch_size
        value = math.nan if loss is None else float(loss.detach() if torch.is_tensor(loss) else loss)
        draw = Draw(np.array([small]), np.array([big]), b, self.world * b, value, None)
        self.draws.append(draw)
        return draw

    def estimate(self) -> NoiseScale:
        """B_simple = tr(Σ)/|G|² over the kept steps: ratio of means, Fieller interval (needs W ≥ 2, 2+ steps)."""
        if not self.draws:
            raise ValueError("no step recorded yet: call update() after each backward pass")
        return noise_scale(list(self.draws), self.confidence, same_weights=False)  # steps along training

    def reset(self) -> None:
        self.draws.clear()
        self._small = self._big = None


def noise_scale_hook(state: GradientNoiseScale, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: the mean all-reduce DDP does by default, plus the two squared norms of the bucket.

    |local|² is averaged over ranks by a second, one-number all-reduce launched alongside the bucket's; both are
    asynchronous, so the hook adds no synchronisation to the backward pass.
    """
    group = state.group if state.group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    buf = bucket.buffer()
    local = torch.linalg.vector_norm(buf, dtype=torch.float32).double().square().reshape(1) / world
    buf.div_(world)
    grads = dist.all_reduce(buf, group=group, async_op=True).get_future()
    norms = dist.all_reduce(local, group=group, async_op=True).get_future()

    def done(_fut) -> torch.Tensor:
        reduced = grads.value()[0]
        state.add_bucket(norms.value()[0][0], torch.linalg.vector_norm(reduced, dtype=torch.float32).double()
                         .square())
        return reduced

    return torch.futures.collect_all([grads, norms]).then(done)


# DDP's register_comm_hook checks these annotations as objects (postponed annotations are strings)
noise_scale_hook.__annotations__.update(bucket=dist.GradBucket, state=GradientNoiseScale,
                                        **{"return": torch.futures.Future[torch.Tensor]})
