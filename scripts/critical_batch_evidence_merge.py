"""One-off provenance of scripts/results/critical_batch_evidence.json (how the committed results were assembled).

The runs of scripts/critical_batch_evidence.py were split across processes on a loaded 2-core machine:
  digits_sgd, digits_adam      one --out file (3 probe seeds at the reference lr, `--probe-seeds 3`);
  mnist_cnn_sgd probes         --no-sweep --probe-seeds 3 (probe lr fixed at 0.4 and 0.2);
  mnist_cnn_sgd sweep seed 0   --no-probes; the process crashed after the sweep (rules() on an empty probe list,
                               since fixed) so its per-batch result is transcribed from its log below;
  mnist_cnn_sgd sweep seed 1   --no-probes --sweep-seed 1.
The two MNIST sweep seeds are combined here with bsprof.sweep.fit.bootstrap_fit (median over seeds of each seed's
fewest steps over the lr grid; bootstrap over seeds), the same fit global_ uses.

    python scripts/critical_batch_evidence_merge.py DIGITS.json MNIST_PROBES.json MNIST_SWEEP1.json
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsprof.results import json_clean  # noqa: E402
from bsprof.sweep.fit import bootstrap_fit  # noqa: E402

# seed 0, transcribed from the log of `--tasks mnist_cnn_sgd --no-probes` (548 s):
SEED0 = {16: (0.2, 384), 32: (0.3, 315), 64: (0.4, 188), 128: (0.48, 168), 256: (0.267, 210)}
SEED0_FIT = dict(value=22.1, lo=0.1, hi=47.7)


def main():
    digits, probes, sweep1 = (json.loads(Path(p).read_text()) for p in sys.argv[1:4])
    m = probes["tasks"]["mnist_cnn_sgd"]
    s1 = sweep1["tasks"]["mnist_cnn_sgd"]["sweep"]
    rows1 = {b["batch"]: b for b in s1["batches"]}
    batches = sorted(SEED0)
    steps = [[SEED0[b][1]] + ([rows1[b]["steps"]] if rows1.get(b) and rows1[b]["steps"] is not None
                              and rows1[b]["reached"] else []) for b in batches]
    fit = bootstrap_fit(batches, steps, 0.9, 1000)
    comp1 = s1.get("compute") or {}
    m["sweep"] = dict(critical=fit.b_crit.to_dict(), s_min=fit.s_min.value, e_min=fit.e_min.value,
                      ref_lr=0.4, ref_lr_tuned=SEED0[32][0],
                      per_seed=dict(seed0=dict(batches={b: dict(lr=SEED0[b][0], steps=SEED0[b][1]) for b in batches},
                                               critical=SEED0_FIT, seconds=548),
                                    seed1=dict(batches={b: dict(lr=rows1[b]["lr"], steps=rows1[b]["steps"])
                                                        for b in rows1}, critical=s1["critical"], compute=comp1)),
                      steps_by_seed=dict(zip(batches, steps)),
                      compute=dict(train_examples=2 * comp1.get("train_examples", 0),
                                   seconds=548 + comp1.get("seconds", 0),
                                   note="train_examples: 2 × seed 1's (seed 0's count was lost with its process)"),
                      batches=[dict(batch=b, steps=float(sorted(x)[len(x) // 2] if len(x) % 2 else sum(x) / 2))
                               for b, x in zip(batches, steps)])
    tasks = {"digits_sgd": digits["tasks"]["digits_sgd"], "mnist_cnn_sgd": m,
             "digits_adam": digits["tasks"]["digits_adam"]}
    out = ROOT / "scripts" / "results" / "critical_batch_evidence.json"
    out.write_text(json.dumps(json_clean({"tasks": tasks}), indent=2) + "\n")
    print(f"mnist sweep 2 seeds: B_crit {fit.b_crit.value:.1f} [{fit.b_crit.lo:.1f}, {fit.b_crit.hi:.1f}]; wrote {out}")


if __name__ == "__main__":
    main()
