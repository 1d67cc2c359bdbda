"""README.md and docs/*.md are tested artifacts: every ```python block runs (in order, one namespace per file, in
a temporary folder holding the bundled configs), unless the line before it is `<!-- not run: reason -->`; the
README's quick-start command runs as written (after its install steps). docs/tracker.md and docs/integrations.md
have their own tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN_TEST = ("tracker.md", "integrations.md")  # tests/test_track_docs.py, tests/test_integrations_docs.py
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in OWN_TEST)]
BLOCK = re.compile(r"(<!-- not run:[^>]*-->\n)?```python\n(.*?)```", re.S)


def runnable(doc: Path) -> list[str]:
    return [code for skip, code in BLOCK.findall(doc.read_text()) if not skip]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent), prepend=":")
    return tmp_path


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(doc, workdir, capsys):
    namespace: dict = {"__name__": "__doc__"}
    for code in runnable(doc):
        exec(compile(code, str(doc), "exec"), namespace)
    if doc.name == "README.md":  # the API example prints typed results, and writes its own folder
        out = capsys.readouterr().out
        assert re.search(r"B_simple = [0-9.]+ \[[0-9.]+, [0-9.]+\] \(ok\)", out), out
        assert "np.float64" not in out and (workdir / "api-out" / "report.json").is_file()
        assert "batch sizes [32, 64] steps 300" in out  # the schedule loop ran every step, over epochs


def test_the_quick_start_command_runs(workdir):
    text = (ROOT / "README.md").read_text()
    line = re.search(r"```bash\n(pip install [^\n]*bsprof measure [^\n]*)\n```", text).group(1)
    command = line.split("&&")[-1].split()
    assert command[:2] == ["bsprof", "measure"]
    done = subprocess.run([sys.executable, "-m", "bsprof", *command[1:], "--no-figures"], cwd=workdir,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "B_simple at step" in done.stdout and (workdir / "bsprof-out" / "report.json").is_file()


def test_readme_framework_examples_are_the_tested_ones():
    """README blocks left out "because the same block runs in docs/integrations.md" must be exactly such a block."""
    doc_blocks = {code for _, code in BLOCK.findall((ROOT / "docs" / "integrations.md").read_text())}
    copies = [code for skip, code in BLOCK.findall((ROOT / "README.md").read_text())
              if skip and "docs/integrations.md" in skip]
    assert len(copies) == 2 and all(code in doc_blocks for code in copies)
