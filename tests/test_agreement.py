"""Per-example, micro-batch and regression estimates agree on the digits MLP (bsprof.validation.agreement)."""
from pathlib import Path

import pytest

from bsprof.validation.agreement import run

SPEC = Path(__file__).resolve().parents[1] / "configs" / "digits_mlp.py"


@pytest.mark.slow
def test_estimates_agree_on_digits_mlp():
    res = run(SPEC, rel_error=0.15)
    (_, alo, ahi, *_), (_, blo, bhi, *_) = res["per_example"], res["microbatch"]
    assert max(alo, blo) <= min(ahi, bhi)  # the intervals overlap
    assert alo <= res["exact"] <= ahi and blo <= res["exact"] <= bhi
    assert blo <= res["regression"][0] <= bhi
