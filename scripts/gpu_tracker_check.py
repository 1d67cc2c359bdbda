"""The tracker on CUDA against the same loop on CPU (float64, same weights and data), one JSON line per check.

    python scripts/gpu_tracker_check.py [--json FILE]

For each source (accumulation k = 4; per-example), 20 optimizer steps of SGD on a small MLP and on a
transformer LM
(Embedding + nn.TransformerEncoderLayer), on CPU and on CUDA: the per-step |G_b|² and |G_B|² must agree to 1e-9
relative (float64 on both), and the windowed B_simple to the same. Also the probe's per-example hooks on CUDA
against torch.func on CUDA for Hugging Face GPT-2 tiny, when transformers is installed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bsprof.track import Tracker  # noqa: E402


def models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 5))
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    lm = nn.Sequential(nn.Embedding(50, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                       nn.Linear(32, 50))
    return {"mlp": mlp.double(), "encoder_lm": lm.double()}


def data(name: str, step: int, n: int):
    g = torch.Generator().manual_seed(step)
    if name == "mlp":
        return torch.randn(n, 16, generator=g, dtype=torch.float64), torch.randint(0, 5, (n,), generator=g)
    t = torch.randint(0, 50, (n, 9), generator=g)
    return t[:, :-1], t[:, 1:]


def loss_of(model, x, y):
    out = model(x)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def run(name, model, device, source):
    model = copy.deepcopy(model).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    k = 4 if source == "accumulation" else None
    tr = Tracker(model, opt, accumulation_steps=k, batch_size=32, source=source)
    pairs = []
    for step in range(20):
        x, y = data(name, step, 32)
        x, y = x.to(device), y.to(device)
        if k:
            for j in range(k):
                sl = slice(8 * j, 8 * (j + 1))
                (loss_of(model, x[sl], y[sl]) / k).backward()
        else:
            loss = loss_of(model, x, y)
            with tr.per_example():
                loss.backward()
        d = tr.step()
        pairs.append((d.small_sq_total, d.big_sq_total))
        opt.step()
        opt.zero_grad()
    est = tr.estimate()
    tr.close()
    return pairs, est.value


def rel(a, b):
    if a != a and b != b:  # both NaN (B_simple undetermined on both devices)
        return 0.0
    return abs(a - b) / max(abs(b), 1e-300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs CUDA"
    rows = []
    for name, model in models().items():
        for source in ("accumulation", "per_example"):  # per-example covers nn.MultiheadAttention (track/sources)
            cpu, b_cpu = run(name, model, "cpu", source)
            gpu, b_gpu = run(name, model, "cuda", source)
            worst = max(max(rel(g[0], c[0]), rel(g[1], c[1])) for g, c in zip(gpu, cpu))
            rows.append(dict(check=f"tracker {source}", model=name, max_rel_diff=worst, b_simple_cpu=b_cpu,
                             b_simple_cuda=b_gpu, ok=worst < 1e-9 and rel(b_gpu, b_cpu) < 1e-9))
    try:
        import transformers
    except ImportError:
        rows.append(dict(check="hooks hf-gpt2-tiny", ok=None, reason="transformers not installed"))
    else:
        from bsprof.probes.hooks import per_example_hooks
        from bsprof.probes.vmap import per_example_vmap

        cfg = transformers.GPT2Config(vocab_size=13, n_positions=16, n_embd=8, n_layer=2, n_head=2, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
        torch.manual_seed(0)
        gpt = transformers.GPT2LMHeadModel(cfg).double().cuda()
        tokens = torch.randint(0, 13, (5, 7), generator=torch.Generator().manual_seed(1)).cuda()

        def lm(m, t):
            logits = m(t[:, :-1]).logits
            return F.cross_entropy(logits.transpose(1, 2), t[:, 1:], reduction="none").mean(1)

        got = per_example_hooks(gpt, lm, tokens, 5, strict=True)
        want = per_example_vmap(gpt, lm, tokens, 5)
        worst = float(((got.small_sq_sum - want.small_sq_sum).abs() / want.small_sq_sum.abs().clamp_min(1e-30)).max())
        rows.append(dict(check="hooks hf-gpt2-tiny (strict) vs torch.func", model="gpt2-tiny", max_rel_diff=worst,
                         ok=worst < 1e-9))
    for r in rows:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                             rows=rows), indent=1) + "\n")
    sys.exit(0 if all(r["ok"] is not False for r in rows) else 1)


if __name__ == "__main__":
    main()
