import torch
from torch import nn


def model():
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Flatten(), nn.Linear(5, 1))  # 5: should be 4


def dataset():
    return torch.utils.data.TensorDataset(torch.randn(10, 2), torch.randn(10))


def loss(model, batch):
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2
