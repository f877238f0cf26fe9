"""How many threads the fused kernels use: `get_num_threads` and `set_num_threads`.

The count starts from the usual knob, ``NUMBA_NUM_THREADS`` (else the number of
CPUs this process may run on), and `set_num_threads` changes it for the whole
process. Results are identical whatever the count: each row is computed by the
same code whichever thread runs it. Importing this module does not import numba.
"""
import operator
import os
import sys
import threading

_state = {"threads": None}


def fork_safe_lock(reentrant=False):
    """A `threading.Lock` (`threading.RLock` if `reentrant`) that a child process
    made by ``os.fork`` gets unlocked.

    The child has only the thread that forked: a lock another thread held at
    that moment would stay held in it for ever. A review forked a process
    while two threads ran torch steps through xent: 7 of 100 children hung on
    `xent._torch._upstream`'s lock or the gradient pool's (`xent._buffers`).
    For locks that live as long as the process (each registers a hook).
    A reentrant one serves state that a call from a signal handler may use
    while its thread holds the lock (a plain lock hangs there for ever).
    """
    lock = threading.RLock() if reentrant else threading.Lock()
    if hasattr(os, "register_at_fork") and hasattr(lock, "_at_fork_reinit"):
        os.register_at_fork(after_in_child=lock._at_fork_reinit)
    return lock


class ThreadMark:
    """True on a thread from when it enters a ``with`` of this mark until it leaves.

    ``with mark, lock:`` marks the span around a lock: a call that finds its
    own thread marked comes from a signal handler, run between two steps of
    the lock's holder, and must do without what the lock guards (a plain lock
    would hang it for ever; a reentrant one would let it change that state
    half-way through the holder's update). ``__enter__`` only stores, so no
    handler runs between the mark and the lock."""

    def __init__(self):
        self._here = threading.local()

    def __bool__(self):
        return getattr(self._here, "inside", False)

    def __enter__(self):
        self._here.inside = True

    def __exit__(self, *exc):
        self._here.inside = False


def environment_threads():
    """``NUMBA_NUM_THREADS`` read as numba reads it (``int``), or None where it is
    not set or not a number (numba warns then, and takes its default).

    Raises:
      ValueError: it is 0 or negative, on which numba's own import fails with
        a message that names no variable.
    """
    env = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    try:
        count = int(env)
    except ValueError:
        return None
    if count <= 0:
        raise ValueError(f"the environment variable NUMBA_NUM_THREADS must be a positive "
                         f"integer; received {env!r}")
    return count


def max_threads():
    """The most threads a call can use: the calling thread and xent's helper
    threads (`xent._fused._pool`, one fewer).

    That is ``NUMBA_NUM_THREADS`` if set (the knob numba users know), else the
    CPUs this process may run on, read from numba's config once numba is imported.
    """
    numba = sys.modules.get("numba")
    if numba is not None:
        return int(numba.config.NUMBA_NUM_THREADS)
    env = environment_threads()
    if env:
        return env
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def get_num_threads():
    """The number of threads a large call splits its rows over.

    Returns:
      An int from 1 to ``NUMBA_NUM_THREADS`` or the CPU count: the value given to `set_num_threads`,
      else ``NUMBA_NUM_THREADS``, else the number of CPUs available.

    Small inputs (a few MB) always run on the calling thread, where one thread
    is faster than two.
    """
    chosen = _state["threads"]
    return max_threads() if chosen is None else min(chosen, max_threads())


def set_num_threads(n):
    """Set how many threads the fused kernels use, for the whole process.

    Args:
      n: an int from 1 to ``NUMBA_NUM_THREADS``, or where that is unset the
        number of CPUs available.

    Raises:
      TypeError: `n` is not an integer.
      ValueError: `n` is outside that range.
    """
    if isinstance(n, bool) or not hasattr(type(n), "__index__"):
        raise TypeError(f"the number of threads must be an int; received {n!r}")
    n = operator.index(n)
    limit = max_threads()
    if not 1 <= n <= limit:
        raise ValueError(
            f"the number of threads must be in [1, {limit}] (NUMBA_NUM_THREADS or the "
            f"CPU count); received {n}")
    _state["threads"] = n
