"""The noise scale inside your own training loop (issue 12; docs/tracker.md).

    Tracker          turns each optimizer step into a nested pair at its weights (tracker.py)
    sources          the hooks that find the pair: accumulation micro-steps, per-example norms, DDP ranks, FSDP2 shards
    window           windowed estimates with intervals, and the EMA view for logging
    log              the JSONL log of raw per-step statistics, its reader, and a Report from it
"""

from bsprof.track.log import read_log, report_from_log
from bsprof.track.tracker import Tracker, TrackerError

__all__ = ["Tracker", "TrackerError", "read_log", "report_from_log"]
