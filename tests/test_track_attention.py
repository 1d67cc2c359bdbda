"""The tracker's per-example source with nn.MultiheadAttention (issue 12): exact against torch.func, training
bit-identical with and without the tracker, nothing kept between steps, a one-line refusal where the rule stops."""

from __future__ import annotations

import copy
import gc
import io
import re

import pytest
import torch
import torch.nn.functional as F
from models import make
from torch import nn
from torch.utils.data import TensorDataset

from bsprof.probes import attention
from bsprof.probes.hooks import per_example_hooks
from bsprof.track import Tracker, TrackerError
from bsprof.validation.reference import exact_noise_scale

torch.set_num_threads(1)


class EncoderLM(nn.Module):
    """Embedding + nn.TransformerEncoderLayer (batch first) + LayerNorm + Linear head: a next-token LM."""

    def __init__(self, vocab=11, dim=8, bias=True, norm_first=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.layer = nn.TransformerEncoderLayer(dim, 2, dim_feedforward=12, dropout=0.0, batch_first=True,
                                                bias=bias, norm_first=norm_first)
        self.norm, self.head = nn.LayerNorm(dim, bias=bias), nn.Linear(dim, vocab, bias=bias)

    def forward(self, tokens):
        causal = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], dtype=self.head.weight.dtype)
        return self.head(self.norm(self.layer(self.emb(tokens), src_mask=causal, is_causal=True)))


def lm_loss(model, batch):
    (tokens,) = batch
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none").mean(1)


def lm(bias=True, norm_first=False, n=6):
    torch.manual_seed(0)
    tokens = torch.randint(0, 11, (n, 7), generator=torch.Generator().manual_seed(1))
    return EncoderLM(bias=bias, norm_first=norm_first).double(), lm_loss, (tokens,)


def shared(name):
    """A case of tests/models.py (MultiheadAttention batch first or not, with or without biases, kdim/vdim,
    packed self-attention, TransformerDecoderLayer), as (model, per-example loss, batch tuple)."""
    case = make(name)
    return case.model, case.loss_fn, case.batch


MODELS = {
    "encoder_lm": lambda: lm(),
    "encoder_lm_no_bias_norm_first": lambda: lm(bias=False, norm_first=True),
    **{name: (lambda name=name: shared(name))
       for name in ("mha_batch_first", "mha_seq_first", "mha_no_bias", "mha_kdim_vdim", "mha_self", "torch_decoder")},
}


def swapped(model: nn.Module) -> int:
    """MultiheadAttention modules whose forward is swapped (an instance attribute)."""
    return sum("forward" in vars(m) for m in model.modules() if isinstance(m, nn.MultiheadAttention))


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules()) + swapped(model)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_example_with_attention_is_the_exact_reference(name):
    """b = 1 with MultiheadAttention inside: small = (1/n)Σ|g_i|², big = |G|², both against torch.func (float64)."""
    model, loss_fn, batch = MODELS[name]()
    tracker = Tracker(model, source="per_example")
    assert swapped(model) >= 1
    loss = loss_fn(model, batch).mean()  # the forward runs before the block
    with tracker.per_example():
        loss.backward()
    draw = tracker.step(loss=loss)
    ref = exact_noise_scale(model, loss_fn, TensorDataset(*batch))
    n = len(batch[0])
    assert (draw.b, draw.B) == (1, n)
    assert draw.small_sq_total == pytest.approx(ref["trace_sigma"] + ref["g2"], rel=1e-9)
    assert draw.big_sq_total == pytest.approx(ref["g2"], rel=1e-9)
    tracker.close()
    assert hooks_left(model) == 0 and not attention._SINKS.get(model)


def _train(model, tracker, steps, batches):
    """Adam steps on ``batches``; the losses and the gradients of each step. With a tracker, each step also runs
    an eval forward under no_grad and a forward with grad whose graph is dropped without a backward."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, grads, calls = [], [], []
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = lm_loss(model, batch).mean()
        if tracker is not None:
            with tracker.per_example():
                loss.backward()
            tracker.step(loss=loss)
        else:
            loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        losses.append(loss.detach())
        opt.step()
        opt.zero_grad()
        model.eval()
        with torch.no_grad():
            model(batch[0][:, :-1])  # takes torch's fast path: the attention module's forward is not even called
        model.train()
        with torch.no_grad():
            model(batch[0][:, :-1])
        lm_loss(model, batch).mean()  # a forward with grad whose graph is dropped: nothing may stay behind
        del loss
        gc.collect()
        calls.append(sum(type(o) is attention.MhaCall for o in gc.get_objects()))
    return losses, grads, calls


def test_training_is_bit_identical_and_keeps_nothing_between_steps():
    """Same losses, same gradients, same weights as plain training, bit for bit; no recorded call survives a
    step (with or without a per-example backward); close() restores torch's own forward."""
    model, _, (tokens,) = lm(n=8)
    twin = copy.deepcopy(model)
    batches = [(tokens,), (tokens.flip(0),), (torch.randint(0, 11, (8, 7), generator=torch.Generator()
                                                            .manual_seed(5)),)]
    tracker = Tracker(model, source="per_example")
    losses, grads, calls = _train(model, tracker, 5, batches)
    src = tracker.per_example_source
    assert calls == [0] * 5 and not src.open and not src.pending and not src.parts
    assert len(tracker.draws) == 5
    tracker.close()
    assert hooks_left(model) == 0
    plain_losses, plain_grads, _ = _train(twin, None, 5, batches)
    assert all(torch.equal(a, b) for a, b in zip(losses, plain_losses))
    assert all(torch.equal(a, b) for gs, hs in zip(grads, plain_grads) for a, b in zip(gs, hs))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_copies_pickles_and_the_probe_next_to_the_tracker():
    """A deepcopy of a tracked model runs torch's own forward on its own weights (an EMA copy); the model pickles;
    bsprof's probe on the same model leaves the tracker's recording in place; close() then restores everything."""
    model, loss_fn, batch = lm()
    tracker = Tracker(model, source="per_example")
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p in copied.parameters():
            p.mul_(0.5)
    fresh = lm()[0]
    with torch.no_grad():
        for p, q in zip(fresh.parameters(), copied.parameters()):
            p.copy_(q)
    assert torch.equal(copied(batch[0]), fresh(batch[0]))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(batch[0]), model(batch[0]))
    per_example_hooks(model, loss_fn, batch, len(batch[0]))  # installs and removes its own recording
    tracker.discard()  # the probe's backward is not a training step
    assert swapped(model) == 1
    loss = loss_fn(model, batch).mean()
    with tracker.per_example():
        loss.backward()
    draw = tracker.step()
    ref = exact_noise_scale(model, loss_fn, TensorDataset(*batch))
    assert draw.small_sq_total == pytest.approx(ref["trace_sigma"] + ref["g2"], rel=1e-9)
    tracker.close()
    assert hooks_left(model) == 0


class Overridden(nn.MultiheadAttention):
    def forward(self, *args, **kwargs):
        return super().forward(*args, **kwargs)


class Wrapped(nn.Module):
    def __init__(self, att):
        super().__init__()
        self.att = att

    def forward(self, x):
        return self.att(x, x, x)[0]


@pytest.mark.parametrize("model,match", [
    (Wrapped(nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)),
     r"^att \(MultiheadAttention\).*add_bias_kv"),
    (Wrapped(Overridden(8, 2, batch_first=True)), r"^att \(Overridden\).*overrides MultiheadAttention.forward"),
    (nn.Sequential(nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0)),
     r"^0 \(TransformerEncoderLayer\).*batch_first=False"),
])
def test_attention_the_rule_does_not_cover_is_a_one_line_refusal(model, match):
    """add_bias_kv, a subclass that overrides forward, a seq-first TransformerEncoderLayer (its Linear layers see
    the sequence on dim 0): the source is unavailable, the problem names the module and says to use accumulation;
    with source='auto' nothing is swapped and accumulation still works."""
    with pytest.raises(TrackerError, match="per-example norms are not available") as err:
        Tracker(model, source="per_example")
    assert str(err.value).count("\n") == 1  # the message, then the fix
    tracker = Tracker(model, accumulation_steps=2, batch_size=4)
    problem = tracker.per_example_source.problem
    assert "\n" not in problem and problem.endswith("use accumulation (micro-batches) instead")
    assert re.search(match, problem), problem
    assert swapped(model) == 0
    x = torch.randn(4, 5, 8)
    for half in (x[:2], x[2:]):
        (model(half).square().mean() / 2).backward()
    assert tracker.step().b == 2
    tracker.close()


def test_a_dropped_source_restores_the_forward_and_the_tracker_goes_on():
    """An attention call the rule cannot measure (an unbatched query): that step's per-example norms fail, the
    source is dropped with its forward swap while the tracker stays open, and accumulation measures later steps."""
    torch.manual_seed(0)
    model = Wrapped(nn.MultiheadAttention(8, 2, batch_first=True))
    tracker = Tracker(model)
    assert swapped(model) == 1
    with tracker.per_example():
        model(torch.randn(5, 8)).square().mean().backward()  # [T, E]: no batch dim
    with pytest.raises(TrackerError, match="MultiheadAttention: unbatched input"):
        tracker.step()
    assert not tracker.closed and swapped(model) == 0
    model.zero_grad()
    x = torch.randn(4, 5, 8)
    for half in (x[:2], x[2:]):
        (model(half).square().mean() / 2).backward()
    assert tracker.step(batch_size=4).b == 2
    tracker.close()
    assert hooks_left(model) == 0


def test_a_forward_without_backward_changes_nothing():
    """A forward with grad whose graph is dropped (an evaluation without no_grad, on another batch size) before
    the step's forward: its calls get no δ, add zero, and do not count towards n; the step stays exact."""
    model, loss_fn, batch = lm()
    tracker = Tracker(model, source="per_example")
    loss_fn(model, (batch[0][:3],)).mean()  # dropped
    loss = loss_fn(model, batch).mean()
    with tracker.per_example():
        loss.backward()
    draw = tracker.step()
    ref = exact_noise_scale(model, loss_fn, TensorDataset(*batch))
    assert (draw.b, draw.B) == (1, 6)
    assert draw.small_sq_total == pytest.approx(ref["trace_sigma"] + ref["g2"], rel=1e-9)
    tracker.close()


class BarePositions(nn.Module):
    """Embedding + a learned position table kept as a bare nn.Parameter (added by broadcast) + an encoder layer."""

    def __init__(self, vocab=11, dim=8, T=5):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, dim), nn.Parameter(0.1 * torch.randn(1, T, dim))
        self.layer = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, 3)

    def forward(self, t):
        return self.head(self.layer(self.emb(t) + self.pos[:, :t.shape[1]]).mean(1))


@pytest.mark.parametrize("dropped", [20, 6, 0])
def test_a_larger_forward_without_backward_leaves_the_positions_measured(dropped):
    """A validation forward with grad enabled on more examples than the step's, before the step's forward: the
    bare position parameter's pre-hook was placed on the validation's graph (its batch size taken for the step's),
    and the step's backward left the positions' per-example norms out, silently (−0.7% of Σ|g_i|², a new user's
    finding: up to −7% per step in their loop). Now each forward hooks its own graph, and a parameter counts as
    covered only when its hook fires in the backward."""
    torch.manual_seed(0)
    model = BarePositions().double()
    t, y = torch.randint(0, 11, (6, 5)), torch.randint(0, 3, (6,))

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0]), batch[1], reduction="none")

    tracker = Tracker(model, source="per_example")
    if dropped:
        model(torch.randint(0, 11, (dropped, 5)))  # grad on, no backward
    loss = loss_fn(model, (t, y)).mean()
    with tracker.per_example():
        loss.backward()
    draw = tracker.step()
    ref = exact_noise_scale(model, loss_fn, TensorDataset(t, y))
    assert draw.small_sq_total == pytest.approx(ref["trace_sigma"] + ref["g2"], rel=1e-9)
    tracker.close()
