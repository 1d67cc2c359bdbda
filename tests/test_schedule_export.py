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


def test_formats_without_an_lr_say_the_stages_lrs_on_stderr(tmp_path):
    """megatron and olmo printed only the batch ramp, dropping the lrs and the lr extrapolation: both go to stderr
    (stdout stays pasteable); deepspeed carries the lr."""
    from typer.testing import CliRunner

    from bsprof.cli import app
    from tests.test_schedule import synthetic_report

    report = synthetic_report().to_json(tmp_path / "report.json")
    base = ["schedule", str(report), "-t", "0.4", "--max-batch", "1024", "--seq-length", "128"]
    for fmt, says in (("megatron", "--lr-warmup-init"), ("olmo", "olmo_core.optim.scheduler"), ("deepspeed", None)):
        r = CliRunner().invoke(app, [*base, "-f", fmt])
        assert r.exit_code == 0, r.output
        READERS[fmt](r.stdout)
        assert "lr" not in r.stdout or fmt == "deepspeed"
        err = " ".join(r.stderr.split())
        assert "warning: the rule's lr" in err and "(the stage from step" in err   # the extrapolation
        if says:
            lrs = ", ".join(f"{s['lr']:.4g} from step {s['start_step']:,}"
                            for s in json.loads(CliRunner().invoke(app, [*base, "-f", "json"]).stdout)["stages"])
            assert f"note: the {fmt} format carries no learning rate; the schedule's: {lrs}." in err and says in err
        else:
            assert "carries no learning rate" not in err


def test_cli_token_report_exports_whole_sequences(tmp_path):
    """A --unit tokens report (10 tokens per sequence): the stages are whole sequences, so megatron and deepspeed
    write without --seq-length (the report's), with it, and with --multiple-of 10."""
    import dataclasses

    from typer.testing import CliRunner

    from bsprof.cli import app
    from tests.test_schedule import synthetic_report

    r = dataclasses.replace(synthetic_report(), unit="tokens")
    r.config.update(tokens_per_example=10)
    report = r.to_json(tmp_path / "report.json")
    runner = CliRunner()
    for extra in ([], ["--seq-length", "10"], ["--seq-length", "10", "--multiple-of", "10"]):
        for fmt in ("megatron", "deepspeed", "tokens"):
            out = runner.invoke(app, ["schedule", str(report), "-t", "0.4", "-f", fmt, *extra])
            assert out.exit_code == 0, (extra, fmt, out.output)
    back = READERS["tokens"](runner.invoke(app, ["schedule", str(report), "-t", "0.4", "-f", "tokens"]).stdout)
    assert back and all(b % 10 == 0 for _, b in back)


def test_micro_batch_without_a_cap_divides_every_stage_and_the_fix_names_the_problem():
    """Planned without --micro-batch (one micro-batch per rank per stage), batches 330 and 550 export with the
    largest micro-batch dividing both; the fix line names only what is wrong (never --seq-length once given)."""
    stages = [Stage(0, 2.0, 330, 0.1, 330, 1, 1), Stage(50, 1.5, 550, 0.1, 550, 1, 1)]
    assert Plan(Schedule(stages=stages, target_loss=0.5)).micro == 110
    assert READERS["deepspeed"](WRITERS["deepspeed"](Schedule(stages=stages, target_loss=0.5))) == [(0, 330),
                                                                                                   (50, 550)]
    tokens = sched([0, 50], [256, 512], micro=256, world=1, unit="tokens")
    with pytest.raises(ScheduleError) as e:
        WRITERS["megatron"](tokens, seq_length=10)
    assert "whole number of sequences of 10" in str(e.value) and "pass --seq-length" not in str(e.value)
    assert "plan with --seq-length 10" in str(e.value) and "--micro-batch" not in e.value.hint
    with pytest.raises(ScheduleError) as e:
        WRITERS["megatron"](tokens)
    assert e.value.hint == "pass --seq-length (tokens per sequence)"
    with pytest.raises(ScheduleError) as e:
        WRITERS["deepspeed"](sched([0, 10, 20], [40, 72, 96], micro=16, world=1))
    assert "--micro-batch" in e.value.hint and "--seq-length" not in e.value.hint


def _megatron_calculator():
    """megatron/core/num_microbatches_calculator.py loaded by itself: it imports only the standard library, and
    importing the megatron.core package (its __init__) takes 10-40 s. None when megatron-core is not installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("megatron")  # a namespace package: finding it runs nothing
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "core" / "num_microbatches_calculator.py"
        if path.is_file():
            mod_spec = importlib.util.spec_from_file_location("_megatron_num_microbatches_calculator", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
            return module
    return None


@pytest.mark.parametrize("schedule,seq_length", [(RAMP, 0), (sched([0, 24, 36, 44], [32, 64, 96, 128], micro=4,
                                                                    world=8, unit="tokens"), 2)],
                         ids=["sequences", "tokens"])
def test_megatron_own_calculator_follows_the_ramp(schedule, seq_length):
    """Megatron-core's RampupBatchsizeNumMicroBatchesCalculator, fed the written flags, run the way Megatron-LM's
    training loop runs it (update(consumed_samples) before each step, then consumed_samples += the global batch),
    gives the planned global batch and micro-batch count at every step of the schedule.
    pip install --no-deps "megatron-core<0.17" (a 2.6 MB wheel; 0.17+ needs Python 3.12)."""
    calc = _megatron_calculator()
    if calc is None:
        pytest.skip('megatron-core is not installed (pip install --no-deps "megatron-core<0.17")')
    back = READERS["megatron"](WRITERS["megatron"](schedule, seq_length=seq_length))
    start, inc, samples = back["ramp"]
    world = schedule.stages[0].world_size
    calc.init_num_microbatches_calculator(0, [start, inc, samples], back["global"], back["micro"], world)
    consumed, per_seq = 0, seq_length if schedule.unit == "tokens" else 1
    try:
        for step in range(schedule.stages[-1].start_step + 20):
            calc.update_num_microbatches(consumed, consistency_check=True)
            batch = calc.get_current_global_batch_size()
            assert batch == schedule.batch_size_at(step=step) // per_seq, step
            assert calc.get_num_microbatches() == batch // (back["micro"] * world)  # micro-batches per rank
            consumed += calc.get_micro_batch_size() * world * calc.get_num_microbatches()
    finally:
        calc.destroy_num_microbatches_calculator()


class _DataParallel:
    """The one question DeepSpeedConfig asks a model-parallel unit (mpu): the data-parallel world size."""

    def __init__(self, world):
        self.world = world

    def get_data_parallel_world_size(self):
        return self.world


def test_deepspeed_own_config_and_set_train_batch_size(monkeypatch):
    """Each stage of the DeepSpeed JSON passes DeepSpeed's own batch checks (DeepSpeedConfig's train_batch_size =
    micro × accumulation × data-parallel size, with the world size from an mpu), and DeepSpeedEngine's own
    set_train_batch_size, called as the loop does at each stage's step, gives the stage's accumulation.
    pip install --no-deps deepspeed hjson msgpack py-cpuinfo einops ninja (the sdist builds without compiling)."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed (pip install --no-deps deepspeed hjson msgpack py-cpuinfo einops "
                    "ninja)")
    from types import SimpleNamespace

    from deepspeed.runtime import config as ds_config
    from deepspeed.runtime.engine import DeepSpeedEngine

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda: 0)  # no process group: the mpu gives the world size
    plan = json.loads(WRITERS["deepspeed"](DOUBLING))
    world, micro = plan["world_size"], plan["train_micro_batch_size_per_gpu"]
    first = plan["stages"][0]
    keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    engine = SimpleNamespace(_config=ds_config.DeepSpeedConfig({k: first[k] for k in keys}, mpu=_DataParallel(world)),
                             dp_world_size=world, train_micro_batch_size_per_gpu=lambda: micro)
    for stage in plan["stages"]:
        cfg = ds_config.DeepSpeedConfig({k: stage[k] for k in keys}, mpu=_DataParallel(world))
        assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (stage["train_batch_size"],
                                                                           stage["gradient_accumulation_steps"])
        DeepSpeedEngine.set_train_batch_size(engine, stage["train_batch_size"])
        assert engine._config.gradient_accumulation_steps == stage["gradient_accumulation_steps"]
    with pytest.raises(ValueError, match="divisible"):
        DeepSpeedEngine.set_train_batch_size(engine, micro * world + 1)
