"""The command line: typer. Each command parses, makes one library call, renders.

Typed ``BsprofError``s become one red line, a hint, and an exit code; never a traceback for a user mistake.
"""

from __future__ import annotations

import typer

from . import measure as _measure  # noqa: F401  (registers the command)
from .app import app

for _name in ("schedule", "check", "report"):  # commands added by their own modules, when present
    try:
        __import__(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_name}":
            raise


def main() -> None:
    app()


__all__ = ["app", "main", "typer"]
