"""One more out-of-sample row for the validation table (docs/validation.md): a bag-of-words text classifier under AdamW.

    python scripts/validation_bag_adamw.py [--trial] [--sweep-only] [--lr-grid 0.25,0.5,1,2,4]

This file is also the task's spec file (model, dataset, collate, loss, optimizer at the top level; the driver below
only runs under ``__main__``), so ``bsprof measure scripts/validation_bag_adamw.py`` measures the same task.

Task: ``nn.EmbeddingBag(500, 32, mode="mean")`` fed (tokens, offsets) by a custom collate → Linear(32, 64) → ReLU →
Linear(64, 4), on 6,000 synthetic sequences generated deterministically below (lengths 8–48, vocabulary 500, four
classes whose label is the marker-token set that occurs most, 10% of labels flipped), per-example cross-entropy,
AdamW (weight decay 0.01). The collated batch holds no examples on dim 0 (a flat token tensor and offsets), so
bsprof measures it with micro-batches.

Protocol (scripts/critical_batch_evidence.py, scripts/validation_table.py): a global sweep (``bsprof.sweep.global_``,
steps to a target training loss over the whole dataset per batch, lr tuned per batch on a grid around Adam's
square-root rule, 2 seeds, S = S_min(1 + B_crit/B), bootstrap interval), then 3 probe seeds of ``bsprof.measure`` at
batch 32 with the sweep's tuned lr there (validation_table.probe's options); headline =
``report.summary_at(target).critical_batch``. Writes scripts/results/validation_bag_adamw.json.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, CLASSES, N = 500, 32, 4, 6000
MARKERS = [list(range(10 * c, 10 * c + 10)) for c in range(CLASSES)]   # tokens 0–39: four marker sets of ten
LR = 3e-3


def _generate():
    g = torch.Generator().manual_seed(20260101)
    seqs, labels = [], []
    for _ in range(N):
        length = int(torch.randint(8, 49, (1,), generator=g))
        c = int(torch.randint(0, CLASSES, (1,), generator=g))
        toks = torch.randint(40, VOCAB, (length,), generator=g)          # background tokens
        is_marker = torch.rand(length, generator=g) < 0.3
        # a marker's set: the generating class with probability 0.4, each other class 0.2
        p = torch.full((CLASSES,), 0.2)
        p[c] = 0.4
        sets = torch.multinomial(p, length, replacement=True, generator=g)
        which = torch.randint(0, 10, (length,), generator=g)
        toks = torch.where(is_marker, sets * 10 + which, toks)
        counts = torch.bincount(sets[is_marker], minlength=CLASSES)
        best = counts.max()
        label = c if counts[c] == best else int(torch.nonzero(counts == best)[0])   # most frequent set; ties: c
        if torch.rand(1, generator=g) < 0.1:                               # 10% label noise: another class
            label = (label + int(torch.randint(1, CLASSES, (1,), generator=g))) % CLASSES
        seqs.append(toks)
        labels.append(label)
    return seqs, torch.tensor(labels)


SEQS, LABELS = _generate()
TOKENS_PER_EXAMPLE = round(sum(len(s) for s in SEQS) / N)


class BagClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(VOCAB, DIM, mode="mean")
        self.head = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, CLASSES))

    def forward(self, tokens, offsets):
        return self.head(self.bag(tokens, offsets))


def model():
    return BagClassifier()


def dataset():
    return [(SEQS[i], LABELS[i]) for i in range(N)]


def collate(items):
    seqs = [s for s, _ in items]
    lengths = torch.tensor([len(s) for s in seqs])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    return torch.cat(seqs), offsets, torch.stack([y for _, y in items])


def loss(model, batch):
    tokens, offsets, y = batch
    return F.cross_entropy(model(tokens, offsets), y, reduction="none")


def optimizer(params, lr=LR):
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


# -- the driver ----------------------------------------------------------------------------------------------
def main():  # noqa: C901
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(root / "scripts"))
    import validation_row

    from bsprof.engine.spec import load_spec

    ap = validation_row.arguments(__doc__.splitlines()[0], 0.75, LR, "0.25,0.5,1,2,4", "validation_bag_adamw.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out_path = Path(args.out)
    spec = load_spec(Path(__file__))

    if args.trial:
        data = spec.dataset()
        full = collate(data)
        for lr in (1e-3, 3e-3, 1e-2):
            torch.manual_seed(0)
            m, gen = spec.model(), torch.Generator().manual_seed(0)
            opt = optimizer(m.parameters(), lr)
            curve = []
            for step in range(1, 1001):
                idx = torch.randint(0, N, (16,), generator=gen)
                opt.zero_grad()
                loss(m, collate([data[i] for i in idx])).mean().backward()
                opt.step()
                if step in (1, 50, 100, 200, 300, 400, 600, 800, 1000):
                    with torch.no_grad():
                        curve.append((step, round(float(loss(m, full).mean()), 3)))
            print(f"lr {lr:g}: {curve}", flush=True)
        with torch.no_grad():
            torch.manual_seed(0)
            print("initial loss", float(loss(spec.model(), full).mean()), "mean length", TOKENS_PER_EXAMPLE)
        return

    return validation_row.run_row(spec, optimizer, args, out_path, __doc__.splitlines()[0], rule="sqrt")


if __name__ == "__main__":
    main()
