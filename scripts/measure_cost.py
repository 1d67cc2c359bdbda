"""Seconds measuring vs training in `bsprof measure` at default options, for each bundled example.

    OMP_NUM_THREADS=1 nice python scripts/measure_cost.py [--steps 200] [--only digits_mlp ...] [key=value ...]

Runs ``bsprof.measure(configs/NAME.py, steps=STEPS)`` (every other option at its default, plus any key=value
given) and prints one row per example from ``report.timing`` (``bsprof.engine.cost``): seconds measuring, seconds
training, their ratio, the probe chosen, and the worst measurement against the training it interleaves with.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bsprof  # noqa: E402
from bsprof.engine.cost import interleaved  # noqa: E402

EXAMPLES = ("least_squares", "digits_mlp", "digits_cnn", "mnist_mlp", "char_transformer")


def row(name: str, steps: int, options: dict) -> str:
    t0 = time.perf_counter()
    r = bsprof.measure(ROOT / "configs" / f"{name}.py", steps=steps, **options)
    wall = time.perf_counter() - t0
    t = r.timing
    m, tr = t["measuring_s"], t["training_s"]
    worst = max((a / b for a, b in zip(t["measurement_s"], interleaved(t)) if b > 0), default=float("nan"))
    draws = "/".join(str(x.n_draws) for x in r.measurements)
    stops = "/".join(sorted({x.stopped_by for x in r.measurements}))
    return (f"| {name} | {steps} | {r.config['method_resolved']} | {m:.1f} | {tr:.1f} | {m / tr:.2f} | "
            f"{worst:.2f} | {draws} | {stops} | {wall:.0f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--only", nargs="*", default=EXAMPLES)
    ap.add_argument("options", nargs="*", help="MeasureConfig fields as key=value (e.g. rel_error=0.3)")
    a = ap.parse_args(argv)
    options = {k: type(getattr(bsprof.MeasureConfig, k))(v) for k, v in (o.split("=", 1) for o in a.options)}
    print("| example | steps | probe | measuring s | training s | ratio | worst measurement / its training "
          "| draws per measurement | stopped by | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.only:
        print(row(name, a.steps, options), flush=True)


if __name__ == "__main__":
    main()
