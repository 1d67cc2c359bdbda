"""Overhead of the Lightning and HF callbacks against the same training without them (paired, one process).

    python scripts/integrations_overhead.py [--reps 5] [--steps 60]

Alternates runs with and without the callback (same seed, data and model) and prints the median wall time of
each and their ratio. A small MLP on CPU, where a step costs a few milliseconds: the hooks' fixed per-step cost
weighs more here than on a real model.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _data(n=8192):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 64, generator=g), torch.randn(n, 1, generator=g))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 1))


def lightning_once(with_cb: bool, steps: int, accum: int) -> float:
    import lightning as L

    from bsprof.integrations.lightning import NoiseScale

    class Lit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, i):
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    with tempfile.TemporaryDirectory() as d:
        trainer = L.Trainer(max_steps=steps, accumulate_grad_batches=accum, accelerator="cpu", logger=False,
                            enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                            default_root_dir=d, callbacks=[NoiseScale(log=None)] if with_cb else [])
        t = time.perf_counter()
        trainer.fit(Lit(), DataLoader(_data(), batch_size=64))
        return time.perf_counter() - t


def hf_once(with_cb: bool, steps: int, accum: int) -> float:
    import transformers

    from bsprof.integrations.hf import attach

    class Ds(torch.utils.data.Dataset):
        base = _data()

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            return {"x": self.base[i][0], "labels": self.base[i][1]}

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x, labels=None):
            return {"loss": nn.functional.mse_loss(self.net(x), labels)}

    with tempfile.TemporaryDirectory() as d:
        args = transformers.TrainingArguments(output_dir=d, max_steps=steps, per_device_train_batch_size=64,
                                              gradient_accumulation_steps=accum, report_to=[], use_cpu=True,
                                              logging_steps=10, save_strategy="no", disable_tqdm=True)
        trainer = transformers.Trainer(model=M(), args=args, train_dataset=Ds())
        if with_cb:
            attach(trainer, log=None)
        t = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    for name, fn in (("lightning", lightning_once), ("hf", hf_once)):
        for accum in (1, 4):
            fn(True, 5, accum)  # warm up imports
            base, cb = [], []
            for _ in range(a.reps):
                base.append(fn(False, a.steps, accum))
                cb.append(fn(True, a.steps, accum))
            mb, mc = statistics.median(base), statistics.median(cb)
            ratios = sorted(c / b for b, c in zip(base, cb))
            print(f"{name:9s} accum={accum}  without {mb:.3f}s  with {mc:.3f}s  ratio {mc / mb:.2f} "
                  f"(paired ratios {ratios[0]:.2f}…{ratios[-1]:.2f}, {a.steps} steps, MLP 64-256-256-1, B=64/micro)")


if __name__ == "__main__":
    main()
