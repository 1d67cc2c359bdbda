"""bsprof schedule --format megatron|olmo|deepspeed|tokens: each written, parsed back, and checked for
divisibility by micro-batch × world size (bsprof.schedule.export)."""

from __future__ import annotations

import json

import pytest

from bsprof.schedule import Schedule, ScheduleError, Stage
from bsprof.schedule.export import READERS, WRITERS, Plan


def sched(steps, batches, micro=8, world=2, unit="examples"):
    stages = [Stage(s, 2.0 - i * 0.1, b, 0.1 * (i + 1), micro, b // (micro * world), world)
              for i, (s, b) in enumerate(zip(steps, batches))]
    return Schedule(stages=stages, target_loss=0.5, unit=unit)


# a linear ramp in samples: 38,400 samples per increment of 64
RAMP = sched([0, 600, 900, 1100], [64, 128, 192, 256])
DOUBLING = sched([0, 100, 300], [64, 128, 512])


def test_megatron_linear_ramp_round_trip():
    text = WRITERS["megatron"](RAMP)
    assert text.strip() == "--micro-batch-size 8 --global-batch-size 256 --rampup-batch-size 64 64 115200"
    back = READERS["megatron"](text)
    p = Plan(RAMP)
    assert back["points"] == list(zip(p.starts, p.batches)) and back["micro"] == 8


def test_megatron_step_schedule_round_trip():
    text = WRITERS["megatron"](DOUBLING, seq_length=2048)
    back = READERS["megatron"](text)
    assert back["ramp"] is None and back["global"] == 512
    assert back["points"] == [(0, 64), (6400, 128), (32000, 512)]
    assert "6400 13107200 128" in text  # tokens = samples × seq_length


def test_olmo_round_trip_and_integer_factors():
    back = READERS["olmo"](WRITERS["olmo"](DOUBLING, seq_length=1024))
    assert back == [(0, 64 * 1024), (100, 128 * 1024), (300, 512 * 1024)]
    with pytest.raises(ScheduleError, match="integer factors"):
        WRITERS["olmo"](RAMP, seq_length=1024)  # 128 → 192
    with pytest.raises(ScheduleError, match="--seq-length"):
        WRITERS["olmo"](DOUBLING)


def test_deepspeed_round_trip():
    text = WRITERS["deepspeed"](DOUBLING)
    assert READERS["deepspeed"](text) == [(0, 64), (100, 128), (300, 512)]
    data = json.loads(text)
    for st in data["stages"]:
        assert st["train_batch_size"] == (st["train_micro_batch_size_per_gpu"] * st["gradient_accumulation_steps"]
                                          * data["world_size"])


def test_tokens_round_trip_from_a_token_schedule():
    s = sched([0, 10, 30], [4096, 8192, 16384], micro=1024, world=2, unit="tokens")
    assert READERS["tokens"](WRITERS["tokens"](s)) == [(0, 4096), (40960, 8192), (204800, 16384)]
    assert READERS["megatron"](WRITERS["megatron"](s, seq_length=512))["points"][0] == (0, 8)


def test_every_problem_is_reported_together():
    bad = sched([0, 10, 20], [40, 72, 96], micro=16, world=1)
    for fmt in WRITERS:
        with pytest.raises(ScheduleError) as e:
            WRITERS[fmt](bad, seq_length=128)
        assert "batch 72 is not a multiple of micro-batch 16 × world size 1 = 16" in str(e.value)
        assert "batch 40" in str(e.value) and "fix:" in str(e.value)


def test_cli_framework_formats(tmp_path):
    from typer.testing import CliRunner

    from bsprof.cli import app
    from tests.test_schedule import synthetic_report

    report = synthetic_report().to_json(tmp_path / "report.json")
    runner = CliRunner()
    base = ["schedule", str(report), "-t", "0.4", "--micro-batch", "8", "--world-size", "2"]
    for fmt in WRITERS:
        r = runner.invoke(app, [*base, "-f", fmt, "--seq-length", "128"])
        assert r.exit_code == 0, r.output
        back = READERS[fmt](r.stdout)
        points = back["points"] if fmt == "megatron" else back
        assert points and [b for _, b in points] == sorted(b for _, b in points)
    r = runner.invoke(app, [*base, "-f", "tokens"])
    assert r.exit_code == 2 and "--seq-length" in r.output and "Traceback" not in r.output


def test_megatron_own_calculator_follows_the_ramp():
    """Megatron-core's RampupBatchsizeNumMicroBatchesCalculator, fed the written flags, gives each stage's batch at
    the stage's first sample (pip install --no-deps megatron-core: pure Python for this class)."""
    calc = pytest.importorskip("megatron.core.num_microbatches_calculator",
                               reason="megatron-core is not installed (pip install --no-deps megatron-core)")
    back = READERS["megatron"](WRITERS["megatron"](RAMP))
    start, inc, samples = back["ramp"]
    world = RAMP.stages[0].world_size
    c = calc.RampupBatchsizeNumMicroBatchesCalculator(back["global"], back["micro"], world, False, 0, start, inc,
                                                      samples)
    for sample, batch in zip(Plan(RAMP).starts, Plan(RAMP).batches):
        c.update(sample, consistency_check=True)
        assert c.get_current_global_batch_size() == batch
        assert c.get() == batch // (back["micro"] * world)  # micro-batches per rank
