"""The explicit contracts: the probe registry and ``choose``, one BatchNorm rule, draw sources, one stopping rule."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bsprof.engine.data import Examples
from bsprof.engine.source import DrawSource, as_source
from bsprof.errors import BsprofError, DataError
from bsprof.probes import PROBES, QUAD_PROBES, Probe, batch_coupled
from bsprof.probes.choose import choose, per_example_invalid, reason
from bsprof.probes.hessian import HESSIAN, measure_b_noise
from bsprof.probes.precondition import preconditioned
from bsprof.results import Estimate
from bsprof.stats.estimators import NoiseScale
from bsprof.stats.stopping import EXAMPLES, PRECISION, TIME, Stopper, next_batch, next_look
from bsprof.validation.closed_forms import FreshLeastSquares, LeastSquares
from bsprof.validation.coverage import ls_loss, net_at


def _ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _pair():
    return torch.randn(2, 4), torch.tensor([0, 1])


# ---------------------------------------------------------------- probes and choose

def test_every_probe_is_a_probe_named_by_its_key():
    for name, probe in PROBES.items():
        assert isinstance(probe, Probe) and probe.name == name and callable(probe.chunk)
    assert [n for n, p in PROBES.items() if p.per_example] == ["hooks", "vmap"]
    assert PROBES["microbatch"].whole_draw is not None and PROBES["hooks"].whole_draw is None
    assert QUAD_PROBES == {"hessian": HESSIAN}


def test_preconditioned_probe_keeps_vmap_and_sends_the_rest_to_micro_batches():
    p = [torch.ones(1)]
    assert preconditioned(PROBES["vmap"], p).per_example
    for base in ("hooks", "microbatch"):
        pre = preconditioned(PROBES[base], p)
        assert not pre.per_example and pre.whole_draw is None


def test_choose_auto_takes_hooks_when_per_example_gradients_are_valid():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    assert choose("auto", model, _ce, _pair()) == (PROBES["hooks"], None)
    assert choose("per_example", model, _ce, _pair())[0] is PROBES["hooks"]
    assert choose("vmap", model, _ce, _pair())[0] is PROBES["vmap"]
    assert choose("microbatch", model, _ce, _pair()) == (PROBES["microbatch"], None)


def test_choose_falls_back_to_micro_batches_and_says_why():
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    probe, why = choose("auto", bn, _ce, _pair())
    assert probe is PROBES["microbatch"] and why.startswith("BatchNorm") and "1" in why
    assert reason("auto", probe, why) == f"auto: {why}, so micro-batches"  # what --verbose prints
    assert reason("microbatch", probe, None) == "asked with --method microbatch"
    with pytest.raises(BsprofError, match="BatchNorm") as err:
        choose("hooks", bn, _ce, _pair())
    assert "microbatch" in err.value.hint

    def centred(model, batch):  # every loss depends on every example
        losses = _ce(model, batch)
        return losses - losses.mean()

    mlp = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    probe, why = choose("auto", mlp, centred, _pair())
    assert probe is PROBES["microbatch"] and "mixes" in why
    with pytest.raises(BsprofError):
        choose("per_example", mlp, centred, _pair())
    with pytest.raises(BsprofError, match="unknown"):
        choose("ghost", mlp)


# ---------------------------------------------------------------- the one BatchNorm rule

@pytest.mark.parametrize("train,track,coupled", [(True, True, True), (False, True, False), (True, False, True),
                                                 (False, False, True)])
def test_one_batchnorm_rule(train, track, coupled):
    """Batch statistics in train mode, and always without running statistics: the probes' check, choose and the
    diagnostics read the same rule."""
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=track), nn.Linear(8, 2))
    model.train(train)
    assert batch_coupled(model) == (["'1' (BatchNorm1d)"] if coupled else [])
    assert (per_example_invalid(model) is not None) == coupled
    assert (choose("auto", model)[0] is PROBES["microbatch"]) == coupled


# ---------------------------------------------------------------- draw sources

def test_examples_and_the_closed_form_stream_are_draw_sources():
    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    assert isinstance(Examples(data, None, torch.device("cpu"), torch.Generator()), DrawSource)
    assert isinstance(FreshLeastSquares(LeastSquares.isotropic(3, 1.0, 0.5), 0), DrawSource)


def test_a_tuple_of_tensors_becomes_a_source_of_its_rows():
    x, y = torch.arange(20.0).reshape(10, 2), torch.arange(10)
    src = as_source((x, y), seed=3)
    assert src.n == 10 and as_source(src) is src
    drawn = src.draw(6)
    assert len(set(drawn)) == 6
    chunks = list(src.batches(drawn, 4))
    assert [c for _, c in chunks] == [4, 2]
    (bx, by), _ = chunks[0]
    assert torch.equal(bx, x[by])  # rows stay together
    assert as_source(x).n == 10
    # a bare tensor: the loss gets a tensor of rows, not a one-element list (a new user's loss called model([x]))
    (rows, count), = as_source(x, seed=3).batches(drawn[:3], 4)
    assert isinstance(rows, torch.Tensor) and rows.shape == (3, 2) and count == 3
    with pytest.raises(DataError):
        as_source((x, y[:5]))
    with pytest.raises(DataError):
        as_source([1, 2, 3])


def test_a_dataset_or_a_data_loader_becomes_a_source():
    class Squares(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return {"x": torch.tensor([float(i)]), "y": torch.tensor(float(i * i))}

    src = as_source(Squares())
    (batch, count), = list(src.batches(src.draw(5), 5))
    assert count == 5 and torch.equal(batch["y"], batch["x"].squeeze(1) ** 2)

    def collate(items):
        return torch.stack([it["x"] for it in items]), torch.stack([it["y"] for it in items])

    loader = torch.utils.data.DataLoader(Squares(), batch_size=3, collate_fn=collate)
    src = as_source(loader)
    (batch, count), = list(src.batches(src.draw(4), 4))
    assert count == 4 and isinstance(batch, tuple) and torch.equal(batch[1], batch[0].squeeze(1) ** 2)


def test_a_dataset_item_that_raises_is_named_by_its_own_index_and_line():
    """A corrupt record at index 7 was reported as dataset[<the batch's first index>], with a fix about the index
    range: the message names the index that raised and where, the fix the dataset's length."""
    class Corrupt(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            if i == 7:
                raise KeyError(f"corrupt record {i}")
            return torch.tensor([float(i)])

    src = as_source(Corrupt())
    with pytest.raises(DataError) as e:
        src.batches(list(range(12)), 12).__next__()
    assert "dataset[7] raised KeyError: 'corrupt record 7' (test_contracts.py:" in e.value.message, e.value.message
    assert "0 <= i < 12" in e.value.hint


def test_measure_at_takes_a_source_built_from_tensors():
    from bsprof.engine.sampling import Sampling, measure_at

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    s = Sampling(PROBES["vmap"], 1, 64, 64, True, 0.1, 0.9, 2, 10 ** 6, 60.0)
    est, draws, stopped = measure_at(model, _ce, as_source((x, y)), s, np.zeros(4, dtype=int))
    assert stopped == "exact" and len(draws) == 1 and est.b_simple > 0


# ---------------------------------------------------------------- one stopping rule

def test_stopper_looks_only_at_the_predicted_counts():
    stop = Stopper(rel_error=0.1, min_draws=5, max_examples=10 ** 9, max_seconds=math.inf)
    assert all(stop(m, 0.0, 0, 0.0) is None for m in range(1, 5))  # precise, but before min_draws
    assert stop(5, 0.2, 0, 0.0) is None and stop.look == next_look(5, 0.2, 0.1) == 20
    assert all(stop(m, 0.05, 0, 0.0) is None for m in range(6, 20))  # a lucky low spread is not looked at
    assert stop(20, 0.09, 0, 0.0) == PRECISION
    assert Stopper(0.1, 5, 100, math.inf)(2, math.inf, 100, 0.0) == EXAMPLES
    assert Stopper(0.1, 5, 100, 1.0)(2, math.inf, 10, 1.5) == TIME


def test_next_look_steps_at_least_half_on_and_at_most_four_times():
    assert next_look(10, 0.1001, 0.1) == 15
    assert next_look(10, 10.0, 0.1) == 40
    assert next_look(10, math.inf, 0.1) == 20


def test_next_batch_follows_the_estimate():
    ok = Estimate(100.0, 90.0, 110.0)
    assert next_batch(ok, 64, 1, 64) == 256  # ≈ 2·B_simple, a power of two
    assert next_batch(Estimate.none(), 64, 1, 64) == 128  # no value: double
    assert next_batch(ok, 64, 1, 64, fixed_B=True) == 64
    assert next_batch(ok, 64, 8, 64, n=100) == 96  # at most n, whole micro-batches


def test_noise_scale_precision_is_the_estimate_s():
    est = NoiseScale(1.0, 0.5, 1.5, 2.0, 10.0, 7.0, 16.0, "ok", 5, 100, 0.1, 0.9, {})
    assert est.b_simple_estimate == Estimate(10.0, 7.0, 16.0)
    assert est.rel_halfwidth == est.b_simple_estimate.rel_halfwidth == pytest.approx(0.6)
    assert math.isinf(NoiseScale(1, 0, 2, 1, math.nan, 1, math.inf, "lower_bound", 5, 1, 0, 0.9, {}).rel_halfwidth)


def test_b_noise_stops_by_the_shared_rule_and_says_so():
    """measure_b_noise looks at the precision only at the Stopper's counts, and records what stopped it."""
    m = LeastSquares.isotropic(20, 1.0, 0.25)  # B_noise = B_simple = 26
    widths = []
    est = measure_b_noise(net_at(m), ls_loss, FreshLeastSquares(m, 7), 64, rel_error=0.15, min_draws=3,
                          max_seconds=120, on_draw=lambda e: widths.append(e.b_noise.estimate.rel_halfwidth))
    assert est.stopped_by == PRECISION and est.row()["b_noise_stopped_by"] == PRECISION
    assert est.n_draws == len(widths)
    replay = Stopper(0.15, 3, math.inf, math.inf)  # the same rule, replayed on the recorded precisions
    assert [replay(i + 1, w, 0, 0.0) for i, w in enumerate(widths)].index(PRECISION) == len(widths) - 1
    assert measure_b_noise(net_at(m), ls_loss, FreshLeastSquares(m, 8), 64, rel_error=1e-6,
                           max_examples=1000).stopped_by == EXAMPLES


def test_a_training_batch_splits_into_equal_micro_batches_or_stays_whole():
    """``Examples.train_batch(size, parts)``: the same examples as one batch, in ``parts`` equal micro-batches each
    collated on its own; a batch that does not split equally stays whole."""
    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    whole = Examples(data, None, torch.device("cpu"), torch.Generator().manual_seed(0))
    split = Examples(data, None, torch.device("cpu"), torch.Generator().manual_seed(0))
    for _ in range(3):  # the third batch starts a new epoch (the 2 left over are dropped)
        [(one, n)], _ = whole.train_batch(4)
        parts, count = split.train_batch(4, parts=2)
        assert n == count == 4 and [c for _, c in parts] == [2, 2]
        assert torch.equal(torch.cat([b[0] for b, _ in parts]), one[0])
    parts, count = Examples(data, None, torch.device("cpu"), torch.Generator()).train_batch(9, parts=2)
    assert count == 9 and [c for _, c in parts] == [9]


def test_measure_and_sweep_leave_the_callers_random_state_as_it_was():
    """`bsprof.measure` seeded torch's global generator: in a notebook every torch.randn after it restarted from the
    probe's seed whatever the caller had seeded. The caller's state is put back (the sweep's too)."""
    import bsprof
    import bsprof.sweep

    x = torch.randn(64, 3)
    data = torch.utils.data.TensorDataset(x, x.sum(1))

    def mse(model, batch):
        return (model(batch[0]).squeeze(-1) - batch[1]) ** 2

    model = nn.Linear(3, 1)   # made before the seeds below: its initialisation draws from the generator too
    for seed in (1, 2):
        torch.manual_seed(seed)
        expected = torch.randn(3)
        torch.manual_seed(seed)
        bsprof.measure(model=model, dataset=data, loss=mse, steps=2, device="cpu")
        assert torch.equal(torch.randn(3), expected)
    torch.manual_seed(3)
    expected = torch.randn(3)
    torch.manual_seed(3)
    bsprof.sweep.local(model=model, dataset=data, loss=mse, batches=[4, 8], examples=32, device="cpu",
                       eval_examples=16)
    assert torch.equal(torch.randn(3), expected)


def test_measure_takes_the_data_measure_at_takes():
    """`measure(dataset=(x, y))` read the tuple as a 2-item dataset ("cannot be collated"), and a DataLoader as a
    spec's dataset() without __getitem__, while measure_at took both: they are read as measure_at reads them."""
    import bsprof
    from bsprof.errors import SpecError

    x = torch.randn(128, 3)
    data = (x, x.sum(1))

    def mse(model, batch):
        return (model(batch[0]).squeeze(-1) - batch[1]) ** 2

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=8)
    for given in (data, list(data), loader):
        report = bsprof.measure(model=model, dataset=given, loss=mse, steps=3, device="cpu", seed=1)
        assert report.config["dataset_size"] == 128 and report.summary.b_simple.value > 0
    with pytest.raises(SpecError, match="different numbers of rows"):
        bsprof.measure(model=model, dataset=(x, x[:5]), loss=mse, steps=3, device="cpu")


def test_measure_at_says_what_is_wrong_with_its_arguments():
    """measure_at(loss, model, …) and a loss returning detached losses ended in AttributeError and RuntimeError from
    bsprof's internals: both are SpecErrors that say what to pass."""
    import bsprof
    from bsprof.errors import SpecError

    x = torch.randn(64, 3)
    data = (x, x.sum(1))

    def mse(model, batch):
        return (model(batch[0]).squeeze(-1) - batch[1]) ** 2

    model = nn.Linear(3, 1)
    with pytest.raises(SpecError, match="model must be a torch.nn.Module"):
        bsprof.measure_at(mse, model, data)
    with pytest.raises(SpecError, match="do not depend on the model's trainable parameters"):
        bsprof.measure_at(model, lambda m, b: mse(m, b).detach(), data)


def test_a_report_holding_another_runs_rows_is_refused():
    """The same report= given to two runs held both runs' rows (steps 0 … 10, 0 … 10) without a word."""
    import bsprof
    from bsprof.errors import ConfigError

    x = torch.randn(64, 3)

    def mse(model, batch):
        return (model(batch[0]).squeeze(-1) - batch[1]) ** 2

    report = bsprof.Report()
    bsprof.measure(model=nn.Linear(3, 1), dataset=(x, x.sum(1)), loss=mse, steps=2, device="cpu", report=report)
    with pytest.raises(ConfigError, match="already holds"):
        bsprof.measure(model=nn.Linear(3, 1), dataset=(x, x.sum(1)), loss=mse, steps=2, device="cpu", report=report)
