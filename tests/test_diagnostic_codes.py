"""Every diagnostic code bsprof can emit has a row in docs/fields.md's table of diagnostic codes, and every row is a
code bsprof emits. The codes are read from the source with ``ast``: the first argument of each ``diagnose(...)``
call (a string, a conditional between strings, or a name bound to those or looping over a module-level table's
keys), and the ``"code"`` of any dict appended to a ``diagnostics`` list directly."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bsprof"
DOC = ROOT / "docs" / "fields.md"
ROW = re.compile(r"^\| `([a-z0-9_]+)` \|", re.M)


def _strings(node: ast.AST | None) -> list[str] | None:
    """The codes an expression can take: a string constant, or either branch of a conditional; None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _strings(node.body), _strings(node.orelse)
        return body + orelse if body is not None and orelse is not None else None
    return None


def _table_keys(node: ast.AST, tables: dict[str, ast.AST]) -> list[str] | None:
    """``TABLE``, ``TABLE.items()`` or ``TABLE.keys()`` of a module-level dict (its keys) or sequence of strings."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("items", "keys"):
        node = node.func.value
    value = tables.get(node.id) if isinstance(node, ast.Name) else None
    items = value.keys if isinstance(value, ast.Dict) else getattr(value, "elts", None)
    codes = [_strings(k) for k in items or []]
    return [c for cs in codes for c in cs] if items and all(cs is not None for cs in codes) else None


def _bound(name: str, scope: ast.AST, tables: dict[str, ast.AST]) -> list[str] | None:
    """The codes ``name`` is bound to in its function: ``name = <strings>``, or ``for name[, …] in TABLE…``."""
    found: list[str] = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            codes = _strings(node.value)
        elif isinstance(node, (ast.For, ast.comprehension)):
            target = node.target.elts[0] if isinstance(node.target, ast.Tuple) else node.target
            if not (isinstance(target, ast.Name) and target.id == name):
                continue
            codes = _table_keys(node.iter, tables)
        else:
            continue
        if codes is None:
            return None
        found += codes
    return found or None


@functools.lru_cache(maxsize=None)
def emitted_codes() -> tuple[dict[str, list[str]], list[str]]:
    """{code: ["file:line", …]} over the package, and the emitting places whose code could not be read."""
    codes: dict[str, list[str]] = {}
    unread: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ast.parse(path.read_text(), str(path))
        tables = {t.id: node.value for node in module.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                  for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
        parents = {child: parent for parent in ast.walk(module) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(module):
            if not isinstance(node, ast.Call):
                continue
            scope = node
            while not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
                scope = parents[scope]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "diagnose" and node.args:
                arg = node.args[0]
                found = _strings(arg) or (_bound(arg.id, scope, tables) if isinstance(arg, ast.Name) else None)
            elif name in ("append", "insert", "extend") and isinstance(func, ast.Attribute) and \
                    getattr(func.value, "attr", getattr(func.value, "id", None)) == "diagnostics":
                if getattr(scope, "name", None) == "diagnose":   # the mechanism itself: Report.diagnose
                    continue
                dicts = [a for a in ast.walk(node) if isinstance(a, ast.Dict)]
                found = [c for d in dicts for k, v in zip(d.keys, d.values)
                         if isinstance(k, ast.Constant) and k.value == "code" for c in (_strings(v) or [])] or None
            else:
                continue
            if found is None:
                unread.append(where)
            for code in found or []:
                codes.setdefault(code, []).append(where)
    return codes, unread


def documented_codes(text: str) -> set[str]:
    """The codes in the first column of the "Diagnostic codes" table of docs/fields.md."""
    section = text.split("## Diagnostic codes", 1)[1].split("\n## ", 1)[0] if "## Diagnostic codes" in text else ""
    return set(ROW.findall(section))


def test_every_emitted_code_is_documented():
    codes, _ = emitted_codes()
    missing = {code: where for code, where in sorted(codes.items()) if code not in documented_codes(DOC.read_text())}
    assert not missing, ("diagnostic codes without a row in docs/fields.md's 'Diagnostic codes' table (code | when it "
                         "fires | what to do): " + "; ".join(f"{c} ({', '.join(w)})" for c, w in missing.items()))


def test_every_documented_code_is_emitted():
    codes, _ = emitted_codes()
    stale = sorted(documented_codes(DOC.read_text()) - set(codes))
    assert not stale, f"docs/fields.md documents diagnostic codes that bsprof no longer emits: {', '.join(stale)}"


def test_every_emitting_place_is_read():
    """A code this test cannot read (not a literal, not a name bound to literals) would escape the check above."""
    codes, unread = emitted_codes()
    assert not unread, f"diagnose() calls whose code this test cannot read (use a string literal): {', '.join(unread)}"
    # the indirect ones: a conditional between literals (before_run) and a module-level table's keys (_degenerate)
    assert {"batchnorm_train", "batch_coupled", "batch_layout", "loss_mixes_examples", "zero_gradient",
            "zero_variance", "temperature", "skipped_steps"} <= set(codes)


def test_a_missing_row_is_caught():
    text = DOC.read_text()
    assert "zero_variance" in documented_codes(text)
    assert "zero_variance" not in documented_codes(re.sub(r"^\| `zero_variance` \|.*\n", "", text, flags=re.M))
