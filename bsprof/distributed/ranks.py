"""Measuring under torchrun (DDP): ranks, disjoint shards of each draw, and the all-reduce of the draw's sums.

``torchrun --nproc-per-node N -m bsprof measure SPEC.py`` runs W = N·nodes ranks. Every rank generates the same
global draw of B examples without replacement (a shared seed) and takes its own disjoint slice of B/W, so each
rank draws i.i.d. examples and the union is a uniform draw of B. Two nested pairs then come from one draw at the
same weights (McCandlish et al. 2018, App. A.1, E|G_B|² = |G|² + tr(Σ)·c(B)):

    within ranks:  small = mean over every small batch of every rank of |G_b|² (b = 1: per-example |g_i|²;
                   micro-batches: b), i.e. the all-reduce of each rank's Σ|G_b|² over the all-reduce of their counts;
                   big = |G_B|², G_B = (Σ_r Σ_i g_i)/B the all-reduced mean gradient.
    across ranks:  small = (1/W) Σ_r |G^{(r)}_{B/W}|² (each rank's local mean gradient, b = B/W),
                   big = the same |G_B|²  — the pair a DDP training step sees (``rank_draws``).

Both are unbiased for |G|² and tr(Σ) through ``estimators.unbiased_pair``; the within-rank pair is the more precise
(smaller b). In one process (``LOCAL``) every function here is the identity. Collectives run with a timeout; a
failed or silent peer becomes a ``RankFailure`` (a ``BsprofError``) naming the rank, so nothing hangs and rank 0
keeps the partial report. For users' own DDP loops see ``noise_scale_hook`` (``bsprof/comm_hook.py``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from bsprof.distributed.comm import DEFAULT_TIMEOUT_S, LOCAL, TIMEOUT_ENV, Comm, RankFailure  # noqa: F401
from bsprof.errors import BsprofError, ConfigError
from bsprof.probes.base import ChunkStats
from bsprof.results import Estimate, Ranks
from bsprof.stats.draw import Draw
from bsprof.stats.estimators import noise_scale

_NOTE = "bsprof/failed/"


# ---------------------------------------------------------------- set-up and tear-down

def env_world() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def backend_for(device: str) -> str:
    """NCCL when the ranks measure on CUDA (device auto or cuda with CUDA present), else gloo (CPU)."""
    return "nccl" if device in ("auto", "cuda") and torch.cuda.is_available() else "gloo"


def timeout_seconds(value: float | None = None) -> float:
    """The collective timeout: the argument, else $BSPROF_DIST_TIMEOUT, else 600 s."""
    return float(value if value is not None else os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def init(device: str = "auto", timeout_s: float | None = None) -> Comm:
    """Join the ranks from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    Reuses a default process group the caller already made; otherwise makes one with the backend of
    ``backend_for(device)`` and ``timeout=timedelta(seconds=timeout_s)``, which bounds every collective.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if env_world() <= 1:
        return LOCAL
    if device == "mps":
        raise ConfigError("measuring on MPS under torchrun is not supported (gloo cannot reduce MPS tensors)",
                          "pass --device cpu")
    backend, secs = backend_for(device), timeout_seconds(timeout_s)
    timeout = datetime.timedelta(seconds=secs)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
        dist.init_process_group(backend, store=dist.PrefixStore("bsprof/pg", store), rank=rank,
                                world_size=world, timeout=timeout)
    except (RuntimeError, ValueError) as e:
        raise RankFailure(f"cannot join the {env_world()} ranks: {e}",
                          "launch with torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and check "
                          "that every node can reach MASTER_ADDR:MASTER_PORT") from e
    return Comm(rank, world, local_rank, backend, secs, dist.PrefixStore(_NOTE, store))


def current() -> Comm:
    """The ranks of a default process group the caller made themselves (LOCAL when there is none)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return LOCAL
    return Comm(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                dist.get_backend(), timeout_seconds())


def shutdown(comm: Comm) -> None:
    """Leave the process group made by ``init`` (never raises)."""
    if comm.world > 1 and comm.store is not None and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str = "auto", timeout_s: float | None = None) -> Iterator[Comm]:
    """``init`` … ``shutdown``; a rank that fails on its own leaves a note for rank 0's message."""
    comm = init(device, timeout_s)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield comm
    except Exception as e:
        if comm.world > 1 and _own_failure(e):
            note_failure(comm, e)
        raise
    finally:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)
        shutdown(comm)


def _own_failure(e: Exception) -> bool:
    """This rank's own error (not a peer's failure seen here, nor a CLI's quiet exit, which has an exit code)."""
    return not isinstance(e, RankFailure) and (isinstance(e, BsprofError) or not hasattr(e, "exit_code"))


@contextlib.contextmanager
def stop_on_sigterm(comm: Comm):
    """While measuring, SIGTERM (torchrun stopping the ranks after one failed) raises a ``RankFailure``; after it,
    SIGTERM is ignored so that the partial report can be written (torchrun's grace period)."""
    if comm.world == 1:
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        notes = failure_notes(comm)  # another rank's failure made torchrun stop this one; else it came from outside
        what = "; ".join(notes) if notes else ("this rank received SIGTERM (from torchrun, or from outside: "
                                               "timeout, SLURM, Kubernetes, docker stop)")
        raise RankFailure(f"the data-parallel measurement stopped (rank {comm.rank} of {comm.world}): {what}",
                          "rank 0 writes the report of what was measured; see the output of the failing rank")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ---------------------------------------------------------------- failures

def note_failure(comm: Comm, error: BaseException) -> None:
    """Leave 'rank r: what happened' in the rendezvous store for rank 0's message (best effort)."""
    what = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
    with contextlib.suppress(Exception):
        comm.store.set(str(comm.rank), f"rank {comm.rank}: {what}")


def failure_notes(comm: Comm) -> list[str]:
    """Notes left by failed ranks (best effort, never blocks)."""
    notes = []
    for r in range(comm.world):
        with contextlib.suppress(Exception):
            if r != comm.rank and comm.store is not None and comm.store.check([str(r)]):
                notes.append(comm.store.get(str(r)).decode())
    return notes


def peer_failure(comm: Comm, cause: object) -> RankFailure:
    """A ``RankFailure`` naming the failed rank(s) when they left a note, else quoting the collective's error."""
    notes = failure_notes(comm)
    first = re.sub(r"\[[^\]]*\]\s*", "", str(cause).strip().splitlines()[0] if str(cause).strip() else "")
    what = "; ".join(notes) if notes else (f"another rank failed or did not answer within {comm.timeout_s:g} s"
                                          + (f" ({first[:160]})" if first else ""))
    return RankFailure(f"the data-parallel measurement stopped (rank {comm.rank} of {comm.world}): {what}",
                       "see the failing rank's output above; rank 0 writes the report of what was measured; "
                       f"${TIMEOUT_ENV} sets the collective timeout in seconds")


@contextlib.contextmanager
def collective(comm: Comm):
    """Run collectives; any error in them (a peer gone, a timeout) becomes a ``RankFailure``."""
    try:
        yield
    except RankFailure:
        raise
    except (RuntimeError, ConnectionError, ValueError) as e:  # DistBackendError is a RuntimeError
        raise peer_failure(comm, e) from e


# ---------------------------------------------------------------- data

def check_batch(batch_size: int, comm: Comm) -> None:
    """The global training batch splits into W equal shards."""
    if comm.world > 1 and batch_size % comm.world:
        fit = comm.world * max(1, batch_size // comm.world)
        raise ConfigError(f"--batch-size {batch_size} does not split over {comm.world} ranks",
                          f"use a multiple of {comm.world}, e.g. --batch-size {fit}")


# ---------------------------------------------------------------- reductions

def _flat_sum(tensors: list[torch.Tensor], comm: Comm) -> list[torch.Tensor]:
    """Σ over ranks of each tensor, through one flat all-reduce (in the tensors' common dtype)."""
    flat = torch.cat([t.reshape(-1).to(tensors[0].dtype) for t in tensors])
    with collective(comm):
        dist.all_reduce(flat)
    return [part.view_as(t).to(t.dtype) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def reduce_sums(stats: ChunkStats, comm: Comm) -> tuple[ChunkStats, torch.Tensor | None]:
    """The draw's sums over all ranks, and the rank-level small statistic.

    Returns (Σ_r stats_r, (1/W) Σ_r |G^{(r)}|² per parameter) with G^{(r)} = grad_sum_r/count_r each rank's local
    mean gradient; in one process (stats, None).
    """
    if comm.world == 1:
        return stats, None
    device = stats.grad_sum[0].device
    local = torch.stack(torch._foreach_norm(stats.grad_sum)).double().square() / stats.count ** 2
    grads = _flat_sum(list(stats.grad_sum), comm)
    counts = torch.tensor([float(stats.n_small), float(stats.count)], dtype=torch.float64, device=device)
    scalars = [stats.small_sq_sum.to(device, torch.float64), local.to(device), stats.loss_sum.double().reshape(1),
               counts]
    small, local, loss, counts = _flat_sum(scalars, comm)
    n_small, count = (round(float(c)) for c in counts.cpu())
    total = ChunkStats(grads, small.to(stats.small_sq_sum.dtype), n_small, loss.reshape(()), count)
    return total, local / comm.world


def follow_main(obj, comm: Comm):
    """Rank 0's ``obj`` on every rank (a decision all ranks must share: stop now, the next batch size)."""
    if comm.world == 1:
        return obj
    box = [obj]
    with collective(comm):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_gradients(model: nn.Module, loss: torch.Tensor, comm: Comm, pairs: TrainingPairs | None = None,
                   local_count: int = 0, batch: int = 0) -> torch.Tensor:
    """Sum ``.grad`` and the loss over ranks (each rank's loss is Σ_local ℓ_i / B_global, so the sum is the global
    mean), in place; returns the global loss. Identity in one process.

    With ``pairs`` the step's across-ranks pair goes to it, in the same all-reduce: small = (1/W) Σ_r |G^{(r)}|²,
    G^{(r)} = .grad_r · batch/local_count the rank's local mean gradient (b = local_count), big = |G_B|²."""
    if comm.world == 1:
        return loss
    params = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    extra = []
    if pairs is not None:
        local = torch.stack(torch._foreach_norm(grads)).double().square().sum() * (batch / local_count) ** 2
        extra = [local.to(grads[0].device).reshape(1)]
    reduced = _flat_sum([*grads, *extra], comm)
    for p, g in zip(params, reduced):
        p.grad.copy_(g)
    total = _flat_sum([loss.detach().double().reshape(1)], comm)[0][0]
    if pairs is not None:
        big = float(torch.stack(torch._foreach_norm(grads)).double().square().sum())
        pairs.add(float(reduced[-1][0]) / comm.world, big, local_count, batch, float(total))
    return total


class TrainingPairs:
    """The data-parallel probe training's steps as nested pairs (its windows; one process tracks with
    ``bsprof.Tracker`` instead): b = each rank's share of the step's batch, B = the batch, from
    ``sync_gradients``; the estimate is the ratio of means over the steps kept (``bsprof.track.window``).
    ``population``: the dataset's size, for the finite-population correction (None: i.i.d.)."""

    closed = False  # never: nothing here can fail (a tracker's attribute)

    def __init__(self, confidence: float = 0.9, population: int | None = None):
        self.draws: list[Draw] = []
        self.confidence, self.population = confidence, population

    def add(self, small: float, big: float, b: int, B: int, loss: float) -> None:
        n = self.population if self.population and B <= self.population else None
        self.draws.append(Draw(np.array([small]), np.array([big]), b, B, loss, n))

    def estimate(self) -> Estimate:
        from bsprof.track.window import b_simple_of, windowed

        return b_simple_of(windowed(self.draws, None, self.confidence)) if self.draws else Estimate.none()

    def close(self) -> None:
        """Nothing to undo (no hooks): the same interface as a tracker's."""


def broadcast_parameters(model: nn.Module, comm: Comm) -> None:
    """Rank 0's weights and buffers on every rank, so every rank measures at the same weights."""
    if comm.world == 1:
        return
    with collective(comm), torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


# ---------------------------------------------------------------- the rank-level pair

def rank_draws(draws: Sequence[Draw]) -> list[Draw]:
    """The across-ranks pair of each draw: small = mean_r |G^{(r)}_{B/W}|² (b = B/W), big = |G_B|² (App. A.1)."""
    return [replace(d, small_sq=d.local_sq, b=d.B // d.world, partial_sq=(), local_sq=None, world=1)
            for d in draws if d.local_sq is not None and d.world > 1]


def rank_estimate(draws: Sequence[Draw], confidence: float, scale: float = 1.0) -> Ranks | None:
    """The across-ranks estimate (b = per-rank batch, B = world·b); None in one process."""
    pairs = rank_draws(draws)
    if not pairs:
        return None
    est = noise_scale(pairs, confidence)
    return Ranks(Estimate(est.b_simple, est.b_simple_lo, est.b_simple_hi, est.status).scaled(scale), est.g2,
                 est.trace_sigma, pairs[-1].b, pairs[-1].B // pairs[-1].b)
