"""bsprof measure configs/mnist_mlp.py --steps 300

The real MNIST test set (10,000 28×28 digits) classified by an MLP 784 → 256 → 10, per-example cross-entropy,
plain SGD (lr 0.1). McCandlish et al. 2018 (Table 1) report for MNIST a B_simple of about 50 early in training.

The data is not shipped with bsprof. It is read from the original gzip IDX files
t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in the folder named by the environment variable
BSPROF_MNIST_DIR, by default ../shared/data/mnist-t10k next to the repository root.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LR = 0.1
IMAGES = "t10k-images-idx3-ubyte.gz"
LABELS = "t10k-labels-idx1-ubyte.gz"
_DATA: tuple[torch.Tensor, torch.Tensor] | None = None


def data_dir() -> Path:
    env = os.environ.get("BSPROF_MNIST_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip): magic 0x00 0x00 dtype ndim, ndim big-endian uint32 sizes, then the data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """(x [10000, 784] float32 in [0, 1], y [10000] int64), loaded once per process."""
    global _DATA
    if _DATA is None:
        folder = data_dir()
        missing = [name for name in (IMAGES, LABELS) if not (folder / name).is_file()]
        if missing:
            from bsprof.errors import DataError  # a message and its fix, shown as written

            raise DataError(
                f"MNIST test set not found: {', '.join(missing)} missing in {folder}",
                f"download the MNIST test set files {IMAGES} and {LABELS} (e.g. from https://yann.lecun.com/exdb/mnist/"
                " or a mirror such as https://ossci-datasets.s3.amazonaws.com/mnist/) into one folder and set the "
                "environment variable BSPROF_MNIST_DIR to it")
        images = _read_idx(folder / IMAGES)
        labels = _read_idx(folder / LABELS)
        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        y = torch.from_numpy(labels.astype(np.int64))
        _DATA = (x, y)
    return _DATA


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def dataset() -> torch.utils.data.Dataset:
    return torch.utils.data.TensorDataset(*mnist_tensors())


def loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def optimizer(params):
    return torch.optim.SGD(params, lr=LR)
