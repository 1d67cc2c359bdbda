"""Per-example, micro-batch and regression estimates agree on the digits MLP (scripts/agreement.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.mark.slow
def test_estimates_agree_on_digits_mlp():
    import agreement

    res = agreement.run(rel_error=0.15)
    (_, alo, ahi, *_), (_, blo, bhi, *_) = res["per_example"], res["microbatch"]
    assert max(alo, blo) <= min(ahi, bhi)  # the intervals overlap
    assert alo <= res["exact"] <= ahi and blo <= res["exact"] <= bhi
    assert blo <= res["regression"][0] <= bhi
