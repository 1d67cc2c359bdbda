"""Run under torchrun (gloo, CPU): the tracker on a DDP least-squares model; rank 0 writes a JSON of results.

    python -m torch.distributed.run --nproc-per-node 2 tests/assets/track_ddp_worker.py OUT.json

Each rank runs k = 2 micro-batches of 16 per step, the first under no_sync: b = 16 (one rank's micro-batch),
B = W·k·b = 64. Weights held at w* + Δ (|Δ|² = 1, no optimizer step): B_simple = d + 1 + dσ²/|Δ|² (docs/science.md §5).
The first step's pair is also checked against one computed by hand (micro-batch gradients by autograd.grad,
their squared norms averaged over ranks by an all-reduce).
"""
import contextlib
import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from worker_exit import leave  # tests/assets, the script's folder

from bsprof.track import Tracker, TrackerError

D, SIGMA2, MICRO, K, STEPS = 5, 0.5, 16, 2, 150


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    w_star = torch.randn(D, generator=torch.Generator().manual_seed(1))
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w_star + torch.ones(D) / D ** 0.5).unsqueeze(0))  # |Δ|² = 1
    ddp = DDP(model)
    tracker = Tracker(ddp, accumulation_steps=K, batch_size=K * MICRO)
    gen = torch.Generator().manual_seed(100 + rank)
    check = {}
    for step in range(STEPS):
        batches = []
        for j in range(K):
            x = torch.randn(MICRO, D, generator=gen)
            y = x @ w_star + SIGMA2 ** 0.5 * torch.randn(MICRO, generator=gen)
            batches.append((x, y))
            with ddp.no_sync() if j < K - 1 else contextlib.nullcontext():
                (0.5 * ((ddp(x).squeeze(-1) - y) ** 2).mean() / K).backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1e-6)  # after backward: changes nothing
        draw = tracker.step()
        if step == 0:
            w = model.weight.detach().clone().requires_grad_()  # not the tracked parameter: its hooks stay quiet
            g = [torch.autograd.grad(0.5 * ((x @ w.T).squeeze(-1) - y).square().mean(), w)[0].double()
                 for x, y in batches]
            small = torch.stack([gi.square().sum() for gi in g]).mean().reshape(1)
            total = torch.stack(g).mean(0)
            dist.all_reduce(small)
            dist.all_reduce(total)
            check = {"small": draw.small_sq_total, "small_ref": float(small) / world,
                     "big": draw.big_sq_total, "big_ref": float((total / world).square().sum()),
                     "b": draw.b, "B": draw.B}
        ddp.zero_grad()
    est = tracker.estimate()
    tracker.close()
    agreed = {name: disagree(ddp, w_star, rank, name) for name in ("uneven", "one_fails", "rows",
                                                                       "nodes", "bad_loss", "all_uneven")}
    agreed.update({name: short_step(ddp, w_star, rank, name) for name in ("short_everywhere", "short_on_one")})
    try:  # the Tracker on the wrapped module: its .grad is the ranks' average, the one-process pair would be wrong
        Tracker(ddp.module, accumulation_steps=K, batch_size=K * MICRO).close()
        agreed["inner"] = ""
    except TrackerError as e:
        agreed["inner"] = e.message + " | " + e.hint
    Tracker(ddp.module, source="accumulation", accumulation_steps=K).close()  # each rank on its own: said so
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"b_simple": est.value, "lo": est.lo, "hi": est.hi, "status": est.status.value,
                       "n_draws": len(tracker.draws), "world": world, "closed_form": D + 1 + D * SIGMA2, **check,
                       **agreed}, f)
    dist.barrier()   # both ranks done before the group goes (gloo aborted at teardown once in 17 runs without it)
    dist.destroy_process_group()


def disagree(ddp, w_star, rank: int, case: str) -> dict:
    """A step the ranks do not agree on: batches of different sizes ("uneven"), or one rank's own check failing
    ("one_fails": batch_size=33 does not split into 2 micro-batches) with the TrackerError caught, as the docs
    suggest, a rank fed fewer rows than the batch_size both pass ("rows"), or a rank's argument not a number
    ("bad_loss"). Every rank must raise at the same step, and a collective after it must still match. "nodes": rows
    that differ but are no rank's batch (a graph's nodes) stay a warning: the step is measured."""
    tracker = Tracker(ddp, accumulation_steps=K, batch_size=K * MICRO)
    micro = MICRO // 2 if case in ("uneven", "rows", "nodes") and rank == 1 else MICRO
    gen = torch.Generator().manual_seed(7 + rank)
    for j in range(K):
        x = torch.randn(micro, D, generator=gen)
        y = x @ w_star
        with ddp.no_sync() if j < K - 1 else contextlib.nullcontext():
            (0.5 * ((ddp(x).squeeze(-1) - y) ** 2).mean() / K).backward()
    message = ""
    try:
        declared = K * (MICRO if case == "rows" else 3 * MICRO if case == "nodes" else micro)
        loss = "abc" if case == "bad_loss" and rank == 1 else None
        uneven = case == "one_fails" and rank == 1 or case == "all_uneven"
        tracker.step(batch_size=33 if uneven else declared, loss=loss)
    except TrackerError as e:
        message = e.message
    ddp.zero_grad()
    after = torch.ones(1)
    dist.all_reduce(after)                 # the ranks are in step: a mismatched collective would fail here
    said = [None] * dist.get_world_size()
    dist.all_gather_object(said, message)
    closed = tracker.closed
    tracker.close()
    return {"messages": said, "after": float(after), "closed": closed, "left_out": tracker.uneven,
            "examples": tracker.examples}


def short_step(ddp, w_star, rank: int, case: str) -> dict:
    """A full step (K micro-steps), then a step of one synced micro-step: an epoch's short last step on every rank
    ("short_everywhere": left out on both, its examples counted, the next full step measured), or on rank 1 only
    ("short_on_one": an error on both ranks, with the collectives still in step)."""
    tracker = Tracker(ddp, accumulation_steps=K, batch_size=K * MICRO)
    gen = torch.Generator().manual_seed(11 + rank)
    message, draws = "", []
    for passes in (K, 1 if case == "short_everywhere" or rank == 1 else K, K):
        for j in range(passes):
            x = torch.randn(MICRO, D, generator=gen)
            with ddp.no_sync() if j < passes - 1 else contextlib.nullcontext():
                (0.5 * ((ddp(x).squeeze(-1) - x @ w_star) ** 2).mean() / K).backward()
        try:
            draws.append(tracker.step() is not None)
        except TrackerError as e:
            message = e.message
            break
        finally:
            ddp.zero_grad()
    after = torch.ones(1)
    dist.all_reduce(after)
    said = [None] * dist.get_world_size()
    dist.all_gather_object(said, message)
    closed = tracker.closed
    tracker.close()
    return {"messages": said, "after": float(after), "closed": closed, "left_out": tracker.uneven,
            "examples": tracker.examples, "measured": draws}


if __name__ == "__main__":
    main(sys.argv[1])
    leave()   # results written, group destroyed: no interpreter teardown (worker_exit.py)
