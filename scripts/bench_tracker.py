"""Cost of bsprof.Tracker inside a training loop: the same loop with and without the tracker, paired in one process.

Every method has its own copy of the model (same weights) and its own SGD optimizer, and runs whole training steps
(zero_grad, forward, backward, optimizer step) on the same pre-made batches:

  accumulation (k = 8 micro-batches of b, MLP 64→512→512→10, as in bench_microbatch.py):
    plain          for each micro-batch (loss / k).backward(); optimizer.step(); zero_grad()
    plain (A/A)    plain again on its own copy: the benchmark's own resolution
    tracker        plain + Tracker(model, opt, accumulation_steps=k) and tracker.step(loss=loss) each step
    tracker+log    the same, writing the JSONL log (one flushed line per step)
    mb plain, floor   bench_microbatch.py's plain_method and floor_method, run in the same rounds (no optimizer
                   step, no /k): floor = plain accumulation + one dot product per parameter gradient in a tensor
                   hook, the least any exact per-micro-batch statistic costs. Their overhead is floor / mb plain.
  per-example (one backward per step of b examples, MLP and a small CNN 2 conv + 2 linear on 1×28×28):
    plain, plain (A/A), tracker (``with tracker.per_example(): loss.backward()``), tracker+log,
    weight-grad floor: plain + every Linear/Conv weight gradient formed a second time by torch's batched kernel
                   (``weight_grad_floor_loop``): the least an add-on explicit per-example method costs on the CNN
    per-example floor: plain + each Linear's per-example norms from row norms, each conv's weight gradient again,
                   and |G_B|² read after the backward (``per_example_floor_loop``): the least exact per-example
                   pair a tracker can add to a backward it leaves as the user wrote it

Timing as in bench_microbatch.py: rounds rotate the order of the methods; in each round every method runs
``--block`` steps in a row and its time is the median of those steps after the first. The overhead is the median
over rounds of the paired ratio method / base of the same round (base = plain, or mb plain for floor), with the
interquartile range of those ratios. ``--clock cpu`` times by this process's CPU time (``time.process_time``)
instead of the wall clock: on a shared machine other jobs stretch the wall clock of whichever method runs then,
not its CPU time (with 2 threads, CPU time also counts a thread that waits by spinning).

    python scripts/bench_tracker.py [--quick] [--threads 1] [--clock cpu] [--json FILE]
    python scripts/bench_tracker.py --device cuda --micro-batches gpt2:4 --per-example "" --json FILE   # GPU

On CUDA every step is synchronised before its clock stops, and ``--amp bf16`` runs the forward passes under
bf16 autocast (the parameters and their gradients stay float32, as in mixed-precision training).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_microbatch as mb  # noqa: E402

from bsprof.track import Tracker  # noqa: E402

K = mb.K
LOGS = Path(tempfile.mkdtemp(prefix="bench_tracker_"))
AMP: torch.dtype | None = None  # --amp


def _ce(model, batch):
    with torch.autocast("cuda", AMP, enabled=AMP is not None):
        if isinstance(batch, torch.Tensor):  # token sequences
            return mb.loss_fn(model, batch).mean()
        x, y = batch
        return F.cross_entropy(model(x), y)


def _examples(batch) -> int:
    return len(batch) if isinstance(batch, torch.Tensor) else len(batch[1])


# ---------------------------------------------------------------------------------------------- methods
# Each factory gets its own model and returns step(batches) -> None: one optimizer step of the training loop.

def accum_loop(model, tracked: bool = False, log: bool = False, tracker_cls=None):
    """``tracker_cls``: another revision's Tracker class (scripts/bench_revisions.py), default this tree's."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    b = None
    tracker = None

    def step(batches):
        nonlocal tracker, b
        if tracked and tracker is None:
            b = _examples(batches[0])
            tracker = (tracker_cls or Tracker)(model, opt, accumulation_steps=len(batches), batch_size=len(batches) * b,
                              log=LOGS / f"accum_{id(model)}.jsonl" if log else None)
        for batch in batches:
            loss = _ce(model, batch)
            (loss / len(batches)).backward()
        if tracker is not None:
            tracker.step(loss=loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def per_example_loop(model, tracked: bool = False, log: bool = False, tracker_cls=None):
    """``tracker_cls``: another revision's Tracker class (scripts/bench_revisions.py), default this tree's."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    tracker = (tracker_cls or Tracker)(model, opt, source="per_example",
                                       log=LOGS / f"pe_{id(model)}.jsonl" if log else None) if tracked else None

    def step(batches):
        loss = _ce(model, batches[0])
        if tracker is not None:
            with tracker.per_example():
                loss.backward()
            tracker.step(loss=loss)
        else:
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def weight_grad_floor_loop(model):
    """plain + each Linear/Conv's weight gradient formed a second time, by torch's own batched kernel, from the
    layer's input and δ (output hooks). Forming the per-example weight gradients explicitly, which the conv layers
    need (their ghost form costs more), takes at least this arithmetic on top of a backward that the tracker leaves
    as the user wrote it: the floor of any add-on per-example method on the CNN."""
    def again(mod, x, d):
        if isinstance(mod, torch.nn.Linear):
            torch.mm(d.reshape(-1, d.shape[-1]).t(), x.reshape(-1, x.shape[-1]))
        else:
            torch.ops.aten.convolution_backward(d, x, mod.weight, None, mod.stride, mod.padding, mod.dilation, False,
                                                (0,) * len(mod.padding), mod.groups, (False, True, False))

    def forward_hook(mod, args, out):
        out.register_hook(lambda d, x=args[0].detach(): again(mod, x, d))
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            mod.register_forward_hook(forward_hook)
    return per_example_loop(model)


def per_example_floor_loop(model):
    """plain + the least exact work of a per-example pair, with the Python of one hook per layer: each Linear's
    Σ_i |δ_i|²(|x_i|² + 1) from its input's and output gradient's row norms (two row dot products and one dot),
    each conv's weight gradient formed a second time (as ``weight_grad_floor_loop``), and |G_B|² = Σ_p |p.grad|²
    read after the backward (one dot per parameter). What no add-on exact per-example source can go below."""
    def rows(mod, x, d):
        x, d = x.reshape(-1, x.shape[-1]), d.reshape(-1, d.shape[-1])
        torch.dot(torch.linalg.vecdot(d, d), torch.linalg.vecdot(x, x) + 1)

    def again(mod, x, d):
        torch.ops.aten.convolution_backward(d, x, mod.weight, None, mod.stride, mod.padding, mod.dilation, False,
                                            (0,) * len(mod.padding), mod.groups, (False, True, False))

    def forward_hook(mod, args, out):
        rule = rows if isinstance(mod, torch.nn.Linear) else again
        out.register_hook(lambda d, x=args[0].detach(): rule(mod, x, d))
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            mod.register_forward_hook(forward_hook)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4)

    def step(batches):
        loss = _ce(model, batches[0])
        loss.backward()
        sum(torch.dot(p.grad.flatten(), p.grad.flatten()) for p in params)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


# name -> (factory, base for the paired ratio)
ACCUM = {"plain": (accum_loop, "plain"), "plain (A/A)": (accum_loop, "plain"),
         "tracker": (lambda m: accum_loop(m, True), "plain"),
         "tracker+log": (lambda m: accum_loop(m, True, True), "plain"),
         "mb plain": (mb.plain_method, "mb plain"), "floor": (mb.floor_method, "mb plain")}
PER_EXAMPLE = {"plain": (per_example_loop, "plain"), "plain (A/A)": (per_example_loop, "plain"),
               "tracker": (lambda m: per_example_loop(m, True), "plain"),
               "tracker+log": (lambda m: per_example_loop(m, True, True), "plain"),
               "weight-grad floor": (weight_grad_floor_loop, "plain"),
               "per-example floor": (per_example_floor_loop, "plain")}


# ---------------------------------------------------------------------------------------------- timing

CLOCK = time.perf_counter   # --clock cpu: time.process_time


def bench(model_name: str, b: int, methods: dict, n_batches: int, warmup: int, rounds: int, min_rounds: int,
          budget_s: float, block: int, device: torch.device, seed: int = 0) -> tuple[dict[str, dict], int]:
    """Per method: median ms per step, and the median and quartiles over rounds of the paired ratio to its base."""
    torch.manual_seed(seed)
    base = mb.make_model(model_name).to(device)
    made = mb.make_batches(model_name, b, torch.Generator().manual_seed(seed + b))[:n_batches]
    batches = [x.to(device) if isinstance(x, torch.Tensor) else tuple(t.to(device) for t in x) for x in made]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = {m: f(copy.deepcopy(base)) for m, (f, _) in methods.items()}
    names = list(methods)
    times: dict[str, list[float]] = {m: [] for m in names}
    start = time.perf_counter()
    for r in range(warmup + rounds):
        if r >= warmup + min_rounds and time.perf_counter() - start > budget_s:
            break
        order = names[r % len(names):] + names[:r % len(names)]
        for m in order:
            block_times = []
            for _ in range(block):
                t0 = CLOCK()
                steps[m](batches)
                sync()
                block_times.append(CLOCK() - t0)
            if r >= warmup:
                times[m].append(statistics.median(block_times[1:]))
    out = {}
    for m, ts in times.items():
        ratio = np.array(ts) / np.array(times[methods[m][1]]) - 1
        out[m] = dict(median_ms=1e3 * statistics.median(ts), overhead=float(np.median(ratio)),
                      q25=float(np.percentile(ratio, 25)), q75=float(np.percentile(ratio, 75)), base=methods[m][1])
    return out, len(times["plain"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (about 2 minutes)")
    ap.add_argument("--json", type=Path, help="write the rows to this JSON file")
    ap.add_argument("--micro-batches", default="8,32", help="accumulation (k = 8): micro-batch sizes of the MLP, or "
                    "model:size pairs (mlp, cnn, gpt2)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--methods", help="accumulation methods to run (comma-separated; default all)")
    ap.add_argument("--amp", choices=["bf16"], help="forward under bf16 autocast (CUDA)")
    ap.add_argument("--per-example", default="mlp:128,cnn:32", help="per-example: model:batch pairs")
    ap.add_argument("--block", type=int, default=4, help="steps in a row per method and round")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="time each step by the wall clock, or by this process's CPU time (time.process_time: "
                         "steadier on a shared machine, where other jobs stretch the wall clock; CPU only)")
    args = ap.parse_args()

    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    global AMP
    AMP = torch.bfloat16 if args.amp else None
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    warmup, rounds, min_rounds, budget = (2, 20, 8, 20.0) if args.quick else (5, 150, 30, 90.0)
    rounds = args.rounds or rounds
    accum = {m: v for m, v in ACCUM.items() if not args.methods or m in args.methods.split(",")}
    configs = [("accumulation", *(pair.split(":") if ":" in pair else ("mlp", pair)), accum, K)
               for pair in args.micro_batches.split(",") if pair]
    configs = [(src, name, int(b), methods, n) for src, name, b, methods, n in configs]
    configs += [("per_example", name, int(b), PER_EXAMPLE, 1)
                for name, b in (pair.split(":") for pair in args.per_example.split(",") if pair)]
    rows = []
    t_start = time.perf_counter()
    for source, model_name, b, methods, n in configs:
        res, n_rounds = bench(model_name, b, methods, n, warmup, rounds, min_rounds, budget, args.block, device)
        print(f"{source} {model_name} b={b}: {n_rounds} rounds", file=sys.stderr, flush=True)
        for m, r in res.items():
            rows.append(dict(source=source, model=model_name, method=m, b=b, micro_batches=n,
                             median_ms=round(r["median_ms"], 4), base=r["base"],
                             overhead=round(r["overhead"], 4), overhead_q25=round(r["q25"], 4),
                             overhead_q75=round(r["q75"], 4), rounds=n_rounds))
    elapsed = time.perf_counter() - t_start

    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"Tracker overhead in a training loop (median over ≤ {rounds} rounds of {args.block}-step "
                        f"blocks, {args.device}{' bf16' if args.amp else ''}, {args.threads} threads, "
                        f"torch {torch.__version__})")
    for col in ("source", "model", "b", "method", "median ms", "vs base", "IQR"):
        table.add_column(col, justify="left" if col in ("source", "model", "method") else "right")
    for r in rows:
        own = r["method"] == r["base"]
        ov = "" if own else f"{100 * r['overhead']:+.1f}% vs {r['base']}"
        iqr = "" if own else f"{100 * r['overhead_q25']:+.0f} … {100 * r['overhead_q75']:+.0f}%"
        b = f"{r['micro_batches']}×{r['b']}" if r["micro_batches"] > 1 else str(r["b"])
        table.add_row(r["source"], r["model"], b, r["method"], f"{r['median_ms']:.2f}", ov, iqr)
    console = Console(width=150)
    console.print(table)
    console.print(f"total {elapsed:.0f} s")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(k=K, rounds=rounds, block=args.block, warmup=warmup, threads=args.threads, device=args.device,
                    amp=args.amp, device_name=torch.cuda.get_device_name() if device.type == "cuda"
                    else platform.processor(), torch=torch.__version__, python=platform.python_version(),
                    machine=platform.machine(), quick=args.quick, seconds=round(elapsed, 1))
        args.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
