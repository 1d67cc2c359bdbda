"""SIGTERM and SIGHUP in one process behave like Ctrl-C: the run stops, the partial report is written, and the
exit code is 128 + the signal's number (143, 129; Ctrl-C: 130).

``timeout``, SLURM, Kubernetes and ``docker stop`` send SIGTERM; a closed terminal sends SIGHUP. Each raises
``Terminated`` (a ``KeyboardInterrupt``) in the main thread; further signals are ignored until the block ends, so
writing the report is not cut short by a second one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(KeyboardInterrupt):
    """The process received ``signum`` (SIGTERM, SIGHUP)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


def exit_code(e: KeyboardInterrupt) -> int:
    return e.exit_code if isinstance(e, Terminated) else 130


def describe(e: KeyboardInterrupt) -> str:
    return f"terminated ({e.name})" if isinstance(e, Terminated) else "interrupted"


def hold() -> None:
    """Ignore SIGTERM/SIGHUP and a second Ctrl-C from now until ``as_interrupt``'s block ends (while the report is
    written: a fraction of a second, and the write is atomic either way)."""
    if threading.current_thread() is threading.main_thread():
        for s in (*SIGNALS, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM/SIGHUP raise ``Terminated``; the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        hold()  # one is enough: let the report be written
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
