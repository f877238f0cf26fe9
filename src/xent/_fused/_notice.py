"""One line on stderr when the kernels take long to compile, so a first call's pause is explained.

numba compiles a kernel the first time it meets a signature (its dtypes and
layouts), and caches the machine code on disk: later processes load it in
milliseconds. A cold compile takes seconds, spread over several kernels (one
per dtype and layout met). When xent's compiles in this process have run for
`DELAY` seconds in all, this prints, once per process:

    xent: compiling kernels for znver3, once; cached in /path/__pycache__

or, where numba has no directory it can write (`_options.can_cache`):

    xent: compiling kernels for znver3; not cached: numba has no directory ...
"""
import os
import sys
import threading
import time

from numba.core import event

from xent import _threads
from xent._fused import _target

__all__ = ["install", "DELAY"]

DELAY = 1.0


def _is_xent(dispatcher):
    """Whether a numba dispatcher compiles one of xent's functions."""
    return getattr(getattr(dispatcher, "py_func", None), "__module__", "").startswith("xent.")


def _cache_place(dispatcher):
    """Where numba caches `dispatcher`'s machine code, in words."""
    path = getattr(getattr(dispatcher, "_cache", None), "cache_path", None)
    if path:
        return f"cached in {path}"
    chosen = os.environ.get("NUMBA_CACHE_DIR")
    advice = (f"NUMBA_CACHE_DIR={chosen} cannot be written: set it to a directory that can"
              if chosen else "set NUMBA_CACHE_DIR to one")
    return ("not cached: numba has no directory it can write, so every process "
            f"compiles them ({advice}, to cache them)")


class _CompileNotice(event.Listener):
    """Counts the seconds spent in xent's outermost compiles; while one runs, a
    timer fires when the total would pass the delay (`DELAY` unless given)."""

    def __init__(self, stream=None, delay=None):
        self._stream, self._delay = stream, delay
        self._depth, self._timer, self.said = 0, None, False
        self._spent, self._started = 0.0, 0.0
        self._lock = _threads.fork_safe_lock(reentrant=True)   # (a signal handler's call may nest)

    def _say(self, dispatcher):
        with self._lock:
            if self.said or self._depth == 0:
                return
            self.said = True
        stream = self._stream or sys.stderr
        if stream is None:   # (stderr closed, or pythonw: print(file=None) would write to stdout)
            return
        place = _cache_place(dispatcher)
        once = ", once" if place.startswith("cached") else ""
        print(f"xent: compiling kernels for {_target.cpu_name()}{once}; {place}",
              file=stream, flush=True)

    def on_start(self, ev):
        dispatcher = ev.data["dispatcher"]
        if self.said or not _is_xent(dispatcher):
            return
        with self._lock:
            self._depth += 1
            if self._depth == 1:
                delay = DELAY if self._delay is None else self._delay
                self._started = time.perf_counter()
                self._timer = threading.Timer(max(0.0, delay - self._spent), self._say, (dispatcher,))
                self._timer.daemon = True
                self._timer.start()

    def on_end(self, ev):
        if not _is_xent(ev.data["dispatcher"]):
            return
        with self._lock:
            if self._depth == 0:
                return
            self._depth -= 1
            if self._depth == 0:
                self._spent += time.perf_counter() - self._started
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None


_listener = _CompileNotice()


def install():
    """Listen to numba's compile events (idempotent)."""
    if not getattr(install, "done", False):
        event.register("numba:compile", _listener)
        install.done = True
