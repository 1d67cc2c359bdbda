"""tiny_linear trained with Adam: bsprof also reports the preconditioned noise scale B_pre."""
import torch
from tiny_linear import dataset, loss, model  # noqa: F401  (the spec's folder is on sys.path)


def optimizer(params):
    return torch.optim.Adam(params, lr=1e-2)
