"""The caller's random state, kept: a probe or a sweep seeds torch's global generators for reproducible runs
(initial weights, dropout), and a notebook's randomness after the call must not restart from that seed."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def caller_rng():
    """Run the block on torch's global generators, then put the caller's states back (CPU and every CUDA device:
    ``torch.manual_seed`` seeds them all, lazily where CUDA is not yet initialised)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
