"""Fused kernels compiled with numba: per-row loss, log-sum-exp and gradient.

Same contract and numbers as the NumPy reference in `_kernels` (read it first):
``sparse_rows`` / ``dense_rows`` return ``(loss, lse)`` in the accumulator
dtype and write ``softmax - labels`` into ``grad_out`` (which may be the logits
themselves). What changes is how the work is done: each row is read from
memory once, in chunks of 2048 entries that stay in L1 while they are
computed on, so memory streams while the core computes.

    pass A, per chunk c:  m_c = max_j x_j         (NaN if any x_j is NaN)
                          s_c = sum_j exp(x_j - m_c)   (kept, for a gradient)
                          dense: sum_j y_j, sum_j y_j (x_j - m_c)
    combine:              M = max_c m_c,  S = sum_c s_c exp(m_c - M)
    pass B (gradient):    grad_j = e_j exp(m_c - M) / S - y_j   (row still in L2)

This is the reference's shift by the row max M, up to rounding: no
temporaries, one read of each logit and one write of each gradient entry. A
row whose max is not finite (a NaN, a ``+inf``, or every entry ``-inf``) is all
NaN, as in TensorFlow; ``-inf`` entries elsewhere are exactly 0 in the softmax.

Arithmetic runs in float32 (float64 for float64). float16 and bfloat16 arrays
are read and written in their own format: the kernels see them as integer
views (``int16`` for float16, ``uint16`` for bfloat16, the view's type naming
the format) and convert each element, rounding to nearest even once at the end.
``exp`` is a polynomial that vectorises (see `_exp32`); fast-math flags allow
reassociation and contraction but never assume away NaN or infinity.

Rows are split over `xent.get_num_threads()` threads for inputs above a few MB
(numba's ``workqueue`` layer unless the user chose another: its idle threads
sleep instead of spinning); smaller inputs run on the calling thread. Machine
code is cached on disk, so a fresh process pays only the cache load.
"""
import math
import os
import threading

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from xent import _threads
from xent._dtypes import accumulator

__all__ = ["sparse_rows", "dense_rows"]

if llvmlite.binding.llvm_version_info < (17,):
    # llvm.ldexp and vectorised llvm.maximum reductions need LLVM 17 or newer.
    raise ImportError(f"numba {numba.__version__} is built on LLVM "
                      f"{llvmlite.binding.llvm_version_info}; xent's kernels need LLVM 17+")

# Below this much work one thread beats two (waking a sleeping worker costs
# tens of microseconds). Work is counted in bytes of logits, plus
# `_ROW_COST_BYTES` per row for the per-row steps (a log, the label, the ends
# of the vector loops), which dominate when rows are short.
PARALLEL_MIN_BYTES = 4 << 20
_ROW_COST_BYTES = 256
# Each thread gets this many row blocks (pulled dynamically), so a core that
# is busy with another process delays the call less.
_BLOCKS_PER_THREAD = 4
# Rows are read in chunks of this many elements (8 KB of float32, in L1).
_CHUNK = np.uint64(2048)
_U0, _U1 = np.uint64(0), np.uint64(1)

_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
_KERNEL = {"fastmath": _FAST, "error_model": "numpy", "nogil": True, "cache": True}
_INLINE = {"fastmath": _FAST, "error_model": "numpy", "inline": "always"}


# --- LLVM intrinsics numba does not expose ------------------------------------

def _ir_type(numba_type):
    """The LLVM type of a numba float type."""
    return ir.DoubleType() if numba_type == types.float64 else ir.FloatType()


def _call_llvm(builder, name, ret, args, flags=()):
    """Call the LLVM intrinsic `name` returning `ret` on `args`."""
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args,
                        fastmath=flags)


def _suffix(numba_type):
    return "f64" if numba_type == types.float64 else "f32"


@intrinsic
def _maximum(typingctx, a, b):
    """max(a, b), NaN if either is NaN (``llvm.maximum``): a NaN-propagating max that vectorises."""
    def codegen(context, builder, sig, args):
        return _call_llvm(builder, f"llvm.maximum.{_suffix(a)}", _ir_type(a), args, ("nsz",))
    return a(a, a), codegen


@intrinsic
def _max_finite(typingctx, a, b):
    """max(a, b) for operands known not to be NaN: a single ``vmaxps``."""
    def codegen(context, builder, sig, args):
        return _call_llvm(builder, f"llvm.maxnum.{_suffix(a)}", _ir_type(a), args, ("nnan", "nsz"))
    return a(a, a), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once; never reassociated (keeps the two-step ln 2)."""
    def codegen(context, builder, sig, args):
        return _call_llvm(builder, f"llvm.fma.{_suffix(a)}", _ir_type(a), args)
    return a(a, a, a), codegen


@intrinsic
def _label_loss(typingctx, log_s, x_label, m):
    """log_s - (x_label - m) in float64, exactly as written.

    Huge logits must cancel in ``x_label - m`` before log_s is involved, so these
    two subtractions carry only the ``nsz`` flag: numba's fast-math pass leaves
    flagged instructions alone, and LLVM may not reassociate them.
    """
    def codegen(context, builder, sig, args):
        wide = [builder.fpext(a, ir.DoubleType()) if t == types.float32 else a
                for a, t in zip(args, sig.args)]
        shifted = builder.fsub(wide[1], wide[2], flags=("nsz",))
        return builder.fsub(wide[0], shifted, flags=("nsz",))
    return types.float64(log_s, x_label, m), codegen


@intrinsic
def _rint(typingctx, a):
    """a rounded to the nearest integer, ties to even."""
    def codegen(context, builder, sig, args):
        return _call_llvm(builder, f"llvm.rint.{_suffix(a)}", _ir_type(a), args)
    return a(a), codegen


@intrinsic
def _ldexp(typingctx, p, n):
    """p * 2**n for an integral float n (``vscalefps`` on AVX-512)."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        return _call_llvm(builder, f"llvm.ldexp.{_suffix(p)}.i32", _ir_type(p),
                          [args[0], builder.fptosi(args[1], i32)])
    return p(p, p), codegen


@intrinsic
def _bf16_to_f32(typingctx, bits):
    """bfloat16 (as uint16 bits) to float32, exactly: the bits become the high half."""
    def codegen(context, builder, sig, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _f32_to_bf16(typingctx, value):
    """float32 to bfloat16 bits, rounded to nearest even; NaN stays a (quiet) NaN."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        high = builder.lshr(bits, ir.Constant(i32, 16))
        odd = builder.and_(high, ir.Constant(i32, 1))
        rounded = builder.lshr(builder.add(builder.add(bits, ir.Constant(i32, 0x7FFF)), odd),
                               ir.Constant(i32, 16))
        quiet = builder.or_(high, ir.Constant(i32, 0x40))
        is_nan = builder.fcmp_unordered("uno", args[0], args[0])
        return builder.trunc(builder.select(is_nan, quiet, rounded), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def _f16_to_f32(typingctx, bits):
    """float16 (as int16 bits) to float32, exactly (``vcvtph2ps``)."""
    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.int16), codegen


@intrinsic
def _f32_to_f16(typingctx, value):
    """float32 to float16 bits, rounded to nearest even (``vcvtps2ph``)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.int16(types.float32), codegen


# --- exp as a polynomial that vectorises ----------------------------------------

_F32 = np.float32
_LOG2E32, _LN2_32 = _F32(math.log2(math.e)), _F32(math.log(2))
_FLOOR32 = _F32(-200.0)   # exp of anything below is 0 once scaled by 2**n
# e**r ~ 1 + r (c1 + r (c2 + ... + r c5)) on |r| <= ln(2)/2: least squares refined
# to equal-ripple relative error (Lawson), 9.5e-8 with these float32
# coefficients; bench/fit_exp.py reproduces them.
_C1, _C2, _C3, _C4, _C5 = (_F32(c) for c in (
    0.9999997019767761, 0.4999915063381195, 0.1666763573884964,
    0.04189793020486832, 0.008290315046906471))

_LOG2E64, _LN2_HI64 = math.log2(math.e), math.log(2)
_LN2_LO64 = 2.3190468138462996e-17   # ln 2 - float64(ln 2)
_FLOOR64 = -2000.0
# Taylor series to r**13: truncation error below 5e-18 on |r| <= ln(2)/2.
_T = tuple(1.0 / math.factorial(k) for k in range(1, 14))
_T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10, _T11, _T12, _T13 = _T


@njit(**_INLINE)
def _exp32(x):
    """exp(x) for float32 ``x <= 0`` or ``-inf`` (0 for ``-inf``).

    x = n ln2 + r with n an integer and |r| <= ln(2)/2, then e**x = 2**n p(r).
    Within 2 ulp (relative error 2e-7) for x > -20, where softmax values
    matter; 5 ulp at worst near the underflow threshold. Seven fused
    multiply-adds per 16 values: exp is what bounds the kernels once memory
    streams at full speed, so ln 2 is one float32 constant (a second, exact
    reduction step would cost one more) and the polynomial has degree 5.
    """
    x = _max_finite(x, _FLOOR32)
    n = _rint(x * _LOG2E32)
    r = _fma(-n, _LN2_32, x)
    q = _C2 + r * (_C3 + r * (_C4 + r * _C5))
    return _ldexp(_fma(r, _fma(r, q, _C1), _F32(1.0)), n)


@njit(**_INLINE)
def _exp64(x):
    """exp(x) for float64 ``x <= 0`` or ``-inf``, as `_exp32` with a longer series."""
    x = _max_finite(x, _FLOOR64)
    n = _rint(x * _LOG2E64)
    r = _fma(-n, _LN2_LO64, _fma(-n, _LN2_HI64, x))
    p = _T12 + r * _T13
    p = _T9 + r * (_T10 + r * (_T11 + r * p))
    p = _T5 + r * (_T6 + r * (_T7 + r * (_T8 + r * p)))
    p = 1.0 + r * (_T1 + r * (_T2 + r * (_T3 + r * (_T4 + r * p))))
    return _ldexp(p, n)


# --- typed element access: the one place that knows the storage formats ---------

def _exp(x):
    """exp(x) for ``x <= 0`` in x's precision (numba only)."""


def _load(a, j):
    """Element `j` of `a` in the accumulator precision (numba only)."""


def _store(a, j, value):
    """Write `value` into element `j` of `a`, rounded to a's format (numba only)."""


def _like(value, ref):
    """`value` as a scalar of `ref`'s type (numba only)."""


@overload(_exp, inline="always", jit_options={"fastmath": _FAST})
def _exp_impl(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: _exp64(x)


@overload(_load, inline="always")
def _load_impl(a, j):
    if a.dtype == types.uint16:
        return lambda a, j: _bf16_to_f32(a[j])
    if a.dtype == types.int16:
        return lambda a, j: _f16_to_f32(a[j])
    return lambda a, j: a[j]


@overload(_store, inline="always")
def _store_impl(a, j, value):
    if a.dtype == types.uint16:
        def store_bf16(a, j, value):
            a[j] = _f32_to_bf16(np.float32(value))
        return store_bf16
    if a.dtype == types.int16:
        def store_f16(a, j, value):
            a[j] = _f32_to_f16(np.float32(value))
        return store_f16

    def store(a, j, value):
        a[j] = value
    return store


@overload(_like, inline="always")
def _like_impl(value, ref):
    if ref == types.float32:
        return lambda value, ref: np.float32(value)
    return lambda value, ref: np.float64(value)


def _exp_scratch(x, out):
    """Where pass A keeps exps when `out` cannot: a float32 row, else an empty one (numba only)."""


def _exp_row(out_row, scratch):
    """The row pass A keeps exps in: `out_row` if it holds the accumulator dtype, else `scratch`."""


def _holds_accumulator(out, x):
    """Whether numba array type `out` stores x's accumulator dtype exactly."""
    return out.dtype == (types.float64 if x.dtype == types.float64 else types.float32)


# These two return arrays, and are left to LLVM to inline: numba's own IR
# inliner lost a store through the returned row here (the label's gradient).
@overload(_exp_scratch)
def _exp_scratch_impl(x, out):
    if _holds_accumulator(out, x):
        return lambda x, out: np.empty(0, np.float32)
    return lambda x, out: np.empty(x.shape[1], np.float32)


@overload(_exp_row)
def _exp_row_impl(out_row, scratch):
    if out_row.dtype in (types.float32, types.float64):
        return lambda out_row, scratch: out_row
    return lambda out_row, scratch: scratch


# --- one row, in chunks -----------------------------------------------------------
#
# Pass A reads a row from memory once, chunk by chunk: the chunk's max, then the
# exps of the chunk (still in L1) shifted by that max, summed (dense: also the
# targets' sums). `_combine` then gives the row's max M and
# S = sum_c s_c exp(max_c - M), exactly as shifting by M would, up to rounding.
# With a gradient, pass A keeps the exps (in the output, or in a float32 row
# for half-precision outputs) and pass B rescales each chunk by
# exp(max_c - M) / S while the row is still in L2. Memory streams while the core
# computes, and every logit is read once and every gradient entry written once.
#
# Chunk bounds are unsigned: numba then skips its negative-index check and the
# loops vectorise.

@njit(**_INLINE)
def _chunk_max(x, lo, hi):
    """max of x[lo:hi] in the accumulator dtype; NaN if any entry is NaN."""
    m = _load(x, lo)
    for j in range(lo + _U1, hi):
        m = _maximum(m, _load(x, j))
    return m


def _chunk_exps(x, e, lo, hi, m):
    """sum of exp(x_j - m) over [lo, hi); also kept as e_j unless e is None (numba only)."""


def _zero(e, lo, hi):
    """e[lo:hi] = 0 unless e is None (numba only)."""


@overload(_chunk_exps, inline="always", jit_options={"fastmath": _FAST})
def _chunk_exps_impl(x, e, lo, hi, m):
    if isinstance(e, types.NoneType):
        def sum_only(x, e, lo, hi, m):
            s = _like(0.0, m)
            for j in range(lo, hi):
                s += _exp(_load(x, j) - m)
            return s
        return sum_only

    def keep(x, e, lo, hi, m):   # e holds the accumulator dtype; it may be x
        s = _like(0.0, m)
        for j in range(lo, hi):
            v = _exp(_load(x, j) - m)
            e[j] = v
            s += v
        return s
    return keep


@overload(_zero, inline="always")
def _zero_impl(e, lo, hi):
    if isinstance(e, types.NoneType):
        return lambda e, lo, hi: None

    def zero(e, lo, hi):
        for j in range(lo, hi):
            e[j] = 0.0
    return zero


@njit(**_INLINE)
def _chunk_targets(x, y, lo, hi, shift):
    """(sum_j y_j, sum_j y_j (x_j - shift)) over [lo, hi)."""
    sy = _like(0.0, shift)
    syx = _like(0.0, shift)
    for j in range(lo, hi):
        yj = _load(y, j)
        sy += yj
        syx += yj * (_load(x, j) - shift)
    return sy, syx


@njit(**_INLINE)
def _exp_pass(x, e, maxes, sums):
    """Pass A: per chunk c, maxes[c] and sums[c] = sum exp(x - maxes[c]).

    Unless e is None, also e_j = exp(x_j - max of j's chunk) (0 in a chunk of
    -inf). False as soon as a chunk holds a NaN or ``+inf``: the row is NaN.
    """
    n = np.uint64(x.shape[0])
    c = 0
    for lo in range(_U0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        m = _chunk_max(x, lo, hi)
        maxes[c] = m
        if m == -np.inf:
            sums[c] = 0.0
            _zero(e, lo, hi)
        elif np.isfinite(m):
            sums[c] = _chunk_exps(x, e, lo, hi, m)
        else:
            return False
        c += 1
    return True


@njit(**_INLINE)
def _dense_pass(x, y, e, maxes, sums, ysums, yxsums):
    """Pass A with targets: as `_exp_pass`, plus per chunk c the sums of y_j and of
    y_j (x_j - shift_c), shift_c = maxes[c], taken before e (which may be x) is written.

    A chunk of ``-inf`` logits is shifted by 0 so that y_j * x_j gives TF's
    ``inf`` (or NaN where y_j is 0) for it.
    """
    n = np.uint64(x.shape[0])
    c = 0
    for lo in range(_U0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        m = _chunk_max(x, lo, hi)
        maxes[c] = m
        if m == -np.inf:
            ysums[c], yxsums[c] = _chunk_targets(x, y, lo, hi, _like(0.0, m))
            sums[c] = 0.0
            _zero(e, lo, hi)
        elif np.isfinite(m):
            ysums[c], yxsums[c] = _chunk_targets(x, y, lo, hi, m)
            sums[c] = _chunk_exps(x, e, lo, hi, m)
        else:
            return False
        c += 1
    return True


@njit(**_INLINE)
def _combine(maxes, sums):
    """The row's max M and S = sum_c sums[c] exp(maxes[c] - M), in float64."""
    top = maxes[0]
    for c in range(1, maxes.shape[0]):
        top = max(top, maxes[c])
    total = 0.0
    if top > -np.inf:
        for c in range(maxes.shape[0]):
            total += sums[c] * _exp64(maxes[c] - top)
    return top, total


@njit(**_INLINE)
def _combine_targets(maxes, ysums, yxsums, top):
    """(sum_j y_j, sum_j y_j (x_j - top)) from the per-chunk sums."""
    sy = 0.0
    syx = 0.0
    for c in range(maxes.shape[0]):
        shift = maxes[c] if maxes[c] > -np.inf else 0.0
        sy += ysums[c]
        syx += yxsums[c] + (shift - top) * ysums[c]
    return sy, syx


@njit(**_INLINE)
def _rescale(e, out, maxes, top, inv_s):
    """Pass B: out_j = e_j exp(max_c - M) / S, rounded to out's format (e may be out)."""
    n = np.uint64(e.shape[0])
    c = 0
    for lo in range(_U0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        factor = _like(_exp64(maxes[c] - top) * inv_s, e[0])
        for j in range(lo, hi):
            _store(out, j, e[j] * factor)
        c += 1


@njit(**_INLINE)
def _rescale_minus(e, y, out, maxes, top, inv_s):
    """Pass B, dense: out_j = e_j exp(max_c - M) / S - y_j (e may be out)."""
    n = np.uint64(e.shape[0])
    c = 0
    for lo in range(_U0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        factor = _like(_exp64(maxes[c] - top) * inv_s, e[0])
        for j in range(lo, hi):
            _store(out, j, e[j] * factor - _load(y, j))
        c += 1


@njit(**_INLINE)
def _fill_nan(out, ref):
    """Every element of `out` NaN."""
    nan = _like(np.nan, ref)
    for j in range(out.shape[0]):
        _store(out, j, nan)


# --- one row, per need ----------------------------------------------------------------

@njit(**_INLINE)
def _sparse_row_loss(x, label, maxes, sums):
    """(loss, lse) of one row; NaN for a NaN, a ``+inf``, all ``-inf`` or a label outside [0, C)."""
    nan = _like(np.nan, _load(x, 0))
    if not (0 <= label < x.shape[0] and _exp_pass(x, None, maxes, sums)):
        return nan, nan
    top, total = _combine(maxes, sums)
    if top == -np.inf:
        return nan, nan
    log_s = np.log(total)
    return _label_loss(log_s, _load(x, label), top), top + log_s


@njit(**_INLINE)
def _sparse_row_grad(x, label, out, e, maxes, sums):
    """As `_sparse_row_loss`, writing softmax(x) - onehot(label) into out (may be x).

    `e` is where pass A keeps the exps: out itself, or a float32 row when out
    is half precision (so that each gradient entry is rounded once).
    """
    nan = _like(np.nan, _load(x, 0))
    ok = 0 <= label < x.shape[0]
    x_label = _load(x, label) if ok else nan
    if not (ok and _exp_pass(x, e, maxes, sums)):
        _fill_nan(out, nan)
        return nan, nan
    top, total = _combine(maxes, sums)
    if top == -np.inf:
        _fill_nan(out, nan)
        return nan, nan
    _rescale(e, out, maxes, top, 1.0 / total)
    m = _like(top, x_label)
    _store(out, label, _exp(x_label - m) * _like(1.0 / total, m) - _like(1.0, m))
    log_s = np.log(total)
    return _label_loss(log_s, x_label, m), top + log_s


@njit(**_INLINE)
def _dense_row_loss(x, y, maxes, sums, ysums, yxsums):
    """(loss, lse) of one row against targets y: sum_j y_j (lse - x_j)."""
    nan = _like(np.nan, _load(x, 0))
    if not _dense_pass(x, y, None, maxes, sums, ysums, yxsums):
        return nan, nan
    top, total = _combine(maxes, sums)
    if top == -np.inf:
        return nan, nan
    sy, syx = _combine_targets(maxes, ysums, yxsums, top)
    log_s = np.log(total)
    return log_s * sy - syx, top + log_s


@njit(**_INLINE)
def _dense_row_grad(x, y, out, e, maxes, sums, ysums, yxsums):
    """As `_dense_row_loss`, writing softmax(x) - y into out (may be x); `e` as in sparse."""
    nan = _like(np.nan, _load(x, 0))
    if not _dense_pass(x, y, e, maxes, sums, ysums, yxsums):
        _fill_nan(out, nan)
        return nan, nan
    top, total = _combine(maxes, sums)
    if top == -np.inf:
        _fill_nan(out, nan)
        return nan, nan
    sy, syx = _combine_targets(maxes, ysums, yxsums, top)
    _rescale_minus(e, y, out, maxes, top, 1.0 / total)
    log_s = np.log(total)
    return log_s * sy - syx, top + log_s


# --- a range of rows, per need (called directly, or per block by the threads) ----

@njit(**_INLINE)
def _chunk_stats(x, count):
    """`count` float64 arrays with one entry per chunk of a row of x."""
    n = (x.shape[1] + int(_CHUNK) - 1) // int(_CHUNK)
    return np.empty((count, n), np.float64)


@njit(**_INLINE)
def _target(y, i):
    """Row i of the dense targets, which have 1 or N rows."""
    return y[i if y.shape[0] > 1 else 0]


@njit(**_KERNEL)
def _sparse_loss_rows(x, labels, loss, lse, lo, hi):
    stats = _chunk_stats(x, 2)
    for i in range(lo, hi):
        loss[i], lse[i] = _sparse_row_loss(x[i], labels[i], stats[0], stats[1])


@njit(**_KERNEL)
def _sparse_grad_rows(x, labels, out, loss, lse, lo, hi):
    stats = _chunk_stats(x, 2)
    scratch = _exp_scratch(x, out)
    for i in range(lo, hi):
        row = out[i]
        loss[i], lse[i] = _sparse_row_grad(x[i], labels[i], row, _exp_row(row, scratch),
                                           stats[0], stats[1])


@njit(**_KERNEL)
def _sparse_grad_rows_inplace(x, labels, loss, lse, lo, hi):
    stats = _chunk_stats(x, 2)
    scratch = _exp_scratch(x, x)
    for i in range(lo, hi):
        row = x[i]
        loss[i], lse[i] = _sparse_row_grad(row, labels[i], row, _exp_row(row, scratch),
                                           stats[0], stats[1])


@njit(**_KERNEL)
def _dense_loss_rows(x, y, loss, lse, lo, hi):
    stats = _chunk_stats(x, 4)
    for i in range(lo, hi):
        loss[i], lse[i] = _dense_row_loss(x[i], _target(y, i), stats[0], stats[1], stats[2],
                                          stats[3])


@njit(**_KERNEL)
def _dense_grad_rows(x, y, out, loss, lse, lo, hi):
    stats = _chunk_stats(x, 4)
    scratch = _exp_scratch(x, out)
    for i in range(lo, hi):
        row = out[i]
        loss[i], lse[i] = _dense_row_grad(x[i], _target(y, i), row, _exp_row(row, scratch),
                                          stats[0], stats[1], stats[2], stats[3])


@njit(**_KERNEL)
def _dense_grad_rows_inplace(x, y, loss, lse, lo, hi):
    stats = _chunk_stats(x, 4)
    scratch = _exp_scratch(x, x)
    for i in range(lo, hi):
        row = x[i]
        loss[i], lse[i] = _dense_row_grad(row, _target(y, i), row, _exp_row(row, scratch),
                                          stats[0], stats[1], stats[2], stats[3])


# The same, with blocks of rows spread over numba's threads. Each takes the
# block count last; block b covers rows [b*n//blocks, (b+1)*n//blocks).

@njit(parallel=True, **_KERNEL)
def _sparse_loss_blocks(x, labels, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        _sparse_loss_rows(x, labels, loss, lse, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **_KERNEL)
def _sparse_grad_blocks(x, labels, out, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        _sparse_grad_rows(x, labels, out, loss, lse, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **_KERNEL)
def _sparse_grad_blocks_inplace(x, labels, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        _sparse_grad_rows_inplace(x, labels, loss, lse, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **_KERNEL)
def _dense_loss_blocks(x, y, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        _dense_loss_rows(x, y, loss, lse, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **_KERNEL)
def _dense_grad_blocks(x, y, out, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        _dense_grad_rows(x, y, out, loss, lse, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **_KERNEL)
def _dense_grad_blocks_inplace(x, y, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        _dense_grad_rows_inplace(x, y, loss, lse, b * n // blocks, (b + 1) * n // blocks)


# --- Python side: arrays in the kernels' formats, threads, copies ----------------

_launch_lock = threading.Lock()


def _use_workqueue_unless_chosen():
    """Pick numba's workqueue threading layer (its idle threads sleep) unless the user chose."""
    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"


_use_workqueue_unless_chosen()


def _kernel_view(a):
    """`a` as the kernels see it: half precision as integer views naming the format."""
    if a.dtype == np.float16:
        return a.view(np.int16)
    if a.dtype.name == "bfloat16":
        return a.view(np.uint16)
    return a


def _run(rows, blocks, nbytes, *args):
    """Run `rows(*args, 0, n)` on this thread, or `blocks(*args, k)` over k threads.

    Threads are used from `PARALLEL_MIN_BYTES` of work on, one call at a
    time (numba's workqueue layer takes one parallel launch at once; a caller
    that finds it busy computes on its own thread instead).
    """
    n = args[0].shape[0]
    threads = min(_threads.get_num_threads(), n)
    work = nbytes + n * _ROW_COST_BYTES
    if threads > 1 and work >= PARALLEL_MIN_BYTES and _launch_lock.acquire(blocking=False):
        try:
            numba.set_num_threads(threads)
            with numba.parallel_chunksize(1):
                blocks(*args, min(n, threads * _BLOCKS_PER_THREAD))
        finally:
            _launch_lock.release()
    else:
        rows(*args, 0, n)


def _same_buffer(a, b):
    """Whether `a` and `b` are the same elements of the same memory."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.shape == b.shape and a.dtype == b.dtype)


def _with_gradient(logits, grad_out, run_inplace, run_into):
    """Run a gradient kernel so that `grad_out` ends up holding the gradient.

    The kernels take C-contiguous arrays. Contiguous inputs are used as they
    are (in place when `grad_out` is `logits`), with no allocation; others go
    through a contiguous copy, and the gradient is copied back into `grad_out`.
    """
    inplace = _same_buffer(logits, grad_out)
    if inplace and logits.flags.c_contiguous:
        return run_inplace(_kernel_view(logits))
    x = np.ascontiguousarray(logits)
    if inplace:
        result = run_inplace(_kernel_view(x))
        grad_out[...] = x
        return result
    direct = grad_out.flags.c_contiguous and not np.may_share_memory(grad_out, logits)
    out = grad_out if direct else np.empty(grad_out.shape, grad_out.dtype)
    result = run_into(_kernel_view(x), _kernel_view(out))
    if not direct:
        grad_out[...] = out
    return result


def sparse_rows(logits, labels, grad_out=None):
    """Sparse softmax cross-entropy of each row (the `_kernels.sparse_rows` contract).

    Args:
      logits: ``[N, C]`` float16/bfloat16/float32/float64 array, ``C >= 1``.
      labels: ``[N]`` int32/int64 array; a label outside ``[0, C)`` gives a NaN row.
      grad_out: optional ``[N, C]`` array (may be `logits` itself) that receives
        ``softmax(logits) - one_hot(labels)`` in its own dtype.

    Returns:
      ``(loss, lse)``: two ``[N]`` arrays in the accumulator dtype.
    """
    acc = accumulator(logits.dtype)
    loss, lse = np.empty(logits.shape[0], acc), np.empty(logits.shape[0], acc)
    if logits.shape[0] == 0:
        return loss, lse
    labels = np.ascontiguousarray(labels)
    if grad_out is None:
        x = _kernel_view(np.ascontiguousarray(logits))
        _run(_sparse_loss_rows, _sparse_loss_blocks, logits.nbytes, x, labels, loss, lse)
        return loss, lse
    _with_gradient(
        logits, grad_out,
        lambda x: _run(_sparse_grad_rows_inplace, _sparse_grad_blocks_inplace,
                       logits.nbytes, x, labels, loss, lse),
        lambda x, out: _run(_sparse_grad_rows, _sparse_grad_blocks,
                            logits.nbytes, x, labels, out, loss, lse))
    return loss, lse


def _target_rows(labels, logits):
    """Dense labels as ``[1 or N, C]`` C-contiguous rows, undoing a stride-0 row broadcast.

    A class axis broadcast from width 1 is expanded (rare: labels of shape ``[N, 1]``).
    """
    if labels.shape[0] > 1 and labels.strides[0] == 0:
        labels = labels[:1]
    if labels.shape[1] != logits.shape[1]:
        labels = np.broadcast_to(labels, (labels.shape[0], logits.shape[1]))
    if labels.dtype not in (logits.dtype, accumulator(logits.dtype)):
        labels = labels.astype(accumulator(logits.dtype))
    return _kernel_view(np.ascontiguousarray(labels))


def dense_rows(logits, labels, grad_out=None):
    """Softmax cross-entropy of each row against targets (the `_kernels.dense_rows` contract).

    Args:
      logits: ``[N, C]`` float array.
      labels: ``[N, C]`` float array, possibly a broadcast view of ``[1, C]``,
        ``[N, 1]`` or ``[1, 1]``; the logits' dtype or its accumulator dtype.
      grad_out: optional ``[N, C]`` array (may be `logits`) that receives
        ``softmax(logits) - labels``.

    Returns:
      ``(loss, lse)``: two ``[N]`` arrays in the accumulator dtype. With
      ``C == 0`` the loss is 0 and lse is ``-inf``.
    """
    acc = accumulator(logits.dtype)
    n, c = logits.shape
    if c == 0:
        return np.zeros(n, acc), np.full(n, -np.inf, acc)
    loss, lse = np.empty(n, acc), np.empty(n, acc)
    if n == 0:
        return loss, lse
    y = _target_rows(labels, logits)
    if grad_out is None:
        x = _kernel_view(np.ascontiguousarray(logits))
        _run(_dense_loss_rows, _dense_loss_blocks, logits.nbytes, x, y, loss, lse)
        return loss, lse
    _with_gradient(
        logits, grad_out,
        lambda x: _run(_dense_grad_rows_inplace, _dense_grad_blocks_inplace,
                       logits.nbytes, x, y, loss, lse),
        lambda x, out: _run(_dense_grad_rows, _dense_grad_blocks,
                            logits.nbytes, x, y, out, loss, lse))
    return loss, lse
