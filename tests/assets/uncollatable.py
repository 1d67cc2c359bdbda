import torch


class Ragged(torch.utils.data.Dataset):
    def __len__(self):
        return 50
    def __getitem__(self, i):
        return torch.randn(1 + i % 3), torch.tensor(0.0)
def model():
    return torch.nn.Linear(2, 1)
def dataset():
    return Ragged()
def loss(model, batch):
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2
