"""Storage formats: the one place that knows how logits and gradients are stored.

The kernels compute in float32 (float64 for float64 logits). float16 and
bfloat16 arrays reach them as integer views (`kernel_view`: ``int16`` for
float16, ``uint16`` for bfloat16, the view's type naming the format), and
each element is converted on load and rounded to nearest even once, on
store. Every conversion here is exact or correctly rounded, and portable:

  - bfloat16 is the high half of a float32: loading shifts the bits, and
    storing rounds on the bits (`f32_to_bf16`). Pass B's stores use the
    CPU's own conversion where it has one (`scale_to_bf16`, AVX-512 BF16).
  - float16 uses the CPU's conversion (F16C on x86-64, every aarch64) and
    otherwise the same arithmetic on the bits (`_half_to_float_ir`,
    `_float_to_half_ir`): LLVM would call ``__extendhfsf2``/``__truncsfhf2``
    there, which numba's JIT does not have.

`xent._fused._target.lowers_natively` makes those choices, for the CPU numba
compiles for.
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from xent._fused import _target
from xent._fused._llvm import call_llvm, close_loop, open_loop, splat
from xent._fused._options import LLVM_INLINE

__all__ = ["kernel_view", "load", "store", "store_finite", "like", "tiny", "bf16_to_f32",
           "f32_to_bf16", "finite_to_bf16", "f16_to_f32", "f32_to_f16", "scale_to_bf16",
           "hardware_bf16", "hardware_half", "HALF_FORMATS"]

# The numba types of the integer views that carry float16 and bfloat16.
HALF_FORMATS = (types.uint16, types.int16)


def kernel_view(a):
    """`a` as the kernels see it: half precision as integer views naming the format."""
    if a.dtype.itemsize != 2:
        return a
    if a.dtype == np.float16:
        return a.view(np.int16)
    if a.dtype.name == "bfloat16":
        return a.view(np.uint16)
    return a


def _i32(value):
    return ir.Constant(ir.IntType(32), value)


# --- bfloat16: the high half of a float32 ------------------------------------------------

@intrinsic
def bf16_to_f32(typingctx, bits):
    """bfloat16 (as uint16 bits) to float32, exactly: the bits become the high half."""
    def codegen(context, builder, sig, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), _i32(16))
        return builder.bitcast(wide, ir.FloatType())
    return types.float32(types.uint16), codegen


def _round_to_bf16(builder, bits):
    """IR: the high half of float32 `bits` (i32), rounded to nearest even, as an i32."""
    odd = builder.and_(builder.lshr(bits, _i32(16)), _i32(1))
    return builder.lshr(builder.add(builder.add(bits, _i32(0x7FFF)), odd), _i32(16))


@intrinsic
def f32_to_bf16(typingctx, value):
    """float32 to bfloat16 bits, rounded to nearest even; NaN stays a (quiet) NaN."""
    def codegen(context, builder, sig, args):
        bits = builder.bitcast(args[0], ir.IntType(32))
        quiet = builder.or_(builder.lshr(bits, _i32(16)), _i32(0x40))
        is_nan = builder.fcmp_unordered("uno", args[0], args[0])
        rounded = _round_to_bf16(builder, bits)
        return builder.trunc(builder.select(is_nan, quiet, rounded), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def finite_to_bf16(typingctx, value):
    """As `f32_to_bf16` for a value known not to be NaN (no NaN test: two fewer
    vector operations in pass B, whose products are finite)."""
    def codegen(context, builder, sig, args):
        rounded = _round_to_bf16(builder, builder.bitcast(args[0], ir.IntType(32)))
        return builder.trunc(rounded, ir.IntType(16))
    return types.uint16(types.float32), codegen


# --- float16: the CPU's conversion, or the same on the bits ---------------------------------

def hardware_half():
    """Whether the CPU numba compiles for converts float16 itself (F16C, aarch64)."""
    return _target.lowers_natively(_target.HALF_PROBE)


def _half_to_float_ir(builder, bits):
    """IR: float16 bits (i16) to float32, exactly, with integer and float32 operations.

    The exponent and mantissa move to float32's places, and one multiply by
    2**112 rebiases the exponent (and normalises a subnormal: its bits read
    as a float32 subnormal); infinity and NaN get float32's top exponent.
    """
    i32, f32 = ir.IntType(32), ir.FloatType()
    h = builder.zext(bits, i32)
    magnitude = builder.and_(h, _i32(0x7FFF))
    moved = builder.shl(magnitude, _i32(13))
    finite = builder.fmul(builder.bitcast(moved, f32), ir.Constant(f32, 2.0 ** 112))
    special = builder.bitcast(builder.or_(moved, _i32(0x7F800000)), f32)
    value = builder.select(builder.icmp_unsigned(">=", magnitude, _i32(0x7C00)), special, finite)
    sign = builder.shl(builder.and_(h, _i32(0x8000)), _i32(16))
    return builder.bitcast(builder.or_(builder.bitcast(value, i32), sign), f32)


def _float_to_half_ir(builder, value):
    """IR: float32 to float16 bits (i16), rounded to nearest even, on the bits.

    Three cases, chosen without branches: at least 65536 (or infinite, or
    NaN) gives infinity (a quiet NaN); below float16's smallest normal,
    adding 0.5 rounds the bits at the subnormal ulp; otherwise the exponent
    is rebiased and the mantissa rounded by adding 0xFFF plus its last kept
    bit (a carry into the exponent is the right result, up to infinity).
    """
    i32, f32 = ir.IntType(32), ir.FloatType()
    bits = builder.bitcast(value, i32)
    sign = builder.and_(bits, _i32(-0x80000000))
    a = builder.xor(bits, sign)
    special = builder.select(builder.icmp_unsigned(">", a, _i32(0x7F800000)),
                             _i32(0x7E00), _i32(0x7C00))
    half_magic = ir.Constant(f32, 0.5)
    small = builder.sub(builder.bitcast(builder.fadd(builder.bitcast(a, f32), half_magic), i32),
                        _i32(0x3F000000))
    odd = builder.and_(builder.lshr(a, _i32(13)), _i32(1))
    rebiased = builder.add(builder.add(a, _i32(((15 - 127) << 23) + 0xFFF)), odd)
    normal = builder.lshr(rebiased, _i32(13))
    result = builder.select(builder.icmp_unsigned(">=", a, _i32(0x47800000)), special,
                            builder.select(builder.icmp_unsigned("<", a, _i32(0x38800000)),
                                           small, normal))
    return builder.trunc(builder.or_(result, builder.lshr(sign, _i32(16))), ir.IntType(16))


@intrinsic
def f16_to_f32(typingctx, bits):
    """float16 (as int16 bits) to float32, exactly (``vcvtph2ps`` where the CPU has it)."""
    def codegen(context, builder, sig, args):
        if hardware_half():
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return _half_to_float_ir(builder, args[0])
    return types.float32(types.int16), codegen


@intrinsic
def f32_to_f16(typingctx, value):
    """float32 to float16 bits, rounded to nearest even (``vcvtps2ph`` where the CPU has it)."""
    def codegen(context, builder, sig, args):
        if hardware_half():
            return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
        return _float_to_half_ir(builder, args[0])
    return types.int16(types.float32), codegen


# --- typed element access ----------------------------------------------------------------

def load(a, j):
    """Element `j` of `a` in the accumulator precision (numba only)."""


def store(a, j, value):
    """Write `value` into element `j` of `a`, rounded to a's format (numba only)."""


def store_finite(a, j, value):
    """`store` for a value known to be finite (numba only)."""


def like(value, ref):
    """`value` as a scalar of `ref`'s type (numba only)."""


def tiny(value):
    """The smallest normal float of `value`'s type, as a float64 (numba only)."""


@overload(load, jit_options=LLVM_INLINE)
def _load_impl(a, j):
    if a.dtype == types.uint16:
        return lambda a, j: bf16_to_f32(a[j])
    if a.dtype == types.int16:
        return lambda a, j: f16_to_f32(a[j])
    return lambda a, j: a[j]


def _bf16_store(convert):
    """A bfloat16 store through `convert` (`f32_to_bf16` or `finite_to_bf16`)."""
    def store_bf16(a, j, value):
        a[j] = convert(np.float32(value))
    return store_bf16


@overload(store, jit_options=LLVM_INLINE)
def _store_impl(a, j, value):
    if a.dtype == types.uint16:
        return _bf16_store(f32_to_bf16)
    if a.dtype == types.int16:
        def store_f16(a, j, value):
            a[j] = f32_to_f16(np.float32(value))
        return store_f16

    def store_float(a, j, value):
        a[j] = value
    return store_float


@overload(store_finite, jit_options=LLVM_INLINE)
def _store_finite_impl(a, j, value):
    if a.dtype == types.uint16:
        return _bf16_store(finite_to_bf16)
    return lambda a, j, value: store(a, j, value)


@overload(like, jit_options=LLVM_INLINE)
def _like_impl(value, ref):
    if ref == types.float32:
        return lambda value, ref: np.float32(value)
    return lambda value, ref: np.float64(value)


@overload(tiny, jit_options=LLVM_INLINE)
def _tiny_impl(value):
    smallest = 2.0 ** -1022 if value == types.float64 else 2.0 ** -126
    return lambda value: smallest


# --- bfloat16 stores with the CPU's own conversion ------------------------------------------

def _bfloat16_type():
    """LLVM's ``bfloat`` type, which llvmlite does not name; None if this llvmlite
    cannot make it."""
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

# `scale_to_bf16` works on blocks of this many floats: four vectors of 16.
BF16_BLOCK = 64


def hardware_bf16():
    """Whether the CPU numba compiles for rounds float32 to bfloat16 itself
    (``vcvtneps2bf16``, AVX-512 BF16), so that `scale_to_bf16` may be used."""
    return _BFLOAT16 is not None and _target.lowers_natively(_target.BFLOAT16_PROBE)


@intrinsic
def scale_to_bf16(typingctx, e, out, lo, hi, factor):
    """out[j] = bfloat16(e[j] * factor) over the whole 64-blocks of [lo, hi), with
    the CPU's own conversion; returns where it stopped, or ``2**64 - 1`` when a
    product fell below the smallest normal float (or is 0).

    Only where `hardware_bf16` (pass B checks). ``vcvtneps2bf16`` rounds to
    nearest even like `f32_to_bf16` but takes subnormal inputs as 0: the
    caller redoes the range in software when any product was that small.
    The loop keeps a running min of the products for that, with no branch
    (two vector operations per 16 entries, where the integer rounding takes
    six). e is float32, out uint16 (bfloat16 bits); factor is finite.
    Measured on AMD Zen 4 (bench/RESULTS.md) against the integer rounding
    it falls back to: pass B 0.065 -> 0.042 ns per entry in cache, and
    8192x32000 bfloat16 loss+gradient in place 44.3 -> 41.6 ms.
    """
    def codegen(context, builder, sig, args):
        e_data = context.make_array(sig.args[0])(context, builder, args[0]).data
        out_data = context.make_array(sig.args[1])(context, builder, args[1]).data
        i64, f32 = ir.IntType(64), ir.FloatType()
        floats = ir.VectorType(f32, 16)
        bfloats = ir.VectorType(_BFLOAT16, 16)
        halves = ir.VectorType(ir.IntType(16), 16)
        lo_, hi_ = args[2], args[3]
        scale = splat(builder, args[4], floats)
        step = ir.Constant(i64, BF16_BLOCK)
        end = builder.add(lo_, builder.mul(builder.udiv(builder.sub(hi_, lo_), step), step))
        none = ir.Constant(floats, [math.inf] * 16)
        entry, head, body, done = open_loop(builder, "bf16")
        j = builder.phi(i64)
        lows = [builder.phi(floats) for _ in range(BF16_BLOCK // 16)]
        j.add_incoming(lo_, entry)
        for low in lows:
            low.add_incoming(none, entry)
        builder.cbranch(builder.icmp_unsigned("<", j, end), body, done)
        builder.position_at_end(body)
        for k, low in enumerate(lows):
            jk = builder.add(j, ir.Constant(i64, 16 * k))
            source = builder.bitcast(builder.gep(e_data, [jk]), floats.as_pointer())
            product = builder.fmul(builder.load(source, align=4), scale, flags=("nsz",))
            low.add_incoming(call_llvm(builder, "llvm.minnum.v16f32", floats, [low, product],
                                       ("nnan", "nsz")), body)
            target = builder.bitcast(builder.gep(out_data, [jk]), halves.as_pointer())
            builder.store(builder.bitcast(builder.fptrunc(product, bfloats), halves),
                          target, align=2)
        j.add_incoming(builder.add(j, step), body)
        close_loop(builder, head, done)
        low = lows[0]
        for other in lows[1:]:
            low = call_llvm(builder, "llvm.minnum.v16f32", floats, [low, other], ("nnan", "nsz"))
        least = call_llvm(builder, "llvm.vector.reduce.fmin.v16f32", f32, [low], ("nnan", "nsz"))
        small = builder.fcmp_ordered("<", least, ir.Constant(f32, 2.0 ** -126))
        return builder.select(small, ir.Constant(i64, 2 ** 64 - 1), end)
    return types.uint64(e, out, lo, hi, factor), codegen
