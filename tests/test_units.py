"""--unit tokens multiplies every batch size by the tokens per example, and every printed size states its unit."""
from pathlib import Path

from rich.console import Console

from bsprof.config import MeasureConfig
from bsprof.loop import measure

SPEC = str(Path(__file__).parent / "assets" / "tiny_linear.py")


def _text(report) -> str:
    console = Console(record=True, width=200)
    console.print(report)
    return console.export_text()


def test_tokens_unit_scales_batch_sizes_and_is_printed():
    cfg = dict(steps=0, rel_error=0.3, max_examples=3000)
    ex = measure(SPEC, MeasureConfig(**cfg))
    tok = measure(SPEC, MeasureConfig(**cfg, unit="tokens", tokens_per_example=16))
    a, b = ex.measurements[0], tok.measurements[0]
    for key in ("b_simple", "b_simple_lo", "b_simple_hi", "b_simple_regression", "diversity_bound"):
        assert b[key] == 16 * a[key]
    assert a["g2"] == b["g2"]  # gradients are unit-free
    assert tok.unit == "tokens" and tok.summary["unit"] == "tokens"
    text = _text(tok)
    assert "(tokens;" in text and "tokens" in text.split("B_simple at step")[1].splitlines()[0]
    assert "(examples;" in _text(ex)
