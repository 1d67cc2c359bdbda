"""The hooks probe with and without taking Σ_i g_i from explicit per-example gradients, paired in one process.

    python scripts/bench_reuse.py [models ...]      (default: cnn mlp transformer torch-encoder hf-gpt2-tiny)

The models and batches of ``bench_per_example.py``; one thread; each round runs plain forward+backward, the probe
with the reuse switched off ("old": autograd computes every weight gradient) and on ("new"), and the medians over
rounds 3..16 are printed with their ratio to plain. Models without explicitly formed per-example weight gradients
(MLP, the hand-written block with short sequences) run the same code either way: their difference is the noise.
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_per_example as bpe  # noqa: E402

from bsprof.probes import hooks  # noqa: E402


class _Args:
    gpt2 = False


def main() -> None:
    torch.set_num_threads(1)
    probs = bpe.problems(_Args())
    reuse = hooks._Pass.choose_reuse

    def probe(name, on):
        hooks._Pass.choose_reuse = reuse if on else (lambda self: None)
        m, lf, b, c = probs[name]
        t0 = time.perf_counter()
        hooks.per_example_hooks(m, lf, b, c)
        return time.perf_counter() - t0

    def plain(name):
        m, lf, b, c = probs[name]
        t0 = time.perf_counter()
        torch.autograd.grad(lf(m, b).sum(), list(m.parameters()))
        return time.perf_counter() - t0

    for name in sys.argv[1:] or ["cnn", "mlp", "transformer", "torch-encoder", "hf-gpt2-tiny"]:
        if name not in probs:
            print(f"{name}: not available (transformers missing?)")
            continue
        ts = {"plain": [], "old": [], "new": []}
        for r in range(16):
            for k in ts:
                t = plain(name) if k == "plain" else probe(name, k == "new")
                if r >= 2:
                    ts[k].append(t)
        p = statistics.median(ts["plain"])
        print(name, "  ".join(f"{k} {1e3 * statistics.median(v):.1f} ms ({statistics.median(v) / p:.2f}×)"
                              for k, v in ts.items()), flush=True)
    hooks._Pass.choose_reuse = reuse


if __name__ == "__main__":
    main()
