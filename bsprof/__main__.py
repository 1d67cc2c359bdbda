"""`python -m bsprof` and the `bsprof` script. The command line is imported inside ``main`` (torch, typer…), so
a Ctrl-C during start-up ends with one line and exit 130 too, and SIGTERM/SIGHUP before a run begins (start-up, a
spec being loaded, a model being built) with one line and 128 + the signal's number: the handler stays until a
command that runs long installs its own (``bsprof.cli.signals``), and comes back after it."""

import signal
import sys

_STARTUP = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


def _stop(signum, frame):
    sys.stderr.write(f"terminated ({signal.Signals(signum).name}) before a run began: nothing was measured\n")
    raise SystemExit(128 + signum)


def main() -> None:
    previous = {s: signal.signal(s, _stop) for s in _STARTUP}
    try:
        try:
            from bsprof.cli import main as run
        except KeyboardInterrupt:  # during start-up
            sys.stderr.write("interrupted during start-up: nothing was measured\n")
            raise SystemExit(130) from None
        try:
            run()
        except KeyboardInterrupt:  # a Ctrl-C that no command caught
            sys.stderr.write("interrupted\n")
            raise SystemExit(130) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


if __name__ == "__main__":
    main()
