"""Data-parallel measurement (issue 7): two CPU ranks over gloo, against the closed form and one process.

The torchrun runs are subprocesses (``python -m torch.distributed.run``) on a free port, marked ``distributed``;
each takes 15 s or more, so the default run keeps two (a measurement, the comm hook) and the rest are ``slow``.
tiny_linear: least squares d = 5, σ² = 0.5, |Δ|² = 1, so B_simple = d + 1 + dσ²/|Δ|² = 8.5 (docs/science.md §5 V2).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from bsprof import distributed
from bsprof.config import MeasureConfig
from bsprof.distributed import LOCAL, Comm, rank_draws, reduce_sums
from bsprof.engine.data import Examples
from bsprof.engine.sampling import Sampling, next_batch
from bsprof.errors import ConfigError
from bsprof.output.report import Report
from bsprof.probes import PROBES, ChunkStats
from bsprof.stats.draw import Draw

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"
CLOSED_FORM = 5 + 1 + 5 * 0.5

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


# ---------------------------------------------------------------- in one process

def test_shards_are_disjoint_and_cover_the_global_draw():
    data = torch.utils.data.TensorDataset(torch.arange(100.0))
    one = Examples(data, None, torch.device("cpu"), torch.Generator().manual_seed(3)).draw(30)
    parts = [Examples(data, None, torch.device("cpu"), torch.Generator().manual_seed(3), r, 3).draw(30)
             for r in range(3)]
    assert [len(p) for p in parts] == [10, 10, 10]
    assert sorted(p for part in parts for p in part) == sorted(one) and len({p for part in parts for p in part}) == 30


def test_big_batch_splits_into_whole_small_batches_per_rank():
    s = Sampling(PROBES["microbatch"], 8, 256, 64, False, 0.1, 0.9, 5, 10_000, 60.0)
    for B in (5, 64, 100, 1000):
        assert next_batch(None, s, B, None, world=4) % (8 * 4) == 0
    per_example = Sampling(PROBES["hooks"], 1, 256, 64, False, 0.1, 0.9, 5, 10_000, 60.0)
    assert next_batch(None, per_example, 63, None, world=2) == 62


def test_reductions_are_the_identity_in_one_process():
    stats = ChunkStats([torch.ones(3)], torch.tensor([3.0]), 3, torch.tensor(1.0), 3)
    assert reduce_sums(stats, LOCAL) == (stats, None)
    assert distributed.follow_main("x", LOCAL) == "x"
    assert distributed.current() == LOCAL


def test_rank_pair_uses_the_per_rank_batch():
    d = Draw(np.array([5.0]), np.array([1.0]), 1, 64, 0.3, None, local_sq=np.array([1.5]), world=2)
    (pair,) = rank_draws([d, Draw(np.array([5.0]), np.array([1.0]), 1, 64, 0.3)])
    assert (pair.b, pair.B, pair.small_sq[0], pair.big_sq[0]) == (32, 64, 1.5, 1.0)


def test_batch_that_does_not_split_is_a_clear_error():
    with pytest.raises(ConfigError, match="does not split over 3 ranks"):
        distributed.check_batch(32, Comm(0, 3))


# ---------------------------------------------------------------- two ranks (torchrun, gloo)

@pytest.mark.distributed
@pytest.mark.parametrize("method", ["per_example", pytest.param("microbatch", marks=pytest.mark.slow)])
def test_two_ranks_agree_with_closed_form_and_one_process(tmp_path, method):
    from bsprof.engine.loop import measure

    b = 1 if method == "per_example" else 4
    args = ["--steps", "2", "--measure-every", "2", "--batch-size", "8", "--rel-error", "0.05", "--device", "cpu",
            "--method", method] + (["--micro-batch", "4"] if b > 1 else [])
    run = _torchrun("-m", "bsprof", "measure", str(ASSETS / "tiny_linear.py"), *args, "--no-figures",
                    "-o", str(tmp_path / "ddp"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("gradient noise scale") == 1  # rank 0 prints, rank 1 stays quiet
    report = Report.from_json(tmp_path / "ddp" / "report.json")
    assert report.environment["world_size"] == 2
    first, last = report.measurements
    assert abs(first.b_simple.value / CLOSED_FORM - 1) < 0.1
    assert first.b_simple.lo < first.b_simple.value < first.b_simple.hi
    assert first.b == b and first.B % (2 * b) == 0 and first.ranks.b == first.B // 2
    assert first.ranks.b_simple.status in ("ok", "lower_bound") and np.isfinite(first.ranks.b_simple.lo)
    # the training steps' across-ranks pairs (b = 4 per rank, B = 8) give the window of the last row
    assert last.window_steps == 2 and last.b_simple_window.status in ("ok", "lower_bound")

    cfg = MeasureConfig(steps=2, measure_every=2, batch_size=8, rel_error=0.05, device="cpu", method=method,
                        measure_budget=0,  # as under DDP (no time budget there): both stop by precision alone
                        **({"micro_batch": 4} if b > 1 else {}))
    single = measure(ASSETS / "tiny_linear.py", cfg).measurements
    # same seed: the union of the two shards is the one-process draw, and the training batches too
    for two, one in zip((first, last), single):
        assert abs(two.b_simple.value / one.b_simple.value - 1) < 0.01
        assert two.n_draws == one.n_draws


@pytest.mark.distributed
def test_comm_hook_on_a_two_rank_ddp_model(tmp_path):
    out = tmp_path / "hook.json"
    run = _torchrun(str(ASSETS / "ddp_hook_worker.py"), str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["small"] == pytest.approx(r["small_ref"], rel=1e-5)  # (1/W)Σ_r |G_local|², by hand
    assert r["big"] == pytest.approx(r["big_ref"], rel=1e-5)      # |all-reduced gradient|²
    assert (r["world"], r["b"], r["B"], r["n_draws"]) == (2, 32, 64, 400)
    assert r["status"] == "ok" and abs(r["b_simple"] / r["closed_form"] - 1) < 0.12


@pytest.mark.distributed
def test_an_option_error_under_torchrun_is_said_once(tmp_path):
    """--batch-size not a multiple of the world size: rank 0 says it, the other ranks exit quietly (both printed it,
    a new user's finding)."""
    run = _torchrun("-m", "bsprof", "measure", str(ASSETS / "tiny_linear.py"), "--steps", "2", "--batch-size", "33",
                    "--device", "cpu", "--no-figures", "-o", str(tmp_path / "out"), timeout=90)
    said = " ".join(run.stderr.split())
    assert run.returncode != 0 and said.count("use a multiple of 2") == 1, run.stderr


@pytest.mark.slow  # the default run keeps one torchrun measurement and the comm hook
@pytest.mark.distributed
def test_a_failed_rank_stops_every_rank_and_keeps_the_partial_report(tmp_path):
    t0 = time.perf_counter()
    run = _torchrun("-m", "bsprof", "measure", str(ASSETS / "ddp_rank_fails.py"), "--steps", "3",
                    "--measure-every", "1", "--batch-size", "8", "--rel-error", "0.3", "--device", "cpu",
                    "--no-figures", "-o", str(tmp_path / "out"), env={"BSPROF_DIST_TIMEOUT": "30"}, timeout=90)
    assert run.returncode != 0
    assert time.perf_counter() - t0 < 60
    said = " ".join(run.stderr.split())  # rich wraps lines
    assert "the data-parallel measurement stopped (rank 0 of 2): rank 1: training at step 0 failed in " \
        "ddp_rank_fails.py:14" in said
    assert said.count("rank 1 lost its data shard") == 2  # rank 1's own error, and rank 0's message
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["measurements"]) == 1  # step 0 was measured before rank 1 failed
    assert "rank 1 lost its data shard" in report["incomplete"]["reason"]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_silent_rank_times_out_and_keeps_the_partial_report(tmp_path):
    t0 = time.perf_counter()
    run = _torchrun("-m", "bsprof", "measure", str(ASSETS / "ddp_rank_fails.py"), "--steps", "3",
                    "--measure-every", "1", "--batch-size", "8", "--rel-error", "0.3", "--device", "cpu",
                    "--no-figures", "-o", str(tmp_path / "out"),
                    env={"BSPROF_DIST_TIMEOUT": "8", "BSPROF_TEST_HANG": "1"}, timeout=90)
    assert run.returncode != 0 and time.perf_counter() - t0 < 60
    assert "did not answer within 8 s" in " ".join(run.stderr.split())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["measurements"]) == 1 and "did not answer" in report["incomplete"]["reason"]


def test_a_sigterm_from_outside_is_not_reported_as_a_silent_peer():
    import signal

    comm = Comm(rank=1, world=2)
    with pytest.raises(distributed.RankFailure) as err, distributed.stop_on_sigterm(comm):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert "received SIGTERM" in err.value.message and "did not answer" not in err.value.message
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the report can still be written
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_the_training_steps_pair_under_ddp_is_each_ranks_share_against_the_batch(monkeypatch):
    """``sync_gradients`` with ``TrainingPairs``: small = (1/W) Σ_r |G^{(r)}|² with G^{(r)} = .grad_r · B/b the
    rank's local mean gradient, big = |G_B|² after the all-reduce. Two ranks holding the same gradient (the
    all-reduce doubles every sum): G^{(r)} = G_B, so small = big = |G_B|²."""
    from bsprof.distributed import ranks

    monkeypatch.setattr(ranks, "_flat_sum", lambda tensors, comm: [t * 2 for t in tensors])
    model = torch.nn.Linear(3, 2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)   # Σ_local ∇ℓ_i / B of one rank
    pairs = ranks.TrainingPairs()
    loss = ranks.sync_gradients(model, torch.tensor(0.5), Comm(rank=0, world=2), pairs, local_count=4, batch=8)
    g2 = sum(float(p.grad.double().square().sum()) for p in model.parameters())
    assert g2 == pytest.approx(8 * 0.5 ** 2) and float(loss) == 1.0
    (d,) = pairs.draws
    assert (d.b, d.B) == (4, 8) and d.small_sq[0] == pytest.approx(g2) and d.big_sq[0] == pytest.approx(g2)
