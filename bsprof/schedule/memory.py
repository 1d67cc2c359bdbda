"""``--max-batch auto``: the largest micro-batch (forward + backward) that fits in the device's memory.

Grow by doubling until ``torch.cuda.OutOfMemoryError``, then bisect between the last fit and the first failure,
freeing memory after every try. The model's state is copied before and restored after, gradients are zeroed.
Only CUDA has a hard memory limit worth probing; on CPU (or MPS) the answer is "not measurable" and the caller
uses ``DEFAULT_MICRO_BATCH``, saying so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

DEFAULT_MICRO_BATCH = 1024


def largest_fitting(fits: Callable[[int], bool], start: int = 1, limit: int = 1 << 16) -> int:
    """The largest b ≤ limit with fits(b), assuming fits is monotone: doubling, then bisection. 0 if none fits."""
    if not fits(start):
        return 0
    good = start
    while good * 2 <= limit and fits(good * 2):
        good *= 2
    bad = good * 2
    if bad > limit:
        return good
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def probe_micro_batch(spec_path, limit: int = 1 << 16) -> tuple[int | None, str]:
    """(largest micro-batch, how it was found) for the spec's model on CUDA; (None, reason) elsewhere."""
    import torch

    from bsprof.engine.data import to_device
    from bsprof.engine.spec import build_dataset, build_model, load_spec

    if not torch.cuda.is_available():
        return None, f"not measurable without CUDA (CPU memory is no hard limit); using {DEFAULT_MICRO_BATCH}"
    spec = load_spec(spec_path)
    device = torch.device("cuda")
    model, data = build_model(spec).to(device), build_dataset(spec)
    saved = copy.deepcopy(model.state_dict())
    collate = spec.collate or torch.utils.data.default_collate

    def fits(b: int) -> bool:
        try:
            batch = to_device(collate([data[i % len(data)] for i in range(b)]), device)
            spec.loss(model, batch).mean().backward()
            torch.cuda.synchronize()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            model.zero_grad(set_to_none=True)
            batch = None
            torch.cuda.empty_cache()

    try:
        found = largest_fitting(fits, 1, limit)
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    return found, f"measured on {torch.cuda.get_device_name(device)} (forward + backward, doubling then bisection)"
