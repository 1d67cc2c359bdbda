"""The vocabulary every layer speaks: typed results, one status enum, and the few shared rules.

    Estimate      value, interval [lo, hi] and status of one quantity (B_simple, B_noise, B_pre, |G|², ε_max)
    AtWeights     an Estimate of B_simple at fixed weights with how it was measured (``measure_at``)
    Measurement   one row of a run: the noise scales at one set of weights and how they were measured
    Summary       the run's answer: the latest measurement's noise scales and their growth over the run

Produced by the engine (``bsprof.engine``) and the tracker, consumed by rendering, figures, ``check``,
``schedule`` and diagnostics. ``to_dict()`` is the JSON form (report schema 2, ``bsprof.output.codec``);
``to_row()`` is the flat form of the CSV and of report schema 1 (``b_simple``, ``b_simple_lo``, ``b_simple_hi``,
``status``, …), which ``from_row`` reads back.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field

NAN = math.nan

ADAM_FAMILY = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax")  # optimizers with a diagonal second-moment preconditioner


def number(x: float | None) -> str:
    """A number for a message: 3 significant figures below 100, the whole number with separators from 100 to 10⁶
    (2,345: a batch or a count reads as given), an exponent below 10⁻³ or from 10⁶ on; "∞" and "?" (None, NaN). The
    tables' ``output.render.fmt`` rounds to 3 figures instead (2350)."""
    if x is None or not finite(x):
        return "∞" if x == math.inf else "?"
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
        return f"{x:.3g}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def plus_minus(w: float) -> str:
    """A relative half-width for a message: '±20%', and beyond ±1000% the factor ('a half-width 379× the value';
    "±379× the value" was hard to parse)."""
    if not finite(w):
        return "unbounded"
    return f"±{w:.0%}" if w <= 10 else f"a half-width {w:.0f}× the value"


def is_adam_family(name: str | None) -> bool:
    """Is ``name`` (an optimizer class name, any case) one of ``ADAM_FAMILY``?"""
    return bool(name) and name.lower() in {a.lower() for a in ADAM_FAMILY}


MOMENTUM_SGD = "SGD+momentum"  # SGD with momentum β > 0: its own family for the headline (docs/science.md §6)


def optimizer_name(config: dict) -> str | None:
    """The optimizer as the headline's rules know it, from a report's config: its class name, or
    ``"SGD+momentum=β"`` for SGD whose ``optimizer_momentum`` β is above 0 (the lr rule is SGD's; the critical
    batch is not)."""
    name = config.get("optimizer")
    try:
        beta = float(config.get("optimizer_momentum") or 0)
    except (TypeError, ValueError):  # a hand-edited report: no momentum known
        beta = 0.0
    if isinstance(name, str) and name.lower() == "sgd" and 0 < beta < 1:
        return f"{MOMENTUM_SGD}={beta:g}"
    return name


def momentum_of(name: str | None) -> float:
    """β of an ``optimizer_name`` of the momentum family (0 for any other name)."""
    if not name or not name.startswith(MOMENTUM_SGD + "="):
        return 0.0
    return float(name.split("=", 1)[1])


def optimizer_family(name: str | None) -> str:
    """adam (``ADAM_FAMILY``), momentum (``MOMENTUM_SGD``), sgd (plain SGD, or no optimizer recorded: the probe's
    default) or other: the families the headline's factors and model ranges are kept for (docs/science.md §6)."""
    if is_adam_family(name):
        return "adam"
    if name and name.startswith(MOMENTUM_SGD):
        return "momentum"
    return "sgd" if not name or name.lower() == "sgd" else "other"


def optimizer_momentum(optimizer) -> float | None:
    """SGD's ``momentum`` of a torch optimizer: that of the parameter group holding the most parameters (groups
    with other momenta are a minority of the weights), None when it has none."""
    groups = getattr(optimizer, "param_groups", None) or [{}]
    largest = max(groups, key=lambda g: sum(p.numel() for p in g.get("params", ())))
    m = largest.get("momentum")
    return float(m) if isinstance(m, (int, float)) else None


def optimizer_kind(optimizer) -> str:
    """The optimizer's class name, or for a subclass of a torch optimizer (``class MySGD(torch.optim.SGD)``) that
    torch class's: the name the lr rules and the headline's families know."""
    for cls in type(optimizer).__mro__:
        if cls.__module__.startswith("torch.optim") and cls.__name__ != "Optimizer":
            return cls.__name__
    return type(optimizer).__name__


class Status(str, enum.Enum):
    """What is known of an estimate: a value with a bounded interval, only a lower bound, nothing, or not measured.

    A ``str`` enum: ``Status.OK == "ok"``, and it is written to JSON and CSV as its value.
    """

    OK = "ok"
    LOWER_BOUND = "lower_bound"
    UNDETERMINED = "undetermined"
    NOT_AVAILABLE = "not_available"

    def __str__(self) -> str:
        return self.value


def finite(x) -> bool:
    """A real number that is neither NaN nor infinite (bools and None are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def json_clean(x):
    """``x`` as strict-JSON data: non-finite floats → None, numpy scalars → Python numbers, enums → their value,
    typed results → ``to_dict()``, tuples → lists; at any depth."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (bool, int, str)) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_clean(v) for v in x]
    if hasattr(x, "item"):  # numpy and torch scalars
        return json_clean(x.item())
    return x


def _float(x) -> float:
    return NAN if x is None else float(x)



def _blank(v) -> bool:
    """An empty cell: None, "" or NaN."""
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))

@dataclass(frozen=True)
class Estimate:
    """A quantity with its confidence interval: ``status`` OK (bounded), LOWER_BOUND (value NaN, hi = ∞),
    UNDETERMINED or NOT_AVAILABLE (all NaN)."""

    value: float
    lo: float
    hi: float
    status: Status = Status.OK

    def __post_init__(self):
        for name in ("value", "lo", "hi"):
            object.__setattr__(self, name, _float(getattr(self, name)))
        object.__setattr__(self, "status", Status(self.status))

    @classmethod
    def none(cls, status: Status = Status.UNDETERMINED) -> Estimate:
        return cls(NAN, NAN, NAN, status)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK and finite(self.value)

    @property
    def unresolved(self) -> bool:
        """Status OK with an interval that reaches 0 (lo ≤ 0): the ratio's numerator (tr(Σ) for B_simple) was not
        told apart from 0, so the value is not resolved; only the upper end ``hi`` bounds it."""
        return self.status is Status.OK and finite(self.lo) and self.lo <= 0

    @property
    def rel_halfwidth(self) -> float:
        """The precision: max(hi − value, value − lo)/value; ∞ unless the status is OK with a positive value.
        (The stopping rule stops when this is at most ``rel_error``.)"""
        if not (self.ok and self.value > 0):
            return math.inf
        return max(self.hi - self.value, self.value - self.lo) / self.value

    def scaled(self, k: float) -> Estimate:
        """The same estimate in another unit (batch sizes × tokens per example)."""
        return Estimate(self.value * k, self.lo * k, self.hi * k, self.status)

    def to_dict(self) -> dict:
        return {"value": json_clean(self.value), "lo": json_clean(self.lo), "hi": json_clean(self.hi),
                "status": self.status.value}

    @classmethod
    def from_dict(cls, d: dict) -> Estimate:
        return cls._read(_float(d.get("value")), _float(d.get("lo")), _float(d.get("hi")),
                         d.get("status", "undetermined"))

    @classmethod
    def _read(cls, value: float, lo: float, hi: float, status) -> Estimate:
        """JSON has no ∞ (written as null, read as NaN): a lower bound's upper end is ∞ again."""
        if Status(status) is Status.LOWER_BOUND and math.isnan(hi):
            hi = math.inf
        return cls(value, lo, hi, status)

    def to_row(self, name: str, status_key: str | None = None) -> dict:
        """Flat columns ``name``, ``name_lo``, ``name_hi`` and the status under ``status_key`` (default
        ``name_status``)."""
        return {name: self.value, f"{name}_lo": self.lo, f"{name}_hi": self.hi,
                status_key or f"{name}_status": self.status.value}

    @classmethod
    def from_row(cls, row: dict, name: str, status_key: str | None = None) -> Estimate | None:
        """Read back ``to_row``; None when the row has no such column, or only blanks there (a CSV line of a row
        without it: pandas reads NaN). A missing status is inferred."""
        status = row.get(status_key or f"{name}_status")
        status = None if status == "" or (isinstance(status, float) and math.isnan(status)) else status
        if _blank(row.get(name)) and _blank(row.get(f"{name}_lo")) and status is None:
            return None
        value, lo, hi = (_float(row.get(k)) for k in (name, f"{name}_lo", f"{name}_hi"))
        if status is None:
            status = Status.OK if finite(value) else Status.LOWER_BOUND if finite(lo) else Status.UNDETERMINED
        return cls._read(value, lo, hi, status)


@dataclass(frozen=True)
class AtWeights(Estimate):
    """``bsprof.measure_at``'s answer: B_simple = tr(Σ)/|G|² at one set of weights (the ``Estimate`` fields value,
    lo, hi, status), and how it was measured.

    g2:            |G|² with its interval          trace_sigma:  tr(Σ), the per-example gradient variance summed
    method:        the probe: hooks, vmap, microbatch (and their preconditioned forms)
    method_reason: why that probe, in words       fallbacks:    {parameter: why} measured by the slow torch.func path
    loss:          mean loss over the draws       draws, examples: how many draws, and the examples they took
    stopped:       what ended the draws: precision, examples, time, budget, exact
    """

    g2: Estimate = field(default_factory=Estimate.none)
    trace_sigma: float = NAN
    method: str = ""
    method_reason: str = ""
    fallbacks: dict = field(default_factory=dict)
    loss: float = NAN
    draws: int = 0
    examples: int = 0
    stopped: str = ""

    def to_dict(self) -> dict:
        """The estimate's fields and how it was measured, JSON-ready; ``from_dict`` reads it back whole."""
        return {**super().to_dict(), "g2": self.g2.to_dict(), "trace_sigma": json_clean(self.trace_sigma),
                "method": self.method, "method_reason": self.method_reason, "fallbacks": dict(self.fallbacks),
                "loss": json_clean(self.loss), "draws": self.draws, "examples": self.examples,
                "stopped": self.stopped}

    @classmethod
    def from_dict(cls, d: dict) -> AtWeights:
        e = Estimate.from_dict(d)
        return cls(e.value, e.lo, e.hi, e.status, g2=Estimate.from_dict(d.get("g2") or {}),
                   trace_sigma=_float(d.get("trace_sigma")), method=d.get("method", ""),
                   method_reason=d.get("method_reason", ""), fallbacks=dict(d.get("fallbacks") or {}),
                   loss=_float(d.get("loss")), draws=int(d.get("draws") or 0), examples=int(d.get("examples") or 0),
                   stopped=d.get("stopped", ""))


@dataclass(frozen=True)
class Regression:
    """The 1/B regression over partial sums (``stats.regression``): its B_simple and goodness-of-fit p-value."""

    b_simple: float
    g2: float
    trace_sigma: float
    p_value: float
    dof: int
    failed: bool

    ROW = {"b_simple": "b_simple_regression", "g2": "regression_g2", "trace_sigma": "regression_trace_sigma",
           "p_value": "regression_fit_p", "dof": "regression_dof", "failed": "regression_fit_failed"}


@dataclass(frozen=True)
class Hessian:
    """GᵀHG, tr(HΣ) and ε_max = |G|²/(GᵀHG) (McCandlish eq. 2.6) from the B_noise draws."""

    gHg: float
    trace_h_sigma: float
    eps_max: Estimate
    n_draws: int

    ROW = {"gHg": "gHg", "trace_h_sigma": "trace_HSigma", "n_draws": "hessian_draws"}


@dataclass(frozen=True)
class Ranks:
    """The across-ranks pair of a data-parallel run: b = per-rank batch, B = world × b."""

    b_simple: Estimate
    g2: float
    trace_sigma: float
    b: int
    world_size: int

    ROW = {"g2": "g2_ranks", "trace_sigma": "trace_sigma_ranks", "b": "b_ranks", "world_size": "world_size"}


def _part_row(part, rename: dict) -> dict:
    return {rename[k]: getattr(part, k) for k in rename}


def _field(cls, name: str, value):
    """A part's field read back from JSON or CSV: None → NaN for numbers (0 for counts, False for flags)."""
    if value is not None:
        return value
    return {"int": 0, "bool": False}.get({f.name: f.type for f in dataclasses.fields(cls)}[name], NAN)


def _part_from_row(cls, row: dict, present: bool = False, **extra):
    """The part whose flat columns ``cls.ROW`` appear in ``row``; None if none do and ``present`` is false."""
    rename = cls.ROW
    if not present and not any(row.get(rename[k]) is not None for k in rename):
        return None
    return cls(**{k: _field(cls, k, row.get(rename[k])) for k in rename}, **extra)


def _part_from_dict(cls, d: dict | None, estimates: tuple[str, ...] = ()):
    if d is None:
        return None
    return cls(**{f.name: (Estimate.from_dict(d[f.name]) if f.name in estimates else _field(cls, f.name, d.get(f.name)))
                  for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Measurement:
    """One estimate of the noise scale at fixed weights (one report row). Batch sizes are in the report's unit.

    g2 = |G|² and trace_sigma = tr(Σ) are per-example quantities (never scaled); b_simple = tr(Σ)/|G|²;
    examples_seen: training examples before these weights; examples: examples the measurement itself drew.
    """

    step: int
    loss: float
    b_simple: Estimate
    g2: Estimate
    trace_sigma: float
    examples_seen: int = 0
    method: str = ""
    n_draws: int = 0
    examples: int = 0
    b: int = 0
    B: int = 0
    stopped_by: str = ""             # what stopped the B_simple draws: precision, budget, interrupted, … (fields.md)
    seconds: float = NAN
    diversity_bound: float = NAN
    b_noise: Estimate | None = None
    b_pre: Estimate | None = None
    b_noise_stopped_by: str = ""
    b_pre_stopped_by: str = ""
    b_simple_window: Estimate | None = None  # from the pairs of the training steps since the previous measurement
    window_steps: int = 0
    regression: Regression | None = None
    hessian: Hessian | None = None
    ranks: Ranks | None = None
    extra: dict = field(default_factory=dict)  # columns of newer or other writers, kept as they are

    @property
    def status(self) -> Status:
        return self.b_simple.status

    def to_dict(self) -> dict:
        """The JSON form (schema 2): estimates as {value, lo, hi, status}, parts as nested objects."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return json_clean({**d, **({"extra": self.extra} if self.extra else {})})

    @classmethod
    def from_dict(cls, d: dict) -> Measurement:
        opt = {k: Estimate.from_dict(d[k]) if d.get(k) is not None else None
               for k in ("b_noise", "b_pre", "b_simple_window")}
        return cls(step=int(d["step"]), loss=_float(d.get("loss")), b_simple=Estimate.from_dict(d["b_simple"]),
                   g2=Estimate.from_dict(d.get("g2") or {}), trace_sigma=_float(d.get("trace_sigma")),
                   examples_seen=d.get("examples_seen", 0), method=d.get("method", ""),
                   n_draws=d.get("n_draws", 0), examples=d.get("examples", 0), b=d.get("b", 0), B=d.get("B", 0),
                   stopped_by=d.get("stopped_by", ""), seconds=_float(d.get("seconds")),
                   b_noise_stopped_by=d.get("b_noise_stopped_by", ""), b_pre_stopped_by=d.get("b_pre_stopped_by", ""),
                   diversity_bound=_float(d.get("diversity_bound")), window_steps=d.get("window_steps", 0), **opt,
                   regression=_part_from_dict(Regression, d.get("regression")),
                   hessian=_part_from_dict(Hessian, d.get("hessian"), ("eps_max",)),
                   ranks=_part_from_dict(Ranks, d.get("ranks"), ("b_simple",)), extra=d.get("extra") or {})

    def to_row(self) -> dict:
        """The flat form: the CSV columns and a schema-1 row (b_simple, b_simple_lo, b_simple_hi, status, …)."""
        row = {"step": self.step, "examples_seen": self.examples_seen, "loss": self.loss,
               "g2": self.g2.value, "g2_lo": self.g2.lo, "g2_hi": self.g2.hi, "trace_sigma": self.trace_sigma,
               **self.b_simple.to_row("b_simple", "status"), "method": self.method, "n_draws": self.n_draws,
               "examples": self.examples, "b": self.b, "B": self.B, "rel_halfwidth": self.b_simple.rel_halfwidth,
               "stopped_by": self.stopped_by, "seconds": self.seconds, "diversity_bound": self.diversity_bound}
        if self.regression:
            row.update(_part_row(self.regression, Regression.ROW))
        if self.hessian:
            row.update(gHg=self.hessian.gHg, trace_HSigma=self.hessian.trace_h_sigma)
        if self.b_noise:
            row.update(self.b_noise.to_row("b_noise"))
            if self.b_noise_stopped_by:
                row["b_noise_stopped_by"] = self.b_noise_stopped_by
        if self.hessian:
            row.update({k: v for k, v in self.hessian.eps_max.to_row("eps_max").items() if k != "eps_max_status"},
                       hessian_draws=self.hessian.n_draws)
        if self.b_pre:
            row.update(self.b_pre.to_row("b_pre"))
            if self.b_pre_stopped_by:
                row["b_pre_stopped_by"] = self.b_pre_stopped_by
        if self.ranks:
            row.update(self.ranks.b_simple.to_row("b_simple_ranks", "status_ranks"), **_part_row(self.ranks, Ranks.ROW))
        if self.b_simple_window:
            row.update(self.b_simple_window.to_row("b_simple_window"), window_steps=self.window_steps)
        return {**row, **self.extra}

    @classmethod
    def from_row(cls, row: dict) -> Measurement:
        """Read a flat row (a schema-1 report row or a CSV line); unknown columns go to ``extra``."""
        eps = Estimate.from_row(row, "eps_max", "eps_max_status")
        hessian = _part_from_row(Hessian, row, True, eps_max=eps) if eps is not None else None
        ranks_est = Estimate.from_row(row, "b_simple_ranks", "status_ranks")
        ranks = _part_from_row(Ranks, row, True, b_simple=ranks_est) if ranks_est is not None else None
        m = cls(step=int(row["step"]), loss=_float(row.get("loss")),
                b_simple=Estimate.from_row(row, "b_simple", "status") or Estimate.none(),
                g2=Estimate.from_row(row, "g2", "g2_status") or Estimate.none(),
                trace_sigma=_float(row.get("trace_sigma")), examples_seen=row.get("examples_seen", 0),
                method=row.get("method", ""), n_draws=row.get("n_draws", 0), examples=row.get("examples", 0),
                b=row.get("b", 0), B=row.get("B", 0), stopped_by=row.get("stopped_by", ""),
                seconds=_float(row.get("seconds")), diversity_bound=_float(row.get("diversity_bound")),
                b_noise_stopped_by=row.get("b_noise_stopped_by") or "",
                b_pre_stopped_by=row.get("b_pre_stopped_by") or "",
                b_noise=Estimate.from_row(row, "b_noise"), b_pre=Estimate.from_row(row, "b_pre"),
                b_simple_window=Estimate.from_row(row, "b_simple_window"),
                window_steps=0 if _blank(row.get("window_steps")) else int(row["window_steps"]),
                regression=_part_from_row(Regression, row), hessian=hessian, ranks=ranks)
        known = set(m.to_row()) | {"g2_status", "eps_max_status"}
        return dataclasses.replace(m, extra={k: v for k, v in row.items() if k not in known})


def measured(rows: list[Measurement]) -> list[Measurement]:
    """The rows measured at fixed weights: all but the last row of a run cut short mid-window, which holds only the
    training steps' window (B_simple ``not_available``, ``engine.loop``)."""
    return [r for r in rows if r.b_simple.status is not Status.NOT_AVAILABLE]


@dataclass(frozen=True)
class LayerEstimate:
    """The noise scale of one parameter group (an owning module) at one measurement: |G|², tr(Σ) and B_simple
    of that group's gradient alone. Over the groups, |G|² and tr(Σ) add up to the measurement's totals.

    ``layer`` is the module's path in the model ('0', 'encoder.layers.0.self_attn'), ``type`` its class name
    ('Linear'); reports written before the type was recorded (schema 1, early schema 2) have '' there."""

    step: int
    layer: str
    g2: float
    trace_sigma: float
    b_simple: Estimate
    type: str = ""

    @property
    def label(self) -> str:
        """'0 (Linear)', or the bare path when the type is not known."""
        return f"{self.layer} ({self.type})" if self.type else self.layer

    def to_dict(self) -> dict:
        return json_clean({"step": self.step, "layer": self.layer, "type": self.type, "g2": self.g2,
                           "trace_sigma": self.trace_sigma, "b_simple": self.b_simple})

    @classmethod
    def from_dict(cls, d: dict) -> LayerEstimate:
        b = d["b_simple"]
        est = Estimate.from_dict(b) if isinstance(b, dict) else Estimate.from_row(d, "b_simple", "status")
        kind = d.get("type")
        return cls(int(d["step"]), str(d.get("layer", "")), _float(d.get("g2")), _float(d.get("trace_sigma")),
                   est or Estimate.none(), kind if isinstance(kind, str) else "")

    def to_row(self) -> dict:
        return {"step": self.step, "layer": self.layer, "type": self.type, "g2": self.g2,
                "trace_sigma": self.trace_sigma, **self.b_simple.to_row("b_simple", "status")}


@dataclass(frozen=True)
class Summary:
    """The run's answer: the noise scales at the latest measured weights, and their growth over the run
    (last over first B_simple with status OK; < 1 when the noise scale fell)."""

    b_simple: Estimate
    unit: str = "examples"
    step: int | None = None
    loss: float = NAN
    g2: float = NAN
    trace_sigma: float = NAN
    n_measurements: int = 0
    examples_measured: int = 0
    b_noise: Estimate | None = None
    b_pre: Estimate | None = None
    growth: float | None = None
    reason: str | None = None
    critical_batch: Estimate | None = None     # the headline (``bsprof.schedule.headline``): path average of ...
    critical_batch_quantity: str | None = None  # ... this noise scale (b_simple_window, b_noise, b_pre, b_simple)
    critical_batch_reason: str | None = None    # one line: why this quantity, how far it was from sweeps

    @property
    def status(self) -> Status:
        return self.b_simple.status

    @classmethod
    def of(cls, rows: list[Measurement], unit: str) -> Summary:
        if not rows:
            return cls(Estimate.none(), unit, reason="nothing was measured")
        last = (measured(rows) or rows)[-1]
        ok = [r for r in rows if r.b_simple.ok]
        growth = ok[-1].b_simple.value / ok[0].b_simple.value if len(ok) >= 2 and ok[0].b_simple.value > 0 else None
        return cls(last.b_simple, unit, last.step, last.loss, last.g2.value, last.trace_sigma,
                   len(measured(rows)) or len(rows),  # a cut-short window's row was not a measurement
                   int(sum(r.examples for r in rows)),
                   last.b_noise if last.b_noise and finite(last.b_noise.value) else None,
                   last.b_pre if last.b_pre and finite(last.b_pre.value) else None, growth)

    def to_dict(self) -> dict:
        return json_clean({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def to_row(self) -> dict:
        """The flat form of schema 1: b_simple, b_simple_lo, b_simple_hi, status, step, loss, … (the headline
        critical batch is schema 2 only: ``to_dict``)."""
        row = {**self.b_simple.to_row("b_simple", "status"), "step": self.step, "loss": self.loss, "g2": self.g2,
               "trace_sigma": self.trace_sigma, "unit": self.unit, "n_measurements": self.n_measurements,
               "examples_measured": self.examples_measured}
        for name in ("b_noise", "b_pre"):
            est = getattr(self, name)
            if est is not None:
                row.update({k: v for k, v in est.to_row(name).items() if not k.endswith("_status")})
        if self.growth is not None:
            row["growth"] = self.growth
        if self.reason:
            row["reason"] = self.reason
        return row
