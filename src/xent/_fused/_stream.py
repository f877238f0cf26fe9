"""A gradient streamed to memory: row i's entries stored without reading their
cache lines first, while pass A computes row i + 1.

Into a separate buffer larger than the caches, a plain store to a line not
in cache first reads it: the gradient moves 3 bytes per byte of logits,
where the in-place kernel moves 2. A non-temporal store (`stream_scaled`)
skips that read, but a burst of them fills the core's store queue and stalls
it (a whole row streamed after pass B, or chunk by chunk: slower than plain
stores, AMD Zen 3, session 8). So the streamed kernel keeps each row's exps
in one of two scratch rows, and stores row i - 1's gradient one `PIECE` at a
time, between the pieces of row i's pass A (`stream_to`):

    out_{i-1, j} = e_{i-1, j} f_c  [- w y_{i-1, j}]   (f_c: the chunk's `chunk_factor`)

the same products, rounded once, as pass B's (the bracket: dense targets
y, with the row's weight w). A pending row is a tuple ``(out_row, e_row,
factors, done, targets)``: its gradient row, its exps, its per-chunk
factors, ``done[0]``, how many of its entries are stored (from the first
on), and its targets ``(y row, w)`` (None: sparse labels, whose label entry
the row kernel stores). None stands for no pending row, in every other kernel.

8192x32000 float32 into a buffer, 2 threads, AMD Zen 3: 78-86 ms with plain
stores, 72-76 ms streamed (memcpy of the logits 49-53 ms); on a Zen 4, 87 ms
plain and 123 ms streamed. When to stream is `xent._fused._launch.store_kind`'s
choice, by timing (`xent._fused._stores`).
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from xent._fused._cuts import CHUNK
from xent._fused._formats import like, tiny
from xent._fused._llvm import STREAM_BYTES, stream_scaled, stream_scaled_less, vectorise_wide
from xent._fused._options import INLINE, LLVM_INLINE
from xent._fused._scale import scale_entries

__all__ = ["stream_to", "aligned_run"]

_U0, _BYTES = np.uint64(0), np.uint64(STREAM_BYTES)
# A cache line: where a pending row's stores may stop between two pieces.
_LINE = np.uint64(64)


@njit(**INLINE)
def aligned_run(out, lo, hi):
    """(first, last): the longest run [first, last) inside [lo, hi) of whole
    `STREAM_BYTES`-aligned blocks of out's memory; an empty run (hi, hi) when
    out's elements are not aligned to their own size."""
    size = np.uint64(out.itemsize)
    start = np.uint64(out.ctypes.data) + lo * size
    if start % size != _U0:
        return hi, hi
    first = min(lo + (_BYTES - start % _BYTES) % _BYTES // size, hi)
    lanes = _BYTES // size
    return first, first + (hi - first) // lanes * lanes


@njit(**INLINE)
def line_start(out, j):
    """The largest index k <= j at which out[k] starts a cache line (`_LINE`
    bytes) of out's memory, or 0 where none does; j itself when out's
    elements are not aligned to their own size (then none is streamed)."""
    size = np.uint64(out.itemsize)
    into = (np.uint64(out.ctypes.data) + j * size) % _LINE
    return j if into % size != _U0 else j - min(into // size, j)


@njit(**INLINE)
def _stream_entries(out, e, y, lo, hi, factor):
    """out_j = e_j factor (minus w y_j with dense targets y = (row, w)) for j
    in [lo, hi), with non-temporal stores for the aligned run inside
    (`aligned_run`) and plain ones (`scale_entries`) at its ends, or
    throughout for a factor below the smallest normal float in magnitude (or
    NaN: a NaN weight)."""
    if not abs(factor) >= tiny(e[0]):
        scale_entries(e, y, out, lo, hi, factor)
        return
    first, last = aligned_run(out, lo, hi)
    lanes = _BYTES // np.uint64(out.itemsize)
    f = like(factor, e[0])
    scale_entries(e, y, out, lo, first, factor)
    for j in range(first, last, lanes):
        _stream_block(out, e, y, j, f)
    scale_entries(e, y, out, last, hi, factor)


def _stream_block(out, e, y, j, f):
    """One non-temporal store at out[j]: `stream_scaled`, or `stream_scaled_less`
    with dense targets y = (row, w) (numba only)."""


@overload(_stream_block, jit_options=LLVM_INLINE)
def _stream_block_impl(out, e, y, j, f):
    if isinstance(y, types.NoneType):
        return lambda out, e, y, j, f: stream_scaled(out, e, j, f)
    return lambda out, e, y, j, f: stream_scaled_less(out, e, j, f, y[0], like(y[1], f))


@njit(**INLINE)
def _block_start(out, j):
    """The largest index k <= j at which out[k] starts a `STREAM_BYTES` block of
    out's memory, or 0 where none does; j itself when out's elements are not
    aligned to their size."""
    size = np.uint64(out.itemsize)
    into = (np.uint64(out.ctypes.data) + j * size) % _BYTES
    return j if into % size != _U0 else j - min(into // size, j)


@njit(**INLINE)
def _stream_run(out, e, y, factors, lo, hi):
    """out_j = e_j f_c (minus w y_j) for j in [lo, hi), chunk by chunk.

    Where a chunk ends inside a `STREAM_BYTES` block of out (out not aligned
    to one), that block's exps are first scaled in e by their own chunks'
    factors (the products pass B would round), and the block is streamed with
    a factor of 1, the same bits: so no line inside a row is left half
    streamed and half written by plain stores (each such line costs a read of
    it from memory). A row's first and last lines, and a sparse row's label
    entry (stored after the row), still take plain stores: about 3 lines in
    2000 of a 32000-class float32 row.
    """
    lanes = _BYTES // np.uint64(out.itemsize)
    while lo < hi:
        c = lo // CHUNK
        end = min(hi, (c + np.uint64(1)) * CHUNK)
        cut = _block_start(out, end) if end < hi else end
        if cut < lo or cut + lanes > hi:
            cut = end
        _stream_entries(out, e, y, lo, cut, factors[c])
        lo = end
        if cut < end:
            scale_entries(e, None, e, cut, end, factors[c])
            scale_entries(e, None, e, end, cut + lanes, factors[c + 1])
            _stream_entries(out, e, y, cut, cut + lanes, 1.0)
            lo = cut + lanes


def stream_to(pending, hi):
    """Store the pending row's gradient entries up to `hi` (those from ``done[0]``
    on), and move ``done[0]`` there; nothing when `pending` is None (numba only).

    Short of the row's end, the stores stop at the cache line `hi` falls in
    (`line_start`), so that no line is written by two calls: the line's first
    entries streamed, its last ones plain stores (or streamed half a piece
    later, after its write-combining buffer left). Gradient rows that do not
    start on a line (NumPy's arrays start 16 bytes into one) wrote such a
    line at each piece's end: 8192x32000 float32 into a buffer 16 bytes into
    a line, 2 threads, Intel Xeon (rocketlake, AVX-512), 77 ms; into one
    aligned to a line, 57 ms (memcpy 42).
    """


@overload(stream_to, jit_options=LLVM_INLINE)
def _stream_to_impl(pending, hi):
    if isinstance(pending, types.NoneType):
        return lambda pending, hi: None

    def store_up_to(pending, hi):
        vectorise_wide()
        out, e, factors, done, y = pending
        if hi < np.uint64(out.shape[0]):
            hi = line_start(out, hi)
        if hi > done[0]:
            _stream_run(out, e, y, factors, done[0], hi)
            done[0] = hi
    return store_up_to
