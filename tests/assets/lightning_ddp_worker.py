"""Lightning's strategy="ddp" on 2 CPU ranks (gloo) with bsprof's NoiseScale callback, then the same loop by hand.

    python tests/assets/lightning_ddp_worker.py OUT_DIR ACCUM SOURCE

Run as a plain script: Lightning's "ddp" re-runs this file for rank 1 (its subprocess launcher), so everything
here runs on both ranks. Each rank trains on its DistributedSampler shard (shuffled, seed 0), micro-batch 8, ACCUM
micro-batches per optimizer step. After ``trainer.fit`` the same model init, shard order and SGD steps run again
in a hand-written DDP loop with a plain ``bsprof.Tracker`` (in the process group Lightning made), and rank 0
writes OUT_DIR/result.json with both runs' pairs, the callback's log folder and what it logged.
"""
import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from worker_exit import leave  # tests/assets, the script's folder

import bsprof
from bsprof.integrations.lightning import NoiseScale

D, H, MICRO, STEPS, LR = 8, 16, 8, 12, 0.05


def data(n=640):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g)
    return TensorDataset(x, x @ torch.randn(D, 1, generator=g) + 0.5 * torch.randn(n, 1, generator=g))


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 1))


class Lit(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = net()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def pairs(tracker):
    return [[d.small_sq_total, d.big_sq_total, d.b, d.B] for d in tracker.draws]


def by_hand(accum: int, source: str) -> bsprof.Tracker:
    """The reference: DDP and a Tracker by hand, the same shard, order, init and optimizer steps as Lightning's."""
    model = DDP(net())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    # the callback takes population = len(data()) from the shuffling DistributedSampler (population="auto")
    tracker = bsprof.Tracker(model, opt, source=source, accumulation_steps=accum, population=len(data()))
    # Lightning always shuffles a training set under DDP: DistributedSampler(shuffle=True, seed=0), epoch 0
    sampler = DistributedSampler(data(), num_replicas=dist.get_world_size(), rank=dist.get_rank(), shuffle=True,
                                 seed=0)
    batches = iter(DataLoader(data(), batch_size=MICRO, sampler=sampler))
    for _ in range(STEPS):
        for j in range(accum):
            x, y = next(batches)
            loss = nn.functional.mse_loss(model(x), y)
            if source != "ddp" and accum == 1:
                with tracker.per_example():
                    loss.backward()
            elif j < accum - 1:
                with model.no_sync():            # as Lightning does on the micro-steps before the last
                    (loss / accum).backward()
            else:
                (loss / accum).backward()
        tracker.step(batch_size=accum * MICRO if source == "ddp" or accum > 1 else None, loss=loss)
        opt.step()
        opt.zero_grad()
    tracker.close()
    return tracker


def main(out: str, accum: int, source: str) -> None:
    noise = NoiseScale(window=10, log_every=4, source=source)
    logger = CSVLogger(str(Path(out) / "logs"))
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=2, strategy="ddp", accumulate_grad_batches=accum,
                        logger=logger, callbacks=[noise], enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False)
    trainer.fit(Lit(), DataLoader(data(), batch_size=MICRO, shuffle=False))
    ref = by_hand(accum, source)
    log_dir = trainer.log_dir  # a broadcast: every rank calls it
    if trainer.global_rank == 0:
        est, ref_est = noise.tracker.estimate(window=10), ref.estimate(window=10)
        result = {"world": trainer.world_size, "pairs": pairs(noise.tracker), "ref_pairs": pairs(ref),
                  "steps": noise.tracker.steps, "unmeasured": dict(noise.unmeasured), "latest": noise.latest,
                  "estimate": [est.value, est.lo, est.hi, est.status.value],
                  "ref_estimate": [ref_est.value, ref_est.lo, ref_est.hi, ref_est.status.value],
                  "log_dir": log_dir, "closed": noise.tracker.closed}
        (Path(out) / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    leave()   # results written: no interpreter teardown (worker_exit.py)
