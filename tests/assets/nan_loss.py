"""Diverges: the loss becomes Inf/NaN after a few steps of a huge learning rate."""
import torch


def model():
    return torch.nn.Linear(2, 1)
def dataset():
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(100 * torch.randn(200, 2, generator=g), torch.randn(200, generator=g))
def loss(model, batch):
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2
def optimizer(params):
    return torch.optim.SGD(params, lr=10.0)
