"""Raises (KeyboardInterrupt or RuntimeError, by BSPROF_TEST_FAILURE) in the 30th call of loss(): mid-run."""
import os

import torch

_g = torch.Generator().manual_seed(0)
X, Y = torch.randn(256, 3, generator=_g), torch.randn(256, generator=_g)
calls = {"n": 0}


def model():
    return torch.nn.Linear(3, 1)


def dataset():
    return torch.utils.data.TensorDataset(X, Y)


def loss(model, batch):
    calls["n"] += 1
    if calls["n"] == 30 and torch.is_grad_enabled():
        raise {"interrupt": KeyboardInterrupt, "error": RuntimeError}[os.environ["BSPROF_TEST_FAILURE"]]("boom")
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2
