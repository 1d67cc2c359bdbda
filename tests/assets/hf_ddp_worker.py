"""The Hugging Face Trainer under DDP on 2 CPU ranks (gloo) with bsprof's callback, then the same steps by hand.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/assets/hf_ddp_worker.py OUT_DIR ACCUM
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/assets/hf_ddp_worker.py OUT_DIR schedule

Each rank trains on the micro-batches the Trainer's data loader gives it (accelerate shards one shuffled order
across the ranks), micro-batch 8, ACCUM micro-batches per optimizer step, plain SGD, no clipping in effect. The
model records the micro-batches it saw; after ``trainer.train()`` every rank replays its own in a hand-written
``DistributedDataParallel`` loop (same init, ``no_sync`` on all but the last micro-step) with a plain
``bsprof.Tracker``, and rank 0 writes OUT_DIR/result.json with both runs' pairs, the callback's log history and
where its JSONL log is. A ``NoiseScaleCallback`` that was not given the trainer is also started once, to
check that it refuses under DDP.

With ``schedule``, the Trainer follows a three-stage ``bsprof`` schedule (global batch 16 → 32 → 64, i.e. 1, 2
and 4 micro-batches of 8 per rank and step, lr 0.05 → 0.1 → 0.2 through ``ScheduleLR``) and rank 0 writes the
global batch of every tracked step, the Trainer's logged lrs, where the callback applied each change and how many
micro-batches every rank trained on.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import Trainer, TrainingArguments
from worker_exit import leave  # tests/assets, the script's folder

import bsprof
from bsprof.integrations.hf import NoiseScaleCallback, attach
from bsprof.schedule import Schedule, Stage
from bsprof.schedule.apply import ScheduleLR
from bsprof.track.tracker import TrackerError

D, H, MICRO, STEPS, LR = 8, 16, 8, 12, 0.05


class Data(torch.utils.data.Dataset):
    """y = a fixed linear function of x plus noise (learnable)."""

    def __init__(self, n=640):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, D, generator=g)
        self.y = self.x @ torch.randn(D, 1, generator=g) + 0.5 * torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 1))


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = net()
        self.seen = []  # this rank's training micro-batches, in order

    def forward(self, x, labels=None):
        out = self.net(x)
        if self.training:
            self.seen.append((x.detach().clone(), labels.detach().clone()))
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def pairs(tracker):
    return [[d.small_sq_total, d.big_sq_total, d.b, d.B] for d in tracker.draws]


def by_hand(seen, accum: int) -> bsprof.Tracker:
    """The reference: DDP and a Tracker by hand on this rank's micro-batches, from the same initial weights."""
    model = DDP(net())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    tracker = bsprof.Tracker(model, opt, accumulation_steps=accum if accum > 1 else None,
                             population=len(Data()))   # the callback reads it from the Trainer's shuffling loader
    for i in range(0, len(seen), accum):
        for j, (x, y) in enumerate(seen[i:i + accum]):
            loss = nn.functional.mse_loss(model(x), y)
            if accum == 1:
                with tracker.per_example():
                    loss.backward()
            elif j < accum - 1:
                with model.no_sync():
                    (loss / accum).backward()
            else:
                (loss / accum).backward()
        tracker.step(batch_size=accum * MICRO if accum > 1 else None)
        opt.step()
        opt.zero_grad()
    tracker.close()
    return tracker


def main(out: str, accum: int) -> None:
    model = Regressor()
    args = TrainingArguments(
        output_dir=str(Path(out) / "hf"), max_steps=STEPS, per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=accum, ddp_backend="gloo", use_cpu=True, report_to=[], logging_steps=4,
        learning_rate=LR, optim="sgd", lr_scheduler_type="constant", max_grad_norm=1e9, save_strategy="no",
        disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=Data())
    noise = attach(trainer, window=10, log_every=4)
    trainer.train()
    ref = by_hand(model.seen, accum)
    try:  # a callback that was not given the trainer sees only the unwrapped model: it must refuse under DDP
        NoiseScaleCallback(log=None).on_train_begin(args, trainer.state, trainer.control, model=model,
                                                    optimizer=trainer.optimizer)
        refused = None
    except TrackerError as e:
        refused = str(e)
    seen = [torch.cat([x for x, _ in model.seen])]
    all_seen = [None] * dist.get_world_size()
    dist.all_gather_object(all_seen, seen[0])
    if dist.get_rank() == 0:
        est, ref_est = noise.tracker.estimate(window=10), ref.estimate(window=10)
        rows = torch.cat(all_seen)
        result = {"world": dist.get_world_size(), "ddp": noise.tracker.ddp is not None,
                  "pairs": pairs(noise.tracker), "ref_pairs": pairs(ref), "steps": noise.tracker.steps,
                  "micro_batches": len(model.seen), "distinct_rows": len({tuple(r.tolist()) for r in rows}),
                  "rows": len(rows), "unmeasured": dict(noise.unmeasured), "latest": noise.latest,
                  "estimate": [est.value, est.lo, est.hi, est.status.value],
                  "ref_estimate": [ref_est.value, ref_est.lo, ref_est.hi, ref_est.status.value],
                  "log_history": trainer.state.log_history, "log": str(Path(args.output_dir) / "bsprof.jsonl"),
                  "closed": noise.tracker.closed, "refused_without_trainer": refused}
        (Path(out) / "result.json").write_text(json.dumps(result))


SCHEDULE = Schedule(stages=[Stage(0, 2.0, 16, 0.05, MICRO, 1, 2), Stage(4, 1.5, 32, 0.1, MICRO, 2, 2),
                            Stage(8, 1.0, 64, 0.2, MICRO, 4, 2)], target_loss=0.5)


def follow(out: str) -> None:
    model = Regressor()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    args = TrainingArguments(
        output_dir=str(Path(out) / "hf"), max_steps=STEPS, per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=1, ddp_backend="gloo", use_cpu=True, report_to=[], logging_steps=1,
        max_grad_norm=1e9, save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=Data(), optimizers=(opt, ScheduleLR(opt, SCHEDULE)))
    noise = attach(trainer, window=10, schedule=SCHEDULE)
    trainer.train()
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, len(model.seen))
    if dist.get_rank() == 0:
        result = {"world": dist.get_world_size(), "big": [d.B for d in noise.tracker.draws],
                  "small": [d.b for d in noise.tracker.draws], "steps": noise.tracker.steps,
                  "lrs": [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r],
                  "want_lrs": [SCHEDULE.lr_at(step=s) for s in range(STEPS)],
                  "applied": [list(a) for a in noise.applied], "micro_batches": counts,
                  "unmeasured": dict(noise.unmeasured)}
        (Path(out) / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[2] == "schedule":
        follow(sys.argv[1])
    else:
        main(sys.argv[1], int(sys.argv[2]))
    leave()   # results written: no interpreter teardown (worker_exit.py)
