"""Probes against direct autograd, and a whole-dataset draw against the exact torch.func reference."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bsprof.engine.data import Examples
from bsprof.engine.sampling import Sampling, groups_of, measure_at, one_draw
from bsprof.probes import PROBES, Probe
from bsprof.probes.microbatch import microbatch
from bsprof.validation.reference import exact_noise_scale

CHUNK_BY_CHUNK = Probe("microbatch", per_example=False, chunk=microbatch)  # no whole_draw: the reference path


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _data(n=40):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _direct_per_example(model, x, y):
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(_ce(model, (x[i:i + 1], y[i:i + 1])).sum(), list(model.parameters()))
        rows.append([g.square().sum().item() for g in grads])
    return np.array(rows)


def test_vmap_probe_matches_a_loop_over_examples():
    model, (x, y) = _mlp(), _data(10)
    st = PROBES["vmap"].chunk(model, _ce, (x, y), 10)
    np.testing.assert_allclose(st.small_sq_sum.numpy(), _direct_per_example(model, x, y).sum(0), rtol=1e-10)
    full = torch.autograd.grad(_ce(model, (x, y)).sum(), list(model.parameters()))
    for a, b in zip(st.grad_sum, full):
        torch.testing.assert_close(a, b)
    assert st.n_small == 10 and float(st.loss_sum) == pytest.approx(_ce(model, (x, y)).sum().item())


def test_microbatch_probe_matches_autograd():
    model, (x, y) = _mlp(), _data(8)
    st = PROBES["microbatch"].chunk(model, _ce, (x, y), 8)
    grads = torch.autograd.grad(_ce(model, (x, y)).mean(), list(model.parameters()))
    np.testing.assert_allclose(st.small_sq_sum.numpy(), [g.square().sum().item() for g in grads], rtol=1e-10)
    for a, b in zip(st.grad_sum, grads):
        torch.testing.assert_close(a, 8 * b)
    assert st.n_small == 1


def _examples(x, y):
    return Examples(torch.utils.data.TensorDataset(x, y), None, torch.device("cpu"), torch.Generator().manual_seed(0))


def _sampling(probe, b, **kw):
    base = dict(chunk=7, start_B=16, fixed_B=True, rel_error=0.1, confidence=0.9, min_draws=3,
                max_examples=10**6, max_seconds=60)
    base.update(kw)
    return Sampling(PROBES[probe], b, **base)


def test_the_exact_reference_takes_a_model_torch_func_cannot_batch_one_example_at_a_time(monkeypatch):
    """``exact_noise_scale`` on an nn.GRU model ended in torch's RuntimeError traceback (a new user's trial, following
    the README to it): such a model is taken one example at a time, which agrees with vmap where vmap works."""
    import bsprof.validation.reference as reference

    model, (x, y) = _mlp(), _data(24)
    data = torch.utils.data.TensorDataset(x, y)
    batched = exact_noise_scale(model, _ce, data)

    def cannot(*a):
        raise RuntimeError("vmap: no batching rule")
    monkeypatch.setattr(reference, "per_example_grads", cannot)
    looped = exact_noise_scale(model, _ce, data)
    assert {k: pytest.approx(v, rel=1e-9) for k, v in batched.items()} == looped
    monkeypatch.undo()

    class GRU(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = torch.nn.GRU(4, 8, batch_first=True), torch.nn.Linear(8, 3)

        def forward(self, seq):
            return self.head(self.rnn(seq)[0][:, -1])
    seqs = torch.utils.data.TensorDataset(torch.randn(12, 5, 4), torch.randint(0, 3, (12,)))
    got = exact_noise_scale(GRU(), _ce, seqs)
    assert got["n"] == 12 and got["b_simple"] > 0 and got["trace_sigma"] > 0


def test_whole_dataset_draw_is_the_exact_reference():
    """Per-example norms over all n examples with the finite-population correction: exact, one draw."""
    model, (x, y) = _mlp(), _data(40)
    exact = exact_noise_scale(model, _ce, torch.utils.data.TensorDataset(x, y))
    names = [n for n, _ in model.named_parameters()]
    _, group = groups_of(names)
    est, draws, stopped = measure_at(model, _ce, _examples(x, y), _sampling("vmap", 1, start_B=40), group)
    assert stopped == "exact" and len(draws) == 1
    assert est.b_simple == pytest.approx(exact["b_simple"], rel=1e-9)
    assert est.g2 == pytest.approx(exact["g2"], rel=1e-9)
    assert est.b_simple_lo == est.b_simple_hi == est.b_simple
    dropped = torch.nn.Sequential(*model[:1], torch.nn.Dropout(0.1), *model[1:])  # active dropout: masks vary
    est, draws, stopped = measure_at(dropped, _ce, _examples(x, y), _sampling("hooks", 1, start_B=40), group)
    assert stopped != "exact" and len(draws) > 1 and est.b_simple_lo < est.b_simple_hi


def test_layer_breakdown_sums_to_the_total():
    """Per group (layer) a draw holds that layer's own |G_B|² and mean |g_i|², and the per-layer |G|² and tr(Σ) of
    the estimate sum to its totals up to float error."""
    from bsprof.stats.estimators import noise_scale

    model, (x, y) = _mlp(), _data(40)
    names, group = groups_of([n for n, _ in model.named_parameters()])
    assert names == ["0", "2"] and list(group) == [0, 0, 1, 1]  # two Linear layers, weight + bias each
    ex = _examples(x, y)
    whole = one_draw(model, _ce, ex, _sampling("vmap", 1), 40, group)  # all 40 examples: exact per-layer norms
    mean_grad = torch.autograd.grad(_ce(model, (x, y)).mean(), list(model.parameters()))
    np.testing.assert_allclose(whole.big_sq, np.bincount(group, [float(g.square().sum()) for g in mean_grad]),
                               rtol=1e-10)
    np.testing.assert_allclose(whole.small_sq, np.bincount(group, _direct_per_example(model, x, y).mean(0)),
                               rtol=1e-10)
    d = one_draw(model, _ce, ex, _sampling("vmap", 1), 16, group)
    assert d.small_sq.shape == (2,) and d.B == 16 and d.b == 1
    est = noise_scale([one_draw(model, _ce, ex, _sampling("vmap", 1), 16, group) for _ in range(8)])
    layers = list(est.layers.values())
    assert len(layers) == 2
    for k, total in ((0, est.g2), (1, est.trace_sigma)):
        parts = [layer[k] for layer in layers]
        assert sum(parts) == pytest.approx(total, rel=1e-12, abs=1e-12 * sum(map(abs, parts)))


@pytest.mark.parametrize("probe,b", [("vmap", 1), ("microbatch", 4)])
def test_draws_are_unbiased_against_the_exact_reference(probe, b):
    """Mean over many draws of B = 16 of 40: within 4 standard errors of the exact |G|² and tr(Σ)."""
    from bsprof.stats.estimators import draw_estimates

    model, (x, y) = _mlp(), _data(40)
    exact = exact_noise_scale(model, _ce, torch.utils.data.TensorDataset(x, y))
    _, group = groups_of([n for n, _ in model.named_parameters()])
    ex, s = _examples(x, y), _sampling(probe, b, chunk=16)
    g2, tr = draw_estimates([one_draw(model, _ce, ex, s, 16, group) for _ in range(120)])
    g2, tr = g2.sum(1), tr.sum(1)
    for values, truth in ((g2, exact["g2"]), (tr, exact["trace_sigma"])):
        se = values.std(ddof=1) / np.sqrt(len(values))
        assert abs(values.mean() - truth) < 4 * se



class _Tied(nn.Module):
    """Tied weights (used twice), an unused parameter, BatchNorm in train mode: the awkward cases."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 3)
        self.unused = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.out(torch.tanh(self.inp(self.bn(self.inp(x)))))


def _penalised(model, batch):
    """A loss that calls torch.autograd.grad on the parameters itself (a gradient penalty)."""
    losses = _ce(model, batch)
    g = torch.autograd.grad(losses.sum(), model.out.weight, create_graph=True)[0]
    return losses + 1e-3 * g.square().sum()


@pytest.mark.parametrize("in_cache", [True, False], ids=["cpu-way", "accelerator-way"])
@pytest.mark.parametrize("model_fn,loss_fn", [(_mlp, _ce), (_Tied, _ce), (_Tied, _penalised)])
def test_accumulating_draw_matches_the_chunk_by_chunk_reference(model_fn, loss_fn, in_cache):
    """The fast micro-batch draw (both ways of ``_Norms``) against the autograd.grad probe, chunk by chunk."""
    from bsprof.engine.sampling import chunk_sums, partial_marks
    from bsprof.probes.microbatch import accumulate

    model, (x, y) = model_fn(), _data(32)
    chunks = [((x[i:i + 4], y[i:i + 4]), 4) for i in range(0, 32, 4)]
    fast, fast_partial = accumulate(model, loss_fn, iter(chunks), partial_marks(4, 32), 32, in_cache=in_cache)
    slow, slow_partial = chunk_sums(CHUNK_BY_CHUNK, model, loss_fn, iter(chunks), 32, 4)
    assert slow.big_sq is None  # one_draw takes the norm of the chunk path's sum itself
    np.testing.assert_allclose(fast.big_sq.numpy(), [float(g.square().sum()) for g in slow.grad_sum], rtol=1e-10)
    torch.testing.assert_close(fast.small_sq_sum, slow.small_sq_sum, rtol=1e-10, atol=0)
    for a, b in zip(fast.grad_sum, slow.grad_sum):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    assert [s for s, _ in fast_partial] == [s for s, _ in slow_partial] == [4, 8]  # b (free) and 2b
    np.testing.assert_allclose([v for _, v in fast_partial], [v for _, v in slow_partial], rtol=1e-10)
    assert (fast.n_small, fast.count) == (slow.n_small, slow.count) == (8, 32)
    # any set of marks (partial_marks asks for two): |Σ g|²/seen² after 4, 8, 16 and 24 examples
    _, more = accumulate(model, loss_fn, iter(chunks), {4, 8, 16, 24}, 32, in_cache=in_cache)
    ref = [float(sum(g.square().sum() for g in chunk_sums(CHUNK_BY_CHUNK, model, loss_fn, iter(chunks[:m // 4]),
                                                          m, 4)[0].grad_sum)) / m ** 2 for m in (4, 8, 16, 24)]
    assert [s for s, _ in more] == [4, 8, 16, 24]
    np.testing.assert_allclose([v for _, v in more], ref, rtol=1e-10)
    assert float(fast.loss_sum) == pytest.approx(float(slow.loss_sum), rel=1e-12)


def test_cpu_draw_hooks_hold_no_tensors():
    """On the CPU each micro-batch's squares are read in their hooks (floats): 0-d tensors held to the draw's end
    made glibc trim and regrow its heap at every backward in some runs (docs/speed.md, "Page faults")."""
    from bsprof.probes.microbatch import _Norms

    model, (x, y) = _mlp(), _data(16)
    norms = _Norms([p for p in model.parameters()], True)
    try:
        for sl in (slice(0, 8), slice(8, 16)):
            norms.backward(_ce(model, (x[sl], y[sl])).sum(), 8, sl.start == 8)
    finally:
        norms.remove()
    assert len(norms.values) == 2 * len(list(model.parameters()))
    assert all(type(v) is float for v in norms.values)


def test_accumulating_draw_leaves_the_model_as_it_was():
    """The user's .grad comes back, and no hook is left behind, also when the loss fails mid-draw."""
    from bsprof.probes.microbatch import accumulate

    model, (x, y) = _mlp(), _data(16)
    _ce(model, (x, y)).mean().backward()
    before = [p.grad.clone() for p in model.parameters()]
    accumulate(model, _ce, [((x[:8], y[:8]), 8), ((x[8:], y[8:]), 8)], {8})
    accumulate(model, _ce, [((x[:8], y[:8]), 8), ((x[8:], y[8:]), 8)], {8}, in_cache=False)
    calls = []

    def failing(model, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return _ce(model, batch)

    with pytest.raises(RuntimeError, match="boom"):
        accumulate(model, failing, [((x[:8], y[:8]), 8), ((x[8:], y[8:]), 8)], {8})
    for p, g in zip(model.parameters(), before):
        assert torch.equal(p.grad, g)
        assert not p._backward_hooks


def test_accumulating_draw_leaves_leaves_outside_the_model_alone():
    """A loss that uses a trainable tensor outside the model (a learned temperature held by the loss): the draw
    accumulates into the model's parameters only, by the engine call and by the public ``backward(inputs=…)`` alike,
    with the same numbers."""
    import importlib

    microbatch = importlib.import_module("bsprof.probes.microbatch")
    temperature = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)

    def tempered(model, batch):
        x, y = batch
        return F.cross_entropy(model(x) / temperature, y, reduction="none")

    model, (x, y) = _mlp(), _data(16)
    chunks = [((x[i:i + 4], y[i:i + 4]), 4) for i in range(0, 16, 4)]
    results = []
    for direct in (True, False):
        with microbatch.measurement_hooks(model):
            norms = microbatch._MEASURING[id(model)]
            assert norms.direct  # plain parameters: the engine call
            norms.direct = direct
            results.append(microbatch.accumulate(model, tempered, iter(chunks), {4, 8}, 16))
        assert temperature.grad is None
        assert all(p.grad is None for p in model.parameters())
    (fast, fast_partial), (public, public_partial) = results
    assert torch.equal(fast.small_sq_sum, public.small_sq_sum) and torch.equal(fast.big_sq, public.big_sq)
    assert fast_partial == public_partial
    for a, b in zip(fast.grad_sum, public.grad_sum):
        assert torch.equal(a, b)


@pytest.mark.parametrize("in_cache", [True, False], ids=["cpu-way", "accelerator-way"])
def test_accumulating_draw_with_a_sparse_embedding(in_cache):
    """nn.Embedding(sparse=True) gives sparse gradients: the same numbers as its dense twin."""
    from bsprof.engine.sampling import chunk_sums, partial_marks
    from bsprof.probes.microbatch import accumulate

    def net(sparse):
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(20, 4, sparse=sparse), nn.Flatten(), nn.Linear(12, 3))

    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(0, 20, (16, 3), generator=g), torch.randint(0, 3, (16,), generator=g)
    chunks = [((x[i:i + 4], y[i:i + 4]), 4) for i in range(0, 16, 4)]
    fast, fast_partial = accumulate(net(True), _ce, iter(chunks), partial_marks(4, 16), in_cache=in_cache)
    slow, slow_partial = chunk_sums(CHUNK_BY_CHUNK, net(False), _ce, iter(chunks), 16, 4)
    torch.testing.assert_close(fast.small_sq_sum, slow.small_sq_sum, rtol=1e-10, atol=0)
    for a, b in zip(fast.grad_sum, slow.grad_sum):
        torch.testing.assert_close(a, b)
    np.testing.assert_allclose([v for _, v in fast_partial], [v for _, v in slow_partial], rtol=1e-10)


def test_measurement_hooks_are_registered_once_and_give_the_same_draws():
    """Draws inside ``measurement_hooks`` (what ``measure_at`` holds around a measurement) reuse one set of hooks
    and give the numbers of draws that register their own; the hooks are gone when the block ends."""
    from bsprof.engine.sampling import chunk_sums, partial_marks
    from bsprof.probes.microbatch import accumulate, measurement_hooks

    model, (x, y) = _Tied(), _data(32)
    chunks = [((x[i:i + 4], y[i:i + 4]), 4) for i in range(0, 32, 4)]
    alone = [accumulate(model, _penalised, iter(chunks[j:j + 4]), partial_marks(4, 16), 16) for j in (0, 4)]
    params = [p for p in model.parameters() if p.requires_grad]
    with measurement_hooks(model):
        hooks = [dict(p._backward_hooks) for p in params]
        inside = [accumulate(model, _penalised, iter(chunks[j:j + 4]), partial_marks(4, 16), 16) for j in (0, 4)]
        assert [dict(p._backward_hooks) for p in params] == hooks  # none added per draw
    assert not any(p._backward_hooks for p in params)
    ref, ref_partial = chunk_sums(CHUNK_BY_CHUNK, model, _penalised, iter(chunks[4:]), 16, 4)
    for (a, a_partial), (b, b_partial) in zip(alone, inside):
        torch.testing.assert_close(a.small_sq_sum, b.small_sq_sum, rtol=0, atol=0)
        torch.testing.assert_close(a.big_sq, b.big_sq, rtol=0, atol=0)
        assert a_partial == b_partial and float(a.loss_sum) == float(b.loss_sum)
    torch.testing.assert_close(inside[1][0].small_sq_sum, ref.small_sq_sum, rtol=1e-10, atol=0)
    np.testing.assert_allclose([v for _, v in inside[1][1]], [v for _, v in ref_partial], rtol=1e-10)


def test_measure_at_holds_the_micro_batch_hooks_for_the_whole_measurement(monkeypatch):
    """``measure_at`` registers the micro-batch draw's hooks once (not per draw) and removes them at the end."""
    from bsprof.engine import sampling
    from bsprof.probes import PROBES

    mb_module = sys.modules["bsprof.probes.microbatch"]
    model, (x, y) = _mlp(), _data(64)
    made = []
    real = mb_module._Norms

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mb_module, "_Norms", counting)

    class Source:
        n = None

        def draw(self, B):
            return list(range(B))

        def batches(self, drawn, size):
            for i in range(0, len(drawn), size):
                idx = drawn[i:i + size]
                yield (x[idx], y[idx]), len(idx)

    s = sampling.Sampling(PROBES["microbatch"], 4, 4, 16, True, 0.01, 0.9, 4, 64, 1e9)
    _, draws, why = sampling.measure_at(model, _ce, Source(), s, np.zeros(len(list(model.parameters())), dtype=int))
    assert why in ("examples", "precision") and len(draws) >= 4 and len(made) == 1
    assert not any(p._backward_hooks for p in model.parameters())


def test_measure_at_with_dropout_repeats_with_its_seed_and_keeps_the_callers_randomness():
    """A model with dropout: the same seed gives the same estimate whatever the caller's random state, the first
    call in a process too (a once-per-model layout check had drawn dropout masks from the global generator), and
    the caller's generator goes on as if no call had been made."""
    import bsprof

    torch.manual_seed(0)
    x, y = torch.randn(600, 20), torch.randint(0, 5, (600,))
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 5))

    def ce(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")

    seen = []
    for caller_seed in (1, 2, 1):
        torch.manual_seed(caller_seed)
        est = bsprof.measure_at(model, ce, (x, y), seed=4, method="hooks", max_seconds=3600)
        after = torch.rand(1)
        torch.manual_seed(caller_seed)
        assert torch.equal(after, torch.rand(1))   # the caller's randomness untouched
        seen.append((est.value, est.draws))
    assert seen[0] == seen[1] == seen[2]


def test_vmap_on_a_batch_with_fields_that_are_not_tensors_names_them_and_the_methods_that_split_them():
    """Items {"id": str, "x": tensor, "y": tensor} collate to a list of strings beside the tensors: --method vmap
    failed with torch's "Got in_dim=0 for an input but the input is of type str" and "fix the spec". torch.func
    cannot slice a list per example (passing it whole would be wrong where it holds per-example values, lengths):
    the error names the field and the methods that split it (the hooks' slow path loops over such batches)."""
    from bsprof.errors import ConfigError
    from bsprof.probes.hooks import per_example_hooks
    from bsprof.probes.vmap import per_example_vmap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    batch = {"id": [f"ex{i}" for i in range(5)], "x": torch.randn(5, 6, dtype=torch.float64),
             "y": torch.randint(0, 3, (5,))}

    def loss(m, b):
        return F.cross_entropy(m(b["x"]), b["y"], reduction="none")

    with pytest.raises(ConfigError, match=r"field\(s\) that are not tensors \('id'\)") as e:
        per_example_vmap(model, loss, batch, 5)
    assert "--method auto or hooks" in e.value.hint
    assert per_example_hooks(model, loss, batch, 5).fallbacks is None
