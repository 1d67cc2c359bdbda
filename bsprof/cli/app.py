"""The typer application and the one place where errors become messages and exit codes."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from bsprof.errors import BsprofError, ConfigError

_TRAILING = re.compile(r"[ \t]+\n")
# Help is click's plain text, 120 columns: rich's markup ate the "[auto]"-style defaults of the help strings, and its
# panels padded lines with spaces in a pipe
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"max_content_width": 120, "terminal_width": 120},
                  help="bsprof: measure the critical batch size (gradient noise scale) of a PyTorch model.")


class _Console(Console):
    def _render_buffer(self, buffer) -> str:
        """Piped: no line ends in spaces (rich pads wrapped lines and table titles to the width)."""
        text = super()._render_buffer(buffer)
        return text if self.is_terminal else _TRAILING.sub("\n", text)

    def on_broken_pipe(self) -> None:
        """The reader left (`bsprof check … | head -1`): later output goes to /dev/null and the command ends with
        its own exit code (rich would exit 1 here, which ``check`` reads as "violated")."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (sys.stderr if self.stderr else sys.stdout).fileno())


def _console(stderr: bool = False) -> Console:
    """Piped output (CI logs, `| tee`) is not a terminal: rich would wrap tables at 80 columns; give them 120, or
    the COLUMNS the user exported (it was ignored when piped). NO_COLOR set and not empty (no-color.org): no styles
    at all, even on a terminal or with FORCE_COLOR (rich alone drops the colours but keeps bold)."""
    plain = {"color_system": None} if os.environ.get("NO_COLOR") else {}
    columns = os.environ.get("COLUMNS", "")
    piped = int(columns) if columns.isdigit() and int(columns) >= 40 else 120
    return _Console(stderr=stderr, width=None if (sys.stderr if stderr else sys.stdout).isatty() else piped, **plain)


console, err_console = _console(), _console(stderr=True)


def show(renderable) -> None:
    """Print to stdout; piped, at least as wide as its widest table needs, so that no table row wraps in a log, and
    without the spaces rich pads lines with (a table's title, a wrapped line's end): plain text, no escape codes."""
    from rich.protocol import rich_cast
    from rich.table import Table

    renderable, width = rich_cast(renderable), console.width
    if console.is_terminal:
        console.print(renderable)
        return
    if callable(getattr(renderable, "full", None)):   # a table sized to a terminal: piped, every column
        renderable = renderable.full()
    tables = [r for r in getattr(renderable, "renderables", [renderable]) if isinstance(r, Table)]
    wide = console.options.update_width(1000)  # measured unclamped, not at the console's 120 columns
    console.width = max([width, *(console.measure(t, options=wide).maximum for t in tables)])
    try:
        with console.capture() as captured:
            console.print(renderable)
    finally:
        console.width = width
    console.out("\n".join(line.rstrip() for line in captured.get().splitlines()), highlight=False)


@contextlib.contextmanager
def user_errors(exit_code: int | None = None, json_out: bool = False):
    """Turn a BsprofError into a red line plus hint on stderr and a non-zero exit (no traceback); ``json_out``: also
    ``{"error", "fix", "exit_code"}`` on stdout, for a script that asked for JSON (``--format json``)."""
    try:
        yield
    except BsprofError as e:
        from bsprof.gate.formats import neutralise  # no line of an error may read as a GitHub workflow command

        if json_out:
            import json

            code = exit_code if exit_code is not None else e.exit_code
            typer.echo(json.dumps({"error": e.message, "fix": e.hint or None, "exit_code": code}))
        err_console.print(f"[bold red]error:[/] {escape(neutralise(e.message))}", highlight=False, markup=True)
        if e.hint:  # user data (paths, values) may hold [brackets]: escaped, never read as markup
            err_console.print(f"[yellow]fix:[/] {escape(neutralise(e.hint))}", highlight=False)
        raise typer.Exit(exit_code if exit_code is not None else e.exit_code)


def _version(value: bool) -> None:
    if value:
        from bsprof import __version__

        typer.echo(f"bsprof {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """bsprof: measure the critical batch size (gradient noise scale) of a PyTorch model."""


def is_tty() -> bool:
    return sys.stderr.isatty()


def write_output(path: Path, text: str, flag: str = "--output") -> Path:
    """Write a command's output file whole (atomically), or say why it cannot be written (exit 2)."""
    from bsprof.output.files import write_text

    try:
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True)
        return write_text(path, text)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}", f"pass a writable file path to {flag}")
