"""bsprof measure configs/least_squares.py --steps 0 --rel-error 0.05

Linear least squares with a known answer (science.md §5, V2): B_simple = 26 at the initial weights.

    x ~ N(0, I_d),  y = xᵀw* + ξ,  ξ ~ N(0, σ²),  ℓ = ½(xᵀw − y)²,  Δ = w − w*
    G = Δ,  tr(Σ) = (d + 1)|Δ|² + dσ²,  B_simple = B_noise = d + 1 + dσ²/|Δ|²

With d = 20, σ² = 0.25 and |Δ|² = 1 at the initial weights, B_simple = 20 + 1 + 5 = 26.

The closed form is a population (infinite-data) statement. The dataset is a fixed i.i.d. sample of N_EXAMPLES
= 500,000 examples (40 MB of float32 features), drawn once from a fixed seed on first use and kept in memory:
an example is then plain indexing (50k draws plus default collate: ~0.5 s on one CPU core). A finite sample
shifts the empirical B_simple of the whole sample from 26 by its sampling error, a relative
2·sqrt(ΔᵀΣΔ/n)/|Δ|² ≈ 0.4% at n = 500k (ΔᵀΣΔ = 2|Δ|⁴ + σ²|Δ|² = 2.25), and without-replacement draws of B ≤
10k examples scale the noise term tr(Σ)/B of E|G_B|² by a factor (1 − B/n)·n/(n − 1) ≥ 0.98: negligible next
to the precision usually asked, and removed by the finite-population correction where it is applied.

The weights are exact in float32: w* is rounded to multiples of 2⁻⁸ and Δ has four entries ±½ (the rest 0), so
w0 = w* + Δ is representable and |w0 − w*|² = 1 exactly. Plain SGD with lr 0.05 (the population Hessian is I;
one example's is x xᵀ with eigenvalue |x|² ≈ d, and mean-square stability at batch 1 needs lr ≲ 2/(d + 2))
lets `--steps N` watch B_simple grow as |Δ| shrinks: b_simple_closed_form(w) gives the answer at any weights.
"""

from __future__ import annotations

import torch
from torch import nn

D = 20
SIGMA2 = 0.25
DELTA_SQ = 1.0
N_EXAMPLES = 500_000
SEED = 20181206  # McCandlish et al., arXiv 1812.06162
LR = 0.05


def _weights() -> tuple[torch.Tensor, torch.Tensor]:
    """(w*, Δ) as float32 vectors of length D, from the fixed seed; both exactly representable."""
    gen = torch.Generator().manual_seed(SEED)
    w_star = torch.round(torch.randn(D, generator=gen, dtype=torch.float64) * 256) / 256
    idx = torch.randperm(D, generator=gen)[:4]
    signs = torch.randint(0, 2, (4,), generator=gen, dtype=torch.float64) * 2 - 1
    delta = torch.zeros(D, dtype=torch.float64)
    delta[idx] = 0.5 * signs
    return w_star.float(), delta.float()


W_STAR, _DELTA = _weights()
W0 = W_STAR + _DELTA  # exact in float32: |W0 − W_STAR|² == DELTA_SQ == 1


def b_simple_closed_form(w: torch.Tensor | None = None) -> float:
    """Population B_simple = d + 1 + dσ²/|w − w*|² (26.0 at the initial weights w0)."""
    if w is None:
        delta_sq = DELTA_SQ
    else:
        delta_sq = float((w.detach().reshape(-1).double().cpu() - W_STAR.double()).square().sum())
    return D + 1 + D * SIGMA2 / delta_sq


_DATA: tuple[torch.Tensor, torch.Tensor] | None = None


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed sample (x [N, D], y [N]) in float32, generated once per process (~0.1 s)."""
    global _DATA
    if _DATA is None:
        gen = torch.Generator().manual_seed(SEED + 1)
        x = torch.randn(N_EXAMPLES, D, generator=gen)
        noise = torch.randn(N_EXAMPLES, generator=gen) * SIGMA2**0.5
        y = x @ W_STAR + noise
        _DATA = (x, y)
    return _DATA


class LeastSquaresData(torch.utils.data.Dataset):
    """Example i = (x_i [D], y_i []) of the fixed sample; random access by plain indexing."""

    def __init__(self):
        self.x, self.y = _data()

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def model() -> nn.Module:
    net = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(W0.unsqueeze(0))
    return net


def dataset() -> torch.utils.data.Dataset:
    return LeastSquaresData()


def loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y).square()


def optimizer(params):
    return torch.optim.SGD(params, lr=LR)
