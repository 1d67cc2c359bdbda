"""Minor page faults and CPU time per step: plain forward+backward against bsprof's per-example hooks.

    python scripts/page_faults.py [--models torch-encoder mlp] [--rounds 20] [--json OUT]
    MALLOC_TRIM_THRESHOLD_=2000000000 MALLOC_MMAP_THRESHOLD_=2000000000 MALLOC_TOP_PAD_=100000000 \\
        python scripts/page_faults.py          # glibc's thresholds fixed: the faults go

The two alternate in one process (one thread), as in ``bench_per_example.py``; per model: the median over rounds
of the faults (``resource.getrusage``) and of the process CPU time of one step. A diagnostic for docs/speed.md
("Correction (nineteenth session)"): under glibc's default heap trimming, bsprof's larger peak makes the next
step's allocations touch fresh pages.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_per_example as bench  # noqa: E402


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(name: str, rounds: int) -> dict:
    model, loss_fn, batch, count = bench.problems(argparse.Namespace(models=None, gpt2=False))[name]
    steps = {m: getattr(bench, m)(model, loss_fn, batch, count) for m in ("plain", "bsprof_hooks")}
    for step in steps.values():
        for _ in range(3):
            step()
    pf: dict = {m: [] for m in steps}
    cpu: dict = {m: [] for m in steps}
    for _ in range(rounds):
        for m, step in steps.items():
            f0, t0 = faults(), time.process_time()
            step()
            cpu[m].append(1000 * (time.process_time() - t0))
            pf[m].append(faults() - f0)
    row = {m: {"faults": statistics.median(pf[m]), "cpu_ms": round(statistics.median(cpu[m]), 3)} for m in steps}
    row["ratio"] = round(row["bsprof_hooks"]["cpu_ms"] / row["plain"]["cpu_ms"], 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["torch-encoder"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    rows = {name: measure(name, args.rounds) for name in args.models}
    for name, row in rows.items():
        print(f"{name}: plain {row['plain']['faults']:g} faults, {row['plain']['cpu_ms']:.2f} ms; bsprof hooks "
              f"{row['bsprof_hooks']['faults']:g} faults, {row['bsprof_hooks']['cpu_ms']:.2f} ms; {row['ratio']:.2f}× "
              f"(malloc env: {env or 'glibc defaults'})")
    if args.json:
        args.json.write_text(json.dumps({"malloc_env": env, "torch": torch.__version__, "rounds": args.rounds,
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
