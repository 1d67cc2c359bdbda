"""bsprof.integrations: loggers, the Lightning and Hugging Face callbacks (against a plain tracker run on the same
loop), clipping, and schedules that take effect (plain loop, Lightning, HF). Framework tests skip when the extra
is not installed (pip install 'bsprof[lightning,hf,tensorboard]')."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bsprof
from bsprof.errors import ConfigError
from bsprof.integrations.loggers import kind_of, log_to, scalars, write
from bsprof.schedule import Schedule, ScheduleError, Stage
from bsprof.schedule.apply import ScheduleLR
from bsprof.track import TrackerError, read_log

D, H = 8, 16


def data(n=640, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    y = x @ torch.randn(D, 1, generator=g) + 0.5 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 1))


def plain_run(accum: int, micro: int, steps: int, clip: float | None = None, lr=0.05):
    """The reference: a hand-written loop with a Tracker, same init, data order and optimizer as the callbacks."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tracker = bsprof.Tracker(model, opt, accumulation_steps=accum if accum > 1 else None,
                             source="accumulation" if accum > 1 else "per_example")
    batches = iter(DataLoader(data(), batch_size=micro, shuffle=False))
    for _ in range(steps):
        for _ in range(accum):
            x, y = next(batches)
            loss = nn.functional.mse_loss(model(x), y)
            if accum > 1:
                (loss / accum).backward()
            else:
                with tracker.per_example():
                    loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        tracker.step(batch_size=accum * micro if accum > 1 else None, loss=loss)
        opt.step()
        opt.zero_grad()
    tracker.close()
    return tracker


def pairs(tracker):
    return np.array([[d.small_sq_total, d.big_sq_total, d.b, d.B] for d in tracker.draws])


# -- loggers -----------------------------------------------------------------------------------------------
class FakeWandb:
    def __init__(self):
        self.rows = []

    def log(self, values, step=None):
        self.rows.append((step, dict(values)))


def test_scalars_tags_and_sinks(tmp_path):
    tracker = plain_run(accum=4, micro=8, steps=12)
    values = scalars(tracker, window=10)
    assert set(values) == {f"bsprof/{k}" for k in ("b_simple", "b_simple_lo", "b_simple_hi", "tr_sigma", "g2",
                                                    "b_simple_ema")}
    est = tracker.estimate(window=10)
    assert est.ok and values["bsprof/b_simple"] == pytest.approx(est.value)
    assert values["bsprof/b_simple_lo"] == pytest.approx(est.lo)
    assert values["bsprof/b_simple_hi"] == pytest.approx(est.hi)
    assert all(math.isfinite(v) for v in values.values())
    seen, fake = [], FakeWandb()
    log = log_to(tracker, fake, lambda v, s: seen.append((s, v)), every=3)
    assert log(2) and not log(3) and not log(2)  # every 3rd step, once per step
    assert fake.rows[0][0] == 2 and seen[0][1] == fake.rows[0][1]
    assert kind_of(fake) == "wandb" and kind_of(print) == "callable"
    with pytest.raises(bsprof.BsprofError, match="cannot log to"):
        kind_of(42)
    with pytest.raises(bsprof.BsprofError, match=r"wandb.run is None until wandb.init\(\)"):
        kind_of(None)   # log_to(tracker, wandb.run) before wandb.init()
    assert scalars(bsprof.Tracker(net(), accumulation_steps=2)) == {}


def test_tensorboard_writer(tmp_path):
    tb = pytest.importorskip("torch.utils.tensorboard", reason="tensorboard is not installed (bsprof[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = plain_run(accum=4, micro=8, steps=6)
    writer = tb.SummaryWriter(str(tmp_path))
    write(writer, scalars(tracker), step=5)
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert "bsprof/b_simple_lo" in acc.Tags()["scalars"] and "bsprof/g2" in acc.Tags()["scalars"]


def test_precondition_logs_b_pre():
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tracker = bsprof.Tracker(model, opt, accumulation_steps=2, batch_size=16, precondition=True)
    for x, y in list(DataLoader(data(), batch_size=8))[:12]:
        (nn.functional.mse_loss(model(x), y) / 2).backward()
        if tracker.ready:
            tracker.step()
            opt.step()
            opt.zero_grad()
    assert len(tracker.draws_pre) == 5  # none at the first step: Adam has no v̂ yet
    pre = tracker.estimate_pre()
    assert ("bsprof/b_pre" in scalars(tracker)) == (pre.value == pre.value)
    tracker.close()


# -- schedules in a plain loop -----------------------------------------------------------------------------
SCHEDULE = Schedule(stages=[Stage(0, 2.0, 8, 0.05, 8, 1, 1), Stage(3, 1.5, 16, 0.1, 8, 2, 1),
                            Stage(6, 1.0, 32, 0.2, 8, 4, 1)], target_loss=0.5)


def test_schedule_lr_and_accumulation_in_a_plain_loop():
    from bsprof.schedule.sampler import ScheduledBatchSampler

    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = ScheduleLR(opt, SCHEDULE)
    sampler = ScheduledBatchSampler(640, SCHEDULE, shuffle=False, micro_batches=True)
    seen, micro = [], []
    batches = iter(DataLoader(data(), batch_sampler=sampler))
    for step in range(9):
        k = SCHEDULE.accumulation_at(step, micro_batch=8)
        rows = 0
        for _ in range(k):
            x, y = next(batches)
            rows += len(x)
            micro.append(len(x))
            (nn.functional.mse_loss(model(x), y) / k).backward()
        seen.append((rows, opt.param_groups[0]["lr"]))
        opt.step()
        opt.zero_grad()
        scheduler.step()
    assert seen == [(8, 0.05)] * 3 + [(16, 0.1)] * 3 + [(32, 0.2)] * 3
    assert set(micro) == {8}
    with pytest.raises(ScheduleError, match="not a multiple"):
        SCHEDULE.accumulation_at(7, micro_batch=12)


def test_schedule_lr_keeps_group_ratios():
    model = net()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 1.0},
                           {"params": model[2].parameters(), "lr": 0.5}])
    scheduler = ScheduleLR(opt, SCHEDULE)
    for _ in range(3):
        opt.step()
        scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]


# -- Lightning ---------------------------------------------------------------------------------------------
def lightning_run(tmp_path, accum: int, steps: int = 20, callback=None, schedule=None, extra_callbacks=(),
                  **trainer_kw):
    L = pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from lightning.pytorch.loggers import CSVLogger

    from bsprof.integrations.lightning import NoiseScale

    class Lit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net()
            self.seen = []  # (rows, lr) per micro-batch

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.seen.append((len(x), self.trainer.optimizers[0].param_groups[0]["lr"], self.trainer.global_step))
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.05)
            if schedule is None:
                return opt
            return {"optimizer": opt, "lr_scheduler": {"scheduler": ScheduleLR(opt, schedule), "interval": "step"}}

    module = Lit()
    callback = callback or NoiseScale(window=10, log_every=5)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path)),
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        accumulate_grad_batches=accum, callbacks=[callback, *extra_callbacks], **trainer_kw)
    trainer.fit(module, DataLoader(data(), batch_size=8, shuffle=False))
    return module, callback, trainer


def lit_regressor(L):
    """A LightningModule over ``net()``: MSE on (x, y) batches, SGD at lr 0.05."""
    class Lit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net()

        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)
    return Lit


def _csv_metrics(trainer):
    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
    return [r for r in rows if r.get("bsprof/b_simple_lo")]


@pytest.mark.parametrize("accum", [1, 4], ids=["per_example", "accumulate4"])
def test_lightning_callback_agrees_with_the_plain_tracker(tmp_path, accum):
    _, cb, trainer = lightning_run(tmp_path, accum)
    ref = plain_run(accum=accum, micro=8, steps=20)
    got = pairs(cb.tracker)
    assert len(got) == 20 and cb.tracker.steps == list(range(20)) and not cb.unmeasured
    np.testing.assert_allclose(got, pairs(ref), rtol=1e-5)
    assert got[0, 2] == (1 if accum == 1 else 8) and got[0, 3] == 8 * accum
    est, ref_est = cb.tracker.estimate(window=10), ref.estimate(window=10)
    assert est.value == pytest.approx(ref_est.value, rel=1e-4)
    logged = _csv_metrics(trainer)
    assert [int(r["step"]) for r in logged] == [4, 9, 14, 19]
    assert float(logged[-1]["bsprof/b_simple_lo"]) == pytest.approx(est.lo, rel=1e-4)
    assert (tmp_path / "lightning_logs").exists() and any((tmp_path).rglob("bsprof.jsonl"))
    assert cb.tracker.closed


def test_lightning_every_n_and_clipping(tmp_path):
    pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from bsprof.integrations.lightning import NoiseScale

    _, cb, _ = lightning_run(tmp_path, 4, steps=12, callback=NoiseScale(every=3, window=10),
                             gradient_clip_val=0.01)
    ref = plain_run(accum=4, micro=8, steps=12, clip=0.01)
    assert cb.tracker.steps == [0, 3, 6, 9] and cb.unmeasured["not due"] == 8
    np.testing.assert_allclose(pairs(cb.tracker), pairs(ref)[::3], rtol=1e-5)


def test_lightning_callback_added_twice_measures_once_and_says_so(tmp_path):
    pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from bsprof.integrations.lightning import NoiseScale

    second = NoiseScale(window=10, log=tmp_path / "second.jsonl")
    with pytest.warns(UserWarning, match="this NoiseScale callback stays off"):
        _, first, _ = lightning_run(tmp_path, 2, steps=6, extra_callbacks=[second])
    assert len(first.tracker.draws) == 6 and second.tracker is None and not (tmp_path / "second.jsonl").exists()


def test_lightning_one_callback_object_listed_twice_measures_once(tmp_path):
    """callbacks=[n, n]: Lightning calls each of n's hooks twice per event; it measured nothing (a new user's
    finding). Now each hook acts once per event, and a warning says so: the same pairs as listed once."""
    pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from bsprof.integrations.lightning import NoiseScale

    once = lightning_run(tmp_path / "once", 2, steps=6)[1]
    twice = NoiseScale(window=10, log_every=5)
    with pytest.warns(UserWarning, match="listed more than once in the trainer's callbacks: it measures once"):
        lightning_run(tmp_path / "twice", 2, steps=6, callback=twice, extra_callbacks=[twice])
    assert len(twice.tracker.draws) == 6 and twice.tracker.steps == list(range(6))
    np.testing.assert_allclose(pairs(twice.tracker), pairs(once.tracker), rtol=1e-6)


def test_lightning_callback_given_as_a_class_says_so_once(tmp_path):
    """callbacks=[NoiseScale] (the class): Lightning calls its hooks unbound, the trainer as ``self``. One clear
    error from ``setup`` naming the fix; ``on_exception`` on the class does nothing (it raised a second TypeError
    on top, a trial's finding) and sets nothing on the trainer."""
    pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from bsprof.integrations.lightning import NoiseScale

    with pytest.raises(ConfigError, match=r"as a class, not a callback object") as caught:
        lightning_run(tmp_path, 1, steps=2, callback=NoiseScale)
    assert "NoiseScale()" in caught.value.hint and caught.value.__context__ is None


def test_lightning_resumed_from_a_checkpoint_continues_the_log(tmp_path):
    """Trained to step 6 with a checkpoint at step 3, then resumed from it (``ckpt_path``) to step 8, both runs
    given one log path: read as one run of steps 0–7, the first run's steps 3–5 replaced by the retrained ones."""
    L = pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from lightning.pytorch.callbacks import ModelCheckpoint

    from bsprof.integrations.lightning import NoiseScale

    Lit = lit_regressor(L)
    log = tmp_path / "bsprof.jsonl"

    def fit(steps, ckpt=None):
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, accumulate_grad_batches=2,
                            callbacks=[NoiseScale(window=4, log=log), saver], default_root_dir=tmp_path)
        trainer.fit(Lit(), DataLoader(data(), batch_size=8), ckpt_path=ckpt)

    fit(6)
    fit(8, ckpt=next((tmp_path / "ckpt").glob("*step=3.ckpt")))
    got = read_log(log)
    assert [s.step for s in got.steps] == list(range(8)) and got.resumes == ((3, 3),) and got.earlier_runs == 0
    assert [s.examples for s in got.steps] == [16 * i for i in range(8)]


def test_lightning_logs_on_log_steps_that_were_not_measured(tmp_path):
    """every=2 with log_every=4: the log steps (3, 7, 11) are never measured steps; each still logs the window
    over the steps measured so far (it used to log nothing, silently)."""
    pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from bsprof.integrations.lightning import NoiseScale

    _, cb, trainer = lightning_run(tmp_path, 4, steps=12, callback=NoiseScale(every=2, log_every=4, window=10))
    assert cb.tracker.steps == [0, 2, 4, 6, 8, 10]
    logged = _csv_metrics(trainer)
    assert [int(r["step"]) for r in logged] == [3, 7, 11]
    assert float(logged[-1]["bsprof/b_simple_lo"]) == pytest.approx(cb.tracker.estimate(window=10).lo, rel=1e-4)


@pytest.mark.parametrize("schedule,sizes,applied", [
    (Schedule(stages=[Stage(0, 2.0, 8, 0.05, 8, 1, 1), Stage(4, 1.5, 16, 0.1, 8, 2, 1),
                      Stage(6, 1.0, 32, 0.2, 8, 4, 1)], target_loss=0.5),
     [8] * 4 + [16] * 2 + [32] * 3, [(4, 4), (6, 6)]),
    # planned at step 3, but 3 micro-batches are done in the epoch and Lightning steps when that count is a
    # multiple of k = 2: the change waits one step
    (SCHEDULE, [8] * 4 + [16] * 2 + [32] * 3, [(3, 4), (6, 6)]),
], ids=["aligned", "one-step-late"])
def test_lightning_follows_a_schedule(tmp_path, schedule, sizes, applied):
    pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from bsprof.integrations.lightning import NoiseScale

    module, cb, _ = lightning_run(tmp_path, 1, steps=9, callback=NoiseScale(schedule=schedule, window=5),
                                  schedule=schedule)
    per_step = {}
    for rows, lr, step in module.seen:
        n, lrs = per_step.get(step, (0, set()))
        per_step[step] = (n + rows, lrs | {lr})
    assert [per_step[s][0] for s in range(9)] == sizes
    # every micro-batch of a step trains at the lr of the batch in force (held while a planned change waits)
    assert [per_step[s][1] for s in range(9)] == [{{8: 0.05, 16: 0.1, 32: 0.2}[b]} for b in sizes]
    assert [(p, a) for p, a, _ in cb.applied] == applied
    assert [d.B for d in cb.tracker.draws] == sizes and not cb.unmeasured
    assert [d.b for d in cb.tracker.draws] == [1 if n == 8 else 8 for n in sizes]  # k = 1: per-example norms


@pytest.mark.slow  # two Lightning processes importing torch and Lightning: 40-50 s on a loaded 2-core machine
@pytest.mark.distributed
@pytest.mark.parametrize("source,accum,b,B", [("ddp", 1, 8, 16), ("auto", 2, 8, 32), ("auto", 1, 1, 16)],
                         ids=["ddp-source", "ddp+accumulate2", "ddp+per_example"])
def test_lightning_ddp_agrees_with_a_plain_ddp_tracker(tmp_path, source, accum, b, B):
    """Trainer(strategy="ddp", devices=2) on CPU (gloo): Lightning re-runs the script for rank 1, so the run is a
    standalone script (tests/assets/lightning_ddp_worker.py) started as a subprocess. Rank 0's pairs equal those
    of the same loop with DDP and a Tracker by hand; b and B are one rank's micro-batch (per-rank batch for the
    ddp source, 1 for per-example norms) and the global batch; B_simple is logged with an interval."""
    pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "MASTER_ADDR": "127.0.0.1"}
    env.pop("MASTER_PORT", None)  # Lightning picks a free one
    run = subprocess.run([sys.executable, str(root / "tests/assets/lightning_ddp_worker.py"), str(tmp_path),
                          str(accum), source], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["world"] == 2 and r["steps"] == list(range(12)) and not r["unmeasured"] and r["closed"]
    got, ref = np.array(r["pairs"]), np.array(r["ref_pairs"])
    assert got.shape == (12, 4) and set(got[:, 2]) == {b} and set(got[:, 3]) == {B}
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    value, lo, hi, status = r["estimate"]
    assert status == "ok" and 0 < lo < value < hi < math.inf
    assert value == pytest.approx(r["ref_estimate"][0], rel=1e-4)
    log = read_log(Path(r["log_dir"]) / "bsprof.jsonl")       # rank 0's JSONL: one header, 12 steps
    assert log.header["world_size"] == 2 and log.header["source"] == source
    np.testing.assert_allclose([[d.small_sq_total, d.big_sq_total, d.b, d.B] for d in log.draws], got, rtol=1e-9)
    rows = [x for x in csv.DictReader(open(Path(r["log_dir"]) / "metrics.csv")) if x.get("bsprof/b_simple_lo")]
    assert [int(x["step"]) for x in rows] == [3, 7, 11]          # log_every=4
    assert float(rows[-1]["bsprof/b_simple_lo"]) == pytest.approx(lo, rel=1e-6)
    assert float(rows[-1]["bsprof/b_simple_hi"]) == pytest.approx(hi, rel=1e-6)
    assert r["latest"]["bsprof/b_simple"] == pytest.approx(value)


# -- Hugging Face Trainer ----------------------------------------------------------------------------------
class DictData(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {"x": x, "labels": y}


class Regressor(nn.Module):
    """A plain nn.Module the HF Trainer accepts: forward returns a dict with the mean loss."""

    def __init__(self):
        super().__init__()
        self.net = net()
        self.seen = []   # the training micro-batches, in order
        self.means = []  # and their mean losses

    def forward(self, x, labels=None):
        out = self.net(x)
        if self.training:
            self.seen.append((x.detach().clone(), labels.detach().clone()))
            self.means.append(float(nn.functional.mse_loss(out, labels).detach()))
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


class ItemsRegressor(Regressor):
    """A model that takes the Trainer's ``num_items_in_batch`` (as every transformers model does): its loss is the
    micro-batch's share of the step's mean loss, and the Trainer no longer divides it by k."""

    def forward(self, x, labels=None, num_items_in_batch=None, **kwargs):
        out = self.net(x)
        if self.training:
            self.means.append(float(nn.functional.mse_loss(out, labels).detach()))
        items = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return {"loss": nn.functional.mse_loss(out, labels, reduction="sum") / items, "logits": out}


def hf_run(tmp_path, accum=2, steps=10, max_grad_norm=1.0, model=None, callbacks=(), **options):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                       "(pip install 'bsprof[hf]')")
    from bsprof.integrations.hf import attach

    model = model or Regressor()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / f"hf{max_grad_norm}"), max_steps=steps, per_device_train_batch_size=8,
        gradient_accumulation_steps=accum, report_to=[], use_cpu=True, logging_steps=1, learning_rate=0.05,
        optim="sgd", lr_scheduler_type="constant", max_grad_norm=max_grad_norm, save_strategy="no",
        disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DictData(data()), callbacks=list(callbacks))
    cb = attach(trainer, window=10, **options)
    trainer.train()
    return model, cb, trainer


def replay(seen, accum, lr=0.05, clip=None):
    """The plain tracker on the micro-batches the Trainer saw, from the same initial weights."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tracker = bsprof.Tracker(model, opt, accumulation_steps=accum if accum > 1 else None)
    for i in range(0, len(seen), accum):
        for x, y in seen[i:i + accum]:
            loss = nn.functional.mse_loss(model(x), y)
            if accum > 1:
                (loss / accum).backward()
            else:
                with tracker.per_example():
                    loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        tracker.step(batch_size=accum * len(x) if accum > 1 else None)
        opt.step()
        opt.zero_grad()
    tracker.close()
    return tracker


def test_hf_a_copy_of_the_model_taken_during_training_carries_no_hook(tmp_path):
    """A deepcopy of the model taken by another callback during training (an EMA, a best-so-far snapshot) failed:
    the copy carried the NoiseScaleCallback's forward hooks and, through them, the callback itself (a thread lock:
    "cannot pickle"; a review's finding). Now the copy holds none of bsprof's hooks."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                       "(pip install 'bsprof[hf]')")
    import copy

    class Snapshot(transformers.TrainerCallback):
        copies = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.copies.append(copy.deepcopy(model))

    snap = Snapshot()
    model, cb, _ = hf_run(tmp_path, accum=1, steps=3, callbacks=[snap])
    assert len(snap.copies) == 3 and len(cb.tracker.draws) == 3
    assert all(len(m._forward_hooks) + len(m._forward_pre_hooks) == 0 for c in snap.copies for m in c.modules())


@pytest.mark.parametrize("accum", [1, 2], ids=["per_example", "accumulate2"])
def test_hf_callback_agrees_with_the_plain_tracker(tmp_path, accum):
    model, cb, trainer = hf_run(tmp_path, accum=accum, steps=10, max_grad_norm=1e9)
    ref = replay(model.seen, accum)
    assert len(cb.tracker.draws) == 10 and not cb.unmeasured
    np.testing.assert_allclose(pairs(cb.tracker), pairs(ref), rtol=1e-5)
    logged = [r for r in trainer.state.log_history if "bsprof/g2" in r]
    assert [r["step"] for r in logged] == list(range(2, 11))  # from the second step on (a window needs 2)
    assert all("loss" in r for r in logged)  # one record with the Trainer's own loss
    assert logged[-1]["bsprof/b_simple_lo"] == pytest.approx(cb.tracker.estimate(window=10).lo, rel=1e-6)
    assert (tmp_path / "hf1000000000.0" / "bsprof.jsonl").is_file()


def test_hf_callback_attached_twice_is_refused_and_a_second_in_callbacks_stays_off(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                       "(pip install 'bsprof[hf]')")
    from bsprof.integrations.hf import NoiseScaleCallback, attach

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=4, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        report_to=[], use_cpu=True, learning_rate=0.05, optim="sgd", save_strategy="no", disable_tqdm=True)
    second = NoiseScaleCallback(window=10, log=tmp_path / "second.jsonl")
    trainer = transformers.Trainer(model=Regressor(), args=args, train_dataset=DictData(data()), callbacks=[second])
    with pytest.raises(TrackerError, match="already has a bsprof NoiseScaleCallback"):
        attach(trainer)
    trainer.callback_handler.callbacks.remove(second)
    first = attach(trainer, window=10)
    trainer.callback_handler.callbacks.append(second)
    with pytest.warns(UserWarning, match="this NoiseScaleCallback stays off"):
        trainer.train()
    assert len(first.tracker.draws) == 4 and second.tracker is None and not (tmp_path / "second.jsonl").exists()


def test_hf_one_callback_object_listed_twice_measures_once(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                       "(pip install 'bsprof[hf]')")
    from bsprof.integrations.hf import NoiseScaleCallback

    _, once, _ = hf_run(tmp_path / "once", accum=2, steps=6)
    cb = NoiseScaleCallback(window=10)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "twice"), max_steps=6, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        report_to=[], use_cpu=True, logging_steps=1, learning_rate=0.05, optim="sgd", lr_scheduler_type="constant",
        max_grad_norm=1.0, save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=Regressor(), args=args, train_dataset=DictData(data()), callbacks=[cb])
    trainer.callback_handler.callbacks.append(cb)
    with pytest.warns(UserWarning, match="listed more than once in the trainer's callbacks: it measures once"):
        trainer.train()
    assert len(cb.tracker.draws) == 6
    np.testing.assert_allclose(pairs(cb.tracker), pairs(once.tracker), rtol=1e-5)


def test_hf_resumed_from_a_checkpoint_continues_the_log(tmp_path):
    """Trained to step 6 with checkpoints every 3, then resumed from checkpoint-3 to step 8: one log, read as one
    run of steps 0–7 (the first run's steps 3–5 replaced by the retrained ones), its examples count continuous."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                       "(pip install 'bsprof[hf]')")
    from bsprof.integrations.hf import attach

    def train(steps, resume=None):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "hf"), max_steps=steps, per_device_train_batch_size=8,
            gradient_accumulation_steps=2, report_to=[], use_cpu=True, learning_rate=0.05, optim="sgd",
            lr_scheduler_type="constant", save_strategy="steps", save_steps=3, disable_tqdm=True, seed=0)
        trainer = transformers.Trainer(model=Regressor(), args=args, train_dataset=DictData(data()))
        attach(trainer, window=4)
        trainer.train(resume_from_checkpoint=resume)

    train(6)
    train(8, resume=str(tmp_path / "hf" / "checkpoint-3"))
    log = read_log(tmp_path / "hf" / "bsprof.jsonl")
    assert [s.step for s in log.steps] == list(range(8)) and log.resumes == ((3, 3),) and log.earlier_runs == 0
    assert [s.examples for s in log.steps] == [16 * i for i in range(8)]


def test_hf_logs_on_log_steps_that_were_not_measured(tmp_path):
    """every=2, log_every=2: measured steps 0, 2, …; log steps 1, 3, …: each log has the window so far."""
    _, cb, trainer = hf_run(tmp_path, accum=2, steps=10, every=2, log_every=2)
    assert cb.tracker.steps == [0, 2, 4, 6, 8]
    logged = [r for r in trainer.state.log_history if "bsprof/g2" in r]
    assert [r["step"] for r in logged] == [4, 6, 8, 10]  # from the second measured step on
    assert logged[-1]["bsprof/b_simple_lo"] == pytest.approx(cb.tracker.estimate(window=10).lo, rel=1e-6)


def test_hf_batchnorm_without_accumulation_says_once_why_nothing_is_measured(tmp_path):
    """A BatchNorm model at gradient_accumulation_steps=1: no step is a nested pair (per-example norms are not
    defined under batch statistics). The callbacks counted every step as unmeasured and said nothing; now one
    warning names the reason and the fix."""
    model = Regressor()
    model.net = nn.Sequential(nn.Linear(D, H), nn.BatchNorm1d(H), nn.Tanh(), nn.Linear(H, 1))
    with pytest.warns(UserWarning, match=r"(?s)one backward pass are not measured.*BatchNorm.*"
                                         "gradient_accumulation_steps") as seen:
        _, cb, _ = hf_run(tmp_path, accum=1, steps=6, model=model)
    assert not cb.tracker.draws and cb.unmeasured["one backward and no per-example norms"] == 6
    assert sum("are not measured" in str(w.message) for w in seen) == 1


def test_hf_logged_loss_is_the_steps_mean_loss_whether_or_not_the_model_takes_num_items(tmp_path):
    """Each logged step's loss is the mean of its micro-batches' mean losses: not divided by k a second time when
    the model normalises by the Trainer's num_items_in_batch."""
    for model in (Regressor(), ItemsRegressor()):
        model, cb, _ = hf_run(tmp_path / type(model).__name__, accum=2, steps=4, max_grad_norm=1e9, model=model)
        assert len(cb.tracker.draws) == 4
        np.testing.assert_allclose([d.loss for d in cb.tracker.draws], np.reshape(model.means, (-1, 2)).mean(1),
                                   rtol=1e-5)


def test_hf_clipping_does_not_change_the_pair(tmp_path):
    """max_grad_norm=0.01 clips every step (the gradient norm here is ~1); the Trainer clips before
    on_pre_optimizer_step, where the callback closes the step, yet the pair at the first step's weights is the
    same, because the tracker took it during backward. Later steps differ: the clipped updates move the weights
    differently, and the replay with clipping agrees."""
    clipped_model, clipped, trainer = hf_run(tmp_path, accum=2, steps=4, max_grad_norm=0.01)
    free_model, free, _ = hf_run(tmp_path, accum=2, steps=4, max_grad_norm=1e9)
    first_grad_norm = next(r["grad_norm"] for r in trainer.state.log_history if "grad_norm" in r)
    assert first_grad_norm > 0.1  # so 0.01 really clips
    assert torch.equal(clipped_model.seen[0][0], free_model.seen[0][0])
    np.testing.assert_allclose(pairs(clipped.tracker)[0], pairs(free.tracker)[0], rtol=1e-12)
    assert not np.allclose(pairs(clipped.tracker)[1:], pairs(free.tracker)[1:], rtol=1e-6)
    np.testing.assert_allclose(pairs(clipped.tracker), pairs(replay(clipped_model.seen, 2, clip=0.01)), rtol=1e-5)


def hf_ddp_worker(tmp_path, mode: str) -> dict:
    """tests/assets/hf_ddp_worker.py under torchrun on 2 CPU ranks (skipped without transformers, accelerate or
    gloo); rank 0's result.json."""
    pytest.importorskip("transformers", reason="transformers is not installed (pip install 'bsprof[hf]')")
    pytest.importorskip("accelerate", reason="accelerate is not installed (pip install 'bsprof[hf]')")
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                              "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(root / "tests/assets/hf_ddp_worker.py"), str(tmp_path), mode],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return json.loads((tmp_path / "result.json").read_text())


@pytest.mark.slow  # two torchrun ranks importing torch and transformers: ~20 s each on a loaded 2-core machine
@pytest.mark.distributed
@pytest.mark.parametrize("accum,b,B", [(1, 1, 16), (2, 8, 32)], ids=["ddp+per_example", "ddp+accumulate2"])
def test_hf_ddp_agrees_with_a_plain_ddp_tracker(tmp_path, accum, b, B):
    """The HF Trainer under torchrun on 2 CPU ranks (ddp_backend="gloo", use_cpu=True): rank 0's pairs equal those
    of a hand-written DDP loop with a plain Tracker over the micro-batches each rank's Trainer saw (the ranks'
    shards are disjoint); b and B are one rank's micro-batch (1 for per-example norms) and the global batch
    W·k·b; B_simple is logged with a finite interval every 4 steps, and the JSONL log holds the same draws. A
    callback not given the trainer (only the unwrapped model) refuses under DDP."""
    r = hf_ddp_worker(tmp_path, str(accum))
    assert r["world"] == 2 and r["ddp"] and r["steps"] == list(range(12)) and not r["unmeasured"] and r["closed"]
    assert r["micro_batches"] == 12 * accum and r["distinct_rows"] == r["rows"] == 2 * 12 * accum * 8
    got, ref = np.array(r["pairs"]), np.array(r["ref_pairs"])
    assert got.shape == (12, 4) and set(got[:, 2]) == {b} and set(got[:, 3]) == {B}
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    value, lo, hi, status = r["estimate"]
    assert status == "ok" and 0 < lo < value < hi < math.inf
    assert value == pytest.approx(r["ref_estimate"][0], rel=1e-4)
    log = read_log(r["log"])                                    # rank 0's JSONL: one header, 12 steps
    assert log.header["world_size"] == 2
    np.testing.assert_allclose([[d.small_sq_total, d.big_sq_total, d.b, d.B] for d in log.draws], got, rtol=1e-9)
    logged = [x for x in r["log_history"] if "bsprof/b_simple_lo" in x]
    assert [x["step"] for x in logged] == [4, 8, 12] and all("loss" in x for x in logged)  # log_every=4
    assert logged[-1]["bsprof/b_simple_lo"] == pytest.approx(lo, rel=1e-6)
    assert logged[-1]["bsprof/b_simple_hi"] == pytest.approx(hi, rel=1e-6)
    assert r["latest"]["bsprof/b_simple"] == pytest.approx(value)
    assert "attach(trainer)" in r["refused_without_trainer"]


@pytest.mark.slow  # two torchrun ranks importing torch and transformers
@pytest.mark.distributed
def test_hf_ddp_follows_a_schedule(tmp_path):
    """A bsprof schedule under the HF Trainer on 2 CPU ranks: global batch 16 → 32 → 64 (1, 2, 4 micro-batches of
    8 per rank) at steps 4 and 8, each change applied at the step it was planned for (the micro-batch counts
    divide), the lrs of ScheduleLR in the Trainer's log, every step tracked at the global batch, both ranks
    training on the same number of micro-batches."""
    r = hf_ddp_worker(tmp_path, "schedule")
    assert r["world"] == 2 and r["steps"] == list(range(12)) and not r["unmeasured"]
    assert r["big"] == [16] * 4 + [32] * 4 + [64] * 4
    assert r["small"] == [1] * 4 + [8] * 8          # one micro-batch per rank: per-example norms; then accumulation
    assert r["lrs"] == pytest.approx(r["want_lrs"]) and r["want_lrs"][0] == 0.05 and r["want_lrs"][-1] == 0.2
    assert [(p, a, k) for p, a, k in r["applied"]] == [(4, 4, 2), (8, 8, 4)]
    assert r["micro_batches"] == [4 + 8 + 16] * 2


@pytest.mark.parametrize("schedule,applied", [
    (Schedule(stages=[Stage(0, 2.0, 8, 0.05, 8, 1, 1), Stage(4, 1.5, 16, 0.1, 8, 2, 1),
                      Stage(6, 1.0, 32, 0.2, 8, 4, 1)], target_loss=0.5), [(4, 4), (6, 6)]),
    (SCHEDULE, [(3, 4), (6, 6)]),  # planned at 3 after 3 micro-batches: waits one step, as in Lightning
], ids=["aligned", "one-step-late"])
def test_hf_follows_a_schedule(tmp_path, schedule, applied):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                       "(pip install 'bsprof[hf]')")
    from bsprof.integrations.hf import attach

    model = Regressor()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=9, per_device_train_batch_size=8, gradient_accumulation_steps=1,
        report_to=[], use_cpu=True, logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DictData(data()),
                                   optimizers=(opt, ScheduleLR(opt, schedule)))
    cb = attach(trainer, window=5, schedule=schedule)
    trainer.train()
    sizes = [8] * 4 + [16] * 2 + [32] * 3
    assert [d.B for d in cb.tracker.draws] == sizes and not cb.unmeasured
    assert len(model.seen) == sum(sizes) // 8
    lrs = [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r]
    assert lrs == [{8: 0.05, 16: 0.1, 32: 0.2}[b] for b in sizes]   # the lr of the batch in force, step by step
    assert [(p, a) for p, a, _ in cb.applied] == applied


def test_steps_discard_what_cannot_be_measured():
    """An epoch's short last micro-batch, or one backward without per-example norms, is counted and skipped; the
    tracker stays open and the next step is measured."""
    from bsprof.integrations.steps import Steps, rows_of

    model = nn.Linear(D, 1)
    tracker = bsprof.Tracker(model, source="accumulation")
    steps = Steps(tracker)
    x, y = data()[:12]
    for sizes, step in (([8, 4], 0), ([8], 1), ([6, 6], 2)):
        for start, n in zip([0, sizes[0]], sizes):
            xb, yb = x[start:start + n], y[start:start + n]
            steps.sizes.append(rows_of((xb, yb)))
            (nn.functional.mse_loss(model(xb), yb) / len(sizes)).backward()
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")  # a short step under accumulation is not told to turn accumulation on
            steps.close(step, loss_scale=1 / len(sizes))
        assert not any("turn" in str(w.message) or "one backward" in str(w.message) for w in said)
        assert len(said) == (step < 2) and all("left out" in str(w.message) and "drop_last=True" in str(w.message)
                                              for w in said)   # the two left out, each said once
        model.zero_grad()
    assert tracker.steps == [2] and tracker.draws[0].B == 12 and not tracker.closed
    assert steps.unmeasured == {"micro-batches of different sizes (or of unknown size)": 1,
                                "a short step (an epoch's last)": 1}  # not "one backward …": accumulation is on
    assert tracker.uneven == 2 and tracker.examples == 12 + 8 + 12  # left out as ``tracker.step`` leaves them
    assert rows_of({"a": [torch.zeros(()), torch.zeros(5, 2)]}) == 5 and rows_of("text") is None
    tracker.close()


def test_hf_loss_of_a_model_given_the_global_item_count_is_rank_zeros_mean():
    """Under DDP with average_tokens_across_devices the Trainer passes the item count over every rank, so the model's
    loss is this rank's share of the global mean (÷ W); the logged loss is W × it, rank 0's own mean (a new user's
    2-rank log read 1.99 where the Trainer, and one process, said 3.99)."""
    pytest.importorskip("transformers", reason="transformers is not installed (pip install 'bsprof[hf]')")
    from types import SimpleNamespace

    from bsprof.integrations.hf import NoiseScaleCallback
    from bsprof.integrations.steps import Steps

    model = nn.Linear(D, 1)
    x, y = data()[:16]
    for world, average, expected in ((2, True, 2.0), (2, False, 1.0), (1, True, 1.0)):
        cb = NoiseScaleCallback(log=None)
        cb.tracker = bsprof.Tracker(model, accumulation_steps=2, batch_size=16)
        cb.steps = Steps(cb.tracker)
        for half in (slice(0, 8), slice(8, 16)):
            cb.steps.sizes.append(8)   # what the callback's input hook records
            out = {"loss": nn.functional.mse_loss(model(x[half]), y[half]) / 2}   # a share of the step's items
            cb._loss(model, (), {"num_items_in_batch": 16}, out)
            out["loss"].backward()
        share = cb.steps.loss
        args = SimpleNamespace(world_size=world, average_tokens_across_devices=average, logging_steps=1,
                               gradient_accumulation_steps=2)
        cb.on_pre_optimizer_step(args, SimpleNamespace(global_step=0), None)
        assert cb.tracker.draws and cb.tracker.draws[-1].loss == pytest.approx(expected * share)
        model.zero_grad()
        cb.tracker.close()


def test_lightning_logs_the_mean_loss_of_an_epochs_short_last_step():
    """Lightning divides every micro-batch's loss by accumulate_grad_batches = k, the last micro-batches of an epoch
    too: a step of 2 of them under k = 4 logged half its loss. It is the mean over the micro-batches that ran."""
    pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from types import SimpleNamespace

    from bsprof.integrations.lightning import NoiseScale
    from bsprof.integrations.steps import Steps

    model = nn.Linear(D, 1)
    x, y = data()[:48]
    trainer = SimpleNamespace(accumulate_grad_batches=4, global_step=0, log_every_n_steps=100, loggers=[],
                              precision_plugin=SimpleNamespace(), world_size=1)
    cb = NoiseScale(log=None)
    cb.tracker = bsprof.Tracker(model, batch_size=None)
    cb.steps = Steps(cb.tracker)
    logged = []
    for micro in (4, 2):   # a full step, then the epoch's short last step
        losses = []
        for i in range(micro):
            part = slice(8 * i, 8 * i + 8)
            cb.on_train_batch_start(trainer, None, (x[part], y[part]), i)
            loss = nn.functional.mse_loss(model(x[part]), y[part])
            losses.append(float(loss.detach()))
            cb.on_before_backward(trainer, None, loss / 4)   # what Lightning hands the callback
            (loss / 4).backward()
            cb.on_after_backward(trainer, None)
        cb.on_before_optimizer_step(trainer, None, None)
        model.zero_grad()
        trainer.global_step += 1
        logged.append((cb.tracker.draws[-1].loss, sum(losses) / micro))
    for got, mean in logged:
        assert got == pytest.approx(mean)
    cb.tracker.close()


def test_callbacks_refuse_bad_step_counts_when_made():
    """every=0 became 1 silently, window=1 logged a value without an interval: refused when the callback is made,
    with the option named, before the framework's loop starts."""
    tracker = bsprof.Tracker(net(), accumulation_steps=2)
    with pytest.raises(TrackerError, match="window must be a number of steps, at least 2"):
        log_to(tracker, lambda values, step: None, window=1)
    tracker.close()
    makers = []
    if importlib.util.find_spec("lightning") is not None:
        from bsprof.integrations.lightning import NoiseScale
        makers.append(NoiseScale)
    if importlib.util.find_spec("transformers") is not None:
        from bsprof.integrations.hf import NoiseScaleCallback
        makers.append(NoiseScaleCallback)
    if not makers:
        pytest.skip("neither Lightning nor transformers is installed")
    from bsprof.errors import OptionError

    for make in makers:
        for bad, match in (({"every": 0}, "every must be a number of optimizer steps"),
                           ({"log_every": 0}, "log_every must be"), ({"window": 1}, "at least 2")):
            with pytest.raises(TrackerError, match=match):
                make(**bad)
        with pytest.raises(OptionError, match=r"'windw' \(did you mean 'window'\?\)"):   # a typo: named
            make(windw=20)


def test_lightning_run_shorter_than_log_every_logs_once_at_the_end(tmp_path):
    """20 steps under the trainer's log_every_n_steps of 50: nothing was logged and ``latest`` stayed {}; now one
    record at the end of fit, equal to the window's estimate."""
    pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from bsprof.integrations.lightning import NoiseScale

    _, cb, trainer = lightning_run(tmp_path, 4, steps=20, callback=NoiseScale(window=10))
    assert cb.latest and cb.latest == scalars(cb.tracker, 10)
    logged = _csv_metrics(trainer)
    assert [int(r["step"]) for r in logged] == [19]
    _, cb2, trainer2 = lightning_run(tmp_path / "b", 4, steps=20, callback=NoiseScale(window=10, log_every=5))
    assert [int(r["step"]) for r in _csv_metrics(trainer2)] == [4, 9, 14, 19]   # no second record at the end


def test_hf_callback_in_trainer_callbacks_warns_that_report_to_misses_it(tmp_path):
    """Trainer(callbacks=[...]) puts the callback after the report_to integrations: its values reached
    log_history, not TensorBoard, silently. A warning names attach(trainer); a short run's ``latest`` is set."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                       "(pip install 'bsprof[hf]')")
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from bsprof.integrations.hf import NoiseScaleCallback

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=4, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        report_to=["tensorboard"], use_cpu=True, logging_steps=50, learning_rate=0.05, optim="sgd",
        save_strategy="no", disable_tqdm=True, seed=0)
    cb = NoiseScaleCallback(window=10)
    trainer = transformers.Trainer(model=Regressor(), args=args, train_dataset=DictData(data()), callbacks=[cb])
    with pytest.warns(UserWarning, match=r"runs after the report_to integrations \(tensorboard\).*attach\(trainer\)"):
        trainer.train()
    assert len(cb.tracker.draws) == 4 and cb.latest   # logging_steps 50 > 4 steps: set at the end of training
    assert cb.latest == scalars(cb.tracker, 10)
    from bsprof.integrations.hf import attach

    trainer.callback_handler.callbacks.remove(cb)
    with pytest.warns(UserWarning, match=r"attach\(trainer\) after the trainer trained \(4 steps\)"):
        attach(trainer)


def test_the_callbacks_population_comes_from_a_shuffling_loader():
    """population="auto": n = len(dataset) where the loader draws each epoch without replacement (RandomSampler over
    the whole set, DistributedSampler(shuffle=True), inside the wrappers accelerate puts around them); None for a
    fixed order, replacement, a subsample, or an iterable dataset."""
    from torch.utils.data import DistributedSampler, IterableDataset, RandomSampler

    from bsprof.integrations.steps import loader_population

    ds = TensorDataset(torch.randn(40, 3))
    assert loader_population(DataLoader(ds, batch_size=8, shuffle=True)) == 40
    assert loader_population(DataLoader(ds, batch_size=8)) is None
    assert loader_population(DataLoader(ds, batch_size=8, sampler=RandomSampler(ds, replacement=True))) is None
    assert loader_population(DataLoader(ds, batch_size=8, sampler=RandomSampler(ds, num_samples=16))) is None
    shard = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True)
    assert loader_population(DataLoader(ds, batch_size=8, sampler=shard)) == 40
    assert loader_population(DataLoader(ds, sampler=DistributedSampler(ds, 2, 0, shuffle=False))) is None

    class Wrapper:   # accelerate's DataLoaderShard keeps the loader's dataset and its batch sampler's sampler
        dataset = ds
        batch_sampler = DataLoader(ds, batch_size=8, shuffle=True).batch_sampler

    assert loader_population(Wrapper()) == 40

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(10))

    assert loader_population(DataLoader(Stream(), batch_size=2)) is None
    assert loader_population(None) is None


def test_lightning_and_hf_callbacks_take_the_population_of_their_loader(tmp_path):
    L = pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'bsprof[lightning]')")
    from bsprof.integrations.lightning import NoiseScale

    Lit = lit_regressor(L)
    for shuffle, population, expected in ((True, "auto", len(data())), (False, "auto", None), (True, 100, 100),
                                          (True, None, None)):
        cb = NoiseScale(window=5, population=population)
        trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, enable_model_summary=False, accumulate_grad_batches=2,
                            callbacks=[cb], default_root_dir=str(tmp_path))
        trainer.fit(Lit(), DataLoader(data(), batch_size=8, shuffle=shuffle))
        assert cb.tracker.population == expected and {d.n for d in cb.tracker.draws} == {expected}
    if importlib.util.find_spec("transformers") is not None:
        _, hf, _ = hf_run(tmp_path, accum=2, steps=3)   # the Trainer's RandomSampler
        assert hf.tracker.population == len(data())


class TokenData(torch.utils.data.Dataset):
    """64 sequences of 6 token ids over a vocabulary of 16, the labels the ids shifted by one."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 16, (64, 7), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i, :-1], "labels": self.ids[i, 1:]}


class TokenLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(16, 8), nn.Linear(8, 16)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.emb(input_ids))
        return {"loss": nn.functional.cross_entropy(logits.transpose(1, 2), labels), "logits": logits}


@pytest.mark.parametrize("accum,b,B", [(1, 6, 48), (2, 48, 96)], ids=["per_example", "accumulate2"])
def test_hf_callback_in_tokens_counts_the_token_positions(tmp_path, accum, b, B):
    """A new user's finding: unit="tokens" logged sequences as tokens (b 8, B 32 for 8 × 32-token micro-batches),
    and with per-example norms asked for a batch size the callback cannot take. Now the sizes are the token ids'
    positions: micro-batches of 8 sequences of 6 tokens."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                       "(pip install 'bsprof[hf]')")
    from bsprof.integrations.hf import attach

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=4, per_device_train_batch_size=8, gradient_accumulation_steps=accum,
        report_to=[], use_cpu=True, logging_steps=1, learning_rate=0.05, optim="sgd", lr_scheduler_type="constant",
        save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=TokenLM(), args=args, train_dataset=TokenData())
    cb = attach(trainer, window=2, unit="tokens")
    trainer.train()
    assert len(cb.tracker.draws) == 4 and not cb.unmeasured
    assert {(d.b, d.B) for d in cb.tracker.draws} == {(b, B)}
    header = json.loads((tmp_path / "hf" / "bsprof.jsonl").read_text().splitlines()[0])
    assert header["unit"] == "tokens"


def test_lightning_in_tokens_without_token_ids_says_so_and_measures_nothing(tmp_path):
    """unit="tokens" on float features had logged rows as tokens, silently."""
    pytest.importorskip("lightning", reason="lightning is not installed (pip install 'bsprof[lightning]')")
    from bsprof.integrations.lightning import NoiseScale

    with pytest.warns(UserWarning, match=r"no token ids in the batch .*batch_rows=function batch → its tokens"):
        _, cb, _ = lightning_run(tmp_path, 2, steps=4, callback=NoiseScale(window=2, unit="tokens"))
    assert not cb.tracker.draws and cb.unmeasured


def test_tokens_of_a_batch():
    from bsprof.integrations.steps import tokens_of

    ids = torch.zeros(4, 9, dtype=torch.long)
    assert tokens_of({"attention_mask": torch.ones(4, 3, dtype=torch.long), "input_ids": ids}) == 36
    assert tokens_of((ids, torch.zeros(4))) == 36 and tokens_of([torch.randn(4, 9)]) is None
    assert tokens_of(torch.zeros(4, dtype=torch.long)) is None
