"""Packaging: the declared torch floor, py.typed, extras, lazy imports, and the README's test command is CI's."""

from __future__ import annotations

import inspect
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Every torch API the code needs unconditionally, the release that added it, how to see it in the installed torch,
# and a string that shows bsprof still uses it (so an entry goes when its use goes). Versions from the PyTorch
# release notes and docs ("New in version"); materialize_grads: pytorch/pytorch#97015, merged March 2023 → 2.1.
# Keep this table when adding a newer API: the declared floor must be at least the newest entry.
TORCH_APIS = [
    ("torch.func: functional_call, grad, grad_and_value, vmap", (2, 0),
     lambda: __import__("torch.func").func.vmap, "from torch.func import"),
    ("Module.register_forward_hook(..., with_kwargs=True)", (2, 0),
     lambda: "with_kwargs" in inspect.signature(nn.Module.register_forward_hook).parameters, "with_kwargs=True"),
    ("torch.autograd.grad(..., materialize_grads=True)", (2, 1),
     lambda: "materialize_grads" in inspect.signature(torch.autograd.grad).parameters, "materialize_grads=True"),
    ("torch.load(..., weights_only=True)", (1, 13),
     lambda: "weights_only" in inspect.signature(torch.load).parameters, "weights_only=True"),
    ("torch.linalg.vector_norm", (1, 11), lambda: torch.linalg.vector_norm, "torch.linalg.vector_norm("),
    ("torch.cuda.OutOfMemoryError", (1, 13), lambda: torch.cuda.OutOfMemoryError, "torch.cuda.OutOfMemoryError"),
]
# Newer APIs used only where torch has them (the code degrades without them): name -> release.
TORCH_OPTIONAL = {"nn.RMSNorm": (2, 4)}  # probes/layers.py registers its rule only if hasattr(nn, "RMSNorm")


def _source() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "bsprof").rglob("*.py"))


def _declared_floor(package: str) -> tuple[int, ...]:
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(rf"{package}\s*>=\s*([\d.]+)", dep.strip())
        if m:
            return tuple(int(x) for x in m.group(1).split("."))
    raise AssertionError(f"no '{package}>=X' in pyproject's dependencies")


def test_declared_torch_floor_covers_every_api_the_code_needs():
    floor = _declared_floor("torch")
    source = _source()
    for what, version, present, marker in TORCH_APIS:
        assert floor >= version, f"{what} needs torch {version}, pyproject declares torch>={floor}"
        assert present(), f"{what}: not in the installed torch {torch.__version__}"
        assert marker in source, f"{what}: no longer used ({marker!r} not in bsprof/); drop it from the table"
    newest = max(v for _, v, _, _ in TORCH_APIS)
    assert floor == newest, f"declared torch>={floor}, but the newest API needed is {newest}: declare that"


def test_optional_torch_apis_are_guarded():
    """Without nn.RMSNorm (torch < 2.4) the probes still import, and the rule table simply lacks it."""
    code = ("import torch.nn as nn; del nn.RMSNorm\n"
            "from bsprof.probes import layers\n"
            "print(len(layers.RULES))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    from bsprof.probes import layers

    assert int(out.stdout) == len(layers.RULES) - 1 and nn.RMSNorm in layers.RULES
    assert set(TORCH_OPTIONAL) == {"nn.RMSNorm"}  # a new optional API gets its own guard test here


def test_py_typed_is_shipped():
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["bsprof"]
    assert (ROOT / "bsprof" / "py.typed").is_file()


def test_extras():
    extras = PYPROJECT["project"]["optional-dependencies"]
    deps = " ".join(PYPROJECT["project"]["dependencies"])
    assert "matplotlib" not in deps and "scikit-learn" not in deps  # extras, not requirements
    assert any(d.startswith("matplotlib") for d in extras["figures"])
    assert any(d.startswith("scikit-learn") for d in extras["examples"])
    for name in ("all", "test"):  # the test suite needs both: figures are written, digits are loaded
        assert any(d.replace(" ", "") == "bsprof[figures,examples]" for d in extras[name]), extras[name]


HEAVY = ("torch", "pandas", "scipy", "matplotlib", "sklearn")


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if '.' not in m)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_bsprof_is_light():
    loaded = _modules_after("import bsprof; bsprof.__version__")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_help_is_light():
    loaded = _modules_after("import runpy, sys\nsys.argv = ['bsprof', '--help']\n"
                            "try:\n    runpy.run_module('bsprof', run_name='__main__')\nexcept SystemExit:\n    pass")
    assert "typer" in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)


def test_public_names_resolve_lazily():
    import bsprof

    for name in bsprof.__all__:
        assert getattr(bsprof, name) is not None
    assert bsprof.measure.__module__ == "bsprof.api"
    with pytest.raises(AttributeError):
        bsprof.not_a_name  # noqa: B018


def test_report_is_written_without_matplotlib(tmp_path, monkeypatch, caplog):
    from bsprof.output.report import Report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    row = {"step": 0, "loss": 1.0, "g2": 1.0, "trace_sigma": 26.0, "b_simple": 26.0, "b_simple_lo": 25.0,
           "b_simple_hi": 27.0, "status": "ok", "n_draws": 5, "examples": 640, "stopped_by": "precision"}
    with caplog.at_level(logging.WARNING, logger="bsprof"):
        paths = Report(measurements=[row]).write(tmp_path)
    assert "figure" not in paths and not (tmp_path / "noise_scale.png").exists()
    assert (tmp_path / "report.json").is_file() and (tmp_path / "measurements.csv").is_file()
    assert [r.getMessage() for r in caplog.records] == [
        "note: noise_scale.png not written: matplotlib is not installed (pip install matplotlib)"]


def test_example_without_scikit_learn_is_a_clear_spec_error(monkeypatch):
    from bsprof.engine.spec import build_dataset, load_spec
    from bsprof.errors import SpecError

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    spec = load_spec(ROOT / "configs" / "digits_mlp.py")
    with pytest.raises(SpecError) as info:
        build_dataset(spec)
    assert "dataset() at digits_mlp.py" in info.value.message and "failed to import" in info.value.message
    assert "pip install scikit-learn" in info.value.hint


def test_readme_test_command_is_what_ci_runs():
    """The README's test command, verbatim, is the command .ci/run runs (after making its fresh venv)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Install and run the tests:\s*```bash\n(.+?)\n```", readme, re.S)
    assert block, "README: no 'Install and run the tests:' block"
    command = block.group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci, f"{command!r} is not in .ci/run"
    assert "torch==2.13.0" in command  # the CPU wheel CI tests


@pytest.mark.parametrize("line, hint", [
    ("from torch import nonexistent_name", "correct the import: torch is installed"),
    ("import torch.nonexistent_module", "torch.nonexistent_module is not a module of the installed torch"),
    ("import nonexistent_package_xyz", "pip install nonexistent_package_xyz"),
])
def test_an_import_error_in_a_spec_advises_install_only_when_the_package_is_missing(tmp_path, line, hint):
    from bsprof.engine.spec import load_spec
    from bsprof.errors import SpecError

    spec = tmp_path / "spec.py"
    spec.write_text(line + "\ndef model(): pass\ndef dataset(): pass\ndef loss(model, batch): pass\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert hint in info.value.hint, info.value.hint
    assert ("pip install" in info.value.hint) == ("pip install" in hint)
