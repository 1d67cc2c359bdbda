"""Which probe measures a model, and why: visible torch.func fallbacks, --strict, and auto's timed trial."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import bsprof
from bsprof.cli import app
from bsprof.errors import BsprofError
from bsprof.probes import PROBES
from bsprof.probes.choose import decide
from bsprof.probes.trial import MICROBATCH_PRECISION_COST, prefer, time_draws

ASSETS = Path(__file__).parent / "assets"
CUSTOM = ASSETS / "custom_layer.py"


def _ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _pair():
    return torch.randn(2, 4), torch.tensor([0, 1])


class Gain(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * self.gain


def _gain_model():
    return nn.Sequential(nn.Linear(4, 8), Gain(8), nn.Tanh(), nn.Linear(8, 2))


# ---------------------------------------------------------------- the decision rule, with injected timings

@pytest.mark.parametrize("hooks,micro,picked", [(1.0, 1.0, "hooks"), (1.0, 0.9, "hooks"),
                                                (MICROBATCH_PRECISION_COST, 1.0, "hooks"),
                                                (1.6, 1.0, "microbatch"), (10.0, 1.0, "microbatch"),
                                                (0.2, 1.0, "hooks")])
def test_prefer_hooks_unless_micro_batches_are_more_than_the_precision_cost_faster(hooks, micro, picked):
    name, why = prefer({"hooks": hooks, "microbatch": micro}, micro_batch=8, examples=64)
    assert name == picked
    assert "64 examples" in why and "micro-batches of 8" in why
    assert why.endswith("so micro-batches" if picked == "microbatch" else "so per-example hooks")


def test_decide_with_fake_timings_says_which_and_why():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    slow = decide("auto", mlp, _ce, _pair(), seconds={"hooks": 1.0, "microbatch": 0.25})
    assert slow.probe is PROBES["microbatch"] and "4.0× faster" in slow.why and slow.why.startswith("auto:")
    assert slow.seconds == {"hooks": 1.0, "microbatch": 0.25}
    fast = decide("auto", mlp, _ce, _pair(), seconds={"hooks": 1.0, "microbatch": 0.9})
    assert fast.probe is PROBES["hooks"] and fast.fallbacks == {}
    # no trial without a draw or timings (hooks kept), nor for an explicit method
    assert decide("auto", mlp, _ce, _pair()).probe is PROBES["hooks"]
    asked = decide("hooks", mlp, _ce, _pair(), seconds={"hooks": 1.0, "microbatch": 0.01})
    assert asked.probe is PROBES["hooks"] and asked.seconds is None and asked.why == "asked with --method hooks"


def test_no_trial_when_per_example_gradients_are_invalid():
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    c = decide("auto", bn, _ce, _pair(), seconds={"hooks": 0.01, "microbatch": 1.0})
    assert c.probe is PROBES["microbatch"] and c.seconds is None and c.invalid.startswith("BatchNorm")


def test_time_draws_warm_up_then_take_turns_and_the_fastest_run_within_budget():
    calls = []
    a = PROBES["hooks"].__class__("a", True, lambda *x: calls.append("a"))
    b = PROBES["hooks"].__class__("b", True, lambda *x: calls.append("b"))
    both = {"a": (a, [(None, 1)]), "b": (b, [(None, 1)])}
    ticks = iter([0, 3, 3, 6])  # warm-ups of 3 s each spend the budget: they are the only runs
    assert time_draws(both, None, None, 1, budget=2.0, clock=lambda: next(ticks)) == {"a": 3, "b": 3}
    calls.clear()
    # warm-ups 0.1 and 0.2; then a 0.3, b 0.5 | a 0.2, b 0.4 (spent 1.4) | a 0.4, b 0.3 (2.1 ≥ 2: stop)
    ticks = iter([0, 0.1, 1, 1.2, 2, 2.3, 3, 3.5, 4, 4.2, 5, 5.4, 6, 6.4, 7, 7.3])
    assert time_draws(both, None, None, 1, budget=2.0, clock=lambda: next(ticks)) == pytest.approx(
        {"a": 0.2, "b": 0.3})
    assert calls == ["a", "b"] * 4  # warm-ups, then in turn


# ---------------------------------------------------------------- fallbacks: visible, or an error with --strict

def test_decide_names_the_fallbacks_and_strict_refuses_them():
    c = decide("auto", _gain_model(), _ce, _pair())
    assert c.probe is PROBES["hooks"] and list(c.fallbacks) == ["1.gain"] and "Gain" in c.fallbacks["1.gain"]
    with pytest.raises(BsprofError, match=r"strict: 1 parameter\(s\).*1\.gain") as err:
        decide("hooks", _gain_model(), _ce, _pair(), strict=True)
    assert "register_rule" in err.value.hint
    assert decide("microbatch", _gain_model(), _ce, _pair(), strict=True).fallbacks == {}
    c = decide("auto", _gain_model(), _ce, _pair(), strict=True)  # auto never takes the slow path: micro-batches
    assert c.probe is PROBES["microbatch"] and not c.fallbacks and "--strict" in c.why


def test_cli_lists_fallbacks_in_the_report_and_strict_fails(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["measure", str(CUSTOM), "--steps", "0", "--rel-error", "0.5", "--method", "hooks",
                            "-o", str(tmp_path / "a"), "--no-figures"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "note [fallback]: 1 parameter measured by the slow path (torch.func, or a per-example loop where " \
           "torch.func cannot batch the layer): 1.gain (in Gain, which has no per-example rule) — register a rule " \
           "with bsprof.probes.register_rule" in out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert [d for d in report["diagnostics"] if d["code"] == "fallback"]
    assert report["config"]["method_reason"] == "asked with --method hooks" and report["config"]["strict"] is False
    shown = runner.invoke(app, ["report", str(tmp_path / "a")])
    assert "1.gain" in shown.output

    r = runner.invoke(app, ["measure", str(CUSTOM), "--steps", "0", "--strict", "--method", "hooks",
                            "-o", str(tmp_path / "b")])
    assert r.exit_code == 2
    out = " ".join(r.output.split())
    assert "strict: 1 parameter(s) would be measured by the slow torch.func path: 1.gain" in out
    assert "register_rule" in out and "Traceback" not in r.output
    cfg = tmp_path / "strict.yaml"
    cfg.write_text("strict: true\nsteps: 0\nmethod: hooks\n")
    r = runner.invoke(app, ["measure", str(CUSTOM), "--config", str(cfg), "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and "1.gain" in r.output


def _data(n=256):
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g))


def test_library_strict_and_a_registered_rule_clears_the_fallback():
    from bsprof.probes import layers

    with pytest.raises(BsprofError, match="1.gain"):
        bsprof.measure(model=_gain_model(), dataset=_data(), loss=_ce, steps=0, strict=True, method="hooks")
    saved = dict(layers.RULES)
    try:
        bsprof.probes.register_rule(Gain, lambda mod, x, d: {"gain": x * d})
        r = bsprof.measure(model=_gain_model(), dataset=_data(), loss=_ce, steps=0, strict=True, rel_error=0.5)
        assert not [d for d in r.diagnostics if d["code"] == "fallback"]
    finally:
        layers.RULES.clear()
        layers.RULES.update(saved)


def test_measure_at_strict():
    """``measure_at(strict=True)`` as ``measure``'s: an error with hooks asked, micro-batches under auto (a new user
    found no strict on the fixed-weight front door, which the README promised)."""
    with pytest.raises(BsprofError, match="1.gain"):
        bsprof.measure_at(_gain_model(), _ce, _data(), method="hooks", strict=True)
    torch.manual_seed(0)  # weights where B_simple is resolved (at some random inits it is only a lower bound)
    est = bsprof.measure_at(_gain_model(), _ce, _data(), strict=True, rel_error=0.5, max_seconds=5)
    assert est.value > 0
    assert est.method == "microbatch" and "strict" in est.method_reason and not est.fallbacks  # said, not hidden
    with pytest.warns(UserWarning, match=r"1 parameter\(s\) measured by the slow torch.func path: 1.gain"):
        slow = bsprof.measure_at(_gain_model(), _ce, _data(), method="hooks", rel_error=0.5, max_seconds=5)
    assert slow.method == "hooks" and list(slow.fallbacks) == ["1.gain"]


def test_measure_at_errors_name_its_arguments_not_the_cli_flags():
    """A library caller is told method="microbatch", not --method microbatch (a new user's finding)."""
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(BsprofError) as err:
        bsprof.measure_at(bn, _ce, _data(), method="hooks", rel_error=0.5, max_seconds=5)
    assert 'method="microbatch"' in err.value.hint and "--method" not in err.value.hint
    from bsprof.api import _in_api_words
    e = _in_api_words(BsprofError("x", "drop --strict, or pass --rel-error 0.1 and --max-seconds"))
    assert e.hint == "drop strict=True, or pass rel_error=0.1 and max_seconds="
    for cli, api in (("lower --micro-batch or use --method per_example",
                      'lower micro_batch= or use method="per_example"'),
                     ("drop --strict to accept", "drop strict=True to accept"),  # (a reviewer's findings)
                     ("pass --rel-error 0.1.", "pass rel_error=0.1."), ("--method microbatch", 'method="microbatch"')):
        assert _in_api_words(BsprofError("x", cli)).hint == api


def test_measure_at_says_how_it_measured():
    """``measure_at`` returns an ``AtWeights``: B_simple's Estimate (usable wherever an Estimate is) with |G|², tr(Σ)
    and the draws behind it, consistent with each other."""
    torch.manual_seed(0)
    est = bsprof.measure_at(_gain_model(), _ce, _data(), method="microbatch", rel_error=0.5, max_seconds=30)
    assert est.ok
    assert isinstance(est, bsprof.Estimate) and isinstance(est, bsprof.AtWeights)
    assert est.method == "microbatch" and est.method_reason and est.stopped in ("precision", "examples", "time",
                                                                                 "budget", "exact")
    assert est.draws >= 5 and est.examples >= est.draws * 8
    assert est.g2.lo <= est.g2.value <= est.g2.hi and est.trace_sigma > 0
    assert est.value == pytest.approx(est.trace_sigma / est.g2.value, rel=1e-9)  # B_simple = tr(Σ)/|G|²
    assert est.scaled(2.0).value == pytest.approx(2 * est.value)


# ---------------------------------------------------------------- auto on a plain MLP: the trial keeps hooks

def test_auto_keeps_hooks_for_a_plain_mlp():
    """On wall-clock timings: a burst of other jobs during the ~10 ms trial can make the hooks' fastest of three
    draws look slow (CI once read 5 ms against 2 ms beside two busy processes); such a burst is transient, so up to
    three trials, each a fresh measure, must agree on hooks once."""
    mlp = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 2))
    for _ in range(3):
        r = bsprof.measure(model=mlp, dataset=_data(), loss=_ce, steps=0, rel_error=0.5)
        if r.config["method_resolved"] == "hooks":
            break
    assert r.config["method_resolved"] == "hooks", r.config["method_reason"]
    assert r.config["method_reason"].startswith("auto: per-example gradients are valid; a timed draw of 64 examples")
    assert set(r.config["method_trial_s"]) == {"hooks", "microbatch"}
    assert r.timing["choosing_s"] > 0


def test_a_sparse_embedding_is_measured_by_every_exact_probe():
    """nn.Embedding(sparse=True) gives sparse gradients: the check for a loss that mixes examples compared them with
    allclose, which sparse tensors lack (a new user's run crashed with a torch backend error blaming the loss), and the
    hooks' gradient sums reached a fused norm that does not take them. Both densify; the values agree."""
    from bsprof.probes.hooks import losses_mix_examples
    from bsprof.probes.microbatch import microbatch

    class Recsys(nn.Module):
        def __init__(self):
            super().__init__()
            self.u, self.out = nn.Embedding(50, 4, sparse=True), nn.Linear(4, 2)

        def forward(self, u):
            return self.out(self.u(u))

    torch.manual_seed(0)
    model = Recsys()
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randint(0, 50, (256,), generator=g),
                                          torch.randint(0, 2, (256,), generator=g))
    assert losses_mix_examples(model, _ce, data[:2]) is False
    stats = microbatch(model, _ce, data[:8], 8)
    assert all(not t.is_sparse for t in stats.grad_sum)
    found = {m: bsprof.measure_at(model, _ce, data, method=m, rel_error=0.3, max_seconds=30, seed=1)
             for m in ("hooks", "microbatch")}
    assert found["hooks"].ok and found["microbatch"].ok
    assert found["hooks"].lo <= found["microbatch"].hi and found["microbatch"].lo <= found["hooks"].hi


def test_an_embedding_scaling_its_gradient_by_frequency_couples_the_examples():
    """nn.Embedding(scale_grad_by_freq=True) divides each row's gradient by its frequency in the batch: the batch
    gradient is not the sum of per-example ones (a new user's hooks and torch.func disagreed on Σ_i g_i by 24–61%).
    It is batch-coupled, like BatchNorm in train mode: micro-batches, with the reason."""
    from bsprof.probes import batch_coupled
    from bsprof.probes.hooks import per_example_hooks

    model = nn.Sequential(nn.Embedding(7, 4, scale_grad_by_freq=True), nn.Flatten(), nn.Linear(12, 2))
    assert batch_coupled(model) == ["'0' (Embedding)"]
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randint(0, 7, (64, 3), generator=g),
                                          torch.randint(0, 2, (64,), generator=g))
    with pytest.raises(BsprofError, match="scale_grad_by_freq=True .* divides each row's gradient") as err:
        per_example_hooks(model, _ce, next(iter(torch.utils.data.DataLoader(data, batch_size=8))), 8)
    assert err.value.hint == "use --method microbatch"  # no word about BatchNorm, which the model does not have
    r = bsprof.measure(model=model, dataset=data, loss=_ce, steps=0, rel_error=0.5, max_seconds=5)
    assert r.config["method_resolved"] == "microbatch"
    [note] = [d["message"] for d in r.diagnostics if d["code"] == "batch_coupled"]
    assert note.startswith("an Embedding with scale_grad_by_freq=True ('0' (Embedding))"), note
