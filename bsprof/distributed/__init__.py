"""Data-parallel measurement (torch.distributed): ranks hold disjoint shards of each draw (``ranks``), and a DDP
communication hook turns a user's own DDP steps into nested pairs (``comm_hook``)."""

from bsprof.distributed.comm_hook import GradientNoiseScale, noise_scale_hook
from bsprof.distributed.ranks import (
    LOCAL,
    Comm,
    RankFailure,
    broadcast_parameters,
    check_batch,
    current,
    follow_main,
    init,
    rank_draws,
    rank_estimate,
    reduce_sums,
    session,
    shutdown,
    stop_on_sigterm,
    sync_gradients,
)

__all__ = ["LOCAL", "Comm", "GradientNoiseScale", "RankFailure", "broadcast_parameters", "check_batch", "current",
           "follow_main", "init", "noise_scale_hook", "rank_draws", "rank_estimate", "reduce_sums", "session",
           "shutdown", "stop_on_sigterm", "sync_gradients"]
