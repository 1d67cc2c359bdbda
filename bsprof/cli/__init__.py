"""The command line: typer. Each command parses, makes one library call, renders.

Typed ``BsprofError``s become one red line, a hint, and an exit code; never a traceback for a user mistake.
"""

from __future__ import annotations

import sys

import typer

from bsprof.cli import check, measure, report, schedule, sweep  # noqa: F401  (each registers its command)
from bsprof.cli.app import app


def main() -> None:
    """Run the app; a Ctrl-C that no command handles is one line and exit 130, never a traceback. Help printed
    into a pipe gets 120 columns, as bsprof's own output does (rich's default, 80, cuts long option names)."""
    _help_width()
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        raise SystemExit(130) from None
    except SystemExit as e:  # typer turns a Ctrl-C inside a command into a silent Exit(130): say it
        cause = getattr(e.__context__, "__cause__", None)
        if isinstance(cause, KeyboardInterrupt):
            from bsprof.cli import signals

            sys.stderr.write(f"\n{signals.describe(cause)}\n")
            raise SystemExit(signals.exit_code(cause)) from None
        raise


def _help_width() -> None:
    try:
        import typer.rich_utils as rich_utils
    except ImportError:  # typer without rich
        return
    if getattr(rich_utils, "MAX_WIDTH", 0) is None and not sys.stdout.isatty():
        rich_utils.MAX_WIDTH = 120


__all__ = ["app", "main", "typer"]
