"""Does the default local sweep measure McCandlish's B_crit? And can B_crit be read off the local branches?

    python scripts/local_vs_global.py [--quick] [--tasks digits_sgd,digits_adam,teacher_mlp_sgd]

For tasks whose global critical batch (``bsprof.sweep.global_``: steps to a target loss, lr tuned on a grid,
S = S_min(1 + B_crit/B)) is saved in scripts/results/, this runs

1. the local sweep (``bsprof.sweep.local``) from the task's initial weights as a user would: default tolerance (1%
   relative), default examples E = 32 × the largest batch, default evaluation draw (held out), lr rule auto, batches
   b₀·2^k covering about B_crit/8 … 8·B_crit, lr grid 0.5,1,2 (the lr-grid-1 result is the multiplier-1 rows of the
   same branches, summarised by bsprof's own ``summary.local_batches``/``local_critical``: the branches are the same
   runs — same weights, data order and lr — so running them again would give the same rows). The lr at b₀ is the
   global sweep's best lr at its smallest batch (16), taken to b₀ by the same rule, and the SGD rule saturates at
   the same noise scale the global sweep used (as ``--report`` would): the lr schedule over B is the global one's.
2. the smallest batch's branch again (the engine's own set-up, weights and data order; its loss at E is checked
   against the sweep's row) at its best lr, to 2E examples, evaluated on the sweep's draw at ~70 example counts:
   L₀(e). For each larger batch B with final loss L(B) after E examples, e_B = the first e with L₀(e) = L(B)
   (linear in ln e between evaluations); then E/e_B = (1 + B/Bc)/(1 + b₀/Bc) (McCandlish eq. 2.11,
   E(B) = E_min(1 + B/B_crit), at the target L(B)), fitted for Bc by least squares in ln(E/e_B) over B (mean over
   seeds; per seed too; a bootstrap over batches for an interval). Also: the local bracket the global B_crit
   predicts through the same curve (the batch whose E/e_B equals E/e_tol, e_tol where L₀ first reaches
   (1 + tol)·L₀(E)).

Writes scripts/results/local_vs_global.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bsprof.sweep  # noqa: E402
from bsprof.engine.loop import train_step  # noqa: E402
from bsprof.engine.rng import caller_rng, seed_all  # noqa: E402
from bsprof.results import json_clean  # noqa: E402
from bsprof.sweep import branches as eng  # noqa: E402
from bsprof.sweep import fit as sfit  # noqa: E402
from bsprof.sweep import summary  # noqa: E402
from bsprof.sweep.config import sweep_config  # noqa: E402

OUT = ROOT / "scripts" / "results"
_spec = importlib.util.spec_from_file_location("cbe", ROOT / "scripts" / "critical_batch_evidence.py")
cbe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cbe)

# where each task's global sweep is saved (the sweep dict: critical, batches, fit/s_min, lr rule's noise scale)
GLOBAL = {
    "digits_sgd": ("validate_critical_batch.json", lambda d: d["global"]),
    "digits_adam": ("critical_batch_evidence.json", lambda d: d["tasks"]["digits_adam"]["sweep"]),
    "teacher_mlp_sgd": ("critical_batch_more_sgd.json", lambda d: d["tasks"]["teacher_mlp_sgd"]["sweep"]),
    "digits_mom_sgd": ("critical_batch_momentum.json", lambda d: d["tasks"]["digits_mom_sgd"]["sweep"]),
    "teacher_mlp_adam": ("critical_batch_more_adam.json", lambda d: d["tasks"]["teacher_mlp_adam"]["sweep"]),
}
# local batches b₀·2^k, k = 0..doublings (≈ B_crit/8 … 8·B_crit within the training set)
LOCAL = {"digits_sgd": (4, 6), "digits_adam": (16, 6), "teacher_mlp_sgd": (16, 6), "digits_mom_sgd": (16, 6),
         "teacher_mlp_adam": (128, 5)}
GRID = (0.5, 1.0, 2.0)


def global_info(name: str) -> dict:
    f, get = GLOBAL[name]
    g = get(json.loads((OUT / f).read_text()))
    b16 = min(g["batches"], key=lambda b: b["batch"])
    b_noise = g.get("config", {}).get("b_noise") if "config" in g else g.get("b_simple_init_for_lr_rule")
    s_min = (g.get("fit") or {}).get("s_min") or g.get("s_min")
    crit = g["critical"]
    return dict(file=f, critical=crit["value"], lo=crit["lo"], hi=crit["hi"], b_noise=b_noise or 0.0,
                smallest_batch=b16["batch"], lr_smallest=b16["lr"], steps_smallest=b16["steps"],
                examples_to_target_smallest=b16["steps"] * b16["batch"],
                s_min=s_min["value"] if s_min else None,
                e_min=s_min["value"] * crit["value"] if s_min else None,
                batches=[dict(batch=b["batch"], steps=b["steps"], lr=b["lr"]) for b in g["batches"]],
                compute_train_examples=(g.get("compute") or {}).get("train_examples"), config=global_config(g, name),
                target=None)


def global_config(g: dict, name: str) -> dict:
    """The global sweep's evaluation: from its config, else the task's sweep settings (critical_batch_evidence.py
    runs them with holdout=False: its notes say "also used for training")."""
    if "config" in g:
        return dict(eval_examples=g["config"]["eval_examples"], holdout=g["config"]["holdout"])
    return dict(eval_examples=cbe.TASKS[name]["sweep"]["eval_examples"], holdout=False)


def first_crossing(e: np.ndarray, L: np.ndarray, target: float) -> float:
    """The first example count where the curve reaches ``target`` (linear in ln e between points); nan if never,
    the first point's e if already there."""
    idx = np.nonzero(L <= target)[0]
    if len(idx) == 0:
        return math.nan
    i = idx[0]
    if i == 0:
        return float(e[0])
    la, lb = L[i - 1], L[i]
    w = 0.0 if la == lb else (la - target) / (la - lb)
    return float(math.exp((1 - w) * math.log(e[i - 1]) + w * math.log(e[i])))


def isotonic_decreasing(y) -> np.ndarray:
    """The least-squares non-increasing fit of ``y`` (pool adjacent violators): the curve with its SGD wiggles and
    late rises pooled, so that a first crossing is not decided by one lucky or unlucky evaluation."""
    blocks = []   # [mean, weight]
    for v in np.asarray(y, float):
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            (m2, w2), (m1, w1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    return np.concatenate([np.full(int(w), m) for m, w in blocks])


def model_ratio(B, bc, b0):
    return (1 + np.asarray(B, float) / bc) / (1 + b0 / bc)


def fit_bc(B: list, ratio: list, b0: float) -> float:
    """Least squares in ln(E/e_B) of (1 + B/Bc)/(1 + b₀/Bc) over a dense grid of ln Bc (b₀/100 … 1e4·max B);
    inf when the best is the grid's top (the ratios do not rise with B)."""
    B, r = np.asarray(B, float), np.asarray(ratio, float)
    if len(B) < 2:
        return math.nan
    grid = np.exp(np.linspace(math.log(b0 / 100), math.log(1e4 * B.max()), 4000))
    sse = [np.sum((np.log(r) - np.log(model_ratio(B, bc, b0))) ** 2) for bc in grid]
    k = int(np.argmin(sse))
    return math.inf if k == len(grid) - 1 else float(grid[k])


def bootstrap_bc(B, ratio, b0, n=400, seed=0):
    rng = np.random.default_rng(seed)
    B, r = np.asarray(B, float), np.asarray(ratio, float)
    vals = []
    for _ in range(n):
        k = rng.integers(0, len(B), len(B))
        if len(set(B[k])) < 2:
            continue
        vals.append(fit_bc(B[k], r[k], b0))
    v = np.asarray(vals)
    return float(np.quantile(v, 0.05)), float(np.quantile(v, 0.95))


def predicted_bracket(e, L, E, b0, bc, tol, batches):
    """The local critical batch the global B_crit predicts through L₀: B passes iff E/e_B ≤ E/e_tol."""
    l_e = float(np.interp(math.log(E), np.log(e), L))
    e_tol = first_crossing(e, L, (1 + tol) * l_e)
    r_tol = E / e_tol
    b_star = (r_tol * (1 + b0 / bc) - 1) * bc   # the B where the model ratio equals r_tol
    passing = [b for b in batches if b <= b_star]
    return dict(e_tol=e_tol, ratio_tol=r_tol, b_star=b_star, bracket=[max(passing) if passing else None,
                                                                       min([b for b in batches if b > b_star],
                                                                           default=None)])


def curve(spec, cfg, mult: float, E: int, points: int, label: str):
    """The smallest batch's branch as the sweep runs it (same set-up), to 2E examples, evaluated at ~``points``
    log-spaced example counts and at E: per seed (e, L)."""
    b0 = cfg.batch_sizes()[0]
    steps_total = 2 * cfg.branch_steps(b0)
    at = sorted(set(np.unique(np.round(np.geomspace(1, steps_total, points)).astype(int)).tolist()
                    + [cfg.branch_steps(b0)]))
    out = []
    with caller_rng():
        seed_all(cfg.seed)
        setup = eng.prepare(spec, cfg)
        budget = eng._Budget(math.inf, 0)
        for s in range(cfg.seeds):
            model, opt = eng._model(setup, s, eng._factor(setup, b0, mult))
            ex = eng._examples(setup, s, b0)
            es, Ls, t0 = [], [], time.time()
            for t in range(steps_total):
                train_step(model, opt, spec.loss, ex, b0, t)
                if t + 1 in at:
                    es.append((t + 1) * b0)
                    Ls.append(eng.evaluate(model, setup, budget)[0])
            out.append(dict(seed=cfg.seed + s, e=es, loss=Ls, seconds=round(time.time() - t0, 1)))
            print(f"   [{label}] curve seed {s}: {steps_total} steps at b0 {b0}, L(E) "
                  f"{Ls[es.index(cfg.branch_steps(b0) * b0)]:.4f}  L(2E) {Ls[-1]:.4f}  ({time.time() - t0:.0f} s)",
                  flush=True)
    return out, budget.train_examples + steps_total * b0 * cfg.seeds, budget.eval_examples


def mcc_from_local(summ, curves, E, b0, smooth=False):
    """e_B and E/e_B per batch (mean over seeds of L(B) against the seed-mean curve, raw or isotonic), the Bc fit."""
    e = np.asarray(curves[0]["e"], float)
    Lmean = np.mean([c["loss"] for c in curves], axis=0)
    if smooth:
        Lmean = isotonic_decreasing(Lmean)
    rows, B, R = [], [], []
    for s in summ[1:]:
        eb = first_crossing(e, Lmean, s.loss) if math.isfinite(s.loss) else math.nan
        r = E / eb if math.isfinite(eb) else math.nan
        # censored: L(B) no lower than the smallest batch's after ONE step (diverged, or the lr failed): only a
        # lower bound on E/e_B, and one that would dominate the fit; left out, like a branch that did not train
        censored = math.isfinite(eb) and eb <= e[0]
        rows.append(dict(batch=s.batch, loss=s.loss, e_B=eb, ratio=r, censored=censored))
        if math.isfinite(r) and not censored:
            B.append(s.batch)
            R.append(r)
    bc = fit_bc(B, R, b0)
    lo, hi = bootstrap_bc(B, R, b0) if len(B) >= 3 else (math.nan, math.nan)
    return dict(points=rows, used=B, bc=bc, bc_lo=lo, bc_hi=hi,
                not_used=[r["batch"] for r in rows if r["batch"] not in B])


def per_seed_bc(rows_branches, curves, summ, E, b0):
    out = []
    for c in curves:
        e, L = np.asarray(c["e"], float), np.asarray(c["loss"], float)
        B, R = [], []
        for s in summ[1:]:
            r = [x for x in rows_branches if x.batch == s.batch and x.lr_multiplier == s.lr_multiplier
                 and x.seed == c["seed"]]
            if not r or not math.isfinite(r[0].loss):
                continue
            eb = first_crossing(e, L, r[0].loss)
            if math.isfinite(eb) and eb > e[0]:
                B.append(s.batch)
                R.append(E / eb)
        out.append(fit_bc(B, R, b0))
    return out


def run_task(name: str, quick: bool, seeds: int, variant: str = "default") -> dict:
    t0 = time.time()
    task = cbe.TASKS[name]
    g = global_info(name)
    b0, dbl = LOCAL[name]
    if quick:
        dbl = min(dbl, 3)
    rule = "sqrt" if task["opt"] in (cbe.adam, cbe.adamw) else "linear"
    # lr at b₀: the global sweep's best lr at its smallest batch, taken to b₀ by the same rule and noise scale
    lr_b0 = g["lr_smallest"] / sfit.lr_factor(rule, g["smallest_batch"], b0, g["b_noise"] or None)
    spec = dataclasses.replace(task["spec"](), optimizer=task["opt"](lr_b0))
    opts = dict(base_batch=b0, doublings=dbl, lr_grid=list(GRID), seeds=seeds, b_noise=g["b_noise"], device="cpu")
    if variant == "matched":
        # E = the examples the global sweep needs to reach its target at b₀ (its smallest batch's, taken to b₀ by its
        # fit), and the global sweep's evaluation (its draw, not held out): the branches cover the global path
        opts["examples"] = int(round(g["examples_to_target_smallest"] * (1 + b0 / g["critical"])
                                     / (1 + g["smallest_batch"] / g["critical"])))
        gcfg = g["config"]
        opts["eval_examples"], opts["holdout"] = gcfg["eval_examples"], gcfg["holdout"]
    cfg = sweep_config(method="local", **opts)
    E = cfg.branch_examples()
    bs, bc = g["smallest_batch"], g["critical"]
    e_target_b0 = g["examples_to_target_smallest"] * (1 + b0 / bc) / (1 + bs / bc)   # the global path at b₀
    print(f"== {name} ({variant}): global B_crit {g['critical']:.1f} [{g['lo']:.1f}, {g['hi']:.1f}]; local batches "
          f"{cfg.batch_sizes()}, E = {E}, lr(b0) {lr_b0:.4g} ({rule}, B_n {g['b_noise']:.3g}), {seeds} seed(s)",
          flush=True)
    r = bsprof.sweep.local(spec, **opts)
    res = r.to_dict()
    for s in r.batches:
        print(f"   [{name}] B {s.batch:5d}  lr {s.lr:.4g} (x{s.lr_multiplier:g})  loss {s.loss:.4f} ± {s.loss_se:.4f}"
              f"  {'pass' if s.passed else 'FAIL'}", flush=True)
    c = r.critical
    print(f"   [{name}] local (grid 0.5,1,2): {c.value} [{c.lo}, {c.hi}] per seed {list(r.critical_by_seed)}  "
          f"({r.compute.seconds:.0f} s)", flush=True)
    # lr grid [1]: the multiplier-1 rows of the same branches, summarised as the sweep does
    ones = [b for b in r.branches if b.lr_multiplier == 1.0]
    est1, summ1 = summary.local_critical(summary.local_batches(ones), cfg.tolerance, cfg.tolerance_mode)
    by_seed1 = summary.critical_by_seed(ones, cfg.tolerance, cfg.tolerance_mode)
    print(f"   [{name}] local (grid 1): {est1.value} [{est1.lo}, {est1.hi}] per seed {by_seed1}  losses "
          + ", ".join(f"{s.batch}:{s.loss:.4f}" for s in summ1), flush=True)

    out = dict(task=name, variant=variant, options=opts, desc=task["desc"], global_=g, e_target_b0=e_target_b0,
               local_batches=cfg.batch_sizes(), examples_per_branch=E,
               lr_b0=lr_b0, rule=rule, local=dict(critical=res["critical"], critical_by_seed=res["critical_by_seed"],
                                                  batches=res["batches"], notes=res["notes"],
                                                  compute=res["compute"], data=res.get("data"),
                                                  initial_loss=res["initial_loss"]),
               local_grid1=dict(critical=dict(value=est1.value, lo=est1.lo, hi=est1.hi, status=est1.status.value),
                                critical_by_seed=by_seed1, batches=[s.to_dict() for s in summ1],
                                train_examples=sum(b.examples for b in ones)),
               branches=[b.to_dict() for b in r.branches])

    # 2: the smallest batch's curve at its best lr multiplier (for grid 3 and for grid 1)
    results = {}
    for label, summ, rows, mult in (("grid3", list(r.batches), list(r.branches), r.batches[0].lr_multiplier),
                                    ("grid1", summ1, ones, 1.0)):
        if label == "grid1" and mult == r.batches[0].lr_multiplier and "grid3" in results:
            curves, ctrain, ceval = results["grid3"]["curves"], 0, 0   # the same branch: reuse
            curves_reused = True
        else:
            curves, ctrain, ceval = curve(spec, cfg, mult, E, 40 if quick else 70, f"{name} {label}")
            curves_reused = False
        # check: the curve's loss at E is the sweep's branch loss
        check = []
        for cv in curves:
            row = [b for b in rows if b.batch == b0 and b.lr_multiplier == mult and b.seed == cv["seed"]][0]
            check.append(abs(cv["loss"][cv["e"].index(cfg.branch_steps(b0) * b0)] - row.loss))
        m = mcc_from_local(summ, curves, E, b0)
        m["per_seed_bc"] = per_seed_bc(rows, curves, summ, E, b0)
        iso = mcc_from_local(summ, curves, E, b0, smooth=True)
        m["isotonic"] = dict(bc=iso["bc"], bc_lo=iso["bc_lo"], bc_hi=iso["bc_hi"], points=iso["points"])
        e = np.asarray(curves[0]["e"], float)
        Lm = np.mean([cv["loss"] for cv in curves], axis=0)
        m["predicted_local_from_global"] = predicted_bracket(e, Lm, E, b0, g["critical"], cfg.tolerance,
                                                             cfg.batch_sizes())
        # the curve's slope at E: α = -d ln L / d ln e, least squares over the evaluations in [E/4, 2E]; through
        # it, the smooth version of the prediction: E/e_tol = (1 + tol)^(1/α)
        sel = (e >= E / 4) & (e <= 2 * E)
        m["alpha_at_E"] = float(-np.polyfit(np.log(e[sel]), np.log(Lm[sel]), 1)[0])
        if m["alpha_at_E"] > 0:
            r_tol = (1 + cfg.tolerance) ** (1 / m["alpha_at_E"])
            b_star = (r_tol * (1 + b0 / g["critical"]) - 1) * g["critical"]
            m["predicted_local_from_global_alpha"] = dict(ratio_tol=r_tol, b_star=b_star)
        m["L0_at_E"] = float(np.interp(math.log(E), np.log(e), Lm))
        m["L0_at_2E"] = float(Lm[-1])
        # where along the curve the global target lies (the eval here is held out; the global's was not)
        m["e_at_global_target_on_local_eval"] = first_crossing(e, Lm, task["target"])
        results[label] = dict(mult_b0=mult, curves=curves, curve_train_examples=ctrain, curve_eval_examples=ceval,
                              curve_reused=curves_reused, check_abs_diff_at_E=check, **m)
        print(f"   [{name} {label}] b0 lr x{mult:g}: L0(E) {m['L0_at_E']:.4f}, L0(2E) {m['L0_at_2E']:.4f}, "
              f"slope α {m['alpha_at_E']:.3f}; check |ΔL(E)| {max(check):.2e}", flush=True)
        for p in m["points"]:
            print(f"      B {p['batch']:5d}  L {p['loss']:.4f}  e_B {p['e_B']:9.1f}  E/e_B {p['ratio']:.3f}"
                  + ("  (censored: no better than one step at b0)" if p["censored"] else ""), flush=True)
        pr = m["predicted_local_from_global"]
        print(f"   [{name} {label}] isotonic curve: Bc {iso['bc']:.1f} [{iso['bc_lo']:.1f}, {iso['bc_hi']:.1f}]; E/e_B "
              + ", ".join(f"{p['batch']}:{p['ratio']:.2f}" for p in iso["points"]), flush=True)
        print(f"   [{name} {label}] McCandlish-from-local Bc {m['bc']:.1f} [{m['bc_lo']:.1f}, {m['bc_hi']:.1f}] "
              f"(per seed {', '.join(f'{x:.1f}' for x in m['per_seed_bc'])}); global {g['critical']:.1f}; "
              f"the global B_crit predicts the 1% local bracket {pr['bracket']} (B* {pr['b_star']:.1f}, "
              f"E/e_tol {pr['ratio_tol']:.3f}; through α: B* "
              f"{m.get('predicted_local_from_global_alpha', {}).get('b_star', math.nan):.1f})", flush=True)
    out["mcc"] = results
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _n(x):
    return math.nan if x is None else x


def fmt_est(v, lo, hi):
    f = lambda x: "∞" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.0f}"  # noqa: E731
    return f"{f(v)} [{f(lo)}, {f(hi)}]"


def table(results: list[dict]) -> str:
    lines = ["| task | global B_crit [90%] | local bracket, grid 0.5,1,2 (grid 1) | local/global | "
             "McCandlish-from-local Bc [90%], grid 0.5,1,2 (grid 1) | ratio | predicted 1% bracket from global | "
             "E / global E(b0→target) | compute: global / local / +curve (train examples) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        g, lc, l1, m3, m1 = r["global_"], r["local"]["critical"], r["local_grid1"]["critical"], r["mcc"]["grid3"], \
            r["mcc"]["grid1"]
        lv = _n(lc["lo"])
        lines.append(
            f"| {r['task']} ({r.get('variant', 'default')}) | {fmt_est(g['critical'], g['lo'], g['hi'])} | "
            f"[{_n(lc['lo']):.0f}, {_n(lc['hi']):.0f}] ([{_n(l1['lo']):.0f}, {_n(l1['hi']):.0f}]) | "
            f"{lv / g['critical']:.2f} | {fmt_est(_n(m3['bc']), _n(m3['bc_lo']), _n(m3['bc_hi']))} "
            f"({_n(m1['bc']):.0f}) | {_n(m3['bc']) / g['critical']:.2f} | "
            f"{m3['predicted_local_from_global']['bracket']} | "
            f"{r['examples_per_branch'] / r['e_target_b0']:.1f} | "
            f"{g['compute_train_examples']:,} / {r['local']['compute']['train_examples']:,} / "
            f"+{m3['curve_train_examples'] + m1['curve_train_examples']:,} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="digits_sgd,digits_adam,teacher_mlp_sgd")
    ap.add_argument("--quick", action="store_true", help="1 seed, 4 batches (a smoke test)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--variant", choices=("default", "matched"), default="default",
                    help="default: the local sweep's defaults (E = 32 × largest batch, held-out draw); matched: E = "
                         "the global sweep's examples to its target at b0, and its evaluation draw")
    ap.add_argument("--out", default=str(OUT / "local_vs_global.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    path = Path(a.out)
    done = json.loads(path.read_text()) if path.exists() and not a.quick else {}
    results = []
    for name in a.tasks.split(","):
        res = run_task(name, a.quick, 1 if a.quick else a.seeds, a.variant)
        results.append(res)
        if not a.quick:
            done.setdefault("tasks" if a.variant == "default" else "tasks_matched", {})[name] = res
            done["question"] = ("on tasks with a known global (McCandlish) B_crit, what does the default local sweep "
                                "report, and does E/e_B = (1 + B/Bc)/(1 + b0/Bc) along the smallest batch's curve "
                                "recover the global B_crit?")
            path.write_text(json.dumps(json_clean(done), indent=1))
    print(table(results))
    if not a.quick:   # everything saved so far, both variants
        for key in ("tasks", "tasks_matched"):
            if done.get(key):
                print(f"\n{key} (saved):")
                print(table(list(done[key].values())))
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
