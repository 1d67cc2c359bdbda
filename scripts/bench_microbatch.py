"""Cost of bsprof's micro-batch statistics over plain gradient accumulation, side by side with peers.

One step = k micro-batches of b examples at fixed weights (no optimizer step for anyone):

  plain     for each micro-batch: loss.mean().backward() accumulating into .grad; nothing else
  floor     plain, plus |g|² of each micro-batch's gradient per parameter (a dot product in a tensor hook) and
            nothing else: what any exact per-micro-batch statistic costs at least
  bsprof    bsprof.sampling.one_draw itself with the micro-batch probe: per micro-batch |G_b|², the running
            sum (partial |G|² at b and 2b), the big-batch norm and the host copy; each step is one draw of
            one long measurement (the probe's hooks registered once, as ``measure_at`` does)
  bsprof-public   the same draw with its backward through the public ``backward(inputs=params)`` (the
            engine call bsprof makes for plain parameters saves that call's Python argument handling)
  bsprof-nomarks  the draw without the partial sums of the 1/B regression (what they cost)
  adaptdl   adaptdl.torch.gradient_noise_scale.GradientNoiseScale(adp, SGD, num_replicas=1), accumulating k
            backward passes (adp.require_backward_grad_sync only on the last one, as in AdaptDL's own tests)
  fairscale fairscale.optim.AdaScale(SGD, world_size=1, num_gradients_to_accumulate=k, is_scaled_loss=False)

Every method has its own copy of the model (same weights), so peers' parameter hooks do not touch the others;
``plain (A/A)`` is plain accumulation again on its own copy: the benchmark's own resolution.
Timing: rounds rotate the order of the methods; in each round every method runs ``--block`` steps in a row (a
training loop runs the same model step after step, so its memory is warm) and its time is the median of those
steps after the first. The overhead is the median over rounds of the paired ratio method / plain of the same
round (drift cancels), with the interquartile range of those ratios.

Models: ``mlp`` (64→512→512→10), ``tiny`` (64→16→16→10: the Python bookkeeping alone, in ms), ``cnn``
(2 conv + 2 linear, 1×28×28), ``gpt2`` (GPT-2 small from
bench_per_example.py, b sequences of 1,024 tokens; for a GPU). On the CPU, glibc's malloc returns freed gradient
buffers to the kernel and faults them in again, which adds noise; docs/benchmarks.md also reports runs with
MALLOC_TRIM_THRESHOLD_=2000000000 MALLOC_MMAP_THRESHOLD_=2000000000 MALLOC_TOP_PAD_=100000000.

    python scripts/bench_microbatch.py [--quick] [--device cuda] [--models mlp,cnn,gpt2] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bsprof.engine.sampling import Sampling, one_draw  # noqa: E402
from bsprof.probes import PROBES  # noqa: E402
from bsprof.probes.microbatch import _MEASURING as MEASURING  # noqa: E402

K = 8


def make_model(name: str) -> nn.Module:
    if name == "gpt2":  # GPT-2 small (124M parameters, tied embeddings), for a GPU
        from bench_per_example import LM
        return LM(50257, 768, 12, 12, 1024, tied=True)
    if name == "mlp":
        return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    if name == "tiny":  # 64→16→16→10, 1.4k parameters: the arithmetic is negligible, the bookkeeping is what shows
        return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    return nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def make_batches(name: str, b: int, gen: torch.Generator) -> list:
    if name == "gpt2":  # b sequences of 1024 tokens (+1 for the shifted targets)
        return [torch.randint(0, 50257, (b, 1025), generator=gen) for _ in range(K)]
    shape = (b, 64) if name in ("mlp", "tiny") else (b, 1, 28, 28)
    return [(torch.randn(shape, generator=gen), torch.randint(0, 10, (b,), generator=gen)) for _ in range(K)]


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):  # token sequences: per-sequence mean next-token cross entropy
        from bench_per_example import lm_loss
        return lm_loss(model, batch)
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


# ---------------------------------------------------------------------------------------------- methods
# Each factory gets its own model and returns step(batches) -> None (one accumulated step at fixed weights).

def plain_method(model: nn.Module):
    def step(batches):
        model.zero_grad(set_to_none=True)
        for batch in batches:
            loss_fn(model, batch).mean().backward()
    return step


def floor_method(model: nn.Module):
    """The least any exact per-micro-batch statistic costs: plain accumulation plus one squared norm of each
    parameter's gradient (a dot product in a tensor hook, while it is in cache), and nothing else. The square is
    read at once (``.item()``): a 0-d tensor kept to the step's end makes glibc trim and regrow its heap at every
    backward in some runs (docs/speed.md, "Page faults"), which made this floor itself +4 … +111% over plain."""
    squares = []
    for p in model.parameters():
        p.register_hook(lambda g: squares.append(torch.dot(g.reshape(-1), g.reshape(-1)).item()))

    def step(batches):
        model.zero_grad(set_to_none=True)
        squares.clear()
        for batch in batches:
            loss_fn(model, batch).mean().backward()
    return step


_OPEN: list = []  # measurement contexts held open by bsprof_method


class _Prepared:
    """Stands in for bsprof.data.Examples: the draw is the step's pre-made micro-batches."""

    n = None

    def __init__(self):
        self.step_batches = []

    def draw(self, B):
        return self.step_batches

    def batches(self, drawn, size):
        for batch in drawn:
            yield batch, len(batch) if isinstance(batch, torch.Tensor) else len(batch[1])


def bsprof_method(model: nn.Module):
    """bsprof.sampling.one_draw itself, with the micro-batch probe (the code `bsprof measure` runs). Every step is
    one draw of one measurement: the probe's ``measuring`` context (its hooks, registered once) is held open for
    all of them, as ``measure_at`` holds it around a measurement's draws."""
    examples, group = _Prepared(), np.zeros(len(list(model.parameters())), dtype=int)
    probe = PROBES["microbatch"]
    if probe.measuring is not None:  # kept open for the life of this method (the benchmark's one measurement)
        _OPEN.append(probe.measuring(model))
        _OPEN[-1].__enter__()

    def step(batches):
        examples.step_batches = batches
        b = len(batches[0]) if isinstance(batches[0], torch.Tensor) else len(batches[0][1])
        s = Sampling(PROBES["microbatch"], b, b, b * len(batches), True, 0.1, 0.9, 1, 10**9, 1e9)
        return one_draw(model, loss_fn, examples, s, b * len(batches), group)
    return step


def bsprof_public_method(model: nn.Module):
    """bsprof's draw with its backward through the public ``loss.backward(inputs=params)`` instead of the engine
    call it makes (``microbatch._Norms.direct``; what bsprof does for tensor subclasses such as DTensor): the cost
    of that call's Python argument handling."""
    step = bsprof_method(model)
    norms = MEASURING.get(id(model))
    if norms is not None:
        norms.direct = False
    return step


def bsprof_nomarks_method(model: nn.Module):
    """bsprof's draw without the partial sums at b, 2b, 4b, … (the 1/B regression's inputs; the final |G_B|² stays):
    what they cost."""
    from bsprof.engine import sampling

    step = bsprof_method(model)

    def without(batches):
        marks, sampling.partial_marks = sampling.partial_marks, lambda step, B: set()
        try:
            return step(batches)
        finally:
            sampling.partial_marks = marks
    return without


def adaptdl_method(model: nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from adaptdl.torch.gradient_noise_scale import GradientNoiseScale
    # AdaptiveDataParallel is a DistributedDataParallel; GradientNoiseScale only reads its
    # require_backward_grad_sync flag (False while accumulating). AdaptDL's tests pass a stand-in the same way.
    adp = types.SimpleNamespace(require_backward_grad_sync=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gns = GradientNoiseScale(adp, opt, num_replicas=1, accum_scale=1.0)
    adp.gns = gns

    def step(batches):
        gns.reset_accumulation()  # zero_grad + reset the local sums
        for i, batch in enumerate(batches):
            adp.require_backward_grad_sync = i == len(batches) - 1
            loss_fn(model, batch).mean().backward()
        return gns.sqr_avg(), gns.var_avg()
    return step


def fairscale_method(model: nn.Module):
    from fairscale.optim import AdaScale
    opt = AdaScale(torch.optim.SGD(model.parameters(), lr=0.1), world_size=1,
                   num_gradients_to_accumulate=K, is_scaled_loss=False)

    def step(batches):
        opt.zero_grad()
        for batch in batches:
            loss_fn(model, batch).mean().backward()
        return opt.gain()
    return step


METHODS = {"plain": plain_method, "floor": floor_method, "bsprof": bsprof_method, "bsprof-public": bsprof_public_method,
           "bsprof-nomarks": bsprof_nomarks_method,
           "adaptdl": adaptdl_method,
           "fairscale": fairscale_method}


def available(name: str) -> str | None:
    """None if the method can run, else why it is skipped."""
    try:
        if name == "adaptdl":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import adaptdl.torch.gradient_noise_scale  # noqa: F401
        elif name == "fairscale":
            import fairscale.optim  # noqa: F401
    except Exception as e:  # ImportError, or adaptdl's own import-time failures (requests, pkg_resources)
        return f"{type(e).__name__}: {e}"
    return None


# ---------------------------------------------------------------------------------------------- timing

def bench(model_name: str, b: int, methods: list[str], warmup: int, rounds: int, min_rounds: int, budget_s: float,
          block: int, device: torch.device, seed: int = 0) -> tuple[dict[str, dict], int]:
    """Per method: median ms per step, and the median and quartiles over rounds of the paired ratio to plain."""
    torch.manual_seed(seed)
    base = make_model(model_name).to(device)
    made = make_batches(model_name, b, torch.Generator().manual_seed(seed + b))
    batches = [x.to(device) if isinstance(x, torch.Tensor) else tuple(t.to(device) for t in x) for x in made]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = {m: METHODS[m.split(" ")[0]](copy.deepcopy(base)) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    start = time.perf_counter()
    for r in range(warmup + rounds):
        if r >= warmup + min_rounds and time.perf_counter() - start > budget_s:
            break  # a slow configuration (or a loaded machine): stop at min_rounds once the budget is spent
        order = methods[r % len(methods):] + methods[:r % len(methods)]
        for m in order:
            block_times = []
            for _ in range(block):
                t0 = time.perf_counter()
                steps[m](batches)
                sync()
                block_times.append(time.perf_counter() - t0)
            if r >= warmup:
                times[m].append(statistics.median(block_times[1:]))
    plain = np.array(times["plain"])
    out = {}
    for m, ts in times.items():
        ratio = np.array(ts) / plain - 1
        out[m] = dict(median_ms=1e3 * statistics.median(ts), overhead=float(np.median(ratio)),
                      q25=float(np.percentile(ratio, 25)), q75=float(np.percentile(ratio, 75)))
    return out, len(plain)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (under 3 minutes)")
    ap.add_argument("--json", type=Path, help="write the rows to this JSON file")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--micro-batches", default="8,32,128")
    ap.add_argument("--methods", default="plain,plain (A/A),floor,bsprof,adaptdl,fairscale")
    ap.add_argument("--block", type=int, default=4, help="steps in a row per method and round")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    warmup, rounds, min_rounds, budget = (2, 20, 8, 8.0) if args.quick else (5, 150, 30, 90.0)
    rounds = args.rounds or rounds
    wanted = args.methods.split(",")
    skipped = {m: why for m in wanted if (why := available(m.split(" ")[0]))}
    methods = [m for m in wanted if m not in skipped]
    if "plain" not in methods:
        methods.insert(0, "plain")

    rows = []
    t_start = time.perf_counter()
    for model_name in args.models.split(","):
        for b in [int(s) for s in args.micro_batches.split(",")]:
            res, n = bench(model_name, b, methods, warmup, rounds, min_rounds, budget, args.block,
                           torch.device(args.device))
            print(f"{model_name} b={b}: {n} rounds", file=sys.stderr, flush=True)
            for m in wanted if "plain" in wanted else ["plain", *wanted]:
                if m in skipped:
                    rows.append(dict(model=model_name, method=m, micro_batch=b, median_ms=None,
                                     overhead_vs_plain=None, skipped=skipped[m]))
                else:
                    r = res[m]
                    rows.append(dict(model=model_name, method=m, micro_batch=b, median_ms=round(r["median_ms"], 4),
                                     overhead_vs_plain=round(r["overhead"], 4), overhead_q25=round(r["q25"], 4),
                                     overhead_q75=round(r["q75"], 4), rounds=n))
    elapsed = time.perf_counter() - t_start

    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"Micro-batch statistics, k = {K} micro-batches per step (median over ≤ {rounds} rounds of "
                        f"{args.block}-step blocks, {args.device}, {args.threads} threads, torch {torch.__version__})")
    for col in ("model", "method", "b", "median ms", "vs plain", "IQR"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for r in rows:
        if r["median_ms"] is None:
            table.add_row(r["model"], r["method"], str(r["micro_batch"]), "-", "skipped", "")
        else:
            ov = "" if r["method"] == "plain" else f"{100 * r['overhead_vs_plain']:+.1f}%"
            iqr = "" if r["method"] == "plain" else f"{100 * r['overhead_q25']:+.0f} … {100 * r['overhead_q75']:+.0f}%"
            table.add_row(r["model"], r["method"], str(r["micro_batch"]), f"{r['median_ms']:.2f}", ov, iqr)
    console = Console()
    console.print(table)
    for m, why in skipped.items():
        console.print(f"[yellow]skipped {m}[/]: {why}")
    console.print(f"total {elapsed:.0f} s")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(k=K, rounds=rounds, block=args.block, warmup=warmup, threads=args.threads, device=args.device,
                    device_name=torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
                    torch=torch.__version__,
                    python=platform.python_version(), machine=platform.machine(), quick=args.quick,
                    seconds=round(elapsed, 1))
        args.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
