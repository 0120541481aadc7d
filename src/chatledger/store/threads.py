"""Background threads of the store yield the CPU to the event loop."""

from __future__ import annotations

import contextlib
import os
import sys
import threading


def lower_this_threads_priority(niceness: int) -> None:
    """Raise the calling thread's nice value. Linux schedules threads on their own, so the value set
    for this thread's id is this thread's; elsewhere it would be the whole process's: left alone."""
    if niceness and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
