"""One row in chunks: pass A (max and sum of exps) and the combine; pass B is `_pass_b`.

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
softmax. While pass A computes on a piece of a row it can prefetch the
logits a few KB further on (`xent._fused._fetch`), so that memory keeps
streaming through the exps; where that pays is the CPU's and the need's
(`xent._fused._launch.fetch_bits`).

Chunk bounds are unsigned: numba then skips its negative-index check and the
loops vectorise.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from xent._fused._cuts import CHUNK, piece_of
from xent._fused._exps import exp_of, sweep_exp, sweep_k, sweep_shift
from xent._fused._formats import like, load
from xent._fused._fetch import fetch_ahead
from xent._fused._llvm import is_finite, max_finite, maximum, mul_exact, round_by_sum, \
    vectorise_wide
from xent._fused._math import exp64
from xent._fused._options import INLINE, LLVM_INLINE
from xent._fused._stream import stream_to

__all__ = ["CHUNK", "STATS", "SHIFT", "chunk_stats", "exp_pass", "combine", "combine_targets",
           "below_max", "counted_sum", "infinite_terms", "infinite_loss", "s_rounds_to_one"]

_U0, _U1 = np.uint64(0), np.uint64(1)
# How far (in logits) a chunk's max may exceed its shift; a chunk whose max
# rises further is swept again, against its own max. A float32 sum holds its
# max's term in one vector lane, and that lane drops every later term below
# half its ulp. Swept twice, the chunk sums its terms below its max apart
# (`_chunk_exps`); swept once, its max's term is at most e**2 times the
# earlier max's, which S - 1 holds (S - 1 >= e**-2), so what the lane drops
# is float32 rounding of a sum that size, not a small S - 1 whole. Before,
# with a slack of 16 and one sum, a confident row (float32 [16.625, 0 x 999],
# label 0) had a loss of 6.056e-5 (exact 6.017e-5). Re-sweeping past 2 left random rows
# as they were and cost confident ones 10-24% in cache (16x32000, one thread,
# Intel Xeon (Emerald Rapids), AVX-512; bench/RESULTS.md, session 21).
SHIFT_SLACK = 2.0
# The rows of a row's per-chunk statistics (`chunk_stats`).
_MAX, _SHIFT, _SUM, _YSUM, _YXSUM, _BELOW = 0, 1, 2, 3, 4, 5
SHIFT = _SHIFT
STATS = 6
# The entries of a chunk whose targets' sums `_chunk_targets` takes in float32 at a time.
_TARGET_PIECE = np.uint64(256)


# --- pass A: one chunk ---------------------------------------------------------------------

def keep(a, j, value):
    """a[j] = value unless a is None (numba only): the optional stores of the sweeps."""


@overload(keep, jit_options=LLVM_INLINE)
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
def _chunk_exps(x, y, e, lo, hi, m, pending, fetching):
    """(sum of exp(x_j - m), the same sum over the x_j below m) over [lo, hi);
    each exp also kept as e_j unless e is None (e may be x).

    The second sum leaves out the chunk's maxima, whose exp(0) = 1 would
    drop its terms below half the ulp of 1 (`combine` adds them back, counted;
    float64 logits take the first sum only: `below_max`). It costs rows of
    100 to 1000 classes 10-40% in cache on AVX-512, 5-19% on AVX2 (bench/RESULTS.md).
    Summed piece by piece (`piece_of`); before each piece, the logits
    further on (and dense targets) are prefetched (`fetch_ahead`, with
    `fetching` = ((the next rows), the fetch bits)); after it, the pending
    row's gradient is stored up to the same index (`stream_to`; None: no
    pending row).
    """
    zero = like(0.0, m)   # (not 0.0: a float64 in the loop would halve its vectors)
    s, below = zero, zero
    step = piece_of(x)
    for plo in range(lo, hi, step):
        phi = min(plo + step, hi)
        fetch_ahead(x, y, fetching, plo, phi)
        sp, bp = zero, zero
        for j in range(plo, phi):
            d = load(x, j) - m
            v = exp_of(x, y, d)
            keep(e, j, v)
            sp += v
            bp += below_max(x, v, d)
        s += sp
        below += bp
        stream_to(pending, phi)
    return s, below


def below_max(x, v, d):
    """v where d < 0, else 0, in v's type: a term of a sum below the max
    (`_chunk_exps`, the narrow kernels' lanes); always 0 for float64 logits,
    whose sum of exps keeps 29 more bits than a float32 loss needs (so that
    their loop, and its order of summation, is the one all their kernels
    share) (numba only)."""


def counted_sum(x, s, below):
    """A sum of exps s, taken against its max, with the max's terms exact: the
    count of them (s - below rounded: exact while s's float32 error stays
    below 1/2) plus `below`, the sum below the max; s itself for float64
    logits (`below_max`) (numba only)."""


@overload(below_max, jit_options=LLVM_INLINE)
def _below_max_impl(x, v, d):
    if x.dtype == types.float64:
        return lambda x, v, d: like(0.0, v)
    return lambda x, v, d: v if d < like(0.0, d) else like(0.0, v)


@overload(counted_sum, jit_options=LLVM_INLINE)
def _counted_sum_impl(x, s, below):
    if x.dtype == types.float64:
        return lambda x, s, below: s
    return lambda x, s, below: np.float64(round_by_sum(s - below)) + below


# The running max uses maxnum with the no-NaN flag (one maxps, which LLVM
# vectorises as a reduction); a NaN shows up in the sum instead.
@njit(**INLINE)
def _chunk_max_exps(x, y, e, save, lo, hi, k, pending, fetching):
    """(max_j x_j, sum_j exp(x_j - shift)) over [lo, hi) in one loop, for the
    shift that constant k stands for (`sweep_k`).

    Each exp is kept in e unless e is None; when e is x itself, save (else
    None) first receives x[lo:hi], so that the chunk can be swept again. A
    NaN makes the sum NaN, and ``+inf`` the max (the max is then meaningless).
    Piece by piece, as `_chunk_exps`, with its prefetches and the pending
    row's stores between.
    """
    m = like(-np.inf, k)
    s = like(0.0, k)
    step = piece_of(x)
    for plo in range(lo, hi, step):
        phi = min(plo + step, hi)
        fetch_ahead(x, y, fetching, plo, phi)
        mp = like(-np.inf, k)
        sp = like(0.0, k)
        for j in range(plo, phi):
            v = load(x, j)
            keep(save, j - lo, v)
            mp = max_finite(mp, v)
            ev = sweep_exp(x, y, v, k)
            keep(e, j, ev)
            sp += ev
        m = max_finite(m, mp)
        s += sp
        stream_to(pending, phi)
    return m, s


@njit(**INLINE)
def _zero(e, lo, hi):
    """e[lo:hi] = 0 unless e is None."""
    for j in range(lo, hi):
        keep(e, j, 0.0)


def _restore(x, save, lo, hi):
    """x[lo:hi] = save[:hi - lo] unless save is None (numba only)."""


@overload(_restore, jit_options=LLVM_INLINE)
def _restore_impl(x, save, lo, hi):
    if isinstance(save, types.NoneType):
        return lambda x, save, lo, hi: None

    def restore(x, save, lo, hi):
        vectorise_wide()
        for j in range(lo, hi):
            x[j] = save[j - lo]
    return restore


@njit(**INLINE)
def _chunk_targets(x, y, lo, hi, shift):
    """(sum_j y_j, sum_j y_j (x_j - shift)) over [lo, hi), in float32 pieces of
    `_TARGET_PIECE` entries added up in float64, rounded once to shift's type.

    Summed in float32 whole, as TF sums, the vectorised loop kept one sum per
    lane, each of a chunk's 2048 terms over the lane count: 128 in a row on
    AVX-512, 512 on SSE2, whose rounding reached 4.6e-6 of a label-smoothed
    row's loss (32000 classes, `x86-64`; TF's float32: 7.7e-7; a review).
    Pieces keep that to 8-64 terms a lane (5.4e-7 there, 2.2e-7 on
    `haswell`, 1.5e-7 on AVX-512), at most 5% of a dense row's time in cache
    (16x32000, one thread, `haswell`: about the noise); float64 sums
    throughout (6.5e-8 everywhere) cost a loss 15%, a gradient 8%."""
    sy = 0.0
    syx = 0.0
    for plo in range(lo, hi, _TARGET_PIECE):
        phi = min(plo + _TARGET_PIECE, hi)
        piece_y = like(0.0, shift)
        piece_yx = like(0.0, shift)
        for j in range(plo, phi):
            yj = load(y, j)
            piece_y += yj
            piece_yx += yj * (load(x, j) - shift)
        sy += np.float64(piece_y)
        syx += np.float64(piece_yx)
    return like(sy, shift), like(syx, shift)


@njit(**INLINE)
def infinite_terms(x, y, lo, hi, sy):
    """(end, under) over [lo, hi), for targets whose sum sy is not finite.

    TensorFlow's loss is sum_j y_j (log S - (x_j - M)), whose factors
    log S - (x_j - M) are >= 0. A term is infinite or NaN, whatever M and S,
    where y_j is (y_j infinite: ±inf, NaN at the one place where the factor is
    0: x_j = M and S = 1, `infinite_loss`), or where x_j is ``-inf``
    (sign(y_j) inf; NaN for y_j = 0). `end` is the sum of those terms (``+inf``
    and ``-inf`` make NaN) and `under` the largest logit under a non-finite
    target. The sums of the finite terms cannot change such a loss, and
    ``lse·Σy - Σ y·(x - M)`` would meet ``inf·0`` (NaN where TF has ±inf).
    With no such term (finite targets whose sum overflowed the chunk's
    float32 sum: two near float32's max), end is sy: the loss is then inf, as
    before, where TF's float32 terms may stay finite.
    """
    end = like(0.0, sy)
    under = like(-np.inf, sy)
    for j in range(lo, hi):
        yj = like(load(y, j), sy)
        xj = like(load(x, j), sy)
        if not is_finite(yj):
            end += yj
            if xj > under:
                under = xj
        elif xj == -np.inf:
            end += yj * like(np.inf, sy) if yj != 0 else like(np.nan, sy)
    if end == 0:
        end = sy
    return end, under


def _targets(x, y, lo, hi, shift):
    """`_chunk_targets`, or `infinite_terms`' (end, under) where the targets'
    sum is not finite, or two zeros when y is None (numba only)."""


@overload(_targets, jit_options=LLVM_INLINE)
def _targets_impl(x, y, lo, hi, shift):
    if isinstance(y, types.NoneType):
        def zeros(x, y, lo, hi, shift):
            return like(0.0, shift), like(0.0, shift)
        return zeros

    def sums(x, y, lo, hi, shift):
        vectorise_wide()
        sy, syx = _chunk_targets(x, y, lo, hi, shift)
        if is_finite(sy):
            return sy, syx
        return infinite_terms(x, y, lo, hi, sy)
    return sums


@njit(**INLINE)
def _one_sweep(x, y, e, save, lo, hi, top, pending, fetching):
    """(ok, max, shift, sum, NaN (its sum below the max, not kept here), sum of
    y, sum of y (x - shift)) of chunk [lo, hi) in one sweep, shifted by the
    row's running max `top`; not ok (and x
    restored from save) when the chunk must be swept again: its max is more
    than `SHIFT_SLACK` above top, or its sum is not finite. A folded shift
    (`sweep_k`) is used only within `SHIFT_SLACK` of top: float32's rounding
    of k moves it by up to 6e-8 |top|, too far for logits beyond 3e7 (their
    chunks are all swept twice)."""
    k = sweep_k(x, y, top)
    shift = sweep_shift(x, y, k)
    if abs(shift - np.float64(top)) <= SHIFT_SLACK:
        sy, syx = _targets(x, y, lo, hi, top)   # before e, which may be x, is written
        m, s = _chunk_max_exps(x, y, e, save, lo, hi, k, pending, fetching)
        if m <= top + SHIFT_SLACK and is_finite(s):
            return True, m, shift, s, like(np.nan, s), sy, syx
        _restore(x, save, lo, hi)
    nan = like(np.nan, top)
    return False, nan, np.nan, nan, nan, nan, nan


@njit(**INLINE)
def _chunk_pass(x, y, e, save, lo, hi, top, pending, fetching):
    """(max, shift, sum of exps, sum of the exps below the max (NaN when swept
    once), sum of y, sum of y (x - shift)) of chunk [lo, hi), for a row whose
    largest max so far is `top` (``-inf`` before any finite logit).

    Exps are kept in e unless e is None; the targets' sums are zeros when y is
    None (sparse), and read x before e (which may be x) is written. A NaN max
    means the chunk holds a NaN or ``+inf``. A chunk of ``-inf`` logits takes
    its targets' sums against 0, so that y_j x_j gives TF's ``-inf`` (or NaN
    where y_j is 0), and has shift ``-inf``: its factor exp(t_c - M) is 0 in
    `combine` and pass B (a shift of 0, far above a row of logits below -88,
    took the exp out of its range: NaN gradients).
    """
    if top > -np.inf:
        ok, m, shift, s, below, sy, syx = _one_sweep(x, y, e, save, lo, hi, top, pending,
                                                     fetching)
        if ok:
            return m, shift, s, below, sy, syx
    m = _chunk_max(x, lo, hi)
    if m == -np.inf:
        zero = like(0.0, m)
        sy, syx = _targets(x, y, lo, hi, zero)
        _zero(e, lo, hi)
        return m, -np.inf, zero, zero, sy, syx
    if not is_finite(m):
        nan = like(np.nan, m)
        return nan, np.nan, nan, nan, nan, nan
    sy, syx = _targets(x, y, lo, hi, m)
    s, below = _chunk_exps(x, y, e, lo, hi, m, pending, fetching)
    return m, np.float64(m), s, below, sy, syx


# --- pass A: the row ------------------------------------------------------------------------

@njit(**INLINE)
def chunk_stats(x):
    """A row's per-chunk statistics: float64 ``[STATS, chunks]``, rows `_MAX` ... `_BELOW`."""
    n = (x.shape[1] + int(CHUNK) - 1) // int(CHUNK)
    return np.empty((STATS, n), np.float64)


def _keep_targets(st, c, y, sy, syx):
    """st[_YSUM, c], st[_YXSUM, c] = sy, syx unless y is None (numba only)."""


@overload(_keep_targets, jit_options=LLVM_INLINE)
def _keep_targets_impl(st, c, y, sy, syx):
    if isinstance(y, types.NoneType):
        return lambda st, c, y, sy, syx: None

    def keep_sums(st, c, y, sy, syx):
        st[_YSUM, c], st[_YXSUM, c] = sy, syx
    return keep_sums


@njit(**INLINE)
def exp_pass(x, y, e, save, st, ahead, fetch, pending):
    """Pass A over a row: per chunk c, st[_MAX, c], st[_SHIFT, c], st[_SUM, c],
    st[_BELOW, c] (`_chunk_pass`) and, with targets y, st[_YSUM, c] and st[_YXSUM, c].

    Unless e is None, also e_j = exp(x_j - shift of j's chunk) (0 in a chunk
    of -inf). False as soon as a chunk holds a NaN or ``+inf``: the row is NaN.
    As the bits of `fetch` say (a run-time choice:
    `xent._fused._launch.fetch_bits`), each piece prefetches the logits
    (and dense targets) `xent._fused._fetch.FETCH_BYTES` further on, into
    `ahead` = (the next row of x, the next row of y or None) past the row's end.
    Between its pieces, the `pending` row's gradient is stored
    (`xent._fused._stream`; None for no pending row).
    """
    n = np.uint64(x.shape[0])
    top = like(-np.inf, load(x, 0))
    fetching = (ahead, fetch)
    c = 0
    for lo in range(_U0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        m, shift, s, below, sy, syx = _chunk_pass(x, y, e, save, lo, hi, top, pending, fetching)
        if np.isnan(m):
            return False
        st[_MAX, c], st[_SHIFT, c], st[_SUM, c], st[_BELOW, c] = m, shift, s, below
        _keep_targets(st, c, y, sy, syx)
        top = max(top, m)
        c += 1
    return True


# --- the combine ------------------------------------------------------------------------------

@njit(**INLINE)
def combine(x, y, st):
    """The row's max M and S = sum_c s_c exp(t_c - M), in float64.

    The max's own terms are made exact. Where its chunk was swept twice (t_c
    = M), S counts them (1 each) apart from the chunk's terms below M
    (`_chunk_exps`). Where it was swept once (t_c < M, within `SHIFT_SLACK`),
    the max's term exp(M - t_c) carries the exp's rounding (larger for
    half-precision inputs, whose exp is cheaper); it is replaced by its exact
    value 1. So a loss near 0 (S near 1) is accurate relative to itself down
    to about 1e-9, where a float64 S's resolution near 1 (1.1e-16) takes over.
    x and y pick the exp that pass A used (`sweep_exp`).
    """
    top = st[_MAX, 0]
    first = 0
    for c in range(1, st.shape[1]):
        if st[_MAX, c] > top:
            top, first = st[_MAX, c], c
    if top == -np.inf:
        return top, 0.0
    # (Products kept out of fused multiply-adds, `mul_exact`: LLVM fused them
    # in some kernels and not others: the streamed and plain float64 gradients
    # differed in their last bits.)
    total = 0.0
    for c in range(st.shape[1]):   # (exp64(0) is 1: a row of one chunk skips its 11 FMAs)
        d = st[_SHIFT, c] - top
        if c != first:
            total += st[_SUM, c] if d == 0.0 else mul_exact(st[_SUM, c], exp64(d))
    shift = st[_SHIFT, first]
    if shift == top:
        return top, total + counted_sum(x, st[_SUM, first], st[_BELOW, first])
    term = sweep_exp(x, y, like(top, load(x, 0)), sweep_k(x, y, shift))
    f = exp64(shift - top)
    return top, total + (mul_exact(st[_SUM, first], f) + (1.0 - mul_exact(np.float64(term), f)))


@njit(**INLINE)
def combine_targets(st, top):
    """(sum_j y_j, sum_j y_j (x_j - top)) from the per-chunk sums; where a
    chunk's targets sum to ±inf or NaN, the row's (end, under) instead
    (`infinite_terms`; for `infinite_loss`): a finite chunk's terms at a
    ``-inf`` logit are then its non-finite y_j (x_j - t_c), negated."""
    sy = 0.0
    syx = 0.0
    end, under, infinite = 0.0, -np.inf, False
    for c in range(st.shape[1]):
        sy += st[_YSUM, c]
        syx += st[_YXSUM, c] + (st[_SHIFT, c] - top) * st[_YSUM, c]
        if not is_finite(st[_YSUM, c]):
            infinite = True
            end += st[_YSUM, c]
            under = max(under, st[_YXSUM, c])
        elif not is_finite(st[_YXSUM, c]):
            end -= st[_YXSUM, c]
    if infinite:
        return end, under
    return sy, syx


@njit(**INLINE)
def infinite_loss(end, under, top, total, x):
    """The loss of a row whose targets' sum is not finite, from `infinite_terms`'
    (end, under), its max M = top and sum of exps S = total: end, or NaN
    where an infinite target sits on the max and S rounds to 1 in x's
    accumulator (log S = 0: TF's inf * 0). Where S is within rounding of 1
    (other exps each below half an ulp of 1, together above it), which of
    the two TF gives depends on the order it sums in: its float32 running sum
    can drop each term where xent's float64 S keeps them."""
    if under == top and s_rounds_to_one(total, x):
        return like(np.nan, end)
    return end


@njit(**INLINE)
def s_rounds_to_one(total, x):
    """Whether a row's sum of exps `total` (float64) is 1 in the accumulator of
    logits x (a row), as TF's float32 S is: its log S is then 0, and an
    infinite target on the row's max makes TF's ``inf * 0``."""
    return like(total, load(x, 0)) == 1.0


