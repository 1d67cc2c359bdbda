"""Validate `bsprof measure` against ground truth (the figures of the measure issue).

    python scripts/validate_measure.py [--quick] [--json scripts/results/validate_measure.json]

1. Least squares (docs/science.md §5 V2, d = 20, σ² = 0.25, |Δ|² = 1, truth 26): --steps 0 --rel-error 0.05, 10 seeds.
2. Digits MLP at its initial weights: against the exact B_simple over all 1,797 examples (torch.func reference).
3. Digits MLP trained (SGD lr 0.1, batch 32): ±10% requests, examples spent per B_simple, coverage of the exact.
4. Probe training on digits: the noise scale rises as the loss falls; wall time of the bundled example.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bsprof.config import MeasureConfig
from bsprof.engine.loop import measure
from bsprof.engine.spec import build_dataset, build_model, load_spec
from bsprof.validation.reference import exact_noise_scale

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def least_squares(seeds: int) -> dict:
    rows = []
    for seed in range(seeds):
        r = measure(CONFIGS / "least_squares.py", MeasureConfig(steps=0, rel_error=0.05, seed=seed, device="cpu",
                                                                max_examples=2_000_000)).measurements[-1].to_row()
        rows.append({"seed": seed, "b_simple": r["b_simple"], "lo": r["b_simple_lo"], "hi": r["b_simple_hi"],
                     "covered": r["b_simple_lo"] <= 26 <= r["b_simple_hi"],
                     "within_5pct": abs(r["b_simple"] / 26 - 1) <= 0.05})
        print(f"  least squares seed {seed}: {r['b_simple']:.2f} [{r['b_simple_lo']:.2f}, {r['b_simple_hi']:.2f}]")
    return {"truth": 26.0, "rows": rows, "covered": sum(r["covered"] for r in rows),
            "within_5pct": sum(r["within_5pct"] for r in rows)}


def trained_digits(steps: int, seed: int = 0):
    """The digits MLP after `steps` of SGD (lr 0.1, batch 32), and its exact noise scale."""
    spec = load_spec(CONFIGS / "digits_mlp.py")
    torch.manual_seed(seed)
    model, data = build_model(spec), build_dataset(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = data[torch.randint(0, len(data), (32,), generator=g)]
        opt.zero_grad()
        spec.loss(model, (x, y)).mean().backward()
        opt.step()
    return spec, model, exact_noise_scale(model, spec.loss, data)


def digits_against_exact(steps: int, seeds: int, rel_error: float, tmp: Path, probe_batch: int = 0) -> dict:
    """probe_batch > 0 fixes B below n, so no draw is the exact whole dataset (efficiency of the pairs alone)."""
    spec, model, exact = trained_digits(steps)
    ckpt = tmp / f"digits_{steps}.pt"
    torch.save(model.state_dict(), ckpt)
    rows = []
    for seed in range(seeds):
        for method in ("per_example", "microbatch"):
            s = measure(spec, MeasureConfig(steps=0, rel_error=rel_error, seed=seed, checkpoint=str(ckpt),
                                            method=method, device="cpu", max_seconds=900,
                                            probe_batch=probe_batch)).measurements[-1].to_row()
            rows.append({"seed": seed, "method": s["method"], "b_simple": s["b_simple"], "lo": s["b_simple_lo"],
                         "hi": s["b_simple_hi"], "examples": s["examples"], "stopped_by": s["stopped_by"],
                         "covered": s["b_simple_lo"] * (1 - 1e-5) <= exact["b_simple"] <= s["b_simple_hi"] * (1 + 1e-5),
                         "rel_err": s["b_simple"] / exact["b_simple"] - 1,
                         "examples_per_b_simple": s["examples"] / exact["b_simple"]})
            print(f"  digits step {steps} seed {seed} {s['method']}: {s['b_simple']:.1f} "
                  f"[{s['b_simple_lo']:.1f}, {s['b_simple_hi']:.1f}] exact {exact['b_simple']:.1f}, "
                  f"{s['examples']} examples ({s['stopped_by']})")
    return {"steps": steps, "probe_batch": probe_batch, "exact": exact, "rel_error_asked": rel_error, "rows": rows,
            "covered": sum(r["covered"] for r in rows), "n": len(rows),
            "max_abs_rel_err": max(abs(r["rel_err"]) for r in rows),
            "median_examples_per_b_simple": sorted(r["examples_per_b_simple"] for r in rows)[len(rows) // 2]}


def probe_training() -> dict:
    t0 = time.perf_counter()
    cfg = MeasureConfig(steps=300, batch_size=32, lr=0.1, measure_every=60, rel_error=0.2, device="cpu")
    report = measure(CONFIGS / "digits_mlp.py", cfg)
    seconds = time.perf_counter() - t0
    rows = [{k: m.to_row()[k] for k in ("step", "loss", "b_simple", "b_simple_lo", "b_simple_hi", "status")}
            for m in report.measurements]
    for r in rows:
        print(f"  step {r['step']:4d} loss {r['loss']:.3f} B_simple {r['b_simple']:.1f}")
    return {"rows": rows, "growth": report.summary.to_dict().get("growth"), "seconds": seconds}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer seeds")
    p.add_argument("--json", type=Path, default=ROOT / "scripts/results/validate_measure.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    tmp = Path("/tmp/bsprof-validate")
    tmp.mkdir(exist_ok=True)
    out = {"torch": torch.__version__}
    print("1. least squares, truth 26")
    out["least_squares"] = least_squares(3 if args.quick else 10)
    print("2. digits MLP at init vs exact")
    out["digits_init"] = digits_against_exact(0, 2 if args.quick else 5, 0.1, tmp)
    print("3. digits MLP trained 1000 steps, ±10%")
    out["digits_trained"] = digits_against_exact(1000, 2 if args.quick else 5, 0.1, tmp)
    print("3b. the same with B fixed at 512 (no whole-dataset draw): examples spent for ±10%")
    out["digits_trained_fixed_B"] = digits_against_exact(1000, 2 if args.quick else 5, 0.1, tmp, 512)
    print("4. probe training on digits")
    out["probe_training"] = probe_training()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=float))
    ls, di, dt = out["least_squares"], out["digits_init"], out["digits_trained"]
    print(f"\nleast squares: {ls['covered']}/{len(ls['rows'])} intervals cover 26, "
          f"{ls['within_5pct']}/{len(ls['rows'])} within 5%")
    print(f"digits init: exact {di['exact']['b_simple']:.1f}, max |rel err| {di['max_abs_rel_err']:.3f}, "
          f"covered {di['covered']}/{di['n']}")
    print(f"digits trained: exact {dt['exact']['b_simple']:.1f}, max |rel err| {dt['max_abs_rel_err']:.3f}, "
          f"covered {dt['covered']}/{dt['n']}, median examples/B_simple {dt['median_examples_per_b_simple']:.0f}")
    df = out["digits_trained_fixed_B"]
    print(f"digits trained, B = 512: covered {df['covered']}/{df['n']}, max |rel err| {df['max_abs_rel_err']:.3f}, "
          f"median examples/B_simple {df['median_examples_per_b_simple']:.0f}")
    print(f"probe training: growth {out['probe_training']['growth']:.2f}x in {out['probe_training']['seconds']:.1f}s")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
