"""Narrow rows: 16 rows at once, one per vector lane.

A row of a few classes leaves the chunk path's vector loops nothing to do,
and its per-row steps (the loops' ends, the statistics, the combine, a
scalar log) cost about 60 ns for a row of 10 logits. Rows of at most
`narrow_max()` classes in float32 arithmetic (`NARROW_DENSE_MAX` with dense
targets) go 16 at a time through `_narrow_block` instead: the rows are
copied transposed into a ``[C, 16]`` scratch (`xent._fused._lanes`, taking
each row's max on the way), so that the exps, their sums and the logs run
across rows, one row per vector lane:

    t[j, l] = exp(x[r0 + l, j] - M_l),  S_l = sum_j t[j, l],  log S_l

A float32 lane that holds the max's exp(0) = 1 drops every later term below
half its ulp, and a confident row's S_l - 1 with them. So each lane also sums
its terms below the max apart, and counts the maxima; with integer labels
the label's term is left out of both sums and added in float64
(`_leave_out_labels`, `_lane_exps`, `_lane_sums`). Before the sum below the
max, a row whose max was not its label lost those terms: float32 [16.75,
0 x 9], label 3, had softmax 0.99999994 at the max (exact 0.99999952).

How wide a row takes this path depends on the vector width (`narrow_max`):
a lane's work per class is one gather and one exp of a whole vector, which
512-bit vectors do for 16 rows at once.

The arithmetic is that of a one-chunk row of the chunk path (the shift by the
row's max, the same exp, the same loss and gradient stores), save for the
log (`log_of_sum`, to 2e-11 where the chunk path's is float64's own) and the
order of the sum.
"""
import functools

import numpy as np
from numba import njit, types
from numba.extending import overload

from xent._fused import _target
from xent._fused._borrow import borrowed, keep_alive
from xent._fused._chunks import below_max, counted_sum, s_rounds_to_one
from xent._fused._exps import exp_of
from xent._fused._formats import like, load, store, store_finite
from xent._fused._lanes import LANES, lane_scratch, transpose
from xent._fused._llvm import add_exact, flush_denormals, is_finite, label_loss, mul_exact, \
    restore_denormals, vectorise_wide
from xent._fused._math import log_of_sum
from xent._fused._options import FAST, INLINE, KERNEL, LLVM_INLINE
from xent._fused._one_row import label_entry
from xent._fused._rows import weight

__all__ = ["narrow_max", "NARROW_DENSE_MAX", "sparse_narrow_loss_rows",
           "sparse_narrow_grad_rows", "dense_narrow_loss_rows", "dense_narrow_grad_rows"]

# The widest rows the narrow kernels take with integer labels (`narrow_max`):
# rows up to 128 classes with 512-bit loops, 32 otherwise. One thread, 4096
# rows, float32, ns a logit, chunk kernels / narrow ones, loss and loss+grad,
# Intel Xeon (Emerald Rapids), session 22:
#   AVX-512: C = 65: 0.92 / 0.43, 1.17 / 0.70; 100: 1.13 / 0.41, 1.48 / 0.69;
#            128: 0.78 / 0.43, 0.89 / 0.69; 160: 0.67 / 0.44, 1.02 / 0.67;
#            200: 0.51 / 0.40, 0.64 / 0.66; 256: 0.57 / 0.41, 0.62 / 0.60
#            (bfloat16 at 256: 0.60 / 0.84 for the loss).
#   AVX2 (haswell): C = 24: 2.55 / 1.86, 3.28 / 2.15; 32: 1.89 / 1.88, 2.34 / 2.34;
#            48: 1.75 / 2.27, 2.12 / 2.36; 64: 1.51 / 2.29, 1.73 / 2.74.
#   SSE2 (x86-64): 32: 2.37 / 2.34, 2.99 / 2.75; 48: 1.94 / 2.44, 2.42 / 2.92.
# (64 for every target until then, measured on an AMD Zen 4 up to 64 only.)
NARROW_MAX_512 = 128
NARROW_MAX_256 = 32


@functools.cache
def narrow_max():
    """The most classes a row with integer labels may have to take the narrow
    kernels: `NARROW_MAX_512` where the loops are 512 bits wide
    (`xent._fused._target.wide_vectors`), else `NARROW_MAX_256`."""
    return NARROW_MAX_512 if _target.wide_vectors() else NARROW_MAX_256


# Dense targets are gathered too, a second gather per class: the narrow
# kernels beat the chunk ones up to about 24 classes there (65536 rows, one
# thread, float32 loss+grad on AMD Zen 4: 10 classes 26 against 80 ns per
# row, 16: 48 against 84, 24: 89 against 88, 32: 100 against 89).
NARROW_DENSE_MAX = 16
# The rows of a block's lane statistics ms (`_narrow_block`): 0 the max, 1 and
# 2 the even classes' sum and sum below the max, then with integer labels 3
# the label's logit, with dense targets 3 and 4 the targets' sums; the last
# two, the odd classes' sums (`_lane_exps`).
_SPARSE_STATS, _DENSE_STATS = 6, 7
_U0, _U1, _U2 = np.uint64(0), np.uint64(1), np.uint64(2)


# --- 16 rows at once ----------------------------------------------------------------------------

def _lane_targets(ty, ms, j, l, d):
    """ms[3, l] += y; ms[4, l] += y d for y = ty[j, l], unless ty is None (numba only)."""


@overload(_lane_targets, jit_options=LLVM_INLINE)
def _lane_targets_impl(ty, ms, j, l, d):
    if isinstance(ty, types.NoneType):
        return lambda ty, ms, j, l, d: None

    def add(ty, ms, j, l, d):
        yj = ty[j, l]
        ms[3, l] += yj
        ms[4, l] += yj * d
    return add


def _leave_out_labels(labels, r0, rows, t, ms):
    """With integer labels: ms[3, l] = the label's logit t[label, l] of lane
    l's row, and t[label, l] = -inf, so that the lane's sums leave the label's
    term out (it is added back in float64: `_lane_sums`; the gradient's
    entry there is `label_entry`'s). A label out of range is left alone (its
    row is NaN: `_narrow_row`). Nothing with dense targets (numba only)."""


# Inlined by numba, as `_lane_sums`: left to LLVM, each call counted a
# reference to its arrays (tests/test_borrow.py).
@overload(_leave_out_labels, inline="always")
def _leave_out_labels_impl(labels, r0, rows, t, ms):
    if isinstance(labels, types.NoneType):
        return lambda labels, r0, rows, t, ms: None

    def leave_out(labels, r0, rows, t, ms):
        for l in range(LANES):
            label = labels[r0 + min(l, rows - 1)]
            if 0 <= label < t.shape[0]:
                ms[3, l] = t[label, l]
                t[label, l] = -np.inf
            else:
                ms[3, l] = np.nan
    return leave_out


@njit(**INLINE)
def _lane_exps(x, ty, t, ms, j, s):
    """Class j of every lane: t[j, l] = exp(t[j, l] - M_l), added to ms[s, l]
    and, where below the lane's max (`below_max`), to ms[s + 1, l]; and the
    targets' sums (`_lane_targets`). The even classes go to rows 1 and 2, the
    odd ones to two rows of their own, so that a lane's float32 sums take
    half its terms each: one sum of 128 terms in a row, its rounding grew to
    2e-6 of a confident row's loss (a review, session 22; 1.1e-6 for 64)."""
    for l in range(LANES):
        d = t[j, l] - ms[0, l]
        v = exp_of(x, ty, d)
        t[j, l] = v
        ms[s, l] += v
        ms[s + 1, l] += below_max(x, v, d)
        _lane_targets(ty, ms, j, l, d)


def _lane_sums(x, ty, ms, sums):
    """sums[0, l] = S_l in float64 from lane l's float32 sums (numba only): the
    lane's maxima counted, plus its sum below the max (`_counted`), or the
    plain sum where it is not finite (a NaN, which the sum below the max
    leaves out). With integer labels (ty None), plus exp(x_label - M_l), the
    label's logit being ms[3, l] (`_leave_out_labels`)."""


@overload(_lane_sums, jit_options={"fastmath": FAST}, inline="always")
def _lane_sums_impl(x, ty, ms, sums):
    if isinstance(ty, types.NoneType):
        def with_label(x, ty, ms, sums):
            for l in range(LANES):
                at_label = exp_of(x, ty, ms[3, l] - ms[0, l])
                sums[0, l] = _counted(x, ms, l) + np.float64(at_label)
        return with_label

    def counted(x, ty, ms, sums):
        for l in range(LANES):
            sums[0, l] = _counted(x, ms, l)
    return counted


@njit(**INLINE)
def _counted(x, ms, l):
    """Lane l's sum of exps in float64 (its two float32 halves, `_lane_exps`),
    with its maxima counted (`counted_sum`, from its sums below the max); the
    plain sum where it is not finite."""
    odd = ms.shape[0] - 2
    total = np.float64(ms[1, l]) + np.float64(ms[odd, l])
    below = np.float64(ms[2, l]) + np.float64(ms[odd + 1, l])
    return counted_sum(x, total, below) if is_finite(total) else total


@njit(**INLINE)
def _narrow_block(x, ty, labels, flat, r0, rows, t, ms, sums):
    """Rows ``r0 .. r0 + rows - 1`` of x (C classes, ``rows <= 16``; flat is x
    as one row), row r0 + l in lane l (lanes from `rows` on repeat the last):
    t[j, l] = exp(x[r0 + l, j] - M_l), ms[0, l] = M_l, the row's max (of its
    non-NaN entries), ms[1, l] = sum_j t[j, l] in float32 (even j), and in float64 S_l =
    sums[0, l] (`_lane_sums`) and sums[1, l] = log S_l. A row with a NaN, a
    ``+inf`` or only ``-inf`` has a non-finite M_l or S_l.

    ms[2, l] is the sum of the terms below M_l. Both sums take the even
    classes j; the odd ones go to the last two rows of ms (`_lane_exps`).
    With integer `labels` (ty None), the label's entry of t is 0 and ms[3, l]
    holds its logit (`_leave_out_labels`). With dense targets ty (``[C,
    16]``, lane l the targets of row r0 + l; labels None), ms[3, l] += sum_j
    y_j and ms[4, l] += sum_j y_j (x_j - M_l), the targets' sums of a
    one-chunk row.
    """
    c = np.uint64(x.shape[1])
    odd = ms.shape[0] - 2
    transpose(flat, r0, rows, t, ms)
    for l in range(LANES):
        ms[2, l] = 0.0
        ms[odd, l] = 0.0
        ms[odd + 1, l] = 0.0
    _leave_out_labels(labels, r0, rows, t, ms)
    for j in range(_U0, c - _U1, _U2):
        _lane_exps(x, ty, t, ms, j, 1)
        _lane_exps(x, ty, t, ms, j + _U1, odd)
    if c % _U2:
        _lane_exps(x, ty, t, ms, c - _U1, 1)
    _lane_sums(x, ty, ms, sums)
    for l in range(LANES):
        sums[1, l] = log_of_sum(sums[0, l])


@njit(**INLINE)
def _narrow_row(x, labels, r, ms, sums, l):
    """(loss, lse, ok, x_label) of row r, in lane l of `_narrow_block`'s results;
    loss and lse are NaN unless ok: the label is in range and the row finite."""
    c = x.shape[1]
    label = labels[r]
    m, s = ms[0, l], sums[0, l]
    ok = 0 <= label < c and is_finite(m) and is_finite(s)
    x_label = load(x, (r, label if ok else 0))
    if not ok:
        return np.float64(np.nan), np.float64(np.nan), ok, x_label
    log_s = sums[1, l]
    return label_loss(log_s, x_label, m), np.float64(m) + log_s, ok, x_label


@njit(**INLINE)
def _nan_row(out, r, ref):
    """out[r] all NaN (spelled out rather than `fill_nan(out[r])`: a row view
    cost 3.5 ns per row)."""
    for j in range(out.shape[1]):
        store(out, (r, j), like(np.nan, ref))


# --- a range of rows, per need ------------------------------------------------------------------

@njit(**KERNEL)
def sparse_narrow_loss_rows(x, labels, loss, lse, lo, hi):
    """loss[i], lse[i] for rows i in [lo, hi) of logits x ``[N, C <= narrow_max()]``."""
    vectorise_wide()
    x = borrowed(x)   # (`xent._fused._borrow`: no reference counts per block)
    lanes = (lane_scratch(x.shape[1], np.float32), lane_scratch(_SPARSE_STATS, np.float32),
             lane_scratch(2, np.float64))
    t, ms, sums = borrowed(lanes[0]), borrowed(lanes[1]), borrowed(lanes[2])
    flat = x.reshape(x.size)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for r0 in range(lo, hi, LANES):
        rows = min(LANES, hi - r0)
        _narrow_block(x, None, labels, flat, r0, rows, t, ms, sums)
        for l in range(rows):
            loss[r0 + l], lse[r0 + l], _, _ = _narrow_row(x, labels, r0 + l, ms, sums, l)
    keep_alive(lanes)
    restore_denormals(word)


@njit(**KERNEL)
def sparse_narrow_grad_rows(x, labels, weights, out, loss, lse, lo, hi):
    """As `sparse_narrow_loss_rows`, writing w_i (softmax - onehot(label)) into out
    (may be x: a block is read whole before any of it is written); w_i is
    `xent._fused._rows.weight`(weights, i)."""
    vectorise_wide()
    x, out = borrowed(x), borrowed(out)   # (`xent._fused._borrow`)
    lanes = (lane_scratch(x.shape[1], np.float32), lane_scratch(_SPARSE_STATS, np.float32),
             lane_scratch(2, np.float64))
    t, ms, sums = borrowed(lanes[0]), borrowed(lanes[1]), borrowed(lanes[2])
    flat = x.reshape(x.size)
    c = x.shape[1]
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for r0 in range(lo, hi, LANES):
        rows = min(LANES, hi - r0)
        _narrow_block(x, None, labels, flat, r0, rows, t, ms, sums)
        for l in range(rows):
            r = r0 + l
            loss[r], lse[r], ok, x_label = _narrow_row(x, labels, r, ms, sums, l)
            m = ms[0, l]
            if not ok:
                _nan_row(out, r, m)
                continue
            w = weight(weights, r)
            inv_s = w / sums[0, l]
            f = like(inv_s, m)
            for j in range(c):
                store_finite(out, (r, j), t[j, l] * f)
            store(out, (r, labels[r]), label_entry(x_label, m, w, inv_s))
    keep_alive(lanes)
    restore_denormals(word)


@njit(**INLINE)
def _narrow_targets(y, r0, rows, ty, ys, first):
    """Dense targets of rows r0 .. r0 + rows - 1 into ty, as `transpose` (a
    single row of targets, broadcast, only on a call's `first` block), and the
    lanes' targets' sums (rows 3 and 4 of `ys`, `_narrow_block`'s ms) set to 0."""
    if y.shape[0] > 1:
        transpose(y.reshape(y.size), r0, rows, ty, ys)
    elif first:
        transpose(y.reshape(y.size), 0, 1, ty, ys)
    for l in range(LANES):
        ys[3, l] = 0.0
        ys[4, l] = 0.0


@njit(**INLINE)
def _terms(x, y, top, total, log_s):
    """sum_j y_j (log S - (x_j - M)) of a row x against targets y, term by term
    in float64, with log S = 0 where S rounds to 1 in x's accumulator
    (`xent._fused._chunks.s_rounds_to_one`): TF's ±inf and NaN where targets are
    infinite or NaN, and its finite loss where their float32 sum overflowed.
    Each factor is `label_loss`'s, as written: regrouped as (M + log S) - x_j,
    log S vanished beside logits of 1e16 or more, and an infinite target on
    the max met ``inf * 0`` (NaN where TF has ±inf)."""
    if s_rounds_to_one(total, x):
        log_s = 0.0
    loss = 0.0
    for j in range(x.shape[0]):
        loss += np.float64(y[j]) * label_loss(log_s, load(x, j), top)
    return loss


@njit(**INLINE)
def _rounded_products(x, y, m):
    """sum_j y_j (x_j - m) in float32, each product rounded before it is added,
    as TF's float32 arithmetic (and the NumPy kernels') does it: a product
    past float32's range is ±inf, and ``inf - inf`` NaN. The lanes' sum
    (`_lane_targets`) may fuse a product into the add, which kept an overflow
    of one sign finite beside an infinity of the other (-inf where TF has NaN,
    whose true value was +4e38). Added in order (`add_exact`): regrouped by
    fast-math, finite partial sums could overflow beside an infinite product.
    (Such a row's true loss is past float32's range: TF's and NumPy's orders
    of summation may still end in another infinity or NaN.)"""
    total = np.float32(0.0)
    for j in range(x.shape[0]):
        total = add_exact(total, mul_exact(y[j], np.float32(load(x, j) - m)))
    return total


@njit(**INLINE)
def _dense_narrow_row(x, ty, r, ms, sums, l):
    """(loss, lse, ok) of row r, in lane l: sum_j y_j (lse - x_j); NaN unless
    the row is finite. Targets whose float32 sum is not finite (infinite or
    NaN targets; an overflow) take the loss term by term from the row itself
    (`_terms`: before the row's gradient is written, which may be over x);
    so, rounded as TF's, does a sum of products that overflowed."""
    m, s = ms[0, l], sums[0, l]
    if not (is_finite(m) and is_finite(s)):
        return np.float64(np.nan), np.float64(np.nan), False
    log_s = sums[1, l]
    top = np.float64(m)
    if not is_finite(ms[3, l]):
        return _terms(x[r], ty[:, l], top, s, log_s), top + log_s, True
    products = ms[4, l]
    if not is_finite(products):
        products = _rounded_products(x[r], ty[:, l], m)
    return log_s * np.float64(ms[3, l]) - np.float64(products), top + log_s, True


@njit(**KERNEL)
def dense_narrow_loss_rows(x, y, loss, lse, lo, hi):
    """loss[i], lse[i] for rows i in [lo, hi) of x ``[N, C <= NARROW_DENSE_MAX]``, targets y."""
    vectorise_wide()
    x, y = borrowed(x), borrowed(y)   # (`xent._fused._borrow`)
    c = x.shape[1]
    lanes = (lane_scratch(c, np.float32), lane_scratch(c, np.float32),
             lane_scratch(_DENSE_STATS, np.float32), lane_scratch(2, np.float64))
    t, ty, ms, sums = (borrowed(lanes[0]), borrowed(lanes[1]),
                       borrowed(lanes[2]), borrowed(lanes[3]))
    flat = x.reshape(x.size)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for r0 in range(lo, hi, LANES):
        rows = min(LANES, hi - r0)
        _narrow_targets(y, r0, rows, ty, ms, r0 == lo)
        _narrow_block(x, ty, None, flat, r0, rows, t, ms, sums)
        for l in range(rows):
            loss[r0 + l], lse[r0 + l], _ = _dense_narrow_row(x, ty, r0 + l, ms, sums, l)
    keep_alive(lanes)
    restore_denormals(word)


@njit(**KERNEL)
def dense_narrow_grad_rows(x, y, weights, out, loss, lse, lo, hi):
    """As `dense_narrow_loss_rows`, writing w_i (softmax - y) into out (may be x);
    w_i is `xent._fused._rows.weight`(weights, i), and w_i y_j is rounded on
    its own (`mul_exact`: w_i = 1 gives the bits of softmax - y)."""
    vectorise_wide()
    x, y, out = borrowed(x), borrowed(y), borrowed(out)   # (`xent._fused._borrow`)
    c = x.shape[1]
    lanes = (lane_scratch(c, np.float32), lane_scratch(c, np.float32),
             lane_scratch(_DENSE_STATS, np.float32), lane_scratch(2, np.float64))
    t, ty, ms, sums = (borrowed(lanes[0]), borrowed(lanes[1]),
                       borrowed(lanes[2]), borrowed(lanes[3]))
    flat = x.reshape(x.size)
    word = flush_denormals()   # (`_llvm.flush_denormals`: after anything that may raise)
    for r0 in range(lo, hi, LANES):
        rows = min(LANES, hi - r0)
        _narrow_targets(y, r0, rows, ty, ms, r0 == lo)
        _narrow_block(x, ty, None, flat, r0, rows, t, ms, sums)
        for l in range(rows):
            r = r0 + l
            loss[r], lse[r], ok = _dense_narrow_row(x, ty, r, ms, sums, l)
            if not ok:
                _nan_row(out, r, ms[0, l])
                continue
            w = weight(weights, r)
            f, wy = like(w / sums[0, l], ms[0, l]), like(w, ms[0, l])
            for j in range(c):
                store(out, (r, j), t[j, l] * f - mul_exact(ty[j, l], wy))
    keep_alive(lanes)
    restore_denormals(word)
