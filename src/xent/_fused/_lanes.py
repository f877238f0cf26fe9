"""Sixteen rows copied into vector lanes: the narrow kernels' transposition.

The narrow kernels (`xent._fused._narrow`) take 16 rows at once, one row
per vector lane. `transpose` copies rows r0 .. r0 + 15 of a ``[N, C]``
array into a ``[C, 16]`` float32 scratch (`lane_scratch`), t[j, l] = x[r0 + l, j],
taking each row's max on the way: with one vector gather per class where the
CPU numba compiles for has one (`_gather_rows`, hand-written IR), else one
entry at a time (`_copy_rows`, plain numba).
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from xent._fused import _target
from xent._fused._formats import hardware_half, load
from xent._fused._llvm import call_llvm, close_loop, max_finite, open_loop, splat
from xent._fused._options import INLINE, LLVM_INLINE

__all__ = ["LANES", "lane_scratch", "transpose"]

LANES = 16   # rows at once, one per lane of a vector of 16 float32s


def lane_scratch(rows, dtype):
    """A ``[rows, 16]`` scratch of `dtype`, a row of values per vector lane (numba only)."""


@overload(lane_scratch, jit_options=LLVM_INLINE)
def _lane_scratch_impl(rows, dtype):
    return lambda rows, dtype: np.empty((rows, LANES), dtype)


def _gather_lanes(builder, row_ptr, offsets, at_start, dtype):
    """IR: 16 elements of a numba array of `dtype` (float32, or uint16/int16 bits
    of bfloat16/float16) at `offsets` (``<16 x i32>``) from `row_ptr`, as float32s.

    One ``vgatherdps``/``vpgatherdd``. A gather has no 16-bit form, so a
    half-precision element is read as the high half of the 32-bit word that
    ends with it; the array's very first element (`at_start` and offset 0),
    which no word ends with inside the array, as the low half of the word
    that starts with it. float16 is converted by LLVM, so `transpose`
    gathers it only where the CPU converts float16 itself.
    """
    i32, i8 = ir.IntType(32), ir.IntType(8)
    ints, floats = ir.VectorType(i32, LANES), ir.VectorType(ir.FloatType(), LANES)
    every = ir.Constant(ir.VectorType(ir.IntType(1), LANES), [1] * LANES)
    pointers = ir.VectorType(ir.PointerType(), LANES)

    def splat_int(value):
        return ir.Constant(ints, [value] * LANES)

    if dtype == types.float32:
        where = builder.gep(row_ptr, [offsets], source_etype=ir.FloatType())
        where.type = pointers   # llvmlite types every GEP as a scalar pointer
        return call_llvm(builder, "llvm.masked.gather.v16f32.v16p0", floats,
                         [where, ir.Constant(i32, 4), every, ir.Constant(floats, ir.Undefined)])
    first = builder.and_(builder.icmp_signed("==", offsets, splat_int(0)), at_start)
    start = builder.sub(builder.shl(offsets, splat_int(1)),
                        builder.select(first, splat_int(0), splat_int(2)))
    where = builder.gep(row_ptr, [start], source_etype=i8)
    where.type = pointers
    words = call_llvm(builder, "llvm.masked.gather.v16i32.v16p0", ints,
                      [where, ir.Constant(i32, 2), every, ir.Constant(ints, ir.Undefined)])
    high = builder.select(first, builder.shl(words, splat_int(16)),
                          builder.and_(words, splat_int(-65536)))
    if dtype == types.uint16:   # bfloat16: its bits are a float32's high half
        return builder.bitcast(high, floats)
    halves = builder.trunc(builder.lshr(high, splat_int(16)), ir.VectorType(ir.IntType(16), LANES))
    return builder.fpext(builder.bitcast(halves, ir.VectorType(ir.HalfType(), LANES)), floats)


@intrinsic
def _gather_rows(typingctx, flat, r0, rows, t, ms):
    """t[j, l] = flat[(r0 + l) c + j] as float32 (row r0 + l of C = t.shape[0]
    classes in lane l; lanes from `rows` on repeat row r0 + rows - 1), and
    ms[0, l] = max_j t[j, l] ignoring NaN (``-inf`` for a row of NaN), and
    ms[1, l] = 0: one gather and one vector max per class.

    flat holds float32, or bfloat16/float16 bits (uint16/int16) and then at
    least two of them (see `_gather_lanes`); t and ms are float32 ``[C, 16]``
    and ``[stats, 16]`` (`xent._fused._narrow`'s lane statistics). Measured on AMD Zen 4
    (bench/RESULTS.md), 65536x10 float32 loss, one thread: 14 -> 11.4 ns per
    row against the plain transposition (`_copy_rows`), whose vector reloads waited on its
    one-float stores. `transpose` uses it where the CPU has a gather.
    """
    def codegen(context, builder, sig, args):
        i64, i32 = ir.IntType(64), ir.IntType(32)
        floats, ints = ir.VectorType(ir.FloatType(), LANES), ir.VectorType(i32, LANES)
        source = context.make_array(sig.args[0])(context, builder, args[0])
        lanes_t = context.make_array(sig.args[3])(context, builder, args[3])
        stats = context.make_array(sig.args[4])(context, builder, args[4])
        classes = builder.extract_value(lanes_t.shape, 0)
        c = builder.trunc(classes, i32)
        last = splat(builder, builder.trunc(builder.sub(args[2], ir.Constant(i64, 1)), i32), ints)
        lane = ir.Constant(ints, list(range(LANES)))
        lane_start = builder.mul(builder.select(builder.icmp_signed("<", lane, last), lane, last),
                                 splat(builder, c, ints))
        row_ptr = builder.gep(source.data, [builder.mul(args[1], classes)])
        at_start = splat(builder, builder.icmp_signed("==", args[1], ir.Constant(i64, 0)),
                         ir.VectorType(ir.IntType(1), LANES))
        entry, head, body, done = open_loop(builder, "gather")
        j = builder.phi(i32)
        top = builder.phi(floats)
        j.add_incoming(ir.Constant(i32, 0), entry)
        top.add_incoming(ir.Constant(floats, [-math.inf] * LANES), entry)
        builder.cbranch(builder.icmp_unsigned("<", j, c), body, done)
        builder.position_at_end(body)
        column = _gather_lanes(builder, row_ptr, builder.add(lane_start, splat(builder, j, ints)),
                               at_start, sig.args[0].dtype)
        target = builder.gep(lanes_t.data,
                             [builder.mul(builder.zext(j, i64), ir.Constant(i64, LANES))])
        builder.store(column, builder.bitcast(target, floats.as_pointer()), align=4)
        top.add_incoming(call_llvm(builder, "llvm.maxnum.v16f32", floats, [top, column],
                                   ("nnan", "nsz")), body)
        j.add_incoming(builder.add(j, ir.Constant(i32, 1)), body)
        close_loop(builder, head, done)
        builder.store(top, builder.bitcast(stats.data, floats.as_pointer()), align=4)
        sums = builder.gep(stats.data, [ir.Constant(i64, LANES)])
        builder.store(ir.Constant(floats, [0.0] * LANES),
                      builder.bitcast(sums, floats.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(flat, r0, rows, t, ms), codegen


@njit(**INLINE)
def _copy_rows(flat, r0, rows, t, ms):
    """`_gather_rows` in plain numba: the rows copied one entry at a time."""
    c = t.shape[0]
    for l in range(LANES):
        row = r0 + min(l, rows - 1)
        ms[0, l] = -np.inf
        ms[1, l] = 0.0
        for j in range(c):
            v = load(flat, row * c + j)
            t[j, l] = v
            ms[0, l] = max_finite(ms[0, l], v)


def transpose(flat, r0, rows, t, ms):
    """`_gather_rows` where the CPU numba compiles for has a vector gather
    (AVX2, AVX-512), else `_copy_rows` (numba only)."""


# Inlined by numba: left to LLVM, the narrow kernels called it (see `_options`).
@overload(transpose, inline="always")
def _transpose_impl(flat, r0, rows, t, ms):
    if _target.has_gather() and (flat.dtype != types.int16 or hardware_half()):
        return lambda flat, r0, rows, t, ms: _gather_rows(flat, r0, rows, t, ms)
    return lambda flat, r0, rows, t, ms: _copy_rows(flat, r0, rows, t, ms)
