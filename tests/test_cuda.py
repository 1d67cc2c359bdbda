"""CUDA against CPU: the fast paths give the same numbers on a GPU (marker ``gpu``; ``pytest -m gpu``).

Skipped without CUDA. Every check runs the same float64 model and data on both devices and compares to 1e-9
relative (float64 reductions differ only in order); autocast is compared with the float32 result at the
tolerance of bfloat16's 8-bit mantissa.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from models import CASES, make
from torch import nn

import bsprof
from bsprof.probes.hooks import per_example_hooks
from bsprof.probes.microbatch import accumulate
from bsprof.track import Tracker

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def to(batch, device):
    if isinstance(batch, tuple):
        return tuple(t.to(device) for t in batch)
    return batch.to(device)


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("name", sorted(CASES))
def test_hooks_on_cuda_match_cpu(name):
    case = make(name)
    want = per_example_hooks(case.model, case.loss_fn, case.batch, case.count)
    model = copy.deepcopy(case.model).to(CUDA)
    got = per_example_hooks(model, case.loss_fn, to(case.batch, CUDA), case.count)
    assert got.small_sq_sum.device.type == "cuda"
    assert rel(got.small_sq_sum, want.small_sq_sum) <= 1e-9
    for g, w in zip(got.grad_sum, want.grad_sum):
        assert rel(g, w) <= 1e-9
    assert (got.fallbacks or {}).keys() == (want.fallbacks or {}).keys()


def test_hooks_under_bf16_autocast_match_float32():
    """Under autocast the matrix products run in bfloat16: Σ_i |g_i|² within a few bf16 roundings of float32."""
    case = make("block")
    model = copy.deepcopy(case.model).float().to(CUDA)
    batch = tuple(t.float().to(CUDA) if t.is_floating_point() else t.to(CUDA) for t in case.batch)
    want = per_example_hooks(model, case.loss_fn, batch, case.count)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = per_example_hooks(model, case.loss_fn, batch, case.count)
    assert got.small_sq_sum.dtype == torch.float64
    assert rel(got.small_sq_sum.sum(), want.small_sq_sum.sum()) <= 0.05


def test_microbatch_draw_on_cuda_matches_cpu():
    case = make("mlp")
    chunks = [(tuple(t[i:i + 1] for t in case.batch), 1) for i in range(case.count)]
    want, _ = accumulate(case.model, case.loss_fn, chunks, {2, 4}, total=case.count)
    model = copy.deepcopy(case.model).to(CUDA)
    got, _ = accumulate(model, case.loss_fn, [(to(b, CUDA), c) for b, c in chunks], {2, 4}, total=case.count)
    assert rel(got.small_sq_sum, want.small_sq_sum) <= 1e-9
    assert rel(got.big_sq, want.big_sq) <= 1e-9
    for g, w in zip(got.grad_sum, want.grad_sum):
        assert rel(g, w) <= 1e-9


def _tracked(device, source: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    k = 4 if source == "accumulation" else None
    tr = Tracker(model, opt, accumulation_steps=k, batch_size=16, source=source)
    pairs = []
    for step in range(6):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 6, generator=g, dtype=torch.float64).to(device)
        y = torch.randint(0, 3, (16,), generator=g).to(device)
        if k:
            for j in range(k):
                (F.cross_entropy(model(x[4 * j:4 * j + 4]), y[4 * j:4 * j + 4]) / k).backward()
        else:
            loss = F.cross_entropy(model(x), y)
            with tr.per_example():
                loss.backward()
        d = tr.step()
        pairs.append((d.small_sq_total, d.big_sq_total))
        opt.step()
        opt.zero_grad()
    tr.close()
    return pairs


@pytest.mark.parametrize("source", ["accumulation", "per_example"])
def test_tracker_on_cuda_matches_cpu(source):
    for (gs, gb), (ws, wb) in zip(_tracked(CUDA, source), _tracked("cpu", source)):
        assert math.isclose(gs, ws, rel_tol=1e-9) and math.isclose(gb, wb, rel_tol=1e-9)


def test_measure_on_cuda_finds_the_known_noise_scale():
    """The bundled least-squares example (B_simple = 26 exactly) measured on the GPU, at its initial weights."""
    report = bsprof.measure(str(ROOT / "configs" / "least_squares.py"), steps=0, rel_error=0.1, device="cuda",
                            max_examples=2_000_000, seed=0)
    assert report.environment["device"] == "cuda"
    row = report.measurements[0].b_simple
    assert row.lo <= 26 <= row.hi or abs(row.value / 26 - 1) <= 0.1, row
