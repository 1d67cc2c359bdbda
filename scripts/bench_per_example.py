"""Cost of per-example squared gradient norms: bsprof's hooks probe against peers and plain forward+backward.

    python scripts/bench_per_example.py [--quick] [--device cpu|cuda] [--threads 2] [--gpt2] [--models ...]
        [--json FILE]

Every method computes, from one batch at fixed weights, the summed gradient and Σ_i |g_i|² per parameter:
    plain            forward + backward of Σ_i ℓ_i (the baseline; no per-example norms)
    bsprof-hooks     bsprof.probes.hooks.per_example_hooks
    backpack-l2      BackPACK BatchL2Grad (one backward, per-layer hooks)
    opacus-gsm       Opacus GradSampleModule: materialises every per-example gradient, then norms
    opacus-ghost     Opacus GradSampleModuleFastGradientClipping (ghost norms for Linear/Embedding)
    torch.func       vmap(grad) over the batch (bsprof.probes.vmap)
Peers are optional imports; a missing or failing one is a row with status "skipped" and the reason.

Time: median over repeated steps after warm-up (CUDA synchronised), the methods taking turns step by step.
Memory (peak_mem_mb): on CUDA
torch.cuda.max_memory_allocated during one step minus the memory allocated before it; on CPU (Linux) the growth
of the process's peak resident set during one step (VmHWM − VmRSS, after glibc malloc_trim and a peak reset via
/proc/self/clear_refs), NaN where that is unavailable.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bsprof.probes.hooks import per_example_hooks  # noqa: E402
from bsprof.probes.vmap import per_example_vmap  # noqa: E402

# ---------------------------------------------------------------- models

class Block(nn.Module):
    """GPT-2 style pre-norm block: LayerNorm, causal self-attention (Linear qkv, SDPA), LayerNorm, 4× MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, -1).transpose(1, 3).unbind(2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x = x + self.proj(a)
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class LM(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, layers: int, seq: int, tied: bool):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.tok.weight

    def forward(self, tokens):
        # positions per example ([B, T]): a broadcast [T] lookup hides the per-example gradient from any hook,
        # and bsprof would send that embedding to the torch.func fallback
        pos = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
        h = self.tok(tokens) + self.pos(pos)
        return self.head(self.ln(self.blocks(h)))


class Encoder(nn.Module):
    """Token + learned position embedding, causal ``nn.TransformerEncoderLayer``s (pre-norm), LayerNorm, head."""

    def __init__(self, vocab: int, dim: int, heads: int, layers: int, seq: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, tokens):
        T = tokens.shape[1]
        h = self.tok(tokens) + self.pos(torch.arange(T, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=tokens.device)
        return self.head(self.ln(self.blocks(h, mask=mask, is_causal=True)))


class HF(nn.Module):
    """A Hugging Face causal LM returning its logits (GPT-2: Conv1D layers, tied head, learned positions)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(tokens).logits


def xent(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def lm_loss(model, tokens):
    """Per-sequence mean next-token cross entropy."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none").mean(1)


def problems(args) -> dict:
    """name -> (model, per-example loss, batch, count)."""
    g = torch.Generator().manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    out = {
        "mlp": (mlp, xent, (torch.randn(256, 64, generator=g), torch.randint(0, 10, (256,), generator=g)), 256),
        "cnn": (cnn, xent, (torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)),
                128),
        "transformer": (LM(256, 128, 4, 2, 64, tied=False), lm_loss,
                        torch.randint(0, 256, (16, 65), generator=g), 16),
    }
    encoder = Encoder(256, 64, 4, 2, 64)  # the new user's LM: Embedding + nn.TransformerEncoderLayer + LayerNorm
    out["torch-encoder"] = (encoder, lm_loss, torch.randint(0, 256, (16, 65), generator=g), 16)
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: no hf-gpt2-tiny row", file=sys.stderr)
    else:
        cfg = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        out["hf-gpt2-tiny"] = (HF(transformers.GPT2LMHeadModel(cfg)), lm_loss,
                               torch.randint(0, 256, (16, 65), generator=g), 16)
    if args.gpt2:
        out["gpt2"] = (LM(50257, 768, 12, 12, 1024, tied=True), lm_loss,
                       torch.randint(0, 50257, (8, 1025), generator=g), 8)
    return out


# ---------------------------------------------------------------- methods: each returns a zero-argument step

def plain(model, loss_fn, batch, count):
    params = [p for p in model.parameters() if p.requires_grad]
    return lambda: torch.autograd.grad(loss_fn(model, batch).sum(), params)


def bsprof_hooks(model, loss_fn, batch, count):
    return lambda: per_example_hooks(model, loss_fn, batch, count)


def torch_func(model, loss_fn, batch, count):
    return lambda: per_example_vmap(model, loss_fn, batch, count)


def backpack_l2(model, loss_fn, batch, count):
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad

    model = extend(copy.deepcopy(model))

    def step():
        model.zero_grad(set_to_none=True)
        with backpack(BatchL2Grad()):
            loss_fn(model, batch).sum().backward()
        return torch.stack([p.batch_l2.sum() for p in model.parameters()])
    return step


def opacus_gsm(model, loss_fn, batch, count):
    from opacus import GradSampleModule

    wrapped = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")

    def step():
        wrapped.zero_grad(set_to_none=True)
        loss_fn(wrapped, batch).sum().backward()
        return torch.stack([p.grad_sample.flatten(1).square().sum() for p in wrapped.parameters()])
    return step


def opacus_ghost(model, loss_fn, batch, count):
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    wrapped = GradSampleModuleFastGradientClipping(copy.deepcopy(model), loss_reduction="sum",
                                                   use_ghost_clipping=True)

    def step():
        wrapped.zero_grad(set_to_none=True)
        loss_fn(wrapped, batch).sum().backward()
        return torch.stack([p._norm_sample.square().sum() for p in wrapped.trainable_parameters])
    return step


METHODS = {"plain": plain, "bsprof-hooks": bsprof_hooks, "backpack-l2": backpack_l2, "opacus-gsm": opacus_gsm,
           "opacus-ghost": opacus_ghost, "torch.func": torch_func}


# ---------------------------------------------------------------- measuring

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _proc_kb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(float(line.split()[1]) for line in f if line.startswith(field))


def peak_mem_mb(step, device) -> float:
    """Extra memory of one step, in MiB (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_kb("VmRSS:")
        step()
        return (_proc_kb("VmHWM:") - before) / 1024
    except OSError:
        return math.nan


def time_rounds(steps: dict, device, repeats: int, budget_s: float) -> dict:
    """Median wall time (ms) per method. The methods take turns, one step each per round, so that load from
    other processes falls on all of them alike; two warm-up steps each first."""
    for step in steps.values():
        step()
        step()
    times, start = {k: [] for k in steps}, time.perf_counter()
    for r in range(repeats):
        if r >= 3 and time.perf_counter() - start > budget_s:
            break
        for k, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def run(args) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for name, (model, loss_fn, batch, count) in problems(args).items():
        if args.models and name not in args.models:
            continue
        model = model.to(device)
        batch = tuple(t.to(device) for t in batch) if isinstance(batch, tuple) else batch.to(device)
        steps, skipped = {}, {}
        for method, make in METHODS.items():
            if method in args.skip:
                continue
            try:  # an optional peer missing, or not supporting the model
                steps[method] = make(model, loss_fn, batch, count)
                steps[method]()
            except Exception as e:
                steps.pop(method, None)
                skipped[method] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
        if "bsprof-hooks" in steps:  # parameters measured by the slow path, if any: said, not hidden
            fell = per_example_hooks(model, loss_fn, batch, count).fallbacks
            print(f"{name}: bsprof-hooks fallbacks: {sorted(fell) if fell else 'none'}", file=sys.stderr)
        med = time_rounds(steps, device, args.repeats, args.budget)
        for method in METHODS:
            if method in steps:
                row = {"model": name, "method": method, "median_ms": med[method],
                       "ratio_vs_plain": med[method] / med["plain"],
                       "peak_mem_mb": peak_mem_mb(steps[method], device), "status": "ok"}
            elif method in skipped:
                row = {"model": name, "method": method, "median_ms": math.nan, "ratio_vs_plain": math.nan,
                       "peak_mem_mb": math.nan, "status": "skipped", "reason": skipped[method]}
            else:
                continue
            rows.append(row)
            print(f"{name:12s} {method:14s} {row['median_ms']:9.2f} ms  {row['ratio_vs_plain']:6.2f}x  "
                  f"{row['peak_mem_mb']:8.1f} MiB  {row.get('reason', '')}", file=sys.stderr)
    return rows


def render(rows: list[dict], device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Per-example squared norms: median step, {device}, {torch.get_num_threads()} threads")
    for col in ("model", "method", "median ms", "× plain", "peak MiB", "status"):
        table.add_column(col, justify="right" if col in ("median ms", "× plain", "peak MiB") else "left")
    for r in rows:
        table.add_row(r["model"], r["method"], f"{r['median_ms']:.2f}", f"{r['ratio_vs_plain']:.2f}",
                      f"{r['peak_mem_mb']:.1f}", r["status"] if r["status"] == "ok" else r.get("reason", ""))
    Console().print(table)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and a short time budget per method")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 40, quick 15)")
    p.add_argument("--gpt2", action="store_true", help="add a GPT-2-small stack, batch 8 × 1024 tokens (GPU)")
    p.add_argument("--skip", nargs="*", default=[], help="methods to leave out, e.g. --skip torch.func")
    p.add_argument("--models", nargs="*", default=[], help="models to run (default all), e.g. --models gpt2")
    p.add_argument("--json", type=Path, help="write the rows to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (15 if args.quick else 40)
    args.budget = 60.0 if args.quick else 300.0
    rows = run(args)
    render(rows, args.device)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1, allow_nan=True) + "\n")


if __name__ == "__main__":
    main()
