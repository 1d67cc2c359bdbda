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


def _tracker_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)  # per-example: MultiheadAttention
    return nn.Sequential(nn.Embedding(3, 8), nn.TransformerEncoder(layer, 1, enable_nested_tensor=False),
                         nn.Linear(8, 3)).double()


def _tracked(name: str, device, source: str):
    """Six AdamW steps with the tracker: its per-step pairs, and B_simple and B_pre over the run."""
    model = _tracker_model(name).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    k = 4 if source == "accumulation" else None
    tr = Tracker(model, opt, accumulation_steps=k, batch_size=16, source=source)
    pairs = []
    for step in range(6):
        g = torch.Generator().manual_seed(step)
        x = (torch.randn(16, 6, generator=g, dtype=torch.float64) if name == "mlp"
             else torch.randint(0, 3, (16, 5), generator=g)).to(device)
        y = torch.randint(0, 3, x.shape[:1] if name == "mlp" else x.shape, generator=g).to(device)

        def loss_of(sl, x=x, y=y):
            out = model(x[sl])
            return F.cross_entropy(out.reshape(-1, 3), y[sl].reshape(-1))

        if k:
            for j in range(k):
                (loss_of(slice(4 * j, 4 * j + 4)) / k).backward()
        else:
            with tr.per_example():
                loss_of(slice(None)).backward()
        d = tr.step()
        pairs.append((d.small_sq_total, d.big_sq_total))
        opt.step()
        opt.zero_grad()
    values = (tr.estimate().value, tr.estimate_pre().value if k else math.nan)
    tr.close()
    return pairs, values


@pytest.mark.parametrize("name", ["mlp", "encoder_lm"])
@pytest.mark.parametrize("source", ["accumulation", "per_example"])
def test_tracker_on_cuda_matches_cpu(name, source):
    gpu, (b_gpu, pre_gpu) = _tracked(name, CUDA, source)
    cpu, (b_cpu, pre_cpu) = _tracked(name, "cpu", source)
    for (gs, gb), (ws, wb) in zip(gpu, cpu):
        assert math.isclose(gs, ws, rel_tol=1e-9) and math.isclose(gb, wb, rel_tol=1e-9)
    for a, b in ((b_gpu, b_cpu), (pre_gpu, pre_cpu)):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9), (a, b)


def test_hf_gpt2_hooks_strict_on_cuda():
    """Hugging Face GPT-2 (Conv1D layers, tied embedding and head) by hook rules alone, against torch.func."""
    transformers = pytest.importorskip("transformers")
    from bsprof.probes.vmap import per_example_vmap

    cfg = transformers.GPT2Config(vocab_size=13, n_positions=16, n_embd=8, n_layer=2, n_head=2, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    gpt = transformers.GPT2LMHeadModel(cfg).double().to(CUDA)
    tokens = torch.randint(0, 13, (5, 7), generator=torch.Generator().manual_seed(1)).to(CUDA)

    def lm(m, t):
        logits = m(t[:, :-1]).logits
        return F.cross_entropy(logits.transpose(1, 2), t[:, 1:], reduction="none").mean(1)

    got = per_example_hooks(gpt, lm, tokens, 5, strict=True)
    want = per_example_vmap(gpt, lm, tokens, 5)
    assert rel(got.small_sq_sum, want.small_sq_sum) <= 1e-9


def test_measure_on_cuda_finds_the_known_noise_scale():
    """The bundled least-squares example (B_simple = 26 exactly) measured on the GPU, at its initial weights."""
    report = bsprof.measure(str(ROOT / "configs" / "least_squares.py"), steps=0, rel_error=0.1, device="cuda",
                            max_examples=2_000_000, seed=0)
    assert report.environment["device"] == "cuda"
    row = report.measurements[0].b_simple
    assert row.lo <= 26 <= row.hi or abs(row.value / 26 - 1) <= 0.1, row
