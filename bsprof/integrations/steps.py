"""What every training-framework callback does at an optimizer step: decide whether the tracker can measure it.

A framework step is measurable when it is a nested pair (``bsprof.track``): its backward passes ran inside
``tracker.per_example()``; or it had k ≥ 2 backward passes on micro-batches of one size; or it ran on W ≥ 2 DDP
ranks. Anything else (one backward and no per-example norms, an epoch's short last micro-batch, a step that is
not due) is handed to ``tracker.discard`` and counted in ``Steps.unmeasured`` by reason: the training goes on,
and the callback never raises inside the framework's loop: a ``TrackerError`` (the tracker has then removed its
hooks) becomes a warning and ``Steps.failed``.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter

import torch

from bsprof.track import TrackerError


def rows_of(batch) -> int | None:
    """Examples in a batch: dim 0 of its first tensor (depth first through tuples, lists and dicts)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        n = rows_of(item)
        if n is not None:
            return n
    return None


def tokens_of(batch) -> int | None:
    """Token positions in a batch, padding included: the size of its first integer tensor of two or more dims (the
    token ids [B, T]; depth first through tuples, lists and dicts, a dict's ``input_ids`` first); None without one."""
    if isinstance(batch, torch.Tensor):
        return int(batch.numel()) if batch.dim() >= 2 and not batch.is_floating_point() else None
    if isinstance(batch, dict):
        items = [batch["input_ids"]] * ("input_ids" in batch) + list(batch.values())
    else:
        items = batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        n = tokens_of(item)
        if n is not None:
            return n
    return None


NO_TOKENS = ("no token ids in the batch (unit='tokens' counts the positions of its integer tensor [B, T], padding "
             "included)")


def check_options(every, window, log_every) -> None:
    """A callback's step counts, checked when it is made (not at the framework's first step, inside its loop)."""
    from bsprof.track.tracker import check_window, positive_int

    for name, value in (("every", every), ("log_every", log_every)):
        if value is not None and not positive_int(value):
            raise TrackerError(f"{name} must be a number of optimizer steps, at least 1 (got {value!r})",
                               f"e.g. {name}=10" + (", or None for the trainer's logging interval"
                                                    if name == "log_every" else ""))
    check_window(window)


def loader_population(loader) -> int | None:
    """The examples a shuffling loader draws each epoch's batches from without replacement: ``len(dataset)`` when
    its sampler (found through the wrappers accelerate and Lightning put around it) is a ``RandomSampler`` without
    replacement over the whole dataset, or a ``DistributedSampler`` with ``shuffle=True`` (the global batch is a
    slice of one permutation); None otherwise (sequential order, replacement, an iterable dataset, or unknown)."""
    from torch.utils.data import DistributedSampler, IterableDataset, RandomSampler

    if loader is None:
        return None
    dataset = getattr(loader, "dataset", None)
    if dataset is None or isinstance(dataset, IterableDataset):
        return None
    try:
        n = len(dataset)
    except TypeError:
        return None
    seen, todo = set(), [loader]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or len(seen) > 16:
            continue
        seen.add(id(obj))
        if isinstance(obj, RandomSampler):
            return n if not obj.replacement and obj.num_samples == n and n >= 2 else None
        if isinstance(obj, DistributedSampler):
            return n if obj.shuffle and n >= 2 else None
        todo += [x for name in ("sampler", "batch_sampler", "base_dataloader")
                 if (x := getattr(obj, name, None)) is not None]
    return None


def per_example_available(tracker) -> bool:
    src = tracker.per_example_source
    return src is not None and src.problem is None and bool(src.handles)


def per_example_unavailable(tracker) -> str:
    """Why the tracker has no per-example norms, in a few words."""
    src = tracker.per_example_source
    if tracker.no_per_example:
        return tracker.no_per_example
    if src is None:
        return "the tracker was made without per-example hooks"
    if src.problem:
        return src.problem.removesuffix(": use accumulation (micro-batches) instead")
    return "its hooks were removed"


def listed_again(callback) -> bool:
    """At a callback's start of training: True when it is this same callback object's open tracker, i.e. the object
    is listed more than once in the trainer's callbacks and the framework calls it again for the same start; it
    then counts its ``copies`` and warns once. Each of its other hooks runs once per event (``once_per_event``)."""
    tracker = getattr(callback, "tracker", None)
    if tracker is not None and not tracker.closed and getattr(callback, "_starting", False):
        callback.copies += 1
        if callback.copies == 2:
            warnings.warn(f"bsprof: this {type(callback).__name__} object is listed more than once in the trainer's "
                          "callbacks: it measures once", stacklevel=3)
        return True
    callback.copies, callback._calls, callback._starting = 1, {}, True
    return False


def once_per_event(hook):
    """A hook of a callback object listed ``copies`` times in a trainer's callbacks is called that many times back
    to back for each event; only the first of them acts. Called unbound (the class, not an object, given to the
    trainer: ``self`` is then the trainer) it does nothing: the callback's ``setup`` says what is wrong."""
    @functools.wraps(hook)
    def run(self, *args, **kwargs):
        if not getattr(type(self), "bsprof_callback", False):
            return None
        self._starting = False   # the start's repeated calls are over
        calls = self.__dict__.setdefault("_calls", {})
        n = calls.get(hook.__name__, 0)
        calls[hook.__name__] = n + 1
        if n % getattr(self, "copies", 1):
            return None
        return hook(self, *args, **kwargs)
    return run


class Steps:
    """The bookkeeping of one callback: micro-batch sizes and loss of the open step, arming, and the close."""

    def __init__(self, tracker, every: int = 1):
        self.tracker, self.every = tracker, max(1, int(every))
        self.sizes: list[int | None] = []
        self.loss = 0.0
        self.armed = None                  # the entered tracker.per_example() context, while armed
        self.per_example_step = False      # every backward of the open step was armed
        self.unmeasured: Counter = Counter()
        self.failed: str | None = None     # the TrackerError that stopped the measurement (hooks removed)
        self.most = 0                      # the most backward passes a step has had (accumulation when ≥ 2)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def arm(self) -> None:
        if self.armed is None and not self.failed and per_example_available(self.tracker):
            self.armed = self.tracker.per_example()
            self.armed.__enter__()
            self.per_example_step = True

    def disarm(self) -> None:
        if self.armed is not None:
            self.armed.__exit__(None, None, None)
            self.armed = None

    def close(self, step: int, loss_scale: float = 1.0):
        """End the optimizer step ``step``: a Draw when the tracker measured it, else None (counted by reason)."""
        self.disarm()
        if self.failed:
            return None
        t, sizes, loss, per_example = self.tracker, self.sizes, self.loss, self.per_example_step
        self.sizes, self.loss, self.per_example_step = [], 0.0, False
        k = t.micro_steps
        self.most = max(self.most, k)
        known = [n for n in sizes if n is not None]
        total = sum(known) if len(known) == len(sizes) else None
        reason = None
        if k == 0:
            return None                     # no backward in this step (a skipped training_step)
        if not self.due(step):
            reason = "not due"
        elif t.unit == "tokens" and total is None:
            reason = NO_TOKENS
        elif not per_example and k == 1 and t.world < 2:
            reason = ("a short step (an epoch's last)" if self.most >= 2 else
                      "one backward and no per-example norms")
        elif not per_example and (total is None or len(sizes) != k or len(set(known)) != 1):
            reason = "micro-batches of different sizes (or of unknown size)"
        if reason is not None:
            if reason.startswith("one backward") and not self.unmeasured[reason]:
                warnings.warn(f"bsprof: steps with one backward pass are not measured: per-example norms are not "
                              f"available ({per_example_unavailable(t)}); set gradient accumulation to 2 or more "
                              "micro-batches (Lightning: accumulate_grad_batches, Hugging Face: "
                              "gradient_accumulation_steps), or train on 2+ DDP ranks (shown once)", stacklevel=2)
            if reason == NO_TOKENS and not self.unmeasured[reason]:
                warnings.warn(f"bsprof: step {step} left out: {reason}; every such step is left out. Lightning: "
                              "pass NoiseScale(batch_rows=function batch → its tokens); or measure in examples, "
                              "unit='examples' (shown once)", stacklevel=2)
            uneven = reason.startswith(("a short step", "micro-batches of different sizes"))
            if uneven and not self.unmeasured[reason]:   # as the tracker says of its own (docs/tracker.md)
                warnings.warn(f"bsprof: step {step} left out: {reason}; every such step is left out (the "
                              "callback's unmeasured and tracker.uneven count them; drop_last=True on the loader "
                              "avoids them; shown once)", stacklevel=2)
            self.unmeasured[reason] += 1
            t.discard(total, uneven=reason.startswith(("a short step", "micro-batches of different sizes")) and
                      total is not None)
            return None
        try:
            return t.step(batch_size=None if per_example and t.unit != "tokens" else total, loss=loss,
                          loss_scale=loss_scale, step=step)   # (per-example norms in tokens need the step's tokens)
        except TrackerError as e:
            if not t.closed:  # per-example norms were switched off; the next steps use accumulation or DDP
                self.unmeasured["per-example norms failed"] += 1
                warnings.warn(f"bsprof: step {step} unmeasured: {e}", stacklevel=2)
                return None
            self.failed = str(e)  # the tracker removed its hooks; training goes on unmeasured
            warnings.warn(f"bsprof stopped measuring at step {step}: {e}", stacklevel=2)
            return None
