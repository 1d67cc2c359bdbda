"""One more out-of-sample row for the validation table (docs/validation.md): a tabular MLP with dropout, momentum SGD.

    python scripts/validation_dropout_mom.py [--trial] [--loss-gap] [--target 0.45] [--lr-grid 0.0625,…,4]

This file is also the task's spec file (model, dataset, loss, optimizer at the top level; the driver below only
runs under ``__main__``), so ``bsprof measure scripts/validation_dropout_mom.py`` measures the same task.

Task: an MLP 20 → 128 → ReLU → Dropout(0.2) → 128 → ReLU → Dropout(0.2) → 1 on 8,192 synthetic rows generated
deterministically below (Gaussian inputs with a random correlation structure; the target a fixed random smooth
nonlinear function of three input directions, standardised, plus heteroscedastic Gaussian noise whose standard
deviation 0.15–0.65 rises with input 0), per-example squared error, SGD with momentum 0.9 and weight decay 5e-4.
Training steps run with dropout on; the sweep's evaluations (eval mode) with it off, while the probe's rows record
the dropout-on loss: ``--loss-gap`` measures the difference and re-reads the probes at the matching loss. Target 0.45
(initial loss 1.20, noise floor 0.185; a batch-16 run at lr 0.01–0.02 reaches it in 250–450 steps); the linear rule
gives ×64 from batch 16 to 1024, so the grid reaches down to ×1/16 (the best at 1024 was ×1/4).

Protocol (scripts/critical_batch_evidence.py, scripts/validation_table.py, scripts/validation_bag_adamw.py): a global
sweep (``bsprof.sweep.global_``, steps to a target training loss over the whole dataset per batch, lr tuned per
batch on a grid around SGD's linear rule, 2 seeds, S = S_min(1 + B_crit/B), bootstrap interval), then 3 probe seeds
of ``bsprof.measure`` at batch 32 with the sweep's tuned lr there (validation_table.probe's options); headline =
``report.summary_at(target).critical_batch``. Writes scripts/results/validation_dropout_mom.json.
"""

from __future__ import annotations

import math

import torch
from torch import nn

D_IN, HIDDEN, N = 20, 128, 8192
LR = 0.01


def _generate():
    g = torch.Generator().manual_seed(20260314)
    # a random correlation matrix: C = A Aᵀ + 0.5 I rescaled to unit diagonal
    a = torch.randn(D_IN, D_IN, generator=g) / math.sqrt(D_IN)
    c = a @ a.T + 0.5 * torch.eye(D_IN)
    d = c.diag().rsqrt()
    c = d[:, None] * c * d[None, :]
    x = torch.randn(N, D_IN, generator=g) @ torch.linalg.cholesky(c).T
    # three random directions, each projection standardised
    w = torch.randn(D_IN, 3, generator=g)
    u = x @ w
    u = (u - u.mean(0)) / u.std(0)
    f = torch.sin(1.5 * u[:, 0]) + 0.6 * u[:, 1] * torch.tanh(u[:, 2]) + 0.4 * torch.cos(u[:, 0] + u[:, 2]) \
        + 0.3 * u[:, 1]
    f = (f - f.mean()) / f.std()
    sigma = 0.15 + 0.5 * torch.sigmoid(2.0 * x[:, 0])       # heteroscedastic: the noise rises with input 0
    y = f + sigma * torch.randn(N, generator=g)
    return x, y, float((sigma ** 2).mean())


X, Y, NOISE_FLOOR = _generate()


def model():
    return nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU(), nn.Dropout(0.2), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(HIDDEN, 1))


def dataset():
    return torch.utils.data.TensorDataset(X, Y)


def loss(model, batch):
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2


def optimizer(params, lr=LR):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)


# -- the driver ----------------------------------------------------------------------------------------------
def main():  # noqa: C901
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(root / "scripts"))
    import validation_row

    from bsprof.engine.spec import load_spec

    ap = validation_row.arguments(__doc__.splitlines()[0], 0.45, LR, "0.0625,0.125,0.25,0.5,1,2,4",
                                  "validation_dropout_mom.json")
    ap.add_argument("--loss-gap", action="store_true",
                    help="after the run: the dropout-on loss (what the probe's rows record) against the eval-mode loss "
                         "(what the sweep's target is on) along batch-32 runs at the probe lr, and the saved probes' "
                         "headline and predicted steps re-read at the dropout-on loss matching the target")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out_path = Path(args.out)
    spec = load_spec(Path(__file__))
    target = args.target

    if args.trial:
        with torch.no_grad():
            torch.manual_seed(0)
            m0 = spec.model().eval()
            print(f"initial loss {float(loss(m0, (X, Y)).mean()):.3f}  noise floor {NOISE_FLOOR:.3f}  "
                  f"var(y) {float(Y.var()):.3f}", flush=True)
        for batch, lrs in ((16, (args.lr0 / 4, args.lr0 / 2, args.lr0, 2 * args.lr0, 4 * args.lr0)),
                           (1024, (0.05, 0.1, 0.2, 0.4, 0.8))):
            for lr in lrs:
                torch.manual_seed(0)
                m, gen = spec.model(), torch.Generator().manual_seed(0)
                opt = optimizer(m.parameters(), lr)
                curve = []
                for step in range(1, 801):
                    idx = torch.randint(0, N, (batch,), generator=gen)
                    m.train()
                    opt.zero_grad()
                    loss(m, (X[idx], Y[idx])).mean().backward()
                    opt.step()
                    if step in (1, 25, 50, 100, 200, 300, 400, 600, 800):
                        m.eval()
                        with torch.no_grad():
                            curve.append((step, round(float(loss(m, (X, Y)).mean()), 3)))
                print(f"B {batch} lr {lr:g}: {curve}", flush=True)
        return

    if args.loss_gap:
        return loss_gap(args, out_path, target)

    return validation_row.run_row(spec, optimizer, args, out_path, __doc__.splitlines()[0], rule="linear")


def loss_gap(args, out_path, target):
    """Dropout is on in the probe's rows (their loss is the draws' mean, train mode) and off in the sweep's
    evaluations (eval mode): the same target names two different points of training. Along 3 batch-32 runs at the
    probe's lr: the whole-dataset loss both ways every 10 steps; the dropout-on loss where the eval-mode loss is the
    target (a line fitted through the points with eval-mode loss within ±0.15 of it); then the saved probes'
    headline and predicted steps at that loss."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from validation_table import predicted_steps

    from bsprof.output.report import Report
    from bsprof.results import json_clean

    d = json.loads(out_path.read_text())
    lr = d["probes"][0]["lr"]
    steps = d["summary"]["probe_steps"]
    pairs = []
    for seed in range(3):
        torch.manual_seed(seed)
        m, gen = model(), torch.Generator().manual_seed(seed)
        opt = optimizer(m.parameters(), lr)
        for step in range(1, steps + 1):
            idx = torch.randint(0, N, (32,), generator=gen)
            m.train()
            opt.zero_grad()
            loss(m, (X[idx], Y[idx])).mean().backward()
            opt.step()
            if step % 10 == 0:
                with torch.no_grad():
                    on = float(loss(m, (X, Y)).mean())
                    m.eval()
                    off = float(loss(m, (X, Y)).mean())
                pairs.append((seed, step, off, on))
    near = [(off, on) for _, _, off, on in pairs if abs(off - target) <= 0.15]
    xs, ys = torch.tensor([a for a, _ in near]), torch.tensor([b for _, b in near])
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
    on_target = float(ys.mean() + slope * (target - xs.mean()))
    measured = {int(r["batch"]): r["steps"] for r in d["sweep"]["per_batch"]}
    sweep_b = d["sweep"]["critical"]["value"]
    reread = []
    for seed in range(len(d["probes"])):
        report = Report.from_json(out_path.parent / f"{out_path.stem}_probe{seed}.json")
        h = report.summary_at(on_target).critical_batch
        _, pred = predicted_steps(report, on_target, list(measured))
        reread.append(dict(seed=seed, headline=dict(value=h.value, lo=h.lo, hi=h.hi), ratio=h.value / sweep_b,
                           predicted_over_measured={b: pred[b] / measured[b] for b in measured}))
        print(f"   probe {seed} at dropout-on loss {on_target:.3f}: headline {h.value:.1f} [{h.lo:.1f}, {h.hi:.1f}] "
              f"ratio {h.value / sweep_b:.2f}; predicted/measured "
              + ", ".join(f"{pred[b] / measured[b]:.2f}" for b in measured), flush=True)
    res = dict(lr=lr, target_eval_mode=target, dropout_on_at_target=on_target, fit_slope=slope,
               n_points_fitted=len(near), pairs=[dict(seed=a, step=b, eval_mode=c, dropout_on=e)
                                                for a, b, c, e in pairs], reread=reread)
    print(f"   eval-mode loss {target} ↔ dropout-on loss {on_target:.3f} ({len(near)} points)", flush=True)
    out = out_path.parent / f"{out_path.stem}_loss_gap.json"
    out.write_text(json.dumps(json_clean(res), indent=2) + "\n")


if __name__ == "__main__":
    main()
