"""Start-up time: `bsprof --help` and `import bsprof`, this tree against release 0.1.0, on one machine in one run.

    python scripts/bench_help.py [--runs 5] [--ref 9cd38d3]

Release 0.1.0 is checked out into a temporary `git worktree` (removed afterwards) and run from source with
PYTHONPATH pointing at it, as this tree is. Each command runs as a fresh `python` process; one warm-up run each
(byte-compiling, file cache), then ``--runs`` timed runs, alternating trees so that a change in the machine's load
hits both. Prints the medians and their ratio; writes scripts/results/bench_help.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = "9cd38d3"  # the last commit of release 0.1.0 (pyproject version 0.1.0, report schema 1)
COMMANDS = {"bsprof --help": ["-m", "bsprof", "--help"], "import bsprof": ["-c", "import bsprof"]}


def seconds(tree: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=tree, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ref", default=RELEASE, help="commit of the release to compare with")
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "bench_help.json")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "release"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), a.ref], check=True,
                       capture_output=True)
        try:
            trees = {"current": ROOT, "release_0.1.0": old}
            load_before = os.getloadavg()
            times = {name: {t: [] for t in trees} for name in COMMANDS}
            for name, args in COMMANDS.items():
                for tree in trees.values():
                    seconds(tree, args)  # warm-up
                for _ in range(a.runs):
                    for t, tree in trees.items():
                        times[name][t].append(seconds(tree, args))
            load_after = os.getloadavg()
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    result = {"ref": a.ref, "head": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                    capture_output=True, text=True).stdout.strip(),
              "runs": a.runs, "python": platform.python_version(), "cpus": os.cpu_count(),
              "load_average_before": load_before, "load_average_after": load_after, "commands": {}}
    for name, per_tree in times.items():
        med = {t: statistics.median(v) for t, v in per_tree.items()}
        ratio = med["release_0.1.0"] / med["current"]
        result["commands"][name] = {"median_s": med, "times_s": per_tree, "speedup": ratio}
        print(f"{name:15s} current {med['current']:.2f} s   release 0.1.0 {med['release_0.1.0']:.2f} s   "
              f"{ratio:.1f}× faster (median of {a.runs})")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} CPUs)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
