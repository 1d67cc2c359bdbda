"""Per-example rule for ``nn.MultiheadAttention`` (and so ``nn.TransformerEncoderLayer``/``DecoderLayer``).

MultiheadAttention applies its weights functionally inside ``F.multi_head_attention_forward``: the packed
``in_proj_weight`` (or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when kdim/vdim differ), sliced by
``chunk``/``split``, and ``out_proj.weight`` through ``F.linear`` (``out_proj`` is never *called*, so its Linear
hook never fires). A hook on the module's input and output cannot see the projections, so:

How. While bsprof measures (the probe's forward pass; a Tracker's per-example source, from its construction to
``close``), the module's ``forward`` is an exact copy of ``MultiheadAttention.forward``, and of
``F.multi_head_attention_forward``, ``F._in_projection_packed`` and ``F._in_projection``: the same code objects
(torch's own bytecode, so the arithmetic is identical) run with a private globals dict in which ``linear``
records each call (input x, weight, output y) before returning torch's own ``F.linear`` result. Nothing global
is patched: ``install`` sets an instance attribute (a bound method, so a deepcopy of the model is bound to the
copy and runs torch's own forward), and ``remove`` deletes it once the last sink is removed (a probe and a
Tracker may record the same module at once, each with its own calls). Each recorded linear is a map W (or a row block of
``in_proj_weight``) applied at T positions, and a tensor hook on its output y receives δ = ∂Σℓ/∂y, so

    G_i = Σ_t δ_{i,t} x_{i,t}ᵀ           (per-example gradient of that weight or row block)
    b_i = Σ_t δ_{i,t}                    (its bias, or the bias's row block)

held as ``layers.Factored`` (|G_i|² in the cheaper of the explicit and Gram forms, as ``layers.linear``). The
packed weight's three row blocks (q, k, v; E rows each) are the groups of one Factored, their positions padded
with zeros to a common T (zero rows add nothing), so q, k, v of different lengths (cross-attention) are exact.
Inside ``F.multi_head_attention_forward`` the sequence is on dim 0 and the examples on dim 1 (batch_first inputs
are transposed first), and ``out_proj`` sees [T·B, E] with row t·B + b; the records are put back to [B, T, ·].

Not covered (the module goes to torch.func): ``add_bias_kv`` (bias_k/bias_v are concatenated after the
projection), a subclass that overrides ``forward``, and any call in which the recorded linears do not match the
parameters (a future torch that projects differently): then every parameter of the module falls back.
"""

from __future__ import annotations

import contextvars
import types
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bsprof.probes.handles import _SWAPPED, forget, remember
from bsprof.probes.layers import Factored, ModuleRule, factor_explicit

_RECORDS: contextvars.ContextVar[list | None] = contextvars.ContextVar("bsprof_mha_records", default=None)
_real_linear = F.linear


def _recording_linear(x, weight, bias=None):
    y = _real_linear(x, weight, bias)
    records = _RECORDS.get()
    if records is not None:
        records.append((x, weight, bias, y))
    return y


def _copy(fn, glb: dict):
    new = types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


def _build_forward():
    """MultiheadAttention.forward running torch's own code with ``linear`` recorded (see the module docstring)."""
    import torch.nn.modules.activation as activation

    glb = dict(vars(F))
    glb["linear"] = _recording_linear
    for name in ("multi_head_attention_forward", "_in_projection_packed", "_in_projection"):
        glb[name] = _copy(getattr(F, name), glb)
    proxy = types.SimpleNamespace(**vars(F))
    proxy.multi_head_attention_forward = glb["multi_head_attention_forward"]
    return _copy(nn.MultiheadAttention.forward, dict(vars(activation), F=proxy))


_FORWARD = _build_forward()


@dataclass
class MhaCall:
    """One recorded call: the tensors whose δ is needed (``sites``) and the per-example pieces built from them."""

    mod: nn.MultiheadAttention
    count: int
    sites: list = field(default_factory=list)  # (y, kind, name, first weight row, first bias row, x [B, T, n])
    groups: dict = field(default_factory=dict)  # row block j of in_proj_weight -> (δ [B, T, E], x [B, T, E])
    found: dict = field(default_factory=dict)

    def reset(self) -> None:
        """Forget the pieces taken (a retained graph's call seen by a second backward starts afresh)."""
        self.groups, self.found = {}, {}

    def take(self, site, d: Tensor) -> None:
        """δ for one site has arrived: keep its pieces (explicit biases are summed at once)."""
        _, kind, name, rows, brows, x = site
        d = self._examples_first(d)
        mod, E = self.mod, self.mod.embed_dim
        if kind == "in_proj" and d.shape[-1] == 3 * E:  # self-attention: one linear with the whole packed weight
            self.found[name] = Factored(d.unsqueeze(1), x.unsqueeze(1), 3 * E)
        elif kind == "in_proj":
            for j in range(d.shape[-1] // E):
                self.groups[rows // E + j] = (d[..., j * E:(j + 1) * E], x)
        else:
            self.found[name] = Factored(d.unsqueeze(1), x.unsqueeze(1), d.shape[-1])
        bias = "out_proj.bias" if kind == "out_proj" else "in_proj_bias"
        if _wanted(mod, bias):
            if kind == "out_proj":
                self.found[bias] = d.sum(1)
            else:
                b = self.found.get(bias)
                if b is None:   # the packed bias's rows, filled by the q/k/v projections' calls
                    b = self.found[bias] = d.new_zeros(self.count, 3 * E)
                b[:, brows:brows + d.shape[-1]] += d.sum(1)

    def explicit(self) -> list[tuple[str, str]]:
        """(weight, bias) names whose per-example gradients ``sq_sum`` will form explicitly
        (``layers.factor_explicit``), so that they can also give Σ_i g_i: out_proj, and the packed projection of
        self-attention (one linear)."""
        out = []
        for y, kind, name, _, _, x in self.sites:
            if kind == "out_proj" or kind == "in_proj" and y.shape[-1] == 3 * self.mod.embed_dim:
                m, n, T = y.shape[-1], x.shape[-1], x.shape[1]
                if factor_explicit(m, n, T, x[0].numel() + T * m):
                    out.append((name, "out_proj.bias" if kind == "out_proj" else "in_proj_bias"))
        return out

    def finish(self) -> dict:
        """{parameter name relative to the module: per-example piece}, once every site's δ has arrived."""
        if self.groups:
            E = self.mod.embed_dim
            T = max(u.shape[1] for u, _ in self.groups.values())
            zero = next(iter(self.groups.values()))[0].new_zeros(self.count, T, E)
            u, v = [], []
            for j in range(3):
                dj, xj = self.groups.get(j, (zero, zero))
                pad = (0, 0, 0, T - dj.shape[1])
                u.append(F.pad(dj, pad))
                v.append(F.pad(xj, pad))
            self.found["in_proj_weight"] = Factored(torch.stack(u, 1), torch.stack(v, 1), E)
        return self.found

    def _examples_first(self, t: Tensor) -> Tensor:
        """[T, B, n] or [T·B, n] (sequence first, as inside F.multi_head_attention_forward) → [B, T, n]."""
        if t.dim() == 2:
            t = t.view(-1, self.count, t.shape[-1])
        return t.transpose(0, 1)


def _wanted(mod: nn.Module, dotted: str) -> bool:
    try:
        return mod.get_parameter(dotted).requires_grad
    except AttributeError:  # registered as None (bias=False)
        return False


def _classify(mod: nn.MultiheadAttention, w: Tensor) -> tuple[str, str, int] | None:
    """(kind, parameter name, first row) of a recorded linear's weight; None if it is not one of the module's."""
    if w is mod.out_proj.weight:
        return "out_proj", "out_proj.weight", 0
    for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        if getattr(mod, name, None) is not None and w is getattr(mod, name):
            return "separate", name, 0
    packed = mod.in_proj_weight
    if packed is not None and (w is packed or w._base is packed):
        offset = w.storage_offset() - packed.storage_offset()
        if offset % packed.stride(0) == 0 and w.stride() == packed.stride():
            return "in_proj", "in_proj_weight", offset // packed.stride(0)
    return None


class MhaRule(ModuleRule):
    """The ``layers.RULES`` entry for ``nn.MultiheadAttention`` (a module rule: see ``layers.ModuleRule``)."""

    def names(self, mod: nn.Module) -> list[str] | None:
        """The parameter names (relative to ``mod``) this rule accounts for; None if it cannot measure ``mod``."""
        return None if self.reason(mod) else [n for n, _ in mod.named_parameters()]

    def reason(self, mod: nn.Module) -> str | None:
        """Why this rule cannot measure ``mod`` (None: it can), in a few words."""
        if not isinstance(mod, nn.MultiheadAttention):
            return "it is not an nn.MultiheadAttention"
        if type(mod).forward is not nn.MultiheadAttention.forward:
            return f"{type(mod).__name__} overrides MultiheadAttention.forward"
        if mod.bias_k is not None or mod.bias_v is not None:
            return "add_bias_kv=True (bias_k/bias_v are concatenated after the projections)"
        out = mod.out_proj
        if type(out).forward is not nn.Linear.forward or any(True for _ in out.children()):
            return "its out_proj is not a plain nn.Linear"
        return None

    def install(self, mod: nn.MultiheadAttention, sink) -> None:
        """Make ``mod`` run the recording copy and call ``sink(mod, call_or_reason, out)`` after each call.

        Several sinks may be installed on one module (a Tracker and a probe at once): each gets its own
        ``MhaCall`` from the one recording. ``mod.forward`` becomes a bound method of a module-level function, so
        a ``copy.deepcopy`` of the model (an EMA copy, a best-so-far snapshot) is bound to the copy, which is in no
        registry and runs torch's own forward; the model still pickles."""
        sinks = _SINKS.get(mod)
        if sinks is None:
            sinks = _SINKS[mod] = []
        sinks.append(sink)
        mod.forward = types.MethodType(_swapped_forward, mod)
        remember(mod, "forward")   # a deepcopy or pickle taken meanwhile leaves it out (``probes.handles``)

    def remove(self, mod: nn.MultiheadAttention, sink=None) -> None:
        """Undo ``install`` of ``sink`` (all sinks when None); the plain forward is back once none is left."""
        sinks = _SINKS.get(mod, [])
        sinks[:] = [] if sink is None else [s for s in sinks if s != sink]
        if not sinks:
            _SINKS.pop(mod, None)
            found = mod.__dict__.get("forward")
            if getattr(found, "__func__", None) is _swapped_forward:
                del mod.__dict__["forward"]
            forget(mod, "forward")


# module -> the sinks installed on it (weak keys: a dropped model leaves nothing behind)
_SINKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _swapped_forward(self, *args, **kwargs):
    """``mod.forward`` while a sink is installed: record the projections, hand each sink its own call."""
    sinks = _SINKS.get(self)
    if not sinks:  # a deepcopy of a swapped module: nobody measures it
        return nn.MultiheadAttention.forward(self, *args, **kwargs)
    records = []
    token = _RECORDS.set(records)
    try:
        out = _FORWARD(self, *args, **kwargs)
    finally:
        _RECORDS.reset(token)
    count = _batch_size(self, args, kwargs)
    for sink in list(sinks):
        sink(self, _call(self, records, count), out)
    return out


_swapped_forward.__name__ = _swapped_forward.__qualname__ = "forward"  # a pickled model loads with torch's forward
setattr(_swapped_forward, _SWAPPED, True)   # (``probes.handles``: copies of the module leave it out)


def _batch_size(mod, args, kwargs) -> int | None:
    q = args[0] if args else kwargs.get("query")
    if not isinstance(q, Tensor) or q.dim() != 3:
        return None  # unbatched input: the examples are not on a batch dim
    return q.shape[0] if mod.batch_first else q.shape[1]


def _call(mod, records, count) -> MhaCall | str:
    """The recorded call as an ``MhaCall``, or why it cannot be measured by this rule."""
    if count is None:
        return "unbatched input"
    call = MhaCall(mod, count)
    packed_bias = mod.in_proj_bias
    for x, w, b, y in records:
        kind = _classify(mod, w)
        if kind is None:
            return "a projection with an unexpected weight"
        brows = 0
        if b is not None and kind[0] != "out_proj":
            if packed_bias is None or not (b is packed_bias or b._base is packed_bias):
                return "a projection with an unexpected bias"
            brows = b.storage_offset() - packed_bias.storage_offset()
        if not y.requires_grad:
            continue
        call.sites.append((y, *kind, brows, call._examples_first(x.detach())))
    return call


MHA = MhaRule()
