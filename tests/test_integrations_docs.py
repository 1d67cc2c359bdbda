"""docs/integrations.md is a tested artifact: its ```python blocks run in a temporary folder. A block preceded by
`<!-- requires: pkg ... -->` needs those packages (skipped with the reason when one is missing); blocks with the
same requirements share one namespace, in order; `<!-- not run: reason -->` blocks are only shown."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
BLOCK = re.compile(r"(<!-- (requires|not run):([^>]*)-->\n)?```python\n(.*?)```", re.S)


def groups() -> dict[tuple[str, ...], list[str]]:
    out: dict[tuple[str, ...], list[str]] = {}
    for _, kind, arg, code in BLOCK.findall(DOC.read_text()):
        if kind == "not run":
            continue
        out.setdefault(tuple(arg.split()) if kind == "requires" else (), []).append(code)
    return out


def test_every_framework_has_a_runnable_example():
    found = {p for req in groups() for p in req}
    assert {"tensorboard", "lightning", "transformers", "wandb"} <= found
    assert () in groups()  # the plain-loop schedule and the export examples need nothing


@pytest.mark.parametrize("requires", list(groups()), ids=lambda r: "+".join(r) or "core")
def test_integration_docs_run(requires, tmp_path, monkeypatch, capsys):
    for pkg in requires:
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} is not installed: pip install -e '.[{_extra(pkg)}]' to run this example")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc__"}
    for code in groups()[requires]:
        exec(compile(code, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    if requires == ("lightning",):
        assert "bsprof/b_simple_lo" in out and "[(8, 8, 4)]" in out
        assert list(tmp_path.rglob("bsprof.jsonl")) and list(tmp_path.rglob("metrics.csv"))
    if requires == ("transformers", "accelerate"):
        assert "bsprof/g2" in out and "'loss'" in out and (tmp_path / "hf-out" / "bsprof.jsonl").is_file()
        assert "[(8, 8, 4)] [8, 8, 8, 8, 8, 8, 8, 8, 32, 32, 32, 32] [0.05, 0.1]" in out  # the planned ramp
    if requires == ("tensorboard",):
        assert "bsprof/b_simple" in out and list((tmp_path / "runs").rglob("events.out.tfevents*"))
    if requires == ():
        assert "--rampup-batch-size 512 512 921600" in out and "64 0.1" in out


def _extra(pkg: str) -> str:
    return {"transformers": "hf", "accelerate": "hf"}.get(pkg, pkg)
