"""bsprof measure configs/digits_mlp.py --steps 200

scikit-learn's handwritten digits (1,797 8×8 images shipped with scikit-learn, no download), pixels scaled to
[0, 1], classified by an MLP 64 → 128 → 10 with per-example cross-entropy and plain SGD (lr 0.1).

The dataset is small: a batch of 256 is already 14% of it, so draws without replacement need the
finite-population correction (science.md §2). B_simple is of order 100 examples at
initialisation and grows as the loss falls. A preset: configs/digits_mlp.yaml.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LR = 0.1
_DATA: tuple[torch.Tensor, torch.Tensor] | None = None


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """(x [1797, 64] float32 in [0, 1], y [1797] int64), loaded once per process."""
    global _DATA
    if _DATA is None:
        from sklearn.datasets import load_digits  # imported lazily: importing this file stays fast

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        _DATA = (x, y)
    return _DATA


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def dataset() -> torch.utils.data.Dataset:
    return torch.utils.data.TensorDataset(*digits_tensors())


def loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def optimizer(params):
    return torch.optim.SGD(params, lr=LR)
