"""docs/tracker.md is a tested artifact: its ```python blocks run, in order, in one namespace, in a temp folder."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "tracker.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_tracker_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    found = blocks()
    assert len(found) >= 3
    namespace: dict = {}
    for code in found:
        exec(compile(code, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "B_simple" in out and (tmp_path / "gns.jsonl").is_file() and (tmp_path / "tracker_report.json").is_file()
