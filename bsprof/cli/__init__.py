"""The command line: typer. Each command parses, makes one library call, renders.

Typed ``BsprofError``s become one red line, a hint, and an exit code; never a traceback for a user mistake.
"""

from __future__ import annotations

import sys

import typer

from bsprof.cli import check, measure, report, schedule, sweep  # noqa: F401  (each registers its command)
from bsprof.cli.app import app


def _usage_error(self, file=None) -> None:
    """click's UsageError (an unknown option, a value of the wrong type, a missing argument) in bsprof's own form:
    the problem, then the fix, on stderr; exit 2 as click's (its form was a usage block and "Error: …", no fix)."""
    from rich.markup import escape

    from bsprof.cli.app import err_console

    command = self.ctx.command_path if self.ctx is not None else "bsprof"
    lists = ("every command" if self.ctx is None or hasattr(self.ctx.command, "list_commands")
             else "every option, its type and its default")
    err_console.print(f"[bold red]error:[/] {escape(self.format_message())}", highlight=False)
    err_console.print(f"[yellow]fix:[/] `{escape(command)} --help` lists {lists}", highlight=False)


def main() -> None:
    """Run the app; a Ctrl-C that no command handles is one line and exit 130, never a traceback. Help printed
    into a pipe gets 120 columns, as bsprof's own output does (rich's default, 80, cuts long option names)."""
    _help_width()
    for lib in (getattr(typer, "_click", None), sys.modules.get("click")):   # recent typer vendors click as
        if lib is not None:                                                 # typer._click; older ones use click
            lib.exceptions.UsageError.show = _usage_error
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
