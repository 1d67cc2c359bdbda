"""Data-parallel measurement (torch.distributed): ranks hold disjoint shards of each draw (``ranks``), and a DDP
communication hook turns a user's own DDP steps into nested pairs (``comm_hook``).

The names are imported on first use (PEP 562): ``from bsprof import distributed`` at the top of the CLI costs
nothing until a command runs, so ``bsprof --help`` does not import torch.
"""

from __future__ import annotations

import importlib

# public name -> its module (comm is torch-free; comm_hook and ranks import torch)
_WHERE = {
    **dict.fromkeys(("LOCAL", "Comm", "RankFailure"), "comm"),
    **dict.fromkeys(("GradientNoiseScale", "noise_scale_hook"), "comm_hook"),
    **dict.fromkeys(("broadcast_parameters", "check_batch", "current", "follow_main", "init", "rank_draws",
                     "rank_estimate", "reduce_sums", "session", "shutdown", "stop_on_sigterm", "sync_gradients",
                     "TrainingPairs"),
                    "ranks"),
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"bsprof.distributed.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bsprof.distributed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
