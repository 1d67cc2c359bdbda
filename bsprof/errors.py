"""Typed errors. The library raises them; only the CLI turns them into a red line and an exit code.

Every error carries what happened (``message``) and what to do about it (``hint``).
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")   # terminal escape sequences (CSI), as torch's messages carry


def plain(text: str) -> str:
    """``text`` without terminal escape sequences: a quoted library message (torch.load's has bold markers) stays
    readable in a CI log."""
    return _ANSI.sub("", text) if "\x1b" in text else text


class BsprofError(Exception):
    """A problem the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 2

    def __init__(self, message: str, hint: str = ""):
        message, hint = plain(str(message)), plain(str(hint))
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message


class SpecError(BsprofError):
    """The spec file is missing, does not import, or its functions misbehave."""


class ConfigError(BsprofError):
    """An option or config key is unknown, of the wrong type, or inconsistent with another."""


class DataError(BsprofError):
    """Dataset items cannot be drawn or collated."""


class NonFiniteError(BsprofError):
    """A loss or gradient became NaN or Inf."""

    def __init__(self, message: str, hint: str = "", step: int | None = None):
        super().__init__(message, hint)
        self.step = step


class ReportError(BsprofError):
    """A report file cannot be read or does not match the schema."""


def short(value, limit: int = 200) -> str:
    """A bounded repr for messages (strings quoted): ``reprlib`` stops at a few levels and items (a YAML bomb's
    value is never expanded), and the text is cut at ``limit`` characters."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, limit, limit, limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 8
    return clip(r.repr(value), limit)


def clip(text: str, limit: int = 200) -> str:
    """``text`` cut at ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


class OptionError(ConfigError, TypeError):
    """An unknown keyword given to a public class or function (a TypeError too, as Python's own would be)."""


def known_options(fn):
    """Wrap ``fn`` (a public ``__init__`` or function) so that an unknown keyword raises an ``OptionError`` that names
    the close matches among its parameters (Python's TypeError names none: ``Tracker(accumulation_step=4)``)."""
    import difflib
    import functools
    import inspect

    params = inspect.signature(fn).parameters
    names = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"]
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            near = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
            said = ", ".join(f"{k!r}" + (f" (did you mean {m[0]!r}?)" if m else "") for k, m in near.items())
            where = fn.__qualname__.removesuffix(".__init__")
            raise OptionError(f"{where}() got unknown keyword argument(s): {said}",
                              f"its options: {', '.join(names)}")
        return fn(*args, **kwargs)
    return checked
