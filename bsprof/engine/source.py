"""Where the examples of a measurement come from: the ``DrawSource`` contract, and ``as_source`` to build one.

Measuring at fixed weights (``sampling.measure_at``, ``probes.hessian.measure_b_noise``) needs only this:

    source.n                       the population size (None: an endless stream, no finite-population correction)
    source.draw(B)                 B examples drawn without replacement, in whatever form ``batches`` reads
    source.batches(drawn, size)    the drawn examples as collated chunks (batch, count) of ``size``, on the device

``data.Examples`` (the user's dataset, collate and device) is the source of ``bsprof measure``; it also gives the
probe loop its training batches. ``validation.closed_forms.FreshLeastSquares`` is an endless closed-form source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bsprof.engine.data import Examples, Rows
from bsprof.errors import DataError


@runtime_checkable
class DrawSource(Protocol):
    """Examples to draw measurement batches from (module docstring)."""

    n: int | None

    def draw(self, B: int) -> Any: ...

    def batches(self, drawn: Any, size: int) -> Iterator[tuple[Any, int]]: ...


def as_source(data, device: torch.device | str = "cpu", seed: int = 0,
              collate: Callable | None = None) -> DrawSource:
    """A ``DrawSource`` from what a user holds: a map-style (or iterable) ``Dataset``, a ``DataLoader`` (its dataset
    and collate function; its batch size and sampler are not used: draws are bsprof's), a tuple or list of tensors
    with equal first dimensions (examples along dim 0, as a ``TensorDataset``: the loss gets a list of tensors), a
    tensor (its rows: the loss gets a tensor), or a source already.

    Draws are uniform without replacement from a generator seeded with ``seed``.
    """
    if isinstance(data, DrawSource):
        return data
    if isinstance(data, DataLoader):
        data, collate = data.dataset, collate or data.collate_fn
    elif isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise DataError("data is a 0-d tensor, not examples", "pass a tensor with the examples along dim 0")
        data = Rows(data)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        sizes = {t.shape[0] if t.dim() else None for t in data}
        if len(sizes) != 1 or None in sizes:
            raise DataError(f"tensors of {sorted(map(str, sizes))} examples cannot be one dataset",
                            "pass tensors with the examples along dim 0, all of the same length")
        data = TensorDataset(*data)
    if isinstance(data, (tuple, list)) and data and not all(isinstance(t, torch.Tensor) for t in data):
        kinds = ", ".join(type(t).__name__ for t in data[:4])
        raise DataError(f"data is a {type(data).__name__} of {kinds}, not of tensors",
                        "convert each to a tensor (torch.tensor(x)) with the examples along dim 0, or pass a Dataset")
    if callable(data) and not isinstance(data, Dataset):
        raise DataError(f"data is a function ({getattr(data, '__name__', type(data).__name__)}), not a dataset",
                        "the order is measure_at(model, loss, data): did you swap loss and data?")
    if not isinstance(data, Dataset):
        raise DataError(f"cannot draw examples from a {type(data).__name__}",
                        "pass a torch Dataset, a DataLoader, or a tuple of tensors with the examples along dim 0")
    return Examples(data, collate, torch.device(device), torch.Generator().manual_seed(seed))


__all__ = ["DrawSource", "as_source"]
