"""A tiny CNN with BatchNorm in train mode: per-example norms are invalid, bsprof uses micro-batches."""
import torch
import torch.nn.functional as F
from torch import nn

_g = torch.Generator().manual_seed(0)
X = torch.randn(256, 1, 8, 8, generator=_g)
Y = torch.randint(0, 3, (256,), generator=_g)
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
def dataset():
    return torch.utils.data.TensorDataset(X, Y)
def loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")
