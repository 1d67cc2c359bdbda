"""`python -m bsprof` and the `bsprof` script. The command line is imported inside ``main`` (torch, typer…), so
a Ctrl-C during start-up ends with one line and exit 130 too."""

import sys


def main() -> None:
    try:
        from bsprof.cli import main as run

        run()
    except KeyboardInterrupt:  # during start-up, or a Ctrl-C that no command caught
        sys.stderr.write("interrupted\n")
        raise SystemExit(130)


if __name__ == "__main__":
    main()
