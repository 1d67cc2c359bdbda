"""Least squares, d = 5: B_simple = d + 1 + d·σ²/|Δ|² at w0 (docs/science.md §5 V2)."""
import torch
from torch import nn

D, SIGMA2, N = 5, 0.5, 20000
_g = torch.Generator().manual_seed(1)
X = torch.randn(N, D, generator=_g)
W_STAR = torch.randn(D, generator=_g)
Y = X @ W_STAR + SIGMA2 ** 0.5 * torch.randn(N, generator=_g)


def model():
    m = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        m.weight.copy_((W_STAR + torch.ones(D) / D ** 0.5).unsqueeze(0))  # |Δ|² = 1
    return m


def dataset():
    return torch.utils.data.TensorDataset(X, Y)


def loss(model, batch):
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y) ** 2
