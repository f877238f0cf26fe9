"""Plain or streamed stores for a large gradient into a separate buffer: timed, then kept.

A gradient into a buffer larger than the caches can be written with plain
stores (each destination line is read before it is written) or streamed
(`xent._fused._stream`: non-temporal stores, no read). Which is faster
depends on the machine, by more than either one gains. 8192x32000 float32
into a warm buffer, ms, plain / streamed (`python bench/streamed_gradient.py`):

    AMD EPYC Zen 3, 2 vCPUs (AVX2)                    80.3 / 73.9  (memcpy 51)
    Intel Xeon, Emerald Rapids, 16 threads (AVX-512)  28.4 / 25.6  (memcpy 27.0)
    AMD EPYC Zen 4, 2 vCPUs (AVX-512)                 86.6 / 122.5 (memcpy 66.9)
    the same Zen 4, kernels compiled for haswell      87.5 / 118.3 (memcpy 50.3)

(Those figures predate cache-line cuts in the streamed kernel, `_stream.stream_to`: in
NumPy's buffers, 16 bytes into a line, it wrote one line in 32 partly streamed and
partly plain. Intel Xeon rocketlake, 2 vCPUs, AVX-512: 77 -> 57 ms streamed, memcpy 42.)
Both kernels give the same bits, so xent times its own first large calls
and keeps the faster kind (`StoreChoice`), once per process: eight calls of
one size (two untimed, three of each kind timed).
"""
import math

from xent import _threads

__all__ = ["StoreChoice"]


class StoreChoice:
    """Which kind of store a large gradient into a buffer gets, from timed calls.

    The first large call fixes the signature that is timed (the gradient's
    dtype and size: a byte of one size is not a byte of another near the
    caches' sizes). Calls of that signature then run, in turn: one plain and
    one streamed call, untimed (each pays for compiling or loading its
    kernel, and for faulting in a fresh buffer); then streamed and plain
    calls, each timed (`record`, seconds per byte of gradient), the kind
    with fewer times first, until each has `TRIALS` times; then the kind with
    the lower best time is kept for every call of the process (``streamed``).
    Best rather than median: noise on a busy machine only adds time. Calls
    of other signatures run plain, untimed, until a kind is kept.

    A timed call that could not run on its threads (another call held them)
    is not recorded, and its kind is tried again. Calls from several Python
    threads at once are counted under a lock.
    """

    TRIALS = 3

    def __init__(self):
        self._lock = _threads.fork_safe_lock()
        # Marks a thread in `_lock`: a call made then (a signal handler's) stores plainly, untimed.
        self._inside = _threads.ThreadMark()
        self._signature = None
        self._untimed = 0   # untimed first calls handed out: plain, then streamed
        self._best = {False: math.inf, True: math.inf}
        self._timed = {False: 0, True: 0}
        self.streamed = None   # the kept choice: None while still timing

    def next_kind(self, signature):
        """``(streamed, timed)``: the kind of store for the next large call, whose
        gradient has `signature` (any hashable, e.g. ``(dtype, nbytes)``), and
        whether to time it and hand the time to `record`."""
        if self.streamed is not None:
            return self.streamed, False
        if self._inside:
            return False, False
        with self._inside, self._lock:
            if self._signature is None:
                self._signature = signature
            if signature != self._signature:
                return False, False
            if self._untimed < 2:
                self._untimed += 1
                return self._untimed == 2, False
            return self._timed[True] <= self._timed[False], True

    def record(self, streamed, seconds, nbytes):
        """Take the time of one timed call of `streamed` kind that wrote `nbytes`
        of gradient; keep a kind once both have `TRIALS` times."""
        if self._inside:
            return
        with self._inside, self._lock:
            self._best[streamed] = min(self._best[streamed], seconds / max(nbytes, 1))
            self._timed[streamed] += 1
            if self.streamed is None and min(self._timed.values()) >= self.TRIALS:
                self.streamed = self._best[True] < self._best[False]

    def best_ms_per_gib(self):
        """``{"plain": ms, "streamed": ms}``: each kind's best time per GiB of gradient."""
        return {("streamed" if k else "plain"): round(v * 2**30 * 1e3, 1)
                for k, v in self._best.items()}

    def __repr__(self):
        return (f"StoreChoice(streamed={self.streamed}, best_ms_per_gib={self.best_ms_per_gib()}, "
                f"timed={self._timed})")
