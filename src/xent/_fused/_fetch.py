"""Software prefetches: pass A's of the logits ahead, pass B's of a half-precision buffer.

Pass A reads each logit from memory once. Left to the hardware, the row
streams in only as fast as the exp loop asks for it, and the loop then waits
on memory as long as it computes: a float32 loss took the read's time plus
the exps' (8192x32000, 2 threads, Intel Xeon (Emerald Rapids): 60-63 ms,
against a 31-33 ms read and about 30 ms of exps in cache). So before each
piece of a chunk (`xent._fused._cuts.piece_of`), pass A prefetches the lines
`FETCH_BYTES` further on (`fetch_ahead`), past the row's end into the next
row. Spread over the pieces, the requests keep memory busy while the exps
compute. The same lines asked for in one burst per chunk, from the next row
(the scheme before), stalled the loop on the core's few outstanding misses:

    8192x32000 float32, 2 threads, Intel Xeon (Emerald Rapids), ms, one process:
                burst per chunk   per piece, 8 KB ahead   memcpy / read
    loss             63             43-45                  --  / 31-33
    in place         75             53-60                  44-47 / --

Whether pass A prefetches at all is a run-time choice per CPU and need
(`xent._fused._launch.fetches_ahead`); dense targets are prefetched too on
large calls (`FETCH_TARGETS`), but for a gradient into a buffer with plain
stores (`xent._fused._rows.dense_grad_rows`).
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from xent._fused._formats import HALF_FORMATS
from xent._fused._llvm import prefetch
from xent._fused._options import INLINE, LLVM_INLINE

__all__ = ["FETCH_BYTES", "FETCH_LOGITS", "FETCH_TARGETS", "fetch_ahead",
           "prefetch_half_chunk"]

# How far ahead of the piece it computes on pass A prefetches (8192x32000
# float32, 2 threads, Intel Xeon (Emerald Rapids), medians of 9, in place /
# loss, ms: 1024 floats ahead 57-63 / 48-51, 2048: 56-66 / 45-53, 4096:
# 60-63 / 51, a whole row: 67-69 / 51-52, with memcpy 44-50 in each run; in
# another pair of runs 4 KB 51-54 / 41-44, 16 KB 49-54 / 38-43). 4 to 16 KB
# are alike within this VM's noise; a whole row is slower in place.
FETCH_BYTES = 8192
_LINE = 64

# What pass A prefetches, as the bits of the kernels' `fetch` argument: the
# logits, and dense targets too. The targets are prefetched on large calls
# only (`xent._fused._launch.fetch_bits`): 8192x32000 float32, 2 threads,
# Intel Xeon (Emerald Rapids), ms, with / without: loss 77 / 85, in place 95
# / 102, streamed into a buffer 113 / 127 (memcpy 46); but 256x32000 lost
# 2-5%, and rows in cache (16x32000, one thread) 1-4% in float32, 4-13% in
# float64 and bfloat16.
FETCH_LOGITS, FETCH_TARGETS = 1, 2


@njit(**INLINE)
def _fetch_row(x, ahead, lo, hi):
    """Prefetch the lines `FETCH_BYTES` past x[lo:hi] (a row), running on into
    the row `ahead` past x's end. Rows shorter than the distance prefetch
    `ahead` at the same place."""
    n = np.uint64(x.shape[0])
    size = np.uint64(x.itemsize)
    d = min(np.uint64(FETCH_BYTES) // size, n)
    for j in range(lo + d, hi + d, np.uint64(_LINE) // size):
        if j < n:
            prefetch(x, j)
        else:
            prefetch(ahead, j - n)


def _fetch_targets(y, ahead, lo, hi):
    """`_fetch_row` of a dense target row y (and its next row `ahead`); nothing
    for sparse labels (y None) or where the kernel leaves the targets to the
    hardware (`ahead` None) (numba only)."""


@overload(_fetch_targets, jit_options=LLVM_INLINE)
def _fetch_targets_impl(y, ahead, lo, hi):
    if isinstance(y, types.NoneType) or isinstance(ahead, types.NoneType):
        return lambda y, ahead, lo, hi: None
    return lambda y, ahead, lo, hi: _fetch_row(y, ahead, lo, hi)


@njit(**INLINE)
def fetch_ahead(x, y, fetching, lo, hi):
    """Prefetch the lines `FETCH_BYTES` past x[lo:hi] (a row), into the next
    row past x's end, if ``fetch & FETCH_LOGITS``, and the same of the dense
    targets y (None: sparse labels) if ``fetch & FETCH_TARGETS``;
    `fetching` is ``((next row of x, next row of y or None), fetch)``.

    The next row of the last row is itself: its lines are in cache already.
    """
    (ahead_x, ahead_y), fetch = fetching
    if fetch & FETCH_LOGITS:
        _fetch_row(x, ahead_x, lo, hi)
    if fetch & FETCH_TARGETS:
        _fetch_targets(y, ahead_y, lo, hi)


def prefetch_half_chunk(ahead, lo, hi):
    """Prefetch ahead[lo:hi] (64-byte lines) if `ahead` is a half-precision row,
    else nothing (numba only).

    Pass B prefetches the next row of a separate gradient buffer, so that
    its stores find their lines in cache: bfloat16 55 -> 47 ms on AMD Zen 4
    (8192x32000); float32 gets slower (138 -> 162 ms on an Intel Xeon
    (Rocket Lake)).
    """


@overload(prefetch_half_chunk, jit_options=LLVM_INLINE)
def _prefetch_half_chunk_impl(ahead, lo, hi):
    if isinstance(ahead, types.NoneType) or ahead.dtype not in HALF_FORMATS:
        return lambda ahead, lo, hi: None
    per_line = np.uint64(_LINE // (ahead.dtype.bitwidth // 8))

    def prefetch_lines(ahead, lo, hi):
        for k in range(lo, hi, per_line):
            prefetch(ahead, k)
    return prefetch_lines
