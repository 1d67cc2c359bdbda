import torch


def model():
    raise ValueError("hidden size must be even")
def dataset():
    return torch.utils.data.TensorDataset(torch.randn(10, 2), torch.randn(10))
def loss(model, batch):
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2
