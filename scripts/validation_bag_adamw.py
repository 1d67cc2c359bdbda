"""One more out-of-sample row for the README's validation table: a bag-of-words text classifier under AdamW.

    python scripts/validation_bag_adamw.py [--trial] [--sweep-only] [--lr-grid 0.25,0.5,1,2,4]

This file is also the task's spec file (model, dataset, collate, loss, optimizer at the top level; the driver below
only runs under ``__main__``), so ``bsprof measure scripts/validation_bag_adamw.py`` measures the same task.

Task: ``nn.EmbeddingBag(500, 32, mode="mean")`` fed (tokens, offsets) by a custom collate → Linear(32, 64) → ReLU →
Linear(64, 4), on 6,000 synthetic sequences generated deterministically below (lengths 8–48, vocabulary 500, four
classes whose label is the marker-token set that occurs most, 10% of labels flipped), per-example cross-entropy,
AdamW (weight decay 0.01). The collated batch holds no examples on dim 0 (a flat token tensor and offsets), so
bsprof measures it with micro-batches.

Protocol (scripts/critical_batch_evidence.py, scripts/validation_table.py): a global sweep (``bsprof.sweep.global_``,
steps to a target training loss over the whole dataset per batch, lr tuned per batch on a grid around Adam's
square-root rule, 2 seeds, S = S_min(1 + B_crit/B), bootstrap interval), then 3 probe seeds of ``bsprof.measure`` at
batch 32 with the sweep's tuned lr there (validation_table.probe's options); headline =
``report.summary_at(target).critical_batch``. Writes scripts/results/validation_bag_adamw.json.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, CLASSES, N = 500, 32, 4, 6000
MARKERS = [list(range(10 * c, 10 * c + 10)) for c in range(CLASSES)]   # tokens 0–39: four marker sets of ten
LR = 3e-3


def _generate():
    g = torch.Generator().manual_seed(20260101)
    seqs, labels = [], []
    for _ in range(N):
        length = int(torch.randint(8, 49, (1,), generator=g))
        c = int(torch.randint(0, CLASSES, (1,), generator=g))
        toks = torch.randint(40, VOCAB, (length,), generator=g)          # background tokens
        is_marker = torch.rand(length, generator=g) < 0.3
        # a marker's set: the generating class with probability 0.4, each other class 0.2
        p = torch.full((CLASSES,), 0.2)
        p[c] = 0.4
        sets = torch.multinomial(p, length, replacement=True, generator=g)
        which = torch.randint(0, 10, (length,), generator=g)
        toks = torch.where(is_marker, sets * 10 + which, toks)
        counts = torch.bincount(sets[is_marker], minlength=CLASSES)
        best = counts.max()
        label = c if counts[c] == best else int(torch.nonzero(counts == best)[0])   # most frequent set; ties: c
        if torch.rand(1, generator=g) < 0.1:                               # 10% label noise: another class
            label = (label + int(torch.randint(1, CLASSES, (1,), generator=g))) % CLASSES
        seqs.append(toks)
        labels.append(label)
    return seqs, torch.tensor(labels)


SEQS, LABELS = _generate()
TOKENS_PER_EXAMPLE = round(sum(len(s) for s in SEQS) / N)


class BagClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(VOCAB, DIM, mode="mean")
        self.head = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, CLASSES))

    def forward(self, tokens, offsets):
        return self.head(self.bag(tokens, offsets))


def model():
    return BagClassifier()


def dataset():
    return [(SEQS[i], LABELS[i]) for i in range(N)]


def collate(items):
    seqs = [s for s, _ in items]
    lengths = torch.tensor([len(s) for s in seqs])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    return torch.cat(seqs), offsets, torch.stack([y for _, y in items])


def loss(model, batch):
    tokens, offsets, y = batch
    return F.cross_entropy(model(tokens, offsets), y, reduction="none")


def optimizer(params, lr=LR):
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


# -- the driver ----------------------------------------------------------------------------------------------
def main():  # noqa: C901
    import argparse
    import dataclasses
    import json
    import math
    import statistics
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(root / "scripts"))
    from validation_table import CANDIDATES, P, path_b_crit, predicted_steps

    import bsprof
    import bsprof.sweep
    from bsprof.engine.spec import load_spec
    from bsprof.results import json_clean, optimizer_name

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trial", action="store_true", help="batch-16 training curves at a few lrs (to pick the target)")
    ap.add_argument("--target", type=float, default=0.75)
    ap.add_argument("--batches", default="16,32,64,128,256,512,1024")
    ap.add_argument("--lr0", type=float, default=LR, help="the lr at the smallest batch (grid centre)")
    ap.add_argument("--lr-grid", default="0.25,0.5,1,2,4")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--probe-seeds", type=int, default=3)
    ap.add_argument("--probe-steps", type=int, default=0, help="0: 2.5 × the sweep's steps at B = 32")
    ap.add_argument("--reuse-sweep", action="store_true", help="keep the sweep already in the JSON")
    ap.add_argument("--out", default=str(root / "scripts" / "results" / "validation_bag_adamw.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    out_path = Path(args.out)
    spec = load_spec(Path(__file__))
    target = args.target

    if args.trial:
        data = spec.dataset()
        full = collate(data)
        for lr in (1e-3, 3e-3, 1e-2):
            torch.manual_seed(0)
            m, gen = spec.model(), torch.Generator().manual_seed(0)
            opt = optimizer(m.parameters(), lr)
            curve = []
            for step in range(1, 1001):
                idx = torch.randint(0, N, (16,), generator=gen)
                opt.zero_grad()
                loss(m, collate([data[i] for i in idx])).mean().backward()
                opt.step()
                if step in (1, 50, 100, 200, 300, 400, 600, 800, 1000):
                    with torch.no_grad():
                        curve.append((step, round(float(loss(m, full).mean()), 3)))
            print(f"lr {lr:g}: {curve}", flush=True)
        with torch.no_grad():
            torch.manual_seed(0)
            print("initial loss", float(loss(spec.model(), full).mean()), "mean length", TOKENS_PER_EXAMPLE)
        return

    batches = [int(b) for b in args.batches.split(",")]
    grid = [float(x) for x in args.lr_grid.split(",")]
    old = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if args.reuse_sweep and old.get("sweep"):
        sweep = old["sweep"]
    else:
        t0 = time.time()
        opt0 = dataclasses.replace(spec, optimizer=lambda p: optimizer(p, args.lr0))
        g = bsprof.sweep.global_(opt0, target, batches=batches, lr_grid=grid, seeds=args.seeds,
                                 max_steps=args.max_steps, eval_examples=0, holdout=False, device="cpu",
                                 n_boot=1000, seed=0, max_seconds=2400)
        wall = time.time() - t0
        d = g.to_dict()
        per_batch, edge = [], []
        for b in d["batches"]:
            # per seed: the best lr (fewest steps) of the grid; at its edge?
            row = dict(batch=b["batch"], best_lr=b["lr"], steps=b["steps"], reached=b.get("reached"),
                       best_multiplier=b["lr"] / (args.lr0 * math.sqrt(b["batch"] / batches[0])))
            m = row["best_multiplier"]
            row["at_edge"] = "bottom" if math.isclose(m, min(grid), rel_tol=1e-6) else (
                "top" if math.isclose(m, max(grid), rel_tol=1e-6) else None)
            if row["at_edge"]:
                edge.append(b["batch"])
            # per seed (the sweep's branches): the fastest multipliers, ties kept; a seed whose best is at an edge
            seeds_best = {}
            for sd in sorted({br["seed"] for br in d["branches"]}):
                mine = {br["lr_multiplier"]: br["steps_to_target"] for br in d["branches"]
                        if br["batch"] == b["batch"] and br["seed"] == sd and br["steps_to_target"] is not None}
                fast = min(mine.values()) if mine else None
                seeds_best[sd] = sorted(k for k, v in mine.items() if v == fast)
            row["per_seed_best_multipliers"] = seeds_best
            row["per_seed_steps"] = {sd: {br["lr_multiplier"]: br["steps_to_target"] for br in d["branches"]
                                          if br["batch"] == b["batch"] and br["seed"] == sd} for sd in seeds_best}
            row["a_seed_at_edge"] = any(min(grid) in v or max(grid) in v for v in seeds_best.values())
            per_batch.append(row)
            print(f"   B {b['batch']:5d}  lr {b['lr']:.3g} (×{m:.3g})  steps {b['steps']}", flush=True)
        c = d["critical"]
        print(f"   sweep B_crit {c['value']:.1f} [{c['lo']:.1f}, {c['hi']:.1f}]  ({wall:.0f} s)", flush=True)
        sweep = dict(target=target, batches=batches, lr0=args.lr0, lr_grid=grid, seeds=args.seeds,
                     max_steps=args.max_steps, critical=c, fit=d.get("fit"), per_batch=per_batch,
                     best_lr_at_grid_edge=bool(edge), edge_batches=edge, compute=d.get("compute"),
                     wall_seconds=round(wall, 1), notes=d.get("notes"), warnings=d.get("warnings"), raw=d)
        out_path.write_text(json.dumps(json_clean(dict(task=__doc__.splitlines()[0], sweep=sweep)), indent=2) + "\n")

    c = sweep["critical"]
    measured = {int(r["batch"]): r["steps"] for r in sweep["per_batch"]}
    ref = next(r for r in sweep["per_batch"] if r["batch"] == 32)
    lr = ref["best_lr"]
    probes, summary = [], {}
    if args.probe_steps == 0:   # the table's usual probe length: ≈ 2.5 × the sweep's steps to the target at B = 32
        args.probe_steps = int(round(2.5 * ref["steps"] / 5) * 5)
    for seed in range(args.probe_seeds):
        spec_p = dataclasses.replace(spec, optimizer=lambda p: optimizer(p, lr))
        steps = args.probe_steps
        t0 = time.time()
        report = bsprof.measure(spec_p, steps=steps, batch_size=32, measure_every=max(5, steps // 12), rel_error=0.2,
                                max_seconds=4.0, device="cpu", hessian=False, seed=seed)
        wall = time.time() - t0
        try:
            s, note = report.summary_at(target), None
        except bsprof.BsprofError as e:
            s, note = report.summary, f"headline to the lowest measured loss: {e}"
        h = s.critical_batch
        ms = report.measurements
        opt_name = optimizer_name(report.config)
        p = dict(seed=seed, lr=lr, steps=steps, wall_seconds=round(wall, 1),
                 examples=int(sum(m.examples for m in ms)) + steps * 32, headline_note=note,
                 reached=min((m.loss for m in ms), default=math.nan) <= target,
                 headline=dict(value=h.value, lo=h.lo, hi=h.hi, quantity=s.critical_batch_quantity,
                               reason=s.critical_batch_reason),
                 ratio=h.value / c["value"], interval_contains_sweep=h.lo <= c["value"] <= h.hi,
                 candidates={k: path_b_crit(report, k, target) for k in CANDIDATES},
                 raw_candidates={k: path_b_crit(report, k, target) / P.calibration(opt_name, k) for k in CANDIDATES},
                 optimizer=opt_name, method=report.config.get("method"), diagnostics=report.diagnostics,
                 incomplete=report.incomplete,
                 rows=[dict(step=m.step, loss=m.loss, **{k: getattr(getattr(m, k, None), "value", None)
                                                         for k in CANDIDATES}) for m in ms])
        try:
            p["followed"], pred = predicted_steps(report, target, list(measured))
            p["predicted_steps"] = pred
            p["predicted_over_measured"] = {b: pred[b] / measured[b] if measured[b] else None for b in measured}
        except Exception as e:  # noqa: BLE001 - recorded
            p["prediction_error"] = f"{type(e).__name__}: {e}"
        report.to_json(out_path.parent / f"{out_path.stem}_probe{seed}.json")
        probes.append(p)
        print(f"   probe seed {seed}: headline {h.value:.1f} [{h.lo:.1f}, {h.hi:.1f}] ({s.critical_batch_quantity}) "
              f"ratio {p['ratio']:.2f}; raw " + ", ".join(f"{k} {v:.1f}" for k, v in p["raw_candidates"].items())
              + f"  ({wall:.0f} s)", flush=True)
        ratios = [q["ratio"] for q in probes]
        summary = dict(probe_steps=args.probe_steps,
                       geo_mean_ratio=math.exp(statistics.fmean(math.log(r) for r in ratios)),
                       ratios=ratios, all_intervals_contain=all(q["interval_contains_sweep"] for q in probes),
                       compute_ratio_examples=statistics.fmean(q["examples"] for q in probes)
                       / ((sweep.get("compute") or {}).get("train_examples") or math.nan),
                       compute_ratio_seconds=statistics.fmean(q["wall_seconds"] for q in probes)
                       / ((sweep.get("compute") or {}).get("seconds") or math.nan))
        out_path.write_text(json.dumps(json_clean(dict(task=__doc__.splitlines()[0], sweep=sweep, probes=probes,
                                                       summary=summary)), indent=2) + "\n")
    print(json.dumps(json_clean(summary), indent=1))


if __name__ == "__main__":
    main()
