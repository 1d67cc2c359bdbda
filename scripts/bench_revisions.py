"""Before/after in one process: the micro-batch draw or the tracker of another git revision, paired with this one.

The other revision's ``bsprof/probes/microbatch.py`` (and ``bsprof/track/{sources,tracker}.py``) are read with
``git show REV:path`` into a temporary folder and imported beside the working tree's; both run in the same rounds
as plain accumulation and the floor of ``bench_microbatch.py`` (rotating order, 5-step blocks, median of the last 4;
overheads are medians over rounds of the paired ratio to the round's plain step, with the interquartile range).

  microbatch  plain, floor, old (one_draw with REV's accumulate, hooks per draw), new (one_draw with this tree's
              probe inside its ``measuring`` context, as ``measure_at`` runs a measurement's draws)
  tracker     plain / old / new: the accumulation loop of ``bench_tracker.py`` (k = 8, SGD step, zero_grad) without
              a tracker, with REV's Tracker, with this tree's; mb plain / floor as in bench_tracker.py
  tracker-pe  plain / old / new: its per-example loop on one batch of --micro-batch examples

    python scripts/bench_revisions.py microbatch --rev main --micro-batch 8 --rounds 30 [--threads 1]
    python scripts/bench_revisions.py tracker --rev main --micro-batch 8 --rounds 30
    python scripts/bench_revisions.py tracker-pe --rev main --micro-batch 128 --rounds 30
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import bench_microbatch as mb  # noqa: E402


def old_module(rev: str, path: str, name: str, replace: tuple[str, str] | None = None):
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True, capture_output=True,
                          text=True).stdout
    if replace:
        text = text.replace(*replace)
    folder = Path(tempfile.mkdtemp(prefix="bench_rev_"))
    (folder / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def microbatch_methods(rev: str, b: int) -> tuple[dict, list]:
    from bsprof.engine.sampling import Sampling, one_draw
    from bsprof.probes import PROBES, Probe

    old = old_module(rev, "bsprof/probes/microbatch.py", "old_microbatch")
    old_probe = Probe("microbatch", False, old.microbatch, old.accumulate)

    def draws(probe):
        def factory(model):
            examples, group = mb._Prepared(), np.zeros(len(list(model.parameters())), dtype=int)
            if probe.measuring is not None:
                mb._OPEN.append(probe.measuring(model))
                mb._OPEN[-1].__enter__()

            def step(batches):
                examples.step_batches = batches
                s = Sampling(probe, b, b, b * len(batches), True, 0.1, 0.9, 1, 10**9, 1e9)
                return one_draw(model, mb.loss_fn, examples, s, b * len(batches), group)
            return step
        return factory

    methods = {"plain": mb.plain_method, "floor": mb.floor_method, "old": draws(old_probe),
               "new": draws(PROBES["microbatch"])}
    return methods, [("floor", "plain"), ("old", "plain"), ("new", "plain"), ("new", "old")]


def tracker_methods(rev: str, b: int) -> tuple[dict, list]:
    import bench_tracker as bt

    from bsprof.track import Tracker

    old_module(rev, "bsprof/track/sources.py", "old_sources")
    old = old_module(rev, "bsprof/track/tracker.py", "old_tracker",
                     ("from bsprof.track.sources import", "from old_sources import"))

    def loop(cls):
        return lambda model: bt.accum_loop(model, tracked=cls is not None, tracker_cls=cls)

    methods = {"plain": loop(None), "old": loop(old.Tracker), "new": loop(Tracker), "mb plain": mb.plain_method,
               "floor": mb.floor_method}
    return methods, [("old", "plain"), ("new", "plain"), ("floor", "mb plain"), ("new", "old")]


def tracker_pe_methods(rev: str, b: int) -> tuple[dict, list]:
    """The per-example loop of ``bench_tracker.py`` (one batch of b, ``with tracker.per_example()``)."""
    import bench_tracker as bt

    from bsprof.track import Tracker

    old_module(rev, "bsprof/track/sources.py", "old_sources")
    old = old_module(rev, "bsprof/track/tracker.py", "old_tracker",
                     ("from bsprof.track.sources import", "from old_sources import"))

    def loop(cls):
        def factory(model):
            inner = bt.per_example_loop(model, tracked=cls is not None, tracker_cls=cls)
            return lambda batches: inner(batches[:1])
        return factory

    methods = {"plain": loop(None), "old": loop(old.Tracker), "new": loop(Tracker)}
    return methods, [("old", "plain"), ("new", "plain"), ("new", "old")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["microbatch", "tracker", "tracker-pe"])
    ap.add_argument("--rev", default="main")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", choices=["mlp", "tiny"], default="mlp",
                    help="tiny (64→16→16→10): the bookkeeping alone; the differences in ms are what it costs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = args.micro_batch
    methods, pairs = {"microbatch": microbatch_methods, "tracker": tracker_methods,
                      "tracker-pe": tracker_pe_methods}[args.what](args.rev, b)
    base = mb.make_model(args.model)
    batches = mb.make_batches(args.model, b, torch.Generator().manual_seed(b))
    steps = {m: f(copy.deepcopy(base)) for m, f in methods.items()}
    for step in steps.values():
        for _ in range(10):
            step(batches)
    names, times = list(steps), {m: [] for m in steps}
    for r in range(args.rounds):
        for m in names[r % len(names):] + names[:r % len(names)]:
            block = []
            for _ in range(5):
                t0 = time.perf_counter()
                steps[m](batches)
                block.append(time.perf_counter() - t0)
            times[m].append(statistics.median(block[1:]))
    print(f"{args.what}, {args.model.upper()}, k = {mb.K} micro-batches of {b}, {args.rounds} rounds, "
          f"{args.threads} thread(s), old = {args.rev}")
    for m in names:
        print(f"  {m:9s} {1e3 * statistics.median(times[m]):8.3f} ms")
    for m, base_name in pairs:
        ratio = np.array(times[m]) / np.array(times[base_name]) - 1
        print(f"  {m:5s} vs {base_name:8s} {100 * np.median(ratio):+6.1f}%  (IQR {100 * np.percentile(ratio, 25):+.0f} "
              f"… {100 * np.percentile(ratio, 75):+.0f}%)")


if __name__ == "__main__":
    main()
