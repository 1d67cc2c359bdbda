"""Loading the user's spec file: model(), dataset(), loss(model, batch); optionally optimizer(params), collate(items).

Rules (README, "Your model: the spec file"): the file is imported with its folder on sys.path; the functions are
looked up by name.
Every user mistake becomes a SpecError that names the function, what was found, and what to do.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bsprof.errors import BsprofError, SpecError

REQUIRED = {
    "model": "def model(): return a fresh torch.nn.Module",
    "dataset": "def dataset(): return a map-style torch.utils.data.Dataset",
    "loss": "def loss(model, batch): return per-example losses of shape [batch_size]",
}
OPTIONAL = ("optimizer", "collate")


@dataclass(frozen=True)
class Spec:
    """The user's functions, found in one file."""

    path: Path | None
    sha256: str | None
    model: Callable[[], nn.Module]
    dataset: Callable[[], Any]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    optimizer: Callable | None = None
    collate: Callable | None = None
    tokens_per_example: int | None = None

    def info(self) -> dict:
        if self.path is None:
            return {"path": None, "sha256": None, "source": "python objects (bsprof.measure)"}
        return {"path": str(self.path), "sha256": self.sha256}

    @classmethod
    def of(cls, model: nn.Module, dataset, loss, optimizer=None, collate=None,
           tokens_per_example: int | None = None) -> Spec:
        """A spec from objects instead of a file (``bsprof.measure(model=…, …)``).

        The probe training trains a deep copy of ``model`` (the caller's model is never changed). ``optimizer`` is
        a factory ``params -> Optimizer``, or an optimizer instance whose class and defaults are re-created on
        the copy's parameters (its state is not copied: the probe starts from fresh optimizer state).
        """
        if not isinstance(model, nn.Module):
            raise SpecError(f"model must be a torch.nn.Module, got {type(model).__name__}",
                            "pass the model object itself (bsprof trains a copy)")
        if not callable(loss):
            raise SpecError(f"loss must be a function loss(model, batch) -> per-example losses, got "
                            f"{type(loss).__name__}", "pass e.g. lambda m, b: F.cross_entropy(m(b[0]), b[1], "
                            "reduction='none')")
        if isinstance(optimizer, torch.optim.Optimizer):
            kind, defaults = type(optimizer), dict(optimizer.defaults)
            optimizer = lambda params: kind(params, **defaults)  # noqa: E731
        elif optimizer is not None and not callable(optimizer):
            raise SpecError(f"optimizer must be a torch.optim.Optimizer or a function params -> Optimizer, got "
                            f"{type(optimizer).__name__}", "pass e.g. lambda p: torch.optim.SGD(p, lr=0.1)")
        dataset, collate = _as_dataset(dataset, collate)
        return cls(None, None, lambda: copy.deepcopy(model), lambda: dataset, loss, optimizer, collate,
                   tokens_per_example)


def _as_dataset(data, collate):
    """(a Dataset, its collate) from what ``bsprof.measure_at`` also takes: a tuple or list of tensors with equal
    dim 0 (rows of a TensorDataset), a DataLoader (its dataset, and its collate_fn unless one is given), a tensor
    (its rows), or a Dataset as it is."""
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(data, DataLoader):
        return data.dataset, collate or data.collate_fn
    if isinstance(data, torch.Tensor):
        from bsprof.engine.data import Rows
        return Rows(data), collate
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        if len({t.shape[0] if t.dim() else None for t in data}) != 1 or data[0].dim() == 0:
            raise SpecError(f"dataset is a {type(data).__name__} of tensors with different numbers of rows "
                            f"({', '.join(str(list(t.shape)) for t in data)})",
                            "pass tensors with one row per example each, e.g. (x, y) with len(x) == len(y)")
        return TensorDataset(*data), collate
    return data, collate


# import name -> what pip installs, where they differ (scikit-learn: the bundled digits examples, bsprof's
# `examples` extra; brackets are left out of hints, which the CLI prints as rich markup)
PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml"}


def _installed(top: str) -> bool:
    try:
        return sys.modules.get(top, 0) is not None and importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):  # a module blocked (None in sys.modules) or without a spec
        return False


def _install_hint(e: ImportError) -> str:
    """Install the package when its top-level module is missing; else (a missing name or submodule of an
    installed package) fix the import."""
    top = (e.name or "...").split(".")[0]
    if e.name and _installed(top):
        what = f"{e.name} is not a module of the installed {top}" if e.name != top and isinstance(
            e, ModuleNotFoundError) else f"{top} is installed; the name imported from it does not exist"
        return f"correct the import: {what}"
    return f"install the missing package (pip install {PIP_NAMES.get(top, top)}) or fix the import"



def _where(exc: BaseException, path: Path | None) -> str:
    """The innermost line of the user's file in a traceback, as 'file:line'."""
    if path is None:   # outside bsprof's own package (a clone in a folder named bsprof is still the user's)
        package = Path(__file__).resolve().parents[1]
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not Path(f.filename).resolve().is_relative_to(package)]
        return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path]
    return f"{path.name}:{frames[-1].lineno}" if frames else ""


def module_at(exc: BaseException, model: nn.Module | None) -> str:
    """The innermost submodule of ``model`` whose code raised ``exc``, as "layer 'name' (repr)" ("" if none):
    a spec built from nn.Sequential has no line of its own inside the forward pass."""
    if model is None:
        return ""
    names = {id(m): n for n, m in model.named_modules()}
    found, tb = "", exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and names.get(id(owner)):
            found = f"layer {names[id(owner)]!r} ({_short(owner)})"
        tb = tb.tb_next
    return found


def _short(mod: nn.Module) -> str:
    text = repr(mod) if not mod._modules else f"{type(mod).__name__}(…)"
    return text if len(text) <= 80 else text[:77] + "..."


def load_spec(path: str | Path) -> Spec:
    """Import the spec file and find its functions (see module docstring)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}",
                        "pass a Python file defining model(), dataset() and loss(model, batch); "
                        "see configs/ for examples")
    if path.suffix != ".py":
        raise SpecError(f"spec file {path.name} is not a .py file", "pass a Python file (e.g. model.py)")
    if not_spec(path):
        raise SpecError(f"{path.name} defines none of model(), dataset(), loss(model, batch) at its top level: it is "
                        "not a spec file (and importing it would run its top-level code, a training script's "
                        "training too)", "pass a spec file (configs/ has examples; README: 'Your model: the spec "
                        "file'); to follow the noise scale inside your training script, add the tracker "
                        "(docs/tracker.md)")
    module = _import(path)
    found = {name: getattr(module, name, None) for name in (*REQUIRED, *OPTIONAL)}
    problems = []
    for name, how in REQUIRED.items():
        if found[name] is None:
            close = difflib.get_close_matches(name, [n for n in vars(module) if not n.startswith("_")], n=1)
            problems.append(f"{name} is missing ({how})" + (f"; did you mean {close[0]!r}?" if close else ""))
        elif isinstance(found[name], nn.Module):
            problems.append(f"{name} is a {type(found[name]).__name__} object, not a function ({how}): "
                            f"write def {name}(): return ... so that every run gets a fresh one")
        elif not callable(found[name]):
            problems.append(f"{name} is a {type(found[name]).__name__}, not a function ({how})")
    for name in OPTIONAL:
        if found[name] is not None and not callable(found[name]):
            problems.append(f"{name} is a {type(found[name]).__name__}, not a function")
    problems += _misspelled(module, [n for n in (*OPTIONAL, "TOKENS_PER_EXAMPLE") if getattr(module, n, None) is None])
    problems += [p for name, fn in found.items() if fn is not None and callable(fn) and not isinstance(fn, nn.Module)
                 and (p := _arity(name, fn, path))]
    if problems:
        raise SpecError(f"{path.name}: " + "; ".join(problems),
                        "rename it as said" if all("rename" in p for p in problems) else
                        "define them at the top level of the spec file as bsprof calls them: model(), dataset(), "
                        "loss(model, batch), and optionally optimizer(params), collate(items)")
    tpe = getattr(module, "TOKENS_PER_EXAMPLE", None)
    if tpe is not None and (isinstance(tpe, bool) or not isinstance(tpe, (int, float)) or not tpe >= 1
                            or tpe != int(tpe)):
        near = f"TOKENS_PER_EXAMPLE = {max(1, round(tpe))}" if isinstance(tpe, (int, float)) and tpe == tpe else \
            "TOKENS_PER_EXAMPLE = N"
        raise SpecError(f"{path.name}: TOKENS_PER_EXAMPLE = {tpe!r} is not a whole number of tokens ≥ 1",
                        f"write {near} (for sequences of varying length, the mean number of tokens per example, "
                        "rounded: token counts are whole and a fraction would be cut)")
    return Spec(path, hashlib.sha256(path.read_bytes()).hexdigest(), found["model"], found["dataset"],
                found["loss"], found["optimizer"], found["collate"], int(tpe) if tpe else None)


def not_spec(path: Path) -> bool:
    """True when the file binds none of ``model``, ``dataset``, ``loss`` at its top level (a def, an assignment, an
    import), read without running it; False when it may (a ``from x import *``, or it does not parse: the import
    then says why)."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, OSError):
        return False
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" for a in node.names):
                return False
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):   # defined under a condition: cannot tell
            return False
        else:
            names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return not names & set(REQUIRED)


CALLS = {"model": (), "dataset": (), "loss": ("model", "batch"), "optimizer": ("params",), "collate": ("items",)}


def _arity(name: str, fn, path: Path) -> str | None:
    """Why ``fn`` cannot be called as bsprof calls it (``loss(model, batch)``), at its file and line; None if it can
    (or its signature cannot be read: a builtin, a C function)."""
    try:
        sig = inspect.signature(fn)
        sig.bind(*CALLS[name])
    except (TypeError, ValueError) as e:
        if isinstance(e, ValueError) or "signature" in str(e):
            return None
        code = getattr(fn, "__code__", None)
        where = (f" at line {code.co_firstlineno}" if code is not None and
                 Path(code.co_filename).resolve() == path else "")
        return f"{name}{sig}{where} cannot be called as {name}({', '.join(CALLS[name])}) ({e})"
    return None


def _misspelled(module, missing: list[str]) -> list[str]:
    """Optional names the spec seems to define under another spelling (``optimiser``, ``collate_fn``): bsprof would
    silently run without them (SGD at --lr instead of the spec's optimizer), so they are refused."""
    defined = [n for n, v in vars(module).items() if not n.startswith("_") and not isinstance(v, type(sys))]
    out = []
    for name in missing:
        close = difflib.get_close_matches(name, defined, n=1, cutoff=0.8)
        if close:
            out.append(f"{close[0]!r} is defined but {name!r} is not (bsprof looks for {name!r} only; without it "
                       + ("it trains with SGD at --lr" if name == "optimizer" else "it uses the default")
                       + f"): rename {close[0]!r} to {name!r}")
    return out


def _import(path: Path):
    name = f"bsprof_spec_{path.stem}"
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except SyntaxError as e:
        raise SpecError(f"syntax error in {path.name}:{e.lineno}: {e.msg}", "fix the Python syntax of the spec file")
    except ImportError as e:
        raise SpecError(f"{_where(e, path) or path.name} failed to import: {e}", _install_hint(e))
    except Exception as e:  # any error at import time is the user's code
        raise SpecError(f"{_where(e, path) or path.name} raised {type(e).__name__} on import: {e}",
                        "fix the spec file so that importing it runs without error")
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def call_user(spec: Spec, name: str, *args):
    """Call spec.<name>(*args), turning any exception into a SpecError that shows its message."""
    try:
        return getattr(spec, name)(*args)
    except BsprofError:  # the spec's own: its message and fix as written (configs/mnist_mlp.py's missing data)
        raise
    except ImportError as e:  # a lazy import inside the user's function, e.g. sklearn in configs/digits_mlp.py
        where = f" at {_where(e, spec.path) or (spec.path.name if spec.path else name + '()')}"
        raise SpecError(f"{name}(){where} failed to import: {e}", _install_hint(e))
    except Exception as e:
        where = _where(e, spec.path) or (spec.path.name if spec.path else "")
        where = f" at {where}" if where else ""
        raise SpecError(f"{name}(){where} raised {type(e).__name__}: {e}",
                        f"check the path {name}() reads (a relative one is looked up from the directory bsprof runs "
                        f"in, not the spec file's), or fix {name}() in the spec file"
                        if isinstance(e, FileNotFoundError) else f"fix {name}() in the spec file")


def build_model(spec: Spec) -> nn.Module:
    model = call_user(spec, "model")
    if not isinstance(model, nn.Module):
        raise SpecError(f"model() returned {type(model).__name__}, not a torch.nn.Module",
                        "return a fresh torch.nn.Module from model()")
    if not any(p.requires_grad for p in model.parameters()):
        raise SpecError("model() has no trainable parameters", "return a model with parameters that require grad")
    if not model.training:  # returned in eval mode (``from_pretrained`` does that): train mode, whole
        model.train()
    return model  # returned in train mode: the modes model() gave its submodules (a frozen backbone in eval) stay


def build_dataset(spec: Spec):
    data = call_user(spec, "dataset")
    if isinstance(data, torch.utils.data.IterableDataset):
        return data
    if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        raise SpecError(f"dataset() returned {type(data).__name__}, which has no __getitem__ and __len__",
                        "return a map-style torch.utils.data.Dataset (e.g. TensorDataset) or an IterableDataset")
    try:
        n = len(data)
    except Exception as e:
        raise SpecError(f"len(dataset()) raised {type(e).__name__}: {e}", "give the dataset a working __len__")
    if n < 2:
        raise SpecError(f"dataset() has {n} example(s); the noise scale needs at least 2",
                        "return a dataset with more examples")
    return data


def build_optimizer(spec: Spec, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if spec.optimizer is None:
        return torch.optim.SGD(model.parameters(), lr=lr)
    opt = call_user(spec, "optimizer", list(model.parameters()))  # a list: group-building code may iterate twice
    if not isinstance(opt, torch.optim.Optimizer):
        raise SpecError(f"optimizer(params) returned {type(opt).__name__}, not a torch.optim.Optimizer",
                        "return e.g. torch.optim.SGD(params, lr=0.1)")
    return opt
