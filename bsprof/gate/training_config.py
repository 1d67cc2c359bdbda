"""Reading the batch size and learning rate out of a user's training config (YAML, JSON or TOML), for the gate.

Dotted keys (``trainer.batch_size``) walk nested mappings; without a key the first of ``BATCH_KEYS`` /
``LR_KEYS`` present wins, and the note says which was read. Values given on the command line win over the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bsprof.errors import ConfigError, clip, short

# Keys tried, in order, when no --batch-key / --lr-key is given (the first one present wins).
BATCH_KEYS = ("batch_size", "train.batch_size", "training.batch_size", "trainer.batch_size", "data.batch_size",
              "per_device_train_batch_size")
# Hugging Face TrainingArguments: the optimizer step's batch on one device is the per-device batch × this
HF_BATCH, HF_ACCUMULATION = "per_device_train_batch_size", "gradient_accumulation_steps"
LR_KEYS = ("lr", "learning_rate", "optim.lr", "optimizer.lr", "train.lr", "training.lr", "trainer.lr",
           "optim.learning_rate", "optimizer.learning_rate", "train.learning_rate", "training.learning_rate",
           "trainer.learning_rate")


def _load_toml(text: str):
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading a TOML config needs Python 3.11+ (tomllib) or the tomli package, "
                              "and neither is available", "pip install tomli, or pass a YAML or JSON config")
    return tomllib.loads(text)


def read_training_config(path: Path) -> dict:
    """A training config as a dict: YAML (.yaml/.yml), JSON (.json) or TOML (.toml), by extension."""
    if not path.is_file():
        raise ConfigError(f"training config not found: {path}",
                          "pass an existing YAML, JSON or TOML file to --training-config (-t; to judge at a loss, "
                          "use --at-loss)")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json", ".toml"):
        raise ConfigError(f"cannot tell the format of {path} from its extension {suffix!r}",
                          "use a .yaml, .yml, .json or .toml file")
    try:
        text = path.read_text()
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = _load_toml(text)
        else:
            from bsprof.config import load_yaml

            data = load_yaml(text, path)
    except ConfigError:
        raise
    except Exception as e:  # YAMLError, JSONDecodeError, TOMLDecodeError, UnicodeDecodeError, OSError
        raise ConfigError(f"cannot read {path}: {type(e).__name__}: {clip(str(e), 400)}", "fix the file's syntax")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__}, not a mapping of keys",
                          "pass the training config file itself")
    return data


def lookup(data: dict, key: str, source: str = "config"):
    """``data['a']['b'][0]`` for the dotted key 'a.b.0'; a ConfigError naming the keys present where it breaks."""
    node, path = data, []
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            where = ".".join(path) or "the top level"
            have = ", ".join(map(str, node)) if isinstance(node, dict) else f"a {type(node).__name__}"
            raise ConfigError(f"key {short(key)} not found in {source}: no {short(part)} at {where} (found: "
                              f"{clip(have)})",
                              "pass the dotted path to the value, e.g. --batch-key trainer.batch_size")
        path.append(part)
    return node


def _number(value, key: str, integer: bool) -> float:
    """A positive number from a config value (numeric strings such as YAML's '3e-4' are accepted)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"config key {key!r} holds {short(value)}, not a number", "point the key at a number")
    if not (math.isfinite(x) and x > 0) or (integer and x != int(x)):
        kind = "integer" if integer else "number"
        raise ConfigError(f"config key {key!r} holds {short(value)}, not a positive {kind}",
                          "point the key at the batch size" if integer else "point the key at the learning rate")
    return x


def values_from_config(path: Path, batch_key: str | None, lr_key: str | None, batch_size: float | None = None,
                       lr: float | None = None) -> tuple[float | None, float | None, list[str]]:
    """(batch size, lr, notes saying which keys were read). Explicit keys must exist; default keys may not.
    Values given on the command line win over the file's."""
    data, notes = read_training_config(path), []

    def pick(explicit, defaults, integer, given, flag):
        key = explicit or next((k for k in defaults if _has(data, k)), None)
        if key is None:
            if given is None and flag == "--lr":   # said, not silent: the lr is then not checked (a trial's finding)
                notes.append(f"no learning rate in {path} (tried {', '.join(defaults)}): the lr is not checked; "
                             "name its key with --lr-key, or pass --lr")
            return given
        value = lookup(data, key, str(path))
        if given is not None:
            notes.append(f"{flag} {short(given, 40)} overrides {key} = {short(value)} in {path}")
            return given
        notes.append(f"read {key} = {short(value)} from {path}")
        number = _number(value, key, integer)
        if integer and key.rsplit(".", 1)[-1] == HF_BATCH:   # per device and micro-step: × the accumulation
            where = key.rsplit(".", 1)[0] + "." if "." in key else ""
            k = _number(lookup(data, where + HF_ACCUMULATION, str(path)), HF_ACCUMULATION, True) \
                if _has(data, where + HF_ACCUMULATION) else 1
            notes.append(f"B = {short(value)} × {HF_ACCUMULATION} {k:g} = {number * k:g} examples per optimizer "
                         f"step on one device; on W devices the step's batch is W× that: pass --batch-size "
                         f"{number * k:g}·W")
            number *= k
        return number

    return (pick(batch_key, BATCH_KEYS, True, batch_size, "--batch-size"),
            pick(lr_key, LR_KEYS, False, lr, "--lr"), notes)


def _has(data: dict, key: str) -> bool:
    try:
        lookup(data, key)
        return True
    except ConfigError:
        return False
