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
import threading

from llvmlite.binding import ffi
from numba.core import compiler_lock

__all__ = ["install"]

_state = {"installed": False}
# The locks the forking thread took (per thread: two threads may fork at once).
_held = threading.local()


def _locks():
    """numba's compiler lock and llvmlite's LLVM lock (both `threading.RLock`), in the
    order a compile takes them; None for one this numba or llvmlite lacks."""
    return [getattr(compiler_lock.global_compiler_lock, "_lock", None),
            getattr(getattr(ffi.lib, "_lock", None), "_lock", None)]


def _acquire_through_interrupts(lock):
    """``lock.acquire()`` to the end, whatever a signal handler raises meanwhile (a
    before-fork hook cannot stop the fork: an exception there is printed and the
    fork goes on)."""
    while True:
        try:
            lock.acquire()
            return
        except BaseException:   # (the lock is not held: acquire again)
            continue


def _before_fork():
    """Wait for any compile or LLVM call in another thread to finish, and hold both
    locks. A Ctrl-C while it waits does not stop the wait (the fork would go on
    anyway, without the locks): it is dropped."""
    _held.locks = []
    for lock in _locks():
        if lock is not None:
            _acquire_through_interrupts(lock)
            _held.locks.append(lock)


def _after_fork():
    """Let go of the locks this thread's `_before_fork` took (in the parent, and in
    the child, where the forking thread is the one that holds them)."""
    locks, _held.locks = getattr(_held, "locks", []), []
    for lock in reversed(locks):
        lock.release()


def install():
    """Register the fork hooks once per process (where ``os.register_at_fork`` exists)."""
    if not _state["installed"] and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                            after_in_child=_after_fork)
        _state["installed"] = True
