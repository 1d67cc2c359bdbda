"""Print the batch-size schedule to a target loss, with its predicted savings, from an MNIST measurement.

    bsprof measure configs/mnist_mlp.py --steps 300 --out bsprof-out/mnist
    python scripts/schedule_mnist.py bsprof-out/mnist/report.json --target-loss 0.15 [--rule noise] [--max-batch 4096]

The same as `bsprof schedule REPORT --target-loss L`, through the Python API (``bsprof.schedule.plan``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402

from bsprof.cli.schedule import tables  # noqa: E402
from bsprof.errors import BsprofError  # noqa: E402
from bsprof.output.report import Report  # noqa: E402
from bsprof.schedule import ScheduleConfig, plan  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="report.json from `bsprof measure configs/mnist_mlp.py`")
    ap.add_argument("--target-loss", type=float, required=True)
    ap.add_argument("--rule", default="noise")
    ap.add_argument("--max-batch", type=int, default=4096)
    ap.add_argument("--allow-extrapolation", action="store_true")
    args = ap.parse_args()
    console = Console()
    try:
        report = Report.from_json(args.report)
        schedule = plan(report, ScheduleConfig(target_loss=args.target_loss, rule=args.rule,
                                               max_batch=args.max_batch,
                                               allow_extrapolation=args.allow_extrapolation))
    except BsprofError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    for w in schedule.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    for part in tables(schedule):
        console.print(part)
    current = next(b for b in schedule.baselines if b.get("current"))
    p = schedule.prediction
    console.print(f"\nAgainst the current constant batch {current['batch_size']:.0f}: the schedule takes "
                  f"{p['steps']:,.0f} instead of {current['steps']:,.0f} steps "
                  f"({-current['steps_saved']:+.0%}) and "
                  f"{p['examples']:,.0f} instead of {current['examples']:,.0f} examples "
                  f"({-current['examples_saved']:+.0%}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
