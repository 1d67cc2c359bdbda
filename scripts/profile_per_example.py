"""Where the per-example probe's time goes: torch.profiler tables of plain forward+backward against bsprof's hooks.

    python scripts/profile_per_example.py [--device cuda] [--models gpt2 torch-encoder] [--gpt2] [--out DIR]

For each model of ``bench_per_example.py``: the median step (methods interleaved, synchronised) and the peak
memory of plain, bsprof-hooks, and bsprof-hooks with the weight-gradient reuse switched off (``no-reuse``:
autograd computes every weight gradient, the rules only the norms); then one profiled step of plain and of
bsprof-hooks, the operators sorted by their own device time (CPU time on CPU), written to ``DIR/profile_*.txt``
with the timings in ``DIR/profile.json``. A diagnostic for docs/speed.md, not a benchmark of peers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_per_example as bench  # noqa: E402

import bsprof.probes.hooks as hooks  # noqa: E402


def no_reuse(model, loss_fn, batch, count):
    def step():
        with mock.patch.object(hooks, "explicit_weight", lambda *a: False):
            return hooks.per_example_hooks(model, loss_fn, batch, count)
    return step


VARIANTS = {"plain": bench.plain, "bsprof-hooks": bench.bsprof_hooks, "no-reuse": no_reuse}


def table(step, device, rows: int) -> str:
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, profile_memory=False) as prof:
        step()
        bench._sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", nargs="*", default=["gpt2"])
    p.add_argument("--gpt2", action="store_true", help="add the GPT-2-small stack (implied by --models gpt2)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("profile-out"))
    args = p.parse_args(argv)
    args.gpt2 = args.gpt2 or "gpt2" in args.models
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, (model, loss_fn, batch, count) in bench.problems(args).items():
        if name not in args.models:
            continue
        model = model.to(device)
        batch = tuple(t.to(device) for t in batch) if isinstance(batch, tuple) else batch.to(device)
        steps = {k: make(model, loss_fn, batch, count) for k, make in VARIANTS.items()}
        med = bench.time_rounds(steps, device, args.repeats, budget_s=120.0)
        mem = {k: bench.peak_mem_mb(s, device) for k, s in steps.items()}
        results[name] = {k: {"median_ms": med[k], "ratio_vs_plain": med[k] / med["plain"], "peak_mem_mb": mem[k]}
                         for k in steps}
        for k, r in results[name].items():
            print(f"{name:14s} {k:13s} {r['median_ms']:9.2f} ms {r['ratio_vs_plain']:6.3f}x "
                  f"{r['peak_mem_mb']:9.1f} MiB", flush=True)
        for k in ("plain", "bsprof-hooks"):
            text = table(steps[k], device, args.rows)
            (args.out / f"profile_{name}_{k}_{args.device}.txt").write_text(text)
            print(f"--- {name} {k}\n{text}", flush=True)
    meta = {"device": args.device, "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    (args.out / "profile.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
