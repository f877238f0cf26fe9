"""One row in chunks: pass A (max and sum of exps), the combine, and pass B (the gradient).

Pass A reads a row from memory once, chunk by chunk (`CHUNK` entries, in L1),
and leaves per chunk c its max m_c, the shift t_c its exps were taken against
and s_c = sum_j exp(x_j - t_c) (dense targets: also sum_j y_j and
sum_j y_j (x_j - t_c)):

    chunk 0:      m_0 = max_j x_j;  s_0 = sum_j exp(x_j - m_0);  t_0 = m_0
    chunk c > 0:  t_c = max(m_0..m_{c-1}), and in one loop
                  m_c = max_j x_j,  s_c = sum_j exp(x_j - t_c)
    combine:      M = max_c m_c,  S = sum_c s_c exp(t_c - M)
    pass B:       grad_j = e_j exp(t_c - M) / S - y_j     (the row still in L2)

The first chunk, and any chunk before which every logit was ``-inf``, takes
two sweeps (its max, then its exps shifted by that max, the chunk still in
L1). Every later chunk takes one: its exps are shifted by the largest max
seen so far, while its own max is taken in the same loop, so the logits
stream from memory while the core computes. A chunk whose max turns out more
than `SHIFT_SLACK` above t_c, or that holds a NaN or ``+inf`` (its sum is
then not finite), is swept again as a first chunk is. Every shift is a logit
of the row, so no exp overflows and none is smaller than exp(x_j - M).

That is the reference's shift by the row max M, up to rounding, with no
temporaries: one read of each logit and one write of each gradient entry. A
row whose max is not finite (a NaN, a ``+inf``, or every entry ``-inf``) is
all NaN, as in TensorFlow; ``-inf`` entries elsewhere are exactly 0 in the
softmax. While pass A computes on a half-precision row it prefetches the
next one, so that memory keeps streaming through pass B (`_prefetch_chunk`).

Chunk bounds are unsigned: numba then skips its negative-index check and the
loops vectorise.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from xent._fused._formats import HALF_FORMATS, hardware_bf16, like, load, scale_to_bf16, \
    store, store_finite, tiny
from xent._fused._llvm import fmuladd, is_finite, max_finite, maximum, mul_exact, prefetch
from xent._fused._math import LOG2E32, exp2_half, exp32, exp64, exp_half
from xent._fused._options import FAST, INLINE

__all__ = ["CHUNK", "exp", "exp_of", "exp_pass", "combine", "combine_targets", "rescale",
           "fill_nan", "STATS"]

# Rows are read in chunks of this many elements (8 KB of float32, in L1).
CHUNK = np.uint64(2048)
_U0, _U1 = np.uint64(0), np.uint64(1)
# How far (in logits) a chunk's max may exceed its shift: exps stay below
# e**16 ~ 2**23, so a chunk's float32 sum cannot overflow.
SHIFT_SLACK = 16.0
# The rows of a row's per-chunk statistics (`chunk_stats`).
_MAX, _SHIFT, _SUM, _YSUM, _YXSUM = 0, 1, 2, 3, 4
STATS = 5


# --- which exp each format takes ---------------------------------------------------------

def exp(x):
    """exp(x) for ``x <= 0`` in x's precision (numba only)."""


def exp_of(a, y, x):
    """exp(x) for the logits `a` with targets `y`: `exp_half` for half-precision
    logits with sparse labels (y None), where every use of the exps is a
    relative one; `exp` otherwise (numba only). A dense gradient
    softmax - y cancels, and needs the exps to the accumulator's precision."""


def is_half_sparse(a, y):
    """Whether numba types `a` (logits) and `y` (targets) are half precision with sparse labels."""
    return a.dtype in HALF_FORMATS and isinstance(y, types.NoneType)


@overload(exp, jit_options={"fastmath": FAST})
def _exp_impl(x):
    if x == types.float32:
        return lambda x: exp32(x)
    return lambda x: exp64(x)


@overload(exp_of, jit_options={"fastmath": FAST})
def _exp_of_impl(a, y, x):
    if is_half_sparse(a, y):
        return lambda a, y, x: exp_half(x)
    return lambda a, y, x: exp(x)


# The one-sweep loop shifts a chunk's logits by the row's running max. For
# half-precision logits with sparse labels, the shift is also folded into the
# exp's first multiply: exp(x_j - shift) is taken as 2**(x_j log2(e) + k)
# with k = -shift log2(e) rounded to float32, one FMA. Those exps amount to a
# shift of exactly -k / log2(e) (up to a relative 1e-8 on x_j - shift):
# `sweep_shift` records it, so the combine and pass B use the shift the exps
# were taken against.
_LOG2E32_AS_64 = float(LOG2E32)


def sweep_k(a, y, shift):
    """The one-sweep loop's constant for shifting logits of `a` by `shift` (numba only):
    ``float32(-shift log2(e))`` when folded (half precision, sparse), else shift."""


def sweep_shift(a, y, k):
    """The shift, as a float64, that the one-sweep loop's exps under constant k
    amount to: ``-k / log2(e)`` when folded, else k (numba only)."""


def sweep_exp(a, y, v, k):
    """The one-sweep loop's exp(v - shift) for a logit v of `a`, under constant k (numba only)."""


@overload(sweep_k)
def _sweep_k_impl(a, y, shift):
    if is_half_sparse(a, y):
        return lambda a, y, shift: np.float32(-np.float64(shift) * _LOG2E32_AS_64)
    return lambda a, y, shift: shift


@overload(sweep_shift)
def _sweep_shift_impl(a, y, k):
    if is_half_sparse(a, y):
        return lambda a, y, k: -np.float64(k) / _LOG2E32_AS_64
    return lambda a, y, k: np.float64(k)


@overload(sweep_exp, jit_options={"fastmath": FAST})
def _sweep_exp_impl(a, y, v, k):
    if is_half_sparse(a, y):
        return lambda a, y, v, k: exp2_half(fmuladd(v, LOG2E32, k))
    if a.dtype != types.float64:
        return lambda a, y, v, k: exp32(v - like(k, v))
    return lambda a, y, v, k: exp64(v - k)


# --- pass A: one chunk ---------------------------------------------------------------------

def keep(a, j, value):
    """a[j] = value unless a is None (numba only): the optional stores of the sweeps."""


@overload(keep, inline="always")
def _keep_impl(a, j, value):
    if isinstance(a, types.NoneType):
        return lambda a, j, value: None

    def keep_value(a, j, value):
        a[j] = value
    return keep_value


@njit(**INLINE)
def _chunk_max(x, lo, hi):
    """max of x[lo:hi] in the accumulator dtype; NaN if any entry is NaN."""
    m = load(x, lo)
    for j in range(lo + _U1, hi):
        m = maximum(m, load(x, j))
    return m


@njit(**INLINE)
def _chunk_exps(x, y, e, lo, hi, m):
    """sum of exp(x_j - m) over [lo, hi); also kept as e_j unless e is None (e may be x)."""
    s = like(0.0, m)
    for j in range(lo, hi):
        v = exp_of(x, y, load(x, j) - m)
        keep(e, j, v)
        s += v
    return s


# The running max uses maxnum with the no-NaN flag (one maxps, which LLVM
# vectorises as a reduction); a NaN shows up in the sum instead.
@njit(**INLINE)
def _chunk_max_exps(x, y, e, save, lo, hi, k):
    """(max_j x_j, sum_j exp(x_j - shift)) over [lo, hi) in one loop, for the
    shift that constant k stands for (`sweep_k`).

    Each exp is kept in e unless e is None; when e is x itself, save (else
    None) first receives x[lo:hi], so that the chunk can be swept again. A
    NaN makes the sum NaN, and ``+inf`` the max (the max is then meaningless).
    """
    m = like(-np.inf, k)
    s = like(0.0, k)
    for j in range(lo, hi):
        v = load(x, j)
        keep(save, j - lo, v)
        m = max_finite(m, v)
        ev = sweep_exp(x, y, v, k)
        keep(e, j, ev)
        s += ev
    return m, s


@njit(**INLINE)
def _zero(e, lo, hi):
    """e[lo:hi] = 0 unless e is None."""
    for j in range(lo, hi):
        keep(e, j, 0.0)


def _restore(x, save, lo, hi):
    """x[lo:hi] = save[:hi - lo] unless save is None (numba only)."""


@overload(_restore, inline="always")
def _restore_impl(x, save, lo, hi):
    if isinstance(save, types.NoneType):
        return lambda x, save, lo, hi: None

    def restore(x, save, lo, hi):
        for j in range(lo, hi):
            x[j] = save[j - lo]
    return restore


@njit(**INLINE)
def _chunk_targets(x, y, lo, hi, shift):
    """(sum_j y_j, sum_j y_j (x_j - shift)) over [lo, hi)."""
    sy = like(0.0, shift)
    syx = like(0.0, shift)
    for j in range(lo, hi):
        yj = load(y, j)
        sy += yj
        syx += yj * (load(x, j) - shift)
    return sy, syx


def _targets(x, y, lo, hi, shift):
    """`_chunk_targets`, or two zeros when y is None (numba only)."""


@overload(_targets)
def _targets_impl(x, y, lo, hi, shift):
    if isinstance(y, types.NoneType):
        def zeros(x, y, lo, hi, shift):
            return like(0.0, shift), like(0.0, shift)
        return zeros

    def sums(x, y, lo, hi, shift):
        return _chunk_targets(x, y, lo, hi, shift)
    return sums


@njit(**INLINE)
def _one_sweep(x, y, e, save, lo, hi, top):
    """(ok, max, shift, sum, sum of y, sum of y (x - shift)) of chunk [lo, hi) in
    one sweep, shifted by the row's running max `top`; not ok (and x
    restored from save) when the chunk must be swept again: its max is more
    than `SHIFT_SLACK` above top, or its sum is not finite. A folded shift
    (`sweep_k`) is used only within `SHIFT_SLACK` of top: float32's rounding
    of k moves it by up to 6e-8 |top|, too far for logits beyond 2e8."""
    k = sweep_k(x, y, top)
    shift = sweep_shift(x, y, k)
    sy, syx = _targets(x, y, lo, hi, top)
    if abs(shift - np.float64(top)) <= SHIFT_SLACK:
        m, s = _chunk_max_exps(x, y, e, save, lo, hi, k)
        if m <= top + SHIFT_SLACK and is_finite(s):
            return True, m, shift, s, sy, syx
        _restore(x, save, lo, hi)
    nan = like(np.nan, top)
    return False, nan, np.nan, nan, nan, nan


@njit(**INLINE)
def _chunk_pass(x, y, e, save, lo, hi, top):
    """(max, shift, sum of exps, sum of y, sum of y (x - shift)) of chunk [lo, hi),
    for a row whose largest max so far is `top` (``-inf`` before any finite logit).

    Exps are kept in e unless e is None; the targets' sums are zeros when y is
    None (sparse), and read x before e (which may be x) is written. A NaN max
    means the chunk holds a NaN or ``+inf``. A chunk of ``-inf`` logits is
    shifted by 0, so that y_j x_j gives TF's ``-inf`` (or NaN where y_j is 0).
    """
    if top > -np.inf:
        ok, m, shift, s, sy, syx = _one_sweep(x, y, e, save, lo, hi, top)
        if ok:
            return m, shift, s, sy, syx
    m = _chunk_max(x, lo, hi)
    if m == -np.inf:
        zero = like(0.0, m)
        sy, syx = _targets(x, y, lo, hi, zero)
        _zero(e, lo, hi)
        return m, 0.0, zero, sy, syx
    if not is_finite(m):
        nan = like(np.nan, m)
        return nan, np.nan, nan, nan, nan
    sy, syx = _targets(x, y, lo, hi, m)
    return m, np.float64(m), _chunk_exps(x, y, e, lo, hi, m), sy, syx


# --- pass A: the row ------------------------------------------------------------------------

@njit(**INLINE)
def chunk_stats(x):
    """A row's per-chunk statistics: float64 ``[STATS, chunks]``, rows `_MAX` ... `_YXSUM`."""
    n = (x.shape[1] + int(CHUNK) - 1) // int(CHUNK)
    return np.empty((STATS, n), np.float64)


def _keep_targets(st, c, y, sy, syx):
    """st[_YSUM, c], st[_YXSUM, c] = sy, syx unless y is None (numba only)."""


@overload(_keep_targets, inline="always")
def _keep_targets_impl(st, c, y, sy, syx):
    if isinstance(y, types.NoneType):
        return lambda st, c, y, sy, syx: None

    def keep_sums(st, c, y, sy, syx):
        st[_YSUM, c], st[_YXSUM, c] = sy, syx
    return keep_sums


def _prefetch_chunk(ahead, lo, hi):
    """Prefetch ahead[lo:hi] (64-byte lines) unless ahead is None (numba only).

    Pass A prefetches the next row of logits while it computes on this one,
    so that memory keeps streaming through the exps (and through pass B).
    Measured on 8192x32000 (Intel Xeon, KVM; 2 threads), loss only: float32
    109 -> 88 ms, bfloat16 175 -> 52 ms; loss+grad in place float32 119 ->
    104 ms. On AMD Zen 4, bfloat16 in place 39 -> 35 ms.
    """


def _prefetch_half_chunk(ahead, lo, hi):
    """`_prefetch_chunk` for a half-precision `ahead` only (numba only).

    Pass B prefetches the next row of a separate gradient buffer, so that
    its stores find their lines in cache: bfloat16 55 -> 47 ms on AMD Zen 4
    (8192x32000); float32 gets slower (138 -> 162 ms on the Intel Xeon).
    """


def _prefetch_lines(ahead):
    """Prefetching `ahead`'s entries [lo, hi) one 64-byte line at a time, for numba type `ahead`."""
    per_line = np.uint64(64 // (ahead.dtype.bitwidth // 8))

    def prefetch_lines(ahead, lo, hi):
        for k in range(lo, hi, per_line):
            prefetch(ahead, k)
    return prefetch_lines


@overload(_prefetch_chunk, inline="always")
def _prefetch_chunk_impl(ahead, lo, hi):
    if isinstance(ahead, types.NoneType):
        return lambda ahead, lo, hi: None
    return _prefetch_lines(ahead)


@overload(_prefetch_half_chunk, inline="always")
def _prefetch_half_chunk_impl(ahead, lo, hi):
    if isinstance(ahead, types.NoneType) or ahead.dtype not in HALF_FORMATS:
        return lambda ahead, lo, hi: None
    return _prefetch_lines(ahead)


@njit(**INLINE)
def exp_pass(x, y, e, save, st, ahead):
    """Pass A over a row: per chunk c, st[_MAX, c], st[_SHIFT, c], st[_SUM, c]
    and, with targets y, st[_YSUM, c] and st[_YXSUM, c].

    Unless e is None, also e_j = exp(x_j - shift of j's chunk) (0 in a chunk
    of -inf). False as soon as a chunk holds a NaN or ``+inf``: the row is NaN.
    `ahead` (or None) is a row to prefetch chunk by chunk (`_prefetch_chunk`).
    """
    n = np.uint64(x.shape[0])
    top = like(-np.inf, load(x, 0))
    c = 0
    for lo in range(_U0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        _prefetch_chunk(ahead, lo, hi)
        m, shift, s, sy, syx = _chunk_pass(x, y, e, save, lo, hi, top)
        if np.isnan(m):
            return False
        st[_MAX, c], st[_SHIFT, c], st[_SUM, c] = m, shift, s
        _keep_targets(st, c, y, sy, syx)
        top = max(top, m)
        c += 1
    return True


# --- the combine ------------------------------------------------------------------------------

@njit(**INLINE)
def combine(x, y, st):
    """The row's max M and S = sum_c s_c exp(t_c - M), in float64.

    A chunk swept once shifted its exps by t_c < M, so the max's own term
    exp(M - t_c) carries the exp's rounding (larger for half-precision
    inputs, whose exp is cheaper). It is replaced by its exact value 1, so
    that a loss near 0 (S near 1) is as accurate as the reference's. x and
    y pick the exp that pass A used (`sweep_exp`).
    """
    top = st[_MAX, 0]
    first = 0
    for c in range(1, st.shape[1]):
        if st[_MAX, c] > top:
            top, first = st[_MAX, c], c
    total = 0.0
    if top > -np.inf:
        for c in range(st.shape[1]):
            total += st[_SUM, c] * exp64(st[_SHIFT, c] - top)
        shift = st[_SHIFT, first]
        if shift != top:
            v = like(top, load(x, 0))
            term = sweep_exp(x, y, v, sweep_k(x, y, shift))
            total += 1.0 - term * exp64(shift - top)
    return top, total


@njit(**INLINE)
def combine_targets(st, top):
    """(sum_j y_j, sum_j y_j (x_j - top)) from the per-chunk sums."""
    sy = 0.0
    syx = 0.0
    for c in range(st.shape[1]):
        sy += st[_YSUM, c]
        syx += st[_YXSUM, c] + (st[_SHIFT, c] - top) * st[_YSUM, c]
    return sy, syx


# --- pass B ------------------------------------------------------------------------------------

# A chunk's factor exp(t_c - M) / S below the smallest normal float would round
# coarsely, and its exps reach e**16: such chunks (rare: t_c more than 87 below
# M) are scaled in two steps, through 2**64.
_TWO64, _TWO_M64 = 2.0 ** 64, 2.0 ** -64


def _hardware_rounded(e, y, out, lo, hi, f):
    """Pass B's stores out[j] = e[j] * f for the whole blocks of [lo, hi) through
    `scale_to_bf16`, when out is bfloat16 with sparse labels and the CPU
    rounds to bfloat16 itself; returns where the store loop goes on from
    (lo when none were done or all must be redone; numba only)."""


@overload(_hardware_rounded, inline="always")
def _hardware_rounded_impl(e, y, out, lo, hi, f):
    if not (out.dtype == types.uint16 and e.dtype == types.float32
            and isinstance(y, types.NoneType) and hardware_bf16()):
        return lambda e, y, out, lo, hi, f: lo

    def blocks(e, y, out, lo, hi, f):
        j = scale_to_bf16(e, out, lo, hi, f)
        return lo if j > hi else j
    return blocks


def _finish_entry(out, y, j, p):
    """Pass B's store of p = softmax_j: p itself (sparse, y None; finite, as a
    row with a NaN or infinity never gets here), or p - y_j (numba only)."""


@overload(_finish_entry, inline="always")
def _finish_entry_impl(out, y, j, p):
    if isinstance(y, types.NoneType):
        return lambda out, y, j, p: store_finite(out, j, p)
    return lambda out, y, j, p: store(out, j, p - load(y, j))


@njit(**INLINE)
def rescale(e, y, out, st, top, inv_s, ahead):
    """Pass B: out_j = e_j exp(t_c - M) / S (minus y_j with dense targets y),
    rounded to out's format (e may be out).

    Pass B works from L2; chunk by chunk, it prefetches `ahead` (the next
    row of a separate gradient buffer, or None), for the next pass B.
    """
    n = np.uint64(e.shape[0])
    smallest = tiny(e[0])
    c = 0
    for lo in range(_U0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        _prefetch_half_chunk(ahead, lo, hi)
        factor = exp64(st[_SHIFT, c] - top) * inv_s
        if factor >= smallest:
            f = like(factor, e[0])
            for j in range(_hardware_rounded(e, y, out, lo, hi, f), hi):
                _finish_entry(out, y, j, e[j] * f)
        else:
            f, down = like(factor * _TWO64, e[0]), like(_TWO_M64, e[0])
            for j in range(lo, hi):
                _finish_entry(out, y, j, mul_exact(mul_exact(e[j], f), down))
        c += 1


@njit(**INLINE)
def fill_nan(out, ref):
    """Every element of `out` NaN."""
    nan = like(np.nan, ref)
    for j in range(out.shape[0]):
        store(out, j, nan)
