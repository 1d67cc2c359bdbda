"""A tiny regression through a custom layer bsprof's hooks have no rule for (its gain goes through torch.func)."""
import torch
from torch import nn

_g = torch.Generator().manual_seed(2)
X = torch.randn(2000, 4, generator=_g)
Y = X.sum(1) + 0.5 * torch.randn(2000, generator=_g)


class Gain(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * self.gain


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), Gain(8), nn.Tanh(), nn.Linear(8, 1))


def dataset():
    return torch.utils.data.TensorDataset(X, Y)


def loss(model, batch):
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y) ** 2
