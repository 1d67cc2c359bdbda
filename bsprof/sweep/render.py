"""Terminal rendering of a sweep result (rich)."""

from __future__ import annotations

import math

from rich.console import Group
from rich.table import Table

from bsprof.output.render import estimate_text, fmt


def _loss(x: float, se: float) -> str:
    if not math.isfinite(x):
        return "diverged"
    return f"{x:.4g} ± {se:.2g}" if math.isfinite(se) else f"{x:.4g}"


def batches_table(r) -> Table:
    local = r.method == "local"
    if local:
        title = (f"local sweep: equal examples per branch, tolerance {r.config['tolerance']:g} "
                 f"({r.config['tolerance_mode']})")
    else:
        title = f"global sweep: steps to evaluation loss {r.config['target_loss']:g}"
    t = Table(title=title)
    cols = ["batch", "best lr", "steps", "examples", "final loss ± se"] + (["passes"] if local else ["reached"])
    for c in cols:
        t.add_column(c, justify="right")
    seeds = r.config.get("seeds", 1)
    for s in r.batches:
        last = ("yes" if s.passed else "no") if local else f"{s.reached}/{s.ran or seeds}"
        steps = f"{s.steps:,.0f}" if math.isfinite(s.steps) else "not reached"
        ex = f"{s.examples:,.0f}" if math.isfinite(s.examples) else "–"
        batch = f"{s.batch:,}" + (" (partial)" if getattr(s, "partial", False) else "")
        t.add_row(batch, f"{s.lr:.4g}", steps, ex, _loss(s.loss, s.loss_se), last)
    return t


def summary_lines(r) -> list[str]:
    u = r.unit
    lines = []
    if r.method == "local":
        lines.append(f"critical batch (local): {_bracket(r.critical, r.incomplete, u)}")
        if len(r.critical_by_seed) > 1:
            v = sorted(r.critical_by_seed)
            lines.append(f"  per seed: {', '.join(fmt(x) for x in r.critical_by_seed)} "
                         f"(range {fmt(v[0])}–{fmt(v[-1])})")
    elif r.fit is not None and r.critical.status.value == "lower_bound":  # still ∝ 1/B: no knee in the batches
        lines.append(f"B_crit (McCandlish fit): {estimate_text(r.critical)} {u}   (the steps still fell as 1/B; "
                     f"the fit's own value {fmt(r.fit.b_crit.value)} is an extrapolation)")
    elif r.fit is not None and r.critical.status.value == "undetermined":   # a fit, but no knee to trust
        lines.append(f"B_crit: undetermined (the McCandlish fit's {estimate_text(r.fit.b_crit)} {u} is not one: "
                     "see the notes)")
    elif r.fit is not None:
        f = r.fit
        limit = (getattr(r, "data", None) or {}).get("interval_limit") or math.inf
        lines.append(f"B_crit (McCandlish fit): {_bounded(f.b_crit, hi=limit)} {u}   ({f.confidence:.0%} bootstrap "
                     f"over {f.resampled}, {f.n_boot} fits)")
        lines.append(f"S_min {_bounded(f.s_min, lo=1.0)} steps,  E_min = S_min·B_crit {estimate_text(f.e_min)} {u}")
    else:
        lines.append("B_crit: not fitted (fewer than 3 batch sizes reached the target)")
    lines += [f"[bold yellow]warning:[/] {w}" for w in getattr(r, "warnings", ())]
    c = r.compute
    lines.append(f"sweep cost: {c.train_examples:,} training + {c.eval_examples:,} evaluation examples, "
                 f"{c.seconds:.1f} s")
    if r.comparison is not None:
        k = r.comparison
        tpe = getattr(k, "tokens_per_example", 1.0)
        conv = f" (the report's tokens ÷ {tpe:g} tokens per example)" if tpe != 1 else ""
        at = "≥ " if getattr(k, "ratio_status", "ok") == "lower_bound" else ""   # the sweep found only a bound
        what = "local sweep (a different quantity: see the note)" if r.method == "local" else "sweep"
        versus = (f"{what} / critical batch {at or '= '}{fmt(k.critical_ratio)}" if math.isfinite(k.critical_ratio)
                  else "no ratio: the sweep did not determine its critical batch")
        if k.critical_batch is not None and k.critical_batch.ok:
            head, swept = k.critical_batch, r.critical.value
            if r.method == "global" and math.isfinite(k.critical_ratio) and math.isfinite(swept):  # a verdict, too
                versus += (" (inside the headline's interval)" if head.lo <= swept <= head.hi else
                           " (outside the headline's interval)")
            to = getattr(k, "critical_batch_to", "")
            lines.append(f"estimate ({k.report}): critical batch ≈ {estimate_text(k.critical_batch)} {u}{conv}"
                         f"{f' ({to})' if to else ''};  {versus}")
        est = [f"B_simple {estimate_text(k.b_simple)}"]
        est += [f"{n} {estimate_text(e)}" for n, e in (("B_pre", k.b_pre), ("B_noise", k.b_noise)) if e is not None]
        lines.append(f"noise scale at the report's last weights: {', '.join(est)} {u}{conv}" +
                     (f";  {'local ' if r.method == 'local' else ''}sweep/B_simple {at or '= '}{fmt(k.ratio)}"
                      if math.isfinite(k.ratio) else ""))
        lines.append(f"estimate cost: {k.measure_seconds:.1f} s measuring, {k.measure_examples:,} examples in "
                     f"B_simple's draws (+ {k.probe_train_examples:,} probe-training examples)")
    lines += [f"note: {n}" for n in r.notes]
    if r.incomplete:
        n = r.incomplete.get("branches", 0)
        lines.append(f"incomplete: {r.incomplete['reason']} (after {n} branch{'' if n == 1 else 'es'})")
    return lines


def _bounded(est, lo: float = -math.inf, hi: float = math.inf) -> str:
    """``estimate_text`` with an interval end past ``hi`` (or below ``lo``) shown as '> hi' ('< lo'): where the fit
    stops meaning anything (B_crit beyond the training set or 100× the swept batches; S_min below one step)."""
    if est.status.value != "ok" or est.unresolved or not (est.hi > hi or est.lo < lo):
        return estimate_text(est)
    low = f"< {fmt(lo)}" if est.lo < lo else fmt(est.lo)
    high = f"> {hi:,.0f}" if est.hi > hi else fmt(est.hi)
    return f"{fmt(est.value)} [{low}, {high}]"


def _bracket(est, incomplete: dict | None = None, unit: str = "") -> str:
    u = f" {unit}" if unit else ""
    if est.status.value == "lower_bound":
        return f"≥ {fmt(est.lo)}{u} (every batch {'run so far ' if incomplete else ''}passed)"
    if not est.ok:
        return "undetermined"
    return f"{fmt(est.value)}{u}  (bracket [{fmt(est.lo)}, {fmt(est.hi)}])"


def result_view(r) -> Group:
    return Group(batches_table(r), "\n".join(summary_lines(r)))
