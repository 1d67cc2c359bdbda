"""--unit tokens multiplies every batch size by the tokens per example, and every printed size states its unit."""
from pathlib import Path

from rich.console import Console

from bsprof.config import MeasureConfig
from bsprof.engine.loop import measure

SPEC = str(Path(__file__).parent / "assets" / "tiny_linear.py")


def _text(report) -> str:
    console = Console(record=True, width=200)
    console.print(report)
    return console.export_text()


def test_tokens_unit_scales_batch_sizes_and_is_printed():
    cfg = dict(steps=0, rel_error=0.3, max_examples=3000)
    ex = measure(SPEC, MeasureConfig(**cfg))
    tok = measure(SPEC, MeasureConfig(**cfg, unit="tokens", tokens_per_example=16))
    a, b = ex.measurements[0].to_row(), tok.measurements[0].to_row()
    for key in ("b_simple", "b_simple_lo", "b_simple_hi", "b_simple_regression", "diversity_bound"):
        assert b[key] == 16 * a[key]
    assert a["g2"] == b["g2"]  # gradients are unit-free
    assert tok.unit == "tokens" and tok.summary.unit == "tokens"
    text = _text(tok)
    assert "(tokens;" in text and "tokens" in text.split("B_simple at step")[1].splitlines()[0]
    assert "(examples;" in _text(ex)


def test_b_noise_and_b_pre_columns_appear_only_when_measured():
    from rich.console import Console

    from bsprof.output.report import Report

    row = {"step": 0, "loss": 1.0, "g2": 1.0, "trace_sigma": 26.0, "b_simple": 26.0, "b_simple_lo": 25.0,
           "b_simple_hi": 27.0, "status": "ok", "n_draws": 5, "examples": 640, "stopped_by": "precision"}
    console = Console(width=200, record=True)
    console.print(Report(measurements=[row]))
    assert "B_noise" not in console.export_text()
    console.print(Report(measurements=[{**row, "b_noise": 40.0, "b_noise_lo": 35.0, "b_noise_hi": 46.0}]))
    text = console.export_text()
    assert "B_noise" in text and "40 [35, 46]" in text
