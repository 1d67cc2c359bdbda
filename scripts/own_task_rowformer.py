"""A task of our own, in no test and no config: bsprof.measure_at against the exact B_simple.

    BSPROF_MNIST_DIR=../shared/data/mnist-t10k python scripts/own_task_rowformer.py

A row-sequence transformer classifier (each 28×28 MNIST digit as 28 rows of 28 pixels: Linear, learned position
Embedding, one nn.TransformerEncoderLayer, mean pool, Linear) on the first 2,000 real MNIST test digits, trained
150 Adam steps; then at those weights the exact full-dataset B_simple (float64, every per-example gradient) against
10 seeded ``measure_at`` calls per method at ±10%: median ratio and how many 90% intervals cover the exact value.
"""

import gzip
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bsprof  # noqa: E402
from bsprof.validation.reference import exact_noise_scale  # noqa: E402


class RowTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.pos = nn.Linear(28, 32), nn.Embedding(28, 32)
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.enc(self.inp(x) + self.pos(torch.arange(28))).mean(1))


def loss(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1], reduction="none")


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    d = Path(os.environ.get("BSPROF_MNIST_DIR", "../shared/data/mnist-t10k"))
    img = np.frombuffer(gzip.open(d / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
    lab = np.frombuffer(gzip.open(d / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    x, y = torch.tensor(img[:2000], dtype=torch.float32) / 255, torch.tensor(lab[:2000], dtype=torch.long)
    data = torch.utils.data.TensorDataset(x, y)
    model = RowTransformer()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(150):
        i = torch.randint(0, 2000, (32,))
        opt.zero_grad()
        loss(model, (x[i], y[i])).mean().backward()
        opt.step()
    exact = exact_noise_scale(model, loss, data)
    truth = exact["b_simple"]
    print("exact", {k: round(v, 4) for k, v in exact.items()})
    for method in ("hooks", "microbatch"):
        hits, values, t0 = 0, [], time.perf_counter()
        for seed in range(10):
            e = bsprof.measure_at(model, loss, data, method=method, rel_error=0.1, seed=seed)
            values.append(e.value)
            hits += e.lo <= truth <= e.hi
        med = float(np.median(values))
        print(f"{method}: median {med:.1f} (ratio {med / truth:.3f}), range {min(values):.1f}–{max(values):.1f}, "
              f"90% intervals cover the exact value {hits}/10, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
