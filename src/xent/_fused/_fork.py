"""numba's and llvmlite's locks in a child made by ``os.fork``.

numba compiles under one process-wide lock (`numba.core.compiler_lock`), and
llvmlite calls LLVM under another (`llvmlite.binding.ffi.lib`'s). A child
forked while another thread held one (compiling, or loading a kernel from the
cache) has only the forking thread, so the lock stays held in it for ever,
and the child's first call that needs a kernel its parent had not loaded
waited for ever (an independent review: 1 child in 30 forked beside a thread
making its first `xent.cross_entropy` calls). Freeing the locks in the child
is not enough: numba's compile state (its typing context's own locks, half
made kernels) is then half way too. So a fork waits until no thread compiles
or calls LLVM: the forking thread takes both locks (numba's first, as a
compile does) just before the fork, and lets go of them in the parent and in
the child just after.
"""
import os
import signal
import threading

from llvmlite.binding import ffi
from numba.core import compiler_lock

__all__ = ["install"]

_state = {"installed": False}
# Per forking thread (two threads may fork at once): each lock with the count of
# holds this thread had on it before the fork.
_held = threading.local()


def _locks():
    """numba's compiler lock and llvmlite's LLVM lock (both `threading.RLock`), in the
    order a compile takes them; None for one this numba or llvmlite lacks."""
    return [getattr(compiler_lock.global_compiler_lock, "_lock", None),
            getattr(getattr(ffi.lib, "_lock", None), "_lock", None)]


def _holds(lock):
    """How many times this thread holds `lock` (an RLock's recursion count; 0 or 1
    where the RLock does not say)."""
    count = getattr(lock, "_recursion_count", None)
    if count is not None:
        return count()
    return int(lock._is_owned()) if hasattr(lock, "_is_owned") else 0


def _before_fork():
    """Wait for any compile or LLVM call in another thread to finish, and hold both
    locks. A before-fork hook cannot stop the fork (an exception there is
    printed and the fork goes on), so this thread's signals are blocked until
    `_after_fork` (a Ctrl-C then arrives after the fork), the wait goes on
    whatever a signal handler still raises, and what is held is counted from
    the lock itself: an exception that lands after an ``acquire`` has
    returned leaves no hold unrecorded (a review forked under a 10 us SIGALRM
    that raised: numba's lock stayed held)."""
    _held.mask = (signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
                  if hasattr(signal, "pthread_sigmask") else None)
    _held.before = [(lock, _holds(lock)) for lock in _locks() if lock is not None]
    for lock, before in _held.before:
        while True:
            try:
                while _holds(lock) == before:
                    lock.acquire()
                break
            except BaseException:   # (held or not: the count says)
                continue


def _after_fork():
    """Let go of the holds this thread's `_before_fork` took (in the parent, and in
    the child, where the forking thread is the one that holds them), then
    unblock its signals."""
    before, _held.before = getattr(_held, "before", []), []
    mask, _held.mask = getattr(_held, "mask", None), None
    for lock, count in reversed(before):
        while True:
            try:
                while _holds(lock) > count:
                    lock.release()
                break
            except BaseException:
                continue
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def install():
    """Register the fork hooks once per process (where ``os.register_at_fork`` exists)."""
    if not _state["installed"] and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                            after_in_child=_after_fork)
        _state["installed"] = True
