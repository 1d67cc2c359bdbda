"""Run under torchrun (gloo, CPU): DDP least squares with bsprof's comm hook; rank 0 writes a JSON of results.

    python -m torch.distributed.run --nproc-per-node 2 tests/assets/ddp_hook_worker.py OUT.json

x ~ N(0, I_d), y = xᵀw* + ξ, ξ ~ N(0, σ²), weights held at w* + Δ (lr = 0): B_simple = d + 1 + dσ²/|Δ|² (docs/science.md
§5 V2). Also checks, on the first step, the hook's two norms against ones computed by hand.
"""
import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from worker_exit import leave  # tests/assets, the script's folder

from bsprof.distributed import GradientNoiseScale, noise_scale_hook

D, SIGMA2, B_LOCAL, STEPS = 5, 0.5, 32, 400


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    w_star = torch.randn(D, generator=torch.Generator().manual_seed(1))
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w_star + torch.ones(D) / D ** 0.5).unsqueeze(0))  # |Δ|² = 1
    ddp = DDP(model)
    gns = GradientNoiseScale(batch_size=B_LOCAL)
    ddp.register_comm_hook(gns, noise_scale_hook)
    gen = torch.Generator().manual_seed(100 + rank)
    check = {}
    for step in range(STEPS):
        x = torch.randn(B_LOCAL, D, generator=gen)
        y = x @ w_star + SIGMA2 ** 0.5 * torch.randn(B_LOCAL, generator=gen)
        ddp.zero_grad()
        loss = 0.5 * ((ddp(x).squeeze(-1) - y) ** 2).mean()
        loss.backward()
        draw = gns.update(loss)
        if step == 0:
            local = torch.autograd.grad(0.5 * ((model(x).squeeze(-1) - y) ** 2).mean(), model.weight)[0]
            small = local.double().square().sum().reshape(1)
            dist.all_reduce(small)
            check = {"small": draw.small_sq_total, "small_ref": float(small) / world,
                     "big": draw.big_sq_total, "big_ref": float(model.weight.grad.double().square().sum())}
    est = gns.estimate()
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"b_simple": est.b_simple, "lo": est.b_simple_lo, "hi": est.b_simple_hi, "status": est.status,
                       "n_draws": est.n_draws, "world": world, "B": gns.draws[-1].B, "b": gns.draws[-1].b,
                       "closed_form": D + 1 + D * SIGMA2, **check}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    leave()   # results written: no interpreter teardown (worker_exit.py)
