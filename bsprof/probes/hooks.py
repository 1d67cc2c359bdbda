"""Per-example probe through module hooks: Σ_i |g_i|² per parameter in the same backward pass as Σ_i g_i.

One forward with forward hooks on the known layers (``layers.RULES``) saving each call's input and hooking its
output; one backward of Σ_i ℓ_i (times ``loss_scale``), during which each output hook receives δ = ∂Σℓ/∂output
and turns (input, δ) into Σ_i |g_i|² by the layer's rule. Extra memory is O(batch) plus one layer's transient.

``nn.MultiheadAttention`` has a module rule (``probes.attention``: its projections are recorded inside torch's
own forward code). An embedding called on positions without a batch dim (``pos(arange(T))``) and added to a
batched tensor takes δ per example from that add (``_Pass.broadcast_embeddings``). Direct parameters of other
modules (a GRU, a bare ``nn.Parameter`` added by broadcast), parameters a known layer's hooks cannot account
for (used functionally, e.g. ``F.linear(h, emb.weight)``, found by counting their uses in the autograd graph),
and layers whose input does not carry the examples on dim 0 go through torch.func (vmap over grad,
differentiating only those parameters); ``ChunkStats.fallbacks`` names them with the reason, and
``strict=True`` refuses them. ``layers.register_rule`` teaches the hooks a custom layer. A parameter used by
several hooked calls (tied embedding and LM head, a layer applied twice) gets its cross terms: per-example
gradients add, their squared norms do not.

Valid only when ℓ_i depends on example i alone: see ``base.batch_coupled`` and ``losses_mix_examples`` (both
read by ``probes.choose``).
"""

from __future__ import annotations

import copy
import weakref
from collections import Counter, defaultdict
from collections.abc import Mapping
from contextlib import nullcontext
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_leaves, tree_map

from bsprof.errors import BsprofError, ConfigError
from bsprof.probes.base import (
    ChunkStats,
    LossFn,
    accum_dtype,
    batch_coupled,
    coupled_reason,
    per_example_losses,
    trainable,
)
from bsprof.probes.layers import (
    ModuleRule,
    Scratch,
    conv,
    embedding,
    explicit,
    explicit_sum,
    explicit_weight,
    hf_conv1d,
    layer_norm,
    layer_norm_saved,
    linear,
    rule_for,
    sq_sum,
    total_sq_sum,
)
from bsprof.probes.vmap import _Objective, per_example_vmap, quiet_fallbacks


def _devices(model: nn.Module) -> list[int]:
    """The CUDA devices the model's parameters are on (what ``fork_rng`` must save and restore)."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _rows(batch, start: int, stop: int):
    """Examples start..stop of a collated batch: every tensor sliced on dim 0, and every list or tuple of plain
    values (numbers, strings) as long as the batch (a custom collate's lengths or ids, one per example; a trial
    found them left whole, and the one-example check blamed the user's loss)."""
    first = next((x for x in tree_leaves(batch) if isinstance(x, Tensor) and x.dim() > 0), None)
    count = None if first is None else first.shape[0]

    def cut(x):
        if isinstance(x, Tensor):
            return x[start:stop] if x.dim() > 0 else x
        if isinstance(x, (list, tuple)):
            column = len(x) == count and all(isinstance(v, (int, float, str, bytes)) or v is None for v in x)
            items = list(x[start:stop]) if column else [cut(v) for v in x]
            return (items if isinstance(x, list) else type(x)(*items) if hasattr(x, "_fields")  # a namedtuple
                    else tuple(items))
        if isinstance(x, Mapping):  # dict, OrderedDict, a UserDict such as transformers' BatchEncoding
            out = copy.copy(x)
            for k, v in x.items():
                out[k] = cut(v)
            return out
        return x
    return cut(batch)


_LAYOUT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → ids of modules fed sequence-first


def not_batch_first(model: nn.Module, loss_fn: LossFn, batch, count: int, owned) -> frozenset:
    """Ids of the hooked modules whose input does not keep the examples on dim 0, from forward passes (no graph) on
    the first count − 1 and count − 2 examples: a layer fed [T, B, …] (``batch_first=False``, or a transpose) has
    dim 0 = T whatever the batch, so in the probe's own pass, where T may equal the chunk's count, it would pass for
    per-example; at two other sizes it cannot (T equals at most one of them: with one size, a first call of T + 1
    examples cached 'none found' and every later chunk of T was measured wrong). Done once per model (cached);
    nothing is found for count < 3 or when the model cannot run on the smaller batches (the probe's own checks
    still apply)."""
    if model in _LAYOUT:
        return _LAYOUT[model]
    if count < 3:
        return frozenset()
    found = set()
    for n in (count - 1, count - 2) if count > 3 else (count - 1,):  # (size 1 reads as a broadcast, not a batch)
        rows = defaultdict(set)

        def record(mod, args, kwargs, n=n, rows=rows):
            x = args[0] if args else next(iter(kwargs.values()), None)
            if not isinstance(x, Tensor) or x.dim() == 0:
                return
            if isinstance(mod, nn.MultiheadAttention):  # its rule reads batch_first itself
                rows[id(mod)].add(x.shape[0 if mod.batch_first else 1] if x.dim() == 3 else n)
            else:
                rows[id(mod)].add(x.shape[0] if x.dim() > 1 or rule_for(mod) is not embedding else n)

        handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in owned]
        try:  # on its own random state: a check made once per model must not move the draws' dropout masks
            with torch.no_grad(), torch.random.fork_rng(devices=_devices(model)):
                per_example_losses(model, loss_fn, _rows(batch, 0, n), n)
        except Exception:  # the model needs its whole batch: leave the layout to the probe's own checks
            return frozenset()
        finally:
            for h in handles:
                h.remove()
        # an embedding on positions shared by the batch ([1, T]) is the broadcast case, handled by the probe
        found |= {k for k, seen in rows.items() if seen - {n, 1}}
    _LAYOUT[model] = frozenset(found)
    return _LAYOUT[model]


def fed_sequence_first(model: nn.Module, loss_fn: LossFn, batch, count: int) -> list[str]:
    """Names of the layers with a per-example rule whose input does not keep the examples on dim 0 (a Linear after
    a transpose, ``batch_first=False``), by ``not_batch_first`` on ``batch`` (count ≥ 4 examples for two sizes)."""
    owned = [m for m in model.modules()
             if rule_for(m) is not None and any(p.requires_grad for p in m.parameters(recurse=False))]
    ids = not_batch_first(model, loss_fn, batch, count, owned)
    return [name or "the model" for name, m in model.named_modules() if id(m) in ids]


def losses_mix_examples(model: nn.Module, loss_fn: LossFn, batch, rtol: float = 1e-4,
                        failure: list | None = None) -> bool:
    """True if example 0's loss or gradient changes when example 1 joins it (a contrastive loss, batch
    statistics, a loss normalised by the batch). Two tiny passes; dropout left on reads as mixing. When the loss
    fails on one example alone (the model needs the batch, or the loss raised), True, and ``failure`` (a list,
    when given) gets the error in words."""
    _, params = trainable(model)
    alone, pair = _rows(batch, 0, 1), _rows(batch, 0, 2)
    try:
        l1 = per_example_losses(model, loss_fn, alone, 1)[0]
    except Exception as e:  # the model cannot see one example alone: it needs the batch
        if failure is not None:
            failure.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
        return True
    both = per_example_losses(model, loss_fn, pair, 2)
    l2 = both[0]
    if not (torch.isfinite(l1) and torch.isfinite(l2)):  # a diverged model: no evidence of mixing (said elsewhere)
        return False
    g1 = torch.autograd.grad(l1, params, allow_unused=True, materialize_grads=True)
    g2 = torch.autograd.grad(l2, params, allow_unused=True, materialize_grads=True)
    close = partial(torch.allclose, rtol=rtol, atol=rtol * 1e-3)
    g1, g2 = ([g.to_dense() if g.is_sparse else g for g in gs] for gs in (g1, g2))  # Embedding(sparse=True)
    if close(l1.detach(), l2.detach()) and all(close(a, b) for a, b in zip(g1, g2)):
        return False
    with torch.no_grad():  # a loss summed over the batch: the pair's mean is the singles' sum, not their mean
        alone_sum = l1.detach() + per_example_losses(model, loss_fn, _rows(batch, 1, 2), 1)[0]
        pair_mean = both.detach().mean()
    if close(2 * pair_mean, alone_sum) or not close(pair_mean, alone_sum):  # (a zero sum: no evidence)
        return True
    raise ConfigError(f"loss(model, batch) is summed over the batch: for two examples it returned a mean of "
                      f"{float(pair_mean):.4g}, the sum of their losses alone ({float(alone_sum):.4g}), so |G|² and "
                      "tr(Σ) would grow with the batch size (reduction='sum' spread over the examples with "
                      ".expand(B), or the per-example losses × B)",
                      "return the per-example losses, e.g. F.cross_entropy(out, y, reduction='none')")




def _accumulate_node_type() -> type:
    """The type of a leaf's AccumulateGrad node (grad mode on even when bsprof is first imported under no_grad or
    inference_mode: a new user's import inside ``torch.no_grad()`` failed here)."""
    with torch.inference_mode(False), torch.enable_grad():
        return type(torch.empty(1, requires_grad=True).view(1).grad_fn.next_functions[0][0])


_ACCUMULATE = _accumulate_node_type()  # a leaf's node


def _graph_uses(root, targets=(), leaves: dict | None = None) -> tuple[Counter, set, dict]:
    """Edges into each leaf's AccumulateGrad node (uses of the leaf), every node reached from ``root`` (a node, or a
    list of nodes walked as one graph), and for each node in ``targets`` (None: every node) the nodes that consume
    it (one entry per edge), in one walk; ``leaves``, when given, gets {id(leaf): [the nodes that take it]}."""
    every = targets is None
    uses, seen, users = Counter(), set(), defaultdict(list) if every else {t: [] for t in targets}
    stack = [r for r in (root if isinstance(root, list) else [root]) if r is not None]
    seen.update(stack)  # a root reached from another is walked once
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            if type(nxt) is _ACCUMULATE:
                uses[id(nxt.variable)] += 1
                if leaves is not None:
                    leaves[id(nxt.variable)].append(node)
                continue
            if every or nxt in users:
                users[nxt].append(node)
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return uses, seen, users


# autograd nodes of ops that move a tensor's entries without combining them: |∂ℓ/∂p| is |∂ℓ/∂(their output)|
_MOVES = frozenset({"SliceBackward0", "ViewBackward0", "UnsafeViewBackward0", "UnsqueezeBackward0",
                    "SqueezeBackward0", "SqueezeBackward1", "SelectBackward0", "PermuteBackward0",
                    "TransposeBackward0", "TBackward0", "AliasBackward0"})


def _consumers(root) -> tuple[dict, dict]:
    """({id(leaf): [nodes taking it]}, {node: [nodes taking its output]}) over the graph from ``root`` (a node, or
    a list of nodes walked as one graph)."""
    leaves: dict = defaultdict(list)
    return leaves, _graph_uses(root, None, leaves)[2]


def broadcast_add(param: Tensor, leaves: dict, users: dict, count: int | None):
    """(the node, the shape S of the operand it takes, the cut) when ``param`` is used once, through ops that only
    move its entries (a slice ``pos[:T]``, a view) and at most one ``expand`` last, as

    - an operand of an add whose output [count, …] carries the examples and into which the operand broadcasts
      (S = [..., *out[1:]] or [1, *out[1:]]): a learned position embedding kept as a bare ``nn.Parameter``; cut None;
    - or an input of a ``torch.cat`` along a dim ≥ 1 whose output [count, …] carries the examples: a class token,
      ``torch.cat([cls.expand(B, -1, -1), x], 1)``; cut (dim, offset, size) of its part of the output.

    Then g_i is δ_i of the node's output (cut to the operand's part) summed to S, and |g_i| is the same for
    ``param`` (its other entries get no gradient). None otherwise."""
    taking = leaves.get(id(param), [])
    if len(taking) != 1:
        return None
    node, shape, edge = taking[0], tuple(param.shape), None
    try:
        while type(node).__name__ in _MOVES or type(node).__name__ == "ExpandBackward0" and edge is None:
            expand = type(node).__name__ == "ExpandBackward0"
            if not expand:
                shape = tuple(node._input_metadata[0].shape)
            after = users.get(node, [])
            if len(after) != 1:
                return None
            edge, node = node, after[0]
            if expand:  # its output broadcasts the operand S: the next node must take it as it is
                break
        cut = None
        if type(node).__name__ == "CatBackward0" and edge is not None:
            cut = _cat_part(node, edge)
            if cut is None:
                return None
        elif type(node).__name__ != "AddBackward0" or getattr(node, "_saved_alpha", None) != 1:
            return None
        out = tuple(node._input_metadata[0].shape)
    except Exception:  # a torch without the node metadata
        return None
    if cut is not None:
        dim, _, size = cut
        out = out[:dim] + (size,) + out[dim + 1:]
    rest = out[1:]
    if not out or (count is not None and out[0] != count):
        return None
    if len(shape) == len(rest) + 1:
        if shape[0] != 1:
            return None
        shape = shape[1:]
    if len(shape) > len(rest) or any(a not in (1, b) for a, b in zip(shape[::-1], rest[::-1])):
        return None
    return node, shape, cut


def _cat_part(node, edge) -> tuple[int, int, int] | None:
    """(dim, offset, size) of the input that ``edge`` (a node) feeds into the cat ``node``: the sizes of the inputs
    before it along the cat's dim come from their producers' metadata (an input without a producer, a constant,
    has none: None). The dim must not be the examples' (0)."""
    ends = [(fn, nr) for fn, nr in node.next_functions]
    mine = [j for j, (fn, _) in enumerate(ends) if fn is edge]
    out = node._input_metadata[0].shape
    dim = int(node._saved_dim)
    dim -= (1 << 64) if dim >= 1 << 63 else 0  # a negative dim comes back as an unsigned 64-bit int
    if len(mine) != 1 or not -len(out) <= dim < len(out) or dim % len(out) == 0:
        return None
    dim %= len(out)
    sizes = []
    for fn, nr in ends[:mine[0] + 1]:
        if fn is None:
            return None
        sizes.append(int(fn._input_metadata[nr].shape[dim]))
    return dim, sum(sizes[:-1]), sizes[-1]


def per_example_broadcast(d: Tensor, shape: tuple) -> Tensor:
    """g_i for an operand of shape ``shape`` broadcast into δ [B, *rest]: δ_i summed over the broadcast dims."""
    rest = d.shape[1:]
    aligned = (1,) * (len(rest) - len(shape)) + tuple(shape)
    dims = [j + 1 for j, (a, b) in enumerate(zip(aligned, rest)) if a == 1 and b != 1]
    return d.sum(dim=dims) if dims else d


def _no_rule(mod: nn.Module) -> str:
    """Why a module's own parameters have no per-example rule, in words that fit what the module is."""
    name = type(mod).__name__
    if name == "ParametrizationList":  # torch.nn.utils.parametrize (weight_norm, spectral_norm, orthogonal)
        return ("a parametrized weight (torch.nn.utils.parametrizations: weight_norm, spectral_norm, …): the layer's "
                "rule sees the weight it computes, not the parametrization's own parameters")
    if any(True for _ in mod.children()):  # a container using a bare parameter in its own forward
        return (f"used directly in {name}.forward, not inside a layer (a learned scale, say): only one added by "
                f"broadcast (a position embedding) or joined by torch.cat (a class token) has a rule; moving it "
                f"into a small module and registering a rule for that module avoids the slow path")
    if isinstance(mod, nn.Embedding) and mod.sparse:
        return (f"in {name}(sparse=True), whose sparse gradient the Embedding rule does not cover (it covers "
                "sparse=False)")
    return f"in {name}, which has no per-example rule"


class _Pass:
    """One probe call's hook state: which module owns which parameter, the calls seen, the sums made.

    ``why`` holds, for each parameter sent to torch.func, the reason (reported as ``ChunkStats.fallbacks``)."""

    def __init__(self, model: nn.Module, names: list[str], params: list[Tensor], count: int):
        self.count, self.names, self.params, self.armed = count, names, params, False
        self.seq_first: frozenset = frozenset()  # ids of modules fed the examples off dim 0 (``not_batch_first``)
        index = {id(p): k for k, p in enumerate(params)}
        self.owned, self.why, claimed = {}, {}, set()
        self.ruleless: set[int] = set()  # direct parameters of a module without a rule (a bare position parameter?)
        for mod in model.modules():
            direct = [(n, index[id(p)]) for n, p in mod._parameters.items()  # named_parameters(recurse=False), faster
                      if p is not None and id(p) in index and index[id(p)] not in claimed]
            if not direct:
                continue
            rule = rule_for(mod)
            if rule is None:
                self.send({k for _, k in direct}, _no_rule(mod))
                self.ruleless |= {k for _, k in direct}
            elif isinstance(rule, ModuleRule):  # accounts for its children's parameters too
                slots = [(n, index[id(p)]) for n, p in mod.named_parameters() if id(p) in index]
                self.owned[mod] = (rule, slots)
                claimed |= {k for _, k in slots}
            else:
                self.owned[mod] = (rule, direct)
        self.owners = Counter(k for _, slots in self.owned.values() for _, k in slots)  # > 1: tied across modules
        self.calls, self.shared = [], []  # (slots, output grad_fn); embeddings called without a batch dim
        self.expected, self.pending, self.parts, self.handles = Counter(), defaultdict(list), [], []
        self.explicit: dict[int, int | None] = {}  # weights whose call forms the per-example gradients explicitly
        #                                            → the slot of the bias applied with them (None: none)
        self.tapped: set[int] = set()     # parameters of calls whose δ arrives through a ``_Tap``
        self.formed = defaultdict(list)   # tied weights: (call's grad_fn, dense) of their tapped calls that form
        #                                   (dense) or scatter g_i explicitly
        self.live: set = set()            # the grad_fns of the calls that reach the loss (``check_uses``)
        self.anchor: Tensor | None = None  # the leaf that keeps every tap on autograd's path
        self.reuse: set[int] = set()      # parameters whose Σ_i g_i is taken from their per-example gradients
        self.sums: dict[int, Tensor] = {}
        self.scratch = Scratch()          # one buffer for the explicit per-example gradients, layer after layer

    @property
    def fallback(self) -> set:
        return set(self.why)

    def send(self, ks, reason: str) -> None:
        """Send parameters ``ks`` to the torch.func fallback (the first reason given is kept)."""
        for k in ks:
            self.why.setdefault(k, reason)

    def install(self) -> list:
        """Forward hooks on the owned layers (module rules install themselves); the undo handles."""
        handles = []
        for mod, (rule, _) in self.owned.items():
            if isinstance(rule, ModuleRule):
                rule.install(mod, self.module_call)
                handles.append(_Undo(rule, mod, self.module_call))
            else:
                handles.append(mod.register_forward_hook(self.forward_hook, with_kwargs=True))
        return handles

    def forward_hook(self, mod, args, kwargs, out):
        rule, slots = self.owned[mod]
        x = args[0] if args else next(iter(kwargs.values()))
        if not (isinstance(out, Tensor) and out.requires_grad):
            return
        if rule is embedding and (x.dim() == 1 or (x.dim() == 2 and x.shape[0] == 1 and self.count > 1)):
            self.shared.append((mod, slots, x.detach(), out))  # positions shared by the batch? see check_uses
            return
        if x.dim() == 0 or x.shape[0] != self.count or out.shape[0] != self.count or id(mod) in self.seq_first:
            self.send((k for _, k in slots), f"{type(mod).__name__} does not keep the examples on dim 0"
                      + (" (it is fed [T, B, …]: batch_first=False, or a transpose)" if id(mod) in self.seq_first
                         else ""))
            return
        self.calls.append((slots, out.grad_fn))
        if (rule is linear or rule is hf_conv1d) and x.dim() == 2:  # one position per example: the norms of rows
            self.handles.append(out.register_hook(partial(self.rows_hook, rule, mod, slots, x.detach())))
            return
        if rule is layer_norm:
            rule = layer_norm_saved(out)
        hook = partial(self.backward_hook, rule, mod, slots, x.detach())
        dense = explicit_weight(rule, mod, x, out)
        tied = [k for n, k in slots if n == "weight" and self.owners[k] > 1]
        if not dense and not (rule is embedding and tied):  # an embedding's g_i is scattered into a tied sum
            self.handles.append(out.register_hook(hook))
            return
        if dense:
            self.explicit.update({k: dict(slots).get("bias") for n, k in slots if n == "weight"})
        if out._is_view() or out._version != 0:  # a tap would rebase a view's (or an in-place result's) history
            self.handles.append(out.register_hook(hook))
            return
        if self.anchor is None:
            self.anchor = torch.zeros((), device=out.device, requires_grad=True)
        for k in tied:
            self.formed[k].append((out.grad_fn, dense))  # the call's own node, as ``calls`` holds it
        _Tap.apply(out, self.anchor, hook)  # in place: out's grad_fn is now the tap's
        self.tapped |= {k for _, k in slots}

    def choose_reuse(self) -> None:
        """Parameters whose Σ_i g_i is the sum of the explicit per-example gradients their rule forms anyway, so that
        autograd skips their gradient (for a weight, the same multiply-adds again). Only a parameter used once.

        A tapped call (``_Tap``: its δ arrives whatever autograd computes for the layer) gives its weight and its
        bias: with neither left in ``autograd.grad``'s inputs the layer's backward computes no parameter gradient
        at all (a convolution's backward computes its weight gradient whenever it computes its bias's). An
        untapped call (its output a view) gives its weight only, when its bias is also measured: the bias keeps
        δ flowing to the layer's output, and so its hook firing.

        A weight tied across modules (GPT-2's token embedding and LM head) is reused when every use is a tapped
        call that forms its g_i explicitly or scatters it (an embedding), one of them densely: Σ_k g_k,i is then
        built in one buffer anyway (``layers.explicit_sum``), and autograd skips the head's weight gradient."""
        for k, calls in self.formed.items():
            live = [dense for fn, dense in calls if fn in self.live]  # a tapped call not reaching the loss: no part
            if len(live) == self.expected[k] > 1 and any(live) and k not in self.why:
                self.reuse.add(k)
        for k, bias in self.explicit.items():
            if k in self.reuse:
                if bias is not None and self.expected[bias] == 1 and bias not in self.why:
                    self.reuse.add(bias)
                continue
            if self.expected[k] != 1 or k in self.why:
                continue
            if k in self.tapped:
                self.reuse |= {j for j in (k, bias) if j is not None and self.expected[j] == 1 and j not in self.why}
            elif bias is not None and self.expected[bias] == 1 and bias not in self.why:
                self.reuse.add(k)

    def broadcast_embeddings(self, consumers: dict) -> None:
        """Embeddings called on indices without a batch dim (``pos(torch.arange(T))``, [T] or [1, T]).

        nanoGPT style: ``h = tok(idx) + pos(arange(T))``, the [T, d] (or [1, T, d]) output broadcast over the batch
        by an add. The δ reaching the embedding is summed over the examples; the per-example one is the gradient
        of the add's output [B, T, d] (δ_i of example i), read by a pre-hook on that add's node. The indices are
        the same for every example, so g_i = Σ_t e_{idx_t} δ_{i,t}ᵀ, by the embedding rule on the expanded
        indices. Exact; anything else (another consumer, the add's output not [B, *out.shape]) falls back. A 1-D
        input consumed without a broadcast is one index per example (an ordinary call)."""
        for mod, slots, x, out in self.shared:
            users = consumers.get(out.grad_fn, [])  # the nodes that take the embedding's output
            if not users:
                continue  # does not reach the loss
            node = users[0]
            try:
                shape = tuple(node._input_metadata[0].shape) if len(users) == 1 else None
                alpha = getattr(node, "_saved_alpha", None)
            except Exception:  # a torch without the node metadata
                shape = alpha = None
            positions = tuple(out.shape[1:]) if x.dim() == 2 else tuple(out.shape)
            if type(node).__name__ == "AddBackward0" and alpha == 1 and shape == (self.count, *positions):
                idx = x.reshape(1, -1).expand(self.count, -1)
                self.calls.append((slots, out.grad_fn))
                self.handles.append(node.register_prehook(partial(self.shared_hook, mod, slots, idx)))
            elif x.dim() == 1 and x.shape[0] == self.count and out.shape[0] == self.count:
                self.calls.append((slots, out.grad_fn))
                self.handles.append(out.register_hook(partial(self.backward_hook, embedding, mod, slots, x)))
            else:
                self.send((k for _, k in slots), f"{type(mod).__name__} is called without a batch dim and its "
                                                 "output is not added to a batched tensor")

    def broadcast_parameters(self, root) -> None:
        """Parameters without a rule that are added by broadcast over the examples (``broadcast_add``): a pre-hook on
        the add takes δ_i per example, and |g_i|² of the parameter from it (autograd still forms Σ_i g_i)."""
        leaves, users = _consumers(root)
        for k in sorted(self.ruleless & set(self.why)):
            found = broadcast_add(self.params[k], leaves, users, self.count)
            if found is None:
                continue
            node, shape, cut = found
            del self.why[k]
            self.expected[k] = 1
            self.handles.append(node.register_prehook(partial(self.broadcast_hook, k, shape, cut)))

    def broadcast_hook(self, k: int, shape: tuple, cut, grad_outputs) -> None:
        if not self.armed or grad_outputs[0] is None:
            return
        d = grad_outputs[0] if cut is None else grad_outputs[0].narrow(*cut)
        with torch.autocast(d.device.type, enabled=False) if _autocast_on(d.device.type) else nullcontext():
            flat = per_example_broadcast(_wide(d), shape).reshape(-1)
            self.parts.append((k, torch.dot(flat, flat)))

    def shared_hook(self, mod, slots, idx, grad_outputs):
        if grad_outputs[0] is not None:
            self.backward_hook(embedding, mod, slots, idx, grad_outputs[0])

    def module_call(self, mod, call, out):
        """A module rule's call was recorded: hook every tensor whose δ it needs."""
        _, slots = self.owned[mod]
        out = out[0] if isinstance(out, tuple) else out
        if not (isinstance(out, Tensor) and out.requires_grad):
            return
        if isinstance(call, str) or call.count != self.count or id(mod) in self.seq_first:
            reason = call if isinstance(call, str) else "the examples are not on the batch dim"
            self.send((k for _, k in slots), f"{type(mod).__name__}: {reason}")
            return
        self.calls.append((slots, out.grad_fn))
        named = dict(slots)
        for weight, bias in getattr(call, "explicit", list)():
            if weight in named:
                self.explicit[named[weight]] = named.get(bias)
        left = [len(call.sites)]
        for site in call.sites:
            self.handles.append(site[0].register_hook(partial(self.site_hook, call, site, slots, left)))

    def site_hook(self, call, site, slots, left, d):
        if not self.armed:
            return
        if not _autocast_on(d.device.type):
            self._site(call, site, slots, left, d)
            return
        with torch.autocast(d.device.type, enabled=False):
            self._site(call, site, slots, left, d)

    def _site(self, call, site, slots, left, d):
        call.take(site, _wide(d))
        left[0] -= 1
        if left[0] == 0:
            self.take(call.mod, call.finish(), slots)

    def check_uses(self, losses: Tensor) -> None:
        """Send to the fallback every parameter whose graph uses differ from the hooked calls reaching the loss."""
        uses, seen, consumers = _graph_uses(losses.grad_fn, [out.grad_fn for _, _, _, out in self.shared])
        self.live = set(seen) | {losses.grad_fn}
        for k in [k for k in self.why if uses[id(self.params[k])] == 0]:  # unused: every g_i is zero, no fallback
            del self.why[k]
        if self.shared:
            self.broadcast_embeddings(consumers)
        if self.ruleless & set(self.why):
            self.broadcast_parameters(losses.grad_fn)
        for slots, fn in self.calls:
            if fn in seen or fn is losses.grad_fn:
                self.expected.update(k for _, k in slots)
        for k, p in enumerate(self.params):
            if k not in self.why and uses[id(p)] != self.expected[k]:
                self.send([k], f"used {uses[id(p)]} time(s) in the graph but seen in {self.expected[k]} hooked "
                               "call(s) (applied functionally, or outside its layer)")

    def backward_hook(self, rule, mod, slots, x, d):
        if not self.armed:  # a backward pass bsprof did not start
            return
        if rule is conv and any(k in self.reuse for n, k in slots if n == "weight"):
            rule = partial(conv, reused=True)
        if not _autocast_on(d.device.type):
            self.take(mod, rule(mod, _wide(x), _wide(d)), slots)
            return
        with torch.autocast(d.device.type, enabled=False):
            self.take(mod, rule(mod, _wide(x), _wide(d)), slots)

    def rows_hook(self, rule, mod, slots, x, d):
        """A Linear (or HF Conv1D) on [B, in]: g_i = δ_i x_iᵀ, so |g_i|² = |δ_i|²|x_i|² for the weight and |δ_i|²
        for the bias, by two norm reductions and two B-long dot products (the rule's general path, when a
        parameter is used more than once, after the same checks)."""
        if not self.armed:
            return
        if any(self.expected[k] != 1 or k in self.reuse for _, k in slots):
            self.backward_hook(rule, mod, slots, x, d)
            return
        if _autocast_on(d.device.type):
            with torch.autocast(d.device.type, enabled=False):
                self._rows(slots, _wide(x), _wide(d))
        else:
            self._rows(slots, _wide(x), _wide(d))

    def _rows(self, slots, x: Tensor, d: Tensor) -> None:
        a = torch.linalg.vector_norm(d, dim=1)
        for name, k in slots:
            if k in self.why:
                continue
            if name == "bias":
                self.parts.append((k, torch.dot(a, a)))
            else:
                ab = a * torch.linalg.vector_norm(x, dim=1)
                self.parts.append((k, torch.dot(ab, ab)))

    def take(self, mod, found: dict, slots) -> None:
        """One call's per-example pieces {name: piece} → squared norms (cross terms once all uses are in)."""
        for name, k in slots:
            if k in self.why:
                continue
            if name not in found:
                raise BsprofError(f"the per-example rule for {type(mod).__name__} returned no gradient for its "
                                  f"parameter {name!r} (it returned {sorted(found)})",
                                  "a rule must return every trainable parameter of its module")
            shape = self.params[k].shape
            piece = found[name]
            if isinstance(piece, Tensor) and piece.shape[1:] != shape:  # a wrong shape would be summed silently
                raise BsprofError(
                    f"the per-example rule for {type(mod).__name__} returned a gradient of shape "
                    f"{list(piece.shape)} for its parameter {name!r}, whose shape is {list(shape)}: per-example "
                    f"gradients are [B, *param.shape] = [B, {', '.join(map(str, shape))}]".replace(", ]", "]"),
                    "return one gradient per example (sum over the other dims, e.g. tokens, inside the rule); "
                    "check the rule against torch.func with bsprof.probes.check_rule(module, x)")
            if k in self.reuse:  # the explicit per-example gradients give both numbers
                self.pending[k].append(found[name])
                if len(self.pending[k]) == self.expected[k]:
                    pieces = self.pending.pop(k)
                    g = (explicit(pieces[0], shape, self.scratch) if len(pieces) == 1
                         else explicit_sum(pieces, shape, self.scratch))
                    flat = g.reshape(-1)
                    self.parts.append((k, torch.dot(flat, flat)))
                    self.sums[k] = g.sum(0)
                continue
            if self.expected[k] == 1:
                self.parts.append((k, sq_sum(found[name], shape, self.scratch)))
                continue
            self.pending[k].append(found[name])
            if len(self.pending[k]) == self.expected[k]:
                self.parts.append((k, total_sq_sum(self.pending.pop(k), shape, self.scratch)))


class _Tap(torch.autograd.Function):
    """Identity, in place, on a hooked layer's output: its backward hands δ to ``hook`` and passes it on. Its second
    input, a leaf among ``autograd.grad``'s inputs, keeps it on autograd's path even when nothing is wanted from
    the layer's own backward (every parameter's Σ_i g_i taken from the per-example gradients, no δ needed
    below), which then does not run at all."""

    @staticmethod
    def forward(ctx, out, anchor, hook):
        ctx.hook = hook
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, d):
        ctx.hook(d)
        return d, None, None


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this device type (True where torch cannot say: the hook then turns it off)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return True


class _Undo:
    """A handle that undoes a module rule's ``install`` of one sink (other sinks on the module stay)."""

    def __init__(self, rule, mod, sink):
        self.rule, self.mod, self.sink = rule, mod, sink

    def remove(self) -> None:
        self.rule.remove(self.mod, self.sink)


def _wide(t: Tensor) -> Tensor:
    """At least float32 for the norm arithmetic (fp16/bf16 squares overflow or lose digits)."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def _fallback_sq(model: nn.Module, loss_fn: LossFn, batch, names: list[str], params: list[Tensor],
                 chosen: list[int], count: int) -> Tensor:
    """Σ_i |g_i|² of the ``chosen`` parameters only: torch.func where it can batch the model, else a loop."""
    try:
        with quiet_fallbacks():
            return _vmap_sq(model, loss_fn, batch, names, params, chosen)
    except (RuntimeError, ValueError):  # no batching rule (nn.GRU's in-place hidden state under vmap), or a batch
        #                                   with plain values vmap cannot map (a collate's list of lengths)
        return _loop_sq(model, loss_fn, batch, [params[k] for k in chosen], count)


def _loop_sq(model: nn.Module, loss_fn: LossFn, batch, chosen: list[Tensor], count: int) -> Tensor:
    """Σ_i |g_i|² one example at a time: B backward passes, works for every model."""
    sq = torch.zeros(len(chosen), dtype=accum_dtype(chosen[0].device), device=chosen[0].device)
    for i in range(count):
        one = _rows(batch, i, i + 1)
        loss = per_example_losses(model, loss_fn, one, 1)[0]
        grads = torch.autograd.grad(loss, chosen, allow_unused=True, materialize_grads=True)
        sq += torch.stack([g.to(sq.dtype).square().sum() for g in grads])
    return sq


def _vmap_sq(model: nn.Module, loss_fn: LossFn, batch, names: list[str], params: list[Tensor],
             chosen: list[int]) -> Tensor:
    """Σ_i |g_i|² of the ``chosen`` parameters, by vmap over grad of one example."""
    objective = _Objective(model, loss_fn)
    sub = {"model." + names[k]: params[k].detach() for k in chosen}

    def one(weights, example):
        single = tree_map(lambda x: x.unsqueeze(0) if isinstance(x, Tensor) else x, example)
        return functional_call(objective, weights, (single,))

    with torch.no_grad():  # torch.func.grad still differentiates ``sub``; the other weights stay untracked
        grads = vmap(grad(one), in_dims=(None, 0), randomness="different")(sub, batch)
    dtype = accum_dtype(params[0].device)
    return torch.stack([g.to(dtype).square().sum() for g in grads.values()])


def per_example_hooks(model: nn.Module, loss_fn: LossFn, batch, count: int, *,
                      loss_scale: float = 1.0, strict: bool = False) -> ChunkStats:
    """Σ_i g_i and [P] Σ_i |g_i|² per trainable parameter from one backward pass of Σ_i ℓ_i.

    ``loss_scale`` (an AMP loss scale, as torch.amp.GradScaler uses) multiplies the loss before the backward
    pass, against fp16 underflow; it is removed again: gradients are divided by it, squared norms by its square.
    Norms are taken in float32 or wider and accumulated in float64 (``accum_dtype``).

    Parameters measured by the torch.func fallback are named, with the reason, in ``ChunkStats.fallbacks``
    ({name: reason}, None when there are none). ``strict=True`` raises ``BsprofError`` listing them instead
    (before the backward pass), for a model that must be measured at hook speed.
    """
    coupled = batch_coupled(model)
    if coupled:
        norms = any("Embedding" not in name for name in coupled)
        raise ConfigError(f"{coupled_reason(coupled)}: per-example gradients are undefined",
                          "use --method microbatch" + (" (or, if BatchNorm should use its running statistics, put "
                                                       "those layers in eval() inside model(): bsprof keeps the "
                                                       "modes model() gives its submodules)" if norms else ""))
    names, params = trainable(model)
    state, losses = _traced(model, loss_fn, batch, count, names, params)
    try:
        if strict and state.why:
            raise BsprofError(f"{len(state.why)} parameter(s) would be measured by the slow torch.func fallback: "
                              + fallback_text({names[k]: r for k, r in state.why.items()}),
                              "register a rule for the layer (bsprof.probes.register_rule), or drop strict to "
                              "accept the fallback")
        state.choose_reuse()
        state.armed = True
        total = losses.sum()
        rest = [k for k in range(len(params)) if k not in state.reuse]
        inputs = [params[k] for k in rest] + ([state.anchor] if state.anchor is not None else [])
        found = torch.autograd.grad(total * loss_scale if loss_scale != 1.0 else total, inputs,
                                    allow_unused=True, materialize_grads=True)
        grads = [None] * len(params)
        for k, g in zip(rest, found):
            grads[k] = g.to_dense() if g.is_sparse else g  # Embedding(sparse=True): dense sums downstream
        for k in state.reuse:
            grads[k] = state.sums[k].to(params[k].dtype)
    finally:
        state.armed = False
        for h in state.handles:
            h.remove()
    dtype = accum_dtype(losses.device)
    sq = torch.zeros(len(params), dtype=dtype, device=losses.device)
    if state.parts:
        ks, parts = zip(*state.parts)
        sq.index_add_(0, torch.tensor(ks).to(sq.device, non_blocking=True), torch.stack(parts).to(dtype))
    if loss_scale != 1.0:
        grads = [g / loss_scale for g in grads]
        sq = sq / loss_scale ** 2
    fallbacks = None
    if state.why:
        chosen = sorted(state.why)
        sq[chosen] = _fallback_sq(model, loss_fn, batch, names, params, chosen, count)
        fallbacks = {names[k]: state.why[k] for k in chosen}
    return ChunkStats(list(grads), sq, count, total.detach(), count, fallbacks=fallbacks)


def _traced(model: nn.Module, loss_fn: LossFn, batch, count: int, names, params) -> tuple[_Pass, Tensor]:
    """The forward pass with the layers hooked: the pass state (calls seen, parameters sent to the fallback, the
    output hooks waiting for a backward in ``state.handles``) and the per-example losses. On an error every hook is
    removed."""
    state = _Pass(model, names, params, count)
    state.seq_first = not_batch_first(model, loss_fn, batch, count, state.owned)
    handles = state.install()
    try:
        losses = per_example_losses(model, loss_fn, batch, count)
        for h in handles:
            h.remove()
        state.check_uses(losses)
    except BaseException:
        for h in handles + state.handles:
            h.remove()
        raise
    return state, losses


def fallbacks(model: nn.Module, loss_fn: LossFn, batch, count: int) -> dict[str, str]:
    """{name: reason} for the parameters ``per_example_hooks`` would measure by torch.func on this batch (one
    forward pass with the hooks in place, no backward); empty when every parameter is measured at hook speed."""
    names, params = trainable(model)
    state, _ = _traced(model, loss_fn, batch, count, names, params)
    for h in state.handles:
        h.remove()
    return {names[k]: state.why[k] for k in sorted(state.why)}


def fallback_text(fallbacks: dict[str, str], limit: int = 6) -> str:
    """'name (reason); …' for the parameters measured by torch.func, grouped by reason."""
    by = defaultdict(list)
    for name, reason in fallbacks.items():
        by[reason].append(name)
    parts = [f"{', '.join(ns[:limit])}{' …' if len(ns) > limit else ''} ({reason})" for reason, ns in by.items()]
    return "; ".join(parts)


def check_rule(module: nn.Module, *inputs: Tensor, rtol: float = 1e-6) -> dict[str, float]:
    """Check the per-example rules of ``module``'s layers (``register_rule``) against torch.func, in float64.

    With ``inputs`` (examples on dim 0) and a fixed random r_i the size of the output, the per-example loss
    ℓ_i = ⟨f(x_i), r_i⟩ exercises every output; Σ_i |g_i|² per parameter by the hooks (strict: no fallback) is
    compared with torch.func's. Returns {parameter: relative error}; raises ``BsprofError`` naming the parameters
    off by more than ``rtol``. The module is copied; it is not changed.

        from bsprof.probes import check_rule, register_rule
        register_rule(Scale, scale_rule)
        check_rule(Scale(16), torch.randn(4, 8, 16))
    """
    import copy

    model = copy.deepcopy(module).double()
    xs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    count = xs[0].shape[0]
    with torch.no_grad():
        out = model(*xs)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(m, batch):
        return (m(*batch[:-1]) * batch[-1]).reshape(len(batch[-1]), -1).sum(1)

    names, _ = trainable(model)
    got = per_example_hooks(model, loss, (*xs, r), count, strict=True).small_sq_sum
    want = per_example_vmap(model, loss, (*xs, r), count).small_sq_sum
    err = {n: abs(g - w) / max(abs(w), 1e-300) for n, g, w in zip(names, got.tolist(), want.tolist(), strict=True)}
    off = {n: e for n, e in err.items() if not e <= rtol}
    if off:
        raise BsprofError("per-example rule(s) disagree with torch.func: " + ", ".join(
            f"{n} (Σ_i |g_i|² off by {e:.2g} relative)" for n, e in off.items()),
            "fix the rule: it must return each example's own gradient, [B, *param.shape]")
    return err
