"""Twelve examples: smaller than the default batch."""
import torch

_g = torch.Generator().manual_seed(0)
X, Y = torch.randn(12, 3, generator=_g), torch.randn(12, generator=_g)
def model():
    return torch.nn.Linear(3, 1)
def dataset():
    return torch.utils.data.TensorDataset(X, Y)
def loss(model, batch):
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2
