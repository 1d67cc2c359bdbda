"""Per-layer rules for per-example gradients, from a layer's input and the gradient w.r.t. its output.

A rule maps (module, x, δ) to {parameter name: per-example gradient} for the module's trainable parameters, where
x is the module's input and δ = ∂(Σ_i ℓ_i)/∂output, both with the examples on dim 0. Since ℓ_i depends only on
example i, δ_i = ∂ℓ_i/∂output_i, and the per-example gradient of a weight is a sum of outer products
(Goodfellow 2015, arXiv 1510.01799):

    g_i = Σ_t u_it v_itᵀ = U_iᵀ V_i          (t runs over positions: tokens, pixels; one group at a time)

held as ``Factored(u, v)``. Its squared norm is taken in whichever form is cheaper (``sq_sum``):
    explicit: |U_iᵀ V_i|²,                 cost ≈ T·m·n per example, memory m·n (transient, one layer)
    ghost:    ⟨U_i U_iᵀ, V_i V_iᵀ⟩_F,      cost ≈ T²·(m+n), memory T² (Li et al. 2022, arXiv 2110.05679 §4)
and with T = 1 (no sequence) it is |u_i|²·|v_i|². Small gradients (biases, norm weights) are held explicitly
as a tensor [B, *shape]. Two uses of one parameter (tied weights) add: |g¹+g²|² = |g¹|² + |g²|² + 2⟨g¹, g²⟩,
with the cross term ⟨U¹ᵢᵀV¹ᵢ, U²ᵢᵀV²ᵢ⟩ = ⟨U¹ᵢU²ᵢᵀ, V¹ᵢV²ᵢᵀ⟩_F also taken in the cheaper form (``inner_sum``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

ONEHOT_GHOST_MAX_T = 64  # above this many positions (or with more rows than positions) an embedding's norm goes
#                          through a sort (``_onehot_sq_sum``): ~0.7 ms against 0.9–1.6 ms explicit for vocabularies of
#                          256–1,000 at 16 × 64 tokens (CPU, cold cache)


@dataclass(frozen=True)
class Factored:
    """g_i = Σ_t u_it v_itᵀ per group. u: [B, G, T, m] dense, or [B, G, T] integer rows of a one-hot of width m;
    v: [B, G, T, n]. The explicit gradient [B, G, m, n] reshapes to [B, *param.shape]."""

    u: Tensor
    v: Tensor
    m: int

    @property
    def onehot(self) -> bool:
        return not self.u.is_floating_point()


# ---------------------------------------------------------------- norms and inner products

class Scratch:
    """One reusable buffer per (dtype, device) for the explicit per-example gradients of one backward pass, formed
    one layer after another and each consumed (normed, summed) before the next is formed, instead of a fresh
    [B, m, n] buffer per layer (page faults on the CPU, where glibc can hand blocks of this size back to the system
    on free; the gain was not resolved by paired runs on a 2-core CPU, docs/speed.md). A view from ``empty`` is
    valid until the next ``empty``: never keep one."""

    def __init__(self):
        self._buffers: dict = {}

    def empty(self, shape: tuple, like: Tensor) -> Tensor:
        n = math.prod(shape)
        key = (like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            self._buffers[key] = None  # the old buffer goes before the new one is allocated
            buf = self._buffers[key] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


def explicit(c: Factored | Tensor, shape: torch.Size, scratch: Scratch | None = None) -> Tensor:
    """The per-example gradient [B, *shape]: U_iᵀ V_i (a scatter for one-hot rows); dense ones formed in
    ``scratch`` when given (valid until its next use)."""
    if isinstance(c, Tensor):
        return c
    B, G, T, n = c.v.shape
    if c.onehot:
        out = c.v.new_zeros(B, G, c.m, n)
        out.scatter_add_(2, c.u.unsqueeze(-1).expand(B, G, T, n), c.v)
        return out.reshape(B, *shape)
    # bmm, not einsum: einsum copied an operand first, ~20% slower here (CPU, [16, 64, 256] factors)
    u, v = c.u.flatten(0, 1).transpose(1, 2), c.v.flatten(0, 1)
    if scratch is None or torch.is_grad_enabled() and (u.requires_grad or v.requires_grad):  # out= has no autograd
        return torch.bmm(u, v).reshape(B, *shape)
    return torch.bmm(u, v, out=scratch.empty((B * G, c.m, n), v)).view(B, *shape)


def _gram_u(a: Factored, b: Factored) -> Tensor:
    """(U_a U_bᵀ) [B, G, Ta, Tb]; for one-hot rows it is an equality test or a gather."""
    if a.onehot and b.onehot:
        return (a.u.unsqueeze(-1) == b.u.unsqueeze(-2)).to(a.v.dtype)
    if b.onehot:
        return _gram_u(b, a).transpose(-1, -2)
    if a.onehot:  # (U_a U_bᵀ)_{ts} = u_b,s[idx_a,t]
        B, G, Tb, _ = b.u.shape
        idx = a.u.unsqueeze(-2).expand(B, G, Tb, a.u.shape[-1])
        return b.u.gather(-1, idx).transpose(-1, -2)
    return a.u @ b.u.transpose(-1, -2)


def _costs(a: Factored, b: Factored) -> tuple[float, float]:
    """(explicit, ghost) multiply-adds per example and group of ⟨g_a, g_b⟩."""
    ta, tb, m, n = a.v.shape[2], b.v.shape[2], a.m, a.v.shape[-1]
    expl = m * n * (2 + (0 if a.onehot else ta) + (0 if b.onehot else tb))
    ghost = ta * tb * (n + (0 if a.onehot or b.onehot else m))
    return expl, ghost


def _ghost_pair(a: Factored | Tensor, b: Factored | Tensor) -> bool:
    """Whether ⟨g_a, g_b⟩ is cheaper in the ghost form than with both gradients formed explicitly."""
    same = (isinstance(a, Factored) and isinstance(b, Factored) and a.m == b.m
            and a.v.shape[:2] == b.v.shape[:2] and a.v.shape[-1] == b.v.shape[-1])
    if not same:
        return False
    expl, ghost = _costs(a, b)
    return ghost < expl


def inner_sum(a: Factored | Tensor, b: Factored | Tensor, shape: torch.Size) -> Tensor:
    """Σ_i ⟨g_a,i, g_b,i⟩ in the cheaper of the explicit and the ghost form."""
    if _ghost_pair(a, b):
        return (_gram_u(a, b) * (a.v @ b.v.transpose(-1, -2))).sum()
    return (explicit(a, shape) * explicit(b, shape)).sum()


def _onehot_sq_sum(c: Factored) -> Tensor:
    """Σ_i Σ_rows |Σ_{t: idx_t = row} v_t|², grouping equal (example, group, row) keys by a sort: O(B·T·n)."""
    B, G, T, n = c.v.shape
    key = (torch.arange(B * G, device=c.u.device).view(B, G, 1) * c.m + c.u).reshape(-1)
    uniq, inverse = torch.unique(key, return_inverse=True)
    rows = c.v.new_zeros(uniq.numel(), n).index_add_(0, inverse, c.v.reshape(-1, n))
    return _sq(rows)


def _sq(t: Tensor) -> Tensor:
    """|t|² as one BLAS dot (few kernel launches matter on the hot path)."""
    flat = t.reshape(-1)
    return torch.dot(flat, flat)


def sq_sum(c: Factored | Tensor, shape: torch.Size, scratch: Scratch | None = None) -> Tensor:
    """Σ_i |g_i|²: |u_i|²|v_i|² when T = 1, else the cheaper of the explicit (formed in ``scratch``, when given)
    and ghost forms."""
    if isinstance(c, Tensor):
        return _sq(c)
    T = c.v.shape[2]
    if c.onehot and T == 1:
        return _sq(c.v)
    if T == 1:  # |u_i|·|v_i| by two norm reductions (no [B, m] temporary, as a product-and-sum would allocate)
        uv = (torch.linalg.vector_norm(c.u, dim=-1) * torch.linalg.vector_norm(c.v, dim=-1)).reshape(-1)
        return torch.dot(uv, uv)
    if c.onehot and (T > ONEHOT_GHOST_MAX_T or c.m > T):  # more rows than positions: g_i is mostly zero rows
        return _onehot_sq_sum(c)
    m, n = c.m, c.v.shape[-1]
    if c.onehot and T * T * n < m * n or not c.onehot and not _linear_explicit(m, n, T):
        v = c.v.flatten(0, 1)
        gu = torch.bmm(c.u.flatten(0, 1), c.u.flatten(0, 1).transpose(1, 2)) if not c.onehot else _gram_u(c, c)
        return torch.dot(gu.reshape(-1), torch.bmm(v, v.transpose(1, 2)).reshape(-1))
    return _sq(explicit(c, (c.v.shape[1], m, n), scratch))  # a dot product: no squared temporary of every g_i


def explicit_sum(parts: list[Factored | Tensor], shape: torch.Size, scratch: Scratch | None = None) -> Tensor:
    """Σ_k g_k,i per example [B, *shape], built in one buffer (``scratch``'s, when given and the first part is
    dense): the first dense part by bmm, the others added in place (``baddbmm_``; one-hot parts scattered in), so
    no part's explicit gradient is held beside the sum."""
    parts = sorted(parts, key=lambda p: isinstance(p, Factored) and p.onehot)  # one-hot last: a dense buffer first
    B = parts[0].shape[0] if isinstance(parts[0], Tensor) else parts[0].v.shape[0]
    out = None
    for p in parts:
        if isinstance(p, Tensor):
            out = p.reshape(B, -1).clone() if out is None else out.add_(p.reshape(B, -1))
            continue
        _, G, T, n = p.v.shape
        if p.onehot:
            if out is None:
                out = p.v.new_zeros(B, G * p.m * n)
            out.view(B, G, p.m, n).scatter_add_(2, p.u.unsqueeze(-1).expand(B, G, T, n), p.v)
        elif out is None:
            out = explicit(p, shape, scratch).reshape(B, -1)
        else:
            out.view(B * G, p.m, n).baddbmm_(p.u.flatten(0, 1).transpose(1, 2), p.v.flatten(0, 1))
    return out.view(B, *shape)


def _form_cost(c: Factored | Tensor) -> float:
    """Multiply-adds per example to form g_i explicitly (``explicit_sum``)."""
    if isinstance(c, Tensor):
        return 0.0
    G, T, n = c.v.shape[1:]
    return G * T * n * (1 if c.onehot else c.m)


def _sq_cost(c: Factored | Tensor) -> float:
    """Multiply-adds per example of ``sq_sum``, in the form it chooses."""
    if isinstance(c, Tensor):
        return c[0].numel()
    G, T, n = c.v.shape[1:]
    m = c.m
    if T == 1:
        return G * (n if c.onehot else m + n)
    if c.onehot:
        return G * (T * n if T > ONEHOT_GHOST_MAX_T or m > T else min(T * T * n, m * n + T * n))
    return G * (T * m * n + m * n if _linear_explicit(m, n, T) else T * T * (m + n))


def _pair_cost(a: Factored | Tensor, b: Factored | Tensor) -> float:
    """Multiply-adds per example of ``inner_sum`` (either form's; G groups)."""
    if _ghost_pair(a, b):
        return a.v.shape[1] * _costs(a, b)[1]
    size = a[0].numel() if isinstance(a, Tensor) else a.v.shape[1] * a.m * a.v.shape[-1]
    return _form_cost(a) + _form_cost(b) + 2 * size


def total_sq_sum(parts: list[Factored | Tensor], shape: torch.Size, scratch: Scratch | None = None) -> Tensor:
    """Σ_i |Σ_k g_k,i|² over the uses k of one parameter (K of them): the norm of the explicit sum (each part
    formed once, into one buffer), or the norms plus twice the cross terms, whichever costs fewer multiply-adds:
    Σ_k form_k + (K + 1)·|g| against Σ_k sq_k + Σ_{j<k} pair_jk."""
    if len(parts) > 1:
        size = math.prod(shape)
        whole = sum(_form_cost(p) for p in parts) + (len(parts) + 1) * size
        split = sum(_sq_cost(p) for p in parts) + sum(_pair_cost(parts[j], parts[k])
                                                        for j in range(len(parts)) for k in range(j))
        if whole <= split:
            return _sq(explicit_sum(parts, shape, scratch))
    total = sum(sq_sum(p, shape, scratch) for p in parts)
    for j in range(len(parts)):
        for k in range(j):
            total = total + 2 * inner_sum(parts[j], parts[k], shape)
    return total


# ---------------------------------------------------------------- rules

def _wanted(mod: nn.Module, name: str) -> bool:
    p = getattr(mod, name, None)
    return isinstance(p, nn.Parameter) and p.requires_grad


def linear(mod: nn.Linear, x: Tensor, d: Tensor) -> dict:
    """W: g_i = Σ_t δ_it a_itᵀ over any leading dims; b: Σ_t δ_it."""
    B = x.shape[0]
    d = d.reshape(B, 1, -1, d.shape[-1])
    out = {"weight": Factored(d, x.reshape(B, 1, -1, x.shape[-1]), d.shape[-1])} if _wanted(mod, "weight") else {}
    if _wanted(mod, "bias"):
        out["bias"] = d[:, 0, 0] if d.shape[2] == 1 else d.sum((1, 2))
    return out


def _padded(mod: nn.modules.conv._ConvNd, x: Tensor) -> tuple[Tensor, tuple]:
    """The input padded as the conv pads it, or left as is with the conv's symmetric zero padding."""
    pad = mod._reversed_padding_repeated_twice
    if mod.padding_mode == "zeros" and all(pad[i] == pad[i + 1] for i in range(0, len(pad), 2)):
        return x, tuple(pad[::2][::-1])
    return F.pad(x, pad, mode="constant" if mod.padding_mode == "zeros" else mod.padding_mode), (0,) * len(pad[::2])


def conv_per_example(mod: nn.modules.conv._ConvNd, x: Tensor, d: Tensor) -> Tensor:
    """All per-example weight gradients [B, *W.shape], g_i[o, c, k] = Σ_l δ_i[o, l] x_i[c, s·l + r·k] (stride s,
    dilation r, x padded), formed the faster of two exact ways for the call's shapes, timed once per shape
    (``_conv_form``): the grouped weight-gradient convolution (``conv_grouped``) is the faster on most layers, the
    forward one (``conv_forward``) on a network's first layers, where C_in is 1–3 (on a 2-core CPU 0.9 against 2.1 ms
    for 1 → 16 channels at 28 × 28, 3.6 against 10 ms for 3 → 16 at 32 × 32, batch 128; docs/speed.md)."""
    return _conv_form(mod, x, d)(mod, x, d)


def conv_grouped(mod: nn.modules.conv._ConvNd, x: Tensor, d: Tensor) -> Tensor:
    """``conv_per_example`` as ONE weight-gradient convolution with the examples as groups (Rochette et al. 2019,
    arXiv 1912.06015): input [1, B·C_in, …], δ [1, B·C_out, …], groups B·G."""
    B, G = x.shape[0], mod.groups
    x, padding = _padded(mod, x)
    shape = (B * mod.out_channels,) + tuple(mod.weight.shape[1:])
    gw = torch.ops.aten.convolution_backward(
        d.reshape(1, -1, *d.shape[2:]), x.reshape(1, -1, *x.shape[2:]), x.new_empty(1).expand(shape), None,
        mod.stride, padding, mod.dilation, False, (0,) * len(padding), B * G, (False, True, False))[1]
    return gw.reshape(B, *mod.weight.shape)


def conv_forward(mod: nn.modules.conv._ConvNd, x: Tensor, d: Tensor) -> Tensor:
    """``conv_per_example`` (ungrouped convs) as ONE forward convolution of the input with δ as the kernel: the
    channels of x as its batch ([C_in, B, …]), the examples as groups (δ [B·C_out, 1, …], groups B), the stride s
    as its dilation and the dilation r as its stride; the output's first k positions per axis are g."""
    B, nd, k = x.shape[0], x.dim() - 2, mod.kernel_size
    x, padding = _padded(mod, x)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    g = conv(x.transpose(0, 1), d.reshape(B * mod.out_channels, 1, *d.shape[2:]), None, mod.dilation, padding,
             mod.stride, B)
    g = g[(...,) + tuple(slice(0, n) for n in k)].reshape(mod.in_channels, B, mod.out_channels, *k)
    return g.permute(1, 2, 0, *range(3, 3 + nd))


_CONV_FORMS: dict = {}  # (shapes, conv geometry, device, dtype) -> the faster form, timed on first use
FORWARD_MARGIN = 1.2  # the forward form is taken when at least this much faster (it was 1.3–2.8× on first layers)
_CONV_FORMS_MAX = 512  # shapes timed per process; beyond (inputs of ever new sizes) the grouped form, untimed


def _conv_form(mod: nn.modules.conv._ConvNd, x: Tensor, d: Tensor):
    """The faster of ``conv_grouped`` and ``conv_forward`` for this call's shapes: each run twice on the call's own
    tensors the first time the shapes are seen (a few ms, once), the second run timed; the forward form only when
    it is at least ``FORWARD_MARGIN`` × faster, so that a near tie, which gains nothing, does not flip between runs.
    Both are exact; their sums differ in the last bits, so under ``torch.use_deterministic_algorithms(True)``
    (numbers that repeat to the bit) and for grouped convs (``groups`` > 1) the grouped form is taken, untimed."""
    if mod.groups > 1 or torch.are_deterministic_algorithms_enabled():
        return conv_grouped
    key = (tuple(x.shape), tuple(d.shape), mod.kernel_size, mod.stride, mod.dilation, mod.padding_mode,
           tuple(mod._reversed_padding_repeated_twice), x.device, x.dtype)
    form = _CONV_FORMS.get(key)
    if form is None and len(_CONV_FORMS) >= _CONV_FORMS_MAX:
        return conv_grouped
    if form is None:
        grouped, forward = (_seconds(f, mod, x, d) for f in (conv_grouped, conv_forward))
        form = _CONV_FORMS[key] = conv_forward if forward * FORWARD_MARGIN <= grouped else conv_grouped
    return form


def _seconds(form, mod: nn.modules.conv._ConvNd, x: Tensor, d: Tensor) -> float:
    """Wall seconds of ``form``'s second run (the first warms caches and allocations), synchronised on a GPU."""
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.is_cuda else (lambda: None)
    form(mod, x, d)
    sync()
    start = time.perf_counter()
    form(mod, x, d)
    sync()
    return time.perf_counter() - start


def unfold(mod: nn.modules.conv._ConvNd, x: Tensor) -> Tensor:
    """Patches [B, C_in·K, L] of a 1/2/3-d conv input, with the conv's padding, stride and dilation."""
    pad, nd = mod._reversed_padding_repeated_twice, x.dim() - 2
    zeros = mod.padding_mode == "zeros"
    if nd == 2 and zeros and pad[0] == pad[1] and pad[2] == pad[3]:
        return F.unfold(x, mod.kernel_size, mod.dilation, (pad[2], pad[0]), mod.stride)
    if any(pad):
        x = F.pad(x, pad, mode="constant" if zeros else mod.padding_mode)
    for i, (k, s, dl) in enumerate(zip(mod.kernel_size, mod.stride, mod.dilation)):
        x = x.unfold(2 + i, dl * (k - 1) + 1, s)  # window appended as the last dim
    x = x[(...,) + tuple(slice(None, None, dl) for dl in mod.dilation)]
    perm = (0, 1) + tuple(range(2 + nd, 2 + 2 * nd)) + tuple(range(2, 2 + nd))
    return x.permute(perm).reshape(x.shape[0], x.shape[1] * math.prod(mod.kernel_size), -1)


def conv(mod: nn.modules.conv._ConvNd, x: Tensor, d: Tensor, reused: bool = False) -> dict:
    """W (per group): g_i = Σ_l δ_il p_ilᵀ with p_il the unfolded input patch at output position l, explicit
    (``conv_per_example``) where ``conv_explicit`` (``reused``: Σ_i g_i is taken from them), else in the ghost
    form; b: Σ_l δ_il."""
    if _wanted(mod, "weight") and conv_explicit(mod, x, d, reused):
        return {"weight": conv_per_example(mod, x, d), **_conv_bias(mod, d)}
    return _patches(mod, unfold(mod, x) if _wanted(mod, "weight") else None, d, d)


def _patches(mod: nn.modules.conv._ConvNd, cols: Tensor | None, rows: Tensor, d: Tensor) -> dict:
    """W per group as Factored: g_i = Σ_l rows_il cols_ilᵀ (``cols`` [B, ·, L] unfolded patches, ``rows`` [B, ·, *grid]
    at the same L positions; None: W not wanted); b from δ (``_conv_bias``)."""
    out = {}
    if cols is not None:
        B, G, L = cols.shape[0], mod.groups, cols.shape[-1]
        v = cols.reshape(B, G, -1, L).transpose(-1, -2)
        u = rows.reshape(B, G, -1, L).transpose(-1, -2)
        out["weight"] = Factored(u, v, u.shape[-1])
    return {**out, **_conv_bias(mod, d)}


def _conv_bias(mod: nn.Module, d: Tensor) -> dict:
    """b: Σ_l δ_il, over every position of the output."""
    return {"bias": d.reshape(d.shape[0], d.shape[1], -1).sum(-1)} if _wanted(mod, "bias") else {}


def conv_transpose(mod: nn.modules.conv._ConvTransposeNd, x: Tensor, d: Tensor) -> dict:
    """y = conv_transpose(x, W) is the input-gradient of the conv y ↦ conv(y, W) (same kernel, stride, padding,
    dilation, groups; W [C_in, C_out/G, *k]), so ⟨δ, y⟩ = ⟨conv(δ, W), x⟩ and W's per-example gradient is that conv's
    weight gradient with δ as its input and x as its output's gradient: per group, g_i = Σ_l x_il q_ilᵀ with q_il
    the unfolded patch of δ_i at x's position l (output_padding only pads δ past the last patch); b: Σ δ_i."""
    cols = None
    if _wanted(mod, "weight"):
        cols = unfold(mod, d)
        grid = [(n + 2 * p - dl * (k - 1) - 1) // s + 1 for n, p, dl, k, s in
                zip(d.shape[2:], mod.padding, mod.dilation, mod.kernel_size, mod.stride)]
        if grid != list(x.shape[2:]):   # output_padding ≥ stride (allowed below the dilation): patches past x's end
            B, C = cols.shape[:2]
            cols = cols.reshape(B, C, *grid)[(...,) + tuple(slice(0, n) for n in x.shape[2:])].reshape(B, C, -1)
    return _patches(mod, cols, x, d)


def embedding(mod: nn.Embedding, x: Tensor, d: Tensor) -> dict:
    """W: g_i = Σ_t e_{idx_it} δ_itᵀ (one-hot rows), padding_idx rows excluded;
    |g_i|² = Σ_{t,s} [idx_t = idx_s]·⟨δ_t, δ_s⟩."""
    if not _wanted(mod, "weight"):
        return {}
    B = x.shape[0]
    u, v = x.reshape(B, 1, -1), d.reshape(B, 1, -1, d.shape[-1])
    if mod.padding_idx is not None:
        v = v.masked_fill((u == mod.padding_idx).unsqueeze(-1), 0)
    return {"weight": Factored(u, v, mod.num_embeddings)}


def _affine_trailing(mod: nn.Module, xhat: Tensor, d: Tensor, shape) -> dict:
    """γ: Σ_t x̂_it ⊙ δ_it, β: Σ_t δ_it, summed over every dim but the examples and the trailing ``shape``."""
    B, out = xhat.shape[0], {}
    if _wanted(mod, "weight"):
        out["weight"] = (xhat * d).reshape(B, -1, *shape).sum(1)
    if _wanted(mod, "bias"):
        out["bias"] = d.reshape(B, -1, *shape).sum(1)
    return out


def _affine_channels(mod: nn.Module, xhat: Tensor, d: Tensor) -> dict:
    """γ_c: Σ_l x̂_icl δ_icl, β_c: Σ_l δ_icl, channels on dim 1."""
    B, C, out = xhat.shape[0], xhat.shape[1], {}
    if _wanted(mod, "weight"):
        out["weight"] = (xhat * d).reshape(B, C, -1).sum(-1)
    if _wanted(mod, "bias"):
        out["bias"] = d.reshape(B, C, -1).sum(-1)
    return out


def layer_norm(mod: nn.LayerNorm, x: Tensor, d: Tensor, saved: tuple[Tensor, Tensor] | None = None) -> dict:
    """x̂ = (x − mean) / √(var + ε) over the normalized dims; from ``saved`` (mean, 1/√(var + ε)), the statistics
    the forward kept for its backward (``layer_norm_saved``), when given."""
    if saved is not None:
        xhat = (x - saved[0]) * saved[1]
    else:  # F.layer_norm without an affine part is x̂ in one kernel (var_mean over the last dims is ~20x slower)
        xhat = F.layer_norm(x, mod.normalized_shape, None, None, mod.eps)
    return _affine_trailing(mod, xhat, d, mod.normalized_shape)


def layer_norm_saved(out: Tensor):
    """The LayerNorm rule for the call that produced ``out``, with x̂ from the mean and 1/σ its autograd node saved:
    two elementwise ops instead of a second layer_norm kernel (~3× slower on CPU); the plain rule where the node
    is not torch's layer norm backward."""
    fn = out.grad_fn
    if type(fn).__name__ != "NativeLayerNormBackward0":
        return layer_norm
    try:
        saved = (fn._saved_result1, fn._saved_result2)
    except (AttributeError, RuntimeError):
        return layer_norm
    if not all(isinstance(t, Tensor) and t.dim() == out.dim() for t in saved):
        return layer_norm
    return partial(layer_norm, saved=saved)


def rms_norm(mod: nn.RMSNorm, x: Tensor, d: Tensor) -> dict:
    """x̂ = x / √(mean(x²) + ε) over the normalized dims."""
    dims = tuple(range(-len(mod.normalized_shape), 0))
    eps = mod.eps if mod.eps is not None else torch.finfo(x.dtype).eps
    xhat = x * torch.rsqrt(x.square().mean(dims, keepdim=True) + eps)
    return _affine_trailing(mod, xhat, d, mod.normalized_shape)


def group_norm(mod: nn.GroupNorm, x: Tensor, d: Tensor) -> dict:
    """x̂ normalised per (example, group) over the group's channels and positions."""
    return _affine_channels(mod, F.group_norm(x, mod.num_groups, None, None, mod.eps), d)


def batch_norm(mod: _BatchNorm, x: Tensor, d: Tensor) -> dict:
    """Eval mode only: x̂ = (x − running mean) / √(running var + ε) per channel."""
    view = (1, -1) + (1,) * (x.dim() - 2)
    xhat = (x - mod.running_mean.view(view)) * torch.rsqrt(mod.running_var.view(view) + mod.eps)
    return _affine_channels(mod, xhat, d)


class ModuleRule:
    """A rule for a module that applies its parameters inside its own forward (functionally), so that its input
    and output alone do not determine the per-example gradients (``attention.MhaRule``). Instead of being called
    as ``rule(mod, x, δ)``, it

    ``names(mod)``              the parameter names, relative to ``mod`` and children included, that it accounts
                                for; None if it cannot measure this instance (the module then falls back)
    ``install(mod, sink)``      makes each call of ``mod`` report ``sink(mod, call, output)``, where ``call`` is an
                                object with ``count`` (examples), ``sites`` (tuples whose first item is a tensor
                                whose δ is needed), ``take(site, δ)`` and ``finish() -> {name: piece}``, or a
                                string saying why this call cannot be measured (optional ``explicit()``: the
                                (weight, bias) names whose pieces are explicit per-example gradients, whose sum
                                then stands for autograd's weight gradient); several sinks may be
                                installed on one module (a Tracker's and a probe's), each getting its own calls
    ``remove(mod, sink)``       undoes ``install`` of ``sink`` (of every sink when None)
    ``reason(mod)``             optional: why ``names(mod)`` is None, in a few words (for messages)
    """

    def names(self, mod: nn.Module) -> list[str] | None:
        raise NotImplementedError

    def install(self, mod: nn.Module, sink) -> None:
        raise NotImplementedError

    def remove(self, mod: nn.Module, sink=None) -> None:
        raise NotImplementedError


RULES = {
    nn.Linear: linear,
    nn.Conv1d: conv, nn.Conv2d: conv, nn.Conv3d: conv,
    nn.ConvTranspose1d: conv_transpose, nn.ConvTranspose2d: conv_transpose, nn.ConvTranspose3d: conv_transpose,
    nn.Embedding: embedding,
    nn.LayerNorm: layer_norm, nn.GroupNorm: group_norm,
    _BatchNorm: batch_norm,
}
if hasattr(nn, "RMSNorm"):  # torch >= 2.4; on older torch there is no RMSNorm module to measure
    RULES[nn.RMSNorm] = rms_norm
BUILTIN = dict(RULES)  # rules held to the weight/bias naming check in ``rule_for`` (registered ones are not)


def register_rule(module_type: type, rule) -> None:
    """Teach the per-example hooks a layer: ``rule(mod, x, δ) -> {parameter name: per-example gradient}``.

    ``x`` is the layer's first input and δ = ∂(Σ_i ℓ_i)/∂output, both with the examples on dim 0; the rule returns,
    for EVERY trainable direct parameter of ``mod`` (by its name in ``mod.named_parameters(recurse=False)``),
    either the explicit per-example gradient as a tensor [B, *param.shape] or a ``Factored(u, v, m)`` (g_i =
    Σ_t u_it v_itᵀ per group, see ``Factored``), whose squared norm is then taken in the cheaper form. It applies
    to ``module_type`` and its subclasses that keep its ``forward``; a ``ModuleRule`` instance may be given
    instead, for a layer that applies its weights inside its forward. Check a new rule against torch.func
    (``bsprof.probes.vmap.per_example_vmap``) in float64, as tests/test_hooks.py does for the built-in ones.

        from bsprof.probes import register_rule
        register_rule(Scale, lambda mod, x, d: {"gain": (x * d).reshape(x.shape[0], -1, x.shape[-1]).sum(1)})
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_rule: module_type must be an nn.Module subclass, got {module_type!r}")
    if not (callable(rule) or isinstance(rule, ModuleRule)):
        raise TypeError(f"register_rule: rule must be a function (mod, x, d) -> dict or a ModuleRule, got {rule!r}")
    RULES[module_type] = rule
    BUILTIN.pop(module_type, None)
    _BY_CLASS.clear()


def hf_conv1d(mod: nn.Module, x: Tensor, d: Tensor) -> dict:
    """Hugging Face ``Conv1D`` (GPT-2): y = x W + b with W [in, out], a Linear with its weight transposed.
    W: g_i = Σ_t a_it δ_itᵀ; b: Σ_t δ_it."""
    B = x.shape[0]
    x, d = x.reshape(B, 1, -1, x.shape[-1]), d.reshape(B, 1, -1, d.shape[-1])
    out = {"weight": Factored(x, d, x.shape[-1])} if _wanted(mod, "weight") else {}
    if _wanted(mod, "bias"):
        out["bias"] = d[:, 0, 0] if d.shape[2] == 1 else d.sum((1, 2))
    return out


def _linear_explicit(m: int, n: int, T: int) -> bool:
    """Whether ``sq_sum`` takes a dense Factored g_i = Σ_t u_t v_tᵀ (u: m, v: n wide, T terms) explicitly."""
    return T > 1 and not T * T * (n + m) < m * n * (1 + T)


def _reuse_explicit(m: int, n: int, T: int, groups: int, activations: int) -> bool:
    """Whether the explicit form is the cheaper one once its per-example gradients also give Σ_i g_i.

    Formed explicitly, g_i = U_iᵀV_i costs T·m·n per example, the multiply-adds of the weight gradient that autograd
    then skips (``probes.hooks``); what remains is reading them for the norm and the sum, ≈ m·n, taken as 4·m·n
    (batched small products run slower than one large one). The ghost form costs T²·(m + n) on top of autograd's
    weight gradient. Only where the per-example gradients [G, m, n] of one example are at most 4 times its
    activations at the layer (``activations``: input plus output elements), so that the transient stays of the
    order of what the pass holds anyway."""
    return T > 1 and 4 * m * n < T * T * (m + n) and groups * m * n <= 4 * activations


def conv_explicit(mod: nn.modules.conv._ConvNd, x: Tensor, d: Tensor, reused: bool = False) -> bool:
    """Whether ``conv`` forms the per-example weight gradients explicitly: the ghost form is no cheaper, or (when
    their sum is ``reused`` as Σ_i g_i) ``_reuse_explicit``."""
    G = mod.groups
    L, m, n = d[0, 0].numel(), mod.out_channels // G, mod.weight[0].numel()
    return L * (m + n) >= m * n or reused and _reuse_explicit(m, n, L, G, x[0].numel() + d[0].numel())


def explicit_weight(rule, mod: nn.Module, x: Tensor, out: Tensor) -> bool:
    """Whether the per-example weight gradients [B, *W.shape] of this call are (to be) formed explicitly: then
    Σ_i g_i is their sum, and autograd need not compute the weight gradient a second time (``probes.hooks``).
    A conv's rule forms them (``conv_explicit``); a Linear's or Conv1D's, returned factored, are formed when the
    weight's Σ_i g_i is taken from them, else its norm takes the cheaper form (``sq_sum``)."""
    if rule is conv:
        return conv_explicit(mod, x, out, reused=True)
    if rule is linear or rule is hf_conv1d:
        m, n = mod.weight.shape
        return factor_explicit(m, n, x[0].numel() // (n if rule is linear else m), x[0].numel() + out[0].numel())
    return False


def factor_explicit(m: int, n: int, T: int, activations: int) -> bool:
    """Whether a weight used as a linear map (m × n, T positions per example) has its per-example gradients
    formed explicitly, so that they also give Σ_i g_i (``explicit_weight``; MultiheadAttention's projections)."""
    return _linear_explicit(m, n, T) or _reuse_explicit(m, n, T, 1, activations)


# Layers of optional packages, known by (module, class name), so that finding them imports nothing.
BY_NAME = {("transformers.pytorch_utils", "Conv1D"): hf_conv1d}


def _known(cls: type):
    """The rule for exactly this class, or None."""
    if cls in RULES:
        return RULES[cls]
    return BY_NAME.get((cls.__module__, cls.__name__))


_BY_CLASS: dict = {}  # module class -> (rule, the known base class) or None; cleared by ``register_rule``


def _class_rule(kind: type):
    """(rule, class) of the closest known base class of ``kind``, or None (cached per class; an entry whose rule
    has since left ``RULES`` is looked up again)."""
    hit = _BY_CLASS.get(kind, False)
    if hit is False or hit is not None and _known(hit[1]) is not hit[0]:
        _BY_CLASS[kind] = next(((_known(c), c) for c in kind.__mro__ if _known(c) is not None), None)
    return _BY_CLASS[kind]


def rule_for(mod: nn.Module):
    """The rule of the closest known base class, if the module keeps that class's forward, has no other direct
    parameters (built-in rules: only weight and bias), and uses no per-batch gradient rescaling; else None (the
    module goes to the torch.func path). A ``ModuleRule`` decides by its ``names``."""
    found = _class_rule(type(mod))
    if found is None:
        return None
    rule, cls = found
    if isinstance(rule, ModuleRule):
        return rule if rule.names(mod) is not None else None
    if type(mod).forward is not cls.forward:
        return None
    if (cls in BUILTIN or cls not in RULES) and any(n not in ("weight", "bias") and p is not None
                                                    for n, p in mod._parameters.items()):
        return None
    if isinstance(mod, nn.Embedding) and (mod.scale_grad_by_freq or mod.sparse):
        return None
    return rule


from bsprof.probes.attention import MHA  # noqa: E402  (attention.py imports Factored and ModuleRule from here)

RULES[nn.MultiheadAttention] = BUILTIN[nn.MultiheadAttention] = MHA
