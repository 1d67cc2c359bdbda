"""tiny_linear, but under torchrun rank 1 raises in its first training step (a per-rank batch of 4 examples)."""
import os

from tiny_linear import dataset, model  # noqa: F401  (the spec's other functions)


def loss(net, batch):
    x, y = batch
    if os.environ.get("RANK") == "1" and len(x) == 4:
        raise RuntimeError("rank 1 lost its data shard")
    return 0.5 * (net(x).squeeze(-1) - y) ** 2
