"""bsprof measure configs/char_transformer.py --config configs/char_transformer.yaml

A small character-level transformer language model: 2 pre-norm layers, d_model 64, 4 heads, context 64 with a
causal mask (about 0.1M parameters), trained with AdamW (lr 3e-3).

One example is one sequence of CONTEXT characters (offset i: inputs text[i : i+64], targets text[i+1 : i+65]);
its loss is the mean token cross-entropy over the sequence, so the batch unit is sequences and
TOKENS_PER_EXAMPLE = 64 converts it to tokens. Overlapping windows of one text are not independent; with a
text of ~200k characters and batches of hundreds of sequences the overlap is rare.

The text is generated here, deterministically, from a small word-level grammar (a village chronicle of millers,
ferrymen and weather; written for bsprof, public domain), so the example runs offline with nothing to download.
To train on a real corpus instead, point BSPROF_TEXT_FILE at a UTF-8 text file, e.g. tinyshakespeare's
input.txt; the vocabulary is then the file's characters.

The attention is written out with plain tensor operations (no nn.MultiheadAttention, no dropout) so that every
per-example probe, hooks or torch.func, handles it. Under Adam the plain B_simple tends to underestimate the
critical batch (science.md §2).
"""

from __future__ import annotations

import math
import os
import random

import torch
import torch.nn.functional as F
from torch import nn

CONTEXT = 64
TOKENS_PER_EXAMPLE = CONTEXT
D_MODEL = 64
N_HEADS = 4
N_LAYERS = 2
LR = 3e-3
TEXT_CHARS = 200_000
SEED = 1812
ALPHABET = "\n ,.;abcdefghijklmnopqrstuvwxyz"

_TEXT: tuple[str, str] | None = None  # (text, vocabulary)
_TOKENS: torch.Tensor | None = None

_WORDS = {
    "name": ["ada", "bram", "cora", "dunstan", "elsa", "finn", "greta", "hob", "ivo", "jena"],
    "trade": ["miller", "ferryman", "baker", "smith", "weaver", "shepherd", "fisher", "potter"],
    "adj": ["old", "young", "tired", "merry", "quiet", "stubborn", "careful", "clever"],
    "thing": ["bread", "rope", "wool", "bells", "nets", "jugs", "nails", "flour", "cheese", "apples"],
    "place": ["the mill", "the river", "the market", "the hill", "the forge", "the harbour", "the orchard"],
    "time": ["at dawn", "at noon", "by evening", "in the rain", "before the frost", "on market day"],
    "weather": ["the wind was cold", "the sky was grey", "the sun was warm", "the fog lay thick",
                "the rain kept falling", "the snow came early"],
    "verb_thing": ["carried", "sold", "mended", "counted", "traded", "hid", "lost", "found"],
    "verb_place": ["walked to", "sailed past", "slept near", "waited at", "sang by", "ran from"],
}


def _sentence(rng: random.Random) -> str:
    w = {k: rng.choice(v) for k, v in _WORDS.items()}
    who = rng.choice([w["name"], f"the {w['adj']} {w['trade']}", f"{w['name']} the {w['trade']}"])
    form = rng.randrange(6)
    if form == 0:
        return f"{who} {w['verb_thing']} the {w['thing']} {w['time']}."
    if form == 1:
        return f"{who} {w['verb_place']} {w['place']}, and {w['weather']}."
    if form == 2:
        n = rng.choice(["two", "three", "seven", "twelve", "many", "no"])
        return f"{w['time']} {who} had {n} {w['thing']}; {w['weather']}."
    if form == 3:
        return f"{w['weather']}, so {who} stayed near {w['place']}."
    if form == 4:
        other = rng.choice(_WORDS["name"])
        return f"{who} gave {other} the {w['thing']}, and {other} {w['verb_place']} {w['place']}."
    return f"{w['weather']}."


def _chronicle(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < n_chars:
        line = " ".join(_sentence(rng) for _ in range(rng.randint(1, 3)))
        lines.append(line)
        size += len(line) + 1
        if rng.random() < 0.15:
            lines.append("")
            size += 1
    return "\n".join(lines)[:n_chars]


def text_and_vocab() -> tuple[str, str]:
    """The training text and its sorted vocabulary, built once per process."""
    global _TEXT
    if _TEXT is None:
        path = os.environ.get("BSPROF_TEXT_FILE")
        if path:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                text = f.read()
            _TEXT = (text, "".join(sorted(set(text))))
        else:
            _TEXT = (_chronicle(TEXT_CHARS, SEED), ALPHABET)
    return _TEXT


def tokens() -> torch.Tensor:
    """The whole text as int64 token ids."""
    global _TOKENS
    if _TOKENS is None:
        text, vocab = text_and_vocab()
        lookup = {c: i for i, c in enumerate(vocab)}
        _TOKENS = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    return _TOKENS


class CharWindows(torch.utils.data.Dataset):
    """Example i = (inputs text[i : i+CONTEXT], targets text[i+1 : i+CONTEXT+1]) as int64 ids."""

    def __init__(self):
        self.tokens = tokens()

    def __len__(self) -> int:
        return len(self.tokens) - CONTEXT

    def __getitem__(self, i):
        window = self.tokens[i : i + CONTEXT + 1]
        return window[:-1], window[1:]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=-1)
        q, k, v = (z.view(b, t, N_HEADS, c // N_HEADS).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(c // N_HEADS)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, D_MODEL)
        self.pos = nn.Embedding(CONTEXT, D_MODEL)
        self.blocks = nn.Sequential(*(Block() for _ in range(N_LAYERS)))
        self.ln = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # positions as a [batch, T] index: every module sees the examples on dim 0 (per-example hooks need it)
        pos = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(pos))))


def model() -> nn.Module:
    return CharTransformer(len(text_and_vocab()[1]))


def dataset() -> torch.utils.data.Dataset:
    return CharWindows()


def loss(model: nn.Module, batch) -> torch.Tensor:
    """Per-sequence loss: mean token cross-entropy over the CONTEXT positions, shape [batch]."""
    inputs, targets = batch
    logits = model(inputs)
    per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return per_token.view(targets.shape).mean(dim=1)


def optimizer(params):
    return torch.optim.AdamW(params, lr=LR)
