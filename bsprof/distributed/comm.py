"""This process among the data-parallel ranks (``Comm``), torch-free so that the CLI can name it without importing
torch; the collectives that use it are in ``ranks``."""

from __future__ import annotations

from dataclasses import dataclass, field

from bsprof.errors import BsprofError

TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "BSPROF_DIST_TIMEOUT", 600.0


class RankFailure(BsprofError):
    """Another rank failed, was stopped, or did not answer within the timeout."""


@dataclass(frozen=True)
class Comm:
    """This process among the data-parallel ranks: rank r of world W (W = 1: one process, no collectives)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    store: object = field(default=None, compare=False, repr=False)  # rendezvous store, for failure notes

    @property
    def is_main(self) -> bool:
        return self.rank == 0


LOCAL = Comm()
