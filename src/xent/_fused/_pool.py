"""A large call's rows over threads: the caller and helper threads share its blocks.

`run` cuts rows ``[0, n)`` into `BLOCKS_PER_THREAD` blocks per thread. The
calling thread and ``threads - 1`` helpers from a pool of Python threads take
blocks one at a time, each block by one call of the row kernel (compiled
``nogil``: the threads compute at once), until none is left. The caller starts
at once and waits only for the blocks a helper has taken, so a helper that
wakes late, or is busy with another call, costs its share of the speed-up and
nothing more. Every row goes through the same row kernel whichever thread
takes it: the results are the one-thread bits.

Idle helpers wait on the pool's queue: they sleep, nothing spins. The pool is
made on first use, and anew in a child process after ``fork`` (threads do not
survive a fork).

Why not numba's ``parallel=True`` (``prange`` over blocks, as xent did until
session 14): each launch on numba's workqueue layer wakes every worker twice
(a round to set their thread count, then the work) while the caller sleeps,
and waking an idle vCPU took about 0.3 ms on the 2-vCPU VMs these figures come
from. Measured there (AMD Zen 4, float32 rows of 1000 classes, ms, medians of
21 interleaved calls; one thread / numba's launch / this pool; loss alone):

  4 MB 0.31 / 0.27 / 0.24;  8 MB 0.61 / 0.89 / 0.44;  16 MB 1.25 / 1.52 / 0.81;
  62 MB 5.40 / 5.23 / 3.04;  250 MB 19.9 / 13.4 / 10.9;
  8192x32000 (1 GB) 61.3 / 37.4 / 35.3; its gradient into a buffer 95.6 / 68.4 / 69.4.

No ``parallel=True`` kernel also means no numba threading layer, and a cold
first call that compiles a third fewer kernels.
"""
import os
import threading

from xent import _threads

__all__ = ["run", "BLOCKS_PER_THREAD"]

# Blocks per thread, taken one at a time: a thread slowed by another process
# (or a late helper) leaves its blocks to the others.
BLOCKS_PER_THREAD = 4

_state = {"pool": None, "pid": None}
_state_lock = _threads.fork_safe_lock()
_running = threading.local()   # .calls: this thread's `run` calls in progress


def _helpers():
    """This process's pool of helper threads (`_threads.max_threads` - 1 of them).

    `concurrent.futures.thread` is imported here, on the first large call: its
    import registers an exit hook, which fails once the interpreter is exiting
    (a first call from an `atexit` handler, which needs no pool when small)."""
    from concurrent.futures import ThreadPoolExecutor

    with _state_lock:
        if _state["pid"] != os.getpid():
            _state["pool"] = ThreadPoolExecutor(
                max_workers=max(1, _threads.max_threads() - 1), thread_name_prefix="xent")
            _state["pid"] = os.getpid()
        return _state["pool"]


class _Blocks:
    """One call's blocks of rows, each run by whichever thread takes it first.

    The caller runs blocks until none is left, then waits for the helpers that
    joined in (`active`) to finish theirs. A helper joins only while blocks are
    left, so once the caller has seen none left, no helper joins any more, and
    the last one to leave sets `_finished`. Only the caller can be interrupted
    (Python delivers signals to the main thread), and its bookkeeping is its
    own, so an interrupt cannot leave it waiting for a block nobody runs;
    after one, `close_and_wait` stops the helpers taking more blocks.
    """

    def __init__(self, rows, args, n, count):
        self._rows, self._args, self._n, self._count = rows, args, n, count
        self._taken, self._active, self.helped, self._closed = 0, 0, False, False
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._error = None

    def _next(self):
        """``(block, args)`` of the next block, or None once every block is taken, one
        has raised, or the caller has stopped waiting (call with the lock held)."""
        if self._taken == self._count or self._error is not None or self._closed:
            return None
        self._taken += 1
        return self._taken - 1, self._args

    def _run_blocks(self, job):
        """Run `job` and the blocks after it; record the first error and stop all."""
        try:
            while job is not None:
                block, args = job
                self._rows(*args, block * self._n // self._count,
                           (block + 1) * self._n // self._count)
                with self._lock:
                    job = self._next()
        except BaseException as exc:
            with self._lock:
                self._error = self._error or exc
            raise

    def help(self):
        """A helper's part: join while blocks are left, run them, then leave."""
        with self._lock:
            job = self._next()
            if job is None:
                return
            self._active += 1
            self.helped = True
        try:
            self._run_blocks(job)
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._finished.set()

    def work(self):
        """The caller's part: run blocks until none is left (a block's error raised)."""
        with self._lock:
            job = self._next()
        self._run_blocks(job)

    def close_and_wait(self):
        """Let no helper join from now on, and wait for those that joined to finish
        their blocks; then raise the first error a block raised. Safe to call
        after an interrupt anywhere in `run`."""
        self._closed = True   # (first: a store, where no signal handler can run before it)
        _through_interrupts(self._wait_for_helpers)
        self._args = None   # (no helper is left to read them)
        if self._error is not None:
            raise self._error

    def _wait_for_helpers(self):
        """Wait until no helper that joined is still running a block."""
        with self._lock:
            helpers_left = self._active > 0
        if helpers_left:
            self._finished.wait()


def _through_interrupts(wait):
    """``wait()`` to the end: an exception raised meanwhile (a KeyboardInterrupt
    from Ctrl-C, or one a signal handler raises) is raised once it is over, so
    that a call never returns while a helper still writes its output (a
    review caught helpers writing into a caller's `backprop_out` up to 6 ms
    after the KeyboardInterrupt had been caught)."""
    pending = None
    while True:
        try:
            wait()
            break
        except BaseException as exc:   # (a signal: wait on, then raise it)
            pending = pending or exc
    if pending is not None:
        raise pending


def run(rows, args, n, threads):
    """Run ``rows(*args, lo, hi)`` over ``[0, n)`` on the calling thread and up to
    ``threads - 1`` helpers; return whether a helper took part (False: the
    caller ran every block, the helpers being busy or asleep throughout).

    `rows` is a ``nogil`` row kernel whose rows are independent. When it
    returns or raises, no thread is still running a block of this call,
    wherever an interrupt lands (while the helpers start too). A call made
    while this thread is already in one (from a signal handler) runs alone:
    the pool's ``submit`` takes a lock the outer call may hold.
    """
    blocks = _Blocks(rows, args, n, min(n, threads * BLOCKS_PER_THREAD))
    depth = getattr(_running, "calls", 0)
    _running.calls = depth + 1
    try:
        if depth == 0:
            _start_helpers(blocks, threads - 1)
        blocks.work()
    finally:
        _running.calls = depth
        blocks.close_and_wait()
    return blocks.helped


def _start_helpers(blocks, count):
    """Ask `count` pool threads to help with `blocks` (none at interpreter exit,
    where no thread starts: the caller runs them all)."""
    try:
        pool = _helpers()
        for _ in range(count):
            pool.submit(blocks.help)
    except RuntimeError:
        pass
