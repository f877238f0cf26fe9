"""Fused kernels compiled with numba: per-row loss, log-sum-exp and gradient.

Same contract and numbers as the NumPy reference in `_kernels` (read it first):
``sparse_rows`` / ``dense_rows`` return ``(loss, lse)`` in the accumulator
dtype and write ``softmax - labels`` into ``grad_out`` (which may be the logits
themselves). What changes is how the work is done: each row is read from
memory once, in chunks of 2048 entries that stay in L1 while they are
computed on, so memory streams while the core computes.

    pass A, chunk 0:      m_0 = max_j x_j;  s_0 = sum_j exp(x_j - m_0);  t_0 = m_0
    pass A, chunk c > 0:  t_c = max(m_0..m_{c-1}), and in one loop
                          m_c = max_j x_j,  s_c = sum_j exp(x_j - t_c)
                          (swept again as chunk 0 if m_c > t_c + 16 or s_c is not
                          finite: a NaN or an infinity, as these exps have no floor)
                          dense: also sum_j y_j and sum_j y_j (x_j - t_c)
    combine:              M = max_c m_c,  S = sum_c s_c exp(t_c - M)
    pass B (gradient):    grad_j = e_j exp(t_c - M) / S - y_j   (row still in L2)

While pass A computes on a half-precision row, it prefetches the next one, so
that memory keeps streaming through pass B (`_prefetch_chunk`).

This is the reference's shift by the row max M, up to rounding: no
temporaries, one read of each logit and one write of each gradient entry. A
row whose max is not finite (a NaN, a ``+inf``, or every entry ``-inf``) is all
NaN, as in TensorFlow; ``-inf`` entries elsewhere are exactly 0 in the softmax.

Arithmetic runs in float32 (float64 for float64). float16 and bfloat16 arrays
are read and written in their own format: the kernels see them as integer
views (``int16`` for float16, ``uint16`` for bfloat16, the view's type naming
the format) and convert each element, rounding to nearest even once at the end.
``exp`` is a polynomial that vectorises (see `_exp32`; `_exp_half` for
half-precision logits with sparse labels, at a twentieth of their ulp, whose
one-sweep loop folds the shift into the first multiply-add: `_sweep_exp`).
bfloat16 gradients are rounded by the CPU's own conversion where it has one
(`_scale_to_bf16`). Fast-math flags allow reassociation and contraction but
never assume away NaN or infinity (save for one-sweep's running max, whose NaN
shows in the sum; and finiteness is tested on the bits, see `_is_finite`).

Rows of at most `NARROW_MAX` classes (float32 arithmetic) have too few
logits for these vector loops: they go 16 at a time through
`_narrow_block`, one row per vector lane, with the same arithmetic.

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
    """max(a, b) for operands assumed not NaN: a single ``vmaxps`` (a running max)."""
    def codegen(context, builder, sig, args):
        return _call_llvm(builder, f"llvm.maxnum.{_suffix(a)}", _ir_type(a), args, ("nnan", "nsz"))
    return a(a, a), codegen


@intrinsic
def _floor_at(typingctx, floor, x):
    """floor if floor > x else x: one ``vmaxps`` that lets a NaN x through."""
    def codegen(context, builder, sig, args):
        return builder.select(builder.fcmp_ordered(">", args[0], args[1]), args[0], args[1])
    return x(x, x), codegen


@intrinsic
def _mul_exact(typingctx, a, b):
    """a * b that LLVM may not regroup with another product.

    It carries only the ``nsz`` flag: numba's fast-math pass leaves flagged
    instructions alone, and without ``reassoc`` LLVM keeps the order.
    """
    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1], flags=("nsz",))
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
def _is_finite(typingctx, a):
    """Whether a is finite, tested on its bits. Under the kernels' fast-math
    flags LLVM once folded ``np.isfinite`` of a sum of unfloored exps to true
    (numba tests ``x - x`` for NaN, which reassociation makes 0)."""
    def codegen(context, builder, sig, args):
        bits = 64 if sig.args[0] == types.float64 else 32
        exponent = (2 ** 11 - 1) << 52 if bits == 64 else 0xFF << 23
        word = builder.bitcast(args[0], ir.IntType(bits))
        field = builder.and_(word, ir.Constant(ir.IntType(bits), exponent))
        return builder.icmp_unsigned("!=", field, ir.Constant(ir.IntType(bits), exponent))
    return types.boolean(a), codegen


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
def _prefetch(typingctx, a, j):
    """Ask for the cache line holding a[j] (into L2), without waiting for it."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [args[1]])
        i32 = ir.IntType(32)
        _call_llvm(builder, "llvm.prefetch.p0", ir.VoidType(),
                   [ptr, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.none(a, j), codegen


@intrinsic
def _lrint(typingctx, a):
    """float32 a rounded to the nearest int32, ties to even (``vcvtps2dq``)."""
    def codegen(context, builder, sig, args):
        return _call_llvm(builder, "llvm.lrint.i32.f32", ir.IntType(32), args)
    return types.int32(a), codegen


@intrinsic
def _ldexp_int(typingctx, p, n):
    """p * 2**n for an int32 n (``vscalefps`` on AVX-512, sharing n's conversion to float)."""
    def codegen(context, builder, sig, args):
        return _call_llvm(builder, "llvm.ldexp.f32.i32", ir.FloatType(), args)
    return p(p, n), codegen


@intrinsic
def _bf16_to_f32(typingctx, bits):
    """bfloat16 (as uint16 bits) to float32, exactly: the bits become the high half."""
    def codegen(context, builder, sig, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())
    return types.float32(types.uint16), codegen


def _round_to_bf16(builder, bits):
    """IR: the high half of float32 `bits` (i32), rounded to nearest even, as an i32."""
    i32 = ir.IntType(32)
    odd = builder.and_(builder.lshr(bits, ir.Constant(i32, 16)), ir.Constant(i32, 1))
    return builder.lshr(builder.add(builder.add(bits, ir.Constant(i32, 0x7FFF)), odd),
                        ir.Constant(i32, 16))


@intrinsic
def _f32_to_bf16(typingctx, value):
    """float32 to bfloat16 bits, rounded to nearest even; NaN stays a (quiet) NaN."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        quiet = builder.or_(builder.lshr(bits, ir.Constant(i32, 16)), ir.Constant(i32, 0x40))
        is_nan = builder.fcmp_unordered("uno", args[0], args[0])
        rounded = _round_to_bf16(builder, bits)
        return builder.trunc(builder.select(is_nan, quiet, rounded), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def _finite_to_bf16(typingctx, value):
    """As `_f32_to_bf16` for a value known not to be NaN (no NaN test: two fewer
    vector operations in pass B, whose products are finite)."""
    def codegen(context, builder, sig, args):
        rounded = _round_to_bf16(builder, builder.bitcast(args[0], ir.IntType(32)))
        return builder.trunc(rounded, ir.IntType(16))
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


def _bfloat16_type():
    """LLVM's ``bfloat`` type, which llvmlite does not name; None if this llvmlite
    cannot make it (pass B then rounds bfloat16 in software only)."""
    try:
        class BFloat16Type(ir.types._BaseFloatType):
            null = "0.0"
            intrinsic_name = "bf16"

            def __str__(self):
                return "bfloat"

        BFloat16Type._create_instance()
        return BFloat16Type()
    except (AttributeError, TypeError):   # llvmlite's private float-type base changed
        return None


_BFLOAT16 = _bfloat16_type()

# `_scale_to_bf16` works on blocks of this many floats: four vectors of 16.
_BF16_BLOCK = 64


def _splat(builder, value, vector_type):
    """A vector of `vector_type` with every lane `value`."""
    lanes = ir.VectorType(ir.IntType(32), vector_type.count)
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value,
                                 ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(lanes, [0] * vector_type.count))


@intrinsic
def _scale_to_bf16(typingctx, e, out, lo, hi, factor):
    """out[j] = bfloat16(e[j] * factor) over the whole 64-blocks of [lo, hi), with
    the CPU's own conversion; returns where it stopped, or ``2**64 - 1`` when a
    product fell below the smallest normal float (or is 0).

    ``vcvtneps2bf16`` (what LLVM makes of a vector ``fptrunc`` to bfloat on
    AVX-512 BF16) rounds to nearest even like `_f32_to_bf16` but takes
    subnormal inputs as 0: the caller redoes the range in software when any
    product was that small. The loop keeps a running min of the products
    for that, with no branch (two vector operations per 16 entries, where
    the integer rounding takes six). Elsewhere LLVM emulates the conversion
    exactly. e is float32, out uint16 (bfloat16 bits); factor is finite.
    """
    def codegen(context, builder, sig, args):
        e_data = context.make_array(sig.args[0])(context, builder, args[0]).data
        out_data = context.make_array(sig.args[1])(context, builder, args[1]).data
        i64, f32 = ir.IntType(64), ir.FloatType()
        floats = ir.VectorType(f32, 16)
        halves = ir.VectorType(ir.IntType(16), 16)
        bfloats = ir.VectorType(_BFLOAT16, 16)
        lo_, hi_ = args[2], args[3]
        scale = _splat(builder, args[4], floats)
        step = ir.Constant(i64, _BF16_BLOCK)
        end = builder.add(lo_, builder.mul(builder.udiv(builder.sub(hi_, lo_), step), step))
        none = ir.Constant(floats, [math.inf] * 16)
        entry = builder.block
        head = builder.append_basic_block("bf16.head")
        body = builder.append_basic_block("bf16.body")
        done = builder.append_basic_block("bf16.done")
        builder.branch(head)
        builder.position_at_end(head)
        j = builder.phi(i64)
        lows = [builder.phi(floats) for _ in range(_BF16_BLOCK // 16)]
        j.add_incoming(lo_, entry)
        for low in lows:
            low.add_incoming(none, entry)
        builder.cbranch(builder.icmp_unsigned("<", j, end), body, done)
        builder.position_at_end(body)
        for k, low in enumerate(lows):
            jk = builder.add(j, ir.Constant(i64, 16 * k))
            source = builder.bitcast(builder.gep(e_data, [jk]), floats.as_pointer())
            product = builder.fmul(builder.load(source, align=4), scale, flags=("nsz",))
            low.add_incoming(_call_llvm(builder, "llvm.minnum.v16f32", floats, [low, product],
                                        ("nnan", "nsz")), body)
            target = builder.bitcast(builder.gep(out_data, [jk]), halves.as_pointer())
            builder.store(builder.bitcast(builder.fptrunc(product, bfloats), halves),
                          target, align=2)
        j.add_incoming(builder.add(j, step), body)
        builder.branch(head)
        builder.position_at_end(done)
        low = lows[0]
        for other in lows[1:]:
            low = _call_llvm(builder, "llvm.minnum.v16f32", floats, [low, other], ("nnan", "nsz"))
        least = _call_llvm(builder, "llvm.vector.reduce.fmin.v16f32", f32, [low], ("nnan", "nsz"))
        small = builder.fcmp_ordered("<", least, ir.Constant(f32, 2.0 ** -126))
        return builder.select(small, ir.Constant(i64, 2 ** 64 - 1), end)
    return types.uint64(e, out, lo, hi, factor), codegen


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

# For half-precision logits (8 or 11 significant bits, and the same in their
# gradient), 2**f ~ 1 + f (h1 + f (h2 + f h3)) on |f| <= 1/2: relative error
# 1.0e-4, a twentieth of a float16 ulp; bench/fit_exp.py reproduces them.
_H1, _H2, _H3 = (_F32(c) for c in (0.6932829022407532, 0.24221095442771912,
                                   0.05500892922282219))

_LOG2E64, _LN2_HI64 = math.log2(math.e), math.log(2)
_LN2_LO64 = 2.3190468138462996e-17   # ln 2 - float64(ln 2)
_FLOOR64 = -2000.0
# Taylor series to r**13: truncation error below 5e-18 on |r| <= ln(2)/2.
_T = tuple(1.0 / math.factorial(k) for k in range(1, 14))
_T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10, _T11, _T12, _T13 = _T


@njit(**_INLINE)
def _exp32_unfloored(x):
    """exp(x) for float32 ``x <= 16``: `_exp32` without its floor.

    x = n ln2 + r with n an integer and |r| <= ln(2)/2, then e**x = 2**n p(r).
    Within 2 ulp (relative error 2e-7) for x > -20, where softmax values
    matter; 5 ulp at worst near the underflow threshold. Seven fused
    multiply-adds per 16 values: exp is what bounds the kernels once memory
    streams at full speed, so ln 2 is one float32 constant (a second, exact
    reduction step would cost one more) and the polynomial has degree 5.
    An x of -inf or NaN, or below -1.4e9 (n saturates), gives a non-finite
    result; other x below -104 give 0.
    """
    n = _lrint(x * _LOG2E32)
    r = _fma(-_F32(n), _LN2_32, x)
    q = _C2 + r * (_C3 + r * (_C4 + r * _C5))
    return _ldexp_int(_fma(r, _fma(r, q, _C1), _F32(1.0)), n)


@njit(**_INLINE)
def _exp32(x):
    """exp(x) for float32 ``x <= 16``, ``-inf`` (0) or NaN (NaN): see `_exp32_unfloored`."""
    return _exp32_unfloored(_floor_at(_FLOOR32, x))


@njit(**_INLINE)
def _exp2_half(t):
    """2**t for float32 t to 1e-4, with no floor: `_exp_half`'s core.

    t = n + f with n an integer and |f| <= 1/2: four multiply-adds per 16
    values against `_exp32`'s seven. A t of -inf, +inf or NaN gives a
    non-finite result, and so can |t| >= 2**31 (n saturates); finite t
    below -150 gives 0 or -0.
    """
    n = _lrint(t)
    f = t - _F32(n)
    return _ldexp_int(_fma(f, _H1 + f * (_H2 + f * _H3), _F32(1.0)), n)


@njit(**_INLINE)
def _exp_half(x):
    """exp(x) for float32 ``x <= 16`` (or ``-inf``, NaN) to 1e-4, for half-precision logits.

    e**x = 2**(x log2(e)). The rounding of x log2(e) costs up to 2e-5
    relative error at x = -87, still far below a half-precision ulp.
    """
    return _exp2_half(_floor_at(_FLOOR32, x) * _LOG2E32)


@njit(**_INLINE)
def _exp64(x):
    """exp(x) for float64 ``x <= 16``, ``-inf`` or NaN, as `_exp32` with a longer series."""
    x = _floor_at(_FLOOR64, x)
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


def _exp_of(a, y, x):
    """exp(x) for the logits `a` with targets `y`: `_exp_half` for half-precision
    logits with sparse labels (y None), where every use of the exps is a
    relative one; `_exp` otherwise (numba only). A dense gradient
    softmax - y cancels, and needs the exps to the accumulator's precision."""


def _tiny(value):
    """The smallest normal float of `value`'s type, as a float64 (numba only)."""


def _load(a, j):
    """Element `j` of `a` in the accumulator precision (numba only)."""


def _store(a, j, value):
    """Write `value` into element `j` of `a`, rounded to a's format (numba only)."""


def _store_finite(a, j, value):
    """`_store` for a value known to be finite (numba only)."""


def _like(value, ref):
    """`value` as a scalar of `ref`'s type (numba only)."""


@overload(_exp, inline="always", jit_options={"fastmath": _FAST})
def _exp_impl(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: _exp64(x)


def _half_sparse(a, y):
    """Whether numba types `a` (logits) and `y` (targets) are half precision with sparse labels."""
    return a.dtype in (types.uint16, types.int16) and isinstance(y, types.NoneType)


@overload(_exp_of, inline="always", jit_options={"fastmath": _FAST})
def _exp_of_impl(a, y, x):
    if _half_sparse(a, y):
        return lambda a, y, x: _exp_half(x)
    return lambda a, y, x: _exp(x)


# The one-sweep loop (see "one row, in chunks") shifts a chunk's logits by
# the row's running max, and its exps have no floor: a -inf, +inf or NaN
# logit makes the chunk's sum non-finite, and the chunk is swept again (one
# vector max per 16 logits saved). For half-precision logits with sparse
# labels, the shift is also folded into the exp's first multiply:
# exp(x_j - shift) is taken as 2**(x_j log2(e) + k) with k = -shift log2(e)
# rounded to float32, one FMA. Those exps amount to a shift of exactly
# -k / log2(e) (up to a relative 1e-8 on x_j - shift): `_sweep_shift` records
# it, so the combine and pass B use the shift the exps were taken against.
_LOG2E32_AS_64 = float(_LOG2E32)


def _sweep_k(a, y, shift):
    """The one-sweep loop's constant for shifting logits of `a` by `shift` (numba only):
    ``float32(-shift log2(e))`` when folded (half precision, sparse), else shift."""


def _sweep_shift(a, y, k):
    """The shift, as a float64, that the one-sweep loop's exps under constant k
    amount to: ``-k / log2(e)`` when folded, else k (numba only)."""


def _sweep_exp(a, y, v, k):
    """The one-sweep loop's exp(v - shift) for a logit v of `a`, under constant k (numba only)."""


@overload(_sweep_k, inline="always")
def _sweep_k_impl(a, y, shift):
    if _half_sparse(a, y):
        return lambda a, y, shift: np.float32(-np.float64(shift) * _LOG2E32_AS_64)
    return lambda a, y, shift: shift


@overload(_sweep_shift, inline="always")
def _sweep_shift_impl(a, y, k):
    if _half_sparse(a, y):
        return lambda a, y, k: -np.float64(k) / _LOG2E32_AS_64
    return lambda a, y, k: np.float64(k)


@overload(_sweep_exp, inline="always", jit_options={"fastmath": _FAST})
def _sweep_exp_impl(a, y, v, k):
    if _half_sparse(a, y):
        return lambda a, y, v, k: _exp2_half(_fma(v, _LOG2E32, k))
    if a.dtype != types.float64:
        return lambda a, y, v, k: _exp32_unfloored(v - _like(k, v))
    return lambda a, y, v, k: _exp64(v - k)


@overload(_tiny, inline="always")
def _tiny_impl(value):
    tiny = 2.0 ** -1022 if value == types.float64 else 2.0 ** -126
    return lambda value: tiny


@overload(_load, inline="always")
def _load_impl(a, j):
    if a.dtype == types.uint16:
        return lambda a, j: _bf16_to_f32(a[j])
    if a.dtype == types.int16:
        return lambda a, j: _f16_to_f32(a[j])
    return lambda a, j: a[j]


def _bf16_store(convert):
    """A bfloat16 store through `convert` (`_f32_to_bf16` or `_finite_to_bf16`)."""
    def store_bf16(a, j, value):
        a[j] = convert(np.float32(value))
    return store_bf16


@overload(_store, inline="always")
def _store_impl(a, j, value):
    if a.dtype == types.uint16:
        return _bf16_store(_f32_to_bf16)
    if a.dtype == types.int16:
        def store_f16(a, j, value):
            a[j] = _f32_to_f16(np.float32(value))
        return store_f16

    def store(a, j, value):
        a[j] = value
    return store


@overload(_store_finite, inline="always")
def _store_finite_impl(a, j, value):
    if a.dtype == types.uint16:
        return _bf16_store(_finite_to_bf16)
    return lambda a, j, value: _store(a, j, value)


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
# Pass A reads a row from memory once, chunk by chunk, and leaves per chunk c
# its max m_c, the shift t_c its exps were taken against and
# s_c = sum_j exp(x_j - t_c) (dense: also the targets' sums). The first chunk,
# and any chunk before which every logit was -inf, takes two sweeps over the
# chunk (its max, then its exps shifted by that max, the chunk still in L1).
# Every later chunk takes one sweep: its exps are shifted by the largest max
# seen so far in the row, t_c = max(m_0..m_{c-1}), while its own max is taken in
# the same loop, so the logits stream from memory while the core computes. A
# chunk whose max turns out more than `_SHIFT_SLACK` above t_c, or that holds a
# NaN or +inf, is swept again as a first chunk is (rare: it needs a new row
# record that far above the old one). Every shift is a logit of the row, so no
# exp can overflow and none is smaller than exp(x_j - M).
#
# `_combine` then gives the row's max M and S = sum_c s_c exp(t_c - M), exactly
# as shifting by M would, up to rounding; the max's own term is then made
# exactly 1 (see `_exact_top_term`). With a gradient, pass A keeps the exps
# (in the output, or in a float32 row for half-precision outputs) and pass B
# rescales each chunk by exp(t_c - M) / S while the row is still in L2: every
# logit is read once and every gradient entry written once.
#
# Chunk bounds are unsigned: numba then skips its negative-index check and the
# loops vectorise.

# How far (in logits) a chunk's max may exceed its shift: exps stay below
# e**16 ~ 2**23, so a chunk's float32 sum cannot overflow.
_SHIFT_SLACK = 16.0
# The rows of a row's per-chunk statistics (`_chunk_stats`).
_MAX, _SHIFT, _SUM, _YSUM, _YXSUM = 0, 1, 2, 3, 4


@njit(**_INLINE)
def _chunk_max(x, lo, hi):
    """max of x[lo:hi] in the accumulator dtype; NaN if any entry is NaN."""
    m = _load(x, lo)
    for j in range(lo + _U1, hi):
        m = _maximum(m, _load(x, j))
    return m


def _chunk_exps(x, y, e, lo, hi, m):
    """sum of exp(x_j - m) over [lo, hi); also kept as e_j unless e is None (numba only)."""


def _chunk_max_exps(x, y, e, save, lo, hi, k):
    """(max_j x_j, sum_j exp(x_j - shift)) over [lo, hi) in one loop, for the
    shift that constant k stands for (`_sweep_k`; numba only).

    Each exp is kept in e unless e is None; when e is x itself, save (else
    None) first receives x[lo:hi], so that the chunk can be swept again. A
    NaN, +inf or -inf makes the sum NaN or infinite (the max is then
    meaningless): these exps have no floor.
    """


def _restore(x, save, lo, hi):
    """x[lo:hi] = save[:hi - lo] unless save is None (numba only)."""


def _targets(x, y, lo, hi, shift):
    """`_chunk_targets`, or two zeros when y is None (numba only)."""


def _keep(a, j, value):
    """a[j] = value unless a is None (numba only): the optional stores of the sweeps."""


@overload(_keep, inline="always")
def _keep_impl(a, j, value):
    if isinstance(a, types.NoneType):
        return lambda a, j, value: None

    def keep(a, j, value):
        a[j] = value
    return keep


@overload(_chunk_exps, inline="always", jit_options={"fastmath": _FAST})
def _chunk_exps_impl(x, y, e, lo, hi, m):
    def sweep(x, y, e, lo, hi, m):   # e holds the accumulator dtype; it may be x
        s = _like(0.0, m)
        for j in range(lo, hi):
            v = _exp_of(x, y, _load(x, j) - m)
            _keep(e, j, v)
            s += v
        return s
    return sweep


# The running max uses maxnum with the no-NaN flag (one vmaxps, which LLVM
# vectorises as a reduction); a NaN shows up in the sum instead, as the
# sweep's exps have no floor (nor does an infinity escape it).
@overload(_chunk_max_exps, inline="always", jit_options={"fastmath": _FAST})
def _chunk_max_exps_impl(x, y, e, save, lo, hi, k):
    def sweep(x, y, e, save, lo, hi, k):   # when e is x, save keeps x[lo:hi] first
        m = _like(-np.inf, k)
        s = _like(0.0, k)
        for j in range(lo, hi):
            v = _load(x, j)
            _keep(save, j - lo, v)
            m = _max_finite(m, v)
            ev = _sweep_exp(x, y, v, k)
            _keep(e, j, ev)
            s += ev
        return m, s
    return sweep


@njit(**_INLINE)
def _zero(e, lo, hi):
    """e[lo:hi] = 0 unless e is None."""
    for j in range(lo, hi):
        _keep(e, j, 0.0)


@overload(_restore, inline="always")
def _restore_impl(x, save, lo, hi):
    if isinstance(save, types.NoneType):
        return lambda x, save, lo, hi: None

    def restore(x, save, lo, hi):
        for j in range(lo, hi):
            x[j] = save[j - lo]
    return restore


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




@overload(_targets)
def _targets_impl(x, y, lo, hi, shift):
    if isinstance(y, types.NoneType):
        def zeros(x, y, lo, hi, shift):
            return _like(0.0, shift), _like(0.0, shift)
        return zeros

    def sums(x, y, lo, hi, shift):
        return _chunk_targets(x, y, lo, hi, shift)
    return sums


@njit(**_INLINE)
def _chunk_pass(x, y, e, save, lo, hi, top):
    """(max, shift, sum of exps, sum of y, sum of y (x - shift)) of chunk [lo, hi),
    for a row whose largest max so far is `top` (``-inf`` before any finite logit).

    Exps are kept in e unless e is None; the targets' sums are zeros when y is
    None (sparse), and read x before e (which may be x) is written. A NaN max
    means the chunk holds a NaN or ``+inf``. A chunk of ``-inf`` logits is
    shifted by 0, so that y_j x_j gives TF's ``-inf`` (or NaN where y_j is 0).
    """
    if top > -np.inf:
        sy, syx = _targets(x, y, lo, hi, top)
        k = _sweep_k(x, y, top)
        m, s = _chunk_max_exps(x, y, e, save, lo, hi, k)
        if m <= top + _SHIFT_SLACK and _is_finite(s):
            return m, _sweep_shift(x, y, k), s, sy, syx
        _restore(x, save, lo, hi)
    m = _chunk_max(x, lo, hi)
    if m == -np.inf:
        zero = _like(0.0, m)
        sy, syx = _targets(x, y, lo, hi, zero)
        _zero(e, lo, hi)
        return m, 0.0, zero, sy, syx
    if not _is_finite(m):
        nan = _like(np.nan, m)
        return nan, np.nan, nan, nan, nan
    sy, syx = _targets(x, y, lo, hi, m)
    return m, np.float64(m), _chunk_exps(x, y, e, lo, hi, m), sy, syx


@njit(**_INLINE)
def _exp_pass(x, y, e, save, st, ahead):
    """Pass A over a row: per chunk c, st[_MAX, c], st[_SHIFT, c], st[_SUM, c]
    and, with targets y, st[_YSUM, c] and st[_YXSUM, c] (see above).

    Unless e is None, also e_j = exp(x_j - shift of j's chunk) (0 in a chunk
    of -inf). False as soon as a chunk holds a NaN or ``+inf``: the row is NaN.
    `ahead` (or None) is a row to prefetch chunk by chunk (`_prefetch_chunk`).
    """
    n = np.uint64(x.shape[0])
    top = _like(-np.inf, _load(x, 0))
    c = 0
    for lo in range(_U0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        _prefetch_chunk(ahead, lo, hi)
        m, shift, s, sy, syx = _chunk_pass(x, y, e, save, lo, hi, top)
        if np.isnan(m):
            return False
        st[_MAX, c], st[_SHIFT, c], st[_SUM, c] = m, shift, s
        _keep_targets(st, c, y, sy, syx)
        top = max(top, m)
        c += 1
    return True


def _keep_targets(st, c, y, sy, syx):
    """st[_YSUM, c], st[_YXSUM, c] = sy, syx unless y is None (numba only)."""


@overload(_keep_targets, inline="always")
def _keep_targets_impl(st, c, y, sy, syx):
    if isinstance(y, types.NoneType):
        return lambda st, c, y, sy, syx: None

    def keep(st, c, y, sy, syx):
        st[_YSUM, c], st[_YXSUM, c] = sy, syx
    return keep


@njit(**_INLINE)
def _combine(x, y, st):
    """The row's max M and S = sum_c s_c exp(t_c - M), in float64.

    A chunk swept once shifted its exps by t_c < M, so the max's own term
    exp(M - t_c) carries the exp's rounding (larger for half-precision
    inputs, whose exp is cheaper). It is replaced by its exact value 1, so
    that a loss near 0 (S near 1) is as accurate as the reference's. x and
    y pick the exp that pass A used (`_sweep_exp`).
    """
    top = st[_MAX, 0]
    first = 0
    for c in range(1, st.shape[1]):
        if st[_MAX, c] > top:
            top, first = st[_MAX, c], c
    total = 0.0
    if top > -np.inf:
        for c in range(st.shape[1]):
            total += st[_SUM, c] * _exp64(st[_SHIFT, c] - top)
        shift = st[_SHIFT, first]
        if shift != top:
            v = _like(top, _load(x, 0))
            term = _sweep_exp(x, y, v, _sweep_k(x, y, shift))
            total += 1.0 - term * _exp64(shift - top)
    return top, total


@njit(**_INLINE)
def _combine_targets(st, top):
    """(sum_j y_j, sum_j y_j (x_j - top)) from the per-chunk sums."""
    sy = 0.0
    syx = 0.0
    for c in range(st.shape[1]):
        sy += st[_YSUM, c]
        syx += st[_YXSUM, c] + (st[_SHIFT, c] - top) * st[_YSUM, c]
    return sy, syx


# A chunk's factor exp(t_c - M) / S below the smallest normal float would round
# coarsely, and its exps reach e**16: such chunks (rare: t_c more than 87 below
# M) are scaled in two steps, through 2**64.
_TWO64, _TWO_M64 = 2.0 ** 64, 2.0 ** -64


def _prefetch_chunk(ahead, lo, hi):
    """Prefetch ahead[lo:hi] when it is a half-precision row, not None (numba only).

    Measured on 8192x32000 bfloat16 loss+grad (bench/RESULTS.md), in A/B runs:
    pass A prefetches the next row of logits while it computes on this one,
    so that memory keeps streaming through pass B (in place 39 -> 35 ms; pass
    B prefetching it instead, the earlier scheme, left memory idle for most
    of pass A); into a separate buffer, pass B also prefetches that buffer's
    next row, so that its stores find their lines in cache (55 -> 47 ms).
    float32 and float64 rows are not prefetched: either prefetch made float32
    slower (in place 43 -> 65 ms), as did a prefetch for writing
    (``prefetchw``) for bfloat16.
    """


@overload(_prefetch_chunk, inline="always")
def _prefetch_chunk_impl(ahead, lo, hi):
    if isinstance(ahead, types.NoneType) or ahead.dtype not in (types.uint16, types.int16):
        return lambda ahead, lo, hi: None

    def prefetch(ahead, lo, hi):
        for k in range(lo, hi, np.uint64(32)):   # 32 two-byte entries per 64-byte line
            _prefetch(ahead, k)
    return prefetch


def _hardware_rounded(e, y, out, lo, hi, f):
    """Pass B's stores out[j] = e[j] * f for the whole blocks of [lo, hi) through
    `_scale_to_bf16`, when out is bfloat16 with sparse labels; returns where
    the store loop goes on from (lo when none were done or all must be
    redone; numba only)."""


@overload(_hardware_rounded, inline="always")
def _hardware_rounded_impl(e, y, out, lo, hi, f):
    if not (_BFLOAT16 is not None and out.dtype == types.uint16 and e.dtype == types.float32
            and isinstance(y, types.NoneType)):
        return lambda e, y, out, lo, hi, f: lo

    def blocks(e, y, out, lo, hi, f):
        j = _scale_to_bf16(e, out, lo, hi, f)
        return lo if j > hi else j
    return blocks


def _finish_entry(out, y, j, p):
    """Pass B's store of p = softmax_j: p itself (sparse, y None; finite, as a
    row with a NaN or infinity never gets here), or p - y_j (numba only)."""


@overload(_finish_entry, inline="always")
def _finish_entry_impl(out, y, j, p):
    if isinstance(y, types.NoneType):
        return lambda out, y, j, p: _store_finite(out, j, p)
    return lambda out, y, j, p: _store(out, j, p - _load(y, j))


@njit(**_INLINE)
def _rescale(e, y, out, st, top, inv_s, ahead):
    """Pass B: out_j = e_j exp(t_c - M) / S (minus y_j with dense targets y),
    rounded to out's format (e may be out).

    Pass B works from L2; chunk by chunk, it prefetches `ahead` (the next
    row of a separate gradient buffer, or None), for the next pass B.
    """
    n = np.uint64(e.shape[0])
    tiny = _tiny(e[0])
    c = 0
    for lo in range(_U0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        _prefetch_chunk(ahead, lo, hi)
        factor = _exp64(st[_SHIFT, c] - top) * inv_s
        if factor >= tiny:
            f = _like(factor, e[0])
            for j in range(_hardware_rounded(e, y, out, lo, hi, f), hi):
                _finish_entry(out, y, j, e[j] * f)
        else:
            f, down = _like(factor * _TWO64, e[0]), _like(_TWO_M64, e[0])
            for j in range(lo, hi):
                _finish_entry(out, y, j, _mul_exact(_mul_exact(e[j], f), down))
        c += 1


@njit(**_INLINE)
def _fill_nan(out, ref):
    """Every element of `out` NaN."""
    nan = _like(np.nan, ref)
    for j in range(out.shape[0]):
        _store(out, j, nan)


# --- one row, per need ----------------------------------------------------------------

@njit(**_INLINE)
def _sparse_row_loss(x, label, st):
    """(loss, lse) of one row; NaN for a NaN, a ``+inf``, all ``-inf`` or a label outside [0, C)."""
    nan = _like(np.nan, _load(x, 0))
    if not (0 <= label < x.shape[0] and _exp_pass(x, None, None, None, st, None)):
        return nan, nan
    top, total = _combine(x, None, st)
    if top == -np.inf:
        return nan, nan
    log_s = np.log(total)
    return _label_loss(log_s, _load(x, label), top), top + log_s


@njit(**_INLINE)
def _sparse_row_grad(x, label, out, e, save, st, next_x, next_out):
    """As `_sparse_row_loss`, writing softmax(x) - onehot(label) into out (may be x).

    `e` is where pass A keeps the exps: out itself, or a float32 row when out
    is half precision (so that each gradient entry is rounded once); `save`
    holds a chunk of x when e is x, else None. `next_x` is the next row of
    logits, prefetched during pass A, and `next_out` the next row of a
    separate gradient buffer (None in place), prefetched during pass B.
    """
    nan = _like(np.nan, _load(x, 0))
    ok = 0 <= label < x.shape[0]
    x_label = _load(x, label) if ok else nan
    if not (ok and _exp_pass(x, None, e, save, st, next_x)):
        _fill_nan(out, nan)
        return nan, nan
    top, total = _combine(x, None, st)
    if top == -np.inf:
        _fill_nan(out, nan)
        return nan, nan
    _rescale(e, None, out, st, top, 1.0 / total, next_out)
    m = _like(top, x_label)
    _store(out, label, _exp(x_label - m) * _like(1.0 / total, m) - _like(1.0, m))
    log_s = np.log(total)
    return _label_loss(log_s, x_label, m), top + log_s


@njit(**_INLINE)
def _dense_row_loss(x, y, st):
    """(loss, lse) of one row against targets y: sum_j y_j (lse - x_j)."""
    nan = _like(np.nan, _load(x, 0))
    if not _exp_pass(x, y, None, None, st, None):
        return nan, nan
    top, total = _combine(x, y, st)
    if top == -np.inf:
        return nan, nan
    sy, syx = _combine_targets(st, top)
    log_s = np.log(total)
    return log_s * sy - syx, top + log_s


@njit(**_INLINE)
def _dense_row_grad(x, y, out, e, save, st, next_x, next_out):
    """As `_dense_row_loss`, writing softmax(x) - y into out (may be x).

    e, save, next_x and next_out as in `_sparse_row_grad`.
    """
    nan = _like(np.nan, _load(x, 0))
    if not _exp_pass(x, y, e, save, st, next_x):
        _fill_nan(out, nan)
        return nan, nan
    top, total = _combine(x, y, st)
    if top == -np.inf:
        _fill_nan(out, nan)
        return nan, nan
    sy, syx = _combine_targets(st, top)
    _rescale(e, y, out, st, top, 1.0 / total, next_out)
    log_s = np.log(total)
    return log_s * sy - syx, top + log_s


# --- narrow rows: 16 rows at once, one per vector lane ------------------------------
#
# A row of a few classes leaves the vector loops above nothing to do, and
# their per-row steps (the loops' ends, the statistics, the combine, a scalar
# log) cost about 60 ns for a row of 10 logits. Rows of at most `NARROW_MAX`
# classes in float32 arithmetic (`NARROW_DENSE_MAX` with dense targets) go 16
# at a time through `_narrow_block` instead: the rows are copied transposed into a
# ``[C, 16]`` scratch (taking each row's max on the way), so that the exps,
# their sums and the logs run across rows, one row per vector lane. The
# arithmetic is that of a one-chunk row above (the shift by the row's max,
# the same exp, the same loss and gradient stores), save for the log
# (`_log_of_sum`, to 2e-11 where the chunk path's is float64's own) and the
# order of the sum.

NARROW_MAX = 64
# Dense targets are gathered too, a second gather per class: the narrow
# kernels beat the chunk ones up to about 24 classes there (65536 rows, one
# thread, float32 loss+grad: 10 classes 26 against 80 ns per row, 16: 48
# against 84, 24: 89 against 88, 32: 100 against 89).
NARROW_DENSE_MAX = 16
_LANES = 16


def _lanes(rows, dtype):
    """A ``[rows, 16]`` scratch of `dtype`, a row of values per vector lane (numba only)."""


@overload(_lanes)
def _lanes_impl(rows, dtype):
    return lambda rows, dtype: np.empty((rows, _LANES), dtype)


@intrinsic
def _split_exponent(typingctx, s):
    """(k, m) with s = m 2**k, k an integer and m in [sqrt(1/2), sqrt(2)), for a
    positive normal float64 s, on its bits (a vector loop's frexp)."""
    def codegen(context, builder, sig, args):
        i64, f64 = ir.IntType(64), ir.DoubleType()
        bits = builder.bitcast(args[0], i64)
        k = builder.ashr(builder.sub(bits, ir.Constant(i64, 0x3FE6A09E667F3BCD)),
                         ir.Constant(i64, 52))
        m = builder.bitcast(builder.sub(bits, builder.shl(k, ir.Constant(i64, 52))), f64)
        return cgutils.make_anonymous_struct(builder, [builder.sitofp(k, f64), m])
    return types.UniTuple(types.float64, 2)(s), codegen


def _gather_lanes(builder, row_ptr, offsets, at_start, dtype):
    """IR: 16 elements of a numba array of `dtype` (float32, or uint16/int16 bits
    of bfloat16/float16) at `offsets` (``<16 x i32>``) from `row_ptr`, as float32s.

    One ``vgatherdps``/``vpgatherdd``. A gather has no 16-bit form, so a
    half-precision element is read as the high half of the 32-bit word that
    ends with it; the array's very first element (`at_start` and offset 0),
    which no word ends with inside the array, as the low half of the word
    that starts with it.
    """
    i32, i8 = ir.IntType(32), ir.IntType(8)
    ints, floats = ir.VectorType(i32, _LANES), ir.VectorType(ir.FloatType(), _LANES)
    every = ir.Constant(ir.VectorType(ir.IntType(1), _LANES), [1] * _LANES)
    pointers = ir.VectorType(ir.PointerType(), _LANES)

    def splat(value):
        return ir.Constant(ints, [value] * _LANES)

    if dtype == types.float32:
        where = builder.gep(row_ptr, [offsets], source_etype=ir.FloatType())
        where.type = pointers   # llvmlite types every GEP as a scalar pointer
        return _call_llvm(builder, "llvm.masked.gather.v16f32.v16p0", floats,
                          [where, ir.Constant(i32, 4), every, ir.Constant(floats, ir.Undefined)])
    first = builder.and_(builder.icmp_signed("==", offsets, splat(0)), at_start)
    start = builder.sub(builder.shl(offsets, splat(1)), builder.select(first, splat(0), splat(2)))
    where = builder.gep(row_ptr, [start], source_etype=i8)
    where.type = pointers
    words = _call_llvm(builder, "llvm.masked.gather.v16i32.v16p0", ints,
                       [where, ir.Constant(i32, 2), every, ir.Constant(ints, ir.Undefined)])
    high = builder.select(first, builder.shl(words, splat(16)), builder.and_(words, splat(-65536)))
    if dtype == types.uint16:   # bfloat16: its bits are a float32's high half
        return builder.bitcast(high, floats)
    halves = builder.trunc(builder.lshr(high, splat(16)), ir.VectorType(ir.IntType(16), _LANES))
    return builder.fpext(builder.bitcast(halves, ir.VectorType(ir.HalfType(), _LANES)), floats)


@intrinsic
def _gather_rows(typingctx, flat, r0, rows, t, ms):
    """t[j, l] = flat[(r0 + l) c + j] as float32 (row r0 + l of C = t.shape[0]
    classes in lane l; lanes from `rows` on repeat row r0 + rows - 1), and
    ms[0, l] = max_j t[j, l] ignoring NaN (``-inf`` for a row of NaN), and
    ms[1, l] = 0: one gather and one vector max per class.

    flat holds float32, or bfloat16/float16 bits (uint16/int16) and then at
    least two of them (see `_gather_lanes`); t and ms are float32
    ``[C, 16]`` and ``[2, 16]``. A scalar transposition stored
    one float at a time and cost twice as much, and its vector reloads
    waited on those stores.
    """
    def codegen(context, builder, sig, args):
        i64, i32 = ir.IntType(64), ir.IntType(32)
        floats, ints = ir.VectorType(ir.FloatType(), _LANES), ir.VectorType(i32, _LANES)
        source = context.make_array(sig.args[0])(context, builder, args[0])
        lanes_t = context.make_array(sig.args[3])(context, builder, args[3])
        stats = context.make_array(sig.args[4])(context, builder, args[4])
        classes = builder.extract_value(lanes_t.shape, 0)
        c = builder.trunc(classes, i32)
        last = _splat(builder, builder.trunc(builder.sub(args[2], ir.Constant(i64, 1)), i32), ints)
        lane = ir.Constant(ints, list(range(_LANES)))
        lane_start = builder.mul(builder.select(builder.icmp_signed("<", lane, last), lane, last),
                                 _splat(builder, c, ints))
        row_ptr = builder.gep(source.data, [builder.mul(args[1], classes)])
        at_start = _splat(builder, builder.icmp_signed("==", args[1], ir.Constant(i64, 0)),
                          ir.VectorType(ir.IntType(1), _LANES))
        entry = builder.block
        head = builder.append_basic_block("gather.head")
        body = builder.append_basic_block("gather.body")
        done = builder.append_basic_block("gather.done")
        builder.branch(head)
        builder.position_at_end(head)
        j = builder.phi(i32)
        top = builder.phi(floats)
        j.add_incoming(ir.Constant(i32, 0), entry)
        top.add_incoming(ir.Constant(floats, [-math.inf] * _LANES), entry)
        builder.cbranch(builder.icmp_unsigned("<", j, c), body, done)
        builder.position_at_end(body)
        column = _gather_lanes(builder, row_ptr, builder.add(lane_start, _splat(builder, j, ints)),
                               at_start, sig.args[0].dtype)
        target = builder.gep(lanes_t.data, [builder.mul(builder.zext(j, i64), ir.Constant(i64, _LANES))])
        builder.store(column, builder.bitcast(target, floats.as_pointer()), align=4)
        top.add_incoming(_call_llvm(builder, "llvm.maxnum.v16f32", floats, [top, column],
                                    ("nnan", "nsz")), body)
        j.add_incoming(builder.add(j, ir.Constant(i32, 1)), body)
        builder.branch(head)
        builder.position_at_end(done)
        builder.store(top, builder.bitcast(stats.data, floats.as_pointer()), align=4)
        sums = builder.gep(stats.data, [ir.Constant(i64, _LANES)])
        builder.store(ir.Constant(floats, [0.0] * _LANES), builder.bitcast(sums, floats.as_pointer()),
                      align=4)
        return context.get_dummy_value()
    return types.none(flat, r0, rows, t, ms), codegen


# log(m) = 2 atanh(u), u = (m - 1) / (m + 1), |u| <= 0.1716: the series to
# u**11 leaves 2e-11 out (float32 results need 6e-8).
_A = tuple(2.0 / k for k in (1, 3, 5, 7, 9, 11))
_A1, _A3, _A5, _A7, _A9, _A11 = _A


@njit(**_INLINE)
def _log_of_sum(s):
    """log(s) in float64, to 2e-11, for a finite s >= 1 (a row's sum of exps,
    which includes its max's exp(0) = 1); meaningless otherwise. Vectorises."""
    k, m = _split_exponent(np.float64(s))
    u = (m - 1.0) / (m + 1.0)
    u2 = u * u
    p = _A1 + u2 * (_A3 + u2 * (_A5 + u2 * (_A7 + u2 * (_A9 + u2 * _A11))))
    return _fma(k, _LN2_HI64, u * p)


def _lane_targets(ty, ms, j, l, d):
    """ms[2, l] += y; ms[3, l] += y d for y = ty[j, l], unless ty is None (numba only)."""


@overload(_lane_targets, inline="always")
def _lane_targets_impl(ty, ms, j, l, d):
    if isinstance(ty, types.NoneType):
        return lambda ty, ms, j, l, d: None

    def add(ty, ms, j, l, d):
        yj = ty[j, l]
        ms[2, l] += yj
        ms[3, l] += yj * d
    return add


@njit(**_INLINE)
def _narrow_block(x, ty, flat, r0, rows, t, ms, logs):
    """Rows ``r0 .. r0 + rows - 1`` of x (C classes, ``rows <= 16``; flat is x
    as one row), row r0 + l in lane l (lanes from `rows` on repeat the last):
    t[j, l] = exp(x[r0 + l, j] - M_l), ms[0, l] = M_l, the row's max (of its
    non-NaN entries), ms[1, l] = sum_j t[j, l], logs[0, l] = log of that sum.
    A row with a NaN, a ``+inf`` or only ``-inf`` has a non-finite M_l or sum.

    With dense targets ty (``[C, 16]``, lane l the targets of row r0 + l;
    None for integer labels), also ms[2, l] += sum_j y_j and ms[3, l] +=
    sum_j y_j (x_j - M_l), the targets' sums of a one-chunk row.
    """
    c = np.uint64(x.shape[1])
    _gather_rows(flat, r0, rows, t, ms)
    for j in range(c):
        for l in range(_LANES):
            d = t[j, l] - ms[0, l]
            v = _exp_of(x, ty, d)
            t[j, l] = v
            ms[1, l] += v
            _lane_targets(ty, ms, j, l, d)
    for l in range(_LANES):
        logs[0, l] = _log_of_sum(ms[1, l])


@njit(**_INLINE)
def _narrow_row(x, labels, r, ms, logs, l):
    """(loss, lse, ok, x_label) of row r, in lane l of `_narrow_block`'s results;
    loss and lse are NaN unless ok: the label is in range and the row finite."""
    c = x.shape[1]
    label = labels[r]
    m, s = ms[0, l], ms[1, l]
    ok = 0 <= label < c and _is_finite(m) and _is_finite(s)
    x_label = _load(x, (r, label if ok else 0))
    if not ok:
        return np.float64(np.nan), np.float64(np.nan), ok, x_label
    log_s = logs[0, l]
    return _label_loss(log_s, x_label, m), np.float64(m) + log_s, ok, x_label


@njit(**_KERNEL)
def _sparse_narrow_loss_rows(x, labels, loss, lse, lo, hi):
    t, ms, logs = _lanes(x.shape[1], np.float32), _lanes(2, np.float32), _lanes(1, np.float64)
    flat = x.reshape(x.size)
    for r0 in range(lo, hi, _LANES):
        rows = min(_LANES, hi - r0)
        _narrow_block(x, None, flat, r0, rows, t, ms, logs)
        for l in range(rows):
            loss[r0 + l], lse[r0 + l], _, _ = _narrow_row(x, labels, r0 + l, ms, logs, l)


@njit(**_KERNEL)
def _sparse_narrow_grad_rows(x, labels, out, loss, lse, lo, hi):
    """As `_sparse_narrow_loss_rows`, writing softmax - onehot(label) into out
    (may be x: a block is read whole before any of it is written)."""
    t, ms, logs = _lanes(x.shape[1], np.float32), _lanes(2, np.float32), _lanes(1, np.float64)
    flat = x.reshape(x.size)
    c = x.shape[1]
    for r0 in range(lo, hi, _LANES):
        rows = min(_LANES, hi - r0)
        _narrow_block(x, None, flat, r0, rows, t, ms, logs)
        for l in range(rows):
            r = r0 + l
            loss[r], lse[r], ok, x_label = _narrow_row(x, labels, r, ms, logs, l)
            m = ms[0, l]
            if not ok:   # `_fill_nan(out[r], m)`, spelled out: the row view cost 3.5 ns per row
                for j in range(c):
                    _store(out, (r, j), _like(np.nan, m))
                continue
            f = _like(1.0 / np.float64(ms[1, l]), m)
            for j in range(c):
                _store_finite(out, (r, j), t[j, l] * f)
            _store(out, (r, labels[r]), _exp(x_label - m) * f - _like(1.0, m))


@njit(**_INLINE)
def _narrow_targets(y, r0, rows, ty, ys, first):
    """Dense targets of rows r0 .. r0 + rows - 1 into ty, as `_gather_rows` (a
    single row of targets, broadcast, only on a call's `first` block), and the
    lanes' targets' sums (rows 2 and 3 of `ys`, `_narrow_block`'s ms) set to 0."""
    if y.shape[0] > 1:
        _gather_rows(y.reshape(y.size), r0, rows, ty, ys)
    elif first:
        _gather_rows(y.reshape(y.size), 0, 1, ty, ys)
    for l in range(_LANES):
        ys[2, l] = 0.0
        ys[3, l] = 0.0


@njit(**_INLINE)
def _dense_narrow_row(ms, logs, l):
    """(loss, lse, ok) of lane l: sum_j y_j (lse - x_j); NaN unless the row is finite."""
    m, s = ms[0, l], ms[1, l]
    if not (_is_finite(m) and _is_finite(s)):
        return np.float64(np.nan), np.float64(np.nan), False
    log_s = logs[0, l]
    return log_s * np.float64(ms[2, l]) - np.float64(ms[3, l]), np.float64(m) + log_s, True


@njit(**_KERNEL)
def _dense_narrow_loss_rows(x, y, loss, lse, lo, hi):
    c = x.shape[1]
    t, ty, ms, logs = (_lanes(c, np.float32), _lanes(c, np.float32),
                       _lanes(4, np.float32), _lanes(1, np.float64))
    flat = x.reshape(x.size)
    for r0 in range(lo, hi, _LANES):
        rows = min(_LANES, hi - r0)
        _narrow_targets(y, r0, rows, ty, ms, r0 == lo)
        _narrow_block(x, ty, flat, r0, rows, t, ms, logs)
        for l in range(rows):
            loss[r0 + l], lse[r0 + l], _ = _dense_narrow_row(ms, logs, l)


@njit(**_KERNEL)
def _dense_narrow_grad_rows(x, y, out, loss, lse, lo, hi):
    """As `_dense_narrow_loss_rows`, writing softmax - y into out (may be x)."""
    c = x.shape[1]
    t, ty, ms, logs = (_lanes(c, np.float32), _lanes(c, np.float32),
                       _lanes(4, np.float32), _lanes(1, np.float64))
    flat = x.reshape(x.size)
    for r0 in range(lo, hi, _LANES):
        rows = min(_LANES, hi - r0)
        _narrow_targets(y, r0, rows, ty, ms, r0 == lo)
        _narrow_block(x, ty, flat, r0, rows, t, ms, logs)
        for l in range(rows):
            r = r0 + l
            loss[r], lse[r], ok = _dense_narrow_row(ms, logs, l)
            if not ok:   # `_fill_nan(out[r], ...)`, spelled out as above
                for j in range(c):
                    _store(out, (r, j), _like(np.nan, ms[0, l]))
                continue
            f = _like(1.0 / np.float64(ms[1, l]), ms[0, l])
            for j in range(c):
                _store(out, (r, j), t[j, l] * f - ty[j, l])


# --- a range of rows, per need (called directly, or per block by the threads) ----

@njit(**_INLINE)
def _chunk_stats(x):
    """A row's per-chunk statistics: float64 ``[5, chunks]``, rows `_MAX` ... `_YXSUM`."""
    n = (x.shape[1] + int(_CHUNK) - 1) // int(_CHUNK)
    return np.empty((5, n), np.float64)


def _save_chunk(x):
    """Where an in-place kernel saves a chunk of x that pass A may sweep again:
    a chunk-sized array when x holds the accumulator dtype (its exps then
    overwrite it), else None (numba only)."""


@overload(_save_chunk)
def _save_chunk_impl(x):
    if x.dtype in (types.float32, types.float64):
        dtype = np.float64 if x.dtype == types.float64 else np.float32
        return lambda x: np.empty(int(_CHUNK), dtype)
    return lambda x: None


@njit(**_INLINE)
def _next_row(x, i):
    """Row i + 1 of x (row i for the last): the one to prefetch while row i finishes."""
    return x[i + 1 if i + 1 < x.shape[0] else i]


@njit(**_INLINE)
def _target(y, i):
    """Row i of the dense targets, which have 1 or N rows."""
    return y[i if y.shape[0] > 1 else 0]


@njit(**_KERNEL)
def _sparse_loss_rows(x, labels, loss, lse, lo, hi):
    st = _chunk_stats(x)
    for i in range(lo, hi):
        loss[i], lse[i] = _sparse_row_loss(x[i], labels[i], st)


@njit(**_KERNEL)
def _sparse_grad_rows(x, labels, out, loss, lse, lo, hi):
    st = _chunk_stats(x)
    scratch = _exp_scratch(x, out)
    for i in range(lo, hi):
        row = out[i]
        loss[i], lse[i] = _sparse_row_grad(x[i], labels[i], row, _exp_row(row, scratch),
                                           None, st, _next_row(x, i), _next_row(out, i))


@njit(**_KERNEL)
def _sparse_grad_rows_inplace(x, labels, loss, lse, lo, hi):
    st = _chunk_stats(x)
    scratch = _exp_scratch(x, x)
    save = _save_chunk(x)
    for i in range(lo, hi):
        row = x[i]
        loss[i], lse[i] = _sparse_row_grad(row, labels[i], row, _exp_row(row, scratch),
                                           save, st, _next_row(x, i), None)


@njit(**_KERNEL)
def _dense_loss_rows(x, y, loss, lse, lo, hi):
    st = _chunk_stats(x)
    for i in range(lo, hi):
        loss[i], lse[i] = _dense_row_loss(x[i], _target(y, i), st)


@njit(**_KERNEL)
def _dense_grad_rows(x, y, out, loss, lse, lo, hi):
    st = _chunk_stats(x)
    scratch = _exp_scratch(x, out)
    for i in range(lo, hi):
        row = out[i]
        loss[i], lse[i] = _dense_row_grad(x[i], _target(y, i), row, _exp_row(row, scratch),
                                          None, st, _next_row(x, i), _next_row(out, i))


@njit(**_KERNEL)
def _dense_grad_rows_inplace(x, y, loss, lse, lo, hi):
    st = _chunk_stats(x)
    scratch = _exp_scratch(x, x)
    save = _save_chunk(x)
    for i in range(lo, hi):
        row = x[i]
        loss[i], lse[i] = _dense_row_grad(row, _target(y, i), row, _exp_row(row, scratch),
                                          save, st, _next_row(x, i), None)


# The same, with blocks of rows spread over numba's threads. Each takes the
# block count last; block b covers rows [b*n//blocks, (b+1)*n//blocks).
# They are written out one by one: wrappers made by a factory are closures,
# which numba 0.68 does not find in its disk cache (each process recompiled
# them), and the first call would then pay the compile.

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
def _sparse_narrow_loss_blocks(x, labels, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        _sparse_narrow_loss_rows(x, labels, loss, lse, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **_KERNEL)
def _sparse_narrow_grad_blocks(x, labels, out, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        _sparse_narrow_grad_rows(x, labels, out, loss, lse, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **_KERNEL)
def _dense_narrow_loss_blocks(x, y, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        _dense_narrow_loss_rows(x, y, loss, lse, b * n // blocks, (b + 1) * n // blocks)


@njit(parallel=True, **_KERNEL)
def _dense_narrow_grad_blocks(x, y, out, loss, lse, blocks):
    n = x.shape[0]
    for b in prange(blocks):
        _dense_narrow_grad_rows(x, y, out, loss, lse, b * n // blocks, (b + 1) * n // blocks)


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


# (rows, blocks) kernel pairs per need; the narrow gradient kernels also run in place.
_SPARSE_KERNELS = {
    "loss": (_sparse_loss_rows, _sparse_loss_blocks),
    "grad": (_sparse_grad_rows, _sparse_grad_blocks),
    "grad_inplace": (_sparse_grad_rows_inplace, _sparse_grad_blocks_inplace),
    "narrow_loss": (_sparse_narrow_loss_rows, _sparse_narrow_loss_blocks),
    "narrow_grad": (_sparse_narrow_grad_rows, _sparse_narrow_grad_blocks),
}
_DENSE_KERNELS = {
    "loss": (_dense_loss_rows, _dense_loss_blocks),
    "grad": (_dense_grad_rows, _dense_grad_blocks),
    "grad_inplace": (_dense_grad_rows_inplace, _dense_grad_blocks_inplace),
    "narrow_loss": (_dense_narrow_loss_rows, _dense_narrow_loss_blocks),
    "narrow_grad": (_dense_narrow_grad_rows, _dense_narrow_grad_blocks),
}


def _dispatch(kernels, narrow, logits, targets, grad_out, loss, lse):
    """Fill loss and lse (and grad_out unless None) with the kernels of `kernels`
    (`_SPARSE_KERNELS` or `_DENSE_KERNELS`; their narrow ones if `narrow`), on
    `targets` (labels, or the dense target rows)."""
    nbytes = logits.nbytes
    prefix = "narrow_" if narrow else ""
    if grad_out is None:
        x = _kernel_view(np.ascontiguousarray(logits))
        _run(*kernels[prefix + "loss"], nbytes, x, targets, loss, lse)
        return
    run_into = lambda x, out: _run(*kernels[prefix + "grad"], nbytes, x, targets, out, loss, lse)
    if narrow:
        run_inplace = lambda x: run_into(x, x)
    else:
        run_inplace = lambda x: _run(*kernels["grad_inplace"], nbytes, x, targets, loss, lse)
    _with_gradient(logits, grad_out, run_inplace, run_into)


def sparse_rows(logits, labels, grad_out=None):
    """Sparse softmax cross-entropy of each row (the `_kernels.sparse_rows` contract).

    Args:
      logits: ``[N, C]`` float16/bfloat16/float32/float64 array, ``C >= 1``.
      labels: ``[N]`` int32/int64 array; a label outside ``[0, C)`` gives a NaN row.
      grad_out: optional ``[N, C]`` array (may be `logits` itself) that receives
        ``softmax(logits) - one_hot(labels)`` in its own dtype.

    Returns:
      ``(loss, lse)``: two ``[N]`` arrays in the accumulator dtype.

    Half-precision logits use `_exp_half`, good to a twentieth of their ulp;
    a wider gradient buffer for them (an internal caller's choice) gets
    float32 logits instead, as its precision asks. Rows of at most
    `NARROW_MAX` classes in float32 arithmetic go 16 at a time through the
    narrow kernels (`_narrow_block`).
    """
    acc = accumulator(logits.dtype)
    loss, lse = np.empty(logits.shape[0], acc), np.empty(logits.shape[0], acc)
    if logits.shape[0] == 0:
        return loss, lse
    labels = np.ascontiguousarray(labels)
    if grad_out is not None and logits.itemsize == 2 and grad_out.itemsize > 2:
        logits = logits.astype(np.float32)
    # (a single half-precision logit is too short for `_gather_rows`)
    narrow = logits.shape[1] <= NARROW_MAX and acc == np.float32 and logits.size >= 2
    _dispatch(_SPARSE_KERNELS, narrow, logits, labels, grad_out, loss, lse)
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
    # (a single half-precision logit or target is too short for `_gather_rows`)
    narrow = c <= NARROW_DENSE_MAX and acc == np.float32 and logits.size >= 2 and y.size >= 2
    _dispatch(_DENSE_KERNELS, narrow, logits, y, grad_out, loss, lse)
    return loss, lse
