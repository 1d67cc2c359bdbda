"""The library front door: measure from Python objects, with or without a spec file.

    report = bsprof.measure(model=net, dataset=data, loss=per_example_loss, steps=200)   # probe training
    est = bsprof.measure_at(net, per_example_loss, data)                                   # current weights only

``loss(model, batch)`` returns per-example losses of shape [batch] (the objective is their mean). Neither call
changes the caller's model: ``measure`` trains a deep copy, ``measure_at`` leaves weights, buffers and ``.grad``
as it found them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from bsprof.config import MeasureConfig, resolve
from bsprof.engine import loop, sampling
from bsprof.engine.data import Examples
from bsprof.engine.rng import caller_rng
from bsprof.engine.source import as_source
from bsprof.engine.spec import Spec
from bsprof.errors import BsprofError, ConfigError, SpecError
from bsprof.output.report import Report
from bsprof.probes.choose import decide
from bsprof.probes.hooks import fallback_text
from bsprof.results import AtWeights, Estimate, Status


def _config(config: MeasureConfig | dict | str | Path | None, options: dict) -> MeasureConfig:
    """Defaults < ``config`` (a MeasureConfig, a dict of options or a YAML file) < keyword ``options``."""
    if isinstance(config, MeasureConfig):
        return resolve(MeasureConfig, None, {**dataclasses.asdict(config), **options})
    if isinstance(config, dict):
        return resolve(MeasureConfig, None, {**config, **options})
    if config is None or isinstance(config, (str, Path)):
        return resolve(MeasureConfig, config, options)
    raise ConfigError(f"config must be a MeasureConfig, a dict or a YAML path, got {type(config).__name__}",
                      "pass bsprof.MeasureConfig(steps=200) or keyword options (steps=200)")


def measure(spec: Spec | str | Path | None = None, config: MeasureConfig | dict | str | Path | None = None, *,
            model: nn.Module | None = None, dataset=None, loss=None, optimizer=None, collate=None,
            report: Report | None = None, progress=None, **options) -> Report:
    """Probe training with noise-scale measurements along it (``bsprof measure``), from a spec file or objects.

    Either ``spec`` (a spec file path or a ``Spec``) or ``model``, ``dataset`` and ``loss`` (and optionally
    ``optimizer``: a factory ``params -> Optimizer`` or an optimizer instance, re-created on the copy).
    Options are ``MeasureConfig`` fields, as ``config`` and/or keywords (``steps=200, batch_size=64``); a
    ``DataLoader`` passed as ``dataset`` gives its ``batch_size`` unless one is passed.
    The returned report is filled as rows arrive; pass ``report`` to keep the rows of an interrupted run.
    """
    loader_batch = getattr(dataset, "batch_size", None) if isinstance(dataset, torch.utils.data.DataLoader) else None
    chosen = options.get("batch_size") or (config.get("batch_size") if isinstance(config, dict) else None)
    if loader_batch and not chosen and not isinstance(config, (MeasureConfig, str, Path)):
        options = {**options, "batch_size": loader_batch}   # the loader's batch, not the default 32
    cfg = _config(config, options)
    if loader_batch and cfg.batch_size != loader_batch:
        warnings.warn(f"bsprof.measure: the probe trains at batch_size={cfg.batch_size}, not the DataLoader's "
                      f"{loader_batch} (the noise scale depends on lr/B: measure at the batch you train with)",
                      stacklevel=2)
    given = {k: v for k, v in (("model", model), ("dataset", dataset), ("loss", loss)) if v is not None}
    if spec is None:
        missing = [k for k in ("model", "dataset", "loss") if k not in given]
        if missing:
            raise SpecError(f"bsprof.measure needs a spec file or model, dataset and loss; missing: "
                            f"{', '.join(missing)}", "pass bsprof.measure(model=net, dataset=data, loss=fn) or "
                            "bsprof.measure('model.py')")
        spec = Spec.of(model, dataset, loss, optimizer, collate, cfg.tokens_per_example or None)
    elif given or optimizer is not None or collate is not None:
        raise SpecError("bsprof.measure got both a spec and objects", "pass either a spec file or model=, "
                        "dataset=, loss= (not both)")
    with caller_rng(), _grad_on():   # the probe seeds torch's global generators; the caller's randomness goes on after
        return loop.measure(spec, cfg, report, progress)


@contextlib.contextmanager
def _grad_on():
    """Gradients on for the probe, whatever the caller's mode (a call inside ``torch.no_grad()`` or
    ``torch.inference_mode()``, as around an evaluation loop, failed with torch's own 'does not require grad')."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


_FLAGS = re.compile(r"--(strict)\b|--(method)\b(?: (auto|per_example|hooks|vmap|microbatch)\b)?"
                    r"|--(micro-batch|rel-error|max-seconds|max-examples|probe-batch)\b(?: (\d+(?:\.\d+)?)\b)?")


def _in_api_words(e: BsprofError) -> BsprofError:
    """A library caller's error: the CLI flags in its hint as the keyword arguments of ``measure_at`` (``--method
    microbatch`` → ``method="microbatch"``)."""
    def keyword(m: re.Match) -> str:
        if m.group(1):
            return "strict=True"
        if m.group(2):
            return f'method="{m.group(3)}"' if m.group(3) else "method="
        name = m.group(4).replace("-", "_")
        return f"{name}={m.group(5)}" if m.group(5) else f"{name}="
    e.hint = _FLAGS.sub(keyword, e.hint)
    return e


def measure_at(model: nn.Module, loss, data, *, method: str = "auto", rel_error: float = 0.2,
               confidence: float = 0.9, micro_batch: int = 8, probe_batch: int = 0, chunk: int = 256,
               max_examples: int = 200_000, max_seconds: float = 60.0, min_draws: int = 5, seed: int = 0,
               collate=None, strict: bool = False) -> AtWeights:
    """B_simple = tr(Σ)/|G|² at the model's current weights, without training, with its interval.

    Draws nested small/big batches from ``data`` (a Dataset, a DataLoader, a tuple of tensors with the examples
    on dim 0, or a ``DrawSource``: ``engine.source.as_source``) on the model's device until the interval is
    within ``rel_error`` (or a budget is spent). The model's weights, buffers and ``.grad`` are left unchanged.
    ``strict``: no parameter by the slow torch.func path (an error with ``method="hooks"``; micro-batches under
    auto), as ``bsprof measure --strict``. Returns an ``AtWeights``: the ``Estimate`` of B_simple, with |G|², tr(Σ),
    the probe used and why, and the draws' count, examples and why they stopped.
    """
    try:
        with caller_rng(), _grad_on():   # dropout's masks from the seed; the caller's randomness goes on after
            return _measure_at(model, loss, data, method, rel_error, confidence, micro_batch, probe_batch, chunk,
                               max_examples, max_seconds, min_draws, seed, collate, strict)
    except BsprofError as e:
        raise _in_api_words(e) from None


def _measure_at(model, loss, data, method, rel_error, confidence, micro_batch, probe_batch, chunk, max_examples,
                max_seconds, min_draws, seed, collate, strict) -> AtWeights:
    cfg = resolve(MeasureConfig, None, dict(method=method, rel_error=rel_error, confidence=confidence,
                                            micro_batch=micro_batch, probe_batch=probe_batch, chunk=chunk,
                                            max_examples=max_examples, max_seconds=max_seconds,
                                            min_draws=min_draws, seed=seed, steps=0))
    torch.manual_seed(cfg.seed)   # the model's own randomness (dropout) repeats with the seed
    if not isinstance(model, nn.Module):
        raise SpecError(f"model must be a torch.nn.Module, got {type(model).__name__}",
                        "call measure_at(model, loss, data), in that order")
    if not callable(loss):
        raise SpecError(f"loss must be a function loss(model, batch) -> per-example losses, got "
                        f"{type(loss).__name__}", "call measure_at(model, loss, data), in that order")
    param = next((p for p in model.parameters() if p.requires_grad), None)
    if param is None:
        raise SpecError("the model has no trainable parameters", "pass a model with parameters that require grad")
    examples = as_source(data, param.device, seed, collate)
    pair = examples.first_two() if isinstance(examples, Examples) else None
    # decide runs the model on two examples (what the hooks would send to torch.func), on its own random state: a
    # check made on the first call in a process only must not move the draws' dropout masks
    with loop.buffers_kept(model), caller_rng():
        choice = decide(cfg.method, model, loss, pair, micro_batch=micro_batch, strict=strict)
    probe = choice.probe
    if choice.fallbacks:  # as `bsprof measure` lists them in its report: said, not hidden
        warnings.warn(f"bsprof.measure_at: {len(choice.fallbacks)} parameter(s) measured by the slow torch.func "
                      f"path: {fallback_text(choice.fallbacks)}; strict=True refuses them (micro-batches under auto)",
                      stacklevel=3)  # the caller of measure_at
    how = loop._sampling(cfg, probe, examples.n)
    _, group = loop.trainable_groups(model)
    with loop.buffers_kept(model):
        est, draws, stopped = sampling.measure_at(model, loss, examples, how, group)
    return AtWeights(est.b_simple, est.b_simple_lo, est.b_simple_hi, est.status,
                     g2=Estimate(est.g2, est.g2_lo, est.g2_hi, Status.OK if est.g2 > 0 else Status.UNDETERMINED),
                     trace_sigma=est.trace_sigma, method=probe.name, method_reason=choice.why,
                     fallbacks=dict(choice.fallbacks), loss=est.loss, draws=len(draws),
                     examples=sum(d.B for d in draws), stopped=stopped)
