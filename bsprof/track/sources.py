"""Where a training step's nested pair comes from: hooks inside the user's own backward passes.

Every number is taken while autograd computes the gradients, so whatever the user does to ``.grad`` after the
backward pass (clipping, ``GradScaler.unscale_``, ``zero_grad``) does not change it.

``StepHooks`` (every source). A tensor hook on each trainable parameter p sees u·g_p, the gradient of the
backward's loss that is about to be added into ``p.grad`` (u: the constant the user multiplied the mean loss by:
1/k for ``(loss / k).backward()``, the AMP loss scale, …), and adds |u·g_p|² to the step's sum. At the end of
each backward pass (an autograd final callback) it counts the pass and takes |p.grad|², the running sum; that
read is queued from the final callback, so it runs after DDP's own final callback has written the all-reduced
gradient into ``.grad``. With k backward passes on micro-batches of b examples each, per process:

    Σ_k Σ_p |u·g_p^(k)|² = u²·Σ_k |G_b^(k)|²,        |p.grad|² summed over p = u²·k²·|G_B|²   (B = k·b)

(under DDP, .grad holds the mean over the W ranks, so B = W·k·b). ``Tracker`` divides the scale back out.

``PerExample``. Forward hooks on the layers bsprof has per-example rules for (``bsprof.probes.layers``) save each
call's input and hook its output; in an armed backward each output hook receives δ = ∂L/∂output with
L = u·(1/n)Σ_i ℓ_i the user's MEAN loss over n examples, so δ_i = (u/n)·∂ℓ_i/∂output_i and the rule returns
(u/n)·g_i. Hence Σ_i |g_i|² = (n/u)²·Σ_i |rule_i|². (A summed loss would make this wrong by n²: the loss must
be the mean over the batch, as for every estimator in bsprof.) Tied weights and layers called twice get their
cross terms (``layers.total_sq_sum``); a call whose output never gets a δ (unused, or its graph dropped without a
backward) adds zero. Parameters outside known layers make the source unavailable.

``nn.MultiheadAttention`` (so ``nn.TransformerEncoderLayer``/``DecoderLayer``) applies its weights inside its own
forward, so its rule (``probes.attention``) swaps the module's forward, from ``install`` (the Tracker's
construction) to ``remove`` (``Tracker.close``, or the source dropped after a failure), for a copy that runs
torch's own code objects (bit-identical outputs and gradients) and records each projection's input; the hooks on
the projections' outputs live on the autograd graph, so nothing outlives a step whether or not a per-example
backward follows. Not covered, with a one-line ``problem``: ``add_bias_kv``, a subclass overriding ``forward``,
an ``out_proj`` that is not a plain Linear, and a Transformer layer with ``batch_first=False`` (its Linear and
LayerNorm layers see the sequence on dim 0); a bare ``nn.MultiheadAttention`` with ``batch_first=False`` is fine.

``FsdpHooks``. The same two numbers under FSDP2: tensor hooks on the unsharded parameters (before the
reduce-scatter) and the squared norms of the local gradient shards (after it), summed over ranks by the Tracker.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bsprof.probes.attention import MHA
from bsprof.probes.base import batch_coupled, coupled_reason
from bsprof.probes.handles import forward_hook
from bsprof.probes.hooks import (
    _autocast_on,
    _consumers,
    _graph_uses,
    _Undo,
    _wide,
    broadcast_add,
    per_example_broadcast,
)
from bsprof.probes.hooks import _rows as _first_rows
from bsprof.probes.layers import (
    ModuleRule,
    Scratch,
    embedding,
    hf_conv1d,
    layer_norm,
    layer_norm_saved,
    linear,
    rule_for,
    sq_sum,
    total_sq_sum,
)
from bsprof.probes.microbatch import _HALF, _host, _norms, _sq


def _queue_callback(fn) -> None:
    """Run ``fn`` when the current backward pass ends (what DDP's reducer does)."""
    torch.autograd.Variable._execution_engine.queue_callback(fn)


def grad_sq(grads: list[Tensor]) -> Tensor:
    """Σ_p |grad_p|² as a float64 0-d tensor: one fused norm for dense gradients, float32 at least."""
    total = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else "cpu")
    half = (torch.float16, torch.bfloat16)
    for group, dtype in (([g for g in grads if not g.is_sparse and g.dtype in half], torch.float32),
                         ([g for g in grads if not g.is_sparse and g.dtype not in half], None)):
        if group:
            total = total + torch.stack(torch._foreach_norm(group, dtype=dtype)).double().square().sum()
    for g in grads:
        if g.is_sparse:
            total = total + _sq(g).double()
    return total


def _host_sq(v: Tensor, g: Tensor) -> float:
    """The CPU square ``v`` = |g|² as a float; past float32's range (|g| > 1.8e19: the gradients of a loss scaled
    by a GradScaler whose scale kept growing, as under bf16 or fp32 where nothing overflows) taken in float64."""
    x = v.item()
    if x == math.inf and g.dtype != torch.float64 and bool(torch.isfinite(g).all()):
        f = g.to_dense().reshape(-1).double() if g.is_sparse else g.reshape(-1).double()
        x = float(torch.dot(f, f))
    return x


def _pre_sq(g: Tensor, weight: Tensor) -> Tensor:
    """Σ_j P_j g_j² = |√P ⊙ g|² (the preconditioned squared norm, elementwise weights P)."""
    f = g.to_dense().reshape(-1) if g.is_sparse else g.reshape(-1)
    f = f.float() if f.dtype in (torch.float16, torch.bfloat16) else f
    return torch.dot(f * weight.reshape(-1).to(f.dtype), f)


@dataclass
class Backwards:
    """What the backward passes since the last step saw (raw: the user's loss scale u still in). On an accelerator
    the numbers stay on the device as 0-d tensors until ``totals()`` reads them all in one transfer: no host-device
    sync inside the user's backward; on the CPU the hooks' squares are floats already (``StepHooks``)."""

    count: int = 0                                     # k, backward passes
    small: list = field(default_factory=list)          # |u·g_p|² per parameter and pass (CPU: floats)
    big: Tensor | float | None = None                  # Σ_p |p.grad|² after the step's last pass (CPU: a float;
    #                                                    FSDP: this rank's)
    big_norms: list[Tensor] | None = None              # or |p.grad| per parameter, summed at ``totals``
    synced: bool = True                                # the latest pass all-reduced (not under DDP's no_sync)
    small_pre: list = field(default_factory=list)      # P·(u·g_p)² per parameter and pass (B_pre; CPU: floats)
    big_pre: Tensor | None = None
    per_example: list[tuple[list[Tensor], int]] = field(default_factory=list)  # ([parts of Σ_i |rule_i|²], n)
    failure: str | None = None                         # what went wrong inside a hook (raised at the step)
    per_example_failure: str | None = None             # why an armed pass's per-example norms are unusable
    stale: Tensor | bool = False                       # .grad held a gradient when the step's first pass began
    watch_sum: Tensor | None = None                    # Σ of the watched parameter's incoming gradients so far
    changed: bool = False                              # its .grad was not that sum when a later pass reached it
    big_is_small: bool = False                         # one pass, one process: |G_B|² = Σ_p |u·g_p|² of its hooks

    def totals(self) -> dict:
        """Floats, read in one device-to-host transfer: ``small`` = Σ over passes, ``big``, ``small_pre``,
        ``big_pre`` (NaN when absent), ``stale`` (bool) and ``per_example`` (list of (float, n) per armed pass). The
        0-d tensors are read as they are and summed on the host in float64."""
        norms = self.big_norms or []
        stale = self.stale if torch.is_tensor(self.stale) else None
        tail = [x for x in (self.big, self.big_pre, stale) if x is not None]
        tail += [s for parts, _ in self.per_example for s in parts]
        host = _host([*self.small, *norms, *self.small_pre, *tail])
        n1, n2, n3 = len(self.small), len(norms), len(self.small_pre)
        rest = iter(host[n1 + n2 + n3:])
        big, big_pre = (next(rest) if x is not None else math.nan for x in (self.big, self.big_pre))
        stale_value = next(rest) > 0 if stale is not None else bool(self.stale)
        return {"small": math.fsum(host[:n1]) if n1 else math.nan,
                "big": math.fsum(v * v for v in host[n1:n1 + n2]) if self.big_norms is not None else big,
                "small_pre": math.fsum(host[n1 + n2:n1 + n2 + n3]) if n3 else math.nan,
                "big_pre": big_pre, "stale": stale_value,
                **({"big": math.fsum(host[:n1]), "big_pre": math.fsum(host[n1 + n2:n1 + n2 + n3]) if n3 else math.nan}
                   if self.big_is_small and self.big_norms is None else {}),
                "per_example": [(math.fsum(next(rest) for _ in parts), n) for parts, n in self.per_example]}


def _sum(xs: list[Tensor]) -> Tensor | None:
    """Σ of 0-d tensors on the first one's device (None for none), without leaving the device."""
    if not xs:
        return None
    try:
        return torch.stack(xs).sum(dtype=torch.float64)
    except RuntimeError:  # parameters on several devices
        return torch.stack([x.to(xs[0].device, torch.float64) for x in xs]).sum()


def _stale(params: list[Tensor]) -> Tensor | bool:
    """A nonzero ``.grad`` when a step's first backward begins: the last step's gradients were not zeroed, so
    |G_B|² read from ``.grad`` would include them. (The first hook fires before any gradient of this pass is
    accumulated; one tensor is looked at, and the answer stays on the device until ``Backwards.totals``.)"""
    g = next((p.grad for p in params if p.grad is not None), None)
    if g is not None and g.is_sparse:  # an Embedding(sparse=True) zeroed with set_to_none=False
        g = g.coalesce().values()
    if g is None:
        return False
    nonzero = g.detach().ne(0).any()
    return nonzero.item() if nonzero.is_cpu else nonzero


WATCH_FIRST, WATCH_EVERY = 8, 16  # steps whose .grad is watched between passes (``StepHooks``)


class StepHooks:
    """Tensor hooks on the parameters plus end-of-backward callbacks; ``take()`` hands over one step's numbers.

    ``weights``: a function returning elementwise preconditioner weights P per parameter (or None), called once
    per step at the first backward; with it, the |√P ⊙ ·|² norms are taken too (one extra multiply per element).
    ``ddp``: the DistributedDataParallel wrapper, whose ``require_backward_grad_sync`` tells a no_sync pass.
    ``per_example``: a ``PerExample`` whose armed passes are collected at each backward's end.
    ``every``: the declared backward passes per step, k: |p.grad|² is read after every k-th pass only (one pass
    over the gradients per step); None reads it after each pass (the step's count is not known in advance) but
    the first: in one process (no DDP, no FSDP) a step's first pass wrote .grad = u·g_p, whose squared norms the
    hooks took while g_p was fresh in cache (a read of .grad is another pass over memory). A second pass reads
    the running sum, as usual; the ``stale`` check guards the assumption that .grad started empty.

    In one process (no DDP, no FSDP) one parameter, the smallest, is watched: each pass compares its ``.grad``,
    before the pass adds to it, with the sum of the gradients the hooks saw (``torch.equal``, a tolerant compare
    only on a mismatch), so clipping or ``zero_grad()`` between the micro-steps, which would make |G_B|² read from
    ``.grad`` differ from the sum of the micro-batches the small norms were taken of, is an error at the step. A
    loop does that at every step, so the watch runs on the first ``WATCH_FIRST`` steps and every ``WATCH_EVERY``-th
    after (≈ 6 µs a pass on the CPU, 1.5% of a step of the tiny benchmark model when it ran on every step).

    Per parameter and pass the hook costs one dot product, appended to the step's list; on an accelerator the
    sum is formed by ``Backwards.totals`` at the step, the one read back to the host; on the CPU each square is
    read in its hook (``.item()``, no sync there), since 0-d tensors held to the step's end make glibc trim and
    regrow its heap at every backward (docs/speed.md, "Page faults").
    """

    def __init__(self, params: list[Tensor], ddp=None, weights=None, per_example: PerExample | None = None,
                 every: int | None = None):
        self.params, self.ddp, self.weights_fn, self.per_example = params, ddp, weights, per_example
        self.every = every
        self.first_from_hooks = ddp is None and every in (None, 1) and type(self) is StepHooks
        self.watch = (min(range(len(params)), key=lambda i: params[i].numel())
                      if ddp is None and type(self) is StepHooks and params else -1)
        self.taken = 0  # steps taken: the watch runs on the first WATCH_FIRST and every WATCH_EVERY-th after
        self.record = Backwards()
        self.lock = threading.Lock()
        self.in_backward = False
        self.take_small, self.watching = True, False  # per pass (``_first``)
        self.weights: list[Tensor] | None = None
        self.handles = self._register()

    def _register(self) -> list:
        return [p.register_hook(partial(self._hook, i)) for i, p in enumerate(self.params)]

    def _first(self) -> None:
        """The first hook of a backward pass (under the lock): queue its end, note a stale ``.grad``."""
        self.in_backward = True
        _queue_callback(self._end)
        # decided once per pass (an armed pass uses its per-example norms; in one process its hooks' norms are |G_B|²)
        self.take_small = self.first_from_hooks or self.per_example is None or not self.per_example.armed
        self.watching = self.taken < WATCH_FIRST or self.taken % WATCH_EVERY == 0
        if self.record.count == 0:
            self.record.stale = _stale(self.params)
            if self.weights_fn is not None:
                self.weights = self.weights_fn()

    def _hook(self, i: int, g: Tensor) -> None:
        try:
            if not self.in_backward:
                with self.lock:
                    if not self.in_backward:
                        self._first()
            if self.take_small:
                if g.is_sparse or g.dtype in _HALF:
                    v = _sq(g)
                else:  # _sq inlined: one Python call per parameter and pass
                    f = g if g.dim() == 1 else g.reshape(-1)
                    v = torch.dot(f, f)
                if v.is_cpu:  # a float now (``_Norms``); past float32's range in float64 (``_host_sq``)
                    x = v.item()
                    self.record.small.append(x if x != math.inf else _host_sq(v, g))
                else:
                    self.record.small.append(v)
            if self.weights is not None:
                v = _pre_sq(g, self.weights[i])
                self.record.small_pre.append(v.item() if v.is_cpu else v)
            if i == self.watch and self.watching:
                self._check_unchanged(self.params[i].grad, g)
        except Exception as e:  # never break the user's backward: report it at the step
            self.record.failure = f"{type(e).__name__}: {e}"

    def _check_unchanged(self, grad: Tensor | None, g: Tensor) -> None:
        """The watched parameter's ``.grad`` (before this pass adds ``g``) against the sum of its earlier passes'
        incoming gradients; then add ``g`` to that sum. The engine accumulates by the same in-place add, so an
        untouched ``.grad`` is equal to the bit; a NaN or a reordered sum falls to a tolerant compare."""
        record, ref = self.record, self.record.watch_sum
        if g.is_sparse or (grad is not None and grad.is_sparse):
            return
        if ref is None:  # the first pass that reaches it (.grad empty or zeros: ``stale`` checks that)
            record.watch_sum = g.detach().clone()
            return
        if grad is None or not torch.equal(grad, ref):
            record.changed = record.changed or grad is None or not torch.allclose(grad, ref, rtol=1e-4, atol=0,
                                                                                   equal_nan=True)
        ref.add_(g)

    def _end(self) -> None:
        with self.lock:
            self.in_backward = False
            record = self.record
            record.count += 1
            record.synced = getattr(self.ddp, "require_backward_grad_sync", True)
        if self.per_example is not None:
            self.per_example.end_backward(record)
        if self.first_from_hooks and record.count == 1:
            record.big_is_small = True  # |G_B|² = the hooks' Σ_p |u·g_p|² of this one pass, unless another follows
        elif self.every is None or record.count % self.every == 0:
            _queue_callback(self._read_grads)  # after DDP's finalize, which was queued before this callback ran

    def _read_grads(self) -> None:
        try:
            grads = [p.grad for p in self.params if p.grad is not None]
            if all(g.is_cpu for g in grads):  # floats now, as the hooks' squares (a dot product per gradient)
                self.record.big = math.fsum(_host_sq(_sq(g), g) for g in grads)
                self.record.big_is_small = False
            else:
                self.record.big_norms = _norms(grads)
            if self.weights is not None:
                self.record.big_pre = _sum([_pre_sq(p.grad, w) for p, w in zip(self.params, self.weights)
                                            if p.grad is not None])
        except Exception as e:
            self.record.failure = f"{type(e).__name__}: {e}"

    def take(self) -> Backwards:
        """This step's record; the next backward starts a new one."""
        with self.lock:
            record, self.record, self.weights = self.record, Backwards(), None
            self.taken += 1
        return record

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class PerExample:
    """Per-example squared norms inside the user's backward (b = 1); see the module docstring for the scaling.

    ``problem`` says why the source is unavailable for this model (None: available), in one line that names the
    module where it can: BatchNorm in train mode, an ``nn.MultiheadAttention`` the attention rule does not cover
    (``attention.MhaRule.reason``), a Transformer layer with ``batch_first=False``, or trainable parameters outside
    the layers with rules. ``install`` registers forward hooks and swaps each ``nn.MultiheadAttention``'s forward
    for the recording copy (``probes.attention``; the module's parameters, ``out_proj``'s included, are its
    slots); ``remove`` undoes both. The output hooks they add do work only while ``armed`` (inside
    ``Tracker.per_example()``); the batch size n is read from the calls whose δ arrives.
    """

    def __init__(self, model: nn.Module, names: list[str], params: list[Tensor]):
        self.params, self.armed = params, False
        index = {id(p): k for k, p in enumerate(params)}
        self.owned, covered, claimed, refused = {}, set(), set(), []
        for path, mod in model.named_modules():
            direct = [(n, index[id(p)]) for n, p in mod.named_parameters(recurse=False)
                      if id(p) in index and index[id(p)] not in claimed]
            rule = rule_for(mod) if direct else None
            if isinstance(rule, ModuleRule):  # attention: accounts for its children's parameters (out_proj) too
                slots = [(n, index[id(p)]) for n, p in mod.named_parameters() if id(p) in index]
                self.owned[mod] = (rule, slots)
                claimed |= {k for _, k in slots}
                covered |= {k for _, k in slots}
            elif rule is not None:
                self.owned[mod] = (rule, direct)
                covered |= {k for _, k in direct}
            elif direct and isinstance(mod, nn.MultiheadAttention):
                refused.append(f"{path or 'the model'} ({type(mod).__name__}) has no per-example rule: "
                               f"{MHA.reason(mod)}")
            if isinstance(mod, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) and not getattr(
                    getattr(mod, "self_attn", None), "batch_first", True):
                refused.append(f"{path or 'the model'} ({type(mod).__name__}) has batch_first=False: its Linear "
                               f"and LayerNorm layers see the sequence on dim 0, not the examples (make it with "
                               f"batch_first=True)")
        # parameters outside the layers with rules: fine while the loss does not reach them (checked per backward)
        self.uncovered, self.names = [k for k in range(len(params)) if k not in covered], names
        # recurrent layers among them: their forward uses every weight, so a backward through them always fails
        self.recurrent = [f"{path} ({type(mod).__name__})" for path, mod in model.named_modules()
                          if isinstance(mod, nn.RNNBase) and any(index.get(id(p)) in self.uncovered
                                                                 for p in mod.parameters())]
        self.covered = sorted(covered)
        coupled = batch_coupled(model)
        coupled = coupled_reason(coupled) if coupled else None
        self.norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]  # train mode checked at each forward
        self.problem = coupled or (refused[0] if refused else None)
        if self.problem:
            self.problem += ": use accumulation (micro-batches) instead"
        self.expected: Counter = Counter()  # forward calls per parameter since the last backward
        self.rows: set[int] = set()
        self.pending, self.parts = defaultdict(list), []
        self.scratch = Scratch()  # the explicit per-example gradients of one backward, layer after layer
        self.open: dict[int, list] = {}    # attention calls whose sites are arriving in this backward
        self.failure: str | None = None
        self.shared_positions = False      # an Embedding saw one row (positions broadcast over the batch?)
        self.inputs: set[int] = set()      # dim 0 of the model's first input, per forward since the last backward
        self.batch: int | None = None      # dim 0 of the model's first input in the forward running now
        self.bare: set[int] = set()        # uncovered parameters added by broadcast whose δ came in this backward
        self.shared: list = []             # embeddings called on positions shared by the batch, this forward
        self.double = False                # hooks ran in a create_graph pass since the last armed backward
        self.layout: str | None = None     # "" once ``check_layout`` found the layers batch-first, else why not
        self.square_mods: set = set()      # hooked layers fed [N, N, …] (N examples or positions?) before that
        self.last_input = None             # the model's latest (args, kwargs) with grad, until ``check_layout``
        self.taken: Counter = Counter()    # per-example pieces taken per parameter in this backward
        self.model = model
        self.handles = []
        self.functional: list[str] = []  # hooked parameters also used outside their layers (``_used_outside``)
        self.forwards = 0                 # forwards with grad since the tracker was made (when to walk the graph)

    def install(self) -> None:
        """Forward hooks on the owned layers; an attention module's forward is swapped for the recording copy
        (``probes.attention``), from here until ``remove`` (``Tracker.close``, or the source dropped)."""
        if self.handles or self.problem is not None:
            return
        self.handles.append(forward_hook(self.model, self._model_input, pre=True, with_kwargs=True))
        self.handles.append(forward_hook(self.model, self._model_output, with_kwargs=True))
        for m, (rule, _) in self.owned.items():
            if isinstance(rule, ModuleRule):
                rule.install(m, self._module_call)
                self.handles.append(_Undo(rule, m, self._module_call))
            else:
                self.handles.append(forward_hook(m, self._forward, with_kwargs=True))

    def _model_input(self, mod, args, kwargs) -> None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        self.batch = x.shape[0] if isinstance(x, Tensor) and x.dim() > 0 else None
        if self.batch is not None and torch.is_grad_enabled():
            self.inputs.add(x.shape[0])
            if self.layout is None:
                self.last_input = (args, kwargs)  # for ``check_layout``, until it has run
        if torch.is_grad_enabled():
            self.double = False  # only a create_graph pass after the step's forward matters (not a reference's)
        if self.norms and torch.is_grad_enabled() and any(m.training for m in self.norms):
            # made in eval mode (a from_pretrained model), trained after model.train(): batch statistics now
            self.failure = coupled_reason(batch_coupled(self.model)) + " (in eval mode when the tracker was made)"

    def _forward(self, mod, args, kwargs, out) -> None:
        if not (isinstance(out, Tensor) and out.requires_grad and torch.is_grad_enabled()):
            return
        x = args[0] if args else next(iter(kwargs.values()), None)
        rule, slots = self.owned[mod]
        if not isinstance(x, Tensor) or x.dim() == 0 or out.dim() == 0 or x.shape[0] != out.shape[0]:
            self.failure = f"{type(mod).__name__} does not keep the examples on dim 0"
            return
        self.expected.update(k for _, k in slots)
        if self.layout is None and x.dim() >= (2 if rule is embedding else 3) and x.shape[0] == x.shape[1]:
            self.square_mods.add(mod)  # [T, B, …] or [B, T, …] with T = B: told apart once, by ``check_layout``
        if rule is embedding and (x.dim() == 1 or x.dim() == 2 and x.shape[0] == 1 and (self.batch or 1) > 1):
            self.shared.append((mod, slots, x.detach(), out))  # positions shared by the batch: ``_model_output``
            return
        rows = (rule is linear or rule is hf_conv1d) and x.dim() == 2  # one position per example
        if rows and out.grad_fn is not None and not out._is_view():  # the node's pre-hook: no Python handle to make
            out.grad_fn.register_prehook(partial(self._rows_pre, rule, mod, slots, x.detach()))
            return
        if rule is layer_norm:
            rule = layer_norm_saved(out)
        out.register_hook(partial(self._rows if rows else self._backward, rule, mod, slots, x.detach()))

    def _model_output(self, mod, args, kwargs, output) -> None:
        """After the model's forward: the per-example δ of each embedding called on positions shared by the batch
        (``pos(arange(T))``, [T] or [1, T]), as ``bsprof measure``'s probe takes it (``hooks._Pass.
        broadcast_embeddings``): its output is added by broadcast to a batched [B, T, d] tensor, whose δ_i is
        example i's, read by a pre-hook on that add's node; the indices are the same for every example. Found by
        one walk of the model's graph; anything else (another consumer) leaves the backward unmeasured."""
        shared, self.shared = self.shared, []
        bare = [k for k in self.uncovered if self.params[k].requires_grad]
        if torch.is_grad_enabled() and self.expected:
            self.forwards += 1
            if not self.functional and (self.forwards & (self.forwards - 1) == 0 or self.forwards % 64 == 0):
                self.functional = self._used_outside(output)
        if not (shared or bare) or not torch.is_grad_enabled():
            return
        roots = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
        if bare:
            self._broadcast_parameters(roots, bare)
        if not shared:
            return
        _, _, consumers = _graph_uses(roots, [out.grad_fn for _, _, _, out in shared])
        for emb, slots, x, out in shared:
            users = consumers.get(out.grad_fn, [])
            node = users[0] if len(users) == 1 else None
            try:
                shape = tuple(node._input_metadata[0].shape) if node is not None else None
                alpha = getattr(node, "_saved_alpha", None)
            except Exception:  # a torch without the node metadata
                shape = alpha = None
            positions = tuple(out.shape[1:]) if x.dim() == 2 else tuple(out.shape)
            if type(node).__name__ == "AddBackward0" and alpha == 1 and shape and shape[1:] == positions:
                idx = x.reshape(1, -1).expand(shape[0], -1)
                node.register_prehook(partial(self._shared_delta, emb, slots, idx))
            elif x.dim() == 1 and self._one_per_example(x, out, node):  # ids [B]: a label or user embedding
                out.register_hook(partial(self._backward, embedding, emb, slots, x))
            elif users:
                self.failure = ("an nn.Embedding called on positions shared by the batch ([T] or [1, T]) whose "
                                "output is not added to a batched tensor is not supported by the tracker's "
                                "per-example norms")

    def _one_per_example(self, x: Tensor, out: Tensor, node) -> bool:
        """An embedding called on 1-D indices that are not positions broadcast over the batch: one index per
        example (a class label, a user id), its output [B, d] used row by row. Told from positions [T] by the model
        input's dim 0 (B) and by the output's use: positions are broadcast (added to [B, T, d], directly or after a
        view, reshape, unsqueeze or expand that gives them a leading dim of 1 or more elements), so with T = B an
        output whose first use changes its leading dim or its size is not taken as one row per example."""
        if self.inputs and x.shape[0] not in self.inputs:
            return False
        if node is None or not type(node).__name__.startswith(("View", "Reshape", "Unsqueeze", "Expand", "AsStrided")):
            return True
        try:
            shape = tuple(node._input_metadata[0].shape)  # the view's output
        except Exception:
            return False
        return bool(shape) and shape[0] == out.shape[0] and math.prod(shape) == out.numel()

    def check_layout(self) -> str | None:
        """Whether the hooked layers fed [N, N, …] with N the step's examples (``square_mods``) keep the examples on
        dim 0: told by two forwards without grad on the first N − 1 and N − 2 examples of the model's latest input
        (dim 0 of every tensor argument sliced), as ``bsprof measure`` checks a spec (``hooks.not_batch_first``): a
        layer fed [T, B, …] (a transpose inside the model) keeps T whatever the batch. Once per tracker, only when
        such a layer was seen, and in one process only (several ranks' forwards may run collectives); the random
        state is kept (dropout), nothing is learned. The reason the layers do not (naming them), or None."""
        if self.layout is not None or not self.square_mods or self.last_input is None:
            return None
        if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                torch.distributed.get_world_size() > 1:  # a forward of a DDP model may run collectives: not here
            self.layout = ""
            return None
        args, kwargs = self.last_input
        mods, self.square_mods, self.last_input, self.layout = self.square_mods, set(), None, ""
        x = args[0] if args else next(iter(kwargs.values()), None)
        count = x.shape[0]
        if count < 4:
            return None
        seen: dict = defaultdict(set)

        def record(mod, a, kw):
            t = a[0] if a else next(iter(kw.values()), None)
            if isinstance(t, Tensor) and t.dim() > 0:
                seen[mod].add(t.shape[0])

        handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in mods]
        devices = [t.device for t in _tensors((args, kwargs)) if t.device.type == "cuda"][:1]
        bad = set()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                for n in (count - 1, count - 2):
                    seen.clear()
                    self.model(*_first_rows(args, 0, n), **_first_rows(kwargs, 0, n))
                    bad |= {m for m in mods if seen[m] and n not in seen[m]}
        except Exception:  # the model needs its whole batch: the shapes cannot be told apart
            return None
        finally:
            for h in handles:
                h.remove()
        if not bad:
            return None
        names = [name or "the model" for name, m in self.model.named_modules() if m in bad]
        self.layout = (f"{', '.join(names[:3])} {'is' if len(names) == 1 else 'are'} fed [T, B, …] (the sequence on "
                       f"dim 0, as long as the batch here, {count}; a transpose or batch_first=False before it): the "
                       "per-example norms would take positions for examples (make the layers batch-first)")
        return self.layout

    def _used_outside(self, output) -> list[str]:
        """Parameters of the layers with rules that the model's graph uses more often than those layers were
        called (a tied weight also applied functionally, ``F.linear(h, emb.weight)``; a layer's weight used without
        calling the layer, ``h + wpe.weight[:T]``): the hooks cannot see that use, so per-example norms would leave
        it out (as ``hooks._Pass.check_uses`` finds for the probe; a weight used only through ``F.linear`` read
        −76%). One walk of the graph, at the 1st, 2nd, 4th, 8th, … and every 64th forward: cheap on the whole, and
        a use that starts later in the run (an auxiliary head switched on) is found soon after."""
        roots = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
        uses = _graph_uses(roots)[0] if roots else Counter()
        return [f"{self.names[k]} (used {uses[id(self.params[k])]} times, {self.expected[k]} by its layers)"
                for k in self.covered if uses[id(self.params[k])] > self.expected[k]]

    def _broadcast_parameters(self, roots, bare: list[int]) -> None:
        """Parameters outside the layers with rules that are added by broadcast over the examples (a learned
        position embedding kept as a bare ``nn.Parameter``), or joined to them by ``torch.cat`` (a class token;
        ``hooks.broadcast_add``): a pre-hook on the add (or cat) takes
        δ_i, and |g_i|² from it, as ``bsprof measure``'s probe does. Anything else stays uncovered."""
        leaves, users = _consumers(roots)
        for k in bare:  # the examples of this forward (not of another one since the last backward: a validation's)
            found = broadcast_add(self.params[k], leaves, users, self.batch)
            if found is not None:
                node, shape, cut = found
                node.register_prehook(partial(self._broadcast, k, shape, cut))

    def _broadcast(self, k: int, shape: tuple, cut, grad_outputs) -> None:
        if not self.armed and torch.is_grad_enabled():
            self.double = True
        if not self.armed or grad_outputs[0] is None:
            return
        self.bare.add(k)  # covered in this backward: its graph is the one backpropagated (``uncovered_used``)
        d = grad_outputs[0] if cut is None else grad_outputs[0].narrow(*cut)  # a class token's part of a cat
        self.rows.add(d.shape[0])
        try:
            with torch.autocast(d.device.type, enabled=False) if _autocast_on(d.device.type) else nullcontext():
                flat = per_example_broadcast(_wide(d), shape).reshape(-1)
                self.parts.append(torch.dot(flat, flat))
        except Exception as e:  # never break the user's backward
            self.failure = f"{type(e).__name__} in the per-example norm of a parameter added by broadcast: {e}"

    def _shared_delta(self, mod, slots, idx: Tensor, grad_outputs) -> None:
        if grad_outputs[0] is not None:
            self._backward(embedding, mod, slots, idx, grad_outputs[0])

    def _backward(self, rule, mod, slots, x: Tensor, d: Tensor) -> None:
        if not self.armed:
            if torch.is_grad_enabled():  # a create_graph pass before the block (a gradient penalty): ``end_backward``
                self.double = True
            return
        self.rows.add(x.shape[0])  # at arrival: a forward whose graph never reaches a backward counts nothing
        if isinstance(mod, nn.Embedding) and x.shape[0] == 1:
            self.shared_positions = True
        try:
            if _autocast_on(d.device.type):   # entering the context costs tens of µs per hook: only when needed
                with torch.autocast(d.device.type, enabled=False):
                    self._take(mod, rule(mod, _wide(x), _wide(d)), slots)
            else:
                self._take(mod, rule(mod, _wide(x), _wide(d)), slots)
        except Exception as e:  # never break the user's backward
            self.failure = f"{type(e).__name__} in the per-example rule of {type(mod).__name__}: {e}"

    def _rows_pre(self, rule, mod, slots, x: Tensor, grad_outputs) -> None:
        if grad_outputs[0] is not None:
            self._rows(rule, mod, slots, x, grad_outputs[0])

    def _rows(self, rule, mod, slots, x: Tensor, d: Tensor) -> None:
        """A Linear (or HF Conv1D) on [B, in]: g_i = δ_i x_iᵀ, so |g_i|² = |δ_i|²|x_i|² for the weight and |δ_i|² for
        the bias, Σ_i |δ_i|²(|x_i|² + 1) for both: two row-wise dot products and one B-long one (the general rule when
        a parameter is used twice). Few kernels matter here: on a small model each costs as much as the arithmetic."""
        if not self.armed:
            if torch.is_grad_enabled():  # a create_graph pass before the block (a gradient penalty): ``end_backward``
                self.double = True
            return
        if any(self.expected[k] != 1 for _, k in slots) or _autocast_on(d.device.type) or x.element_size() < 4:
            self._backward(rule, mod, slots, x, d)
            return
        self.rows.add(x.shape[0])
        try:  # Σ_i |δ_i|²(|x_i|² + 1) for weight and bias together: four kernels
            d = _wide(d)  # at least float32 (a bf16 δ under autocast)
            d2 = torch.linalg.vecdot(d, d)
            names = [name for name, k in slots if self.params[k].requires_grad]  # not those frozen since
            if not names:
                return
            self.taken.update(k for _, k in slots)
            if names == ["bias"]:
                self.parts.append(d2.sum())
            else:
                x2 = torch.linalg.vecdot(x, x)
                self.parts.append(torch.dot(d2, x2.add_(1) if "bias" in names else x2))
        except Exception as e:  # never break the user's backward
            self.failure = f"{type(e).__name__} in the per-example rule of {type(mod).__name__}: {e}"

    def _take(self, mod, found: dict, slots) -> None:
        """One call's per-example pieces {name: piece} → squared norms (cross terms once all uses are in)."""
        for name, k in slots:
            if name not in found or not self.params[k].requires_grad:  # frozen since the tracker was made
                continue
            self.taken[k] += 1
            shape = self.params[k].shape
            if self.expected[k] == 1:
                self.parts.append(sq_sum(found[name], shape, self.scratch))
                continue
            self.pending[k].append(found[name])
            if len(self.pending[k]) == self.expected[k]:
                self.parts.append(total_sq_sum(self.pending.pop(k), shape, self.scratch))

    def _module_call(self, mod, call, out) -> None:
        """An attention call ran (``probes.attention``): hook the outputs of its projections.

        Each hook holds the projection's input (a view of what autograd saves anyway) and lives on the graph, so
        it is freed with the graph whether or not a per-example backward follows; the hooked outputs themselves
        are not kept (the ``y`` slot of each site is dropped)."""
        out = out[0] if isinstance(out, tuple) else out
        if not (isinstance(out, Tensor) and out.requires_grad and torch.is_grad_enabled()):
            return
        _, slots = self.owned[mod]
        if isinstance(call, str):
            self.failure = f"{type(mod).__name__}: {call}"
            return
        self.expected.update(k for _, k in slots)
        sites, call.sites = call.sites, []
        for y, *rest in sites:
            y.register_hook(partial(self._site, call, slots, (None, *rest), len(sites)))

    def _site(self, call, slots, site, n: int, d: Tensor) -> None:
        """δ of one projection of an attention call; the call's pieces are taken once all n have arrived (or at
        the end of the backward: a projection whose δ never came has a zero gradient)."""
        if not self.armed:
            if torch.is_grad_enabled():  # a create_graph pass before the block (a gradient penalty): ``end_backward``
                self.double = True
            return
        try:
            with torch.autocast(d.device.type, enabled=False):
                entry = self.open.get(id(call))
                if entry is None:  # the call's first site in this backward (a retained graph may run again)
                    self.rows.add(call.count)
                    call.reset()
                    entry = self.open[id(call)] = [call, slots, n]
                call.take((*site[:-1], _wide(site[-1])), _wide(d))
                entry[2] -= 1
                if entry[2] == 0:
                    del self.open[id(call)]
                    self._take(call.mod, call.finish(), slots)
        except Exception as e:  # never break the user's backward
            self.failure = f"{type(e).__name__} in the per-example rule of {type(call.mod).__name__}: {e}"

    def end_backward(self, record: Backwards) -> None:
        """Close one backward pass: hand (Σ_i |rule_i|², n) of an armed pass to ``record``; reset the counts."""
        if not (self.armed or self.expected or self.rows or self.pending or self.parts or self.failure
                or self.shared_positions or self.open or self.inputs or self.bare):
            return  # nothing was hooked in this pass (accumulation): nothing to reset
        if self.armed:
            try:  # calls whose δ never came contribute zero (unused outputs, graphs dropped without a backward)
                for call, slots, _ in self.open.values():  # attention calls with some projections' δ missing
                    with torch.autocast(call.mod.out_proj.weight.device.type, enabled=False):
                        self._take(call.mod, call.finish(), slots)
                for k, pieces in self.pending.items():     # parameters with fewer uses than forward calls seen
                    with torch.autocast(self.params[k].device.type, enabled=False):
                        self.parts.append(total_sq_sum(pieces, self.params[k].shape, self.scratch))
            except Exception as e:
                self.failure = self.failure or f"{type(e).__name__} in the per-example norms: {e}"
            if self.failure is None and len(self.rows) > 1:
                self.failure = (
                    "an nn.Embedding called on positions shared by the batch ([T] or [1, T], as GPT-2 and nanoGPT "
                    "do) is not supported by the tracker's per-example norms" if self.shared_positions else
                    f"the hooked layers saw different batch sizes {sorted(self.rows)} in one backward")
            if self.failure is None and (self.double or any(n > self.expected[k] for k, n in self.taken.items())):
                self.failure = ("a backward pass with create_graph=True ran through the hooked layers before this "
                                "one (an input-gradient penalty, torch.autograd.grad(..., create_graph=True)): the "
                                "weights' gradients then have second-order parts the per-example hooks do not see")
            self.double, self.taken = False, Counter()
            if self.failure is None and self.rows and self.inputs and not self.rows <= self.inputs:
                self.failure = (f"the hooked layers saw {sorted(self.rows)} rows on dim 0 but the model's input had "
                                f"{sorted(self.inputs)}: a layer fed [T, B, …] (batch_first=False, or a transpose), "
                                "or a flat input with offsets (nn.EmbeddingBag's (tokens, offsets)), does not keep "
                                "the examples on dim 0")
            if self.failure is None and self.functional:
                self.failure = (f"{', '.join(self.functional[:3])} used outside their layers too (applied "
                                "functionally, e.g. F.linear(h, emb.weight), or read directly, e.g. "
                                "wpe.weight[:T]), which the per-example hooks cannot see; call the layer instead (for "
                                "a tied weight: an nn.Linear with head.weight = emb.weight; a transposed tie, "
                                "F.linear(h, enc.weight.t()), has no layer form: track such a model by accumulation)")
            if self.failure is None:
                self.failure = self.uncovered_used()
            if self.failure is None and self.parts and self.rows:
                record.per_example.append((self.parts, self.rows.pop()))  # summed in float64 at the step
            if self.failure is not None:
                record.per_example_failure = self.failure
        self.expected, self.rows, self.pending, self.parts, self.failure = Counter(), set(), defaultdict(list), [], None
        self.taken = Counter()
        self.shared_positions, self.open, self.inputs, self.shared = False, {}, set(), []
        self.bare = set()
        self.scratch = Scratch()  # not held between steps

    def uncovered_used(self) -> str | None:
        """Why this backward's per-example norms are incomplete: a parameter outside the layers with rules got a
        gradient (an unused one never does); None when none did."""
        used = [self.names[k] for k in self.uncovered if k not in self.bare
                and self.params[k].grad is not None and bool(self.params[k].grad.any())]
        if not used:
            return None
        return (f"no per-example rule for {', '.join(used[:5])}{' …' if len(used) > 5 else ''}, which the loss uses "
                "(known layers: Linear, Conv1d/2d/3d (not ConvTranspose), Embedding (not sparse=True or "
                "scale_grad_by_freq), LayerNorm, RMSNorm, GroupNorm, "
                "MultiheadAttention; "
                "bsprof.probes.register_rule adds one)")

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def fsdp_param_groups(model: nn.Module) -> list:
    """The FSDPParamGroups of every ``fully_shard``-ed module in ``model`` (FSDP2; empty for other models)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return []
    groups = []
    for mod in model.modules():
        if isinstance(mod, FSDPModule):
            state = mod._get_fsdp_state()
            found = getattr(state, "_fsdp_param_groups", None)  # torch >= 2.12: a list; before: one group
            if found is None:
                found = [getattr(state, "_fsdp_param_group", None)]
            groups += [g for g in found if g is not None]
    return groups


def _tensors(out) -> list[Tensor]:
    """The tensors of a model's output: a tensor, or those inside tuples, lists and dicts (a Hugging Face
    ``ModelOutput`` is a dict)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def fsdp_problem(model: nn.Module, params: list[Tensor]) -> str | None:
    """Why this FSDP2 model cannot be tracked exactly (None: it can): parameters outside ``fully_shard``, or a mesh
    that is not one-dimensional (HSDP, FSDP + tensor parallel)."""
    groups = fsdp_param_groups(model)
    managed = {id(fp.sharded_param) for g in groups for fp in g.fsdp_params}
    outside = [i for i, p in enumerate(params) if id(p) not in managed]
    if outside:
        names = {id(p): n for n, p in model.named_parameters()}
        listed = [names.get(id(params[i]), "?") for i in outside]
        return (f"{len(outside)} trainable parameter(s) are DTensors not managed by fully_shard, or plain tensors "
                f"next to sharded ones ({', '.join(listed[:5])}{' …' if len(listed) > 5 else ''}): call fully_shard "
                "on the root module too")
    for g in groups:
        for fp in g.fsdp_params:
            if fp.sharded_param.device_mesh.ndim != 1:
                return "a 2-D device mesh (HSDP, or FSDP with tensor parallelism) is not supported yet"
    return None


class FsdpHooks(StepHooks):
    """The pair under FSDP2 (``fully_shard``), exact and without gathering a full gradient.

    Before the reduce-scatter. In each backward every rank computes the gradient of its own micro-batch with
    respect to the UNSHARDED parameters (``FSDPParam._unsharded_param``, an ``nn.Parameter`` that FSDP keeps from
    its first all-gather on and swaps into the module for forward and backward). A tensor hook on each unsharded
    parameter sees u·g_p of this backward before autograd accumulates it, exactly as ``StepHooks`` does for plain
    parameters: Σ_p |u·g_p|² = u²·|G_b^(r)|² per rank and pass. The hooks are attached at the end of each FSDP
    module's forward (the unsharded parameters exist from then on; attaching twice is avoided).

    After the reduce-scatter. ``p.grad`` of each sharded parameter is a DTensor whose local tensor is this rank's
    shard of the all-rank mean (FSDP's default divide factor is the world size W; a factor f set by
    ``set_gradient_divide_factor`` gives sum/f, corrected here by (f/W)²). The shards are disjoint and cover the
    parameter, so Σ_ranks Σ_p |shard_p|² = |G_B|²·(u·k)², B = W·k·b. The end-of-backward read is queued after
    FSDP's root post-backward callback (queued at the first pre-backward hook, before any parameter hook), so the
    shards are final. ``record.big`` holds this rank's part; the Tracker sums it over ranks together with the
    small norms in one all-reduce.

    ``record.synced`` is False when the pass ran with ``set_requires_gradient_sync(False)`` (no reduce-scatter).
    """

    def __init__(self, model: nn.Module, params: list[Tensor], every: int | None = None):
        self.model = model
        self.groups = fsdp_param_groups(model)
        self.world = self.groups[0].fsdp_params[0].sharded_param.device_mesh.size() if self.groups else 1
        super().__init__(params, every=every)  # registers nothing on the sharded DTensors: see _attach

    def _register(self) -> list:
        from torch.distributed.fsdp import FSDPModule

        self.hooked: set[int] = set()
        self.handles = [forward_hook(m, self._attach) for m in self.model.modules() if isinstance(m, FSDPModule)]
        self._attach()
        return self.handles

    def _attach(self, *_) -> None:
        for g in self.groups:
            for fp in g.fsdp_params:
                unsharded = getattr(fp, "_unsharded_param", None)
                if unsharded is None or id(unsharded) in self.hooked or not unsharded.requires_grad:
                    continue
                self.hooked.add(id(unsharded))
                self.handles.append(unsharded.register_hook(partial(self._hook, 0)))

    def _end(self) -> None:
        super()._end()
        self.record.synced = all(g.reduce_grads for g in self.groups)

    def _read_grads(self) -> None:
        try:
            parts = []
            for g in self.groups:
                shards = [fp.sharded_param.grad for fp in g.fsdp_params if fp.sharded_param.grad is not None]
                if not shards:
                    continue
                local = grad_sq([s.to_local() if hasattr(s, "to_local") else s for s in shards])
                factor = getattr(g, "gradient_divide_factor", None)
                parts.append(local * (float(factor) / self.world) ** 2 if factor is not None else local)
            self.record.big = _sum(parts) if parts else torch.zeros((), dtype=torch.float64)
        except Exception as e:
            self.record.failure = f"{type(e).__name__}: {e}"
