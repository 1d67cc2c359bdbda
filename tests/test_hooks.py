"""The hooks probe against the torch.func reference over the shared list of tiny models (tests/models.py)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from models import CASES, make, xent
from torch import nn

from bsprof.errors import BsprofError, ConfigError
from bsprof.probes import PROBES, batch_coupled, check_rule, hooks, layers, register_rule
from bsprof.probes.hooks import losses_mix_examples, per_example_hooks
from bsprof.probes.vmap import per_example_vmap


def assert_close(got, want, rtol=1e-5):
    """Relative error against the reference's scale, per parameter."""
    for a, b in zip(got, want):
        scale = b.abs().max().clamp_min(1e-30)
        assert ((a - b).abs().max() / scale).item() <= rtol, (a, b)


def loop_reference(case):
    """Σ_i |g_i|² and Σ_i g_i one example at a time (for models torch.func cannot batch, e.g. nn.GRU)."""
    params = [p for p in case.model.parameters() if p.requires_grad]
    sq, total = torch.zeros(len(params), dtype=torch.float64), [torch.zeros_like(p) for p in params]
    for i in range(case.count):
        one = tuple(t[i:i + 1] for t in case.batch) if isinstance(case.batch, tuple) else case.batch[i:i + 1]
        grads = torch.autograd.grad(case.loss_fn(case.model, one)[0], params)
        sq += torch.stack([g.square().sum() for g in grads])
        total = [t + g for t, g in zip(total, grads)]
    return sq, total


def checked_ops(case) -> list:
    """The hooks probe on ``case`` under a dispatch recorder, checked against torch.func: every aten call of the
    pass as (op, args, output shape or None)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ops.append((func, args, tuple(out.shape) if isinstance(out, torch.Tensor) else None))
            return out

    want = per_example_vmap(case.model, case.loss_fn, case.batch, case.count)
    with Record():
        got = per_example_hooks(case.model, case.loss_fn, case.batch, case.count)
    assert_close(got.small_sq_sum.unbind(), want.small_sq_sum.unbind())
    assert_close(got.grad_sum, want.grad_sum)
    return ops


def products(ops) -> list:
    """Output shapes of the pass's matrix products (autograd's weight gradients among them)."""
    return [shape for f, _, shape in ops if f in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hooks_match_vmap(name):
    case = make(name)
    if name == "gru":  # torch.func has no batching rule for nn.GRU's in-place hidden state
        sq, total = loop_reference(case)
        got = per_example_hooks(case.model, case.loss_fn, case.batch, case.count)
        assert_close(got.small_sq_sum.unbind(), sq.unbind())
        assert_close(got.grad_sum, total)
        return
    want = per_example_vmap(case.model, case.loss_fn, case.batch, case.count)
    got = per_example_hooks(case.model, case.loss_fn, case.batch, case.count)
    assert got.small_sq_sum.dtype == torch.float64 and got.n_small == got.count == case.count
    assert_close(got.small_sq_sum.unbind(), want.small_sq_sum.unbind())
    assert_close(got.grad_sum, want.grad_sum)
    assert torch.allclose(got.loss_sum, want.loss_sum)


def test_explicit_convs_leave_autograd_no_parameter_gradient():
    """A conv whose per-example gradients are formed explicitly (and used once) gives Σ_i g_i of its weight and
    bias from them: autograd's convolution backward then computes neither (only δ of the input, where needed);
    the numbers still match torch.func."""
    ops = checked_ops(make("cnn_inplace"))
    masks = [tuple(a[10]) for f, a, _ in ops if f is torch.ops.aten.convolution_backward.default and a[9] == 1]
    # c1 (its input needs no δ): no backward at all; c3: δ of its input only; c2, used twice, keeps autograd's weight
    # and bias gradients, and passes δ on (to c1's output, which c1's rule needs)
    assert sorted(masks) == [(True, False, False), (True, True, True), (True, True, True)], masks


def test_attention_projections_leave_autograd_no_weight_gradient():
    """Self-attention's packed projection and out_proj form their per-example gradients explicitly, and their sums
    stand for autograd's weight gradients: no matrix product in the backward has a projection weight's shape
    (only the feed-forward layers' are left, whose shapes differ), and the numbers still match torch.func."""
    case = make("mha_self")
    g = torch.Generator().manual_seed(3)  # 3 × 5 positions: no product of the pass has the shape [3E, E] or [E, E]
    case.batch = tuple(torch.randn(3, 5, 8, generator=g, dtype=torch.float64) for _ in range(2))
    case.count, att = 3, case.model.att
    shapes = products(checked_ops(case))
    weights = {tuple(att.in_proj_weight.shape), tuple(att.out_proj.weight.shape)}
    assert shapes and not weights & set(shapes), shapes


def test_tied_embedding_and_head_leave_autograd_no_weight_gradient():
    """A weight tied across an Embedding and an LM head whose per-example gradients are formed explicitly: their
    sum over the uses (one buffer) gives Σ_i g_i, so autograd computes neither the head's weight gradient nor the
    embedding's backward; the numbers still match torch.func (padding_idx and repeated tokens included)."""
    case = make("tied_lm")
    ops = checked_ops(case)
    tied = tuple(case.model.emb.weight.shape)
    assert products(ops) and tied not in products(ops), products(ops)
    assert not any("embedding_dense_backward" in str(f) for f, _, _ in ops)


def test_registered():
    assert PROBES["hooks"].chunk is per_example_hooks and PROBES["hooks"].per_example


def test_tied_weights_are_not_two_norms():
    """The tied matrix's squared norm is |g_emb + g_head|², not |g_emb|² + |g_head|²."""
    case = make("tied_lm")
    got = per_example_hooks(case.model, case.loss_fn, case.batch, case.count)
    # Untie into two parameters with the same values: the sum of their norms must differ from the tied norm.
    untied = make("tied_lm")
    untied.model.head.weight = nn.Parameter(untied.model.emb.weight.detach().clone())
    split = per_example_hooks(untied.model, untied.loss_fn, untied.batch, untied.count)
    assert not torch.isclose(got.small_sq_sum[0], split.small_sq_sum[0] + split.small_sq_sum[-1], rtol=1e-3)


@pytest.mark.parametrize("form", [0.0, 1e18], ids=["summed-explicitly", "pairwise"])
def test_tied_parts_both_ways_match(monkeypatch, form):
    """A parameter used three times (dense, one-hot and explicit parts): |Σ_k g_k,i|² from the summed explicit
    gradients (one buffer) and from norms plus twice the cross terms both equal the direct sum; the parts are
    left as they were."""
    g = torch.Generator().manual_seed(2)
    u = torch.randn(3, 1, 7, 2, generator=g, dtype=torch.float64)
    v1, v2 = (torch.randn(3, 1, 7, 3, generator=g, dtype=torch.float64) for _ in range(2))
    dense = torch.randn(3, 1, 2, 3, generator=g, dtype=torch.float64)
    parts = [layers.Factored(torch.randint(0, 2, (3, 1, 7), generator=g), v2, 2), dense.clone(),
             layers.Factored(u, v1, 2)]
    direct = sum(layers.explicit(p, (1, 2, 3)) for p in parts).square().sum()
    monkeypatch.setattr(layers, "_form_cost", lambda c: form)
    monkeypatch.setattr(layers, "_pair_cost", lambda a, b: 0.0)
    summed = []
    monkeypatch.setattr(layers, "explicit_sum", lambda *a, _f=layers.explicit_sum: summed.append(1) or _f(*a))
    got = layers.total_sq_sum(parts, (1, 2, 3))
    assert torch.allclose(got, direct) and bool(summed) == (form == 0.0)
    assert torch.equal(parts[1], dense)


def test_tied_embedding_and_head_summed_explicitly(monkeypatch):
    """GPT-2 tiny's tied embedding and LM head (vocab 256, width 64, 64 tokens): forming both per-example gradients
    into one buffer costs fewer multiply-adds than the two norms and the cross term."""
    B, T, V, E = 2, 64, 256, 64
    emb = layers.Factored(torch.randint(0, V, (B, 1, T)), torch.randn(B, 1, T, E), V)
    head = layers.Factored(torch.randn(B, 1, T, V), torch.randn(B, 1, T, E), V)
    summed = []
    monkeypatch.setattr(layers, "explicit_sum", lambda *a, _f=layers.explicit_sum: summed.append(1) or _f(*a))
    got = layers.total_sq_sum([emb, head], (V, E))
    want = (layers.explicit(emb, (V, E)) + layers.explicit(head, (V, E))).square().sum()
    assert summed and torch.isclose(got, want, rtol=1e-4)


def test_both_forms_agree():
    """Ghost (Gram) and explicit forms of the same per-example gradients give the same norms and cross terms."""
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(3, 2, 7, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 7, 5, generator=g,
                                                                                 dtype=torch.float64)
    idx = torch.randint(0, 4, (3, 2, 7), generator=g)
    dense, onehot = layers.Factored(u, v, 4), layers.Factored(idx, v, 4)
    shape = (2, 4, 5)
    for a in (dense, onehot):
        ref = layers.explicit(a, shape).square().sum()
        assert torch.isclose(layers.sq_sum(a, shape), ref)
        assert torch.isclose((layers._gram_u(a, a) * (a.v @ a.v.transpose(-1, -2))).sum(), ref)
        assert torch.isclose(layers._onehot_sq_sum(onehot), layers.explicit(onehot, shape).square().sum())
        for b in (dense, onehot):
            cross = (layers.explicit(a, shape) * layers.explicit(b, shape)).sum()
            assert torch.isclose((layers._gram_u(a, b) * (a.v @ b.v.transpose(-1, -2))).sum(), cross)


def test_scratch_reuses_one_buffer_and_keeps_values():
    """Explicit per-example gradients formed in a Scratch: the same values as fresh ones, one storage reused from
    layer to layer (grown when a larger one comes), and a fresh tensor where autograd must see the product."""
    g = torch.Generator().manual_seed(2)
    big = layers.Factored(torch.randn(3, 1, 5, 6, generator=g), torch.randn(3, 1, 5, 4, generator=g), 6)
    small = layers.Factored(torch.randn(3, 1, 5, 2, generator=g), torch.randn(3, 1, 5, 4, generator=g), 2)
    scratch = layers.Scratch()
    a = layers.explicit(small, (2, 4), scratch)
    assert torch.equal(a, layers.explicit(small, (2, 4)))
    b = layers.explicit(big, (6, 4), scratch)   # grows: a new buffer
    assert torch.equal(b, layers.explicit(big, (6, 4)))
    c = layers.explicit(small, (2, 4), scratch)  # fits: the same storage as b
    assert c.data_ptr() == b.data_ptr() and torch.equal(c, layers.explicit(small, (2, 4)))
    for form in (layers.sq_sum, lambda c, s, scratch: layers.total_sq_sum([c, c], s, scratch)):
        assert torch.equal(form(big, (6, 4), scratch), form(big, (6, 4), None))
    u = big.u.clone().requires_grad_()
    tracked = layers.explicit(layers.Factored(u, big.v, 6), (6, 4), scratch)
    assert tracked.requires_grad and tracked.data_ptr() != c.data_ptr()


def test_batchnorm_train_is_invalid():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert batch_coupled(model) == ["'1' (BatchNorm1d)"]   # quoted: a Sequential's index reads as a name
    assert batch_coupled(model.eval()) == []
    model.train()
    with pytest.raises(ConfigError, match="BatchNorm") as err:
        per_example_hooks(model, xent, (torch.randn(3, 4), torch.tensor([0, 1, 0])), 3)
    assert "microbatch" in err.value.hint


def test_mixing_loss_is_detected():
    case = make("mlp")

    def centred(model, batch):  # subtracts the batch mean: every loss depends on every example
        losses = xent(model, batch)
        return losses - losses.mean() + losses.detach().mean()

    assert not losses_mix_examples(case.model, case.loss_fn, case.batch)
    assert losses_mix_examples(case.model, centred, case.batch)
    bn = make("mlp")
    bn.model.insert(1, nn.BatchNorm1d(8).double())
    assert losses_mix_examples(bn.model, bn.loss_fn, bn.batch)

    def nan(model, batch):  # a diverged model's NaN losses do not mix examples (a new user's report said they did)
        return xent(model, batch) * float("nan")

    assert not losses_mix_examples(case.model, nan, case.batch)


def test_hooks_removed_and_silent_in_user_backward(monkeypatch):
    case = make("tied_lm")
    per_example_hooks(case.model, case.loss_fn, case.batch, case.count)
    assert all(not m._forward_hooks and not m._backward_hooks for m in case.model.modules())
    calls = []
    for name in ("sq_sum", "total_sq_sum"):
        monkeypatch.setattr(layers, name, lambda *a, _f=getattr(layers, name): calls.append(1) or _f(*a))
    losses = case.loss_fn(case.model, case.batch)
    torch.autograd.grad(losses.sum(), list(case.model.parameters()))
    assert not calls


def test_hooks_ignore_autograd_inside_loss():
    """An autograd.grad call inside the user's loss (before bsprof's backward) must not feed the hooks."""
    case = make("mlp")

    def loss_with_probe(model, batch):
        losses = xent(model, batch)
        torch.autograd.grad(losses.sum(), list(model.parameters()), retain_graph=True)
        return losses

    want = per_example_vmap(case.model, case.loss_fn, case.batch, case.count)
    got = per_example_hooks(case.model, loss_with_probe, case.batch, case.count)
    assert_close(got.small_sq_sum.unbind(), want.small_sq_sum.unbind())


def test_loss_scale_and_autocast():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    batch = (torch.randn(32, 16), torch.randint(0, 4, (32,)))
    want = per_example_vmap(model, xent, batch, 32)
    exact = per_example_hooks(model, xent, batch, 32, loss_scale=1024.0)
    assert_close(exact.small_sq_sum.unbind(), want.small_sq_sum.unbind(), rtol=1e-4)
    assert_close(exact.grad_sum, want.grad_sum, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = per_example_hooks(model, xent, batch, 32, loss_scale=1024.0)
    assert low.small_sq_sum.dtype == torch.float64
    assert_close(low.small_sq_sum.unbind(), want.small_sq_sum.unbind(), rtol=5e-2)


class SeqFirst(nn.Module):
    """A Linear fed [T, B, F]: the examples are not on its input's dim 0."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x.transpose(0, 1)).mean(0)


@pytest.mark.parametrize("T", [6, 4])
def test_batch_not_first_goes_to_fallback(T):
    """A Linear that sees [T, B, F] (examples not on dim 0) is handled by torch.func, not by its rule, also when
    T equals the batch (4), where its dim 0 alone looks like the examples' (``hooks.not_batch_first``)."""
    model = SeqFirst().double()
    batch = (torch.randn(4, T, 3, dtype=torch.float64), torch.randint(0, 3, (4,)))
    want = per_example_vmap(model, xent, batch, 4)
    got = per_example_hooks(model, xent, batch, 4)
    assert_close(got.small_sq_sum.unbind(), want.small_sq_sum.unbind())
    assert "fed [T, B" in got.fallbacks["lin.weight"]


def test_a_first_call_of_t_plus_one_examples_does_not_hide_the_layout():
    """The layout is checked once per model and cached: a first call of T + 1 examples checked it on T alone, found
    nothing, and every later chunk of T was measured as if dim 0 held the examples (rel. error 0.94; a new user's
    finding). Two sizes cannot both equal T."""
    model, T = SeqFirst().double(), 5
    first = (torch.randn(T + 1, T, 3, dtype=torch.float64), torch.randint(0, 3, (T + 1,)))
    per_example_hooks(model, xent, first, T + 1)
    batch = (torch.randn(T, T, 3, dtype=torch.float64), torch.randint(0, 3, (T,)))
    got, want = per_example_hooks(model, xent, batch, T), per_example_vmap(model, xent, batch, T)
    assert_close(got.small_sq_sum.unbind(), want.small_sq_sum.unbind())
    assert "fed [T, B" in got.fallbacks["lin.weight"]


def test_functional_use_of_hooked_weight():
    """A hooked Linear's weight also used through F.linear is detected by counting graph uses."""
    class Extra(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return F.linear(self.lin(x), self.lin.weight)

    model = Extra().double()
    batch = (torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 4, (5,)))
    want = per_example_vmap(model, xent, batch, 5)
    got = per_example_hooks(model, xent, batch, 5)
    assert_close(got.small_sq_sum.unbind(), want.small_sq_sum.unbind())


FALLBACK = {"gru": {"gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0", "gru.bias_hh_l0"},
            "tied_lm_functional": {"emb.weight"}}   # pos_parameter's bare parameter: added by broadcast, hooked


@pytest.mark.parametrize("name", sorted(CASES))
def test_only_unknown_parameters_fall_back(name, monkeypatch):
    """Known layers are handled by their rules; only the listed parameters go through torch.func."""
    seen, real = set(), hooks._fallback_sq

    def spy(model, loss_fn, batch, names, params, chosen, count):
        seen.update(names[k] for k in chosen)
        return real(model, loss_fn, batch, names, params, chosen, count)

    monkeypatch.setattr(hooks, "_fallback_sq", spy)
    case = make(name)
    per_example_hooks(case.model, case.loss_fn, case.batch, case.count)
    assert seen == FALLBACK.get(name, set())


def test_fallbacks_are_reported_with_reasons():
    case = make("tied_lm_functional")
    got = per_example_hooks(case.model, case.loss_fn, case.batch, case.count)
    assert set(got.fallbacks) == {"emb.weight"} and "applied functionally" in got.fallbacks["emb.weight"]
    gru = make("gru")
    assert all("GRU" in r for r in per_example_hooks(gru.model, gru.loss_fn, gru.batch, gru.count).fallbacks.values())
    enc = make("torch_encoder")
    assert per_example_hooks(enc.model, enc.loss_fn, enc.batch, enc.count).fallbacks is None


@pytest.mark.parametrize("form", ["slice", "view", "row", "bias-like"])
def test_a_bare_parameter_added_by_broadcast_is_hooked(form):
    """A learned position embedding kept as an nn.Parameter (minGPT's ``pos_emb[:, :T, :]``, ViT's ``pos_embed``)
    went to torch.func: its g_i is δ_i of the add summed to its shape, exact against torch.func in float64; a bare
    parameter used otherwise (multiplied) still falls back, with the reason."""
    class Pos(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(4, 6), nn.Linear(6, 3)
            shapes = {"slice": (1, 9, 6), "view": (54,), "row": (9, 6), "bias-like": (6,)}
            self.pos = nn.Parameter(torch.randn(*shapes[form]) * 0.1)

        def forward(self, x):
            T = x.shape[1]
            pos = {"slice": lambda: self.pos[:, :T, :], "view": lambda: self.pos.view(9, 6)[:T],
                   "row": lambda: self.pos[:T], "bias-like": lambda: self.pos}[form]()
            return self.out(torch.tanh(self.inp(x) + pos)).mean(1)

    torch.manual_seed(0)
    model = Pos().double()
    batch = (torch.randn(5, 7, 4, dtype=torch.float64), torch.randint(0, 3, (5,)))
    got = per_example_hooks(model, xent, batch, 5)
    want = per_example_vmap(model, xent, batch, 5)
    assert got.fallbacks is None
    assert_close(got.small_sq_sum.unbind(), want.small_sq_sum.unbind(), rtol=1e-9)
    assert_close(got.grad_sum, want.grad_sum, rtol=1e-9)

    class Scaled(Pos):
        def forward(self, x):
            return self.out(torch.tanh(self.inp(x) * self.pos[:, :x.shape[1], :])).mean(1)

    if form == "slice":
        assert set(per_example_hooks(Scaled().double(), xent, batch, 5).fallbacks) == {"pos"}


def test_strict_refuses_fallbacks():
    case = make("tied_lm_functional")
    with pytest.raises(BsprofError, match="emb.weight") as err:
        per_example_hooks(case.model, case.loss_fn, case.batch, case.count, strict=True)
    assert "register_rule" in err.value.hint
    assert all(not m._forward_hooks for m in case.model.modules())
    ok = make("torch_decoder")
    per_example_hooks(ok.model, ok.loss_fn, ok.batch, ok.count, strict=True)


class Unused(nn.Module):
    """A Linear pair, plus a parameter and a layer the forward never uses."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 7)
        self.temperature = nn.Parameter(torch.ones(1, dtype=torch.float64))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_an_unused_parameter_is_not_a_fallback():
    """A parameter the loss never reaches has zero per-example gradients: no torch.func fallback, no --strict
    refusal (it was sent to the fallback as "no per-example rule", a new user's finding), and the exact norms."""
    torch.manual_seed(0)
    model = Unused().double()
    x, y = torch.randn(12, 6, dtype=torch.float64), torch.randint(0, 3, (12,))
    got = per_example_hooks(model, xent, (x, y), 12, strict=True)
    assert got.fallbacks is None
    ref = per_example_vmap(model, xent, (x, y), 12)
    torch.testing.assert_close(got.small_sq_sum, ref.small_sq_sum, rtol=1e-10, atol=1e-12)
    names = [n for n, _ in model.named_parameters()]
    assert float(got.small_sq_sum[names.index("temperature")]) == 0.0


class Gain(nn.Module):
    """A custom layer: y = x ⊙ gain + shift (per feature), unknown to bsprof."""

    def __init__(self, n):
        super().__init__()
        self.gain, self.shift = nn.Parameter(torch.randn(n)), nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return x * self.gain + self.shift


def test_register_rule_for_custom_layer(monkeypatch):
    monkeypatch.setattr(layers, "RULES", dict(layers.RULES))  # leave the global table as it was
    model = nn.Sequential(nn.Linear(4, 5), Gain(5), nn.Tanh(), nn.Linear(5, 3)).double()
    batch = (torch.randn(6, 3, 4, dtype=torch.float64), torch.randint(0, 3, (6,)))

    def loss(m, b):
        return F.cross_entropy(m(b[0]).mean(1), b[1], reduction="none")

    # the shift is added by broadcast over the examples (as a bare position parameter): hooked without a rule
    assert set(per_example_hooks(model, loss, batch, 6).fallbacks) == {"1.gain"}

    def gain_rule(mod, x, d):
        B = x.shape[0]
        return {"gain": (x * d).reshape(B, -1, x.shape[-1]).sum(1), "shift": d.reshape(B, -1, d.shape[-1]).sum(1)}

    register_rule(Gain, gain_rule)
    got = per_example_hooks(model, loss, batch, 6, strict=True)
    want = per_example_vmap(model, loss, batch, 6)
    assert got.fallbacks is None
    assert_close(got.small_sq_sum.unbind(), want.small_sq_sum.unbind())
    with pytest.raises(TypeError):
        register_rule("Gain", gain_rule)
    assert max(check_rule(Gain(5), torch.randn(6, 3, 5)).values()) < 1e-9   # the one-call check of a rule
    register_rule(Gain, lambda mod, x, d: {"gain": gain_rule(mod, x, d)["gain"]})  # forgets "shift": said
    with pytest.raises(BsprofError, match="shift"):
        per_example_hooks(model, loss, batch, 6)
    # a wrong shape is refused, not summed silently (a new user's rules: the batch total; tokens not summed out)
    for wrong, shape in ((lambda mod, x, d: (x * d).sum(), "[]"), (lambda mod, x, d: x * d, "[6, 3, 5]")):
        register_rule(Gain, lambda mod, x, d, wrong=wrong: {**gain_rule(mod, x, d), "gain": wrong(mod, x, d)})
        with pytest.raises(BsprofError, match=rf"shape {re.escape(shape)} for its parameter 'gain', whose shape is "
                                              r"\[5\]"):
            per_example_hooks(model, loss, batch, 6)
    # right shape, wrong values (3×, or the batch's sum repeated): check_rule names the parameter
    register_rule(Gain, lambda mod, x, d: {**gain_rule(mod, x, d), "gain": 3 * gain_rule(mod, x, d)["gain"]})
    with pytest.raises(BsprofError, match="gain"):
        check_rule(Gain(5), torch.randn(6, 3, 5))


def test_attention_forward_restored_and_identical():
    """The recording copy of MultiheadAttention.forward gives the same numbers and is removed afterwards."""
    case = make("mha_batch_first")
    before = case.loss_fn(case.model, case.batch)
    per_example_hooks(case.model, case.loss_fn, case.batch, case.count)
    assert "forward" not in vars(case.model.att)
    assert torch.equal(before, case.loss_fn(case.model, case.batch))
    from bsprof.probes import attention
    records = []
    token = attention._RECORDS.set(records)
    try:
        again = case.loss_fn(case.model, case.batch)  # the module's own forward: nothing recorded
        case.model.att.forward = lambda *a, **k: attention._FORWARD(case.model.att, *a, **k)
        copied = case.loss_fn(case.model, case.batch)
    finally:
        attention._RECORDS.reset(token)
        del case.model.att.forward
    assert torch.equal(again, before) and torch.equal(copied, before)
    assert len(records) == 4  # q, k, v projections (separate inputs) and out_proj


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # the torch.func reference, not bsprof
def test_hugging_face_gpt2_exact_without_fallback():
    """GPT-2 from transformers: Conv1D (c_attn, c_proj, c_fc), a learned position embedding and the LM head tied
    to the token embedding, all by hook rules (strict: no torch.func fallback), against torch.func in float64."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=13, n_positions=16, n_embd=8, n_layer=2, n_head=2, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).double()
    assert model.lm_head.weight is model.transformer.wte.weight
    tokens = torch.randint(0, 13, (5, 7), generator=torch.Generator().manual_seed(1))

    def loss(m, t):
        logits = m(t[:, :-1]).logits
        return F.cross_entropy(logits.transpose(1, 2), t[:, 1:], reduction="none").mean(1)

    got = per_example_hooks(model, loss, tokens, 5, strict=True)
    want = per_example_vmap(model, loss, tokens, 5)
    assert got.fallbacks is None
    assert_close(got.small_sq_sum.unbind(), want.small_sq_sum.unbind())
    assert_close(got.grad_sum, want.grad_sum)


def test_torch_func_slow_path_warnings_are_not_passed_on():
    """torch.func's "There is a performance drop …" for attention under vmap is bsprof's to report (the
    fallbacks note), not printed to the user: the reference path raises no such warning."""
    import warnings

    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    x = torch.randn(4, 5, 8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        per_example_vmap(layer, lambda m, b: m(b).pow(2).mean((1, 2)), x, 4)
    assert not [w for w in seen if "performance drop" in str(w.message)]



def test_layer_norm_from_saved_statistics():
    """x̂ from the mean and 1/σ LayerNorm's autograd node saved gives the rule's pieces, over two normalized dims;
    an output from any other node keeps the plain rule."""
    g = torch.Generator().manual_seed(3)
    ln = nn.LayerNorm((4, 5)).double()
    x = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    out = ln(x)
    d = torch.randn(out.shape, generator=g, dtype=torch.float64)
    rule = layers.layer_norm_saved(out)
    assert rule is not layers.layer_norm
    got, want = rule(ln, x.detach(), d), layers.layer_norm(ln, x.detach(), d)
    assert got.keys() == want.keys() == {"weight", "bias"}
    assert all(torch.allclose(got[k], want[k], rtol=1e-10, atol=1e-12) for k in got)
    assert layers.layer_norm_saved(out * 2) is layers.layer_norm


def test_a_zero_dimensional_parameter():
    """`method="vmap"` raised IndexError on a 0-d nn.Parameter (a learned temperature): per-example gradients of
    shape [B] were flattened from dim 1. Every probe now agrees on it with the one-example-at-a-time reference."""
    class Temp(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.temp = nn.Linear(4, 3), nn.Parameter(torch.tensor(0.7))

        def forward(self, x):
            return self.lin(x) * self.temp

    torch.manual_seed(0)
    model = Temp().double()
    batch = (torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,)))
    case = type("Case", (), {"model": model, "loss_fn": staticmethod(xent), "batch": batch, "count": 6})
    sq, total = loop_reference(case)
    for probe in (per_example_vmap, per_example_hooks):
        got = probe(model, xent, batch, 6)
        assert_close(got.small_sq_sum.unbind(), sq.unbind(), rtol=1e-9)
        assert_close(got.grad_sum, total, rtol=1e-9)


def test_a_loss_that_fails_on_one_example_says_its_error():
    """A loss that raised on a batch of one example was reported as "the loss mixes examples", its error lost."""
    from bsprof.probes.choose import MIXING, per_example_invalid

    case = make("mlp")

    def fussy(model, batch):
        if len(batch[0]) == 1:
            raise ValueError("need at least two rows")
        return case.loss_fn(model, batch)

    pair = tuple(t[:2] for t in case.batch)
    why = per_example_invalid(case.model, fussy, pair)
    assert why.startswith("loss(model, batch) failed on one example alone (ValueError: need at least two rows)")
    centred = lambda m, b: case.loss_fn(m, b) - case.loss_fn(m, b).mean()  # noqa: E731
    assert per_example_invalid(case.model, centred, pair) == MIXING


def test_tied_weight_with_a_dead_tapped_call_and_a_live_untapped_one():
    """A reviewer's case: as many tapped calls as live uses, but not the same calls (one tapped head call never
    reaches the loss; a live one is untapped, its output changed in place by a forward hook, its input needing no
    gradient). Counting calls alone reused the weight, and the live call's piece never came: a KeyError. The reuse
    now counts only the tapped calls that reach the loss; the numbers match torch.func."""

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 4)
            self.head, self.other = nn.Linear(4, 7, bias=False), nn.Linear(4, 7, bias=False)
            self.head.weight = self.other.weight = self.emb.weight
            self.other.register_forward_hook(lambda mod, args, out: out.mul_(1.0))

        def forward(self, tokens):
            h = self.emb(tokens)
            out = self.head(h)
            self.head(h * 2)  # dead: never reaches the loss
            onehot = ((tokens % 4).unsqueeze(-1) == torch.arange(4, device=tokens.device)).to(h.dtype)
            return out + self.other(onehot)  # its input needs no gradient

    torch.manual_seed(0)
    model = Odd().double()
    tokens = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(1))

    def loss(m, t):
        return F.cross_entropy(m(t[:, :-1]).transpose(1, 2), t[:, 1:], reduction="none").mean(1)

    want = per_example_vmap(model, loss, tokens, 3)
    got = per_example_hooks(model, loss, tokens, 3)
    assert_close(got.small_sq_sum.unbind(), want.small_sq_sum.unbind())
    assert_close(got.grad_sum, want.grad_sum)


def test_fallback_reasons_fit_what_the_parameter_is():
    """A bare parameter used in a container's forward (a learned scale; a class token joined by torch.cat has a
    rule now) and a parametrized weight are named as what they are, not as 'in ViT, which has no per-example rule'
    (whose fix, a rule for the whole model, a new user could not use)."""
    import torch.nn.functional as F

    from bsprof.probes.hooks import per_example_hooks

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale, self.emb, self.out = nn.Parameter(torch.ones(8)), nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.out(self.emb(x).mean(1) * self.scale)

    def ce(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1], reduction="none")

    st = per_example_hooks(ViT(), ce, (torch.randn(6, 5, 4), torch.randint(0, 3, (6,))), 6)
    assert list(st.fallbacks) == ["scale"] and st.fallbacks["scale"].startswith("used directly in ViT.forward")
    norm = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 3)))
    st = per_example_hooks(norm, ce, (torch.randn(6, 4), torch.randint(0, 3, (6,))), 6)
    assert st.fallbacks and all(r.startswith("a parametrized weight") for r in st.fallbacks.values())
    # an Embedding the rule does not cover says why, not "Embedding, which has no per-example rule" beside a list
    # of known layers that names Embedding (a new user's trial)
    bag = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(8, 3))
    st = per_example_hooks(bag, ce, (torch.randint(0, 10, (6, 2)), torch.randint(0, 3, (6,))), 6)
    assert list(st.fallbacks) == ["0.weight"] and "sparse=True" in st.fallbacks["0.weight"], st.fallbacks


def test_a_class_token_after_a_constant_falls_back_rather_than_guessing_its_offset():
    """The cat's inputs before the class token set its offset; a constant one (no autograd producer) has no recorded
    size, so the token goes to torch.func, still exact."""
    from bsprof.probes.vmap import per_example_vmap

    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls, self.emb, self.out = nn.Parameter(torch.randn(1, 1, 4)), nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.emb(x)
            pad = torch.zeros(x.shape[0], 1, 4, dtype=h.dtype)
            h = torch.cat([pad, self.cls.expand(x.shape[0], -1, -1), h], 1)
            return self.out(torch.tanh(h).sum(1))

    torch.manual_seed(0)
    model = Padded().double()
    batch = (torch.randn(5, 3, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))
    got = per_example_hooks(model, xent, batch, 5)
    assert list(got.fallbacks) == ["cls"]
    want = per_example_vmap(model, xent, batch, 5)
    assert torch.allclose(got.small_sq_sum, want.small_sq_sum, rtol=1e-10, atol=0)


@pytest.mark.parametrize("dim", [1, -2, 2, -1])
def test_a_class_token_joined_along_a_negative_dim(dim):
    """torch.cat(..., dim=-2) (a reviewer's finding): CatBackward0 reports a negative dim as an unsigned 64-bit int,
    which taken modulo the rank cut the wrong dim and summed δ over every position, silently (79× too large)."""
    from bsprof.probes.vmap import per_example_vmap

    class ViTish(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls, self.emb, self.out = nn.Parameter(torch.randn(1, 1, 4)), nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            cls = self.cls.expand(x.shape[0], -1, -1)
            if dim in (2, -1):  # along the features: [B, 3, 4 + 4] needs a token per position
                cls = self.cls.expand(x.shape[0], 3, -1)
            h = torch.cat([cls, self.emb(x)], dim)
            return self.out(torch.tanh(h).mean(1)[..., :4])

    torch.manual_seed(0)
    model = ViTish().double()
    batch = (torch.randn(5, 3, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))
    got, want = per_example_hooks(model, xent, batch, 5), per_example_vmap(model, xent, batch, 5)
    assert got.fallbacks is None
    assert torch.allclose(got.small_sq_sum, want.small_sq_sum, rtol=1e-10, atol=0)


@pytest.mark.parametrize("with_gru", [False, True], ids=["hooks", "loop-fallback"])
def test_a_collated_list_column_is_split_with_the_tensors(with_gru):
    """A custom collate's plain lists, one value per example (lengths, ids), are sliced with the tensors when one
    example is taken alone (the mixing check, the fallback's loop): they were left whole, the loss saw 1 token row
    and 2 ids, and the check blamed the user's loss (a trial's finding). A GRU goes to the torch.func fallback,
    which cannot map over a list: the loop instead. Against a loop over hand-made one-example batches."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(3, 4), nn.Linear(4, 2)
            self.gru = nn.GRU(4, 4, batch_first=True) if with_gru else None

        def forward(self, x, lengths):
            h = torch.tanh(self.inp(x)) * torch.as_tensor(lengths, dtype=x.dtype)[:, None]
            if self.gru is not None:
                h = self.gru(h[:, None])[0][:, 0]
            return self.out(h)

    def loss(model, batch):
        assert len(batch["ids"]) == len(batch["lengths"]) == batch["x"].shape[0], "misaligned batch"
        return F.cross_entropy(model(batch["x"], batch["lengths"]), batch["y"], reduction="none")

    model, n = Net().double(), 5
    batch = {"x": torch.randn(n, 3, dtype=torch.float64), "y": torch.randint(0, 2, (n,)),
             "lengths": [1, 2, 3, 4, 5], "ids": [f"ex{i}" for i in range(n)], "tag": ("shared", "constant")}
    assert hooks._rows(batch, 1, 3)["lengths"] == [2, 3] and hooks._rows(batch, 1, 3)["tag"] == ("shared", "constant")
    assert not losses_mix_examples(model, loss, batch)
    got = per_example_hooks(model, loss, batch, n).small_sq_sum
    params = [p for p in model.parameters()]
    want = torch.zeros(len(params), dtype=torch.float64)
    for i in range(n):
        one = {"x": batch["x"][i:i + 1], "y": batch["y"][i:i + 1], "lengths": [batch["lengths"][i]],
               "ids": [batch["ids"][i]], "tag": batch["tag"]}
        grads = torch.autograd.grad(loss(model, one)[0], params)
        want += torch.stack([g.square().sum() for g in grads])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)


@pytest.mark.parametrize("kind", ["expanded", "times_batch", "batch_normalised", "per_example"])
def test_a_loss_summed_over_the_batch_is_refused(kind):
    """A loss summed over the batch and returned per example (the sum expanded to [B], or the per-example losses ×
    B) makes |G|² and tr(Σ) grow with the batch (64× at micro-batches of 8: a trial's finding, noted only as
    'mixing', then an overflow): refused with the fix. A loss that truly mixes examples stays 'mixing'."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    batch = (torch.randn(4, 3), torch.randn(4, 1))

    def loss(model, batch):
        x, y = batch
        each = (model(x) - y).square().squeeze(-1)
        return {"expanded": lambda: each.sum().expand(x.shape[0]), "times_batch": lambda: each * x.shape[0],
                "batch_normalised": lambda: each / each.mean().detach().clamp_min(1e-3) ** 0.5,
                "per_example": lambda: each}[kind]()

    if kind in ("expanded", "times_batch"):
        with pytest.raises(ConfigError, match="summed over the batch") as e:
            losses_mix_examples(model, loss, batch)
        assert "reduction='none'" in e.value.hint
    else:
        assert losses_mix_examples(model, loss, batch) == (kind == "batch_normalised")


def test_a_loss_of_shape_n_by_1_is_one_per_example():
    """F.mse_loss(model(x), y, reduction='none') with [N, 1] outputs and targets (a regression's usual shapes) is
    one loss per example: taken as [N], with the same norms as the squeezed loss (a trial found it refused)."""
    from bsprof.probes.base import per_example_losses

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    column = per_example_losses(model, lambda m, b: F.mse_loss(m(b[0]), b[1], reduction="none"), (x, y), 5)
    flat = per_example_losses(model, lambda m, b: F.mse_loss(m(b[0]).squeeze(-1), b[1][:, 0], reduction="none"),
                              (x, y), 5)
    assert column.shape == (5,) and torch.equal(column, flat)


def test_a_broadcast_n_by_n_loss_names_the_broadcast():
    """An [N, 1] output against [N] targets broadcasts to an [N, N] loss: the error says so and how to fix it (the
    generic 'average over any other dimension' led a trial's user to .mean(1), which ran and reported a critical
    batch 13× off); the note for a loss that mixes examples names the same cause."""
    from bsprof.errors import SpecError
    from bsprof.probes.base import per_example_losses

    model = nn.Linear(3, 1)
    x, y = torch.randn(4, 3), torch.randn(4)
    with pytest.raises(SpecError, match=r"\[4, 1\] against targets of shape \[4\]") as e:
        per_example_losses(model, lambda m, b: F.mse_loss(m(b[0]), b[1].expand(4, 4), reduction="none"), (x, y), 4)
    assert "squeeze(-1)" in e.value.hint

    from types import SimpleNamespace

    from bsprof.engine.diagnostics import before_run
    from bsprof.output.report import Report
    from bsprof.probes.choose import MIXING

    report = Report()
    before_run(report, model, torch.optim.SGD(model.parameters(), lr=0.1), SimpleNamespace(iterable=False), MIXING,
               SimpleNamespace(micro_batch=8, batch_size=32, steps=10, measure_every=5))
    note = next(d["message"] for d in report.diagnostics if d["code"] == "loss_mixes_examples")
    assert "[N, 1]" in note and "squeeze" in note


@pytest.mark.parametrize("conv", [
    nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(2, 3, (2, 3), padding=(1, 0),
    padding_mode="reflect", bias=False), nn.Conv2d(2, 3, 3, dilation=2, stride=(2, 1), padding=2),
    nn.Conv1d(2, 4, 2, padding="same"), nn.Conv1d(2, 3, 2, padding_mode="circular", padding=1, stride=3),
    nn.Conv3d(2, 3, (2, 3, 3), stride=(1, 2, 2), padding=1, dilation=(2, 1, 1)), nn.Conv2d(4, 6, 3, groups=2)],
    ids=lambda c: repr(c))
def test_conv_forms_agree_with_torch_func(conv):
    """The per-example weight gradients of a conv, in both of ``conv_per_example``'s forms (the grouped
    weight-gradient convolution and the forward convolution with δ as the kernel, chosen by timing), against
    torch.func in float64: strides, dilations, asymmetric and non-zero padding, 1-, 2- and 3-d, groups."""
    conv = conv.double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, conv.in_channels, *(9,) * (conv.weight.dim() - 2), generator=g, dtype=torch.float64)
    d = torch.randn_like(conv(x))

    def one(w, xi, di):
        y = torch.func.functional_call(conv, {"weight": w}, (xi[None],))
        return (y * di[None]).sum()

    want = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(conv.weight.detach(), x, d)
    forms = [layers.conv_grouped] + ([layers.conv_forward] if conv.groups == 1 else [])
    for form in forms:
        got = form(conv, x, d)
        assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-10, atol=1e-12), form.__name__
    assert torch.allclose(layers.conv_per_example(conv, x, d), want, rtol=1e-10, atol=1e-12)


def test_conv_form_is_grouped_under_deterministic_algorithms_and_timed_once_per_shape(monkeypatch):
    """The conv form is timed once per shape and kept; under ``torch.use_deterministic_algorithms(True)`` (numbers
    that repeat to the bit, README) it is the grouped one, untimed."""
    conv = nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(4, 1, 6, 6)
    d = torch.randn(4, 2, 6, 6)
    timed = []
    monkeypatch.setattr(layers, "_CONV_FORMS", {})
    monkeypatch.setattr(layers, "_seconds", lambda f, *a: timed.append(f) or (1.0 if f is layers.conv_grouped else 0.1))
    assert layers._conv_form(conv, x, d) is layers.conv_forward and len(timed) == 2
    assert layers._conv_form(conv, x, d) is layers.conv_forward and len(timed) == 2  # kept
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert layers._conv_form(conv, x, d) is layers.conv_grouped
    finally:
        torch.use_deterministic_algorithms(was)
    monkeypatch.setattr(layers, "_CONV_FORMS", {})  # a near tie: the grouped form
    monkeypatch.setattr(layers, "_seconds", lambda f, *a: 1.0 if f is layers.conv_grouped else 0.9)
    assert layers._conv_form(conv, x, d) is layers.conv_grouped


def test_conv_transpose_rule_matches_torch_func_where_output_padding_reaches_past_the_stride():
    """output_padding ≥ stride (allowed below the dilation) puts δ's last patches past x's end: the rule read them
    (a reshape error, or on some shapes a silently wrong norm: 82.95 against 89.95, a review's finding); now sliced
    to x's positions. With the shared decoder model (``models.conv_transpose``) for the usual geometry."""
    cases = [(nn.ConvTranspose1d(2, 3, 3, stride=1, dilation=3, output_padding=2), torch.randn(3, 2, 2)),
             (nn.ConvTranspose1d(2, 3, 3, stride=1, dilation=3, output_padding=2), torch.randn(3, 2, 5)),
             (nn.ConvTranspose2d(2, 4, 3, stride=(1, 2), dilation=(3, 1), output_padding=(2, 1), padding=1,
                                 groups=2), torch.randn(3, 2, 4, 5))]
    for mod, x in cases:
        assert max(check_rule(mod, x, rtol=1e-9).values()) < 1e-9
