"""Forward hooks bsprof puts on a user's modules, which a copy of the module does not carry.

A module's forward hooks live in its ``__dict__``, so ``copy.deepcopy(model)`` (an EMA copy, a best-so-far
snapshot) and ``torch.save(model)`` taken while a Tracker is open would carry bsprof's hooks into the copy, where
nothing removes them (a trial's finding: 10 hooks left on a deepcopy after ``close()``, each forward of the copy
slower, and a pickle that could not be loaded without bsprof). While a module holds such a hook, the instance gets
its own ``__getstate__`` (what deepcopy and pickle both read through ``object.__reduce_ex__``) that leaves
bsprof's hooks, and an attention module's swapped ``forward`` (``probes.attention``), out of the state; it goes
when the module's last bsprof hook is removed. The module and its class are otherwise untouched.
"""

from __future__ import annotations

import types
import weakref
from collections import OrderedDict

from torch import nn

_OURS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # module -> ids of bsprof's hooks on it
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")
_SWAPPED = "__bsprof_swapped__"   # a marker on the function ``probes.attention`` binds as ``mod.forward``


class Handle:
    """``RemovableHandle`` of a hook placed by ``forward_hook``; ``remove`` also forgets it for copies."""

    def __init__(self, mod: nn.Module, handle):
        self.handle, self.id, self._mod = handle, handle.id, weakref.ref(mod)

    def remove(self) -> None:
        self.handle.remove()
        mod = self._mod()
        if mod is not None:
            forget(mod, self.id)


def forward_hook(mod: nn.Module, hook, *, pre: bool = False, with_kwargs: bool = False) -> Handle:
    """``mod.register_forward_hook`` (``pre``: ``register_forward_pre_hook``), kept out of copies of ``mod``."""
    register = mod.register_forward_pre_hook if pre else mod.register_forward_hook
    handle = register(hook, with_kwargs=with_kwargs)
    remember(mod, handle.id)
    return Handle(mod, handle)


def remember(mod: nn.Module, key) -> None:
    """Mark ``key`` (a hook id, or any other token) as bsprof's on ``mod``: copies of ``mod`` leave it out."""
    cls = type(mod)
    if (cls.__getstate__ is not nn.Module.__getstate__ or cls.__reduce__ is not object.__reduce__
            or cls.__reduce_ex__ is not object.__reduce_ex__):
        return   # a class with its own state or reduce (fx's GraphModule pickles its __dict__): left as it is
    _OURS.setdefault(mod, set()).add(key)
    mod.__dict__["__getstate__"] = types.MethodType(_state, mod)


def forget(mod: nn.Module, key) -> None:
    """Undo ``remember``; the module's own ``__getstate__`` is back once none of bsprof's is left on it."""
    ours = _OURS.get(mod)
    if ours is None:
        return
    ours.discard(key)
    if not ours:
        del _OURS[mod]
        mod.__dict__.pop("__getstate__", None)


def _state(mod: nn.Module) -> dict:
    """The module's state (``nn.Module.__getstate__``) without bsprof's hooks, its swapped forward, or this."""
    state = nn.Module.__getstate__(mod)
    state.pop("__getstate__", None)
    if getattr(getattr(state.get("forward"), "__func__", None), _SWAPPED, False):
        del state["forward"]
    ours = _OURS.get(mod, set())
    for key in _HOOK_DICTS:
        hooks = state.get(key)
        if hooks and not ours.isdisjoint(hooks):
            state[key] = OrderedDict((k, v) for k, v in hooks.items() if k not in ours)
    return state
