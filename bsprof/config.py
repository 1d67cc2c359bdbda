"""One resolved options object per command: defaults < YAML file (--config) < command line.

Unknown keys and wrong types fail loudly, all problems reported together; the resolved options go into the report.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from bsprof.errors import ConfigError, clip, short

METHODS = ("auto", "per_example", "hooks", "vmap", "microbatch")
DEVICES = ("auto", "cpu", "cuda", "mps")
UNITS = ("examples", "tokens")
# names other tools use for an option (a did-you-mean, never accepted silently)
ALIASES = {"learning_rate": "lr", "batch": "batch_size", "bs": "batch_size", "max_steps": "steps",
           "num_steps": "steps", "micro_batch_size": "micro_batch", "eps": "rel_error", "precision": "rel_error"}
DEFAULT_LR = 0.1           # the default SGD optimizer's learning rate, when no lr is given
MAX_BATCH = 1 << 40        # the largest batch size, dataset or budget of examples bsprof accepts
MAX_INT = (1 << 63) - 1    # any other integer option (a seed, a step count)
MAX_YAML_NODES = 100_000   # a config with more values than this (aliases expanded) is refused: no YAML bombs


@dataclass(frozen=True)
class MeasureConfig:
    """Options of `bsprof measure`. Sizes are in examples; per-measurement budgets stop the sampling."""

    steps: int = 200                 # probe-training steps (0: measure the initial/checkpoint weights only)
    batch_size: int = 32             # training batch size
    lr: float | None = None          # learning rate of the default SGD optimizer (None: DEFAULT_LR); a spec optimizer
    #                                  keeps its own, and an lr given beside it is named as not used
    measure_every: int = 0           # steps between measurements (0: step 0 and four more, evenly spaced)
    rel_error: float = 0.2           # stop drawing when the interval on B_simple is within this of the estimate
    confidence: float = 0.9          # level of every interval
    method: str = "auto"             # gradient probe: auto, per_example, hooks, vmap, microbatch
    micro_batch: int = 8             # small batch b of the micro-batch probe
    probe_batch: int = 0             # big batch B of one draw (0: adapt to ~2·B_simple)
    chunk: int = 256                 # examples per forward/backward pass while measuring (memory)
    max_examples: int = 200_000      # budget of examples per measurement
    max_seconds: float = 60.0        # budget of seconds per measurement
    measure_budget: float = 1.0      # a measurement stops (after min_draws) once it took this many times the
                                     # training seconds it interleaves with (0: stop by rel_error alone)
    min_draws: int = 5               # draws before the stopping rule may stop
    device: str = "auto"             # auto (CUDA, then MPS, then CPU), cpu, cuda, mps
    seed: int = 0
    checkpoint: typing.Optional[str] = None  # measure at these saved weights (a state_dict)
    unit: str = "examples"           # batch unit: examples, or tokens (needs tokens_per_example)
    tokens_per_example: int = 0      # 0: detect from the spec's TOKENS_PER_EXAMPLE
    hessian: bool = False            # also measure B_noise = tr(HΣ)/(GᵀHG) via Hessian-vector products
    track_training: bool = True      # training steps give pairs too (per-example norms, else 2 micro-batches)
    strict: bool = False             # never the torch.func path: an error with method hooks, micro-batches in auto

    def problems(self) -> list[str]:
        """Every inconsistency at once (empty when valid)."""
        p = []
        for name in ("batch_size", "micro_batch", "chunk", "max_examples", "min_draws"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("steps", "measure_every", "probe_batch", "tokens_per_example"):
            if getattr(self, name) < 0:
                p.append(f"{name} must be 0 or more (got {getattr(self, name)})")
        if not 0 < self.rel_error < 1:
            guess = f" (did you mean {self.rel_error / 100:g}, i.e. ±{self.rel_error:g}%?)" \
                if 1 <= self.rel_error < 100 else ""
            p.append(f"rel_error is a fraction in (0, 1), e.g. 0.1 for ±10% (got {self.rel_error}){guess}")
        if not 0.5 <= self.confidence < 1:
            p.append(f"confidence must be in [0.5, 1) (got {self.confidence})")
        for name in ("batch_size", "micro_batch", "probe_batch", "chunk", "max_examples", "tokens_per_example"):
            if getattr(self, name) > MAX_BATCH:
                p.append(f"{name} must be at most 2**40 (got {short(getattr(self, name), 40)})")
        if not 0 <= self.seed <= MAX_INT:
            p.append(f"seed must be in [0, 2**63 - 1] (got {short(self.seed, 40)})")
        if self.lr is not None and not self.lr > 0:
            p.append(f"lr must be positive (got {self.lr})")
        if self.measure_budget < 0:
            p.append(f"measure_budget must be 0 (off) or more (got {self.measure_budget})")
        if self.max_seconds <= 0:
            p.append(f"max_seconds must be positive (got {self.max_seconds})")
        for name, allowed in (("method", METHODS), ("device", DEVICES), ("unit", UNITS)):
            if getattr(self, name) not in allowed:
                p.append(f"{name} must be one of {', '.join(allowed)} (got {short(getattr(self, name))})")
        if self.method == "microbatch" and self.micro_batch < 2:
            p.append("micro_batch must be at least 2 for the micro-batch probe (use --method per_example for b = 1)")
        if self.method == "microbatch" and self.probe_batch and self.probe_batch % self.micro_batch:
            p.append(f"probe_batch {self.probe_batch} is not a multiple of micro_batch {self.micro_batch}: "
                     f"use e.g. --probe-batch {self.micro_batch * max(2, self.probe_batch // self.micro_batch)}")
        if self.method == "microbatch" and self.probe_batch and self.probe_batch < 2 * self.micro_batch:
            p.append(f"probe_batch must hold at least two micro-batches of {self.micro_batch}")
        return p


def _check_type(name: str, value, hint) -> tuple[object, str | None]:
    """Coerce ``value`` to the annotated type where lossless (int → float); else say what is wrong."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None, None
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value, None
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_INT:
                return value, f"{name} is too large ({short(value, 40)}; at most 2**63 - 1)"
            return value, None
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not (abs(value) <= 1e300 if isinstance(value, int) else math.isfinite(value)):
                return value, f"{name} must be a finite number (got {short(value, 40)})"
            return float(value), None
        if t is str and isinstance(value, str):
            return value, None
        if typing.get_origin(t) is tuple and isinstance(value, (list, tuple)):  # tuple[X, ...]: a YAML list
            kind = typing.get_args(t)[0]
            items = [_check_type(name, v, kind) for v in value]
            bad = next((err for _, err in items if err), None)
            return (value, bad) if bad else (tuple(v for v, _ in items), None)
    want = " or ".join("a list" if typing.get_origin(t) is tuple else getattr(t, "__name__", str(t)) for t in allowed)
    return value, f"{name} must be {want}, got {type(value).__name__} {short(value)}"


def resolve(cls, yaml_path: str | Path | None = None, overrides: dict | None = None, command: str = "measure",
            flags: bool = False):
    """Build ``cls`` from defaults, then the YAML file, then ``overrides`` (None values are ignored). ``flags``:
    the overrides came from command-line flags, so a problem with one names it as typed (``--target-loss``)."""
    values: dict = {}
    errors: list[str] = []
    if yaml_path is not None:
        values.update(read_yaml(yaml_path))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    clean = {}
    for key, value in values.items():
        key_py = key.replace("-", "_")
        if key_py not in names:
            close = [ALIASES[key_py]] if ALIASES.get(key_py) in names else difflib.get_close_matches(key_py, names, n=1)
            errors.append(f"unknown option {short(key)}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        clean[key_py], err = _check_type(key_py, value, hints[key_py])
        if err:
            errors.append(err)
    if not errors:
        config = cls(**clean)
        errors = config.problems() if hasattr(config, "problems") else []
    if errors:
        if flags:
            given = [k.replace("-", "_") for k, v in (overrides or {}).items() if v is not None]
            errors = [as_flags(e, given) for e in errors]
        where = f" in {yaml_path}" if yaml_path else ""
        raise ConfigError(f"bad options{where}:\n  - " + "\n  - ".join(errors),
                          f"fix these; `bsprof {command} --help` lists every option and its type")
    return config


def as_flags(text: str, names: list[str]) -> str:
    """``text`` with the option ``names`` written as their flags: ``min_batch`` → ``--min-batch`` wherever it stands
    as a word, and a one-word name (``lr``, ``rule``) where it opens the message."""
    for name in sorted(names, key=len, reverse=True):
        flag = "--" + name.replace("_", "-")
        if "_" in name:
            text = re.sub(rf"(?<![\w-]){re.escape(name)}(?!\w)", flag, text)
        elif re.match(rf"{re.escape(name)}\b", text):
            text = flag + text[len(name):]
    return text


def read_yaml(path: str | Path) -> dict:
    """The mapping of options in a --config YAML file; a ConfigError when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", "pass an existing YAML file to --config")
    data = load_yaml(path.read_text(), path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option: value, not a {type(data).__name__}",
                          "write one `key: value` per line")
    return data


def load_yaml(text: str, path: Path | str = "config"):
    """``yaml.safe_load``, refusing a document whose values, aliases expanded, number more than
    ``MAX_YAML_NODES`` (billion laughs) or that nests too deeply; a ConfigError either way."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = " ".join(str(e).replace('"<unicode string>"', str(path)).split())  # yaml names the text it was
        # given, not the file; its context spans several lines and a caret line: one line, as every error is
        raise ConfigError(f"cannot read {path}: it is not valid YAML: {clip(where, 400)}", "fix the YAML syntax")
    except RecursionError:
        raise ConfigError(f"{path} nests too deeply", "write a flat mapping of option: value")
    if expanded_size(data) > MAX_YAML_NODES:
        raise ConfigError(f"{path} expands to more than {MAX_YAML_NODES:,} values (aliases expanded): refused",
                          "write the values out; a config needs no anchors that multiply")
    return data


def expanded_size(data, limit: int = MAX_YAML_NODES) -> int:
    """How many values ``data`` holds with shared (aliased) containers counted each time they appear; stops
    counting past ``limit``. Memoised by identity, so a bomb is sized in time linear in its text."""
    sizes: dict[int, int] = {}

    def size(x, depth: int) -> int:
        if depth > 100:
            return limit + 1
        if not isinstance(x, (dict, list)):
            return 1
        if id(x) not in sizes:
            items = list(x.keys()) + list(x.values()) if isinstance(x, dict) else x
            sizes[id(x)] = min(limit + 1, 1 + sum(size(v, depth + 1) for v in items))
        return sizes[id(x)]

    return size(data, 0)


def limit(flag: str, value, low: float, high: float, low_open: bool = False) -> str | None:
    """The problem with a number from the command line or a config, or None: finite and within [low, high]."""
    try:
        ok = math.isfinite(float(value)) and (value > low if low_open else value >= low) and value <= high
    except OverflowError:
        ok = False
    if ok:
        return None
    top = f"{high:,.0f}" if high >= 1e6 and float(high).is_integer() else f"{high:g}"
    return f"{flag} must be a number in {'(' if low_open else '['}{low:g}, {top}] (got {short(value, 40)})"


def as_dict(config) -> dict:
    return dataclasses.asdict(config)


def parse_list(text: str, kind: type, flag: str) -> tuple:
    """'16,32,64' → (16, 32, 64); a clear ConfigError naming the flag otherwise."""
    try:
        return tuple(kind(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        example = "16,32,64,128" if kind is int else "0.5,1,2"
        raise ConfigError(f"{flag} must be a comma-separated list of {kind.__name__}s (got {text!r})",
                          f"e.g. {flag} {example}")
