"""Terminal rendering of a report (rich)."""

from __future__ import annotations

import math

from rich.console import Group
from rich.table import Table
from rich.text import Text

from bsprof.results import Estimate, Status, finite, plus_minus

CONTEXT_NOTES = frozenset({"temperature", "plain_sgd", "adam", "momentum", "measure_cost"})   # on most runs


def plural(n: int, noun: str) -> str:
    """'1 draw', '12 draws'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    if isinstance(x, float) and 1e3 <= abs(float(f"{x:.{digits}g}")) < 1e5:  # 6190, not 6.19e+03: narrower
        return f"{float(f'{x:.{digits}g}'):.0f}"
    if isinstance(x, float) and 1e5 <= abs(float(f"{x:.{digits}g}")) < 1e7:  # 115,000, not 1.152e+05
        return f"{float(f'{x:.{digits}g}'):,.0f}"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def estimate_text(est: Estimate | None) -> str:
    """'26.1 [24.9, 27.4]', '≤ 0.046 (unresolved)' when the interval reaches 0 (the value is then no estimate: it
    may even be negative), '> 310' for a lower bound, 'undetermined', or '–' when not measured."""
    if est is None or est.status is Status.NOT_AVAILABLE:
        return "–"
    if est.unresolved:
        return f"≤ {fmt(est.hi)} (unresolved)"
    if est.status is Status.OK:
        return f"{fmt(est.value)} [{fmt(est.lo)}, {fmt(est.hi)}]"
    if est.status is Status.LOWER_BOUND:
        return f"> {fmt(est.lo)}"
    return Status.UNDETERMINED.value


def cut_short_text(report) -> str | None:
    """What became of the measurement a run was stopped inside (``report.incomplete``: ``draws``, ``kept``,
    ``left_out``): 'the measurement at step 0 was cut short after 37 draws: kept with its wider interval, B_simple
    26.1 [20.3, 35.2]', '… after 3 draws, fewer than the 5 it needs (--min-draws): not kept'; None elsewhere."""
    from bsprof.stats.stopping import INTERRUPTED, kept_from

    cut = report.incomplete or {}
    if "kept" not in cut:
        return None
    step, draws = cut.get("step"), plural(cut.get("draws", 0), "draw")
    at = f"the measurement at step {step} was cut short"
    if not cut["kept"]:
        need = kept_from(report.config.get("min_draws") or 5)
        return f"{at} after {draws}, fewer than the {need} it needs (--min-draws): not kept"
    if cut.get("left_out") is not None:
        without = " and ".join(cut["left_out"])
        return f"{at} after its {draws} of B_simple: kept" + (f" without {without}" if without else "")
    row = next((r for r in report.measurements if r.step == step and r.stopped_by == INTERRUPTED), None)
    if row is None:
        return f"{at} after {draws}: kept"
    est, asked = row.b_simple, report.config.get("rel_error") or 0.2
    if not est.ok:
        return f"{at} after {draws}: kept as it stood, B_simple {estimate_text(est)}"
    wider = f"its wider interval ({plus_minus(est.rel_halfwidth)}, asked ±{asked:.0%})" if \
        est.rel_halfwidth > asked else f"its interval ({plus_minus(est.rel_halfwidth)})"
    return f"{at} after {draws}: kept with {wider}, B_simple {estimate_text(est)} {report.unit}"


def headline_text(s) -> str:
    """'Critical batch ≈ 30 [24, 39] examples (B_simple over training-step windows, path average …; SGD: …)'."""
    est = s.critical_batch
    if est is None or est.status is not Status.OK:
        what = "> " + fmt(est.lo) if est is not None and est.status is Status.LOWER_BOUND else "undetermined"
        return f"Critical batch {what} {s.unit} ({s.critical_batch_reason or 'nothing measured'})"
    return (f"Critical batch ≈ {fmt(est.value)} [{fmt(est.lo)}, {fmt(est.hi)}] {s.unit} "
            f"({s.critical_batch_reason})")


SHED = ("examples", "tokens", "stopped by", "draws", "tr(Σ)", "|G|²")  # left out in this order where too wide


class Fitted:
    """``report_table`` sized at print time to the console's width (a renderable: ``console.print(Fitted(r))``)."""

    def __init__(self, report, summary=None):
        self.report, self.summary = report, summary

    def __rich_console__(self, console, options):
        yield report_table(self.report, self.summary, options.max_width)

    def full(self) -> Group:
        """Every column, whatever the width (piped output, which has no width to fit)."""
        return report_table(self.report, self.summary)


def _fit(columns: list[str], rows: list[list[str]], width: int | None) -> list[int]:
    """The indices of the columns kept: all where they fit in ``width``, else without the ``SHED`` ones, one at a
    time, until they fit (the intervals of an 80-column terminal were cut to "[0.9…" or wrapped)."""
    keep = list(range(len(columns)))
    if width is None:
        return keep

    def total(idx):  # rich's heavy-head box: one border per column and one more, a space of padding each side
        return 1 + sum(3 + max([len(columns[i])] + [len(r[i]) for r in rows]) for i in idx)

    for name in SHED:
        if total(keep) <= width:
            break
        keep = [i for i in keep if columns[i] != name]
    return keep


def report_table(report, summary=None, width: int | None = None) -> Group:
    """The measurements, then the summary (``summary``: default ``report.summary``), diagnostics, incompleteness;
    ``width``: the columns of least use (``SHED``) are left out until the table fits it."""
    conf = report.config.get("confidence", 0.9)
    windows = bool(report.measurements) and all(r.stopped_by == "window" for r in report.measurements)
    where = ("; each row a window of logged steps, at its middle step, with its middle half's mean loss"
             if windows else "")
    table = Table(title=f"gradient noise scale ({report.unit}; {conf:.0%} intervals{where})", title_justify="left")
    extra = [(k, name) for k, name in (("b_simple_window", "B_simple (training)"), ("b_noise", "B_noise"),
                                       ("b_pre", "B_pre (Adam)"))
             if any(getattr(r, k) is not None and (finite(getattr(r, k).value) or finite(getattr(r, k).lo)
                                                   or r.stopped_by == "cut_short")
                    for r in report.measurements)]  # a column of lower bounds only ("> 435") is shown too, and a
    #                                                 cut-short row's window even undetermined (its note names it)
    # what the draws took: examples (sequences) for a measured report; a tracker log's steps in its own unit
    drawn = "tokens" if report.unit == "tokens" and (report.spec or {}).get("tracker_log") else "examples"
    columns = ["step", "loss", "B_simple", *(name for _, name in extra), "|G|²", "tr(Σ)", "draws", drawn,
               "stopped by"]
    rows = [[str(r.step), fmt(r.loss, 4), estimate_text(r.b_simple),
             *(estimate_text(getattr(r, k)) for k, _ in extra), fmt(r.g2.value), fmt(r.trace_sigma),
             str(r.n_draws), str(r.examples), r.stopped_by] for r in report.measurements]
    keep = _fit(columns, rows, width)
    for i in keep:
        table.add_column(columns[i], justify="right")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    if len(keep) < len(columns):
        table.caption = f"{', '.join(c for c in columns if columns.index(c) not in keep)}: in --format csv or json"
        table.caption_justify = "left"
    parts = [table] if report.measurements else [Text("no measurement finished", style="bold")]
    s = summary or report.summary
    if report.measurements:
        parts.append(Text(headline_text(s), style="bold"))
        line = f"B_simple at step {s.step}: {estimate_text(s.b_simple)} {report.unit}"
        if s.growth is not None:   # from the first to the last determined value, which may be an earlier row
            ok = [r.b_simple for r in report.measurements if r.b_simple.ok]
            same = ok[0].lo <= ok[-1].hi and ok[-1].lo <= ok[0].hi  # a change their intervals do not resolve
            first, last = ok[0], ok[-1]   # the ratio their intervals allow, where both ends are positive
            low = last.lo / first.hi if first.hi > 0 else math.nan
            high = last.hi / first.lo if first.lo > 0 else math.nan
            wide = math.isfinite(high) and low > 0 and high > GROWTH_WIDE * low
            tail = ("; their intervals overlap" if same else
                    f"; {fmt(low)}–{fmt(high)}× by their intervals" if wide else "")
            line += (f"   ({growth_text(s.growth)} over the run{tail})" if s.b_simple.ok else
                     f"   (its determined values {growth_text(s.growth)} over the run{tail})")
        for key, name in (("b_noise", "B_noise"), ("b_pre", "B_pre")):
            if getattr(s, key) is not None:
                line += f";  {name}: {estimate_text(getattr(s, key))}"
        parts.append(Text(line, style="bold"))
    probe, why = report.config.get("method_resolved"), report.config.get("method_reason") or ""
    if probe:  # which exact method measured, and why (issue 15: "says which and why")
        parts.append(Text(f"probe: {probe}" + (f" ({why})" if why else ""), style="dim"))
    shown = [d for d in report.diagnostics
             if not (probe and why and d["message"] == why)   # the method_trial note: the probe line just said it
             and not (d["code"] in CONTEXT_NOTES and not report.measurements)]  # about measurements: none finished
    # this run's own findings first, in yellow; the notes every run of its kind carries (the optimizer's factor,
    # the temperature, the measuring cost) after them, dimmed, so that they do not bury the rarer ones
    for d in sorted(shown, key=lambda d: d["code"] in CONTEXT_NOTES):
        parts.append(Text(f"note [{d['code']}]: {d['message']}",
                          style="dim" if d["code"] in CONTEXT_NOTES else "yellow"))
    if report.incomplete:
        parts.append(Text(f"incomplete: stopped at step {report.incomplete.get('step')}: "
                          f"{report.incomplete.get('reason')}", style="bold red"))
    return Group(*parts)


GROWTH_WIDE = 2.0  # the growth's range by its ends' intervals is printed beside it when wider than this factor


def growth_text(growth: float) -> str:
    """Last over first B_simple in words: "grew 6.6×", or for a fall "fell to 0.9× (−10%)"."""
    if growth >= 1:
        return f"grew {growth:.1f}×"
    return f"fell to {growth:.2f}× (−{100 * (1 - growth):.2g}%)"


def layers_table(report) -> Table:
    """Per-layer |G|², tr(Σ) and B_simple at the last measured step (Gray et al. 2024: LayerNorms predict it)."""
    last = report.layers[-1].step
    table = Table(title=f"per-layer noise scale at step {last} ({report.unit})", title_justify="left")
    for col in ("layer", "|G|²", "tr(Σ)", "B_simple"):
        table.add_column(col, justify="right" if col != "layer" else "left")
    for r in (r for r in report.layers if r.step == last):
        table.add_row(r.label, fmt(r.g2), fmt(r.trace_sigma), estimate_text(r.b_simple))
    return table
