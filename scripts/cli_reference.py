"""Write docs/cli.md, the command-line reference: every command of the typer app, its arguments and options.

    python scripts/cli_reference.py

The text comes from the commands' definitions alone (no terminal width, no machine): tests/test_cli_reference.py
regenerates it with ``reference()`` and fails when docs/cli.md is out of date.
"""

from __future__ import annotations

import enum
import inspect
import re
import sys
import textwrap
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"

INTRO = (
    "Every command of the `bsprof` command line, in the order `bsprof --help` lists them, with each argument and "
    "option: its type, its default and its help text. This page is generated from the commands' definitions by "
    "`python scripts/cli_reference.py` (do not edit it by hand: tests/test_cli_reference.py fails when it is out of "
    "date), and `bsprof <command> --help` shows the same. Where an option's default is resolved when the command "
    "runs (from `--config`, the report, or the other options), the default column gives what `--help` shows, the "
    "bracketed end of its help text; empty: not set, or as the help text says."
)
# rich console markup ([bold], [/bold], [red], [/]) in a help text; "[200]"-style defaults are not markup
_MARKUP = re.compile(r"\[/?(?:bold|dim|italic|underline|strike|reverse|blink|b|i|u|s|link(?:=[^\]]*)?|"
                     r"(?:bright_)?(?:black|red|green|yellow|blue|magenta|cyan|white)"
                     r"(?: on (?:bright_)?[a-z]+)?)\]|\[/\]")
_SHOWN_DEFAULT = re.compile(r"\[([^\[\]]+)\]$")  # "… [200]": the default a help text ends with
_TYPES = {int: "int", float: "float", str: "str", bool: "flag", Path: "path"}
_UNIONS = (typing.Union, getattr(types, "UnionType", typing.Union))


def reference() -> str:
    """The whole of docs/cli.md."""
    import typer

    from bsprof.cli import app

    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="bsprof")
    lines = ["# Command-line reference", "", _wrap(INTRO), ""]
    lines += _section("bsprof", group, "[OPTIONS] COMMAND [ARGS]...")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if not command.hidden:
            lines += _section(f"bsprof {name}", command, _usage(command))
    return "\n".join(lines).rstrip("\n") + "\n"


def _wrap(text: str, width: int = 116) -> str:
    """A paragraph wrapped as the other docs are, never inside a `code span`."""
    kept = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", "\0"), text)
    return textwrap.fill(kept, width, break_long_words=False, break_on_hyphens=False).replace("\0", " ")


def _section(path: str, command, usage: str) -> list[str]:
    """A command's heading, its one-line purpose, its usage, and the table of its arguments and options."""
    hints = typing.get_type_hints(inspect.unwrap(command.callback)) if command.callback else {}
    rows = [_row(param, hints) for param in command.params if not getattr(param, "hidden", False)]
    return [f"## `{path}`", "", _purpose(command.help or ""), "", f"Usage: `{path} {usage}`", "",
            "| argument or option | type | default | description |", "|---|---|---|---|", *rows, ""]


def _purpose(help_text: str) -> str:
    """The first paragraph of a command's help, on one line."""
    return " ".join(_plain(help_text).strip().split("\n\n")[0].split())


def _usage(command) -> str:
    args = [_argument_name(p) if p.required else f"[{_argument_name(p)}]"
            for p in command.params if p.param_type_name == "argument"]
    return " ".join(["[OPTIONS]", *args])


def _argument_name(param) -> str:
    return (param.metavar or param.name).upper()


def _row(param, hints: dict) -> str:
    help_text = _plain(param.help or "")
    cells = [_names(param), _type(param, hints), _default(param, help_text), help_text]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _names(param) -> str:
    """`-c`, `--config`; `--hessian` / `--no-hessian`; an argument by its name in capitals."""
    if param.param_type_name == "argument":
        return f"`{_argument_name(param)}`"

    def joined(opts) -> str:   # as --help orders them: the shortest prefix ("-c") first
        return ", ".join(f"`{o}`" for o in sorted(opts, key=lambda o: len(o) - len(o.lstrip("-"))))

    return " / ".join(joined(opts) for opts in (param.opts, param.secondary_opts) if opts)


def _type(param, hints: dict) -> str:
    """From the annotation: int, float, str, path, flag; a list: repeatable; a choice: its values."""
    annotation = hints.get(param.name, str)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in _UNIONS and len(args) == 1:   # Optional[X], X | None
        annotation = args[0]
    if getattr(param, "is_flag", False):
        return "flag"
    if typing.get_origin(annotation) in (list, tuple):
        return f"{_type_name(typing.get_args(annotation)[0])}, repeatable"
    return _type_name(annotation)


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in annotation)
    if annotation in _TYPES:
        return _TYPES[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _default(param, help_text: str) -> str:
    """The default: required; a flag's setting; the declared value; else the one the help text ends with."""
    if param.required:
        return "required"
    value = param.default
    if getattr(param, "is_flag", False) and isinstance(value, bool):
        if param.secondary_opts:
            return f"`{(param.opts if value else param.secondary_opts)[0]}`"
        return "on" if value else "off"
    if value is not None and not callable(value):
        return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    shown = _SHOWN_DEFAULT.search(help_text.strip())
    return shown.group(1) if shown else ""


def _plain(text: str) -> str:
    """A help text without rich markup (none today: the app renders help as plain text)."""
    return _MARKUP.sub("", text)


def _cell(text: str) -> str:
    """One Markdown table cell: on one line, its pipes escaped (|G|² stays text, not a column)."""
    return " ".join(text.split()).replace("|", "\\|")


def main() -> None:
    DOC.write_text(reference())
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
