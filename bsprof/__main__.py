"""`python -m bsprof` and the `bsprof` script. The command line is imported inside ``main`` (torch, typer…), so
a Ctrl-C during start-up ends with one line and exit 130 too, and SIGTERM/SIGHUP during start-up with one line and
128 + the signal's number (the commands that run long install their own handlers, ``bsprof.cli.signals``)."""

import signal
import sys

_STARTUP = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


def _stop(signum, frame):
    sys.stderr.write(f"terminated ({signal.Signals(signum).name}) during start-up: nothing was measured\n")
    raise SystemExit(128 + signum)


def main() -> None:
    previous = {s: signal.signal(s, _stop) for s in _STARTUP}
    try:
        from bsprof.cli import main as run
    except KeyboardInterrupt:  # during start-up
        sys.stderr.write("interrupted during start-up: nothing was measured\n")
        raise SystemExit(130) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    try:
        run()
    except KeyboardInterrupt:  # a Ctrl-C that no command caught
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
