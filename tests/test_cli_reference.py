"""docs/cli.md is the command line as it is: regenerated in memory by scripts/cli_reference.py, it must match."""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path

import typer

from bsprof.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"


def _script():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_up_to_date():
    expected, written = _script().reference(), DOC.read_text()
    diff = "".join(list(difflib.unified_diff(written.splitlines(True), expected.splitlines(True), "docs/cli.md",
                                             "generated"))[:40])
    assert written == expected, f"docs/cli.md is out of date: run `python scripts/cli_reference.py`\n{diff}"


def test_every_command_argument_and_option_has_a_row():
    group = typer.main.get_command(app)
    text = _script().reference()
    sections = dict(re.findall(r"^## `bsprof (\w+)`\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    for name, command in group.commands.items():
        assert name in sections, f"no section for bsprof {name}"
        for param in command.params:   # in its own command's section (--seed is in several)
            names = param.opts if param.param_type_name == "option" else [param.name.upper()]
            assert any(f"| `{n}`" in sections[name] or f", `{n}`" in sections[name] for n in names), (name, param.name)


def test_the_readme_links_the_reference():
    assert "(docs/cli.md)" in (ROOT / "README.md").read_text()
