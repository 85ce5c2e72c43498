"""How the workers of the long lanes (embeds, segment-everything, video) run, so image clicks
keep their latency meanwhile.

An embed or a propagation is long, CPU-bound work (torch intra-op OpenMP threads on every
core); a click is a short burst that must answer now. On a small CPU both want the same cores.
A long lane's worker therefore starts with:

* a lower CPU priority (Linux per-thread nice: `SAM2SERVE_EMBED_NICE`, `SAM2SERVE_VIDEO_NICE`):
  the scheduler hands the cores to a click the moment one arrives, and the long work still
  gets all of them when nobody clicks. The OpenMP threads the worker starts later inherit it
  (threads of a runtime's own pool, e.g. OpenVINO's, do not);
* optionally fewer torch intra-op threads (`SAM2SERVE_VIDEO_THREADS`, 0 = torch's default),
  for this thread only: other threads (the click lane's) keep the process-wide setting.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def worker_init(nice: int, threads: int = 0) -> Callable[[], None]:
    """An executor `initializer`: run in each new worker thread of a lane before any work."""

    def init() -> None:
        if nice > 0:
            lower_thread_priority(nice)
        if threads > 0:
            limit_thread_intra_op(threads)

    return init


def lower_thread_priority(delta: int) -> None:
    """Raise the calling thread's nice value by `delta` (max 19). Linux only: there nice is a
    per-thread attribute (setpriority on the thread id); elsewhere it would renice the whole
    process, so nothing is done."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + delta))
    except OSError as exc:  # e.g. a sandbox that forbids it: run at normal priority
        log.warning("could not lower a lane worker's CPU priority: %s", exc)


def limit_thread_intra_op(threads: int) -> None:
    """Torch intra-op threads of the calling thread only.

    `torch.set_num_threads` sets the calling thread's OpenMP/MKL thread count and a
    process-wide default that threads read when they first run torch work. The calling
    thread takes its count first (so it does not re-read the default later), then the
    process-wide default is put back from a throwaway thread (whose own count is moot)."""
    import torch

    default = torch.get_num_threads()  # also marks this thread's count as initialised
    torch.set_num_threads(threads)
    restore = threading.Thread(target=torch.set_num_threads, args=(default,), daemon=True)
    restore.start()
    restore.join()
