"""The in-loop tracker (issue 12): each step's pair against slow references, closed forms, the log, bad input.

Least squares at fixed weights (docs/science.md §5 V2): d = 20, σ² = 0.25, |Δ|² = 1 → B_simple = 26.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bsprof.errors import BsprofError, ConfigError
from bsprof.output.report import Report
from bsprof.probes.precondition import adam_preconditioner
from bsprof.stats.draw import Draw
from bsprof.stats.estimators import noise_scale
from bsprof.track import Tracker, TrackerError, read_log, report_from_log
from bsprof.track.log import measurements
from bsprof.validation.closed_forms import FreshLeastSquares, LeastSquares
from bsprof.validation.coverage import ls_loss, net_at
from bsprof.validation.reference import exact_noise_scale

TRUTH = LeastSquares.isotropic(20, 1.0, 0.25)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3)).double()


class Twice(nn.Module):
    """One Linear applied twice: its per-example gradient is a sum of two uses (cross terms)."""

    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.mid(torch.tanh(self.mid(self.inp(x))))))


def data(n: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def hooks_left(model: nn.Module) -> int:
    tensor = sum(len(p._backward_hooks or {}) for p in model.parameters())
    return tensor + sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------- one step against slow references

@pytest.mark.parametrize("declared", [True, False])
def test_accumulation_pair_is_the_micro_batch_gradients(declared):
    """small = mean_k |G_b^(k)|², big = |mean_k G_b^(k)|², each G_b^(k) by autograd.grad; both conventions:
    ``accumulation_steps=k`` with (loss/k).backward(), or k counted with plain mean losses and step(batch_size)."""
    model, (x, y), k = mlp(), data(), 4
    tracker = Tracker(model, accumulation_steps=k if declared else None, batch_size=64 if declared else None)
    for j in range(k):
        loss = ce(model, (x[16 * j:16 * j + 16], y[16 * j:16 * j + 16])).mean()
        (loss / k if declared else loss).backward()
    draw = tracker.step() if declared else tracker.step(batch_size=64)
    micro = [torch.cat([g.flatten() for g in torch.autograd.grad(
        ce(model, (x[16 * j:16 * j + 16], y[16 * j:16 * j + 16])).mean(), list(model.parameters()))])
        for j in range(k)]
    assert (draw.b, draw.B) == (16, 64)
    assert draw.small_sq_total == pytest.approx(np.mean([float(g.square().sum()) for g in micro]), rel=1e-10)
    assert draw.big_sq_total == pytest.approx(float(torch.stack(micro).mean(0).square().sum()), rel=1e-10)
    tracker.close()
    assert hooks_left(model) == 0


def test_cpu_hooks_hold_no_tensors_until_the_step():
    """On the CPU each pass's squares are read in their hooks (floats, ``StepHooks``): 0-d tensors held to the
    step's end made glibc trim and regrow its heap at every backward in some runs (docs/speed.md, "Page faults")."""
    model, (x, y), k = mlp(), data(), 2
    tracker = Tracker(model, accumulation_steps=k, batch_size=32)
    for j in range(k):
        (ce(model, (x[16 * j:16 * j + 16], y[16 * j:16 * j + 16])).mean() / k).backward()
    small = tracker.hooks.record.small
    assert len(small) == k * len(list(model.parameters())) and all(type(v) is float for v in small)
    assert tracker.step() is not None
    tracker.close()


def partly_frozen() -> nn.Module:
    """Linear layers on [B, in] (the rows path: |δ_i|²|x_i|²) without a bias, and with a frozen weight."""
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    model[2].weight.requires_grad_(False)
    return model.double()


class BareShift(nn.Module):
    """A bare nn.Parameter added by broadcast over the examples (as a learned position embedding is): the tracker
    called such a model unavailable ("no per-example rule for shift"); its g_i is δ_i of the add."""

    def __init__(self):
        super().__init__()
        self.inp, self.out, self.shift = nn.Linear(6, 8), nn.Linear(8, 3), nn.Parameter(torch.randn(1, 8))

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x) + self.shift[:, :8]))


class ClassToken(nn.Module):
    """A ViT-style class token joined to the examples' tokens by torch.cat (after them: a nonzero offset)."""

    def __init__(self):
        super().__init__()
        self.inp, self.out, self.cls = nn.Linear(3, 8), nn.Linear(8, 3), nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x):
        h = torch.tanh(self.inp(x.reshape(x.shape[0], 2, 3)))
        h = torch.cat([h, self.cls.expand(x.shape[0], -1, -1)], 1)
        return self.out(h[:, -1] * h[:, :-1].mean(1))


@pytest.mark.parametrize("make", [mlp, lambda: Twice().double(), partly_frozen, lambda: BareShift().double(),
                                  lambda: ClassToken().double()])
def test_per_example_pair_is_the_exact_reference(make):
    """b = 1: small = (1/n)Σ|g_i|² = tr(Σ) + |G|², big = |G|² of the whole dataset (torch.func reference)."""
    model, (x, y) = make(), data()
    tracker = Tracker(model, source="per_example")
    loss = ce(model, (x, y)).mean()  # the forward may run before the block
    with tracker.per_example(model):
        loss.backward()
    draw = tracker.step(loss=loss)
    ref = exact_noise_scale(model, ce, TensorDataset(x, y))
    assert (draw.b, draw.B) == (1, 64)
    assert draw.small_sq_total == pytest.approx(ref["trace_sigma"] + ref["g2"], rel=1e-9)
    assert draw.big_sq_total == pytest.approx(ref["g2"], rel=1e-9)
    assert draw.loss == pytest.approx(ref["loss"])


TRACKER_REFUSES = {"tied_lm_functional": "used outside their layers too"}
REFUSED_WHEN_MADE = {"gru": r"no per-example rule for the recurrent layer\(s\) gru \(GRU\)"}


@pytest.mark.parametrize("name", sorted(__import__("models").CASES))
def test_per_example_pair_on_every_model_of_the_probe_tests(name):
    """The tracker's per-example pair against torch.func on each model the probe's hooks are tested on (tests/
    models.py: attention, embeddings on ids and on positions — with as many positions as examples —, class tokens,
    convs, norms, tied weights); where it has no rule, a one-line error naming why, never a number."""
    from models import make

    from bsprof.probes.vmap import per_example_vmap

    case = make(name)
    if name in REFUSED_WHEN_MADE:
        with pytest.raises(TrackerError, match=REFUSED_WHEN_MADE[name]):
            Tracker(case.model, source="per_example")
        assert hooks_left(case.model) == 0
        return
    tracker = Tracker(case.model, source="per_example")
    with tracker.per_example(case.model):
        loss = case.loss_fn(case.model, case.batch).mean()
        loss.backward()
    if name in TRACKER_REFUSES:
        with pytest.raises(TrackerError, match=TRACKER_REFUSES[name]):
            tracker.step(loss=loss)
        tracker.close()
        return
    draw = tracker.step(loss=loss)
    tracker.close()
    ref = per_example_vmap(case.model, case.loss_fn, case.batch, case.count)
    n = case.count
    assert (draw.b, draw.B) == (1, n)
    assert draw.small_sq_total == pytest.approx(float(ref.small_sq_sum.sum()) / n, rel=1e-9)
    assert draw.big_sq_total == pytest.approx(sum(float((g / n).square().sum()) for g in ref.grad_sum), rel=1e-9)
    assert hooks_left(case.model) == 0


def test_per_example_embedding_of_one_id_per_example():
    """An nn.Embedding on one id per example ([B]: a user id, a class label) is an ordinary per-example call, not
    positions shared by the batch (the tracker refused it, suggesting accumulation; `bsprof measure` did not)."""
    class Users(nn.Module):
        def __init__(self):
            super().__init__()
            self.user, self.item, self.out = nn.Embedding(10, 4), nn.Embedding(7, 4), nn.Linear(4, 1)

        def forward(self, batch):
            u, i = batch[:, 0], batch[:, 1]
            return self.out(self.user(u) * self.item(i)).squeeze(-1)

    def mse(model, batch):
        return (model(batch[:, :2]) - batch[:, 2].double()).square()

    torch.manual_seed(0)
    model = Users().double()
    batch = torch.stack([torch.randint(0, 10, (16,)), torch.randint(0, 7, (16,)), torch.randint(0, 3, (16,))], 1)
    tracker = Tracker(model, source="per_example")
    with tracker.per_example():
        loss = mse(model, batch).mean()
        loss.backward()
    draw = tracker.step(loss=loss)
    tracker.close()
    from bsprof.probes.vmap import per_example_vmap

    ref = per_example_vmap(model, mse, batch, 16)
    assert (draw.b, draw.B) == (1, 16)
    assert draw.small_sq_total == pytest.approx(float(ref.small_sq_sum.sum()) / 16, rel=1e-9)


def test_the_tracker_measures_the_parameters_the_optimizer_updates():
    """An optimizer over the head only: the backbone's gradients are computed but never applied, so they are not the
    training's noise. The pair is the head's (exact reference with the backbone frozen), and a warning says so."""
    import copy
    model, (x, y) = mlp(), data()
    reference = copy.deepcopy(model)
    for layer in (reference[0], reference[1]):
        layer.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"does not update 4 of the model's 6 trainable parameters \(0.weight, "
                                         r"0.bias, 1.weight and 1 more\)"):
        tracker = Tracker(model, torch.optim.SGD(model[3].parameters(), lr=0.1), source="per_example")
    loss = ce(model, (x, y)).mean()
    with tracker.per_example():
        loss.backward()
    draw = tracker.step(loss=loss)
    ref = exact_noise_scale(reference, ce, TensorDataset(x, y))
    assert draw.small_sq_total == pytest.approx(ref["trace_sigma"] + ref["g2"], rel=1e-9)
    assert draw.big_sq_total == pytest.approx(ref["g2"], rel=1e-9)


def test_parameters_unfrozen_after_the_tracker_was_made_are_an_error():
    """Freeze the backbone, make the tracker, unfreeze later (the usual fine-tuning pattern): the tracker's hooks never
    saw the unfrozen parameters and its pairs silently left them out (133 against 101). Now a TrackerError at the
    step says which and how to fix it; freezing after the tracker was made stays fine."""
    model = mlp()
    model[0].requires_grad_(False)
    tracker = Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), source="per_example")
    model[3].requires_grad_(False)   # frozen later: its gradient is simply absent
    model[3].requires_grad_(True)
    model[0].requires_grad_(True)
    loss = ce(model, data()).mean()
    with tracker.per_example():
        loss.backward()
    with pytest.raises(TrackerError,
                       match=r"0.weight, 0.bias became trainable \(or joined the optimizer\) after the Tracker") as err:
        tracker.step()
    assert "a new Tracker" in str(err.value) and hooks_left(model) == 0


def test_a_recurrent_layer_refuses_per_example_norms_when_the_tracker_is_made():
    """An LSTM has no per-example rule and its forward uses every weight: source='per_example' is refused at
    construction (before a training step), not at the first step; 'auto' still accepts the model (accumulation)."""
    class Lm(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.rnn, self.head = nn.Embedding(20, 8), nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 20)

        def forward(self, x):
            return self.head(self.rnn(self.emb(x))[0])

    with pytest.raises(TrackerError, match=r"recurrent layer\(s\) rnn \(LSTM\)") as e:
        Tracker(Lm(), source="per_example")
    assert "accumulation_steps" in e.value.hint
    model = Lm()
    Tracker(model, accumulation_steps=2).close()   # the same model, tracked by accumulation
    frozen = Lm()
    frozen.rnn.requires_grad_(False)                 # a frozen LSTM is no obstacle
    Tracker(frozen, source="per_example").close()


def test_per_example_under_cpu_autocast_is_taken_in_full_precision():
    """A forward under bf16 autocast: the rules run with autocast off (the context is entered only then), on
    widened δ and inputs, so the pair is close to the float32 one (bf16 rounding of the activations only)."""
    model, (x, y) = mlp(), data()
    model = model.float()
    x = x.float()

    def pair(amp: bool):
        tracker = Tracker(model, source="per_example")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = ce(model, (x, y)).float().mean()
        with tracker.per_example(model):
            loss.backward()
        draw = tracker.step(loss=loss)
        model.zero_grad()
        tracker.close()
        return draw.small_sq_total, draw.big_sq_total

    (s32, b32), (s16, b16) = pair(False), pair(True)
    assert np.isfinite([s16, b16]).all() and (s16, b16) != (s32, b32)
    assert s16 == pytest.approx(s32, rel=0.05) and b16 == pytest.approx(b32, rel=0.05)


def test_loss_scale_and_clipping_change_nothing_and_non_finite_steps_are_skipped():
    model, (x, y) = mlp(), data()
    plain = Tracker(model, accumulation_steps=2, batch_size=64)
    for j in range(2):
        (ce(model, (x[32 * j:32 * j + 32], y[32 * j:32 * j + 32])).mean() / 2).backward()
    ref = plain.step()
    plain.close()
    model.zero_grad()
    tracker = Tracker(model, accumulation_steps=2, batch_size=64)
    for scale in (1024.0, math.inf):
        for j in range(2):
            (scale * ce(model, (x[32 * j:32 * j + 32], y[32 * j:32 * j + 32])).mean() / 2).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # after backward: the hooks saw it already
        draw = tracker.step(loss_scale=1024.0)
        model.zero_grad()
    assert draw is None and tracker.skipped == 1 and len(tracker.draws) == 1
    assert tracker.draws[0].small_sq_total == pytest.approx(ref.small_sq_total, rel=1e-9)
    assert tracker.draws[0].big_sq_total == pytest.approx(ref.big_sq_total, rel=1e-9)


def test_adam_preconditioned_pair():
    """precondition=True under Adam: small/big are the |√P ⊙ ·|² of the same gradients, P from Adam's state."""
    model, (x, y) = mlp(), data()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    ce(model, (x, y)).mean().backward()
    opt.step()
    opt.zero_grad()
    tracker = Tracker(model, opt, accumulation_steps=2, batch_size=64, precondition=True)
    for j in range(2):
        (ce(model, (x[32 * j:32 * j + 32], y[32 * j:32 * j + 32])).mean() / 2).backward()
    tracker.step()
    P = adam_preconditioner(opt, list(model.parameters()))
    micro = [torch.autograd.grad(ce(model, (x[32 * j:32 * j + 32], y[32 * j:32 * j + 32])).mean(),
                                 list(model.parameters())) for j in range(2)]
    sq = [sum(float((p * g.square()).sum()) for p, g in zip(P, gs)) for gs in micro]
    big = sum(float((p * ((a + b) / 2).square()).sum()) for p, a, b in zip(P, *micro))
    pre = tracker.draws_pre[0]
    assert pre.small_sq_total == pytest.approx(np.mean(sq), rel=1e-9)
    assert pre.big_sq_total == pytest.approx(big, rel=1e-9)


# ---------------------------------------------------------------- closed form (statistical, fixed seeds)

def _run_least_squares(per_example: bool, steps: int, seed: int) -> Tracker:
    model, stream = net_at(TRUTH), FreshLeastSquares(TRUTH, seed)
    tracker = Tracker(model, source="per_example" if per_example else "accumulation",
                      accumulation_steps=None if per_example else 4, batch_size=64)
    for _ in range(steps):
        batch = stream.draw(64)
        if per_example:
            with tracker.per_example():
                ls_loss(model, batch).mean().backward()
        else:
            for chunk, _n in stream.batches(batch, 16):
                (ls_loss(model, chunk).mean() / 4).backward()
        tracker.step()
        model.zero_grad()
    return tracker


@pytest.mark.parametrize("per_example,steps", [(True, 60), (False, 150)])
def test_closed_form_inside_a_widened_interval(per_example, steps):
    tracker = _run_least_squares(per_example, steps, seed=7)
    est = tracker.estimate()
    assert est.ok, est
    lo, hi = est.value - 3 * (est.value - est.lo), est.value + 3 * (est.hi - est.value)
    assert lo < TRUTH.b_simple < hi, (est, TRUTH.b_simple)
    assert est.rel_halfwidth < 0.5


def _epoch_batches(population: int | None, steps: int = 300, n: int = 40, B: int = 32):
    """Per-example tracker at fixed weights, each step a batch of B drawn without replacement from n examples
    (as a shuffling loader draws within an epoch); the tracker told the population or not."""
    model, (x, y) = mlp(), data(n)
    tracker = Tracker(model, source="per_example", batch_size=B, population=population)
    g = torch.Generator().manual_seed(4)
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[:B]
        loss = ce(model, (x[idx], y[idx])).mean()
        with tracker.per_example():
            loss.backward()
        tracker.step(loss=loss)
        model.zero_grad()
    return tracker, exact_noise_scale(model, ce, TensorDataset(x, y))["b_simple"]


def test_batches_drawn_from_a_small_dataset_need_its_size():
    """B = 32 of n = 40 without replacement: E|G_B|² = |G|² + tr(Σ)·(n − B)/(B(n − 1)), not tr(Σ)/B. Told the
    population, the windowed B_simple covers the exact one (interval widened ×3, as above); not told, the i.i.d.
    formula inflates it (here by a third) and the interval misses it. Both draws and the log carry n."""
    told, exact = _epoch_batches(40)
    est = told.estimate()
    assert est.value - 3 * (est.value - est.lo) < exact < est.value + 3 * (est.hi - est.value), (est, exact)
    assert told.draws[0].n == 40
    naive = _epoch_batches(None)[0].estimate()
    assert naive.lo > 1.2 * exact, (naive, exact)
    with pytest.raises(TrackerError, match="population must be an int of at least 2"):
        Tracker(mlp(), source="per_example", population=1)


def test_one_step_of_the_whole_population_is_the_exact_value():
    """One step whose batch is the whole population (B = n = 40, told): its draw is exact, and the estimate over it
    said undetermined (a trial: value right, lo = hi = nan), where `bsprof measure` shows such a draw as [v, v]. A
    window of one step is at one set of weights: the exact value, a point interval; over two steps, an interval."""
    tracker, exact = _epoch_batches(40, steps=1, B=40)
    est = tracker.estimate()
    assert est.ok and est.lo == est.value == est.hi and est.value == pytest.approx(exact, rel=1e-9), (est, exact)


def test_the_population_travels_in_the_log(tmp_path):
    model, (x, y) = mlp(), data(40)
    tracker = Tracker(model, source="per_example", batch_size=32, population=40, log=tmp_path / "t.jsonl")
    for start in (0, 8, 0):
        loss = ce(model, (x[start:start + 32], y[start:start + 32])).mean()
        with tracker.per_example():
            loss.backward()
        tracker.step(loss=loss)
        model.zero_grad()
    tracker.close()
    log = read_log(tmp_path / "t.jsonl")
    assert [d.n for d in log.draws] == [40, 40, 40]
    assert report_from_log(tmp_path / "t.jsonl", window=3).measurements[-1].b_simple.value == pytest.approx(
        tracker.estimate(window=3).value)
    small = Tracker(model, source="per_example", population=20)
    with small.per_example():
        ce(model, (x[:32], y[:32])).mean().backward()
    with pytest.raises(TrackerError, match="batch of 32 is larger than population=20"):
        small.step()


def test_window_and_ema_are_ratios_of_means():
    tracker = _run_least_squares(False, 30, seed=3)
    w = tracker.estimate(window=10)
    ref = noise_scale(tracker.draws[-10:])
    assert (w.value, w.lo, w.hi) == (ref.b_simple, ref.b_simple_lo, ref.b_simple_hi)
    g2 = np.array([(d.B * d.big_sq_total - d.b * d.small_sq_total) / (d.B - d.b) for d in tracker.draws])
    tr = np.array([(d.small_sq_total - d.big_sq_total) / (1 / d.b - 1 / d.B) for d in tracker.draws])
    weights = 0.99 ** np.arange(len(g2))[::-1]
    assert tracker.ema_view.b_simple == pytest.approx((weights @ tr) / (weights @ g2), rel=1e-9)
    m = tracker.measurement(window=10)
    assert (m.step, m.n_draws, m.b, m.B, m.examples_seen) == (29, 10, 16, 64, 30 * 64)


# ---------------------------------------------------------------- the log

def logged_least_squares(tmp_path, lr: float):
    """(log path, stream, optimizer, tracker): least squares at TRUTH, 4 micro-batches of 16, logged to JSONL."""
    path = tmp_path / "gns.jsonl"
    model, stream = net_at(TRUTH), FreshLeastSquares(TRUTH, 5)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return path, model, stream, opt, Tracker(model, opt, accumulation_steps=4, batch_size=64, log=path)


def trained_log(tmp_path, steps: int):
    """The log of ``steps`` SGD steps (lr 0.01) of ``logged_least_squares``, its tracker closed."""
    path, model, stream, opt, tracker = logged_least_squares(tmp_path, 0.01)
    for _ in range(steps):
        for chunk, _n in stream.batches(stream.draw(64), 16):
            loss = ls_loss(model, chunk).mean()
            (loss / 4).backward()
        tracker.step(loss=loss)
        opt.step()
        opt.zero_grad()
    tracker.close()
    return path


def test_a_run_appended_to_a_log_is_read_with_its_own_header(tmp_path):
    """Two runs with one log path (a script rerun): the second appends with its own header, and the reader follows
    the last run's header (a new user's SGD rerun was read with the first run's Adam, its 3.2× factor and √ lr rule,
    and its accumulation). A log appended to by an older bsprof (headerless) is still cut where the step count
    restarts."""
    path = tmp_path / "shared.jsonl"
    model, (x, y) = mlp(), data()
    for opt, k in ((torch.optim.Adam(model.parameters(), 1e-3), 4), (torch.optim.SGD(model.parameters(), 0.1), 2)):
        tracker = Tracker(model, opt, accumulation_steps=k, batch_size=64, log=path)
        for _ in range(6):
            for j in range(k):
                part = slice(64 // k * j, 64 // k * (j + 1))
                (ce(model, (x[part], y[part])).mean() / k).backward()
            tracker.step()
            opt.step()
            opt.zero_grad()
        tracker.close()
    log = read_log(path)
    assert log.header["optimizer"] == "SGD" and log.header["accumulation_steps"] == 2 and log.earlier_runs == 1
    assert len(log.steps) == 6 and {s.draw.b for s in log.steps} == {32}
    report = report_from_log(path, window=3)
    assert report.config["optimizer"] == "SGD" and any(d["code"] == "several_runs" for d in report.diagnostics)
    lines = path.read_text().splitlines()
    headerless = [ln for i, ln in enumerate(lines) if i == 0 or '"schema"' not in ln]   # as an older bsprof appended
    path.write_text("\n".join(headerless) + "\n")
    old = read_log(path)
    assert old.earlier_runs == 1 and len(old.steps) == 6 and old.header["optimizer"] == "Adam"


def test_a_run_resumed_from_a_checkpoint_continues_the_log(tmp_path):
    """A run killed after step 9 and resumed from its checkpoint at step 6 (``tracker.step(step=6)``, as Lightning
    and Hugging Face pass their global step): the log reads as one run, steps 0–5 of the first and 6–11 of the
    second, the examples count carried on (the new tracker restarted it at 0), the retrained steps 6–9 of the first
    run replaced and said so. A fresh run appended after it (from step 0) still starts over."""
    path = tmp_path / "resumed.jsonl"
    model, (x, y) = mlp(), data()

    def run(steps, first=None):
        opt = torch.optim.SGD(model.parameters(), 0.1)
        with Tracker(model, opt, accumulation_steps=2, batch_size=64, log=path) as tracker:
            for i in range(steps):
                for j in range(2):
                    (ce(model, (x[32 * j:32 * (j + 1)], y[32 * j:32 * (j + 1)])).mean() / 2).backward()
                tracker.step(step=first if i == 0 else None)
                opt.step()
                opt.zero_grad()

    run(10)
    run(6, first=6)
    log = read_log(path)
    assert [s.step for s in log.steps] == list(range(12)) and log.earlier_runs == 0 and log.resumes == ((6, 4),)
    assert [s.examples for s in log.steps] == [64 * i for i in range(12)]
    report = report_from_log(path, window=4)
    codes = [d["code"] for d in report.diagnostics]
    assert "resumed" in codes and "several_runs" not in codes
    assert report.measurements[0].method == "track:auto→accumulation"   # the source auto took, from the pair sizes
    run(4, first=10)   # killed after step 11, resumed from its checkpoint at 10: one note names both resumes
    log = read_log(path)
    assert [s.step for s in log.steps] == list(range(14)) and log.resumes == ((6, 4), (10, 2))
    note = next(d["message"] for d in report_from_log(path, window=4).diagnostics if d["code"] == "resumed")
    assert "2 runs resumed" in note and "at step 6" in note and "at step 10" in note
    run(3)
    log = read_log(path)
    assert [s.step for s in log.steps] == [0, 1, 2] and log.earlier_runs == 1 and log.resumes == ()


def test_a_widened_window_is_not_answered_with_a_smaller_window(tmp_path):
    """Pairs whose |G|² no window of 10 resolves: the window is widened to 20, one row; the notes and schedule's fix
    say to log more steps, not to read with a smaller window (which is widened again: a new user's finding)."""
    from bsprof.schedule import ScheduleConfig, plan
    from bsprof.schedule.plan import ReportError

    rng = np.random.default_rng(0)
    lines = [{"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "accumulation",
              "accumulation_steps": 2, "optimizer": "SGD"}]
    for step in range(30):   # E|G_b|² = tr/b, E|G_B|² = tr/B: |G|² = 0, no window resolves it
        lines.append({"step": step, "examples": 64 * step, "b": 32, "B": 64, "small_sq": 100 / 32 *
                      rng.gamma(4, 1 / 4), "big_sq": 100 / 64 * rng.gamma(4, 1 / 4), "loss": 1 - 0.01 * step,
                      "lr": 0.1})
    path = tmp_path / "noisy.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    report = report_from_log(path, window=10)
    notes = {d["code"]: d["message"] for d in report.diagnostics}
    assert report.config["window"] == 20 and "log more steps" in notes["one_window"]
    assert "--window 10 was widened to 20" in notes["one_window"] and "e.g. --window" not in notes["one_window"]
    with pytest.raises(ReportError) as e:
        plan(report, ScheduleConfig(target_loss=0.5))
    assert e.value.hint.startswith("log more steps") and "e.g. --window" not in e.value.hint


def test_a_log_that_starts_late_with_no_examples_says_it_was_resumed_into_a_new_file(tmp_path):
    lines = [{"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "accumulation",
              "accumulation_steps": 2, "optimizer": "SGD"}]
    rng = np.random.default_rng(0)
    for i, step in enumerate(range(40, 60)):
        lines.append({"step": step, "examples": 64 * i, "b": 32, "B": 64, "small_sq": 3 * rng.gamma(50, 1 / 50),
                      "big_sq": 2 * rng.gamma(50, 1 / 50), "loss": 1.0 - 0.01 * i, "lr": 0.1})
    path = tmp_path / "version_1.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    notes = {d["code"]: d["message"] for d in report_from_log(path, window=5).diagnostics}
    assert "starts at step 40 with its examples count at 0" in notes["starts_late"]


def test_a_run_appended_after_a_torn_line_starts_on_its_own_line(tmp_path):
    """A run killed mid-line, then a run appended to the same log: its header starts a new line, the torn line is
    left out and said; a log from an older bsprof, whose header was glued onto the torn line, reads alike (a new
    user's finding: every reader failed with 'not valid JSON', and removing that line removed the header too)."""
    path = tmp_path / "torn.jsonl"
    model, (x, y) = mlp(), data()

    def run():
        opt = torch.optim.SGD(model.parameters(), 0.1)
        with Tracker(model, opt, accumulation_steps=2, batch_size=64, log=path) as tracker:
            for _ in range(5):
                for j in range(2):
                    (ce(model, (x[32 * j:32 * (j + 1)], y[32 * j:32 * (j + 1)])).mean() / 2).backward()
                tracker.step()
                opt.step()
                opt.zero_grad()

    run()
    path.write_text(path.read_text()[:-30])   # the last line cut off
    run()
    lines = path.read_text().splitlines()
    assert lines[6].startswith('{"schema"') and len(lines) == 12
    log = read_log(path)
    assert log.torn and len(log.steps) == 5 and log.earlier_runs == 1
    path.write_text("\n".join(lines[:5] + [lines[5] + lines[6]] + lines[7:]) + "\n")   # as an older bsprof wrote it
    old = read_log(path)
    assert old.torn and len(old.steps) == 5 and old.earlier_runs == 1


def test_check_on_a_log_from_several_ranks_says_the_batch_is_global(tmp_path):
    """The Tracker's batch_size is per rank, the log's noise scale (and check's -b) the global batch's: said."""
    from typer.testing import CliRunner

    from bsprof.cli import app

    rng = np.random.default_rng(0)
    lines = [{"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "ranks", "world_size": 2,
              "optimizer": "SGD"}]
    for step in range(40):   # |G|² = 1, tr(Σ) = 100: E|G_b|² = 1 + 100/b
        lines.append({"step": step, "examples": 64 * step, "b": 32, "B": 64, "small_sq": (1 + 100 / 32) *
                      rng.gamma(50, 1 / 50), "big_sq": (1 + 100 / 64) * rng.gamma(50, 1 / 50),
                      "loss": 2.0 - step / 40, "lr": 0.1})
    path = tmp_path / "ddp.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    r = CliRunner().invoke(app, ["check", str(path), "-b", "64", "--window", "10"])
    said = " ".join(r.output.split())
    assert r.exit_code in (0, 1) and "the log is from 2 ranks: its critical batch, and --batch-size, are the global" \
        in said, r.output


def test_a_log_under_a_decaying_lr_scheduler_scales_from_the_peak_lr(tmp_path):
    """A new user's cosine-annealed run: the log's last lr is the run's near-zero end (6e-6 for lr 0.1), and check
    failed the configured lr 0.1 as 16,000× too high while the schedule emitted lrs of 4e-6. The training lr of a
    log is its peak, and a note says the lr varied."""
    from typer.testing import CliRunner

    from bsprof.cli import app

    rng = np.random.default_rng(0)
    lines = [{"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "accumulation",
              "accumulation_steps": 2, "optimizer": "SGD"}]
    for step in range(60):   # |G|² = 1, tr(Σ) = 100, a cosine lr from 0.1 to ≈ 0
        lines.append({"step": step, "examples": 64 * step, "b": 32, "B": 64, "small_sq": (1 + 100 / 32) *
                      rng.gamma(50, 1 / 50), "big_sq": (1 + 100 / 64) * rng.gamma(50, 1 / 50),
                      "loss": 2.0 - step / 60, "lr": 0.05 * (1 + math.cos(math.pi * step / 60))})
    path = tmp_path / "cosine.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    report = report_from_log(path, window=10)
    assert report.config["optimizer_lr"] == pytest.approx(0.1)
    assert any(d["code"] == "lr_varied" and "from the peak 0.1" in d["message"] for d in report.diagnostics)
    r = CliRunner().invoke(app, ["check", str(path), "-b", "64", "--lr", "0.1", "--window", "10"])
    assert "PASS learning rate" in r.output and "from lr = 0.1 at B = 64" in " ".join(r.output.split()), r.output
    # the schedule scales from that peak too, and says so as check does (it said nothing: a trial's finding)
    planned = CliRunner().invoke(app, ["schedule", str(path), "--target-loss", "1.2", "--window", "10",
                                       "--format", "json"])
    assert planned.exit_code == 0, planned.output
    assert any("the logged lr varied" in n and "from the peak 0.1" in n for n in json.loads(planned.stdout)["notes"])


def test_a_log_without_losses_says_so(tmp_path):
    """The DDP and FSDP examples of the docs called tracker.step() without loss=: `bsprof schedule` on their log
    said "6 of the 6 windows … have a determined noise scale … log more steps": the fix is the loss."""
    from bsprof.schedule import ScheduleConfig, plan
    from bsprof.schedule.plan import ReportError

    rng = np.random.default_rng(0)
    lines = [{"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "accumulation",
              "accumulation_steps": 2, "optimizer": "SGD"}]
    for step in range(60):
        lines.append({"step": step, "examples": 64 * step, "b": 32, "B": 64, "small_sq": (1 + 100 / 32) *
                      rng.gamma(50, 1 / 50), "big_sq": (1 + 100 / 64) * rng.gamma(50, 1 / 50), "loss": None,
                      "lr": 0.1})
    path = tmp_path / "noloss.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    report = report_from_log(path, window=10)
    assert any(d["code"] == "no_losses" and "tracker.step(loss=loss)" in d["message"] for d in report.diagnostics)
    with pytest.raises(ReportError) as e:
        plan(report, ScheduleConfig(target_loss=0.5))
    assert "the log has no losses" in e.value.hint
    assert "at a finite loss: it has no losses" in e.value.message   # (its windows are ok: the losses are missing)


def test_a_target_above_a_logs_first_window_names_the_logs_fix(tmp_path):
    """A target above the loss where a log's noise scale starts: the fix is the log's (a smaller --window, or
    logging from earlier), not a probe's --measure-every and --noise b_simple, which a log has not (a new user's
    finding)."""
    from bsprof.schedule import ScheduleConfig, plan

    rng = np.random.default_rng(0)
    lines = [{"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "accumulation",
              "accumulation_steps": 2, "optimizer": "SGD"}]
    for step in range(60):
        lines.append({"step": step, "examples": 64 * step, "b": 32, "B": 64, "small_sq": (1 + 100 / 32) *
                      rng.gamma(50, 1 / 50), "big_sq": (1 + 100 / 64) * rng.gamma(50, 1 / 50),
                      "loss": 2.0 * 0.98 ** step, "lr": 0.1})
    path = tmp_path / "run.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(ConfigError) as e:
        plan(report_from_log(path, window=10), ScheduleConfig(target_loss=1.95))
    assert "where the log's noise scale starts (its first window of 10 steps" in str(e.value)
    assert "smaller --window" in e.value.hint and "--measure-every" not in e.value.hint


def test_a_target_below_a_logs_window_means_says_so_and_how_to_reach_lower(tmp_path):
    """A log's "measured losses" are window means, above the step losses the user saw: the message says so and
    suggests a smaller --window (a new user's run had reached the target at single steps)."""
    from bsprof.schedule import ScheduleConfig, plan
    from bsprof.schedule.plan import ExtrapolationError

    path, model, stream, opt, tracker = logged_least_squares(tmp_path, 0.01)
    for _ in range(60):
        for chunk, _n in stream.batches(stream.draw(64), 16):
            loss = ls_loss(model, chunk).mean()
            (loss / 4).backward()
        tracker.step(loss=loss)
        opt.step()
        opt.zero_grad()
    tracker.close()
    report = report_from_log(path, window=10)
    lowest = min(m.loss for m in report.measurements)
    with pytest.raises(ExtrapolationError) as e:
        plan(report, ScheduleConfig(target_loss=lowest / 100))
    assert "window-mean loss" in e.value.message and "smaller --window" in e.value.hint


@pytest.mark.parametrize("source", ["accumulation", "per_example"])
def test_a_loss_scale_past_float32s_squares_gives_the_unscaled_pair(source):
    """A GradScaler under bf16 or fp32 finds no overflow and keeps growing its scale: at 1e30 the squares of the
    scaled float32 gradients pass float32's range (1e60 > 3.4e38) although the gradients do not. On the CPU the
    accumulation source takes them in float64 there, the same pair as unscaled (it was skipped as non-finite at
    every step: a new user's finding); the per-example norms are not, and a warning says why and what to do."""
    if source == "per_example":
        model, (x, y) = mlp().float(), (torch.randn(64, 6), torch.randint(0, 3, (64,)))
        with Tracker(model, batch_size=64, source="per_example") as tracker:
            with tracker.per_example():
                (ce(model, (x, y)).mean() * 1e30).backward()
            with pytest.warns(UserWarning, match="GradScaler is not needed under bf16"):
                assert tracker.step(loss_scale=1e30) is None
        return
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    got = []
    for scale in (1.0, 1e30):
        model = mlp().float()
        with Tracker(model, batch_size=64, accumulation_steps=2) as tracker:
            for j in range(2):
                (ce(model, (x[32 * j:32 * (j + 1)], y[32 * j:32 * (j + 1)])).mean() / 2 * scale).backward()
            got.append(tracker.step(loss_scale=scale))
    assert got[1] is not None, "the scaled step was skipped"
    np.testing.assert_allclose(got[1].small_sq_total, got[0].small_sq_total, rtol=1e-4)
    np.testing.assert_allclose(got[1].big_sq_total, got[0].big_sq_total, rtol=1e-4)


def test_jsonl_round_trip_and_report(tmp_path):
    path, model, stream, opt, tracker = logged_least_squares(tmp_path, 0.0)
    for step in range(25):
        for chunk, _n in stream.batches(stream.draw(64), 16):
            loss = ls_loss(model, chunk).mean()
            (loss / 4 * (math.inf if step == 3 else 1.0)).backward()
        if tracker.step(loss=loss) is not None:  # skip the optimizer on an overflow, as GradScaler does
            opt.step()
        opt.zero_grad()
    tracker.close()
    lines = path.read_text().splitlines()
    header, first = json.loads(lines[0]), json.loads(lines[1])
    assert header["schema"] == "bsprof.track" and header["unit"] == "examples" and len(lines) == 26
    assert set(first) == {"step", "examples", "b", "B", "small_sq", "big_sq", "loss", "lr"}
    assert json.loads(lines[4])["skipped"] == "non-finite"
    assert not any(d["code"] == "torn_line" for d in report_from_log(path, window=10).diagnostics)
    with open(path, "a") as f:
        f.write('{"step": 25, "exam')  # a run killed mid-line
    log = read_log(path)
    assert log.skipped == 1 and len(log.steps) == 24
    for a, b in zip(log.draws, tracker.draws):
        assert (a.b, a.B, a.small_sq_total, a.big_sq_total, a.loss) == (b.b, b.B, b.small_sq_total,
                                                                          b.big_sq_total, b.loss)
    report = report_from_log(path, window=10)
    rows = report.measurements
    assert [r.step for r in rows] == [5, 15, 22]  # windows of 10 logged steps and the last 4, at their middle step
    assert rows[-1].n_draws == 4 and rows[-1].b_simple.value == pytest.approx(tracker.estimate(window=4).value)
    assert [r.n_draws for r in rows] == [10, 10, 4]  # no step counted twice
    again = Report.from_json(report.to_json(tmp_path / "report.json"))
    assert again.summary == report.summary and again.unit == "examples"
    assert any(d["code"] == "torn_line" and "cut off mid-write" in d["message"] for d in report.diagnostics)
    from bsprof.errors import ReportError

    torn = tmp_path / "torn.jsonl"  # a run killed while writing its header: said so (it read "not a header")
    torn.write_text(lines[0][:40])
    with pytest.raises(ReportError, match="its header line is cut off"):
        read_log(torn)


def test_a_log_shorter_than_two_windows_says_so(tmp_path):
    """24 logged steps read with a window of 100: one row over the whole run, labelled a training-step window (not
    "fixed-weight"), a note that says which --window gives a curve, and `schedule`'s refusal names --window rather
    than a probe training. Without --window a short log is read in five windows (at least 10 steps each)."""
    from bsprof.errors import ReportError
    from bsprof.schedule import ScheduleConfig, plan
    from bsprof.track.log import auto_window

    assert [auto_window(n) for n in (0, 24, 60, 150, 499, 500, 5000)] == [10, 10, 12, 30, 99, 100, 100]
    path = trained_log(tmp_path, 24)
    report = report_from_log(path, window=100)
    assert len(report.measurements) == 1
    s = report.summary
    assert s.critical_batch_quantity == "b_simple_window" and "training-step windows" in s.critical_batch_reason
    assert "fixed-weight" not in s.critical_batch_reason.split(";")[0]
    [note] = [d["message"] for d in report.diagnostics if d["code"] == "one_window"]
    assert "24 logged steps" in note and "--window 4" in note
    auto = report_from_log(path)
    assert auto.config["window_auto"] and auto.config["window"] >= 10 and "window_auto" not in report.config
    # 150 steps (a new user's run): at --window 100 two rows, and a note; by default five rows of 30, no note
    (tmp_path / "few").mkdir()
    few_log = trained_log(tmp_path / "few", 150)
    [note] = [d["message"] for d in report_from_log(few_log, window=100).diagnostics if d["code"] == "few_windows"]
    assert "150 logged steps: 2 windows of 100" in note and "--window 30" in note
    default = report_from_log(few_log)
    assert not [d for d in default.diagnostics if d["code"] == "few_windows"]
    assert default.config["window"] == 30 and len(default.measurements) == 5
    with pytest.raises(ReportError) as e:
        plan(report, ScheduleConfig(target_loss=0.1))
    assert "--window" in e.value.hint and "bsprof measure" not in e.value.hint
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n")  # two logged steps: no --window helps
    with pytest.raises(ReportError) as e:
        plan(report_from_log(path), ScheduleConfig(target_loss=0.1))
    assert "log more steps" in e.value.hint and "--window" not in e.value.hint


def test_a_log_that_is_not_a_tracker_log(tmp_path):
    from bsprof.errors import ReportError

    path = tmp_path / "x.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ReportError, match="not a bsprof tracker log"):
        read_log(path)
    with pytest.raises(ReportError, match="not a bsprof tracker log"):
        Tracker(nn.Linear(2, 1), accumulation_steps=2, log=path)


# ---------------------------------------------------------------- bad input: clear errors, the step untouched

def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _check_untouched(model, tracker, reference):
    assert tracker.closed and hooks_left(model) == 0
    for g, r in zip(_grads(model), reference):
        assert torch.equal(g, r)


def _reference_grads(k: int = 1):
    model, (x, y) = mlp(), data()
    for j in range(k):
        (ce(model, (x[64 // k * j:64 // k * (j + 1)], y[64 // k * j:64 // k * (j + 1)])).mean() / k).backward()
    return _grads(model)


def _backward(model, k: int = 1):
    x, y = data()
    for j in range(k):
        (ce(model, (x[64 // k * j:64 // k * (j + 1)], y[64 // k * j:64 // k * (j + 1)])).mean() / k).backward()


def test_step_arguments_none_and_not_numbers():
    """`tracker.step(loss_scale=scaler.get_scale() if amp else None)` raised a TypeError from inside _pair, after the
    step counter had moved (the log then jumped a step): None is no scale, and a value that is not a number is a
    TrackerError that leaves the counts as they were."""
    model = mlp()
    tracker = Tracker(model, accumulation_steps=2, batch_size=64)
    _backward(model, 2)
    assert tracker.step(loss_scale=None).B == 64 and tracker.step_count == 1
    _backward(model, 2)
    with pytest.raises(TrackerError, match="loss_scale must be a number") as err:
        tracker.step(loss_scale="big")
    assert "fix:" in str(err.value) and tracker.step_count == 1 and tracker.examples == 64
    assert hooks_left(model) == 0
    for loss in ("abc", torch.ones(3)):  # a new user's loss="abc" got a bare ValueError from inside the tracker
        model = mlp()
        tracker = Tracker(model, accumulation_steps=2, batch_size=64)
        _backward(model, 2)
        with pytest.raises(TrackerError, match="loss must be a number"):
            tracker.step(loss=loss)
        assert tracker.step_count == 0 and hooks_left(model) == 0
    model = mlp()
    tracker = Tracker(model, accumulation_steps=2, batch_size=64)
    _backward(model, 2)
    assert tracker.step(loss=2.5).loss == 2.5 and tracker.step_count == 1
    for scale, match in (("1024", "loss_scale must be a number"), (True, "loss_scale must be a number"),
                         (float("inf"), "loss_scale must be a positive finite number")):  # all three were taken
        model = mlp()
        tracker = Tracker(model, accumulation_steps=2, batch_size=64)
        _backward(model, 2)
        with pytest.raises(TrackerError, match=match):
            tracker.step(loss_scale=scale)


def test_step_before_backward():
    """A first step() with no backward since the Tracker was made (made between a step's backward passes and its
    step: a new user's loop) is not measured, with a warning, and the tracker goes on (it had closed for the whole
    run); a later step() with no backward since the last (called twice) is the error, and closes it."""
    model = mlp()
    tracker = Tracker(model, accumulation_steps=2, batch_size=64)
    with pytest.warns(UserWarning, match=r"no backward pass ran between the Tracker's creation and its first.*or "
                                         r"tracker.step\(\) is called before the backward passes"):
        assert tracker.step() is None
    assert not tracker.closed and tracker.step_count == 1 and not tracker.draws
    _backward(model, 2)
    assert tracker.step() is not None
    model.zero_grad()
    with pytest.raises(TrackerError, match="before any backward"):
        tracker.step()
    assert hooks_left(model) == 0
    with pytest.raises(TrackerError, match=r"after the tracker was closed by an earlier error \(tracker.step\(\) "
                                           "was called before any backward"):
        tracker.step()


def test_step_after_every_micro_step_is_named():
    """tracker.step() after every backward of an accumulating loop, with no accumulation_steps: the one-process
    error names the likely cause from the rows the forward saw (a new user read 'no nested pair' and 'use
    accumulation_steps >= 2' without seeing what they did wrong)."""
    model = mlp()
    tracker = Tracker(model, batch_size=128)
    _backward(model, 1)   # one micro-batch of 64 rows, of a declared step of 128
    with pytest.raises(TrackerError, match=r"saw 64 rows of the batch_size=128: is tracker.step\(\) called after "
                                           "every micro-step") as err:
        tracker.step()
    assert "accumulation_steps=2" in err.value.hint


@pytest.mark.parametrize("kwargs,k,match", [
    ({"accumulation_steps": 4, "batch_size": 64}, 2, "2 backward passes in this step, but accumulation_steps=4"),
    ({"batch_size": 64}, 1, "one process, one backward per step: b = B = 64"),
    ({}, 1, "one process, one backward per step: b = B, no nested pair"),  # the batch size would not help: first
    ({}, 2, r"(?s)does not know the batch size.*saw 64 rows on dim 0 of their input"),
])
def test_bad_steps_say_what_and_leave_the_step_untouched(kwargs, k, match):
    model = mlp()
    tracker = Tracker(model, **kwargs)
    _backward(model, k)
    with pytest.raises(TrackerError, match=match) as err:
        tracker.step()
    assert "fix:" in str(err.value)
    _check_untouched(model, tracker, _reference_grads(k))


def test_one_backward_per_step_on_a_batchnorm_model_does_not_suggest_per_example_norms():
    """The fix for "one backward per step" offered `with tracker.per_example():`, which a BatchNorm model refuses
    (a new user's trial): there it names why per-example norms are not available, and accumulation or DDP."""
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    tracker = Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1))
    torch.nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 2, (16,))).backward()
    with pytest.raises(TrackerError, match="one backward per step") as err:
        tracker.step()
    assert "per_example" not in err.value.hint and "accumulation_steps >= 2" in err.value.hint
    assert "BatchNorm" in err.value.hint


def test_an_uneven_step_in_one_process_is_left_out_and_tracking_goes_on():
    """An epoch's short last batch chunked into the micro-steps (41 = 11 + 11 + 11 + 8) has no pair of equal
    micro-batches: the step is left out (warned once, counted in ``uneven``, its examples counted), and the next
    steps are measured. It raised and closed the tracker for the rest of training (a new user's finding)."""
    import warnings

    model = mlp()
    tracker = Tracker(model, accumulation_steps=2, batch_size=64)
    _backward(model, 2)
    assert tracker.step() is not None
    model.zero_grad()
    _backward(model, 2)
    with pytest.warns(UserWarning, match="does not split into equal micro-batches") as said:
        assert tracker.step(batch_size=41) is None
    assert said[0].filename == __file__   # at the user's tracker.step line (it pointed one frame above: a trial)
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _backward(model, 2)
        assert tracker.step(batch_size=43) is None  # said once
        model.zero_grad()
        _backward(model, 2)
        assert tracker.step() is not None
    assert (tracker.uneven, len(tracker.draws), tracker.step_count, tracker.examples) == (2, 2, 4, 64 + 41 + 43 + 64)
    tracker.close()


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 0}, r"batch_size must be an int of at least 1 \(got 0\)"),
    ({"batch_size": "32"}, r"batch_size must be an int of at least 1 \(got '32'\)"),
    ({"batch_size": True}, "batch_size must be an int"),
    ({"accumulation_steps": "2"}, "accumulation_steps must be an int of at least 1"),
    ({"accumulation_steps": 0}, "accumulation_steps must be an int of at least 1"),
    ({"unit": "token"}, r"unknown unit 'token'"),          # was written to the log: "Critical batch … token"
    ({"optimizer": 4}, r"optimizer must be a torch optimizer \(got int"),  # the optimizer's place: failed in step()
])
def test_bad_tracker_arguments_are_refused_when_it_is_made(kwargs, match):
    """A batch size of 0 or −32 was taken and failed at the first step inside the estimators (``need b < B``); a
    string from a config failed with a formatting TypeError (a new user's finding); an unknown unit was written to
    the log, a number in the optimizer's place failed at the first step with an AttributeError (another's)."""
    model = mlp()
    with pytest.raises(TrackerError, match=match):
        Tracker(model, **kwargs)
    assert hooks_left(model) == 0
    tracker = Tracker(model, accumulation_steps=2, batch_size=np.int64(64))  # numpy ints are ints
    _backward(model, 2)
    with pytest.raises(TrackerError, match="batch_size must be at least 1"):
        tracker.step(batch_size=0)


@pytest.mark.parametrize("window", [0, 1, 2.5, "10"])
def test_a_window_of_fewer_than_two_steps_is_refused(window):
    """One step's pair has no interval (the Fieller interval needs two): window=1 returned a value without one."""
    tracker = Tracker(mlp(), accumulation_steps=2, batch_size=64)
    with pytest.raises(TrackerError, match="window must be a number of steps, at least 2"):
        tracker.estimate(window)
    with pytest.raises(TrackerError, match="at least 2"):
        tracker.estimate_pre(window)
    tracker.close()


def test_per_example_batch_size_mismatch_and_unavailable_models():
    model = mlp()
    tracker = Tracker(model, batch_size=32)
    with tracker.per_example():
        _backward(model)
    with pytest.raises(TrackerError, match="batch_size=32, but the per-example hooks saw 64 rows"):
        tracker.step()
    _check_untouched(model, tracker, _reference_grads())
    # an epoch's short last batch under the Tracker's own batch_size: counted at its size (it raised and stopped
    # a new user's training); passed to the step, a mismatch is still an error
    model = mlp()
    tracker = Tracker(model, batch_size=128)
    with tracker.per_example():
        _backward(model)
    with pytest.warns(UserWarning, match="a step of 64 examples .* is counted at its own size"):
        assert tracker.step().B == 64
    model.zero_grad()
    with tracker.per_example():
        _backward(model)
    with pytest.raises(TrackerError, match="batch_size=128, but the per-example hooks saw 64 rows"):
        tracker.step(batch_size=128)
    bn = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).double()
    with pytest.raises(TrackerError, match="BatchNorm"):
        Tracker(bn, source="per_example")
    tracker = Tracker(bn, accumulation_steps=2, batch_size=64)
    with pytest.raises(TrackerError, match="per-example norms are not available"):
        with tracker.per_example():
            pass
    assert not tracker.closed  # still usable for accumulation
    tracker.close()
    assert hooks_left(bn) == 0
    plain = Tracker(mlp(), accumulation_steps=2, batch_size=64)  # auto with accumulation hooks no layers: said
    with pytest.raises(TrackerError, match="source='auto' with accumulation_steps hooks no layers") as err:
        with plain.per_example():
            pass
    assert "source='per_example'" in err.value.hint
    plain.close()


def test_per_example_layers_fed_sequence_first_are_refused():
    """Linear layers fed [T, B, F] (a transpose inside the model) see T rows on dim 0, not the B examples: the
    tracker says so at the step (the input's dim 0 differs) instead of taking T as the batch."""
    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):  # x: [B, T, 6]
            return self.b(torch.tanh(self.a(x.transpose(0, 1)))).mean(0)

    model = SeqFirst().double()
    tracker = Tracker(model, accumulation_steps=None)
    x, y = torch.randn(32, 16, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    with tracker.per_example():
        nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(TrackerError, match=r"saw \[16\] rows on dim 0 but the model's input had \[32\]"):
        tracker.step()
    tracker.close()
    assert hooks_left(model) == 0


def test_a_sequence_first_attention_model_with_as_many_positions_as_examples_is_refused():
    """Tokens [B, T] transposed to [T, B] for an nn.MultiheadAttention(batch_first=False), its Linear head fed
    [T, B, E]: with T ≠ B the rows differ (refused); with T = B they did not, and the pair was silently wrong (a
    trial saw 65×): now refused too, by two forwards without grad on fewer examples (once per tracker, only when a
    layer is fed [N, N, …]): the layers fed [T, B, …] keep T, and are named."""
    class SeqFirstLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.att, self.head = nn.Embedding(11, 8), nn.MultiheadAttention(8, 2), nn.Linear(8, 11)

        def forward(self, tokens):
            h = self.emb(tokens.t())
            return self.head(h + self.att(h, h, h, need_weights=False)[0]).transpose(0, 1)

    for batch, positions, match in ((6, 9, r"different batch sizes \[6, 9\]"),
                                    (6, 6, r"emb, head are fed \[T, B, …\] \(the sequence on dim 0, as long as the "
                                           r"batch here, 6")):
        torch.manual_seed(0)
        model, tokens = SeqFirstLM().double(), torch.randint(0, 11, (batch, positions + 1))
        tracker = Tracker(model, source="per_example")
        with tracker.per_example():
            _lm_losses(model, tokens).mean().backward()
        with pytest.raises(TrackerError, match=match):
            tracker.step()
        tracker.close()
        assert hooks_left(model) == 0


def test_a_linear_fed_sequence_first_with_as_many_positions_as_examples_is_refused_and_batch_first_is_not():
    """A Linear fed [T, B, F] after a transpose, T = B and no attention layer to give it away (a trial: 0.67× of the
    exact value, outside its own interval): refused by the two-size check; the same model batch-first, T = B, is
    measured exactly, and the check's forwards leave the random state as it was."""
    from bsprof.probes.vmap import per_example_vmap

    class Net(nn.Module):
        def __init__(self, seq_first):
            super().__init__()
            self.seq_first, self.a, self.b = seq_first, nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):  # x: [B, T, 6]
            h = torch.tanh(self.a(x.transpose(0, 1) if self.seq_first else x))
            return self.b(nn.functional.dropout(h, 0.0)).mean(0 if self.seq_first else 1)

    x, y = torch.randn(12, 12, 6, dtype=torch.float64), torch.randint(0, 3, (12,))
    for seq_first in (True, False):
        torch.manual_seed(0)
        model = Net(seq_first).double()
        tracker = Tracker(model, source="per_example")
        with tracker.per_example():
            ce(model, (x, y)).mean().backward()
        state = torch.random.get_rng_state()
        if seq_first:
            with pytest.raises(TrackerError, match=r"a, b are fed \[T, B, …\]"):
                tracker.step()
        else:
            draw = tracker.step()
            ref = per_example_vmap(model, ce, (x, y), 12)
            assert draw.small_sq_total == pytest.approx(float(ref.small_sq_sum.sum()) / 12, rel=1e-9)
        assert torch.equal(state, torch.random.get_rng_state())
        tracker.close()


def test_ddp_source_in_one_process_is_a_one_line_error():
    with pytest.raises(TrackerError, match="needs a DistributedDataParallel model on 2 or more ranks") as err:
        Tracker(mlp(), source="ddp")
    assert str(err.value).count("\n") == 1  # the message, then the fix


def test_close_removes_every_hook():
    model = mlp()
    with Tracker(model, source="per_example"):
        assert hooks_left(model) > 0
    assert hooks_left(model) == 0


@pytest.mark.parametrize("source", ["per_example", "accumulation"])
def test_a_copy_or_pickle_of_the_model_taken_while_tracking_carries_no_hook(tmp_path, source):
    """copy.deepcopy(model) (an EMA copy) and torch.save(model) while a tracker is open carried bsprof's forward
    hooks (and an attention layer's swapped forward) into the copy, where close() never removed them, and the
    pickle needed bsprof to load (a trial's finding). Now the copy and the loaded pickle hold none and compute what
    the model does; the model's own hooks go at close(), and with them its instance __getstate__."""
    import copy
    import subprocess
    import sys

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(),
                          nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), nn.Linear(8, 1))
    x = torch.randn(8, 3, 4)
    kw = {"accumulation_steps": 2} if source == "accumulation" else {}
    tracker = Tracker(model, torch.optim.SGD(model.parameters(), 0.1), source=source, batch_size=8, **kw)
    assert hooks_left(model) > 0
    snap = copy.deepcopy(model)
    torch.save(model, tmp_path / "model.pt")
    assert hooks_left(snap) == 0 and not any({"forward", "__getstate__"} & set(vars(m)) for m in snap.modules())
    torch.testing.assert_close(snap(x), model(x), rtol=0, atol=0)
    # loads where bsprof cannot be imported: nothing of bsprof in the pickle
    code = (f"import sys; sys.modules['bsprof'] = None; import torch; "
            f"m = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False); "
            "print(sum(len(s._forward_hooks) + len(s._forward_pre_hooks) for s in m.modules()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr[-2000:]
    tracker.close()
    assert hooks_left(model) == 0 and not any({"forward", "__getstate__"} & set(vars(m)) for m in model.modules())


def test_an_epochs_short_last_batch_is_taken_at_the_rows_it_saw():
    """batch_size=48 in 3 micro-steps, and an epoch's last batch of 33 (3 × 11) or 34 (12 + 11 + 11) with
    drop_last=False, step() called without batch_size: once the rows the model saw agreed with batch_size, a step
    with fewer is that short batch: 33 is measured as b = 11, B = 33, and 34 is left out as uneven (it was logged as
    b = 16, B = 48, with one warning for all epochs: a new user's finding). A batch_size the rows never agreed with
    still only warns, at the user's line."""
    model, (x, y) = mlp(), data(96)
    tracker = Tracker(model, accumulation_steps=3, batch_size=48)

    def step(n):
        for part in torch.arange(n).chunk(3):
            (ce(model, (x[part], y[part])).mean() / 3).backward()
        out = tracker.step()
        model.zero_grad()
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full, short = step(48), step(33)
    with pytest.warns(UserWarning, match="does not split into equal micro-batches"):
        uneven = step(34)
    assert (full.b, full.B) == (16, 48) and (short.b, short.B) == (11, 33) and uneven is None
    assert tracker.uneven == 1 and tracker.examples == 48 + 33 + 34
    tracker.close()
    other = Tracker(model, accumulation_steps=3, batch_size=48)
    with pytest.warns(UserWarning, match="saw 33 rows") as said:
        for part in torch.arange(33).chunk(3):
            (ce(model, (x[part], y[part])).mean() / 3).backward()
        assert other.step().B == 48
    assert said[0].filename == __file__
    other.close()


def test_an_epochs_short_last_step_of_fewer_micro_steps_is_left_out():
    """100 examples in micro-batches of 16, 2 per optimizer step: the epoch's last step has one micro-batch of 4.
    After full steps it is left out (counted in ``uneven``, its examples counted, said once) and tracking goes on;
    it was an error that closed the tracker (a new user's finding). Fewer passes on the first step is still the
    error it names (tracker.step() after every micro-step)."""
    model, (x, y) = mlp(), data(100)
    tracker = Tracker(model, accumulation_steps=2, batch_size=32)
    for epoch in range(2):
        for i, part in enumerate(torch.arange(100).split(32)):
            for micro in part.split(16):
                (ce(model, (x[micro], y[micro])).mean() / 2).backward()
            if epoch == 1 and i == 3:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    assert tracker.step() is None   # said once, the epoch before
            elif i == 3:
                with pytest.warns(UserWarning, match="a step of 1 backward passes, after steps of accumulation_steps"):
                    assert tracker.step() is None
            else:
                assert tracker.step() is not None
            model.zero_grad()
    assert len(tracker.draws) == 6 and tracker.uneven == 2 and tracker.examples == 200 and not tracker.closed
    tracker.close()
    first = Tracker(model, accumulation_steps=2, batch_size=32)
    (ce(model, (x[:16], y[:16])).mean() / 2).backward()
    with pytest.raises(TrackerError, match="1 backward pass in this step, but accumulation_steps=2"):
        first.step()


@pytest.mark.parametrize("bad, says", [(-1, "step must be at least 0"), (1.5, "step must be a whole number")])
def test_a_step_number_that_is_no_step_is_refused(bad, says):
    model, (x, y) = mlp(), data()
    with Tracker(model, accumulation_steps=2, batch_size=64) as tracker:
        for j in range(2):
            (ce(model, (x[32 * j:32 * j + 32], y[32 * j:32 * j + 32])).mean() / 2).backward()
        with pytest.raises(TrackerError, match=says):
            tracker.step(step=bad)


def test_a_step_number_going_back_is_said():
    model, (x, y) = mlp(), data()
    with Tracker(model, accumulation_steps=2, batch_size=64) as tracker:
        for i, number in enumerate((10, 11, 5)):
            for j in range(2):
                (ce(model, (x[32 * j:32 * j + 32], y[32 * j:32 * j + 32])).mean() / 2).backward()
            if i < 2:
                tracker.step(step=number)
            else:
                with pytest.warns(UserWarning, match="step=5 comes before step 11"):
                    tracker.step(step=number)
            model.zero_grad()


def test_a_second_tracker_on_a_model_that_has_an_open_one_is_refused():
    """Two open trackers would both hook the model's backward passes; the second is refused with the fix, and a
    closed tracker frees the model."""
    model = mlp()
    first = Tracker(model, accumulation_steps=2)
    before = hooks_left(model)
    with pytest.raises(TrackerError, match="already has an open bsprof tracker") as err:
        Tracker(model, accumulation_steps=2)
    assert "close the first" in str(err.value) and hooks_left(model) == before
    first.close()
    with Tracker(model, accumulation_steps=2):
        pass
    assert hooks_left(model) == 0


def test_a_log_locked_by_another_process_is_refused_and_a_collected_trackers_log_is_free(tmp_path):
    """Two processes given one log path interleaved their steps, which the reader took for resumed runs; the writer
    now holds an advisory lock, and a second writer is refused (another process's lock is simulated by a second
    open file with its own flock, which conflicts as another process's would). A tracker collected without
    close() frees its log path: it stayed blocked until the process ended (a new user's finding)."""
    import fcntl
    import gc

    from bsprof.errors import ConfigError
    from bsprof.track.log import LogWriter

    path = tmp_path / "shared.jsonl"
    with open(path, "a") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="being written by another process's bsprof tracker"):
            LogWriter(path)
        model = mlp()
        with pytest.raises(TrackerError, match="being written by another process's bsprof tracker"):
            Tracker(model, accumulation_steps=2, log=path)   # the one type the docs say to catch
        assert hooks_left(model) == 0
    LogWriter(path).close()   # the other process let go

    def abandoned():
        Tracker(mlp(), accumulation_steps=2, log=path)   # never closed

    abandoned()
    gc.collect()
    with Tracker(mlp(), accumulation_steps=2, log=path):
        pass


def test_two_trackers_writing_one_log_are_refused_and_leave_no_hook(tmp_path):
    log = tmp_path / "run.jsonl"
    with Tracker(mlp(), accumulation_steps=2, log=log):
        other = mlp(1)
        with pytest.raises(BsprofError, match="already being written by another open bsprof tracker"):
            Tracker(other, accumulation_steps=2, log=tmp_path / "." / "run.jsonl")
        assert hooks_left(other) == 0
    with Tracker(mlp(1), accumulation_steps=2, log=log):   # the first closed: the file is free
        pass


# ---------------------------------------------------------------- DDP and FSDP2: two gloo ranks (torchrun subprocesses)

def _torchrun(worker: str, out) -> dict:
    """Run tests/assets/``worker`` on 2 gloo ranks; the JSON rank 0 wrote."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                          "127.0.0.1", "--master-port", str(port), str(root / "tests/assets" / worker),
                          str(out)], cwd=root, capture_output=True, text=True, timeout=180, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


needs_gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs gloo")


@pytest.mark.distributed
@needs_gloo
def test_ddp_with_accumulation_and_no_sync(tmp_path):
    """b = one rank's micro-batch, B = W·k·b; the pair against one made by hand; B_simple near the closed form."""
    r = _torchrun("track_ddp_worker.py", tmp_path / "track.json")
    assert r["small"] == pytest.approx(r["small_ref"], rel=1e-5)  # mean over ranks and micro-batches of |G_b|²
    assert r["big"] == pytest.approx(r["big_ref"], rel=1e-5)      # |all-reduced gradient|², after no_sync steps
    assert (r["world"], r["b"], r["B"], r["n_draws"]) == (2, 16, 64, 150)
    lo, hi = r["b_simple"] - 3 * (r["b_simple"] - r["lo"]), r["b_simple"] + 3 * (r["hi"] - r["b_simple"])
    assert r["status"] == "ok" and lo < r["closed_form"] < hi
    # ranks that disagree raise together, and the job's collectives stay in step (a rank that failed alone, its
    # error caught, left the other in the tracker's all-reduce: gloo aborted "Received data size doesn't match")
    uneven, one = r["uneven"], r["one_fails"]
    assert all("the ranks' batches differ in size" in m for m in uneven["messages"]) and uneven["after"] == 2
    assert "does not split into 2 equal micro-batches" in one["messages"][1]
    assert "1 other rank(s) failed this step's checks" in one["messages"][0] and one["after"] == 2
    assert uneven["closed"] and one["closed"]
    rows = r["rows"]  # equal batch_size passed, unequal rows fed (a new user's rank 1 fed 12 of 16): an error on both
    assert all("the ranks' forward passes saw different numbers of rows" in m for m in rows["messages"]), rows
    assert rows["after"] == 2 and rows["closed"]
    every = r["all_uneven"]  # every rank's batch uneven (an epoch's short last batch): left out on all, not closed
    assert every["messages"] == ["", ""] and not every["closed"] and every["left_out"] == 1 and every["after"] == 2
    assert every["examples"] == 2 * 33
    short = r["short_everywhere"]  # every rank's epoch ends in a step of 1 micro-step of 2: left out on both
    assert short["messages"] == ["", ""] and not short["closed"] and short["left_out"] == 1, short
    assert short["measured"] == [True, False, True] and short["examples"] == 2 * (32 + 16 + 32)
    one = r["short_on_one"]      # on one rank only: the ranks' batches differ, an error on both at that step
    assert "ran 1 backward passes (accumulation_steps=2) on this rank, and all 2 on 1 other" in one["messages"][1]
    assert "1 other rank(s) failed this step's checks" in one["messages"][0], one
    assert one["closed"] and one["after"] == 2 and one["measured"] == [True]
    # a Tracker on ddp.module (or made before DDP(model)) read the averaged .grad as one process's: B_simple came
    # out as a lower bound, silently (a new user's trial); refused unless the source is chosen for each rank alone
    assert "the model is not a DistributedDataParallel" in r["inner"] and "on the wrapper" in r["inner"], r["inner"]
    nodes, bad = r["nodes"], r["bad_loss"]  # rows that are no rank's batch: measured; a rank's bad argument: both raise
    assert nodes["messages"] == ["", ""] and not nodes["closed"] and nodes["after"] == 2
    assert "loss must be a number" in bad["messages"][1] and "1 other rank(s) failed" in bad["messages"][0]
    assert bad["after"] == 2


@pytest.mark.distributed
@needs_gloo
def test_fsdp2_pair_is_the_full_batch_pair_without_fsdp(tmp_path):
    """FSDP2 on 2 gloo ranks: |G_b|² from hooks on the unsharded parameters before the reduce-scatter, |G_B|² from
    the squared norms of the gradient shards after it, summed over ranks; both equal the pair computed on one
    process without FSDP on the full batch (with accumulation, without, and with set_gradient_divide_factor(1));
    B_simple near the least-squares closed form; per-example and an unsynced last backward are refused."""
    r = _torchrun("track_fsdp_worker.py", tmp_path / "track.json")
    m = r["mlp"]
    for name, (b, B) in (("accum", (8, 32)), ("plain", (16, 32)), ("summed", (8, 32))):
        assert m[name]["small"] == pytest.approx(m[name]["small_ref"], rel=1e-10), name
        assert m[name]["big"] == pytest.approx(m[name]["big_ref"], rel=1e-10), name
        assert (m[name]["b"], m[name]["B"]) == (b, B)
        assert m[f"{name}_hooks"] > 0
    assert m["hooks_left"] == 0
    assert "not available for an FSDP2" in m["per_example_refused"]
    assert "without gradient sync" in m["unsynced_refused"]
    ls = r["ls"]
    assert (r["world"], ls["b"], ls["B"], ls["n_draws"]) == (2, 16, 64, 150)
    lo, hi = ls["b_simple"] - 3 * (ls["b_simple"] - ls["lo"]), ls["b_simple"] + 3 * (ls["hi"] - ls["b_simple"])
    assert ls["status"] == "ok" and lo < ls["closed_form"] < hi


def test_a_failed_all_reduce_says_another_rank_stopped(monkeypatch):
    """The step's all-reduce failing (a peer gone: gloo's "Connection closed by peer" from inside bsprof) is a
    TrackerError that points at the other rank and at calling step() on every rank; the tracker closes."""
    import torch.distributed as dist

    model = mlp()
    tracker = Tracker(model, accumulation_steps=2)
    tracker.world = 2

    def gone(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer\nmore")
    monkeypatch.setattr(dist, "all_reduce", gone)
    monkeypatch.setattr(tracker, "_collective_device", lambda: torch.device("cpu"))
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    for half in (slice(0, 4), slice(4, 8)):
        (torch.nn.functional.cross_entropy(model(x[half]), y[half]) / 2).backward()
    with pytest.raises(TrackerError, match=r"all-reduce of this step's statistics over 2 ranks failed \(RuntimeError: "
                       r".*Connection closed by peer\): another rank stopped") as err:
        tracker.step(8)
    assert "every rank" in err.value.hint and "more" not in str(err.value)
    assert tracker.closed


def test_fsdp_source_without_fsdp_is_a_one_line_error():
    with pytest.raises(TrackerError, match="source='fsdp' needs a model whose parameters were sharded") as err:
        Tracker(mlp(), source="fsdp")
    assert str(err.value).count("\n") == 1


def test_report_layers_of_a_tracker_log_says_there_are_none(tmp_path):
    """`bsprof report LOG.jsonl --layers` printed no layer table and no word about it (a new user's finding): it
    says a tracker log has none and where one comes from, exit 2 as for other things a source cannot give
    (--target-loss beyond it); in CSV too, instead of an empty file."""
    from typer.testing import CliRunner

    from bsprof.cli import app

    path = trained_log(tmp_path, 6)
    runner = CliRunner()
    assert runner.invoke(app, ["report", str(path), "--window", "3"]).exit_code == 0
    for extra in ([], ["-f", "csv"]):
        r = runner.invoke(app, ["report", str(path), "--window", "3", "--layers", *extra])
        assert r.exit_code == 2 and r.stdout == "", r.output
        said = " ".join(r.stderr.split())
        assert "is a tracker log: it has no per-layer table" in said and "writes layers.csv" in said
        assert "Traceback" not in r.output


def test_the_cli_reads_a_tracker_log_like_a_report(tmp_path):
    """A single-process accumulation loop logs JSONL; `report`, `schedule` and `check` take that log."""
    import json as _json

    from models import logged_run
    from typer.testing import CliRunner

    from bsprof.cli import app

    log = logged_run(tmp_path / "gns.jsonl", steps=60)
    runner = CliRunner()
    shown = runner.invoke(app, ["report", str(log), "--window", "20"])
    assert shown.exit_code == 0 and "B_simple at step" in shown.output, shown.output
    rows = report_from_log(log, window=20).measurements
    assert all(r.b_simple.ok for r in rows)
    last = min(r.loss for r in rows)
    planned = runner.invoke(app, ["schedule", str(log), "--window", "20", "--target-loss", str(0.9 * last),
                                  "--format", "json", "--allow-extrapolation"])
    assert planned.exit_code == 0, planned.output
    plan = _json.loads(planned.stdout)
    assert plan["stages"]
    assert any("a tracker log: B_simple over training-step windows" in n for n in plan["notes"])
    b = rows[-1].b_simple.value
    assert runner.invoke(app, ["check", str(log), "-b", str(max(1, round(b))), "--window", "20"]).exit_code == 0
    large = runner.invoke(app, ["check", str(log), "-b", str(round(1000 * b)), "--window", "20"])
    assert large.exit_code == 0 and "train (and log) further" in large.output, large.output  # its path only
    assert runner.invoke(app, ["check", str(log), "-b", str(round(1000 * b)), "--window", "20", "--at-loss",
                               str(last)]).exit_code == 1
    confused = runner.invoke(app, ["check", str(log), "-b", "8", "-t", "0.5"])  # -t is --training-config here
    assert confused.exit_code == 2 and "--at-loss" in confused.output


def test_a_loop_that_forgets_zero_grad_is_told():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    tracker = Tracker(model, opt, accumulation_steps=2, batch_size=16)
    for step in range(2):
        for _ in range(2):
            x = torch.randn(8, 4)
            (model(x).square().mean() / 2).backward()
        if step == 0:
            tracker.step()
            opt.step()  # no zero_grad: the next step's first backward starts on stale gradients
        else:
            with pytest.raises(TrackerError, match="zero_grad"):
                tracker.step()
    assert not model.weight._backward_hooks  # the tracker removed its hooks


@pytest.mark.parametrize("change", ["clip", "zero_grad", "zero_grad_keep", "none", "none_keep"])
def test_a_change_to_grad_between_micro_steps_is_told(change):
    """Clipping or zero_grad() inside the accumulation loop: |G_B|² read from .grad after the last pass is no longer
    the sum the micro-batches' norms were taken of (a trial's finding: B_simple 2.6× too high, status ok). Told at
    the step; the usual loop (zero_grad with or without set_to_none) is not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    tracker = Tracker(model, opt, accumulation_steps=4, batch_size=32)
    for step in range(3):
        for _ in range(4):
            (model(torch.randn(8, 4)).square().mean() / 4).backward()
            if step == 2 and change == "clip":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            elif step == 2 and change.startswith("zero_grad"):
                opt.zero_grad(set_to_none=change == "zero_grad")
        if step == 2 and change not in ("none", "none_keep"):
            with pytest.raises(TrackerError, match=r"\.grad changed between this step's backward passes"):
                tracker.step()
            return
        assert tracker.step() is not None
        opt.step()
        opt.zero_grad(set_to_none=not change.endswith("keep"))


def test_a_change_to_grad_that_starts_later_is_told_at_the_next_watched_step():
    """The watch runs on the first 8 steps and every 16th after (sources.WATCH_FIRST, WATCH_EVERY): clipping inside
    the accumulation loop from step 10 on is told at step 16."""
    from bsprof.track.sources import WATCH_EVERY, WATCH_FIRST

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    tracker = Tracker(model, opt, accumulation_steps=2, batch_size=16)
    told = None
    for step in range(2 * WATCH_EVERY):
        for _ in range(2):
            (model(torch.randn(8, 4)).square().mean() / 2).backward()
            if step >= WATCH_FIRST + 2:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        try:
            tracker.step()
        except TrackerError:
            told = step
            break
        opt.step()
        opt.zero_grad()
    assert told == WATCH_EVERY


class SharedPositions(nn.Module):
    """nanoGPT/GPT-2 style: a position embedding called on [1, T] positions (or [T]), broadcast over the batch by an
    add; ``mix="mul"`` scales by it instead, which the per-example norms cannot follow."""

    def __init__(self, vocab=7, dim=4, T=5, row=True, mix="add"):
        super().__init__()
        self.tok, self.pos, self.head = nn.Embedding(vocab, dim), nn.Embedding(T, dim), nn.Linear(dim, vocab)
        self.row, self.mix = row, mix

    def forward(self, x):
        p = torch.arange(x.shape[1])
        pos = self.pos(p.unsqueeze(0) if self.row else p)
        return self.head(self.tok(x) + pos if self.mix == "add" else self.tok(x) * pos)


def _lm_losses(model, tokens):
    out = model(tokens[:, :-1])
    return nn.functional.cross_entropy(out.transpose(1, 2), tokens[:, 1:], reduction="none").mean(1)


@pytest.mark.parametrize("row", [True, False], ids=["[1,T]", "[T]"])
def test_per_example_follows_a_position_embedding_shared_by_the_batch(row):
    """The per-example δ of a broadcast position embedding is the add's output gradient (as in `bsprof measure`'s
    probe): the pair equals torch.func's, and a later step is measured too (it used to fail, and with
    source="per_example" every later step raised)."""
    from bsprof.probes.vmap import per_example_vmap

    torch.manual_seed(0)
    model, tokens = SharedPositions(row=row).double(), torch.randint(0, 7, (8, 6))
    tracker = Tracker(model, source="per_example")
    for _ in range(2):
        loss = _lm_losses(model, tokens).mean()
        with tracker.per_example():
            loss.backward()
        draw = tracker.step(loss=loss)
        ref = per_example_vmap(model, _lm_losses, tokens, 8)
        assert (draw.b, draw.B) == (1, 8)
        assert draw.small_sq_total == pytest.approx(float(ref.small_sq_sum.sum()) / 8, rel=1e-9)
        model.zero_grad()
    tracker.close()
    assert hooks_left(model) == 0


def test_per_example_failure_switches_to_accumulation_and_keeps_tracking():
    """Per-example norms cannot follow a position embedding that scales the tokens' instead of being added: that
    step is left unmeasured with a message that says why, per-example norms are switched off, and later steps
    measure from accumulation."""
    torch.manual_seed(0)
    model = SharedPositions(mix="mul")
    tracker = Tracker(model)
    tokens = torch.randint(0, 7, (8, 6))

    def loss(t):
        return _lm_losses(model, t).mean()

    with tracker.per_example():
        loss(tokens).backward()
    with pytest.raises(TrackerError, match="positions shared by the batch") as err:
        tracker.step()
    assert not tracker.closed and "accumulation" in str(err.value)
    model.zero_grad()
    with pytest.raises(TrackerError, match="not available"):
        with tracker.per_example():
            pass
    for half in (tokens[:4], tokens[4:]):
        (loss(half) / 2).backward()
    draw = tracker.step(batch_size=8)
    assert (draw.b, draw.B) == (4, 8) and math.isfinite(draw.small_sq_total)
    tracker.close()


def test_a_wrapped_optimizer_is_read_through_its_wrapper(tmp_path):
    """The HF Trainer hands callbacks accelerate's AcceleratedOptimizer: the family (Adam's factor, B_pre) and the
    lr come from the torch optimizer inside."""
    class Wrapper:  # what accelerate's AcceleratedOptimizer looks like from outside
        def __init__(self, optimizer):
            self.optimizer = optimizer

    model = mlp()
    tracker = Tracker(model, Wrapper(torch.optim.AdamW(model.parameters(), lr=3e-3)), accumulation_steps=2,
                      batch_size=64, precondition=True, log=tmp_path / "t.jsonl")
    assert tracker.precondition and tracker._lr() == 3e-3
    tracker.close()
    assert json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])["optimizer"] == "AdamW"


@pytest.mark.parametrize("command", ["report", "schedule"])
@pytest.mark.parametrize("window", ["0", "-3"])
def test_a_window_below_two_is_a_one_line_error(tmp_path, command, window):
    from typer.testing import CliRunner

    from bsprof.cli import app

    log = tmp_path / "t.jsonl"
    tracker = Tracker(mlp(), accumulation_steps=2, batch_size=64, log=log)
    tracker.close()
    args = [command, str(log), "--window", window] + (["--target-loss", "0.5"] if command == "schedule" else [])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "--window must be at least 2" in r.output and "Traceback" not in r.output



def test_a_log_without_a_window_says_why(tmp_path):
    log = tmp_path / "t.jsonl"
    Tracker(mlp(), accumulation_steps=2, batch_size=64, log=log).close()
    report = report_from_log(log, window=10)
    assert not report.measurements and "no window to estimate" in report.diagnostics[0]["message"]


@pytest.mark.parametrize("steps,says", [(0, "no logged steps (only its header)"), (1, "only 1 usable logged step")])
def test_check_and_report_on_a_log_without_a_window_say_so_first(tmp_path, steps, says):
    """`bsprof check LOG.jsonl` on a log of a header and no steps said "|G|² was not distinguished from 0" and
    "measure longer: bsprof measure --max-examples ..."; `bsprof report` printed an empty table, exit 0. Both say first
    that the log has no steps to estimate from and how to log some, exit 2 (as `report --layers` on a log)."""
    from typer.testing import CliRunner

    from bsprof.cli import app

    path = trained_log(tmp_path, steps)
    runner = CliRunner()
    for args in (["check", str(path), "-b", "64"], ["report", str(path)], ["check", str(path), "-b", "64", "--json"]):
        r = runner.invoke(app, args)
        said = " ".join(r.stderr.split())
        assert r.exit_code == 2 and said.startswith(f"error: {path} is a tracker log with {says}"), r.output
        assert "fix: log some optimizer steps: call tracker.step(" in said and "|G|²" not in said
        assert "Traceback" not in r.output and "┃ step" not in r.stdout


def test_a_batch_size_the_forwards_contradict_is_warned_once():
    """Accumulation cannot see the examples, but the model's forwards can: batch_size=20 for two micro-batches of
    32 rows warns (once), since B_simple scales with the batch size passed."""
    model, (x, y) = mlp(), data()
    tracker = Tracker(model, accumulation_steps=2, batch_size=20)
    with pytest.warns(UserWarning, match="batch_size=20, but the model's forward passes in this step saw 64 rows"):
        for _ in range(2):
            for j in range(2):
                (ce(model, (x[32 * j:32 * j + 32], y[32 * j:32 * j + 32])).mean() / 2).backward()
            tracker.step()
            model.zero_grad()
    tracker.close()
    assert hooks_left(model) == 0


def test_a_forward_without_backward_is_not_counted_in_the_steps_rows():
    """A validation forward with grad enabled (no torch.no_grad, no backward), per step or now and then, before
    or after the step, is not part of the step's batch: no warning (a new user was told to pass 320 for batch
    64 + 256 validation rows, which would have made B_simple 5× too large). A second forward that is trained on
    still counts."""
    import warnings

    model, (x, y) = mlp(), data()
    for source, kw in (("accumulation", dict(accumulation_steps=2)), ("per_example", {})):
        tracker = Tracker(model, batch_size=64, source=source, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(2):
                if source == "accumulation":
                    for j in range(2):
                        (ce(model, (x[32 * j:32 * j + 32], y[32 * j:32 * j + 32])).mean() / 2).backward()
                else:
                    loss = ce(model, (x[:64], y[:64])).mean()
                    with tracker.per_example():
                        loss.backward()
                model(torch.randn(256, 6, dtype=torch.float64)).sum().item()   # validation: grad on, no backward
                tracker.step()
                model.zero_grad()
                model(torch.randn(96, 6, dtype=torch.float64)).sum().item()    # and after the step, before the next
        assert tracker.rows.exact  # the cheap count (every forward) could not be trusted: counted on the graph
        tracker.close()
    tracker = Tracker(model, accumulation_steps=2, batch_size=64)
    with pytest.warns(UserWarning, match=r"saw 128 rows.*4 forwards for 2 backward passes: if a forward sees the "
                                         r"same examples again \(a siamese or consistency loss\), batch_size=64 is "
                                         r"right"):   # each micro-batch's forward twice, both trained on
        for _ in range(2):  # (two forwards per pass: unknown at the first step, counted on the graph at the second)
            for j in range(2):
                xb, yb = x[32 * j:32 * j + 32], y[32 * j:32 * j + 32]
                ((ce(model, (xb, yb)).mean() + ce(model, (xb, yb)).mean()) / 2).backward()
            tracker.step()
            model.zero_grad()
    tracker.close()
    assert hooks_left(model) == 0
    tracker = Tracker(model, batch_size=64, source="per_example")  # its hooks count the examples: no rows warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            loss = (ce(model, (x[:64], y[:64])).mean() + ce(model, (x[:64], y[:64])).mean()) / 2
            with tracker.per_example():
                loss.backward()
            tracker.step()
            model.zero_grad()
    tracker.close()
    tracker = Tracker(model, accumulation_steps=2, batch_size=64)  # one forward per pass: the cheap count stands
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rows in (32, 20):  # an epoch's short last step, with the Tracker's batch_size: taken at its 40 rows
            for _ in range(2):
                (ce(model, (x[:rows], y[:rows])).mean() / 2).backward()
            last = tracker.step()
            model.zero_grad()
    assert not tracker.rows.exact and (last.b, last.B) == (20, 40)
    tracker.close()


def test_a_window_of_full_batch_steps_is_their_ratio_of_means():
    """Full-batch training with population=n: each step's pair is exact at its own weights. A window of such steps
    is their ratio of means with the spread across steps as its interval; it returned its first step's value with
    a point interval (the fixed-weight rule "one exact draw says everything", a new user's finding)."""
    from bsprof.stats.estimators import draw_estimates

    torch.manual_seed(0)
    n = 40
    x = torch.randn(n, 8)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = Tracker(model, opt, source="per_example", population=n, batch_size=n)
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        with tracker.per_example():
            loss.backward()
        tracker.step(loss=loss)
        opt.step()
        opt.zero_grad()
    tracker.close()
    g2, tr = draw_estimates(tracker.draws[-10:])
    firsts = tr[0].sum() / g2[0].sum()
    est = tracker.estimate(window=10)
    assert est.value == pytest.approx(tr.sum(1).mean() / g2.sum(1).mean(), rel=1e-9)
    assert est.value != pytest.approx(firsts, rel=1e-3)
    assert est.lo < est.value < est.hi


def test_per_example_tracking_with_a_parameter_outside_the_rules():
    """A parameter outside the layers with rules is fine while the loss does not reach it (its g_i are zero): the
    pair is exact. Once the loss uses it (PReLU here), the step says which parameter and the tracker closes with
    the user's gradients untouched (it refused such a model outright, unused parameter or not)."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    model = nn.Sequential(nn.Linear(6, 8), nn.PReLU(), nn.Linear(8, 3)).double()
    ce = nn.functional.cross_entropy
    per_example = sum(float(torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        ce(model[2](model[0](x[i:i + 1])), y[i:i + 1]), [model[0].weight, model[0].bias, model[2].weight,
                                                         model[2].bias])]).square().sum()) for i in range(16))
    tracker = Tracker(model, source="per_example", batch_size=16)  # made after the reference's backward passes
    with tracker.per_example():   # the PReLU skipped: its parameter gets no gradient
        ce(model[2](model[0](x)), y).backward()
    draw = tracker.step()
    assert draw.small_sq_total == pytest.approx(per_example / 16, rel=1e-10)
    model.zero_grad(set_to_none=True)
    with tracker.per_example():
        ce(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(TrackerError, match=r"no per-example rule for 1\.weight, which the loss uses"):
        tracker.step()
    assert tracker.closed and all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))


def test_a_sequence_first_model_is_not_warned_about_its_rows():
    """An nn.LSTM fed [T, B, D] (batch_first=False): dim 0 of the input is T, so the rows check says nothing (it
    warned that the forwards "saw 28 rows", 4 micro-batches × T = 7; a new user's finding)."""
    import warnings

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.LSTM(3, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][-1])

    model = Seq()
    tracker = Tracker(model, accumulation_steps=4, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            x, y = torch.randn(7, 16, 3), torch.randint(0, 2, (16,))
            (nn.functional.cross_entropy(model(x), y) / 4).backward()
        draw = tracker.step()
    assert (draw.b, draw.B) == (16, 64)
    tracker.close()


def test_a_flat_input_with_offsets_is_not_warned_about_its_rows():
    """nn.EmbeddingBag fed (tokens [N], offsets [B]): dim 0 of the first input is the step's tokens, not its examples.
    The rows check told a new user to pass batch_size=1704 (the tokens) for a batch of 64, which inflates B_simple
    27×; the tracker's per-example source names the layout in its refusal."""
    import warnings

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag, self.head = nn.EmbeddingBag(50, 8, mode="mean"), nn.Linear(8, 3)

        def forward(self, tokens, offsets):
            return self.head(self.bag(tokens, offsets))

    def batch(g):
        lengths = torch.randint(3, 9, (16,), generator=g)
        tokens = torch.randint(0, 50, (int(lengths.sum()),), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        return tokens, offsets, torch.randint(0, 3, (16,), generator=g)

    g = torch.Generator().manual_seed(0)
    model = Bag()
    tracker = Tracker(model, accumulation_steps=4, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            for _ in range(4):
                tokens, offsets, y = batch(g)
                (nn.functional.cross_entropy(model(tokens, offsets), y) / 4).backward()
            draw = tracker.step()
            assert (draw.b, draw.B) == (16, 64)
            model.zero_grad()
    tracker.close()
    # a tensor beside the input that is not per-example (a feature mask [D]) leaves the rows the examples: an
    # epoch's short last batch of 33 is still taken at 33 (a review's case: the first version read any disagreeing
    # dim 0 as flat, and took it at 48)
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(8, 16), nn.Linear(16, 3)

        def forward(self, x, feature_mask):
            return self.l2(torch.relu(self.l1(x * feature_mask)))

    masked, mask = Masked(), torch.ones(8)
    x, y = torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    tracked = Tracker(masked, accumulation_steps=3, batch_size=48)
    for n in (48, 33):
        for part in torch.arange(n).chunk(3):
            (nn.functional.cross_entropy(masked(x[part], mask), y[part]) / 3).backward()
        last = tracked.step()
        masked.zero_grad()
    assert (last.b, last.B) == (11, 33)
    tracked.close()
    bag = Bag()
    per_example = Tracker(bag, batch_size=16, source="per_example")
    tokens, offsets, y = batch(g)
    with per_example.per_example():
        nn.functional.cross_entropy(bag(tokens, offsets), y).backward()
    with pytest.raises(TrackerError, match=r"flat input with offsets \(nn.EmbeddingBag"):
        per_example.step()
    per_example.close()


def test_the_log_and_the_probe_record_sgd_momentum(tmp_path):
    """The optimizer's momentum reaches the report (the headline's family: SGD with momentum has its own factor):
    from the tracker's log header, and from `bsprof measure`'s config."""
    import bsprof
    from bsprof.results import MOMENTUM_SGD, optimizer_name

    model, (x, y) = mlp(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    log = tmp_path / "m.jsonl"
    tracker = Tracker(model, opt, accumulation_steps=2, batch_size=64, log=log)
    for _ in range(4):
        for j in range(2):
            (ce(model, (x[32 * j:32 * j + 32], y[32 * j:32 * j + 32])).mean() / 2).backward()
        tracker.step()
        opt.step()
        opt.zero_grad()
    tracker.close()
    assert optimizer_name(report_from_log(log, window=2).config) == f"{MOMENTUM_SGD}=0.9"
    rep = bsprof.measure(model=mlp(), dataset=TensorDataset(x, y), loss=ce, steps=0, max_seconds=0.5,
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
    assert rep.config["optimizer_momentum"] == 0.9 and optimizer_name(rep.config) == f"{MOMENTUM_SGD}=0.9"


def test_a_per_example_tracker_closed_by_a_failure_says_so_at_the_next_step():
    """source="per_example" and a model its norms cannot follow: the failing step closes the tracker; the next
    `with tracker.per_example()` says the tracker was closed by that error (it said "make the tracker with
    source='per_example'", which it was)."""
    torch.manual_seed(0)
    model, tokens = SharedPositions(mix="mul"), torch.randint(0, 7, (8, 6))
    tracker = Tracker(model, source="per_example")
    with tracker.per_example():
        _lm_losses(model, tokens).mean().backward()
    with pytest.raises(TrackerError, match="positions shared by the batch"):
        tracker.step()
    with pytest.raises(TrackerError, match=r"per_example\(\) after the tracker was closed by an earlier error") as err:
        with tracker.per_example():
            pass
    assert "source='per_example'" not in str(err.value)
    assert hooks_left(model) == 0


def test_log_windows_do_not_overlap_unless_asked(tmp_path):
    """12 logged steps at a window of 10: rows over steps 0–9 and 10–11 (it was 2–11, counting 8 steps twice in
    the path average); with --every 2 < --window the rows overlap, as asked."""
    path = trained_log(tmp_path, 12)
    rows = [m.n_draws for m in report_from_log(path, window=10).measurements]
    assert rows in ([10, 2], [12])  # the last 2 steps join the window before them when they cannot be determined
    assert [m.n_draws for m in report_from_log(path, window=10, every=5).measurements] == [5, 10, 10]


def test_log_windows_too_short_to_determine_join_the_next(tmp_path):
    """At fixed weights with B_simple = 200 ≫ B = 64, windows of 5 steps mostly leave |G|² undetermined (lower
    bounds). They used to be left out, keeping the windows whose |G|² came out high by chance: the curve, and the
    critical batch over it, read low (a new user's log: 89.8 at --window 10 for a true 192). Their steps now join
    the next window: every step counts once, every row is determined, and their ratio of means is the whole log's."""
    header = {"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "auto", "world_size": 1,
              "accumulation_steps": 4, "optimizer": "SGD", "optimizer_momentum": 0.0}
    rng = np.random.default_rng(3)
    g2, tr, b, B, n = 1.0, 200.0, 16, 64, 400
    small = (g2 + tr / b) * rng.chisquare(40, n) / 40  # noisy unbiased squared norms at b and B
    big = (g2 + tr / B) * rng.chisquare(40, n) / 40
    rows = [{"step": k, "examples": B * k, "b": b, "B": B, "small_sq": float(small[k]), "big_sq": float(big[k]),
             "loss": 1.0, "lr": 0.01} for k in range(n)]
    path = tmp_path / "fixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [header, *rows]) + "\n")
    before = [noise_scale([Draw(np.array([s]), np.array([g]), b, B, 1.0) for s, g in zip(small[i:i + 5], big[i:i + 5])],
                          0.9, same_weights=False).status.value for i in range(0, n, 5)]
    assert before.count("lower_bound") >= 10  # what the fixed windows of 5 would have been
    rows = measurements(read_log(path), window=5)  # the API: joined where undetermined
    assert sum(m.n_draws for m in rows) == n
    assert all(m.b_simple.status.value == "ok" for m in rows) and max(m.n_draws for m in rows) > 5
    whole = report_from_log(path, window=n).measurements[0].b_simple
    assert whole.lo <= tr / g2 <= whole.hi
    report = report_from_log(path, window=5)  # read: widened until nearly every window resolves on its own
    assert report.config["window_asked"] == 5 and report.config["window"] in (10, 20, 40, 80, 160)
    assert any(d["code"] == "window_widened" for d in report.diagnostics)
    assert sum(m.n_draws for m in report.measurements) == n
    # a row joined from windows that stayed undetermined after widening is named (a new user saw a row of 48 steps
    # at --window 24 and no note)
    notes = {d["code"]: d["message"] for d in report.diagnostics}
    wide = [m for m in report.measurements if m.n_draws > report.config["window"]]
    assert ("windows_joined" in notes) == bool(wide)
    if wide:
        assert f"{wide[0].step} ({wide[0].n_draws} steps)" in notes["windows_joined"]
    joined = report_from_log(path, window=5, every=5)  # not widened (every given): joined rows only
    notes = {d["code"]: d["message"] for d in joined.diagnostics}
    assert "window_widened" not in notes and "span more than the window of 5" in notes["windows_joined"]


def test_log_rows_sit_on_the_loss_curve(tmp_path):
    """A row of a log is a window mean: placed at the window's middle step with its middle half's mean loss, its
    (step, loss) lies on the run's loss curve, from which a schedule counts steps. (At the window's last step with
    the whole window's mean, it lay a half window late and more: 0.887 at step 49 where the loss was 0.595.)"""
    header = {"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "auto", "world_size": 1,
              "accumulation_steps": 4, "optimizer": "SGD", "optimizer_momentum": 0.0}
    rng = np.random.default_rng(0)
    curve = lambda k: 0.4 + math.exp(-k / 30)  # noqa: E731
    rows = [{"step": k, "examples": 64 * k, "b": 16, "B": 64, "small_sq": (1 + 50 / 16) * rng.gamma(50, 1 / 50),
             "big_sq": (1 + 50 / 64) * rng.gamma(50, 1 / 50), "loss": curve(k), "lr": 0.1} for k in range(200)]
    path = tmp_path / "decay.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [header, *rows]) + "\n")
    report = report_from_log(path, window=50)
    assert [m.step for m in report.measurements] == [24, 74, 124, 174]
    for m in report.measurements:
        assert m.loss == pytest.approx(curve(m.step), rel=0.01)


def test_an_unresolved_window_of_a_log_is_called_so(tmp_path):
    """Pairs whose small-batch norm barely exceeds the large one (tr(Σ) not told apart from 0): the window's
    B_simple interval reaches 0, and the report read from the log says it is unresolved, as `bsprof measure` does,
    with a log's fix (a wider --window); logs did not say so."""
    header = {"schema": "bsprof.track", "version": 1, "unit": "examples", "source": "auto", "world_size": 1,
              "accumulation_steps": 4, "optimizer": "SGD", "optimizer_momentum": 0.0}
    rng = np.random.default_rng(0)
    rows = [{"step": k, "examples": 64 * k, "b": 16, "B": 64, "small_sq": 1.0 + 0.05 * rng.standard_normal(),
             "big_sq": 1.0 + 0.05 * rng.standard_normal(), "loss": 1.0, "lr": 0.01} for k in range(10)]
    path = tmp_path / "flat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [header, *rows]) + "\n")
    report = report_from_log(path, window=10)
    assert report.measurements[0].b_simple.unresolved
    [note] = [d for d in report.diagnostics if d["code"] == "unresolved"]
    assert "--window" in note["message"] and "step 4" in note["message"]  # the window's middle


def test_per_example_refuses_a_tied_weight_also_applied_functionally():
    """A new user's LM used its embedding as the head through F.linear(h, emb.weight): the tracker's per-example
    norms counted the embedding's part only, and B_simple (training) read low, even below zero. The graph's uses
    are now counted at the first forward: that use fails the per-example source with the fix; the same model
    with an nn.Linear tied to the weight is measured."""
    import torch.nn.functional as F

    class LM(nn.Module):
        def __init__(self, functional):
            super().__init__()
            self.emb, self.mix, self.functional = nn.Embedding(11, 8), nn.Linear(8, 8), functional
            if not functional:
                self.head = nn.Linear(8, 11, bias=False)
                self.head.weight = self.emb.weight

        def forward(self, t):
            h = torch.tanh(self.mix(self.emb(t)))
            return F.linear(h, self.emb.weight) if self.functional else self.head(h)

    for functional in (False, True):
        torch.manual_seed(0)
        model = LM(functional)
        tracker = Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), source="per_example")
        t = torch.randint(0, 11, (16, 9))
        loss = F.cross_entropy(model(t[:, :-1]).reshape(-1, 11), t[:, 1:].reshape(-1))
        with tracker.per_example():
            loss.backward()
        if not functional:
            assert tracker.step().b == 1
            continue
        with pytest.raises(TrackerError, match=r"emb.weight \(used 2 times, 1 by its layers\) used outside") as e:
            tracker.step()
        assert "head.weight = emb.weight" in str(e.value)


# ---------------------------------------------------------------- a reviewer's silent errors, now said or right
def _one_step(model, loss, **kw):
    """One per-example step of ``loss()`` (its forward inside the block); the draw, or the TrackerError."""
    tracker = Tracker(model, source="per_example", **kw)
    try:
        with tracker.per_example():
            loss().backward()
        return tracker.step()
    except TrackerError as e:
        return e
    finally:
        tracker.close()


def test_a_layers_weight_used_without_calling_the_layer_is_refused():
    """``F.linear(h, self.b.weight, self.b.bias)`` with ``self.b`` never called, or a position table read as
    ``wpe.weight[:T]``: no hook sees the use, and the pair left it out (−76% on the first) without a word."""
    class FunctionalOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return nn.functional.linear(torch.tanh(self.a(x)), self.b.weight, self.b.bias)

    model, (x, y) = FunctionalOnly().double(), data(16)
    err = _one_step(model, lambda: ce(model, (x, y)).mean())
    assert isinstance(err, TrackerError) and "b.weight (used 1 times, 0 by its layers)" in str(err)


def test_a_functional_use_that_starts_later_is_found():
    """The graph walk that finds uses outside the layers ran at the first forward only: an auxiliary head on a tied
    weight switched on at the second step was missed (−2.3%). It runs again at forwards 2, 4, 8, … (and every 64)."""
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out, self.aux = nn.Linear(6, 8), nn.Linear(8, 3), False

        def forward(self, x):
            h = torch.tanh(self.emb(x))
            return self.out(h) + (nn.functional.linear(h, self.emb.weight.t()[:3]) if self.aux else 0)

    model, (x, y) = Aux().double(), data(16)
    tracker = Tracker(model, source="per_example")
    with tracker.per_example():
        ce(model, (x, y)).mean().backward()
    tracker.step()
    model.zero_grad()
    model.aux = True
    with tracker.per_example():
        ce(model, (x, y)).mean().backward()
    with pytest.raises(TrackerError, match="emb.weight .* used outside their layers"):
        tracker.step()
    tracker.close()


def test_a_parameter_frozen_after_the_tracker_was_made_is_left_out():
    """Frozen later (docs: fine): the Linear fast path and attention's in_proj still counted it (+47%, +12%)."""
    from models import make

    from bsprof.probes.vmap import per_example_vmap

    x, y = data(16)
    attention = make("mha_self")
    for model, frozen, loss_fn, batch, n in ((mlp(), "0.weight", ce, (x, y), 16),
                                             (attention.model, "att.in_proj_weight", attention.loss_fn,
                                              attention.batch, attention.count)):
        tracker = Tracker(model, source="per_example")
        model.get_parameter(frozen).requires_grad_(False)
        with tracker.per_example():
            loss_fn(model, batch).mean().backward()
        draw = tracker.step()
        tracker.close()
        ref = per_example_vmap(model, loss_fn, batch, n)
        assert draw.small_sq_total == pytest.approx(float(ref.small_sq_sum.sum()) / n, rel=1e-9)


def test_batchnorm_switched_to_train_mode_after_the_tracker_was_made_is_refused():
    """A model made in eval mode (``from_pretrained``), tracked, then ``model.train()``: BatchNorm now uses batch
    statistics, per-example gradients are undefined, and the pair read +14% without a word."""
    model, (x, y) = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double(), data(16)
    model.eval()
    tracker = Tracker(model, source="per_example")
    model.train()
    with tracker.per_example():
        ce(model, (x, y)).mean().backward()
    with pytest.raises(TrackerError, match="BatchNorm normalises with batch statistics.*eval mode when the tracker"):
        tracker.step()
    tracker.close()


@pytest.mark.parametrize("per_example", [True, False])
def test_two_backward_passes_through_one_forward_are_refused_or_warned(per_example):
    """``l1.backward(retain_graph=True); l2.backward()`` on one forward: taken for two batches (B doubled, the
    cross terms lost: B_simple 7.5 or 25.4 for a true 4.9). Per-example norms refuse it; the accumulation source
    warns, since the same pattern with each loss on its own slice of the batch is a right micro-batch pair (a
    reviewer's case, exact before and after)."""
    model, (x, y) = mlp(), data(16)
    tracker = Tracker(model, source="per_example") if per_example else Tracker(model, batch_size=16)
    with tracker.per_example() if per_example else contextlib.nullcontext():
        out = model(x)
        nn.functional.cross_entropy(out, y).backward(retain_graph=True)
        out.square().mean().backward()
    if per_example:
        with pytest.raises(TrackerError, match="2 backward passes ran in this step through 1 forward"):
            tracker.step()
    else:
        with pytest.warns(UserWarning, match="2 backward passes ran in this step through 1 forward.*right when each"):
            tracker.step()
    tracker.close()


def test_an_input_gradient_penalty_is_refused_under_per_example_norms():
    """ℓ_i = ce_i + λ|∂ce_i/∂x_i|² by ``autograd.grad(..., create_graph=True)``: the weights' gradients get
    second-order parts the hooks do not see (−56%). Per-example norms say so; accumulation measures it."""
    model, (x, y) = mlp(), data(16)

    def penalised(a, b):
        xx = x[a:b].clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xx), y[a:b], reduction="sum")
        gx, = torch.autograd.grad(loss, xx, create_graph=True)
        return (loss + 10 * gx.square().sum()) / (b - a)

    err = _one_step(model, lambda: penalised(0, 16))
    assert isinstance(err, TrackerError) and "create_graph=True" in str(err)
    model.zero_grad()
    tracker = Tracker(model, accumulation_steps=2, batch_size=16)
    for a in (0, 8):
        (penalised(a, a + 8) / 2).backward()
    draw = tracker.step()
    tracker.close()
    params = list(model.parameters())
    gs = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(penalised(a, a + 8), params)]) for a in (0, 8)]
    assert draw.small_sq_total == pytest.approx(float(sum(g.square().sum() for g in gs)) / 2, rel=1e-9)


def test_a_parameter_group_added_after_the_tracker_was_made_is_an_error():
    """Staged fine-tuning: the backbone requires grad all along but joins the optimizer later; it was left out of
    both norms silently (−38%), where unfreezing is an error."""
    model, (x, y) = mlp(), data(16)
    opt = torch.optim.SGD(model[3].parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="does not update"):
        tracker = Tracker(model, opt, source="per_example")
    opt.add_param_group({"params": model[0].parameters(), "lr": 0.01})
    with tracker.per_example():
        ce(model, (x, y)).mean().backward()
    with pytest.raises(TrackerError, match=r"0.weight, 0.bias became trainable \(or joined the optimizer\)"):
        tracker.step()
    tracker.close()


def test_a_sparse_embedding_zeroed_without_set_to_none_does_not_crash_the_backward():
    """``zero_grad(set_to_none=False)`` leaves a sparse ``.grad``; the stale-gradient check ran ``ne(0)`` on it and
    raised NotImplementedError inside the user's backward at the second step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8, sparse=True), nn.Flatten(), nn.Linear(40, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    t, y = torch.randint(0, 6, (16, 5)), torch.randint(0, 3, (16,))
    tracker = Tracker(model, opt, accumulation_steps=2, batch_size=16)
    for _ in range(3):
        for a in (0, 8):
            (nn.functional.cross_entropy(model(t[a:a + 8]), y[a:a + 8]) / 2).backward()
        assert tracker.step() is not None
        opt.step()
        opt.zero_grad(set_to_none=False)
    tracker.close()


def test_per_example_norms_in_tokens_count_each_sequences_tokens():
    """unit='tokens' under the per-example source: the hooks count sequences, so b is one sequence's T tokens and
    B the step's tokens (a new user's log said tokens while b = 1 and B = the sequences: B_simple T× too small).
    The pair's norms are the sequences' own; batch_size must be a whole number of tokens per sequence."""
    V, T, N = 11, 6, 16
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(V, 8), nn.Linear(8, V))
    x, y = torch.randint(0, V, (N, T)), torch.randint(0, V, (N, T))

    def pair(unit, batch_size):
        tracker = Tracker(model, unit=unit, source="per_example", batch_size=batch_size)
        with tracker.per_example():
            nn.functional.cross_entropy(model(x).transpose(1, 2), y, reduction="none").mean(1).mean().backward()
        draw = tracker.step()
        model.zero_grad()
        tracker.close()
        return draw

    seqs, toks = pair("sequences", N), pair("tokens", N * T)
    assert (seqs.b, seqs.B, toks.b, toks.B) == (1, N, T, N * T)
    assert toks.small_sq_total == seqs.small_sq_total and toks.big_sq_total == seqs.big_sq_total
    est = lambda d: (d.small_sq_total - d.big_sq_total) / (1 / d.b - 1 / d.B) / d.big_sq_total  # noqa: E731
    assert est(toks) == pytest.approx(T * est(seqs))   # B_simple in tokens = T × in sequences
    with pytest.raises(TrackerError, match="not a whole number of tokens for each of the 16 sequences"):
        pair("tokens", N * T + 1)


def test_a_tracker_dropped_without_close_takes_its_hooks_with_it(tmp_path):
    """A notebook cell raised and the tracker's last reference went: once collected, its hooks are off the model and
    its log closed (they had stayed, three trackers' worth after three tries, each slowing every step)."""
    import gc

    model = mlp()
    for source in ("accumulation", "per_example", "accumulation"):
        tracker = Tracker(model, batch_size=32, source=source, log=tmp_path / "run.jsonl",
                          accumulation_steps=2 if source == "accumulation" else None)
        del tracker
        gc.collect()
        assert hooks_left(model) == 0
    with Tracker(model, accumulation_steps=2, batch_size=32, log=tmp_path / "run.jsonl") as tracker:
        assert hooks_left(model) > 0 and not tracker.closed
    assert hooks_left(model) == 0


def test_a_tracker_given_no_model_or_a_useless_option_says_so(tmp_path):
    """Tracker("model") is a TrackerError (it was weakref's TypeError); precondition=True under per-example norms,
    which never give B_pre, warns at once; `bsprof report` on a callback's folder names the log in it."""
    from typer.testing import CliRunner

    from bsprof.cli import app

    with pytest.raises(TrackerError, match="model must be a torch.nn.Module"):
        Tracker("model")
    model = mlp()
    with pytest.warns(UserWarning, match="B_pre comes from the accumulation or DDP pair only"):
        Tracker(model, torch.optim.Adam(model.parameters()), source="per_example", precondition=True).close()
    folder = tmp_path / "version_0"
    folder.mkdir()
    (folder / "bsprof.jsonl").write_text("")
    r = CliRunner().invoke(app, ["report", str(folder)])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "report not found" in said and "bsprof.jsonl" in said, said


def test_a_log_read_as_a_report_and_a_report_read_as_a_log_name_the_right_reader(tmp_path):
    """Report.from_json on a tracker log said "not valid JSON … pass the report.json"; read_log on a report.json
    gave the writer's hint ("choose a new log path"); a CSV bsprof wrote was "not valid JSON"."""
    from bsprof.errors import ReportError
    from bsprof.output.report import Report

    log = trained_log(tmp_path, 4)
    with pytest.raises(ReportError, match="it is a tracker log") as e:
        Report.from_json(log)
    assert "report_from_log" in e.value.hint
    report = report_from_log(log, window=2).to_json(tmp_path / "report.json")
    with pytest.raises(ReportError, match="it looks like a report.json") as e:
        read_log(report)
    assert "Report.from_json" in e.value.hint and "new log path" not in e.value.hint
    csv = tmp_path / "measurements.csv"
    csv.write_text("step,b_simple\n0,1.0\n")
    with pytest.raises(ReportError, match="it is a CSV") as e:
        Report.from_json(csv)
    assert "report.json in the same folder" in e.value.hint


def test_the_fix_for_too_few_rows_does_not_suggest_a_window_that_would_be_widened_back(tmp_path, monkeypatch):
    """A 30-step log read in 3 windows of 10: "read it with --window 6" was followed by a second refusal ("--window
    6 was widened to 24"); the fix now asks for more steps when the smaller window would be widened to ≥ 10."""
    import bsprof.track.log as track_log
    from bsprof.schedule.plan import more_rows_fix

    path = trained_log(tmp_path, 30)
    report = report_from_log(path, window=10)
    monkeypatch.setattr(track_log, "resolving_window", lambda log, w, confidence=0.9: 12)
    fix = more_rows_fix(report)
    assert fix.startswith("log more steps") and "--window 6 would be widened to 12" in fix
    monkeypatch.setattr(track_log, "resolving_window", lambda log, w, confidence=0.9: w)
    assert "e.g. --window 6" in more_rows_fix(report)


def test_a_misspelled_option_names_the_one_meant():
    """Tracker(accumulation_step=4) was Python's TypeError with no hint: an OptionError (a TypeError and a
    BsprofError) names the close match and lists the options; the signature stays the documented one."""
    import inspect

    from bsprof.errors import BsprofError, OptionError

    with pytest.raises(OptionError, match=r"Tracker\(\) got unknown keyword argument\(s\): 'accumulation_step' "
                                          r"\(did you mean 'accumulation_steps'\?\)") as e:
        Tracker(mlp(), accumulation_step=4)
    assert isinstance(e.value, TypeError) and isinstance(e.value, BsprofError)
    assert "accumulation_steps, batch_size" in e.value.hint
    model = mlp()
    with pytest.raises(OptionError) as e:   # nothing close: no guess
        Tracker(model, zzz=1)
    assert e.value.message.endswith("'zzz'")
    assert "accumulation_steps" in inspect.signature(Tracker).parameters
    Tracker(model, accumulation_steps=2).close()   # nothing was left open on the model
    assert hooks_left(model) == 0
