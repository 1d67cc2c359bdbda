"""How a torchrun test worker leaves once its results are written and its collectives are done: without the
interpreter's teardown, where a gloo thread still joinable aborted the process now and then ("terminate called
without an active exception", exit -6, in ~1 run of 10 under load), failing a test whose results were all in."""
import os
import sys


def leave() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
