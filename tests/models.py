"""One shared list of tiny problems (model, per-example loss, batch) for testing fast probes against torch.func.

Each case is a function of a torch.Generator returning ``Case``; models and data are float64 so the fast paths
can be held to 1e-5 relative error. Every loss returns per-example losses of shape [batch].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Case:
    model: nn.Module
    loss_fn: Callable
    batch: Any
    count: int


def xent(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def lm_loss(model, tokens):
    """Per-sequence mean next-token cross entropy."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none").mean(1)


def _cls(g, shape, classes, n=5):
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _done(model, loss_fn, batch, count) -> Case:
    return Case(model.double(), loss_fn, batch, count)


def mlp(g):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    return _done(model, xent, _cls(g, (6,), 3), 5)


def cnn(g):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, dilation=2, groups=2, padding=2), nn.ReLU(),
        nn.Conv2d(6, 4, (2, 3), padding=(1, 0), padding_mode="reflect", bias=False), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(3))
    x, y = _cls(g, (3, 9, 9), 3)
    model(x.float())  # materialise the lazy layer
    return _done(model, xent, (x, y), 5)


class TwoConvs(nn.Module):
    """Explicit-form convs as a CNN uses them: ReLU(inplace=True) on their outputs, a frozen bias, one conv applied
    twice (its uses add), one without a bias."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 5, 3, stride=2, bias=False)
        self.c1.bias.requires_grad_(False)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = F.relu(self.c1(x), inplace=True)
        h = F.relu(self.c2(F.relu(self.c2(h), inplace=True)), inplace=True)
        return self.out(self.c3(h).flatten(2).mean(-1))


def cnn_inplace(g):
    return _done(TwoConvs(), xent, _cls(g, (2, 7, 7), 3), 5)


class Pool(nn.Module):
    def forward(self, x):
        return x.flatten(2).mean(-1)


def conv1d(g):
    model = nn.Sequential(nn.Conv1d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv1d(4, 4, 3, groups=4, dilation=2, padding="same"), nn.ReLU(),
                          nn.Conv1d(4, 4, 2, padding="same"), nn.ReLU(),  # asymmetric padding
                          nn.Conv1d(4, 6, 2, padding_mode="circular", padding=1), Pool(), nn.Linear(6, 3))
    return _done(model, xent, _cls(g, (2, 11), 3), 5)


def conv3d(g):
    model = nn.Sequential(nn.Conv3d(2, 4, (2, 3, 3), stride=(1, 2, 2), padding=1), nn.ReLU(),
                          nn.Conv3d(4, 4, 3, groups=2, dilation=(1, 2, 1), padding=(1, 2, 0)), Pool(),
                          nn.Linear(4, 3))
    return _done(model, xent, _cls(g, (2, 4, 6, 5), 3, n=4), 4)


class Upsampler(nn.Module):
    """A conv autoencoder's decoder: ConvTranspose2d with stride, padding and output_padding; one grouped and
    dilated, called with output_size; a ConvTranspose1d and a 3d one (``layers.conv_transpose``)."""

    def __init__(self):
        super().__init__()
        self.t1 = nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1)
        self.t2 = nn.ConvTranspose2d(4, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2,
                                     bias=False)
        self.t3 = nn.ConvTranspose1d(2, 3, 4, stride=3, padding=1)
        self.t4 = nn.ConvTranspose3d(1, 2, 2, stride=2)
        self.out = nn.Linear(4 + 3 + 2, 3)

    def forward(self, x):
        h = torch.tanh(self.t1(x))                                       # [n, 4, 6, 6]
        h = self.t2(h, output_size=[14, 7]).flatten(2).mean(-1)          # output_padding 1, from output_size
        a = self.t3(x.flatten(2)).mean(-1)
        b = self.t4(x[:, :1].unsqueeze(2)).flatten(2).mean(-1)
        return self.out(torch.cat([h, a, b], 1))


def conv_transpose(g):
    return _done(Upsampler(), xent, _cls(g, (2, 3, 3), 3), 5)


class GhostConvs(nn.Module):
    """Convs whose output is small next to their kernel: the Gram (ghost) form over unfolded patches."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(8, 8, 3, dilation=2, padding="same", padding_mode="reflect")
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv3d(6, 6, 3, padding=(1, 1, 0), groups=2, stride=(1, 2, 1))
        self.out = nn.Linear(8 + 8 + 6, 3)

    def forward(self, x):
        a = self.c1(x[:, :, :3].reshape(-1, 8, 3)).mean(-1)
        b = self.c2(x.reshape(-1, 8, 2, 2)).flatten(2).mean(-1)
        c = self.c3(x[:, :6].repeat(1, 1, 3).reshape(-1, 6, 2, 2, 3)).flatten(2).mean(-1)
        return self.out(torch.tanh(torch.cat([a, b, c], 1)))


def conv_ghost(g):
    return _done(GhostConvs(), xent, _cls(g, (8, 4), 3), 5)


class TiedLM(nn.Module):
    """Embedding (with padding_idx) tied to the LM head, a LayerNorm and an MLP over tokens."""

    def __init__(self, vocab=11, dim=6, functional_head=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4), nn.GELU(), nn.Linear(4, dim))
        self.functional_head = functional_head
        if not functional_head:
            self.head = nn.Linear(dim, vocab, bias=False)
            self.head.weight = self.emb.weight

    def forward(self, tokens):
        h = self.emb(tokens)
        h = h + self.mlp(self.norm(h))
        return F.linear(h, self.emb.weight) if self.functional_head else self.head(h)


def _tokens(g, n=4, t=8, vocab=11):
    tokens = torch.randint(0, vocab, (n, t), generator=g)
    tokens[:, -2] = 0  # padding
    tokens[:, 1] = tokens[:, 3]  # repeated tokens
    return tokens


def tied_lm(g):
    return _done(TiedLM(), lm_loss, _tokens(g), 4)


def tied_lm_functional(g):
    return _done(TiedLM(functional_head=True), lm_loss, _tokens(g), 4)


class Block(nn.Module):
    """A hand-written pre-norm transformer block: RMSNorm, causal attention from Linear q/k/v, MLP."""

    def __init__(self, dim=8, ffn=4, heads=2):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.RMSNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, ffn), nn.Linear(ffn, dim)  # narrow: the explicit path wins here

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, T, 3, self.heads, -1).transpose(1, 3).unbind(2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x = x + self.proj(a)
        return x + self.down(F.gelu(self.up(self.n2(x))))


def _seq_regression(model, batch):
    x, y = batch
    return (model(x) - y).square().mean((1, 2))


def block(g):
    x = torch.randn(4, 7, 8, generator=g, dtype=torch.float64)
    return _done(Block(), _seq_regression, (x, torch.randn(4, 7, 8, generator=g, dtype=torch.float64)), 4)


def torch_encoder(g):
    """nn.TransformerEncoderLayer (post-norm): its MultiheadAttention has a module rule (probes/attention.py)."""
    model = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0, batch_first=True)
    x = torch.randn(4, 6, 8, generator=g, dtype=torch.float64)
    return _done(model, _seq_regression, (x, torch.randn(4, 6, 8, generator=g, dtype=torch.float64)), 4)


def _padding(g, n, s):
    """A key_padding_mask [n, s] with some keys masked per example (never all of them)."""
    mask = torch.rand(n, s, generator=g) < 0.3
    mask[:, 0] = False
    return mask


def _masked_regression(model, batch):
    x, mask, y = batch
    return (model(x, mask) - y).square().mean(tuple(range(1, y.dim())))


class Encoder(nn.Module):
    """A pre-norm TransformerEncoderLayer with a causal mask and a key padding mask."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0, norm_first=True,
                                                batch_first=True)

    def forward(self, x, mask):
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype, device=x.device)
        return self.layer(x, src_mask=causal, src_key_padding_mask=mask)


def torch_encoder_norm_first(g):
    x = torch.randn(4, 6, 8, generator=g, dtype=torch.float64)
    return _done(Encoder(), _masked_regression, (x, _padding(g, 4, 6), torch.randn(4, 6, 8, generator=g,
                                                                                  dtype=torch.float64)), 4)


class Decoder(nn.Module):
    """nn.TransformerDecoderLayer: self-attention (packed, q = k = v) and cross-attention on a memory (k = v ≠ q)."""

    def __init__(self):
        super().__init__()
        self.mem = nn.Linear(3, 8)
        self.layer = nn.TransformerDecoderLayer(8, 2, dim_feedforward=12, dropout=0.0, batch_first=True)

    def forward(self, x, mask):
        tgt, memory = x[:, :5], self.mem(x[:, :, :3])
        causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=x.dtype, device=x.device)
        return self.layer(tgt, memory, tgt_mask=causal, memory_key_padding_mask=mask)


def torch_decoder(g):
    x = torch.randn(4, 7, 8, generator=g, dtype=torch.float64)
    return _done(Decoder(), _masked_regression, (x, _padding(g, 4, 7), torch.randn(4, 5, 8, generator=g,
                                                                                  dtype=torch.float64)), 4)


class Attention(nn.Module):
    """nn.MultiheadAttention with distinct query, key and value (of other widths when kdim/vdim are given), an
    attention mask, a key padding mask and the attention weights used in the loss."""

    def __init__(self, batch_first=True, kdim=None, vdim=None, bias=True, weights=True):
        super().__init__()
        self.batch_first, self.weights = batch_first, weights
        self.k, self.v = nn.Linear(8, kdim or 8), nn.Linear(8, vdim or 8)
        self.att = nn.MultiheadAttention(8, 2, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first)

    def forward(self, x, mask):
        q, kv = x[:, :4], x  # 4 queries, 7 keys
        k, v = torch.tanh(self.k(kv)), torch.tanh(self.v(kv))  # (a bias added to every key would not count)
        if not self.batch_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        allowed = torch.ones(4, 7, dtype=torch.bool, device=x.device).tril(2)
        out, w = self.att(q, k, v, key_padding_mask=mask, attn_mask=~allowed, need_weights=self.weights)
        out = out if self.batch_first else out.transpose(0, 1)
        return out.mean(1) + (w.sum((1, 2)).unsqueeze(-1) if self.weights else 0)


def _attention(g, **kw):
    x = torch.randn(4, 7, 8, generator=g, dtype=torch.float64)
    return _done(Attention(**kw), _masked_regression,
                 (x, _padding(g, 4, 7), torch.randn(4, 8, generator=g, dtype=torch.float64)), 4)


def mha_batch_first(g):
    return _attention(g)


def mha_seq_first(g):
    return _attention(g, batch_first=False, weights=False)


def mha_kdim_vdim(g):
    """kdim/vdim ≠ embed_dim: separate q/k/v projection weights."""
    return _attention(g, kdim=5, vdim=3)


def mha_no_bias(g):
    return _attention(g, bias=False, kdim=6, vdim=6, batch_first=False)


class SelfAttention(nn.Module):
    """Packed self-attention (q is k is v), batch first, causal, weights averaged over heads."""

    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 4, batch_first=True)

    def forward(self, x):
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype, device=x.device)
        out, w = self.att(x, x, x, attn_mask=causal, is_causal=True)
        return out + w.sum(1, keepdim=True).transpose(1, 2)


def mha_self(g):
    x = torch.randn(4, 6, 8, generator=g, dtype=torch.float64)
    return _done(SelfAttention(), _seq_regression, (x, torch.randn(4, 6, 8, generator=g, dtype=torch.float64)), 4)


class PosLM(nn.Module):
    """nanoGPT style: token embedding plus a learned position embedding broadcast over the batch, either
    ``nn.Embedding`` called on ``arange(T)`` (``[T]``, or ``[1, T]`` with ``unsqueeze``) or a bare parameter."""

    def __init__(self, vocab=11, dim=6, block=9, kind="embedding"):
        super().__init__()
        self.kind = kind
        self.tok, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)
        self.label = nn.Embedding(3, dim)  # one index per example: an ordinary call on a 1-D input
        if kind == "parameter":
            self.pos = nn.Parameter(torch.randn(block, dim) * 0.1)
        else:
            self.pos = nn.Embedding(block, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())

    def forward(self, tokens):
        T = tokens.shape[1]
        if self.kind == "parameter":
            pos = self.pos[:T]
        else:
            at = torch.arange(T, device=tokens.device)
            pos = self.pos(at if self.kind == "embedding" else at.unsqueeze(0))
        h = self.tok(tokens) + pos + self.label(tokens[:, 0] % 3).unsqueeze(1)
        return self.head(h + self.mlp(h))


def pos_embedding(g):
    return _done(PosLM(), lm_loss, _tokens(g, n=4, t=8), 4)


def pos_embedding_square(g):
    """As many positions (T = 7 after the shift) as examples: dim 0 alone cannot tell positions from examples."""
    return _done(PosLM(), lm_loss, _tokens(g, n=7, t=8), 7)


def pos_embedding_row(g):
    return _done(PosLM(kind="embedding2d"), lm_loss, _tokens(g, n=4, t=8), 4)


def pos_parameter(g):
    return _done(PosLM(kind="parameter"), lm_loss, _tokens(g, n=4, t=8), 4)


class ClassTokenLM(nn.Module):
    """ViT style: a learned class token joined to the token embeddings by ``torch.cat`` (first, or last), a bare
    position parameter added by broadcast, a LayerNorm; the head reads the class token's position."""

    def __init__(self, vocab=11, dim=6, block=9, last=False):
        super().__init__()
        self.last = last
        self.tok, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)
        self.cls, self.pos = nn.Parameter(torch.randn(1, 1, dim)), nn.Parameter(torch.randn(block, dim) * 0.1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens):
        h = self.tok(tokens)
        cls = self.cls.expand(tokens.shape[0], -1, -1)
        h = torch.cat([h, cls] if self.last else [cls, h], 1)
        h = self.norm(h + self.pos[:h.shape[1]])
        first = h[:, -1:] if self.last else h[:, :1]  # the class token's position
        return self.head(first + h).narrow(1, 0 if self.last else 1, tokens.shape[1])


def class_token(g):
    return _done(ClassTokenLM(), lm_loss, _tokens(g, n=4, t=8), 4)


def class_token_last(g):
    return _done(ClassTokenLM(last=True), lm_loss, _tokens(g, n=4, t=8), 4)


class BagOfTokens(nn.Module):
    def __init__(self, vocab=10, dim=5):
        super().__init__()
        self.emb, self.out = nn.Embedding(vocab, dim, padding_idx=2), nn.Linear(dim, 3)

    def forward(self, tokens):
        return self.out(torch.tanh(self.emb(tokens)).mean(1))


def embedding_long(g):
    """Many repeats over 80 positions: the sort-based one-hot path."""
    tokens = torch.randint(0, 10, (4, 80), generator=g)
    return _done(BagOfTokens(), xent, (tokens, torch.randint(0, 3, (4,), generator=g)), 4)


def embedding_short(g):
    tokens = torch.randint(0, 10, (4, 9), generator=g)
    tokens[:, :3] = 2
    return _done(BagOfTokens(), xent, (tokens, torch.randint(0, 3, (4,), generator=g)), 4)


def group_norm(g):
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), Pool(), nn.Linear(4, 3))
    return _done(model, xent, _cls(g, (2, 6, 6), 3), 5)


def batch_norm_eval(g):
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), Pool(),
                          nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
    return _done(model.eval(), xent, _cls(g, (2, 6, 6), 3), 5)


class GRUNet(nn.Module):
    """A GRU (no hook rule: torch.func fallback) between hooked Linear layers."""

    def __init__(self):
        super().__init__()
        self.inp, self.gru, self.out = nn.Linear(3, 4), nn.GRU(4, 5, batch_first=True), nn.Linear(5, 3)

    def forward(self, x):
        h, _ = self.gru(torch.tanh(self.inp(x)))
        return self.out(h[:, -1])


def gru(g):
    return _done(GRUNet(), xent, _cls(g, (6, 3), 3, n=4), 4)


class Twice(nn.Module):
    """One Linear applied twice: its two uses add, like tied weights."""

    def __init__(self):
        super().__init__()
        self.lin, self.out = nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.lin(torch.tanh(self.lin(x))))


def reused(g):
    return _done(Twice(), xent, _cls(g, (5,), 3), 5)


class TiedTwice(nn.Module):
    """A weight tied across an Embedding (its output scaled in place, as T5 and Gemma do), a sequence Linear and
    the LM head: three uses, two of them dense."""

    def __init__(self, vocab=9, dim=9):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, vocab, bias=False)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.mix.weight = self.head.weight = self.emb.weight

    def forward(self, tokens):
        h = self.emb(tokens)
        h.mul_(2.0)
        return self.head(torch.tanh(self.mix(h)))


def tied_thrice(g):
    return _done(TiedTwice(), lm_loss, _tokens(g, vocab=9), 4)


CASES = {f.__name__: f for f in [
    mlp, cnn, cnn_inplace, conv1d, conv3d, conv_ghost, conv_transpose, tied_lm, tied_lm_functional, block,
    torch_encoder, torch_encoder_norm_first, torch_decoder, mha_batch_first, mha_seq_first, mha_kdim_vdim,
    mha_no_bias, mha_self, pos_embedding, pos_embedding_square, pos_embedding_row, pos_parameter, embedding_long,
    embedding_short, group_norm, batch_norm_eval, gru, reused, tied_thrice, class_token, class_token_last]}


def make(name: str, seed: int = 0) -> Case:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return CASES[name](g)


def logged_run(path, steps=80, accum=4, micro=8, lr=0.02):
    """A tracker log (JSONL) of ``steps`` SGD steps of least squares, ``accum`` micro-batches of ``micro``."""
    import torch

    from bsprof import Tracker

    torch.manual_seed(0)
    d = 8
    w_star = torch.randn(d)
    model = torch.nn.Linear(d, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tracker = Tracker(model, opt, accumulation_steps=accum, batch_size=accum * micro, log=path)
    for _ in range(steps):
        for _ in range(accum):
            x = torch.randn(micro, d)
            loss = ((model(x).squeeze(-1) - x @ w_star - 0.3 * torch.randn(micro)) ** 2).mean()
            (loss / accum).backward()
        tracker.step(loss=loss)
        opt.step()
        opt.zero_grad()
    tracker.close()
    return path
