"""Run under torchrun (gloo, CPU): the tracker on FSDP2 (``fully_shard``) models; rank 0 writes a JSON of results.

    python -m torch.distributed.run --nproc-per-node 2 tests/assets/track_fsdp_worker.py OUT.json

On a GPU machine: BSPROF_WORKER_DEVICE=cuda (NCCL, every rank on cuda:LOCAL_RANK % device count). With one rank,
the checks that need two (one backward per step, refusals of unsynced steps) are left out.

1. Hand reference. A float64 MLP, each layer and the root sharded (rows split 4/3 and 2/1: uneven shards). One step
   of k = 2 micro-batches of 8 per rank (the first with set_requires_gradient_sync(False)): b = 8, B = W·k·b = 32;
   one step of one backward of 16 per rank: b = 16, B = 32. Each pair is checked against the same pair computed on
   rank 0 without FSDP, on a plain copy of the model and the full batch of all ranks (every rank's data comes from
   a seeded generator, so rank 0 can redraw it): small = mean over the W·k micro-batches of |∇ mean loss|², big =
   |∇ mean loss of the full batch|².
2. Closed form. Least squares ``nn.Linear(d, 1, bias=False)`` (its one row of weights sits on rank 0; rank 1's
   shard is empty) held at w* + Δ, |Δ|² = 1: B_simple = d + 1 + dσ²/|Δ|² (docs/science.md §5), k = 2, b = 16, B = 64.
3. Refusals: per-example under FSDP, and a step whose last backward ran without gradient sync.
"""
import copy
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from worker_exit import leave  # tests/assets, the script's folder

from bsprof.track import Tracker, TrackerError
from bsprof.track.sources import fsdp_param_groups

D, SIGMA2, MICRO, K, STEPS = 5, 0.5, 16, 2, 150
DEVICE = os.environ.get("BSPROF_WORKER_DEVICE", "cpu")


def batch(rank: int, step: int, n: int):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x, y = torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)
    return x.to(DEVICE), y.to(DEVICE)


def ce(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def flat_grad(model, x, y):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(ce(model, x, y), list(model.parameters()))])


def hand_reference(plain, world: int, step: int, k: int, n: int):
    """(small, big) on one process without FSDP: the W·k micro-batches of the step, each of n // k examples."""
    grads = []
    for r in range(world):
        x, y = batch(r, step, n)
        m = n // k
        grads += [flat_grad(plain, x[j * m:(j + 1) * m], y[j * m:(j + 1) * m]) for j in range(k)]
    xs, ys = zip(*(batch(r, step, n) for r in range(world)))
    full = flat_grad(plain, torch.cat(xs), torch.cat(ys))  # the full batch's gradient = mean of the micro ones
    return float(torch.stack([g.square().sum() for g in grads]).mean()), float(full.square().sum())


def mlp_checks(rank: int, world: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).double().to(DEVICE)
    plain = copy.deepcopy(model)
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    out = {}
    cases = (("accum", 2, 0, None), ("plain", 1, 1, None), ("summed", 2, 3, 1.0))
    for name, k, step, factor in (cases if world > 1 else cases[::2]):
        if factor is not None:  # set_gradient_divide_factor(1): the shards hold the SUM over ranks
            model.set_gradient_divide_factor(factor)
        tracker = Tracker(model, accumulation_steps=k, batch_size=16)
        x, y = batch(rank, step, 16)
        for j in range(k):
            model.set_requires_gradient_sync(j == k - 1)
            m = 16 // k
            (ce(model, x[j * m:(j + 1) * m], y[j * m:(j + 1) * m]) / k).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-6)  # after backward: changes nothing
        out[f"{name}_hooks"] = len(tracker.hooks.handles)
        draw = tracker.step()
        small, big = hand_reference(plain, world, step, k, 16)
        out[name] = {"small": draw.small_sq_total, "small_ref": small, "big": draw.big_sq_total, "big_ref": big,
                     "b": draw.b, "B": draw.B}
        tracker.close()
        model.zero_grad()
    model.set_gradient_divide_factor(float(world))
    left = sum(len(fp._unsharded_param._backward_hooks or {}) for mod in (model[0], model[2], model)
               for g in fsdp_param_groups(mod) for fp in g.fsdp_params)
    out["hooks_left"] = left
    if world == 1:
        return out
    # refusals
    try:
        Tracker(model, source="per_example")
        out["per_example_refused"] = ""
    except TrackerError as e:
        out["per_example_refused"] = str(e)
    tracker = Tracker(model, accumulation_steps=1, batch_size=16)
    model.set_requires_gradient_sync(False)
    ce(model, *batch(rank, 2, 16)).backward()
    model.set_requires_gradient_sync(True)
    try:
        tracker.step()
        out["unsynced_refused"] = ""
    except TrackerError as e:
        out["unsynced_refused"] = str(e)
    return out


def least_squares(rank: int, world: int) -> dict:
    w_star = torch.randn(D, generator=torch.Generator().manual_seed(1))
    model = nn.Linear(D, 1, bias=False).to(DEVICE)
    w_star = w_star.to(DEVICE)
    with torch.no_grad():
        model.weight.copy_((w_star + torch.ones(D, device=DEVICE) / D ** 0.5).unsqueeze(0))  # |Δ|² = 1
    fully_shard(model)
    tracker = Tracker(model, accumulation_steps=K, batch_size=K * MICRO)
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(STEPS):
        for j in range(K):
            x = torch.randn(MICRO, D, generator=gen).to(DEVICE)
            y = x @ w_star + SIGMA2 ** 0.5 * torch.randn(MICRO, generator=gen).to(DEVICE)
            model.set_requires_gradient_sync(j == K - 1)
            (0.5 * ((model(x).squeeze(-1) - y) ** 2).mean() / K).backward()
        draw = tracker.step()
        model.zero_grad()
    est = tracker.estimate()
    tracker.close()
    return {"b_simple": est.value, "lo": est.lo, "hi": est.hi, "status": est.status.value,
            "n_draws": len(tracker.draws), "closed_form": D + 1 + D * SIGMA2, "b": draw.b, "B": draw.B,
            "source": tracker.source}


def main(out: str) -> None:
    if DEVICE == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {"world": world, "device": DEVICE, "mlp": mlp_checks(rank, world), "ls": least_squares(rank, world)}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    leave()   # results written: no interpreter teardown (worker_exit.py)
