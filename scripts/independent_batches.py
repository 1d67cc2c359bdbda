"""Training-step pairs under shuffled epochs against independent batches (docs/science.md, "Training-step pairs
and shuffled epochs"): the validation table's probes rerun with each probe training batch a fresh uniform draw
(``Examples.train_batch`` patched; measurement draws unchanged), then, per optimizer family, the factor swept
B_crit / B_simple-window path average and its leave-one-out spread under both.

    python scripts/independent_batches.py run --tasks digits_sgd,... --seeds 3   # writes ..._independent_batches.json
    python scripts/independent_batches.py compare
"""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "scripts" / "results"
FAMILY = {"adam": lambda n: "adam" in n, "momentum": lambda n: "_mom_" in n,
          "sgd": lambda n: n.endswith("_sgd") and not any(m in n for m in ("mom", "nesterov"))}


def run(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from bsprof.engine import data

    epochs = data.Examples.train_batch

    def independent(self, size, parts=1):
        if not self.iterable:  # a new permutation every step: the batch is independent of the weights
            self._epoch = torch.randperm(self.n, generator=self.train_generator).tolist()
        return epochs(self, size, parts)

    data.Examples.train_batch = independent
    sys.argv = ["validation_table.py", *argv, "--out", str(OUT / "validation_table_independent_batches.json")]
    runpy.run_path(str(ROOT / "scripts" / "validation_table.py"), run_name="__main__")


def geo(xs) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def compare() -> None:
    for family, member in FAMILY.items():
        for label, name in (("epochs", "validation_table.json"),
                            ("independent", "validation_table_independent_batches.json")):
            need = {}
            for task, t in json.loads((OUT / name).read_text())["tasks"].items():
                ratios = [t["sweep"]["critical"]["value"] / p["raw_candidates"]["b_simple_window"]
                          for p in t["probes"] if (p.get("raw_candidates") or {}).get("b_simple_window")]
                if member(task) and ratios:
                    need[task] = geo(ratios)
            loo = {k: geo([x for j, x in need.items() if j != k]) / v for k, v in need.items()}
            spread = sum(abs(math.log(r)) for r in loo.values()) / len(loo)
            within = sum(1 for r in loo.values() if 1 / 1.5 <= r <= 1.5)
            print(f"{family:9s} {label:12s} factor {geo(list(need.values())):.2f} over {len(need)} tasks; "
                  f"leave-one-out mean |ln ratio| {spread:.3f}, within 1.5×: {within} of {len(need)}")


if __name__ == "__main__":
    run(sys.argv[2:]) if sys.argv[1:2] == ["run"] else compare()
