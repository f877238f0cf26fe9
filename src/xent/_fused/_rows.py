"""The chunk path's kernels: a range of rows per need.

Each kernel (``*_rows``) runs one need over rows ``[lo, hi)`` of a ``[N, C]``
C-contiguous array, row by row (`xent._fused._one_row`): a loss alone, a
gradient into a separate buffer (float32/float64 ones also ``*_streamed``:
each row's gradient stored during the next row's pass A,
`xent._fused._stream`), or a gradient over the logits themselves
(``*_inplace``).
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from xent._fused._borrow import borrowed, keep_alive
from xent._fused._chunks import CHUNK, chunk_stats
from xent._fused._llvm import flush_denormals, restore_denormals, store_fence, vectorise_wide
from xent._fused._one_row import dense_row_grad, dense_row_grad_later, dense_row_loss, \
    sparse_row_grad, sparse_row_grad_later, sparse_row_loss
from xent._fused._options import INLINE, KERNEL, LLVM_INLINE
from xent._fused._scale import fill_nan
from xent._fused._stream import stream_to

__all__ = ["sparse_loss_rows", "sparse_grad_rows", "sparse_grad_rows_inplace",
           "sparse_grad_rows_streamed",
           "dense_loss_rows", "dense_grad_rows", "dense_grad_rows_streamed",
           "dense_grad_rows_inplace"]


# --- where pass A keeps the exps ----------------------------------------------------------------

def _exp_scratch(x, out):
    """Where pass A keeps exps when `out` cannot: a float32 row, else an empty one (numba only)."""


def _exp_row(out_row, scratch):
    """The row pass A keeps exps in: `out_row` if it holds the accumulator dtype, else `scratch`."""


def _save_chunk(x):
    """Where an in-place kernel saves a chunk of x that pass A may sweep again:
    a chunk-sized array when x holds the accumulator dtype (its exps then
    overwrite it), else None (numba only)."""


def _holds_accumulator(out, x):
    """Whether numba array type `out` stores x's accumulator dtype exactly."""
    return out.dtype == (types.float64 if x.dtype == types.float64 else types.float32)


# These return arrays, and are inlined by LLVM (`_options.LLVM_INLINE`), not
# numba: numba's own IR inliner lost a store through the returned row here
# (the label's gradient).
@overload(_exp_scratch, jit_options=LLVM_INLINE)
def _exp_scratch_impl(x, out):
    if _holds_accumulator(out, x):
        return lambda x, out: np.empty(0, np.float32)
    return lambda x, out: np.empty(x.shape[1], np.float32)


@overload(_exp_row, jit_options=LLVM_INLINE)
def _exp_row_impl(out_row, scratch):
    if out_row.dtype in (types.float32, types.float64):
        return lambda out_row, scratch: out_row
    return lambda out_row, scratch: scratch


@overload(_save_chunk, jit_options=LLVM_INLINE)
def _save_chunk_impl(x):
    if x.dtype in (types.float32, types.float64):
        dtype = np.float64 if x.dtype == types.float64 else np.float32
        return lambda x: np.empty(int(CHUNK), dtype)
    return lambda x: None


@njit(**INLINE)
def _next_row(x, i):
    """Row i + 1 of x (row i for the last): where pass A's prefetches run on to past row i's end."""
    return x[i + 1 if i + 1 < x.shape[0] else i]


@njit(**INLINE)
def _next_rows(x, y, i):
    """(`_next_row` of x, the next row of targets y, which have 1 or N rows)."""
    return _next_row(x, i), _target(y, i + 1 if i + 1 < x.shape[0] else i)


@njit(**INLINE)
def weight(weights, i):
    """Row i's weight as float64: weights has N entries, or 1 for every row."""
    return np.float64(weights[i if weights.shape[0] > 1 else 0])


@njit(**INLINE)
def _target(y, i):
    """Row i of the dense targets, which have 1 or N rows."""
    return y[i if y.shape[0] > 1 else 0]


# --- a range of rows, per need ------------------------------------------------------------------
#
# `fetch`: what pass A prefetches ahead, into the next row: the bits
# `FETCH_LOGITS` and (dense targets) `FETCH_TARGETS` of `xent._fused._fetch`,
# chosen per CPU, need and size by `xent._fused._launch.fetch_bits`.

@njit(**KERNEL)
def sparse_loss_rows(x, labels, loss, lse, fetch, lo, hi):
    """loss[i], lse[i] for rows i in [lo, hi) of logits x ``[N, C]`` and labels ``[N]``."""
    vectorise_wide()
    x = borrowed(x)   # (`_borrow`: its views count no references, nor those of st)
    stats = chunk_stats(x)
    st = borrowed(stats)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for i in range(lo, hi):
        loss[i], lse[i] = sparse_row_loss(x[i], labels[i], st, _next_row(x, i), fetch)
    keep_alive(stats)
    restore_denormals(word)


@njit(**KERNEL)
def sparse_grad_rows(x, labels, weights, out, loss, lse, fetch, lo, hi):
    """As `sparse_loss_rows`, and out[i] = w_i (softmax(x[i]) - one_hot(labels[i]))
    with w_i = `weight`(weights, i)."""
    vectorise_wide()
    x, out = borrowed(x), borrowed(out)   # (`_borrow`)
    stats, scratch_row = chunk_stats(x), _exp_scratch(x, out)
    st, scratch = borrowed(stats), borrowed(scratch_row)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for i in range(lo, hi):
        row = out[i]
        loss[i], lse[i] = sparse_row_grad(x[i], labels[i], weight(weights, i), row,
                                          _exp_row(row, scratch), None,
                                          st, _next_row(x, i), fetch, _next_row(out, i))
    keep_alive((stats, scratch_row))
    restore_denormals(word)


@njit(**KERNEL)
def sparse_grad_rows_streamed(x, labels, weights, out, loss, lse, fetch, lo, hi):
    """As `sparse_grad_rows`, for float32 or float64 logits and `out` of their
    dtype, with each row's gradient stored by `xent._fused._stream` during
    the next row's pass A (non-temporal stores: for an `out` larger than the
    caches). The same bits as `sparse_grad_rows`."""
    vectorise_wide()
    if lo >= hi:
        return
    x, out = borrowed(x), borrowed(out)   # (`_borrow`)
    n = np.uint64(x.shape[1])
    stats = chunk_stats(x)
    kept = np.empty((2, x.shape[1]), out.dtype)        # two rows' exps: row i's in kept[i % 2]
    scales = np.empty((2, stats.shape[1]), np.float64)  # and their per-chunk factors
    stored = np.full(1, n, np.uint64)                   # entries of the pending row stored
    st, e, f, done = borrowed(stats), borrowed(kept), borrowed(scales), borrowed(stored)
    label, at_label = -1, out[lo, 0]                    # the pending row's (label -1: none)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for i in range(lo, hi + 1):
        previous = (out[max(i - 1, lo)], e[(i + 1) % 2], f[(i + 1) % 2], done, None)
        ok = False
        if i < hi:
            ok, loss[i], lse[i], g = sparse_row_grad_later(
                x[i], labels[i], weight(weights, i), e[i % 2], f[i % 2], st, _next_row(x, i),
                fetch, previous)
        if label >= 0:
            stream_to(previous, n)
            out[i - 1, label] = at_label
        label = -1
        if ok:
            done[0], label, at_label = 0, labels[i], g
        elif i < hi:
            fill_nan(out[i], x[i, 0])
    store_fence()
    keep_alive((stats, kept, scales, stored))
    restore_denormals(word)


@njit(**KERNEL)
def sparse_grad_rows_inplace(x, labels, weights, loss, lse, fetch, lo, hi):
    """As `sparse_grad_rows` with out = x: the gradient overwrites the logits."""
    vectorise_wide()
    x = borrowed(x)   # (`_borrow`)
    stats, scratch_row, saved = chunk_stats(x), _exp_scratch(x, x), _save_chunk(x)
    st, scratch, save = borrowed(stats), borrowed(scratch_row), borrowed(saved)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for i in range(lo, hi):
        row = x[i]
        loss[i], lse[i] = sparse_row_grad(row, labels[i], weight(weights, i), row,
                                          _exp_row(row, scratch), save, st, _next_row(x, i),
                                          fetch, None)
    keep_alive((stats, scratch_row, saved))
    restore_denormals(word)


@njit(**KERNEL)
def dense_loss_rows(x, y, loss, lse, fetch, lo, hi):
    """loss[i], lse[i] for rows i in [lo, hi) of logits x ``[N, C]`` and targets y ``[1 or N, C]``."""
    vectorise_wide()
    x, y = borrowed(x), borrowed(y)   # (`_borrow`)
    stats = chunk_stats(x)
    st = borrowed(stats)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for i in range(lo, hi):
        loss[i], lse[i] = dense_row_loss(x[i], _target(y, i), st, _next_rows(x, y, i), fetch)
    keep_alive(stats)
    restore_denormals(word)


@njit(**KERNEL)
def dense_grad_rows(x, y, weights, out, loss, lse, fetch, lo, hi):
    """As `dense_loss_rows`, and out[i] = w_i (softmax(x[i]) - y[i]) with w_i =
    `weight`(weights, i). Pass A prefetches the logits only: prefetching the
    targets too cost these plain stores 9-10% on 256 rows of 32000, 0-4% on
    1024 (Intel Xeon (Emerald Rapids), 2 threads), and gained nothing at 8192."""
    vectorise_wide()
    x, y, out = borrowed(x), borrowed(y), borrowed(out)   # (`_borrow`)
    stats, scratch_row = chunk_stats(x), _exp_scratch(x, out)
    st, scratch = borrowed(stats), borrowed(scratch_row)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for i in range(lo, hi):
        row = out[i]
        loss[i], lse[i] = dense_row_grad(x[i], _target(y, i), weight(weights, i), row,
                                         _exp_row(row, scratch), None, st,
                                         (_next_row(x, i), None), fetch, _next_row(out, i))
    keep_alive((stats, scratch_row))
    restore_denormals(word)


@njit(**KERNEL)
def dense_grad_rows_streamed(x, y, weights, out, loss, lse, fetch, lo, hi):
    """As `dense_grad_rows`, for float32 or float64 logits and `out` (and y) of
    their dtype, with each row's gradient stored by `xent._fused._stream`
    during the next row's pass A, as `sparse_grad_rows_streamed`. The same
    bits as `dense_grad_rows`."""
    vectorise_wide()
    if lo >= hi:
        return
    x, y, out = borrowed(x), borrowed(y), borrowed(out)   # (`_borrow`)
    n = np.uint64(x.shape[1])
    stats = chunk_stats(x)
    kept = np.empty((2, x.shape[1]), out.dtype)        # two rows' exps: row i's in kept[i % 2]
    scales = np.empty((2, stats.shape[1]), np.float64)  # and their per-chunk factors
    stored = np.full(1, n, np.uint64)                   # entries of the pending row stored
    st, e, f, done = borrowed(stats), borrowed(kept), borrowed(scales), borrowed(stored)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for i in range(lo, hi + 1):
        before = max(i - 1, lo)
        previous = (out[before], e[(i + 1) % 2], f[(i + 1) % 2], done,
                    (_target(y, before), weight(weights, before)))
        ok = False
        if i < hi:
            ok, loss[i], lse[i] = dense_row_grad_later(
                x[i], _target(y, i), weight(weights, i), e[i % 2], f[i % 2], st,
                _next_rows(x, y, i), fetch, previous)
        stream_to(previous, n)
        if ok:
            done[0] = 0
        elif i < hi:
            fill_nan(out[i], x[i, 0])
    store_fence()
    keep_alive((stats, kept, scales, stored))
    restore_denormals(word)


@njit(**KERNEL)
def dense_grad_rows_inplace(x, y, weights, loss, lse, fetch, lo, hi):
    """As `dense_grad_rows` with out = x: the gradient overwrites the logits."""
    vectorise_wide()
    x, y = borrowed(x), borrowed(y)   # (`_borrow`)
    stats, scratch_row, saved = chunk_stats(x), _exp_scratch(x, x), _save_chunk(x)
    st, scratch, save = borrowed(stats), borrowed(scratch_row), borrowed(saved)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for i in range(lo, hi):
        row = x[i]
        loss[i], lse[i] = dense_row_grad(row, _target(y, i), weight(weights, i), row,
                                         _exp_row(row, scratch), save, st,
                                         _next_rows(x, y, i), fetch, None)
    keep_alive((stats, scratch_row, saved))
    restore_denormals(word)
