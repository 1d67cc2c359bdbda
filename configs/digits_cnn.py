"""bsprof measure configs/digits_cnn.py --steps 200

scikit-learn's handwritten digits (1,797 images, no download) as 1×8×8 images in [0, 1], classified by a small
CNN (conv 3×3 → conv 3×3 → max-pool → linear → linear, no BatchNorm: BatchNorm in train mode couples the
examples of a batch and invalidates per-example gradients), per-example cross-entropy, plain SGD (lr 0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LR = 0.1
_DATA: tuple[torch.Tensor, torch.Tensor] | None = None


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """(x [1797, 1, 8, 8] float32 in [0, 1], y [1797] int64), loaded once per process."""
    global _DATA
    if _DATA is None:
        from sklearn.datasets import load_digits  # imported lazily: importing this file stays fast

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        _DATA = (x, y)
    return _DATA


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 32 × 4 × 4
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def dataset() -> torch.utils.data.Dataset:
    return torch.utils.data.TensorDataset(*digits_images())


def loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def optimizer(params):
    return torch.optim.SGD(params, lr=LR)
