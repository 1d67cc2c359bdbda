"""The command line: typer. Each command parses, makes one library call, renders.

Typed ``BsprofError``s become one red line, a hint, and an exit code; never a traceback for a user mistake.
"""

from __future__ import annotations

import typer

from bsprof.cli import check, measure, report, schedule, sweep  # noqa: F401  (each registers its command)
from bsprof.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main", "typer"]
