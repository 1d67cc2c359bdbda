"""Where bsprof's per-example hooks lose time on the encoder LM, and how the ratio to plain moves with its size.

    MALLOC_TRIM_THRESHOLD_=2000000000 MALLOC_MMAP_THRESHOLD_=2000000000 MALLOC_TOP_PAD_=100000000 \\
        python scripts/encoder_overhead.py [--rounds 60] [--json OUT]

For ``bench_per_example.Encoder`` (Embedding + learned positions, two ``nn.TransformerEncoderLayer``s, LayerNorm,
head; batch 16) at the benchmark's size (dim 64, T = 64) and larger ones, three steps alternate in one process
(2 threads): each round times one call of each, in turn, by wall clock; each step's time is its median over
``--rounds`` rounds:

- ``plain``: forward + ``autograd.grad`` of the summed loss, every parameter;
- ``hollow``: the same with bsprof's hooks installed and firing but doing nothing (no per-example arithmetic, and
  autograd computes every weight gradient): the cost of the machinery alone (the pass state, forward hooks,
  MultiheadAttention's recording forward, the graph walk, the tensor hooks' dispatch);
- ``hooks``: ``per_example_hooks``, what ``bsprof measure`` runs.

So hollow − plain is the fixed cost (less the ≈ 0.05 ms of setup hollow skips: ``batch_coupled``, the reuse choice,
the squares' assembly), hooks − hollow the per-example arithmetic net of the weight gradients autograd skips. A
diagnostic for docs/speed.md (twenty-fifth session), not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_per_example as bench  # noqa: E402

from bsprof.probes import hooks as H  # noqa: E402

SIZES = ((64, 64), (64, 128), (128, 64), (128, 128), (256, 64))  # (dim, T); the benchmark's row is the first


def steps(model, tokens, count):
    params = list(model.parameters())
    names, trainable = H.trainable(model)

    def plain():
        torch.autograd.grad(bench.lm_loss(model, tokens).sum(), params)

    def hollow():
        state, losses = H._traced(model, bench.lm_loss, tokens, count, names, trainable)
        try:  # armed stays False: every hook returns at once
            inputs = trainable + ([state.anchor] if state.anchor is not None else [])
            torch.autograd.grad(losses.sum(), inputs, allow_unused=True, materialize_grads=True)
        finally:
            for h in state.handles:
                h.remove()

    def hooks():
        H.per_example_hooks(model, bench.lm_loss, tokens, count)

    return {"plain": plain, "hollow": hollow, "hooks": hooks}


def medians_ms(fs: dict, rounds: int) -> dict:
    """{name: median ms} over ``rounds`` rounds, each timing one call of every step in turn."""
    times = {k: [] for k in fs}
    for _ in range(rounds):
        for k, f in fs.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for dim, T in SIZES:
        torch.manual_seed(0)
        model = bench.Encoder(256, dim, 4, 2, T)
        tokens = torch.randint(0, 256, (16, T + 1))
        fs = steps(model, tokens, 16)
        for f in fs.values():
            for _ in range(5):
                f()
        ms = medians_ms(fs, args.rounds)
        row = {"dim": dim, "T": T, "batch": 16, "parameters": sum(p.numel() for p in model.parameters()),
               **{f"{k}_ms": round(v, 3) for k, v in ms.items()},
               "hollow_x": round(ms["hollow"] / ms["plain"], 3), "hooks_x": round(ms["hooks"] / ms["plain"], 3)}
        rows.append(row)
        print(f"dim {dim:3d} T {T:3d} ({row['parameters']:,} parameters): plain {ms['plain']:.2f} ms, hollow "
              f"{ms['hollow']:.2f} ms ({row['hollow_x']:.2f}×), hooks {ms['hooks']:.2f} ms ({row['hooks_x']:.2f}×)",
              flush=True)
    if args.json:
        env = {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")}
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": 2, "rounds": args.rounds,
                                         "malloc_env": env, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
