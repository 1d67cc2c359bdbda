"""Which noise scale predicts the swept critical batch under Adam? (issue 14, evidence; a study, not a test)

    python scripts/adam_candidates.py [--tasks digits_adam,mnist_cnn_adam] [--n 512] [--seed 0]

For each task of scripts/critical_batch_evidence.py, train as the probe does (batch 32, the sweep's tuned lr at
B = 32, from scripts/results/validation_table.json) and, every few steps until the training loss reaches the
target, take N per-example gradients g_a (a plain loop, exact) and the optimizer's state, and compute

    B_w = Σ_i w_i Σ_ii / Σ_i w_i G_i²       diagonal weights w (unbiased per coordinate):
        simple   w = 1                      tr Σ / |G|²
        pre      w = p                      tr(PΣ)/GᵀPG, p = 1/(√v̂ + ε) (Adam's preconditioner)
        update   w = p²                     tr(PΣP)/|PG|², the noise scale of the update direction
        fisher   w = f                      B_noise with H ≈ diag Fisher, f_i = E_a g_ai²
        fisher_p w = p² f                   the same for the update P g
    B_full = tr(HΣ)/GᵀHG with H = Σ (the full Fisher, centred; split-half U-statistics), with and without P,
    B_hess = tr(HΣ)/GᵀHG with the exact Hessian of the sample's mean loss (K Hessian-vector products),
             with and without P (McCandlish's B_noise for the update −ηPg).
Every quantity is summarised by its geometric mean over the checkpoints before the target, and divided by the
sweep's B_crit (the same file). Writes scripts/results/adam_candidates.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import critical_batch_evidence as cbe  # noqa: E402

OUT = ROOT / "scripts" / "results"
TASKS = ("digits_sgd", "mnist_cnn_sgd", "digits_adam", "shakespeare_adam", "mnist_cnn_adam", "mnist_mlp_adam")


def collate(items):
    return torch.utils.data.default_collate(items)


def flat_grad(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def per_example(model, loss_fn, items):
    """(N × n) per-example gradients and their losses, one backward each (the slow exact reference)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows, losses = [], []
    for it in items:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model, collate([it])).sum()
        loss.backward()
        rows.append(flat_grad(params).double())
        losses.append(float(loss.detach()))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows), torch.tensor(losses, dtype=torch.float64)


def hvp(model, loss_fn, batch, vectors):
    """H v for each v (H: the Hessian of the batch's mean loss), by double backward."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model, batch).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    out = []
    for i, v in enumerate(vectors):
        hv = torch.autograd.grad((flat * v.to(flat.dtype)).sum(), params, retain_graph=i < len(vectors) - 1)
        out.append(torch.cat([h.reshape(-1) for h in hv]).double())
    return out


def preconditioner(opt, params):
    """Adam's p = 1/(√v̂ + ε) (bias-corrected), or ones for SGD."""
    if not isinstance(opt, torch.optim.Adam):
        return None
    ps = []
    for p in params:
        st = opt.state.get(p, {})
        if "exp_avg_sq" not in st:
            return None
        beta2 = opt.param_groups[0]["betas"][1]
        eps = opt.param_groups[0]["eps"]
        step = float(st["step"])
        v = st["exp_avg_sq"] / (1 - beta2 ** step)
        ps.append((1.0 / (v.sqrt() + eps)).reshape(-1))
    return torch.cat(ps).double()


def candidates(model, loss_fn, items, opt, k_hvp):
    params = [p for p in model.parameters() if p.requires_grad]
    X, losses = per_example(model, loss_fn, items)
    N = X.shape[0]
    g = X.mean(0)
    var = X.var(0, unbiased=True)                      # Σ_ii
    G2 = g ** 2 - var / N                              # unbiased G_i²
    f = var + G2                                       # diag Fisher E g_i²
    p = preconditioner(opt, params)
    out = {"loss": float(losses.mean())}

    live = (X != 0).any(0)                             # coordinates that received a gradient in the sample

    def diag(w):
        return float((w * var)[live].sum() / (w * G2)[live].sum())

    out["simple"] = diag(torch.ones_like(var))
    # Adam between its two limits (docs/science.md §6): small B, v ≈ Σ_ii/B, P ∝ 1/σ; large B, P = 1/|G| (sign).
    # With lr tuned per B and H diagonal, E_min/S_min = (Σ|G_i|)² / (Σ G_i²/σ_i)², whatever H's diagonal.
    ok = live & (var > 0)
    sig = var[ok].sqrt()
    a = float((G2[ok] / sig).sum())
    out["cross"] = float(g[ok].abs().sum()) ** 2 / a ** 2 if a > 0 else math.nan
    out["cross_c"] = float(G2[ok].clamp(min=0).sqrt().sum()) ** 2 / a ** 2 if a > 0 else math.nan
    out["fisher"] = diag(f)
    if p is not None:
        out["pre"] = diag(p)
        out["update"] = diag(p * p)
        out["fisher_p"] = diag(p * p * f)
    # Adam's preconditioner at batch B: p_i(B) = 1/√(G_i² + Σ_ii/B); B_pre of the preconditioned problem at B,
    # and its fixed point B* = B_pre(B*) (bisection in ln B).
    if p is not None:
        Gp = G2.clamp(min=0)

        def q(B):
            return torch.where(live, 1.0 / (Gp + var / B).sqrt().clamp(min=1e-30), torch.zeros_like(var))

        def pre_at(B):
            w = q(B)
            return float((w * var).sum() / (w * G2).sum())

        lo, hi = 1.0, 1e7
        if pre_at(lo) > lo and pre_at(hi) < hi:
            for _ in range(60):
                mid = math.sqrt(lo * hi)
                lo, hi = (mid, hi) if pre_at(mid) > mid else (lo, mid)
            out["pre_fix"] = math.sqrt(lo * hi)
        for B in (32, 256):
            out[f"pre_{B}"] = pre_at(B)

    # Adam's large-batch limit is sign descent: S_min shrinks by ΔL_max(sign)/ΔL_max(SGD) =
    # (Σ|G_i|)²·GᵀHG / (|G|⁴·sᵀHs), s = sign(G) (two Hessian-vector products on the sample's mean loss)
    if p is not None:
        s_vec = torch.sign(g) * live
        hg, hs = hvp(model, loss_fn, collate(items), [g.float(), s_vec.float()])
        gHg, sHs = float(g @ hg), float(s_vec @ hs)
        if gHg > 0 and sHs > 0:
            gain = float(g.abs().sum()) ** 2 * gHg / (float((g * g).sum()) ** 2 * sHs)
            out["sign_gain"] = gain
            out["simple_sign"] = out["simple"] * gain
    # full Fisher H = Σ: tr(Σ²) and GᵀΣG from split halves
    Xc = X - g

    def full(scale):
        Y = Xc * scale if scale is not None else Xc
        h = min(N // 2, 512)                            # split halves of at most 512 rows (cost)
        A, B = Y[:h], Y[h:2 * h]
        tr2 = float(((A @ B.T) ** 2).mean())           # tr(Σ_s²), Σ_s = S Σ S
        gB = (X[h:].mean(0) * (scale if scale is not None else 1))
        gsg = float(((A @ gB) ** 2).mean()) - tr2 / (N - h)   # (X[h:] is independent of A's rows)
        return tr2 / gsg if gsg > 0 else math.nan

    out["full"] = full(None)
    if p is not None:
        out["full_p"] = full(p.sqrt())                  # √P Σ √P: tr(PΣPΣ)/GᵀPΣPG
    # exact Hessian of the sample's mean loss
    if k_hvp:
        batch = collate(items)
        idx = torch.randperm(N)[:k_hvp]
        for name, scale in (("hess", None), ("hess_p", p)):
            if name == "hess_p" and p is None:
                continue
            s = scale if scale is not None else torch.ones_like(g)
            vecs = [(Xc[i] * s).float() for i in idx] + [(g * s).float()]
            hv = hvp(model, loss_fn, batch, vecs)
            trHS = float(sum((Xc[i] * s) @ h for i, h in zip(idx, hv[:-1])) / len(idx))
            gHg = float((g * s) @ hv[-1]) - trHS / N
            out[name] = trHS / gHg if gHg > 0 else math.nan
            out[name + "_curv"] = gHg / float(((g * s) ** 2).sum())
    return out


def run(name, n, seed, k_hvp):
    task = cbe.TASKS[name]
    vt = json.loads((OUT / "validation_table.json").read_text())["tasks"][name]
    lr, target, batch = vt["probe_lr"], vt["target"], vt["batch"]
    spec = task["spec"]()
    torch.manual_seed(seed)
    model = spec.model()
    opt = task["opt"](lr)(model.parameters())
    ds = spec.dataset()
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, generator=gen, drop_last=True,
                                         collate_fn=spec.collate or collate)
    steps = task["probe_steps"]
    every = max(5, steps // 12)
    rows, step, t0 = [], 0, time.time()
    pick = torch.Generator().manual_seed(seed + 1)
    while step <= steps:
        for b in loader:
            if step % every == 0:
                idx = torch.randperm(len(ds), generator=pick)[:n or len(ds)].tolist()
                r = candidates(model, spec.loss, [ds[i] for i in idx], opt, k_hvp)
                r["step"] = step
                rows.append(r)
                print(f"  [{name}] step {step:4d} " + " ".join(f"{k} {v:.3g}" for k, v in r.items() if k != "step"),
                      flush=True)
                if r["loss"] <= target:
                    break
            opt.zero_grad(set_to_none=True)
            spec.loss(model, b).mean().backward()
            opt.step()
            step += 1
        else:
            continue
        break
    before = [r for r in rows if r["loss"] > target and r["step"] > 0]
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("step", "loss")))
    geo = {}
    for k in keys:
        vals = [r[k] for r in before if r.get(k) is not None and math.isfinite(r[k]) and r[k] > 0]
        geo[k] = math.exp(sum(map(math.log, vals)) / len(vals)) if vals else math.nan
    sweep = vt["sweep"]["critical"]["value"]
    print(f"[{name}] sweep {sweep:.0f}; geo-mean before target / sweep: "
          + " ".join(f"{k} {geo[k] / sweep:.2f}" for k in keys), flush=True)
    return dict(task=name, lr=lr, target=target, batch=batch, seed=seed, n=n, sweep=sweep, rows=rows,
                geo=geo, ratio={k: geo[k] / sweep for k in keys}, seconds=time.time() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hvp", type=int, default=12, help="Hessian-vector products per checkpoint (0: none)")
    ap.add_argument("--out", default=str(OUT / "adam_candidates.json"))
    a = ap.parse_args()
    path = Path(a.out)
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in a.tasks.split(","):
        results[f"{name}/{a.seed}"] = run(name, a.n, a.seed, a.hvp)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(path)
    print()
    for key, r in results.items():
        print(f"{key:22s} " + " ".join(f"{k} {v:.2f}" for k, v in r["ratio"].items() if not k.endswith("_curv")))


if __name__ == "__main__":
    main()
