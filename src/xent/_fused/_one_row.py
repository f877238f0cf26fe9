"""One row of the chunk path, per need: its loss, its gradient, or its gradient left to store.

Each is pass A and the combine of `xent._fused._chunks` and (for a gradient
written here) pass B of `xent._fused._pass_b`, with the loss:

    sparse:  loss = log S - (x_label - M),        lse = M + log S
    dense:   loss = sum_j y_j (log S - (x_j - M)), lse = M + log S
    grad_j   = w_i (softmax_j - y_j)  (sparse: y = one_hot(label); w_i the
               row's weight, 1 for TensorFlow's backprop)

The ``*_later`` forms leave the gradient to the streamed kernels of
`xent._fused._rows` (`xent._fused._stream`): instead of writing it, they
keep the row's exps and per-chunk factors in the caller's arrays, and say
whether there is a gradient to store. A NaN row (a NaN, a ``+inf``, all
``-inf``; sparse: a label outside [0, C)) has a NaN loss and lse; the
``*_grad`` forms fill its gradient with NaN, the range kernels do it for
the ``*_later`` ones.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from xent._fused._chunks import combine, combine_targets, exp_pass, infinite_loss
from xent._fused._exps import exp
from xent._fused._formats import like, load, store
from xent._fused._llvm import fmuladd, is_finite, label_loss
from xent._fused._math import log_of_sum
from xent._fused._options import INLINE, LLVM_INLINE
from xent._fused._pass_b import chunk_factor, rescale
from xent._fused._scale import fill_nan

__all__ = ["sparse_row_loss", "sparse_row_grad", "sparse_row_grad_later", "label_entry",
           "dense_row_loss", "dense_row_grad", "dense_row_grad_later"]


def _log_total(total, x):
    """log of a row's sum of exps `total` (float64, >= 1), as precise as x's loss needs
    (numba only): `log_of_sum` (to 2e-11, inline) where the loss is float32,
    libm's log for float64 logits. The libm call took 8-13% of a float32
    loss on rows of 100 classes (AMD Zen 4)."""


@overload(_log_total, jit_options=LLVM_INLINE)
def _log_total_impl(total, x):
    if x.dtype == types.float64:
        return lambda total, x: np.log(total)
    return lambda total, x: log_of_sum(total)


@njit(**INLINE)
def _sparse_row_pass_a(x, label, e, save, st, next_x, fetch, pending):
    """Pass A and the combine of a row with a label: (ok, x_label, M, S). Not ok
    (and x_label NaN) for a label outside [0, C) or a NaN row (a NaN, a
    ``+inf``, all ``-inf``). x_label is read before pass A, which may write
    the exps over x; e, save, next_x, fetch and pending go to `exp_pass`."""
    nan = like(np.nan, load(x, 0))
    ok = 0 <= label < x.shape[0]
    x_label = load(x, label) if ok else nan
    if not (ok and exp_pass(x, None, e, save, st, (next_x, None), fetch, pending)):
        return False, nan, np.nan, np.nan
    top, total = combine(x, None, st)
    if top == -np.inf:
        return False, nan, np.nan, np.nan
    return True, x_label, top, total


@njit(**INLINE)
def sparse_row_loss(x, label, st, next_x, fetch):
    """(loss, lse) of one row; NaN for a NaN, a ``+inf``, all ``-inf`` or a label outside [0, C)."""
    ok, x_label, top, total = _sparse_row_pass_a(x, label, None, None, st, next_x, fetch, None)
    if not ok:
        return x_label, x_label
    log_s = _log_total(total, x)
    return label_loss(log_s, x_label, top), top + log_s


@njit(**INLINE)
def label_entry(x_label, m, w, inv_s):
    """The gradient at the label, w softmax_label - w = exp(x_label - M) w / S - w
    (inv_s = w / S, float64), as one float64 multiply-add rounded once to x's
    precision (`fmuladd`: fused where the CPU has FMA, so that every kernel
    rounds it alike whatever LLVM contracts around it). In float64, a
    confident row's entry (label the max, exp 1, S just above 1) keeps the
    -w (S - 1) / S that float32's 1/S rounds to a multiple of 6e-8."""
    return like(fmuladd(np.float64(exp(x_label - m)), inv_s, -w), m)


@njit(**INLINE)
def sparse_row_grad(x, label, w, out, e, save, st, next_x, fetch, next_out):
    """As `sparse_row_loss`, writing w (softmax(x) - onehot(label)) into out (may be x).

    `w` (float64) is the row's weight: 1 for TensorFlow's backprop, else the
    factor of a reduction (1/count for a mean), folded into pass B's scale.
    `e` is where pass A keeps the exps: out itself, or a float32 row when out
    is half precision (so that each gradient entry is rounded once); `save`
    holds a chunk of x when e is x, else None. `next_x` is the next row of
    logits, where pass A's prefetches run on to if `fetch`, and `next_out` the next row
    of a separate gradient buffer (None in place), prefetched during pass B.
    """
    ok, x_label, top, total = _sparse_row_pass_a(x, label, e, save, st, next_x, fetch, None)
    if not ok:
        fill_nan(out, x_label)
        return x_label, x_label
    inv_s = w / total
    rescale(e, None, out, st, top, inv_s, next_out)
    m = like(top, x_label)
    store(out, label, label_entry(x_label, m, w, inv_s))
    log_s = _log_total(total, x)
    return label_loss(log_s, x_label, m), top + log_s


@njit(**INLINE)
def sparse_row_grad_later(x, label, w, e, factors, st, next_x, fetch, pending):
    """As `sparse_row_grad`, with the gradient left for `xent._fused._stream`
    to store: (ok, loss, lse, the label's gradient entry). e receives the
    row's exps and factors its per-chunk factors (`chunk_factor`), while pass
    A stores the `pending` row's gradient. Not ok: a NaN row, nothing left to store.
    """
    ok, x_label, top, total = _sparse_row_pass_a(x, label, e, None, st, next_x, fetch, pending)
    if not ok:
        return False, x_label, x_label, x_label
    inv_s = w / total
    for c in range(st.shape[1]):
        factors[c] = chunk_factor(st, c, top, inv_s)
    m = like(top, x_label)
    at_label = label_entry(x_label, m, w, inv_s)
    log_s = _log_total(total, x)
    return True, label_loss(log_s, x_label, m), top + log_s, at_label


@njit(**INLINE)
def _dense_row_pass_a(x, y, e, save, st, ahead, fetch, pending):
    """Pass A, the combine and the targets' sums of a row against targets y:
    (ok, M, S, sum_j y_j, sum_j y_j (x_j - M)). Not ok for a NaN row (a NaN, a
    ``+inf``, all ``-inf``); e, save, ahead, fetch and pending go to `exp_pass`."""
    if not exp_pass(x, y, e, save, st, ahead, fetch, pending):
        return False, np.nan, np.nan, np.nan, np.nan
    top, total = combine(x, y, st)
    if top == -np.inf:
        return False, np.nan, np.nan, np.nan, np.nan
    sy, syx = combine_targets(st, top)
    return True, top, total, sy, syx


@njit(**INLINE)
def _dense_loss(x, top, total, sy, syx):
    """(loss, lse) of a row from its pass A: sum_j y_j (lse - x_j) = log S sum_j y_j
    - sum_j y_j (x_j - M), and lse = M + log S; where sum_j y_j is not finite,
    (sy, syx) are `combine_targets`' (end, under), and the loss `infinite_loss`'."""
    log_s = _log_total(total, x)
    if not is_finite(sy):
        return infinite_loss(sy, syx, top, total, x), top + log_s
    return log_s * sy - syx, top + log_s


@njit(**INLINE)
def dense_row_loss(x, y, st, ahead, fetch):
    """(loss, lse) of one row against targets y: sum_j y_j (lse - x_j). `ahead`
    is (the next row of logits, the next row of targets), where pass A's
    prefetches run on to if `fetch`."""
    ok, top, total, sy, syx = _dense_row_pass_a(x, y, None, None, st, ahead, fetch, None)
    if not ok:
        nan = like(np.nan, load(x, 0))
        return nan, nan
    return _dense_loss(x, top, total, sy, syx)


@njit(**INLINE)
def dense_row_grad(x, y, w, out, e, save, st, ahead, fetch, next_out):
    """As `dense_row_loss`, writing w (softmax(x) - y) into out (may be x).

    w (float64, the row's weight), e, save, fetch and next_out as in
    `sparse_row_grad`; `ahead` as in `dense_row_loss`.
    """
    ok, top, total, sy, syx = _dense_row_pass_a(x, y, e, save, st, ahead, fetch, None)
    if not ok:
        nan = like(np.nan, load(x, 0))
        fill_nan(out, nan)
        return nan, nan
    rescale(e, (y, w), out, st, top, w / total, next_out)
    return _dense_loss(x, top, total, sy, syx)


@njit(**INLINE)
def dense_row_grad_later(x, y, w, e, factors, st, ahead, fetch, pending):
    """As `dense_row_grad`, with the gradient left for `xent._fused._stream`
    to store: (ok, loss, lse). e receives the row's exps and factors its
    per-chunk factors, while pass A stores the `pending` row's gradient. Not
    ok: a NaN row, nothing left to store."""
    ok, top, total, sy, syx = _dense_row_pass_a(x, y, e, None, st, ahead, fetch, pending)
    if not ok:
        nan = like(np.nan, load(x, 0))
        return False, nan, nan
    inv_s = w / total
    for c in range(st.shape[1]):
        factors[c] = chunk_factor(st, c, top, inv_s)
    loss, lse = _dense_loss(x, top, total, sy, syx)
    return True, loss, lse
