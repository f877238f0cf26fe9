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
survive a fork). Its threads are daemons: the process exits without waiting
for them.

Interrupts. Python runs a signal's handler (Ctrl-C's KeyboardInterrupt) on
the main thread between two of its bytecodes, wherever it is: inside a
Python-level lock's ``with`` too (a `threading.Condition`'s, an `Event`'s, a
`Semaphore`'s), which then stays held for ever. So the caller's side takes
only steps that are whole or not at all, C calls: the jobs go to the helpers
through a `queue.SimpleQueue`, and a call waits for its helpers on plain
locks, with a timeout, so that a wake-up lost to an interrupt costs a poll,
not a hang. (`concurrent.futures`' ``submit`` took its semaphore's Condition:
one interrupt there left it held, and every later large call hung; an
interrupt at the entry of the wait let a call raise while its helper still
wrote its output; an independent review found both.)

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
import queue
import threading

from xent import _threads

__all__ = ["run", "BLOCKS_PER_THREAD"]

# Blocks per thread, taken one at a time: a thread slowed by another process
# (or a late helper) leaves its blocks to the others.
BLOCKS_PER_THREAD = 4
# Seconds a caller waits for its helpers between two looks at them (a wake-up
# is lost only to an interrupt; the helpers' last block ends the wait at once).
_POLL = 0.05

_state = {"pool": None, "pid": None}
_state_lock = _threads.fork_safe_lock()
_running = threading.local()   # .calls: this thread's `run` calls in progress


class _Helpers:
    """`count` daemon threads that run the jobs put on one queue, one at a time."""

    def __init__(self, count):
        self._jobs = queue.SimpleQueue()
        for i in range(count):
            threading.Thread(target=self._serve, name=f"xent_{i}", daemon=True).start()

    def submit(self, job):
        """Queue `job` for the next idle helper: one C call, whole whatever interrupts."""
        self._jobs.put(job)

    def _serve(self):
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException:   # (a block's error is its call's: `_Blocks` keeps it)
                pass


def _helpers():
    """This process's pool of helper threads (`_threads.max_threads` - 1 of them)."""
    with _state_lock:
        if _state["pid"] != os.getpid():
            _state["pool"] = _Helpers(max(1, _threads.max_threads() - 1))
            _state["pid"] = os.getpid()
        return _state["pool"]


class _Blocks:
    """One call's blocks of rows, each run by whichever thread takes it first.

    The caller runs blocks until none is left, then waits for the helpers that
    joined in (`active`) to finish theirs (`helpers_done`). A helper joins only
    while the call is open, so once the caller has closed it, no helper joins
    any more, and the last one to leave releases `_idle`, which the caller
    waits on. Only the caller can be interrupted (Python delivers signals to
    the main thread), and every lock it takes is a plain one (module doc).
    """

    def __init__(self, rows, args, n, count):
        self._rows, self._args, self._n, self._count = rows, args, n, count
        self._taken, self._active, self.helped, self.closed = 0, 0, False, False
        self._lock = threading.Lock()
        self._idle = threading.Lock()   # released by the last helper to leave
        self.error = None
        self._pid = os.getpid()   # (a child forked mid-call has no helpers: `helpers_done`)
        self._finished = bytearray(count)   # (each block's byte written by its one thread)

    def _run_block(self, block, args):
        """Rows of `block`, then marked finished."""
        self._rows(*args, block * self._n // self._count, (block + 1) * self._n // self._count)
        self._finished[block] = 1

    def _next(self):
        """``(block, args)`` of the next block, or None once every block is taken, one
        has raised, or the call is closed (call with the lock held)."""
        if self._taken == self._count or self.error is not None or self.closed:
            return None
        self._taken += 1
        return self._taken - 1, self._args

    def _run_blocks(self, job):
        """Run `job` and the blocks after it; record the first error and stop all."""
        try:
            while job is not None:
                self._run_block(*job)
                job = self._take()
        except BaseException as exc:
            with self._lock:
                self.error = self.error or exc
            raise

    def help(self):
        """A helper's part: join while the call is open, run blocks, then leave."""
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
                if self._active == 0 and self._idle.locked():
                    self._idle.release()

    def work(self):
        """The caller's part: run blocks until none is left (a block's error raised)."""
        self._run_blocks(self._take())

    def _take(self):
        """`_next` under the lock; None in a child forked during the call, whose lock
        a helper of the parent may have held at the fork, for ever (the second
        diff review): `helpers_done` then reports the blocks left."""
        if os.getpid() != self._pid:
            return None
        with self._lock:
            return self._next()

    def helpers_done(self):
        """Whether no helper is still in a block, after waiting at most `_POLL` for the
        last to leave (the call closed first: none joins any more).

        In a child forked during the call (``os.fork`` in a signal handler, the
        child returning into the call) the helpers stayed in the parent, and the
        blocks they had taken are unfinished, perhaps half written (a kernel in
        place would read its own output if run again), as are those the caller
        no longer takes (`_take`): the call's error says so (the child waited
        for ever on them, an independent review)."""
        if os.getpid() != self._pid:
            if self.error is None and not all(self._finished):
                self.error = RuntimeError(
                    "xent: this process was forked (os.fork) during a call whose rows its "
                    "helper threads shared; their rows stayed with the parent, so the call "
                    "is incomplete here: make the call again in the child")
            return True
        with self._lock:
            if self._active == 0:
                return True
            self._idle.acquire(False)   # (held, so that the last helper's release wakes us)
        self._idle.acquire(timeout=_POLL)
        with self._lock:
            return self._active == 0

    def forget_args(self):
        """Drop the call's arguments (no helper is left to read them)."""
        self._args = None


def run(rows, args, n, threads):
    """Run ``rows(*args, lo, hi)`` over ``[0, n)`` on the calling thread and up to
    ``threads - 1`` helpers; return whether a helper took part (False: the
    caller ran every block, the helpers being busy or asleep throughout).

    `rows` is a ``nogil`` row kernel whose rows are independent. When it
    returns or raises, no thread is still running a block of this call,
    wherever an interrupt lands (one that lands while it waits for its
    helpers is raised once they are done; only a second one landing on the
    wait's loop back to its start, where CPython attributes it to the
    statement before the loop, can still cut the wait short). A call made
    while this thread is already in one (from a signal handler) runs alone.
    """
    blocks = _Blocks(rows, args, n, min(n, threads * BLOCKS_PER_THREAD))
    depth = getattr(_running, "calls", 0)
    _running.calls = depth + 1
    try:
        if depth == 0:
            _start_helpers(blocks, threads - 1)
        blocks.work()
    finally:
        # (inline, not a function: an interrupt at a function's entry would skip the wait)
        _running.calls = depth
        blocks.closed = True   # (a store: no interrupt lands inside it)
        interrupt, done = None, False
        while not done:
            try:
                done = blocks.helpers_done()
            except BaseException as exc:   # (a signal: wait on, then raise it)
                interrupt = interrupt or exc
        blocks.forget_args()
        if interrupt is not None:
            raise interrupt
    if blocks.error is not None:   # (a helper's block's error; the caller's came out of work)
        raise blocks.error
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
