"""The caller's random state, kept: a probe or a sweep seeds torch's global generators for reproducible runs
(initial weights, dropout), and a notebook's randomness after the call must not restart from that seed."""

from __future__ import annotations

import contextlib
import random
import sys

import torch


@contextlib.contextmanager
def caller_rng():
    """Run the block on torch's global generators, then put the caller's states back (CPU and every CUDA device:
    ``torch.manual_seed`` seeds them all, lazily where CUDA is not yet initialised); Python's ``random`` and
    numpy's global generator too, which ``seed_all`` seeds for a spec's import."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    state = random.getstate()
    np = sys.modules.get("numpy")
    np_state = np.random.get_state() if np is not None else None
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(state)
        if np_state is not None:
            np.random.set_state(np_state)


def seed_all(seed: int) -> None:
    """Seed torch, Python's ``random`` and numpy's global generator: a spec that makes its data or weights at
    import time (``torch.randn`` at the top of the file, ``np.random.shuffle``) gives the same run for the same
    ``--seed``. numpy is seeded when installed (it is, with pandas)."""
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy
    except ImportError:
        return
    numpy.random.seed(seed % 2 ** 32)
