"""A frozen backbone with BatchNorm put in eval() inside model(), and a trainable head: the backbone keeps its
running statistics, so per-example norms are valid (bsprof must not switch it back to train mode)."""
import torch
import torch.nn.functional as F
from torch import nn

_g = torch.Generator().manual_seed(0)
X = torch.randn(256, 1, 8, 8, generator=_g)
Y = torch.randint(0, 3, (256,), generator=_g)


def model():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    backbone.requires_grad_(False)
    backbone.eval()
    return nn.Sequential(backbone, nn.Linear(144, 3))


def dataset():
    return torch.utils.data.TensorDataset(X, Y)


def loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")
