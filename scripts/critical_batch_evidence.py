"""Which noise-scale quantity, averaged how, predicts the swept critical batch? (issue 14, evidence)

    python scripts/critical_batch_evidence.py [--quick] [--tasks digits_sgd,mnist_cnn_sgd,digits_adam]

For each task: a global sweep (``bsprof.sweep.global_``: steps to a target training loss per batch with the lr
tuned on a grid, S = S_min(1 + B_crit/B), bootstrap interval) — for digits/SGD the result of
scripts/validate_critical_batch.py is reused — and probe trainings (``bsprof.measure``) with the sweep's spec at
its reference batch and 2–3 probe learning rates (the tuned lr at that batch × {1/4, 1/2, 1}: McCandlish App. C,
the measured noise scale depends on the temperature lr/B). Every probe measures, at each measurement,
  b_simple         tr(Σ)/|G|² at fixed weights,
  b_simple_window  B_simple from the pairs of the training steps since the previous measurement,
  b_noise          tr(HΣ)/GᵀHG (hessian=True),
  b_pre            the Adam-preconditioned B_simple (Adam-family optimizers only),
and each is summarised four ways:
  init   the value at the first measurement (for the window: the first window, i.e. steps 0 → first interval),
  mean   the mean over the measurements before the loss first reached the target (for the window: the windows
         ending at or before that measurement, which cover the training steps before the target),
  target the value at the target loss, ln B interpolated linearly in ln L between the two measurements that
         bracket the first crossing,
  path   the schedule's "B_crit over the path": bsprof.schedule.plan(report, ScheduleConfig(target_loss)) on a copy
         of the report whose followed column is the candidate (prediction["b_crit"]).
Writes scripts/results/critical_batch_evidence.json and .txt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bsprof  # noqa: E402
import bsprof.sweep  # noqa: E402
from bsprof.engine.spec import Spec, load_spec  # noqa: E402
from bsprof.output.report import Report  # noqa: E402
from bsprof.schedule import ScheduleConfig, plan  # noqa: E402

CANDIDATES = ("b_simple", "b_simple_window", "b_noise", "b_pre")
SUMMARIES = ("init", "mean", "target", "path")
OUT = ROOT / "scripts" / "results"
SWEEP_SEED = 0   # --sweep-seed: the sweep's base seed (to add seeds in a separate run)


# -- tasks -------------------------------------------------------------------------------------------------
def sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr)


def adam(lr):
    return lambda params: torch.optim.Adam(params, lr=lr)


def sgdm(lr):
    """SGD with momentum 0.9 (the PyTorch default form: heavy ball, no dampening)."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9)


def sgdn(lr):
    """SGD with Nesterov momentum 0.9."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)


def sgdm5(lr):
    """SGD with momentum 0.5."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.5)


_MNIST: tuple | None = None


def mnist_small():
    """The first 5,000 images of the real MNIST test set, average-pooled to 14×14 (CPU budget)."""
    global _MNIST
    if _MNIST is None:
        from configs.mnist_mlp import mnist_tensors

        x, y = mnist_tensors()
        _MNIST = (F.avg_pool2d(x[:5000].view(-1, 1, 28, 28), 2).contiguous(), y[:5000].clone())
    return torch.utils.data.TensorDataset(*_MNIST)


def cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 10))


def ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def digits_spec():
    return load_spec(ROOT / "configs" / "digits_mlp.py")


def mnist_spec():
    return Spec(None, None, cnn, mnist_small, ce, sgd(0.1))


def shakespeare_spec():
    """configs/char_transformer.py on tiny-shakespeare (../shared/data), context 32 (CPU budget), per-sequence loss."""
    import os

    os.environ.setdefault("BSPROF_TEXT_FILE", str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    from configs import char_transformer as ct

    ct.CONTEXT = ct.TOKENS_PER_EXAMPLE = 32
    return Spec(None, None, ct.model, ct.dataset, ct.loss, adam(2e-3))


def digits_cnn():
    """conv16-conv32-pool-fc on the 8×8 sklearn digits (14k parameters)."""
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 4 * 4, 10))


def digits_bn_cnn():
    """The digits CNN with BatchNorm after each convolution (train mode: batch statistics couple the examples)."""
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


_TEACHER: tuple | None = None


def teacher_data():
    """8,192 Gaussian inputs in 32 dimensions labelled by a fixed random teacher (32-64-10, tanh), argmax."""
    global _TEACHER
    if _TEACHER is None:
        g = torch.Generator().manual_seed(7)
        x = torch.randn(8192, 32, generator=g)
        w1, w2 = torch.randn(32, 64, generator=g) / 32 ** 0.5, torch.randn(64, 10, generator=g) / 8
        _TEACHER = (x, (torch.tanh(x @ w1) @ w2).argmax(1))
    return torch.utils.data.TensorDataset(*_TEACHER)


def student():
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


_REGRESSION: tuple | None = None


def regression_data():
    """8,192 Gaussian inputs in 16 dimensions, targets from a fixed random teacher (16-32-1, tanh) plus noise of
    standard deviation 0.3 (a loss floor of 0.09): the one regression task (MSE), ninth session, out of sample."""
    global _REGRESSION
    if _REGRESSION is None:
        g = torch.Generator().manual_seed(11)
        x = torch.randn(8192, 16, generator=g)
        w1, w2 = torch.randn(16, 32, generator=g) / 16 ** 0.5 * 2, torch.randn(32, generator=g) / 32 ** 0.5 * 2
        _REGRESSION = (x, torch.tanh(x @ w1) @ w2 + 0.3 * torch.randn(8192, generator=g))
    return torch.utils.data.TensorDataset(*_REGRESSION)


def regressor():
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def mse(model, batch):
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2


def lenet():
    """A LeNet-style CNN (tanh, average pooling) for the 14×14 MNIST images: conv6-conv16-fc32, 4.2k parameters."""
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 3), nn.Tanh(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.Tanh(), nn.Linear(32, 10))


def shakespeare_ids() -> tuple[torch.Tensor, int]:
    """The first 400,000 characters of tiny-shakespeare (../shared/data) as ids, and the vocabulary's size."""
    text = (ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt").read_text()
    vocab = sorted(set(text))
    return torch.tensor([vocab.index(c) for c in text[:400_000]]), len(vocab)


_CHARS: tuple | None = None


def char_windows():
    """20,000 windows of 8 characters of tiny-shakespeare (../shared/data), each labelled with the next character:
    a next-character language model without attention (tenth session, out of sample for every rule)."""
    global _CHARS
    if _CHARS is None:
        ids, vocab = shakespeare_ids()
        start = torch.randint(0, len(ids) - 9, (20_000,), generator=torch.Generator().manual_seed(13))
        _CHARS = (ids[start[:, None] + torch.arange(8)], ids[start + 8], vocab)
    return torch.utils.data.TensorDataset(*_CHARS[:2])


def char_mlp():
    """Embedding(65, 16) over 8 characters → 128 → 256 (tanh) → 65 (a Bengio-style MLP LM, 51k parameters)."""
    n = char_windows() and _CHARS[2]
    return nn.Sequential(nn.Embedding(n, 16), nn.Flatten(), nn.Linear(128, 256), nn.Tanh(), nn.Linear(256, n))


_CHARS32: tuple | None = None


def char_windows32():
    """20,000 windows of 32 characters of tiny-shakespeare (../shared/data; the first 400,000 characters, as
    ``char_windows``), each with its 32 next characters (the window shifted by one): per-position targets."""
    global _CHARS32
    if _CHARS32 is None:
        ids, vocab = shakespeare_ids()
        start = torch.randint(0, len(ids) - 33, (20_000,), generator=torch.Generator().manual_seed(17))
        win = ids[start[:, None] + torch.arange(33)]
        _CHARS32 = (win[:, :32].contiguous(), win[:, 1:].contiguous(), vocab)
    return torch.utils.data.TensorDataset(*_CHARS32[:2])


class CharGRU(nn.Module):
    """Embedding(65, 16) → GRU(16, 64) → Linear(64, 65) at every position: a recurrent next-character LM, 21k
    parameters (no per-example rule in bsprof: measured with micro-batches)."""

    def __init__(self):
        super().__init__()
        n = char_windows32() and _CHARS32[2]
        self.embed, self.gru, self.head = nn.Embedding(n, 16), nn.GRU(16, 64, batch_first=True), nn.Linear(64, n)

    def forward(self, x):
        return self.head(self.gru(self.embed(x))[0])


def seq_ce(model, batch):
    """Per-example mean cross-entropy over the 32 positions (shape [B])."""
    x, y = batch
    return F.cross_entropy(model(x).transpose(1, 2), y, reduction="none").mean(1)


def softmax():
    """Multinomial logistic regression on the 14×14 images (196 → 10, 1,970 parameters): a convex task (twelfth
    session, out of sample for every rule)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(196, 10))


class ViT(nn.Module):
    """A vision transformer on the 14×14 images: 4 patches of 7×7 and a class token (``torch.cat``), learned
    positions (a bare parameter added by broadcast), 2 pre-norm ``nn.TransformerEncoderLayer``s (d 32, 4 heads),
    19k parameters (fourteenth session, out of sample for every rule)."""

    def __init__(self, d=32, heads=4, layers=2):
        super().__init__()
        self.embed = nn.Linear(49, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        B = x.shape[0]
        x = x.view(B, 14, 14).unfold(1, 7, 7).unfold(2, 7, 7).reshape(B, 4, 49)
        h = torch.cat([self.cls.expand(B, -1, -1), self.embed(x)], 1) + self.pos
        return self.head(self.norm(self.enc(h))[:, 0])


def autoencoder():
    """An MLP autoencoder 196-64-16-64-196 (ReLU, 27k parameters) on the 14×14 images: unsupervised, a
    reconstruction loss (sixteenth session, out of sample for every rule)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(196, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU(),
                         nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 196))


def reconstruction(model, batch):
    """Per-image mean squared reconstruction error over the 196 pixels (the labels are not used)."""
    x = batch[0].flatten(1)
    return (model(x) - x).square().mean(1)


def gn_cnn():
    """A depthwise-separable CNN with GroupNorm (conv16-GN, depthwise 3×3 + pointwise 32-GN, average pooling to
    2×2, 2.3k parameters) on the 14×14 images (sixteenth session, out of sample for every rule)."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 1), nn.GroupNorm(4, 32),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))


class ResBlock(nn.Module):
    """[conv 3×3 → BatchNorm → ReLU → conv 3×3 → BatchNorm] + skip → ReLU (channels kept)."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


def bn_resnet():
    """A small residual CNN with BatchNorm on the 14×14 images: conv16-BN-ReLU, two residual blocks of two
    conv16-BN, global average pooling, linear to 10 (9.8k parameters; train mode: batch statistics couple the
    examples, so bsprof measures with micro-batches)."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), ResBlock(16), ResBlock(16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def adamw(lr):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


TASKS = {
    # reuse: the global sweep of scripts/validate_critical_batch.py (B = 16..512, lr grid ×0.5,1,2, 3 seeds)
    "digits_sgd": dict(desc="digits MLP 64-128-10 (sklearn, 1797), plain SGD", spec=digits_spec, opt=sgd,
                       target=0.1, batch=32, ref_lr=0.8, reuse="validate_critical_batch.json",
                       probe_steps=260, lr_factors=(0.25, 0.5, 1.0)),
    "mnist_cnn_sgd": dict(desc="small CNN (conv8-conv16-fc32, 6.6k params) on real MNIST t10k, first 5,000 "
                               "images pooled to 14×14, plain SGD", spec=mnist_spec, opt=sgd, target=0.3,
                          batch=32, sweep=dict(batches=[16, 32, 64, 128, 256], lr0=0.2, lr_grid=[0.5, 1, 2],
                                               seeds=1, max_steps=800, eval_examples=1024, b_noise=32.0,
                                               max_seconds=600),
                          # probe lr fixed (not the new sweep's tuned lr) so that probes and sweep can run in
                          # parallel: 0.4 was the best lr at B = 32 of a first, failed sweep (lr grid 0.19/0.38)
                          probe_ref_lr=0.4, probe_steps=450, lr_factors=(0.5, 1.0)),
    "digits_adam": dict(desc="digits MLP 64-128-10 (sklearn, 1797), Adam", spec=digits_spec, opt=adam, target=0.1,
                        batch=32, sweep=dict(batches=[16, 32, 64, 128, 256], lr0=0.01, lr_grid=[1, 2, 4, 8],
                                             seeds=2, max_steps=1500, eval_examples=0),
                        probe_steps=250, lr_factors=(0.25, 1.0)),
    "shakespeare_adam": dict(desc="char-level transformer (2 layers, d 64, 4 heads, context 32, 0.1M params) on "
                                  "tiny-shakespeare, Adam", spec=shakespeare_spec, opt=adam, target=2.0, batch=32,
                             sweep=dict(batches=[16, 32, 64, 128, 256], lr0=2e-3, lr_grid=[0.5, 1, 2, 4], seeds=1,
                                        max_steps=2500, eval_examples=512, max_seconds=3000),
                             probe_steps=400, lr_factors=(1.0,)),
    # out of sample for the Adam factor (plan.ADAM_FACTOR was set before this task was run)
    "mnist_cnn_adam": dict(desc="the small CNN on real MNIST (5,000 images, 14×14), Adam",
                           spec=lambda: dataclasses.replace(mnist_spec(), optimizer=adam(1e-3)), opt=adam,
                           target=0.3, batch=32,
                           sweep=dict(batches=[16, 32, 64, 128, 256], lr0=1e-3, lr_grid=[1, 2, 4, 8], seeds=1,
                                      max_steps=800, eval_examples=1024, max_seconds=1800),
                           probe_steps=450, lr_factors=(1.0,)),
    "mnist_cnn_adam_hi": dict(desc="the same, lr grid ×16, ×32 (×8, the top of the first grid, was best everywhere)",
                              spec=lambda: dataclasses.replace(mnist_spec(), optimizer=adam(1e-3)), opt=adam,
                              target=0.3, batch=32,
                              sweep=dict(batches=[16, 32, 64, 128, 256], lr0=1e-3, lr_grid=[16, 32], seeds=1,
                                         max_steps=800, eval_examples=1024, max_seconds=1800),
                              probe_steps=450, lr_factors=(1.0,)),
    "mnist_mlp_adam": dict(desc="MLP 784-256-10 on real MNIST (10,000 t10k images), Adam, out of sample",
                           spec=lambda: dataclasses.replace(load_spec(ROOT / "configs" / "mnist_mlp.py"),
                                                            optimizer=adam(1e-3)), opt=adam, target=0.2, batch=32,
                           sweep=dict(batches=[16, 32, 64, 128, 256], lr0=1e-3, lr_grid=[1, 2, 4, 8], seeds=1,
                                      max_steps=1500, eval_examples=1024, max_seconds=1800),
                           probe_steps=450, lr_factors=(1.0,)),
    "mnist_mlp_sgd": dict(desc="MLP 784-256-10 on real MNIST (10,000 t10k images), plain SGD, out of sample (ninth "
                               "session)",
                          spec=lambda: dataclasses.replace(load_spec(ROOT / "configs" / "mnist_mlp.py"),
                                                           optimizer=sgd(0.1)), opt=sgd, target=0.3, batch=32,
                          sweep=dict(batches=[16, 32, 64, 128, 256, 512], lr0=0.05, lr_grid=[0.5, 1, 2, 4, 8], seeds=1,
                                     max_steps=3000, eval_examples=1024, max_seconds=1200),
                          probe_steps=700, lr_factors=(1.0,)),
    "mnist_mlp_adam_hi": dict(desc="the same, lr grid ×16 (×8 was the top of the first grid at B = 64, 128)",
                              spec=lambda: dataclasses.replace(load_spec(ROOT / "configs" / "mnist_mlp.py"),
                                                               optimizer=adam(1e-3)), opt=adam, target=0.2, batch=32,
                              sweep=dict(batches=[16, 32, 64, 128, 256], lr0=1e-3, lr_grid=[16], seeds=1,
                                         max_steps=1500, eval_examples=1024, max_seconds=1800),
                              probe_steps=450, lr_factors=(1.0,)),
    # added in the fourth session, after plan.ADAM_FACTOR = 2 was set, to widen the Adam evidence
    "digits_cnn_adam": dict(desc="CNN conv16-conv32-fc (14k params) on the 8×8 sklearn digits, Adam",
                            spec=lambda: Spec(None, None, digits_cnn, digits_spec().dataset, ce, adam(1e-3)),
                            opt=adam, target=0.05, batch=32,
                            sweep=dict(batches=[16, 32, 64, 128, 256], lr0=1e-3, lr_grid=[1, 2, 4, 8, 16, 32],
                                       seeds=2, max_steps=1500, eval_examples=0, max_seconds=1800),
                            probe_steps=300, lr_factors=(1.0,)),
    "teacher_mlp_adam": dict(desc="MLP 32-128-128-10 on 8,192 Gaussian inputs labelled by a random teacher, Adam",
                             spec=lambda: Spec(None, None, student, teacher_data, ce, adam(1e-3)), opt=adam,
                             target=0.45, batch=32,
                             sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024], lr0=1e-3,
                                        lr_grid=[0.5, 1, 2, 4, 8, 16], seeds=1, max_steps=3000, eval_examples=1024,
                                        max_seconds=2400),
                             probe_steps=700, lr_factors=(1.0,)),
    # SGD on the same two models (a third and fourth SGD check of the training-step window rule)
    "digits_cnn_sgd": dict(desc="CNN conv16-conv32-fc (14k params) on the 8×8 sklearn digits, plain SGD",
                           spec=lambda: Spec(None, None, digits_cnn, digits_spec().dataset, ce, sgd(0.1)),
                           opt=sgd, target=0.05, batch=32,
                           sweep=dict(batches=[16, 32, 64, 128, 256], lr0=0.1, lr_grid=[0.5, 1, 2, 4], seeds=2,
                                      max_steps=2000, eval_examples=0, max_seconds=1800),
                           probe_steps=400, lr_factors=(1.0,)),
    "teacher_mlp_sgd": dict(desc="MLP 32-128-128-10 on 8,192 Gaussian inputs labelled by a random teacher, plain SGD",
                            spec=lambda: Spec(None, None, student, teacher_data, ce, sgd(0.1)), opt=sgd,
                            target=0.55, batch=32,
                            sweep=dict(batches=[16, 32, 64, 128, 256, 512], lr0=0.05, lr_grid=[0.5, 1, 2, 4],
                                       seeds=1, max_steps=4000, eval_examples=1024, max_seconds=2400),
                            probe_steps=800, lr_factors=(1.0,)),
    # ninth session, out of sample: a regression (MSE) task, the first that is not a classification
    "teacher_reg_sgd": dict(desc="MLP 16-64-64-1 regressing a random tanh teacher plus noise (8,192 Gaussian inputs, "
                                 "MSE), plain SGD, out of sample",
                            spec=lambda: Spec(None, None, regressor, regression_data, mse, sgd(0.05)), opt=sgd,
                            target=0.35, batch=32,
                            sweep=dict(batches=[16, 32, 64, 128, 256, 512], lr0=0.05, lr_grid=[0.5, 1, 2, 4],
                                       seeds=1, max_steps=4000, eval_examples=1024, max_seconds=1500),
                            probe_steps=1000, lr_factors=(1.0,)),
    "teacher_reg_adam": dict(desc="the same regression MLP, Adam, out of sample",
                             spec=lambda: Spec(None, None, regressor, regression_data, mse, adam(1e-3)), opt=adam,
                             target=0.35, batch=32,
                             sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024], lr0=1e-3,
                                        lr_grid=[0.5, 1, 2, 4, 8], seeds=1, max_steps=3000, eval_examples=1024,
                                        max_seconds=1500),
                             probe_steps=900, lr_factors=(1.0,)),
    # seventh session: a BatchNorm model (micro-batch probe; training-step windows from 2 micro-batches per step)
    "digits_bn_cnn_sgd": dict(desc="the digits CNN with BatchNorm2d after each conv (14k params), plain SGD",
                              spec=lambda: Spec(None, None, digits_bn_cnn, digits_spec().dataset, ce, sgd(0.1)),
                              opt=sgd, target=0.05, batch=32,
                              sweep=dict(batches=[16, 32, 64, 128, 256], lr0=0.1, lr_grid=[0.5, 1, 2, 4, 8], seeds=2,
                                         max_steps=2000, eval_examples=0, max_seconds=2400),
                              probe_steps=400, lr_factors=(1.0,)),
    # seventh session: SGD with momentum 0.9 (out of sample: the SGD rule was never checked with momentum)
    "digits_mom_sgd": dict(desc="digits MLP 64-128-10 (sklearn, 1797), SGD with momentum 0.9", spec=digits_spec,
                           opt=sgdm, target=0.1, batch=32,
                           sweep=dict(batches=[16, 32, 64, 128, 256], lr0=0.05, lr_grid=[0.25, 0.5, 1, 2, 4], seeds=2,
                                      max_steps=1500, eval_examples=0, max_seconds=1800),
                           probe_steps=260, lr_factors=(1.0,)),
    "teacher_mom_sgd": dict(desc="MLP 32-128-128-10 on 8,192 teacher-labelled Gaussian inputs, SGD with momentum 0.9",
                            spec=lambda: Spec(None, None, student, teacher_data, ce, sgdm(0.02)), opt=sgdm,
                            target=0.55, batch=32,
                            sweep=dict(batches=[16, 32, 64, 128, 256, 512], lr0=0.01, lr_grid=[0.5, 1, 2, 4],
                                       seeds=1, max_steps=3000, eval_examples=1024, max_seconds=2400),
                            probe_steps=800, lr_factors=(1.0,)),
    # out of sample for the momentum factor (fitted at momentum 0.9, heavy ball): Nesterov, and momentum 0.5
    "digits_nesterov_sgd": dict(desc="digits MLP 64-128-10 (sklearn, 1797), SGD with Nesterov momentum 0.9",
                                spec=digits_spec, opt=sgdn, target=0.1, batch=32,
                                sweep=dict(batches=[16, 32, 64, 128, 256], lr0=0.05, lr_grid=[0.25, 0.5, 1, 2, 4, 8],
                                           seeds=2, max_steps=1500, eval_examples=0, max_seconds=1800),
                                probe_steps=260, lr_factors=(1.0,)),
    "digits_mom05_sgd": dict(desc="digits MLP 64-128-10 (sklearn, 1797), SGD with momentum 0.5", spec=digits_spec,
                             opt=sgdm5, target=0.1, batch=32,
                             sweep=dict(batches=[16, 32, 64, 128, 256], lr0=0.2, lr_grid=[0.25, 0.5, 1, 2, 4, 8],
                                        seeds=2, max_steps=1500, eval_examples=0, max_seconds=1800),
                             probe_steps=260, lr_factors=(1.0,)),
    # issue 14 saw no shortfall on a char transformer with SGD + momentum (sweep 41, fixed-weight path 43): checked
    "shakespeare_mom_sgd": dict(desc="char-level transformer (0.1M) on tiny-shakespeare, SGD with momentum 0.9",
                                spec=lambda: dataclasses.replace(shakespeare_spec(), optimizer=sgdm(0.15)),
                                opt=sgdm, target=2.3, batch=32,
                                sweep=dict(batches=[16, 32, 64, 128, 256], lr0=0.15, lr_grid=[0.5, 1, 2, 4], seeds=1,
                                           max_steps=1500, eval_examples=512, b_noise=32.0, max_seconds=1800),
                                probe_steps=400, lr_factors=(1.0,)),
    "mnist_cnn_mom_sgd": dict(desc="small CNN (conv8-conv16-fc32, 6.6k params) on real MNIST, 5,000 images pooled to "
                                   "14×14, SGD with momentum 0.9", spec=lambda: Spec(None, None, cnn, mnist_small, ce,
                                                                                     sgdm(0.03)),
                              opt=sgdm, target=0.3, batch=32,
                              sweep=dict(batches=[16, 32, 64, 128, 256], lr0=0.02, lr_grid=[0.25, 0.5, 1, 2, 4],
                                         seeds=1, max_steps=800, eval_examples=1024, max_seconds=1200),
                              probe_steps=500, lr_factors=(1.0,)),
    "digits_cnn_mom_sgd": dict(desc="CNN conv16-conv32-fc (14k params) on the 8×8 sklearn digits, SGD with "
                                    "momentum 0.9",
                               spec=lambda: Spec(None, None, digits_cnn, digits_spec().dataset, ce, sgdm(0.03)),
                               opt=sgdm, target=0.05, batch=32,
                               sweep=dict(batches=[16, 32, 64, 128, 256], lr0=0.02, lr_grid=[0.5, 1, 2, 4, 8], seeds=2,
                                          max_steps=2000, eval_examples=0, max_seconds=1800),
                               probe_steps=400, lr_factors=(1.0,)),
    # tenth session, out of sample for every rule (set before it ran): a next-character MLP LM on real text
    "char_mlp_sgd": dict(desc="next-character MLP LM (embedding 16 × 8 characters, 256 tanh, 51k params) on 20,000 "
                              "tiny-shakespeare windows, plain SGD, out of sample (tenth session)",
                         spec=lambda: Spec(None, None, char_mlp, char_windows, ce, sgd(0.3)), opt=sgd, target=2.2,
                         batch=32,
                         sweep=dict(batches=[16, 32, 64, 128, 256, 512], lr0=0.1, lr_grid=[0.5, 1, 2, 4, 8], seeds=1,
                                    max_steps=4000, eval_examples=1024, max_seconds=1800),
                         probe_steps=1800, lr_factors=(1.0,)),
    # its steps halved with every doubling up to B = 512 (B_crit 1946 [709, 3360], an extrapolation): larger batches,
    # the same lr rule (saturating at the first run's B_simple at init, 274) and grid
    "char_mlp_sgd_hi": dict(desc="the same, B = 1024, 2048, 4096", spec=lambda: TASKS["char_mlp_sgd"]["spec"](),
                            opt=sgd, target=2.2, batch=32,
                            sweep=dict(batches=[32, 1024, 2048, 4096], lr0=0.1, lr_grid=[0.5, 1, 2, 4, 8], seeds=1,
                                       max_steps=4000, eval_examples=1024, b_noise=274.2, max_seconds=1800),
                            probe_steps=1800, lr_factors=(1.0,)),
    # tenth session, set up after the plain-SGD factor: a LeNet-style CNN (tanh, average pooling) on real MNIST
    "mnist_lenet_sgd": dict(desc="LeNet-style CNN (tanh, average pooling, 4.2k params) on real MNIST (5,000 images, "
                                 "14×14), plain SGD, out of sample (tenth session)",
                            spec=lambda: Spec(None, None, lenet, mnist_small, ce, sgd(0.3)), opt=sgd, target=0.3,
                            batch=32,
                            sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024], lr0=0.1, lr_grid=[0.5, 1, 2, 4, 8],
                                       seeds=1, max_steps=2000, eval_examples=1024, max_seconds=1500),
                            probe_steps=800, lr_factors=(1.0,)),
    # the same LM under Adam and under SGD with momentum 0.9: out of sample for those factors (tenth session)
    "char_mlp_adam": dict(desc="the next-character MLP LM, Adam, out of sample (tenth session)",
                          spec=lambda: Spec(None, None, char_mlp, char_windows, ce, adam(2e-3)), opt=adam, target=2.2,
                          batch=32,
                          sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096], lr0=1e-3,
                                     lr_grid=[1, 2, 4, 8, 16], seeds=1, max_steps=4000, eval_examples=1024,
                                     max_seconds=2400),
                          probe_steps=1500, lr_factors=(1.0,)),
    "char_mlp_mom_sgd": dict(desc="the next-character MLP LM, SGD with momentum 0.9, out of sample (tenth session)",
                             spec=lambda: Spec(None, None, char_mlp, char_windows, ce, sgdm(0.03)), opt=sgdm,
                             target=2.2, batch=32,
                             sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096], lr0=0.01,
                                        lr_grid=[0.5, 1, 2, 4, 8], seeds=1, max_steps=4000, eval_examples=1024,
                                        b_noise=274.2, max_seconds=2400),
                             probe_steps=1500, lr_factors=(1.0,)),
    # its best lr was the grid's top (×8) at B = 1024, 2048, 4096: the grid extended upwards there, same seed; lr0 is
    # the first sweep's lr at B = 1024 (0.01 (1 + 274.2/16)/(1 + 274.2/1024): its rule, ε ∝ 1/(1 + B_n/B)), and a run
    # slower than the ×8 one (56, 33, 27 steps) is cut at 200 steps. Outcome (critical_batch_char_mlp_mom_sgd_hi.txt):
    # no run at ×16 or ×32 reached the target within 200 steps at any of the three batches, so ×8 is the best of the
    # extended grid and the first sweep stands
    "char_mlp_mom_sgd_hi": dict(desc="the same, lr grid ×16, ×32", spec=lambda: TASKS["char_mlp_mom_sgd"]["spec"](),
                                opt=sgdm, target=2.2, batch=1024,
                                sweep=dict(batches=[1024, 2048, 4096], lr0=0.01 * (1 + 274.2 / 16) / (1 + 274.2 / 1024),
                                           lr_grid=[16, 32], seeds=1, max_steps=200, eval_examples=1024, b_noise=274.2,
                                           max_seconds=1200),
                                probe_steps=1500, lr_factors=(1.0,)),
    "mnist_softmax_sgd": dict(desc="softmax regression (196 → 10, convex) on real MNIST (5,000 images, 14×14), plain "
                                   "SGD, out of sample (twelfth session)",
                              spec=lambda: Spec(None, None, softmax, mnist_small, ce, sgd(0.5)), opt=sgd, target=0.35,
                              batch=32, sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024], lr0=0.25,
                                                   lr_grid=[0.5, 1, 2, 4, 8, 16], seeds=2, max_steps=3000,
                                                   eval_examples=0, max_seconds=1800),
                              probe_steps=1500, lr_factors=(1.0,)),
    "mnist_softmax_adam": dict(desc="softmax regression (196 → 10, convex) on real MNIST (5,000 images, 14×14), Adam, "
                                    "out of sample (twelfth session)",
                               spec=lambda: Spec(None, None, softmax, mnist_small, ce, adam(1e-3)), opt=adam,
                               target=0.35, batch=32, sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024], lr0=1e-3,
                                                                 lr_grid=[1, 2, 4, 8, 16, 32], seeds=2,
                                                                 max_steps=3000, eval_examples=0, max_seconds=1800),
                               probe_steps=1500, lr_factors=(1.0,)),
    "mnist_vit_adamw": dict(desc="vision transformer (4 patches + class token, 2 layers, d 32, 19k params) on real "
                                 "MNIST (5,000 images, 14×14), AdamW, out of sample (fourteenth session)",
                            spec=lambda: Spec(None, None, ViT, mnist_small, ce, adamw(1e-3)), opt=adamw, target=0.2,
                            batch=32, sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024], lr0=1e-3,
                                                 lr_grid=[0.5, 1, 2, 4, 8], seeds=1, max_steps=3000,
                                                 eval_examples=0, max_seconds=2400),
                            probe_steps=1000, lr_factors=(1.0,)),
    "mnist_ae_adam": dict(desc="MLP autoencoder 196-64-16-64-196 (27k params) on real MNIST (5,000 images, 14×14), "
                               "reconstruction MSE, Adam, out of sample (sixteenth session)",
                          spec=lambda: Spec(None, None, autoencoder, mnist_small, reconstruction, adam(1e-3)), opt=adam,
                          target=0.018, batch=32, sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024], lr0=1e-3,
                                                             lr_grid=[0.5, 1, 2, 4, 8], seeds=1, max_steps=3000,
                                                             eval_examples=0, max_seconds=2400),
                          probe_steps=1000, lr_factors=(1.0,)),
    "mnist_gn_mom_sgd": dict(desc="depthwise-separable CNN with GroupNorm (2.3k params) on real MNIST (5,000 images, "
                                  "14×14), SGD with momentum 0.9, out of sample (sixteenth session)",
                             spec=lambda: Spec(None, None, gn_cnn, mnist_small, ce, sgdm(0.02)), opt=sgdm, target=0.3,
                             batch=32, sweep=dict(batches=[16, 32, 64, 128, 256, 512], lr0=0.02,
                                                  lr_grid=[0.25, 0.5, 1, 2, 4], seeds=1, max_steps=2000,
                                                  eval_examples=0, max_seconds=2400),
                             probe_steps=800, lr_factors=(1.0,)),
    # a recurrent model (no per-example rule in bsprof: micro-batch probe, training-step windows from 2 micro-batches
    # per step), out of sample for every rule; target 2.0: B = 32 at lr ≈ 2e-2 reaches it in ≈ 170 steps (one trial run)
    "gru_char_adam": dict(desc="next-character GRU LM (embedding 16 → GRU 64 → 65 at every position, 21k params, "
                               "context 32, per-sequence mean loss) on 20,000 tiny-shakespeare windows, Adam, out of "
                               "sample", spec=lambda: Spec(None, None, CharGRU, char_windows32, seq_ce, adam(3e-3)),
                          opt=adam, target=2.0, batch=32,
                          sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024], lr0=3e-3, lr_grid=[0.5, 1, 2, 4, 8],
                                     seeds=2, max_steps=2000, eval_examples=1024, max_seconds=2400),
                          probe_steps=500, lr_factors=(1.0,)),
    # a BatchNorm residual CNN under SGD with momentum 0.9 (micro-batch probe, training-step windows from 2
    # micro-batches per step), out of sample for every rule; target 0.3: B = 32 at lr 0.02-0.05 reaches it in
    # ≈ 320-340 steps (one trial run, evaluation in eval mode on a 1,024-image draw)
    "mnist_bn_res_mom_sgd": dict(desc="residual CNN with BatchNorm (conv16-BN, 2 residual blocks of 2 conv16-BN, "
                                      "global average pool, 9.8k params) on real MNIST (5,000 images, 14×14), SGD "
                                      "with momentum 0.9, out of sample",
                                 spec=lambda: Spec(None, None, bn_resnet, mnist_small, ce, sgdm(0.02)), opt=sgdm,
                                 target=0.3, batch=32,
                                 sweep=dict(batches=[16, 32, 64, 128, 256, 512], lr0=0.02,
                                            lr_grid=[0.25, 0.5, 1, 2, 4], seeds=1, max_steps=1500,
                                            eval_examples=1024, max_seconds=1500),
                                 probe_steps=600, lr_factors=(1.0,)),
    # its best lr was the grid's top (×4) at B = 16 and 256: the grid extended upwards, same seed
    "mnist_gn_mom_sgd_hi": dict(desc="the same, lr grid ×8, ×16", spec=lambda: TASKS["mnist_gn_mom_sgd"]["spec"](),
                                opt=sgdm, target=0.3, batch=32,
                                sweep=dict(batches=[16, 32, 64, 128, 256, 512], lr0=0.02, lr_grid=[8, 16], seeds=1,
                                           max_steps=2000, eval_examples=0, max_seconds=2400,
                                           b_noise=88.8),  # the first sweep's B_simple at init, for its lr rule
                                probe_steps=800, lr_factors=(1.0,)),
    # its best lr was the grid's top (×4) at B = 128: the grid extended upwards, same seed
    "mnist_bn_res_mom_sgd_hi": dict(desc="the same, lr grid ×8, ×16",
                                    spec=lambda: TASKS["mnist_bn_res_mom_sgd"]["spec"](), opt=sgdm, target=0.3,
                                    batch=32,
                                    sweep=dict(batches=[16, 32, 64, 128, 256, 512], lr0=0.02, lr_grid=[8, 16],
                                               seeds=1, max_steps=1500, eval_examples=1024, max_seconds=1200,
                                               b_noise=31.8),  # the first sweep's B_simple at init, for its lr rule
                                    probe_steps=600, lr_factors=(1.0,)),
    # its best lr was the grid's top (×32) at B = 16 … 512: the grid extended upwards, same seeds
    "mnist_softmax_adam_hi": dict(desc="the same, lr grid ×64, ×128, ×256",
                                  spec=lambda: TASKS["mnist_softmax_adam"]["spec"](), opt=adam, target=0.35, batch=32,
                                  sweep=dict(batches=[16, 32, 64, 128, 256, 512, 1024], lr0=1e-3,
                                             lr_grid=[64, 128, 256], seeds=2, max_steps=3000, eval_examples=0,
                                             max_seconds=1800),
                                  probe_steps=1500, lr_factors=(1.0,)),
    # the first sweep's best lr was the grid's top (×4) at B = 16, 32, 64: the grid extended upwards, same seed
    "shakespeare_adam_hi": dict(desc="the same, lr grid ×8, ×16", spec=shakespeare_spec, opt=adam, target=2.0,
                                batch=32, sweep=dict(batches=[16, 32, 64, 128, 256], lr0=2e-3, lr_grid=[8, 16],
                                                     seeds=1, max_steps=2500, eval_examples=512, max_seconds=3000),
                                probe_steps=400, lr_factors=(1.0,)),
}


# -- the sweep -----------------------------------------------------------------------------------------------
def run_sweep(name, task, quick):
    if task.get("reuse"):
        d = json.loads((OUT / task["reuse"]).read_text())
        g = d["global"]
        row = next(b for b in g["batches"] if b["batch"] == task["batch"])
        return dict(reused=task["reuse"], critical=g["critical"], batches=g["batches"], compute=g.get("compute"),
                    ref_lr=task["ref_lr"], ref_lr_tuned=row["lr"], s_min=g.get("fit", {}).get("s_min"))
    sw = task["sweep"]
    seeds = 1 if quick else sw["seeds"]
    spec = dataclasses.replace(task["spec"](), optimizer=task["opt"](sw["lr0"]))
    t0 = time.time()
    torch.manual_seed(0)
    b_init = sw.get("b_noise")
    # the linear lr rule saturates at B_simple at init (as validate_critical_batch.py) unless the task fixes it
    if task["opt"] in (sgd, sgdm, sgdn, sgdm5) and b_init is None:
        ds = task["spec"]().dataset()
        model = cnn() if name.startswith("mnist_cnn") else task["spec"]().model()
        b_init = bsprof.measure_at(model, task["spec"]().loss,
                                   ds[:][0:2], rel_error=0.15, max_seconds=20).value
        print(f"   [{name}] B_simple at init {b_init:.1f} (saturates the sweep's linear lr rule)", flush=True)
    g = bsprof.sweep.global_(spec, task["target"], batches=sw["batches"], lr_grid=sw["lr_grid"], seeds=seeds,
                             b_noise=b_init or 0.0,
                             max_steps=sw["max_steps"], eval_examples=sw["eval_examples"], holdout=False,
                             device="cpu", n_boot=1000, seed=SWEEP_SEED,
                             max_seconds=300 if quick else sw.get("max_seconds", 900))
    d = g.to_dict()
    for s in g.batches:
        print(f"   [{name}] B {s.batch:4d}  lr {s.lr:.3g}  steps {s.steps:6.0f}  reached {s.reached}/{seeds}",
              flush=True)
    c = g.critical
    print(f"   [{name}] sweep B_crit {c.value:.1f} [{c.lo:.1f}, {c.hi:.1f}]  ({time.time() - t0:.0f} s)", flush=True)
    row = next(b for b in d["batches"] if b["batch"] == task["batch"])
    return dict(critical=d["critical"], batches=d["batches"], compute=d.get("compute"), ref_lr=row["lr"],
                sweep_seed=SWEEP_SEED, fit=d.get("fit"),
                b_simple_init_for_lr_rule=b_init, lr0=sw["lr0"], lr_grid=sw["lr_grid"],
                ref_lr_tuned=row["lr"], notes=d.get("notes"), seeds=seeds)


# -- candidates ---------------------------------------------------------------------------------------------
def series(report, col):
    """[(step, loss, value, lo, hi)] of rows where the candidate is a positive finite estimate."""
    out = []
    for m in report.measurements:
        e = getattr(m, col, None)
        if e is not None and e.ok and math.isfinite(e.value) and e.value > 0 and math.isfinite(m.loss):
            out.append((m.step, m.loss, e.value, e.lo, e.hi))
    return out


def first_reach(report, target):
    """Index (into report.measurements) of the first measurement with loss ≤ target, or None."""
    return next((i for i, m in enumerate(report.measurements) if m.loss <= target), None)


def at_target(report, col, target):
    ms = report.measurements
    i = first_reach(report, target)
    if i is None or i == 0:
        return math.nan
    a, b = ms[i - 1], ms[i]
    ea, eb = getattr(a, col, None), getattr(b, col, None)
    if not (ea and eb and ea.ok and eb.ok and ea.value > 0 and eb.value > 0):
        return math.nan
    la, lb = math.log(a.loss), math.log(b.loss)
    w = 0.0 if la == lb else (la - math.log(target)) / (la - lb)
    return math.exp((1 - w) * math.log(ea.value) + w * math.log(eb.value))


def path_b_crit(report, col, target):
    """The schedule's B_crit over the path with ``col`` followed (a report copy whose b_simple is ``col``)."""
    rep = Report.from_dict(report.to_dict())
    rows = []
    for m in rep.measurements:
        e = getattr(m, col, None)
        if e is None or not e.ok:
            continue
        rows.append(dataclasses.replace(m, b_simple=e))
    rep.measurements = rows
    # the raw path average of ``col``: followed as b_simple, with no optimizer factor (a plain-SGD copy); before this
    # (ninth session) the schedule's own choice of quantity and factor gave every candidate the same value
    rep.config = {**rep.config, "optimizer": "SGD", "optimizer_momentum": 0.0}
    try:
        s = plan(rep, ScheduleConfig(target_loss=target, allow_extrapolation=True, noise="b_simple"))
        return float(s.prediction["b_crit"]), s.fit.get("form"), s.warnings
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        return math.nan, None, [f"{type(exc).__name__}: {exc}"]


def summarise(report, target):
    ms = report.measurements
    i = first_reach(report, target)
    out = {}
    for col in CANDIDATES:
        s = series(report, col)
        if len(s) < 2:
            continue
        if col == "b_simple_window":
            steps_ok = [m.step for m in ms[1:(i + 1 if i is not None else len(ms))]]
        else:
            steps_ok = [m.step for m in ms[:(i if i is not None else len(ms))]]
        vals = [v for (st, _, v, _, _) in s if st in steps_ok]
        b_path, form, warn = path_b_crit(report, col, target)
        out[col] = dict(init=s[0][2], mean=float(np.mean(vals)) if vals else math.nan, n_mean=len(vals),
                        target=at_target(report, col, target), path=b_path, path_fit=form, path_warnings=warn)
    return out


def probe(task, lr, quick, seed=0):
    spec = dataclasses.replace(task["spec"](), optimizer=task["opt"](lr))
    steps = int(task["probe_steps"] * min(4.0, task["ref_lr"] / lr) ** 0.85)
    if quick:
        steps = int(steps * 0.6)
    every = max(5, steps // 12)
    t0 = time.time()
    report = bsprof.measure(spec, steps=steps, batch_size=task["batch"], measure_every=every, rel_error=0.2,
                            max_seconds=2.5 if quick else 4.0, device="cpu", hessian=True, seed=seed)
    wall = time.time() - t0
    ms = report.measurements
    i = first_reach(report, task["target"])
    cost = dict(steps=steps, measure_every=every, wall_seconds=wall,
                measure_examples=int(sum(m.examples for m in ms)),
                measure_seconds=float(sum(m.seconds for m in ms if math.isfinite(m.seconds))),
                train_examples=steps * task["batch"],
                to_target_examples=(int(sum(m.examples for m in ms[:i + 1])) + ms[i].step * task["batch"])
                if i is not None else None,
                reached_target_at_step=ms[i].step if i is not None else None)
    rows = [dict(step=m.step, loss=m.loss, **{c: (getattr(m, c).value if getattr(m, c, None) is not None else None)
                                            for c in CANDIDATES}) for m in ms]
    return report, dict(lr=lr, seed=seed, cost=cost, rows=rows, summary=summarise(report, task["target"]))


# -- output ----------------------------------------------------------------------------------------------------
def fmt(x, w=6):
    return f"{x:{w}.1f}" if isinstance(x, (int, float)) and math.isfinite(x) else " " * (w - 1) + "–"


def table(results):
    lines = []
    for name, r in results.items():
        c = {k: (math.nan if v is None else v) for k, v in r["sweep"]["critical"].items()}
        comp = r["sweep"].get("compute") or {}
        lines.append(f"\n## {name}: {r['desc']}")
        lines.append(f"target train loss {r['target']}, probe batch {r['batch']}; sweep B_crit {c['value']:.1f} "
                     f"[{c['lo']:.1f}, {c['hi']:.1f}] (tuned lr at B={r['batch']}: "
                     f"{r['sweep']['ref_lr_tuned'] or math.nan:.3g}); "
                     f"sweep cost {comp.get('train_examples', float('nan')):,} train examples, "
                     f"{comp.get('seconds', float('nan')):.0f} s")
        lines.append(f"{'probe lr':>8} {'seed':>4} {'quantity':>16} | "
                     + " ".join(f"{s:>6} {'ratio':>5}" for s in SUMMARIES)
                     + " | cost: examples (to target), s")
        for p in r["probes"]:
            for col, s in p["summary"].items():
                v = {k: s[k] if s[k] is not None else math.nan for k in SUMMARIES}   # JSON null = NaN
                cells = " ".join(f"{fmt(v[k])} {v[k] / c['value']:5.2f}" for k in SUMMARIES)
                cost = p["cost"]
                total = cost["measure_examples"] + cost["train_examples"]
                lines.append(f"{p['lr']:8.3g} {p.get('seed', 0):4d} {col:>16} | {cells} | {total:,}"
                             f" ({cost['to_target_examples'] or 0:,}), {cost['wall_seconds']:.0f}")
            lines.append(f"{'':8} {'(target at step':>16} {p['cost']['reached_target_at_step']})")
    return "\n".join(lines)


def rules(results):
    """Each (candidate, summary) as a rule at the reference lr: worst ratio over tasks, max(r, 1/r)."""
    out, spread = {}, {}
    for name, r in results.items():
        if not r["probes"]:
            continue
        top = max(p["lr"] for p in r["probes"])
        refs = [p for p in r["probes"] if p["lr"] == top]   # the probes at the sweep's tuned lr (all seeds)
        bc = r["sweep"]["critical"]["value"]
        bc = math.nan if bc is None else bc   # JSON null = NaN
        for col in CANDIDATES:
            for k in SUMMARIES:
                v = [p["summary"][col][k] for p in refs if col in p["summary"]]
                v = [x for x in v if x is not None and math.isfinite(x) and x > 0]
                if v:   # geometric mean over probe seeds
                    out.setdefault(f"{col}.{k}", {})[name] = math.exp(float(np.mean(np.log(v)))) / bc
                    spread.setdefault(f"{col}.{k}", {})[name] = [x / bc for x in v]
    return {k: dict(ratios=v, per_seed=spread[k], worst=max(max(x, 1 / x) for x in v.values()), tasks=len(v))
            for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, shorter probes, smaller budgets")
    ap.add_argument("--tasks", default="digits_sgd,mnist_cnn_sgd,digits_adam")
    ap.add_argument("--out", default=str(OUT / "critical_batch_evidence.json"))
    ap.add_argument("--probe-seeds", type=int, default=1, help="probe seeds at the reference (tuned) lr")
    ap.add_argument("--no-sweep", action="store_true", help="probes only (the sweep comes from a later run)")
    ap.add_argument("--no-probes", action="store_true", help="sweep only")
    ap.add_argument("--sweep-seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="rerun sweeps and probes already in --out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    global SWEEP_SEED
    SWEEP_SEED = args.sweep_seed
    t0 = time.time()
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()).get("tasks", {}) if out_path.is_file() else {}
    for name in args.tasks.split(","):
        task = TASKS[name]
        print(f"== {name}: {task['desc']}", flush=True)
        old = results.get(name) if not args.fresh and not args.quick else None
        old = old if old and not old.get("quick") else None
        if args.no_sweep and old:
            sweep = old["sweep"]
        elif args.no_sweep:
            sweep = dict(critical=dict(value=math.nan, lo=math.nan, hi=math.nan), ref_lr=task["probe_ref_lr"],
                         ref_lr_tuned=math.nan, missing=True)
        else:
            sweep = old["sweep"] if old and not old["sweep"].get("missing") else run_sweep(name, task, args.quick)
        task = {**task, "ref_lr": task.get("probe_ref_lr") or sweep["ref_lr"]}
        probes = list(old["probes"]) if old else []
        done = {(round(p["lr"], 6), p.get("seed", 0)) for p in probes}
        for f in task["lr_factors"] if not args.no_probes else ():
            lr = task["ref_lr"] * f
            for seed in range(args.probe_seeds if f == 1.0 else 1):
                if (round(lr, 6), seed) in done:
                    continue
                _, p = probe(task, lr, args.quick, seed)
                probes.append(p)
                for col, s in p["summary"].items():
                    print(f"   lr {lr:.3g} seed {seed} {col:16s} " + "  ".join(f"{k} {s[k]:.1f}" for k in SUMMARIES),
                          flush=True)
                print(f"   (reached target at step {p['cost']['reached_target_at_step']}, "
                      f"{p['cost']['wall_seconds']:.0f} s)", flush=True)
        results[name] = dict(desc=task["desc"], target=task["target"], batch=task["batch"], sweep=sweep,
                             probes=probes, quick=args.quick)
        doc = dict(question="which quantity, averaged how, predicts the swept critical batch?",
                   tasks=results, rules=rules(results), seconds_last_run=time.time() - t0)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(bsprof.results.json_clean(doc), indent=2) + "\n")
        txt = table(results) + "\n\nRules at the reference (tuned) probe lr — worst max(r, 1/r) over tasks:\n" + \
            "\n".join(f"  {k:24s} worst {v['worst']:.2f} over {v['tasks']} task(s)  " +
                      " ".join(f"{t} {x:.2f}" for t, x in v["ratios"].items())
                      for k, v in sorted(doc["rules"].items(), key=lambda kv: (-kv[1]["tasks"], kv[1]["worst"])))
        out_path.with_suffix(".txt").write_text(txt + "\n")
    print(out_path.with_suffix(".txt").read_text())
    print(f"wrote {out_path} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
