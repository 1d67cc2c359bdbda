"""docs/tracker.md is a tested artifact: its ```python blocks run, in order, in one namespace, in a temp folder.

A block right after a ``<!-- not run: why -->`` line (the DDP and FSDP scripts, which need torchrun) is only
compiled, not run."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "tracker.md"
FENCE = re.compile(r"(<!-- not run:[^\n]*-->\n)?```python[^\n]*\n(.*?)```", flags=re.S)


def blocks() -> list[tuple[str, bool]]:
    """(code, runs) for every ```python block of the page, in order."""
    return [(code, not skip) for skip, code in FENCE.findall(DOC.read_text())]


def test_the_tracker_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    found = blocks()
    assert sum(runs for _, runs in found) >= 4
    namespace: dict = {}
    for code, runs in found:
        compiled = compile(code, str(DOC), "exec")  # every block at least parses
        if runs:
            exec(compiled, namespace)
    out = capsys.readouterr().out
    assert "B_simple" in out and (tmp_path / "gns.jsonl").is_file() and (tmp_path / "tracker_report.json").is_file()


def test_only_the_torchrun_blocks_are_skipped():
    skipped = [code for code, runs in blocks() if not runs]
    assert len(skipped) >= 2 and all("init_process_group" in code or "GradScaler" in code for code in skipped)
