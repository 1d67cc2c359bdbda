"""The tracker's JSONL log: raw per-step statistics, streamed, and read back into draws and a report.

A header starts each run (line 1, and again where a later run with the same path appends):
    {"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "accumulation", "bsprof_version": …,
     "created": …}
Then one line per optimizer step:
    {"step", "examples", "b", "B", "small_sq", "big_sq", "loss", "lr"}
with small_sq = mean over the step's small batches of |G_b|², big_sq = |G_B|² (per-example units: the user's
loss scale removed), "examples" the examples (in the header's unit) seen before the step, and optionally
"small_sq_pre"/"big_sq_pre" (the same with Adam's preconditioner, B_pre). A skipped step (non-finite gradients)
has "skipped": "non-finite" and null norms. Non-finite numbers are written as null.

Each line is appended and flushed as it is made (line-buffered), so a crashed run keeps every finished step; a
torn last line is ignored by the reader. ``report_from_log`` turns the log into the rows of a ``Report``
(windowed estimates every N steps), which ``bsprof report``/``schedule``/``check`` read like report.json.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bsprof import __version__
from bsprof.errors import ConfigError, ReportError
from bsprof.output.report import Report
from bsprof.results import Measurement, Status, finite, json_clean
from bsprof.stats.draw import Draw
from bsprof.track.window import b_simple_of, measurement, windowed

SCHEMA, VERSION = "bsprof.track", 1


class LogWriter:
    """Appends one JSON line per step to ``path``, after this run's header (a file that exists must be a tracker
    log: the run is appended with its own header, which the reader then follows). One open writer per file in a
    process: two trackers appending to one file would interleave their steps into one run."""

    _open: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # path → its open writer (a collected
    # tracker's writer, never closed, frees its path)

    def __init__(self, path: str | Path, unit: str = "examples", **header):
        self.path = Path(path)
        other = LogWriter._open.get(self.path.resolve())
        if other is not None and not other.file.closed:
            raise ConfigError(f"{self.path} is already being written by another open bsprof tracker in this process "
                              "(a NoiseScale callback added twice, or a tracker not closed before the next one)",
                              "keep one tracker per run (close the first: tracker.close()), or give each its own "
                              "log path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            _check_header(self.path, _first_line(self.path))
        self.file = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed by close())
        if not _lock(self.file):
            self.file.close()
            raise ConfigError(f"{self.path} is being written by another process's bsprof tracker (two runs given "
                              "one log path)", "give each run its own log path")
        if not fresh and not _ends_a_line(self.path):   # an earlier run died mid-line: this run starts on its own
            self.file.write("\n")
        LogWriter._open[self.path.resolve()] = self
        self.write({"schema": SCHEMA, "version": VERSION, "unit": unit, **header, "bsprof_version": __version__,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(json_clean(record), allow_nan=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
        if LogWriter._open.get(self.path.resolve()) is self:
            del LogWriter._open[self.path.resolve()]


@dataclass(frozen=True)
class LoggedStep:
    """One logged optimizer step: its nested pair (``draw``) and where the run was."""

    step: int
    examples: int
    lr: float
    draw: Draw
    small_sq_pre: float | None = None
    big_sq_pre: float | None = None


@dataclass(frozen=True)
class TrackLog:
    """A read log: its header, the usable steps, and how many were skipped (non-finite) or unreadable."""

    header: dict
    steps: list[LoggedStep]
    skipped: int = 0
    earlier_runs: int = 0  # fresh runs appended before this one (the step count went back): only the last is read
    torn: bool = False     # a run's last line was cut off mid-write (the run died writing it): ignored
    resumes: tuple = ()    # (first step, earlier lines replaced) of each run that resumed this one (``read_log``)

    @property
    def unit(self) -> str:
        return self.header.get("unit", "examples")

    @property
    def draws(self) -> list[Draw]:
        return [s.draw for s in self.steps]

    @property
    def draws_pre(self) -> list[Draw]:
        """The preconditioned pairs (B_pre) of the steps that logged them."""
        return _pre_draws(self.steps)


DEFAULT_WINDOW = 100   # steps per windowed estimate of a long log (``auto_window``)

def _pre_draws(steps: list[LoggedStep]) -> list[Draw]:
    return [Draw(np.array([s.small_sq_pre]), np.array([s.big_sq_pre]), s.draw.b, s.draw.B, s.draw.loss, s.draw.n)
            for s in steps if s.small_sq_pre is not None and s.big_sq_pre is not None]


def _lock(file) -> bool:
    """An exclusive advisory lock on the open log (released when it closes): False when another process holds one.
    Where the platform has no ``fcntl`` (Windows), no lock: True."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:   # a file system without locks (some network mounts): write unlocked
        return True
    return True


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _ends_a_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.readline()


def _check_header(path: Path, line: str, reading: bool = False) -> dict:
    try:
        header = json.loads(line)
    except json.JSONDecodeError:
        header = None
    if header is None and f'"schema": "{SCHEMA}"' in line[:200]:
        raise ReportError(f"{path}: its header line is cut off (the run was stopped while writing it, before any "
                          "step was logged)", "remove it (it holds no step), or choose a new log path")
    if not isinstance(header, dict) or header.get("schema") != SCHEMA:
        report = line.strip() == "{" or isinstance(header, dict) and "schema_version" in header
        raise ReportError(f"{path} is not a bsprof tracker log (its first line is not a {SCHEMA} header)"
                          + ("; it looks like a report.json" if report else ""),
                          ("read a report with bsprof.Report.from_json(path) or `bsprof report` on it; "
                           "a tracker log is the .jsonl file written by bsprof.Tracker(log=...)") if reading and report
                          else "pass the .jsonl file written by bsprof.Tracker(log=...)" if reading
                          else "pass the .jsonl file written by bsprof.Tracker(log=...), or choose a new log path")
    if header.get("version") != VERSION:
        raise ReportError(f"{path} is tracker log version {header.get('version')}, this bsprof reads {VERSION}",
                          "read it with the bsprof version that wrote it")
    return header


def _float(x) -> float:
    return float("nan") if x is None else float(x)


def read_log(path: str | Path) -> TrackLog:
    """The header and the steps of a tracker log (skipped steps counted; a torn last line ignored).

    A log may hold several runs, each from its header (or, from an older bsprof, from where the step count went
    back). A run whose first step comes after the first step of the runs kept so far, with the same unit and
    optimizer, is a **resumed** run (from a checkpoint: Lightning's ``ckpt_path``, Hugging Face's
    ``resume_from_checkpoint``, or ``tracker.step(step=…)``): it continues them, replacing their steps from its
    first on (the earlier run went past the checkpoint, and those steps were retrained), and its examples count,
    which a new tracker restarts at 0, is carried on from the earlier run's. Any other run is a fresh one: only
    the last fresh run (with what resumed it) is read."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"tracker log not found: {path}", "pass the .jsonl file written by bsprof.Tracker(log=...)")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ReportError(f"{path} is empty", "pass the .jsonl file written by bsprof.Tracker(log=...)")
    runs, torn = [_Run(_check_header(path, lines[0], reading=True))], False
    for i, line in enumerate(lines[1:], start=2):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            glued = line.find('{"schema"', 1)   # an older bsprof appended a run onto the torn line of the last
            if glued > 0 and _json(line[glued:]) is not None:
                line, torn = line[glued:], True
                r = json.loads(line)
            elif i == len(lines) or '"schema"' in lines[i][:40]:  # the run died while writing it
                torn = True
                continue
            else:
                raise ReportError(f"{path}:{i} is not valid JSON", "the log is damaged; remove that line")
        if isinstance(r, dict) and "schema" in r:  # a later run appended with its own header: it starts here
            runs.append(_Run(_check_header(path, line, reading=True)))
            continue
        if runs[-1].marks and int(r["step"]) <= runs[-1].marks[-1][0]:  # a run appended headerless (older bsprof)
            runs.append(_Run(runs[-1].header))
        runs[-1].add(r)
    kept, fresh, resumes = runs[0], 0, []
    for run in runs[1:]:
        if not run.marks:   # a header and no step yet: nothing to read
            continue
        if not kept.marks:  # nor in the runs before it
            kept = run
            continue
        if kept.marks[0][0] < run.marks[0][0] and all(
                kept.header.get(k) == run.header.get(k) for k in ("unit", "optimizer")):
            resumes.append((run.marks[0][0], kept.cut(run.marks[0][0])))
            kept.resume(run)
        else:
            kept, fresh, resumes = run, fresh + 1, []
    return TrackLog(kept.header, kept.steps, len(kept.skipped), fresh, torn, tuple(resumes))


class _Run:
    """One run's lines as read: its header, its usable steps, its skipped steps, and (step, examples, B) of every
    line (skipped ones too), where a resumed run's examples count continues from."""

    def __init__(self, header: dict):
        self.header, self.steps, self.skipped, self.marks = header, [], [], []

    def add(self, r: dict) -> None:
        step = int(r["step"])
        self.marks.append((step, int(r.get("examples", 0)), r.get("B")))
        if r.get("skipped") or r.get("small_sq") is None or r.get("big_sq") is None:
            self.skipped.append(step)
            return
        draw = Draw(np.array([float(r["small_sq"])]), np.array([float(r["big_sq"])]), int(r["b"]), int(r["B"]),
                    _float(r.get("loss")), int(r["n"]) if r.get("n") is not None else None)
        self.steps.append(LoggedStep(step, int(r.get("examples", 0)), _float(r.get("lr")), draw,
                                     r.get("small_sq_pre"), r.get("big_sq_pre")))

    def examples_at(self, step: int) -> int:
        """Examples seen before ``step``: logged at it, or carried on from the last line before it."""
        before = [m for m in self.marks if m[0] <= step]
        s, examples, B = before[-1]
        return examples + (int(B) if B is not None else 0) * (step - s)

    def cut(self, step: int) -> int:
        """Drop the lines from ``step`` on (retrained by a resumed run); how many were dropped."""
        n = sum(1 for m in self.marks if m[0] >= step)
        self.steps = [s for s in self.steps if s.step < step]
        self.skipped = [s for s in self.skipped if s < step]
        self.marks = [m for m in self.marks if m[0] < step]
        return n

    def resume(self, run: _Run) -> None:
        """Continue with ``run``: its header (how its steps were split) and its steps, the examples carried on."""
        start, first = run.marks[0][0], run.marks[0][1]
        carried = self.examples_at(start) if self.marks else 0
        if self.marks and first < carried:   # a new tracker counted from 0
            shift = carried - first
            run.steps = [replace(s, examples=s.examples + shift) for s in run.steps]
            run.marks = [(s, e + shift, B) for s, e, B in run.marks]
        self.header = run.header
        self.steps += run.steps
        self.skipped += run.skipped
        self.marks += run.marks


def measurements(log: TrackLog, window: int = 100, every: int | None = None,
                 confidence: float = 0.9) -> list[Measurement]:
    """Windowed estimates every ``every`` logged steps (default: ``window``) and at the last, each over the ``window``
    steps ending there (B_pre too, where the steps logged preconditioned norms). With ``every ≥ window`` the rows do
    not overlap: the last one covers only the steps after the one before it (120 steps at a window of 100: steps
    0–99 and 100–119, not 20–119, which would count 80 steps twice in the path average).

    Non-overlapping windows whose B_simple is not determined (|G|² not told apart from 0: a lower bound) are not
    rows of their own: their steps join the next window (the last one, the window before it), so every step counts
    once. Leaving them out kept the windows whose |G|² came out high by chance, and biased the curve, and the
    critical batch over it, low (the smaller the window, the more: a new user's log read 89.8 at --window 10 where
    the true value was 192 and --window 100 read 148; now 110). Joining is itself decided by each window's outcome,
    so short windows still read low (a reviewer's simulation, true 192: −17 to −31% at --window 5 against −33 to
    −62% before; −4 to −13% at 50, as before, from fitting per-window ratios): prefer windows that resolve |G|² on
    their own. A ``Measurement.n_draws`` above the window
    says which rows were joined."""
    every = every or window
    steps, rows, prev = log.steps, [], -1
    ends = sorted({*range(every - 1, len(steps), every), len(steps) - 1} - {-1})
    joins = every >= window  # non-overlapping: an undetermined window's steps may join the next
    carried = None  # the first step of an undetermined window whose steps join the next
    for end in ends:
        start = carried if carried is not None else max(0, end + 1 - window, prev + 1 if joins else 0)
        part = steps[start:end + 1]
        if len(part) < 2:  # one step has no interval; the next row will have it
            continue
        m = _row(log, part, confidence)
        if joins and m.b_simple.status is not Status.OK:
            if end != ends[-1]:
                carried = start
                continue  # its steps join the next window
            if rows:  # the last steps: joined to the window before them, when that determines it
                joined = _row(log, steps[rows[-1].first:end + 1], confidence)
                if joined.b_simple.status is Status.OK:
                    rows[-1] = _Row(joined, rows[-1].first)
                    continue
        prev, carried = end, None
        rows.append(_Row(m, start))
    return [r.m for r in rows]


@dataclass
class _Row:
    m: Measurement
    first: int  # index of its first step in the log


def _row(log: TrackLog, part: list, confidence: float) -> Measurement:
    """One window's row: B_simple over its steps' pairs (B_pre too, where they logged preconditioned norms), at
    the window's middle step, with the mean loss of the window's middle half: a schedule reads the loss path from
    (step, loss), and the noise scale, a mean over the window, belongs to its middle. (At the window's last step
    with the whole window's mean loss, the path ran late, a half window and more where the loss falls fast, and a
    schedule predicted 1.7–3.5× the steps the logged run itself took to a target: a trial's finding.)"""
    n = len(part)
    middle = part[(n - 1) // 2]
    m = measurement([s.draw for s in part], step=middle.step, examples_seen=middle.examples,
                    method=_method(log), confidence=confidence)
    central = [s.draw for s in part[n // 4:n - n // 4] if finite(s.draw.loss)]
    if central:
        m = replace(m, loss=math.fsum(d.loss * d.B for d in central) / math.fsum(d.B for d in central))
    pre = _pre_draws(part)
    if len(pre) >= 2:
        m = replace(m, b_pre=b_simple_of(windowed(pre, None, confidence)))
    return m


def _method(log: TrackLog) -> str:
    """'track:SOURCE'; under source="auto", the sources its steps' pairs came from, told by their sizes: b = 1 per
    example, b·ranks = B across the ranks, else micro-steps ('track:auto→accumulation')."""
    source = log.header.get("source", "auto")
    if source != "auto" or not log.steps:
        return f"track:{source}"
    world = int(log.header.get("world_size") or 1)
    seen = {"per_example" if s.draw.b == 1 else "ranks" if world > 1 and s.draw.b * world == s.draw.B
            else "accumulation" for s in log.steps}
    return "track:auto→" + "+".join(sorted(seen))


def peak_lr(log: TrackLog) -> float | None:
    """The largest finite lr of the logged steps (None: none logged): the training lr `schedule` and `check` scale
    from. Not the last step's: under a decaying lr scheduler (cosine, step) that is the run's near-zero end, and the
    lr a user configures, and passes to `check --lr`, is the peak."""
    lrs = [s.lr for s in log.steps if s.lr is not None and math.isfinite(s.lr) and s.lr > 0]
    return max(lrs) if lrs else None


def lr_range(log: TrackLog) -> tuple[float, float] | None:
    """(lowest, highest) finite positive lr of the logged steps; None when none was logged."""
    lrs = [s.lr for s in log.steps if s.lr is not None and math.isfinite(s.lr) and s.lr > 0]
    return (min(lrs), max(lrs)) if lrs else None


def _training(log: TrackLog) -> dict:
    """The training batch (``_usual``: the last step's, an epoch's short last step passed over), lr (the peak,
    ``peak_lr``) and optimizer of the logged run, as
    `schedule` and `check` read
    them from a report's config; where the run started (its first logged step and that step's loss), from which
    a schedule counts its steps; and how a step was split (accumulation steps, ranks, and the per-rank micro-batch
    B/(k·W)), which a schedule keeps."""
    if not log.steps:
        return {}
    first, last = log.steps[0], _usual(log.steps)
    out = {"batch_size": last.draw.B, "optimizer_lr": peak_lr(log),
           "start_step": first.step, "start_loss": first.draw.loss if first.draw.loss == first.draw.loss else None}
    world = int(log.header.get("world_size") or 1)
    accumulation = int(log.header.get("accumulation_steps") or _accumulation(last.draw, world))
    out.update(accumulation_steps=accumulation, world_size=world)
    if last.draw.B % (accumulation * world) == 0:  # the micro-batch one rank runs per backward: B = W·k·m
        out["train_micro_batch"] = last.draw.B // (accumulation * world)
    if log.header.get("optimizer"):
        out["optimizer"] = log.header["optimizer"]
    if log.header.get("optimizer_momentum") is not None:
        out["optimizer_momentum"] = log.header["optimizer_momentum"]
    return out


def _usual(steps: list) -> object:
    """The last step of the last run of two or more steps at one batch: the batch the run trained with at its end,
    not an epoch's short last step (drop_last=False: B = 8 after steps of 32, which had been taken for the training
    batch, and every lr scaled from it); a batch-size ramp's last stage lasts many steps and is kept."""
    for i in range(len(steps) - 1, 0, -1):
        if steps[i].draw.B == steps[i - 1].draw.B:
            return steps[i]
    return steps[-1]


def _accumulation(draw, world: int) -> int:
    """Backward passes per step when the header does not say (the Lightning and Hugging Face callbacks, whose k may
    follow a schedule): B/(W·b) for a step whose b is a micro-batch (b > 1: accumulation, or a DDP rank's batch,
    k = 1), 1 for a per-example step (b = 1: one backward of the whole batch)."""
    b, B = int(draw.b), int(draw.B)
    return B // (world * b) if b > 1 and B % (world * b) == 0 and B >= world * b else 1


def resolving_window(log: TrackLog, window: int, confidence: float = 0.9, most: float = 0.1) -> int:
    """The window a log is read with: ``window``, doubled until at most ``most`` of its fixed, non-overlapping
    windows (and at least one) leave |G|² undetermined, or until it spans the log. Decided from all the windows at
    once, not window by window: joining each undetermined window to the next (``measurements``) is decided by that
    window's own outcome and keeps the windows whose |G|² came out high, so a short window read low (a reviewer's
    simulation, true 192, 1,000 steps: 155 at --window 5 with joining alone, 125 without)."""
    steps = log.steps
    while 2 * window <= len(steps):
        parts = [steps[i:i + window] for i in range(0, len(steps), window)]
        parts = [p for p in parts if len(p) >= 2]
        bad = sum(windowed([s.draw for s in p], None, confidence).status is not Status.OK for p in parts)
        if bad <= max(1, most * len(parts)):
            break
        window *= 2
    return window


def auto_window(steps: int) -> int:
    """The window a log is read with when none is asked: 100 steps, or a fifth of a shorter log's steps (five rows,
    enough for a curve along training), at least 10. A wide window leaves out the start of training, where the
    noise scale is smallest, and the headline's path starts at the first window's middle (docs/tracker.md)."""
    return min(DEFAULT_WINDOW, max(10, steps // 5))


def report_from_log(path: str | Path, window: int | None = None, every: int | None = None,
                    confidence: float = 0.9) -> Report:
    """A ``Report`` whose measurements are the log's windowed estimates (see ``measurements``); ``window`` None:
    ``auto_window``. Without ``every`` the window is widened where it is too short to resolve |G|²
    (``resolving_window``), with a note."""
    log = read_log(path) if window is None else None
    auto = window is None
    window = auto_window(len(log.steps)) if auto else window
    if int(window) < 2 or (every is not None and int(every) < 1):
        raise ConfigError(f"--window must be at least 2 steps (got {window})" if int(window) < 2 else
                          f"every must be at least 1 step (got {every})",
                          "a window of N steps averages their pairs; e.g. --window 20")
    log = log or read_log(path)
    used = resolving_window(log, int(window), confidence) if every is None else int(window)
    report = Report(spec={"tracker_log": str(path)}, unit=log.unit,
                    config={"source": log.header.get("source"), "window": used, "every": every or used,
                            "confidence": confidence, "steps_logged": len(log.steps), "steps_skipped": log.skipped,
                            **({"window_asked": int(window)} if used != window else {}),
                            **({"window_auto": True} if auto else {}), **_training(log)})
    if used != window:
        report.diagnose("window_widened", f"windows of {window} steps{' (the default for this log)' if auto else ''} "
                        "left |G|² undetermined in more than a tenth of them: read with windows of "
                        f"{used} steps instead (short windows kept for the curve only when their |G|² came out high "
                        "would bias it low)")
    for m in measurements(log, used, every, confidence):
        report.add(m)
    joined = [f"{m.step} ({m.n_draws} steps)" for m in report.measurements if m.n_draws > used]
    if joined:
        report.diagnose("windows_joined", f"the rows at step {', '.join(joined[:5])}{', …' if len(joined) > 5 else ''} "
                        f"span more than the window of {used}: a window whose |G|² came out undetermined on its own "
                        "was joined to the next (or the last steps to the one before), so that every step counts "
                        "once; a wider --window resolves each on its own")
    if not report.measurements:
        report.diagnose("no_windows", f"{path} has no window to estimate: {len(log.steps)} step(s) with a pair "
                        f"were logged ({log.skipped} skipped as non-finite); a window needs two. Check that the "
                        "training loop calls tracker.step() after its backward passes and that their gradients "
                        "are finite (an AMP overflow on every step is skipped).")
    if log.steps and not any(math.isfinite(s.draw.loss) for s in log.steps):
        report.diagnose("no_losses", f"{path} logs no losses (tracker.step() was called without loss=): the noise "
                        "scale is known against the step only, and a schedule or a critical batch over the path, "
                        "which follow it against the loss, cannot be made; pass tracker.step(loss=loss)")
    lrs = lr_range(log)
    if lrs is not None and lrs[1] > 1.1 * lrs[0]:
        report.diagnose("lr_varied", f"the logged lr varied from {lrs[0]:.4g} to {lrs[1]:.4g} (a learning-rate "
                        f"schedule): `bsprof schedule` and `check --lr` scale from the peak {lrs[1]:.4g} as the "
                        "training lr (pass --lr to choose another); the noise scale depends on lr/B, so each window "
                        "belongs to the lrs of its steps")
    unresolved = [f"{m.step} (≤ {m.b_simple.hi:.3g})" for m in report.measurements if m.b_simple.unresolved]
    if unresolved:  # as ``engine.diagnostics`` says of a measurement, with a log's fix
        report.diagnose("unresolved", f"B_simple at step {', '.join(unresolved)}: the interval reaches 0 (tr(Σ) not "
                        "told apart from 0), so the estimate is unresolved: known only to be at most its upper end, "
                        "not the value shown; a wider --window (more steps per estimate) resolves it")
    if report.measurements and len(log.steps) >= 2 and len(report.measurements) < 2:
        smaller = max(2, len(log.steps) // 5)
        fix = (f"Shorter windows do not resolve |G|² in this log (--window {window} was widened to {used}): log more "
               "steps for a curve." if used != window else
               f"Read it with a smaller window, e.g. --window {smaller}." if smaller < used else
               "Log more steps for a curve.")
        report.diagnose("one_window", f"{path} has {len(log.steps)} logged steps, fewer than two windows of "
                        f"{used}: one row, averaged over the whole run, and no curve along training. {fix}")
    elif len(report.measurements) < 5 and len(log.steps) // 5 >= 2 and (every or window) > len(log.steps) // 5:
        report.diagnose("few_windows", f"{path} has {len(log.steps)} logged steps: {len(report.measurements)} "
                        f"windows of {window}, too few for a curve along training (a schedule fits the noise scale "
                        f"against the loss through them). Read it with --window {len(log.steps) // 5} (five "
                        "windows); a much smaller window leaves each one noisier, not the curve more accurate.")
    if log.torn:
        report.diagnose("torn_line", f"a line of {path} was cut off mid-write (a run stopped while writing it): "
                        "that step is left out")
    if log.earlier_runs:
        report.diagnose("several_runs", f"{path} holds {log.earlier_runs + 1} runs (a run appended to it with its "
                        "own header, or the step count starting again); only the last was read, with its own header "
                        "(optimizer, accumulation). Give each run its own log file; a run resumed from a checkpoint "
                        "continues the log when it passes the step it resumes at, tracker.step(step=start).")
    first = log.steps[0] if log.steps else None
    if not log.resumes and first is not None and first.step > 0 and first.examples == 0:
        report.diagnose("starts_late", f"{path} starts at step {first.step} with its examples count at 0: a run "
                        "resumed from a checkpoint into a new log file (Lightning's default log is in the logger's "
                        "version folder, new for each run); to read it with the run before it, give both one log "
                        "path")
    if log.resumes:   # one note for every resume (a report keeps one note per code)
        said = "; ".join(f"at step {start}" + (f", replacing the {replaced} logged steps the run before it took from "
                                                 "there (retrained after the checkpoint)" if replaced else "")
                         for start, replaced in log.resumes)
        report.diagnose("resumed", f"{path}: {'a run' if len(log.resumes) == 1 else f'{len(log.resumes)} runs'} "
                        f"resumed from a checkpoint, each continuing the one before it: {said}")
    if log.skipped:
        report.diagnose("skipped_steps", f"{log.skipped} logged steps had non-finite gradients and were skipped")
    return report
