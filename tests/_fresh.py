"""Shared helpers for the statistics tests: fresh closed-form least-squares data for sampling.measure_at."""

import numpy as np
import torch
from torch import nn

from bsprof.validation.closed_forms import FreshLeastSquares  # noqa: F401  (re-exported for the tests)


def net_at(model) -> nn.Module:
    """nn.Linear at w = Δ (w* = 0), float64."""
    net = nn.Linear(len(model.lam), 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor(np.asarray(model.delta, float)).unsqueeze(0))
    return net


def ls_loss(model, batch):
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y).square()
