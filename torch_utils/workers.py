"""Data-loading worker processes that end with the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys

#----------------------------------------------------------------------------
# A worker must not outlive a process that dies without stopping it (SIGKILL,
# out of memory): PyTorch's own check misses a parent that died while the
# worker was still starting, and such an orphan keeps the command's output
# pipes open forever (a `| tee` or a CI runner then waits for good). On Linux
# the kernel ends the worker with its parent. A worker started by a fork
# server (a caller's choice of start method) has the server as its parent;
# its creator is then watched through the pipe that multiprocessing keeps
# open to it.

def end_with_parent(parent_pid: int) -> None:
    """Called first thing in a worker: arrange to end when `parent_pid` ends, or end now if it has."""
    if sys.platform.startswith('linux'):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        creator = multiprocessing.parent_process()
        if creator is None or creator.pid != parent_pid or not creator.is_alive():
            os._exit(0)  # The creator is gone already.

# A DataLoader's worker_init_fn: functools.partial(init_worker, parent_pid=os.getpid()).
def init_worker(_worker_id: int, parent_pid: int) -> None:
    end_with_parent(parent_pid)

#----------------------------------------------------------------------------
