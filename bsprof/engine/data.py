"""Drawing examples: training batches (shuffled epochs) and measurement draws (without replacement).

A measurement draw of B examples from a map-style dataset of n is uniform without replacement, so the
finite-population correction applies (estimators.noise_coefficient). Under DDP (``world`` > 1) every rank
generates the same global draw or training batch (a shared seed) and keeps its own disjoint contiguous
slice. An iterable dataset is read in order (not i.i.d.; the report says so), training and measurements each from
their own iterator (so that measuring never changes the training), restarted when it runs out; a finite one's
length is then known (``stream_length``), and the report says that draws went round it without the
finite-population correction (a trial's 200-item stream measured 26.4 [25.1, 27.5] against the exact 21.7).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import IterableDataset, default_collate

from bsprof.errors import DataError


class Rows(torch.utils.data.Dataset):
    """A tensor's rows as examples (one tensor each, collated back to a tensor): ``data=x`` gives the loss ``x[idx]``,
    where a TensorDataset would give it ``[x[idx]]``."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __len__(self) -> int:
        return len(self.tensor)

    def __getitem__(self, i):
        return self.tensor[i]


def to_device(batch, device: torch.device):
    """Move every tensor inside tuples, lists and dicts to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


class Examples:
    """The user's dataset, its collate function and the device; hands out collated batches of given indices.

    A ``source.DrawSource`` (``n``, ``draw``, ``batches``: what measurements use), plus what the probe loop uses:
    ``train_batch``, ``first_two``, ``whole`` and ``iterable``. ``source.as_source`` builds one from a Dataset,
    a DataLoader or a tuple of tensors.
    """

    def __init__(self, dataset, collate: Callable | None, device: torch.device, generator: torch.Generator,
                 rank: int = 0, world: int = 1):
        self.dataset, self.device, self.generator = dataset, device, generator  # measurement draws
        # training batches have their own stream, so measuring (any number of draws) never changes the training
        self.train_generator = torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator)))
        self.rank, self.world = rank, world
        self.collate_fn = collate or default_collate
        self.iterable = isinstance(dataset, IterableDataset)
        self.n: int | None = None if self.iterable else len(dataset)
        self._streams: dict[str, Iterator] = {}   # "draw", "train": an iterable dataset's iterators
        self.stream_length: int | None = None     # a finite iterable dataset's items, once it has run out
        self._epoch: list[int] = []
        self.last_indices: list[list[int]] | None = None  # ``train_batch``'s, per micro-batch (map-style only)

    def items(self, indices: Sequence[int]) -> list:
        out = []
        for i in indices:
            try:
                out.append(self.dataset[i])
            except Exception as e:
                from bsprof.engine.spec import _where
                where = _where(e, None)
                raise DataError(f"dataset[{i}] raised {type(e).__name__}: {e}" + (f" ({where})" if where else ""),
                                f"make dataset()'s __getitem__ return an example for every index 0 <= i < "
                                f"{self.n if self.n is not None else 'len'}") from e
        return out

    def stream(self, count: int, which: str = "draw") -> list:
        """The next ``count`` items of an iterable dataset from iterator ``which`` ("draw" or "train"), restarting it
        when it runs out (a finite one's length is then ``stream_length``)."""
        out = []
        while len(out) < count:
            it = self._streams.get(which)
            if it is None:
                it = self._streams[which] = _Counted(iter(self.dataset))
            try:
                out.append(next(it))
            except StopIteration:
                del self._streams[which]
                if it.count == 0:
                    raise DataError("the iterable dataset yielded no items", "make dataset() yield examples") from None
                self.stream_length = it.count   # read from its first item to its end: its length
        return out

    def collate(self, items: list):
        try:
            batch = self.collate_fn(items)
        except Exception as e:
            raise DataError(f"dataset items cannot be collated ({type(e).__name__}: {e})",
                            "return tensors (or tuples/dicts of tensors of equal shapes) from the dataset, "
                            "or define collate(items) in the spec") from e
        return to_device(batch, self.device)

    def mine(self, drawn: list) -> list:
        """This rank's slice [r·m/W, (r+1)·m/W) of a global draw of m (all of it in one process)."""
        m = len(drawn)
        return drawn[self.rank * m // self.world:(self.rank + 1) * m // self.world]

    def whole(self) -> Examples:
        """An unsharded view with a copy of the generator (the same on every rank; this one does not advance): for
        measurements that are not data-parallel (each rank repeats them on full draws), so that this view's sharded
        draws stay in step across ranks."""
        view = copy.copy(self)
        view.rank, view.world, view._streams, view._epoch = 0, 1, {}, []
        view.generator = torch.Generator().set_state(self.generator.get_state())
        return view

    def first_two(self):
        """A collated batch of two examples (for checks), on the device."""
        return self.first(2)

    def first(self, count: int):
        """A collated batch of the first ``count`` examples (at most the dataset's), on the device."""
        count = count if self.iterable or self.n is None else min(count, self.n)
        return self.collate(self.stream(count) if self.iterable else self.items(list(range(count))))

    def draw(self, B: int) -> list:
        """Indices (map-style) or items (iterable) of B examples, uniform without replacement (this rank's share)."""
        if self.iterable:
            return self.mine(self.stream(B))
        return self.mine(torch.randperm(self.n, generator=self.generator)[:B].tolist())

    def batches(self, drawn: list, size: int) -> Iterator:
        """Collated chunks of ``size`` from a draw, on the device."""
        for start in range(0, len(drawn), size):
            part = drawn[start:start + size]
            yield self.collate(part if self.iterable else self.items(part)), len(part)

    def train_batch(self, size: int, parts: int = 1) -> tuple[list, int]:
        """The next training batch from shuffled epochs (a new permutation when the epoch runs out): ([(collated
        micro-batch, its examples), …], examples). ``parts`` > 1 splits it into that many equal micro-batches, each
        collated on its own (gradient accumulation); a batch that does not split equally stays whole."""
        if self.iterable:
            part = self.mine(self.stream(size, "train"))
        else:
            if len(self._epoch) < size:
                self._epoch = torch.randperm(self.n, generator=self.train_generator).tolist()
            part, self._epoch = self.mine(self._epoch[:size]), self._epoch[size:]
        k = parts if parts > 1 and len(part) % parts == 0 else 1
        m = len(part) // k
        chunks = [part[j * m:(j + 1) * m] for j in range(k)]
        self.last_indices = None if self.iterable else chunks  # dataset indices of each micro-batch (for messages)
        return [(self.collate(c if self.iterable else self.items(c)), len(c)) for c in chunks], len(part)


class _Counted:
    """An iterator that counts the items it gave."""

    def __init__(self, it: Iterator):
        self.it, self.count = it, 0

    def __next__(self):
        item = next(self.it)
        self.count += 1
        return item


def named_indices(indices: list[int], most: int = 5) -> str:
    """Dataset indices for a message: "dataset[7], [40], …" (the first ``most``)."""
    return (f"dataset[{indices[0]}]" + "".join(f", [{i}]" for i in indices[1:most])
            + (", …" if len(indices) > most else ""))
