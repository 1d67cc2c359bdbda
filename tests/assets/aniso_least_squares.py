"""Least squares, anisotropic inputs x ~ N(0, diag(λ)) (bsprof.closed_forms): B_noise = 59.9 ≠ B_simple = 31.4.

LAM, DELTA, SIGMA2 are read by the tests to compute the closed forms; w* = 0 so the weights are Δ.
"""
import torch
from torch import nn

D, SIGMA2, N = 8, 0.1, 200_000
LAM = torch.tensor([0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
DELTA = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.2, 0.05, 0.05, 0.05], dtype=torch.float64)
_g = torch.Generator().manual_seed(7)
X = torch.randn(N, D, generator=_g, dtype=torch.float64) * LAM.sqrt()
Y = SIGMA2 ** 0.5 * torch.randn(N, generator=_g, dtype=torch.float64)


def model():
    m = nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(DELTA.unsqueeze(0))
    return m


def dataset():
    return torch.utils.data.TensorDataset(X, Y)


def loss(model, batch):
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y) ** 2


def optimizer(params):
    return torch.optim.SGD(params, lr=0.01)
