"""Make a Schedule take effect in a PyTorch training loop.

adadamp's DataLoader reads the batch size once per iterator, so later sizes never apply. Here the
batch sampler asks the schedule for the size of EVERY batch it yields:

    sampler = ScheduledBatchSampler(len(dataset), schedule, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler)
    for x, y in loader:                       # len(x) == schedule.batch_size_at(step=sampler.step - 1) / world
        ...; opt.step()
        for g in opt.param_groups: g["lr"] = schedule.lr_at(step=sampler.step)
        sampler.observe_loss(loss.item())     # optional: follow the schedule by loss instead of by step

With ``num_workers > 0`` the DataLoader draws indices ``prefetch_factor × num_workers`` batches ahead, so a change
takes effect that many batches late; with ``num_workers = 0`` it is exact.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ScheduledBatchSampler(Sampler[list[int]]):
    """Yields index lists whose length is read from ``schedule`` at each batch.

    One *step* is one optimizer step; with ``micro_batches=True`` a step is ``accumulation`` micro-batches of
    ``micro_batch`` indices, otherwise one batch of ``batch_size / world_size``. Data-parallel: each rank passes its
    ``rank`` and takes its slice of a common shuffled order (same ``seed`` on every rank). The step counter and the
    position in the epoch survive across ``iter()`` calls; an epoch ends when the shuffled order is used up, and so
    does one pass of a DataLoader over it: loop over the loader once per epoch (``zip(range(steps), loader)``
    stops at the end of the first epoch).
    """

    def __init__(self, dataset_len: int, schedule, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, micro_batches: bool = False, by_loss: bool = False):
        self.n, self.schedule, self.shuffle, self.seed = int(dataset_len), schedule, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.micro_batches, self.by_loss = micro_batches, by_loss
        self.step, self.epoch, self.loss = 0, 0, None
        self._micro_in_step = 0

    def observe_loss(self, loss: float) -> None:
        """Record the latest training loss (used when ``by_loss=True``)."""
        self.loss = float(loss)

    def current_stage(self):
        if self.by_loss and self.loss is not None:
            return self.schedule.stage_at(loss=self.loss)
        return self.schedule.stage_at(step=self.step)

    def _size(self) -> tuple[int, int]:
        """(per-rank indices in the next batch, batches per optimizer step)."""
        stage = self.current_stage()
        if self.micro_batches:
            return stage.micro_batch, stage.accumulation
        return max(1, stage.batch_size // self.world_size), 1

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        order, pos = self._order(), 0
        while True:
            per_rank, per_step = self._size()
            total = per_rank * self.world_size
            chunk = order[pos:pos + total]
            if not chunk or (self.drop_last and len(chunk) < total):
                break
            pos += total
            self._micro_in_step += 1
            if self._micro_in_step >= per_step:
                self.step, self._micro_in_step = self.step + 1, 0
            yield chunk[self.rank::self.world_size]
        self.epoch += 1

    def __len__(self) -> int:
        """Batches in an epoch at the current size (an estimate: the size may grow during the epoch)."""
        per_rank, _ = self._size()
        total = per_rank * self.world_size
        return self.n // total if self.drop_last else -(-self.n // total)
