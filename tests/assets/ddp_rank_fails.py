"""tiny_linear, but under torchrun rank 1 raises in its first training step (a per-rank batch of 4 examples);
with BSPROF_TEST_HANG=1 it hangs there instead."""
import os
import time

from tiny_linear import dataset, model  # noqa: F401  (the spec's other functions)


def loss(net, batch):
    x, y = batch
    if os.environ.get("RANK") == "1" and len(x) == 4:
        if os.environ.get("BSPROF_TEST_HANG") == "1":
            time.sleep(3600)
        raise RuntimeError("rank 1 lost its data shard")
    return 0.5 * (net(x).squeeze(-1) - y) ** 2
