"""A GRU fed [T, B, F] (batch_first=False): torch.func cannot batch it (nn.GRU under vmap), hooks cover it by a
per-example loop."""
import torch
import torch.nn.functional as F
from torch import nn

_g = torch.Generator().manual_seed(0)
X = torch.randn(64, 6, 4, generator=_g)
Y = torch.randint(0, 3, (64,), generator=_g)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        h, _ = self.rnn(x.transpose(0, 1))
        return self.head(h[-1])


def model():
    torch.manual_seed(0)
    return Tagger()


def dataset():
    return torch.utils.data.TensorDataset(X, Y)


def loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")
