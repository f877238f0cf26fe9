"""LLVM operations that numba does not expose, as numba intrinsics.

Each is a target-independent LLVM operation that every backend (x86-64 from
SSE2 up, aarch64) turns into inline code, scalar or vector: no intrinsic
here becomes a library call (`xent._fused._target.external_symbols`, applied
to every kernel by the tests, checks that). The flags on each operation are
chosen so that numba's fast-math pass cannot regroup what must stay exact.
"""
import functools

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from xent._fused import _target

__all__ = [
    "call_llvm", "splat", "open_loop", "close_loop",
    "maximum", "max_finite", "floor_at", "mul_exact", "fmuladd",
    "label_loss", "is_finite", "prefetch", "lrint", "round_by_sum", "ldexp", "scale_by_bits",
    "fma", "split_exponent", "round_scale", "STREAM_BYTES", "stream_scaled",
    "stream_scaled_less", "store_fence", "flush_denormals",
    "restore_denormals",
    "vectorise_wide",
]


def ir_type(numba_type):
    """The LLVM type of a numba float type."""
    return ir.DoubleType() if numba_type == types.float64 else ir.FloatType()


def _suffix(numba_type):
    return "f64" if numba_type == types.float64 else "f32"


def call_llvm(builder, name, ret, args, flags=()):
    """IR: call the LLVM intrinsic `name` returning `ret` on `args`."""
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args,
                        fastmath=flags)


def splat(builder, value, vector_type):
    """IR: a vector of `vector_type` with every lane `value`."""
    lanes = ir.VectorType(ir.IntType(32), vector_type.count)
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value,
                                 ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(lanes, [0] * vector_type.count))


def open_loop(builder, name):
    """IR: start a loop `name` from the builder's block: append the blocks
    ``name.head``, ``name.body`` and ``name.done``, branch to the head, and
    leave the builder there (for the caller's phis and its branch to body or
    done). Returns (the block entered from, head, body, done)."""
    entry = builder.block
    head = builder.append_basic_block(f"{name}.head")
    body = builder.append_basic_block(f"{name}.body")
    done = builder.append_basic_block(f"{name}.done")
    builder.branch(head)
    builder.position_at_end(head)
    return entry, head, body, done


def close_loop(builder, head, done):
    """IR: end a loop's body (`open_loop`) with the branch back to its head, and
    leave the builder at the start of its `done` block."""
    builder.branch(head)
    builder.position_at_end(done)


@intrinsic
def maximum(typingctx, a, b):
    """max(a, b), NaN if either is NaN (``llvm.maximum``): a NaN-propagating max that vectorises."""
    def codegen(context, builder, sig, args):
        return call_llvm(builder, f"llvm.maximum.{_suffix(a)}", ir_type(a), args, ("nsz",))
    return a(a, a), codegen


@intrinsic
def max_finite(typingctx, a, b):
    """max(a, b) for operands assumed not NaN (``llvm.maxnum``, one ``maxps``: a running max)."""
    def codegen(context, builder, sig, args):
        return call_llvm(builder, f"llvm.maxnum.{_suffix(a)}", ir_type(a), args, ("nnan", "nsz"))
    return a(a, a), codegen


@intrinsic
def floor_at(typingctx, floor, x):
    """floor if floor > x else x: one ``maxps`` that lets a NaN x through."""
    def codegen(context, builder, sig, args):
        return builder.select(builder.fcmp_ordered(">", args[0], args[1]), args[0], args[1])
    return x(x, x), codegen


@intrinsic
def mul_exact(typingctx, a, b):
    """a * b, rounded once and never regrouped with another product: the
    ``nsz`` flag alone (numba's fast-math pass leaves flagged instructions
    alone, and without ``reassoc`` LLVM keeps the order)."""
    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1], flags=("nsz",))
    return a(a, b), codegen


@intrinsic
def add_exact(typingctx, a, b):
    """a + b, rounded once, in the order written: the ``nsz`` flag alone, as
    `mul_exact` (a sum of such adds is never regrouped by fast-math's reassoc)."""
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1], flags=("nsz",))
    return a(a, b), codegen


@intrinsic
def fmuladd(typingctx, a, b, c):
    """a * b + c: one fused multiply-add where the CPU has one (rounded once),
    else a multiply and an add (``llvm.fmuladd``; never a call to ``fma``)."""
    def codegen(context, builder, sig, args):
        return call_llvm(builder, f"llvm.fmuladd.{_suffix(a)}", ir_type(a), args)
    return a(a, a, a), codegen


@intrinsic
def label_loss(typingctx, log_s, x_label, m):
    """log_s - (x_label - m) in float64, exactly as written.

    Huge logits must cancel in ``x_label - m`` before log_s is involved, so these
    two subtractions carry only the ``nsz`` flag.
    """
    def codegen(context, builder, sig, args):
        wide = [builder.fpext(a, ir.DoubleType()) if t == types.float32 else a
                for a, t in zip(args, sig.args)]
        shifted = builder.fsub(wide[1], wide[2], flags=("nsz",))
        return builder.fsub(wide[0], shifted, flags=("nsz",))
    return types.float64(log_s, x_label, m), codegen


def _exponent_field(numba_type):
    """(integer width, exponent mask, mantissa bits) of float32 or float64."""
    if numba_type == types.float64:
        return 64, (2 ** 11 - 1) << 52, 52
    return 32, 0xFF << 23, 23


@intrinsic
def is_finite(typingctx, a):
    """Whether a is finite, tested on its bits. Under the kernels' fast-math
    flags LLVM once folded ``np.isfinite`` of a sum of unfloored exps to true
    (numba tests ``x - x`` for NaN, which reassociation makes 0)."""
    def codegen(context, builder, sig, args):
        bits, exponent, _ = _exponent_field(sig.args[0])
        word = builder.bitcast(args[0], ir.IntType(bits))
        field = builder.and_(word, ir.Constant(ir.IntType(bits), exponent))
        return builder.icmp_unsigned("!=", field, ir.Constant(ir.IntType(bits), exponent))
    return types.boolean(a), codegen


@intrinsic
def lrint(typingctx, t):
    """t rounded to the nearest int32, ties to even (``llvm.lrint``: ``cvtps2dq``
    on x86-64; use only where `xent._fused._target.LRINT_PROBE` lowers natively)."""
    def codegen(context, builder, sig, args):
        return call_llvm(builder, f"llvm.lrint.i32.{_suffix(t)}", ir.IntType(32), args)
    return types.int32(t), codegen


@intrinsic
def round_by_sum(typingctx, t):
    """t rounded to the nearest int32, ties to even, for |t| < 2**22, without
    ``lrint``: adding 1.5 * 2**M (M the mantissa width) rounds t and leaves
    the integer in the sum's low 32 bits, in two's complement.

    The sum carries only the ``nsz`` flag and the integer is read from its
    bits, so LLVM cannot fold ``(t + C) - C`` back to t.
    """
    def codegen(context, builder, sig, args):
        bits, _, mantissa = _exponent_field(sig.args[0])
        rounder = ir.Constant(ir_type(sig.args[0]), 1.5 * 2.0 ** mantissa)
        s = builder.fadd(args[0], rounder, flags=("nsz",))
        low = builder.trunc(builder.bitcast(s, ir.IntType(bits)), ir.IntType(32))
        # The low 32 bits of 1.5 * 2**M: float32's 0x4B400000, float64's 0.
        return builder.sub(low, ir.Constant(ir.IntType(32), 0x4B400000 if bits == 32 else 0))
    return types.int32(t), codegen


@intrinsic
def ldexp(typingctx, p, n):
    """p * 2**n for an int32 n (``llvm.ldexp``: ``vscalefps`` on AVX-512; use
    only where `xent._fused._target.vector_ldexp`)."""
    def codegen(context, builder, sig, args):
        return call_llvm(builder, f"llvm.ldexp.{_suffix(p)}.i32", ir_type(p), args)
    return p(p, n), codegen


@intrinsic
def scale_by_bits(typingctx, p, n, bias):
    """p * 2**n for an int32 n, with 2**(n + bias) built from the bits, for
    `bias` a constant: ``(p * 2**(n + bias)) * 2**-bias`` rounds once, into
    the subnormals or to 0 when n is below the smallest exponent.

    Valid while n + bias stays within the normal exponents (float32:
    -126 - bias <= n <= 127 - bias), and at the one below them, whose
    exponent field 0 makes 2**(n + bias) +0.0 and the result 0 (the float64
    exp's floor, `xent._fused._math`). `ldexp` without AVX-512, where
    ``llvm.ldexp`` is a call to ``ldexpf`` per element.
    """
    def codegen(context, builder, sig, args):
        bits, _, mantissa = _exponent_field(sig.args[0])
        word = ir.IntType(bits)
        exponent_bias = 1023 if bits == 64 else 127
        offset = exponent_bias + sig.args[2].literal_value
        wide = builder.sext(args[1], word) if bits == 64 else args[1]
        field = builder.shl(builder.add(wide, ir.Constant(word, offset)), ir.Constant(word, mantissa))
        power = builder.bitcast(field, ir_type(sig.args[0]))
        back = ir.Constant(ir_type(sig.args[0]), 2.0 ** -sig.args[2].literal_value)
        return builder.fmul(builder.fmul(args[0], power, flags=("nsz",)), back, flags=("nsz",))
    if not isinstance(bias, types.IntegerLiteral):
        return None
    return p(p, n, bias), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (``llvm.fma``; use only where
    `xent._fused._target.FMA_PROBE` lowers natively, else it is a call to ``fma``)."""
    def codegen(context, builder, sig, args):
        return call_llvm(builder, f"llvm.fma.{_suffix(a)}", ir_type(a), args)
    return a(a, a, a), codegen


@intrinsic
def prefetch(typingctx, a, j):
    """Ask for the cache line holding a[j] (into L2), without waiting for it."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [args[1]])
        i32 = ir.IntType(32)
        call_llvm(builder, "llvm.prefetch.p0", ir.VoidType(),
                  [ptr, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.none(a, j), codegen


# The width of one non-temporal store of `stream_scaled`: a whole AVX vector
# (two SSE2 or NEON ones), and a divisor of a 64-byte cache line.
STREAM_BYTES = 32


@intrinsic
def stream_scaled(typingctx, out, e, j, f):
    """out[j:j + L] = e[j:j + L] * f, with L = 32 bytes / itemsize, in one
    non-temporal store (``!nontemporal``: ``vmovntps`` on AVX, two ``movntps``
    on SSE2, ``stnp`` on aarch64), for float32 or float64 arrays of one dtype.

    The store goes to memory without first reading its cache line. &out[j]
    must be `STREAM_BYTES`-aligned (an unaligned non-temporal vector store is
    split into scalar ones); e needs no alignment. Each product is rounded
    once, as ``e[j] * f`` is.
    """
    def codegen(context, builder, sig, args):
        _stream(context, builder, sig, args, lambda product, arrays: product)
        return context.get_dummy_value()
    if out.dtype not in (types.float32, types.float64) or e.dtype != out.dtype:
        return None
    return types.none(out, e, j, out.dtype), codegen


@intrinsic
def stream_scaled_less(typingctx, out, e, j, f, y, w):
    """out[j:j + L] = e[j:j + L] * f - y[j:j + L] * w, as `stream_scaled`, for
    dense targets y of out's dtype: each product rounded once (never fused
    with the subtraction, as `mul_exact`), then their difference."""
    def codegen(context, builder, sig, args):
        def less(product, arrays):
            target = builder.fmul(arrays(4), splat(builder, args[5], product.type),
                                  flags=("nsz",))
            return builder.fsub(product, target, flags=("nsz",))
        _stream(context, builder, sig, args, less)
        return context.get_dummy_value()
    if out.dtype not in (types.float32, types.float64) or e.dtype != out.dtype \
            or y.dtype != out.dtype:
        return None
    return types.none(out, e, j, out.dtype, y, out.dtype), codegen


def _stream(context, builder, sig, args, finish):
    """IR of `stream_scaled` and `stream_scaled_less`: out (args[0]) at index
    args[2] gets ``finish(e * f, vector)`` in one non-temporal store, where
    ``vector(k)`` loads the vector at that index of the array args[k]."""
    lane = ir_type(sig.args[0].dtype)
    vector = ir.VectorType(lane, STREAM_BYTES // (sig.args[0].dtype.bitwidth // 8))

    def address(k):
        data = context.make_array(sig.args[k])(context, builder, args[k]).data
        return builder.bitcast(builder.gep(data, [args[2]]), vector.as_pointer())

    def load(k):
        return builder.load(address(k), align=sig.args[k].dtype.bitwidth // 8)

    product = builder.fmul(load(1), splat(builder, args[3], vector), flags=("nsz",))
    store = builder.store(finish(product, load), address(0), align=STREAM_BYTES)
    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


# MXCSR's flush-to-zero bit: a result below the smallest normal float is 0.
_FLUSH_TO_ZERO = 0x8000


def _control_word(builder, slot, store):
    """IR: ``stmxcsr`` (store=True: the control word into i32 `slot`) or ``ldmxcsr``
    (from it)."""
    name = "llvm.x86.sse.stmxcsr" if store else "llvm.x86.sse.ldmxcsr"
    call_llvm(builder, name, ir.VoidType(), [builder.bitcast(slot, ir.IntType(8).as_pointer())])


@intrinsic
def flush_denormals(typingctx):
    """Make this thread flush results below the smallest normal float to 0
    (MXCSR's FTZ bit, on x86-64); returns the control word to hand back to
    `restore_denormals` at the kernel's end (0 elsewhere, where it does nothing).
    A kernel calls it after its allocations: an error returns from a numba
    function at once, and would leave the thread flushing.

    Without it, every exp, product or sum whose result is subnormal costs an
    x86 core a microcode assist: float32 rows with a tenth of their logits 95
    below the max took 12 times as long as unmasked ones (Intel Xeon (Emerald
    Rapids), 16x32000, one thread), float64 rows 720 below 7 times. TensorFlow
    runs its kernels flushing so too (and so gives 0 there; it also reads
    subnormal inputs as 0, which xent does not: the SSE2 baseline's float16
    conversion needs them). aarch64 keeps subnormals here (TensorFlow flushes
    there too).
    """
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        if not _target.is_x86():
            return ir.Constant(i32, 0)
        slot = cgutils.alloca_once(builder, i32)
        _control_word(builder, slot, store=True)
        word = builder.load(slot)
        builder.store(builder.or_(word, ir.Constant(i32, _FLUSH_TO_ZERO)), slot)
        _control_word(builder, slot, store=False)
        return word
    return types.int32(), codegen


@intrinsic
def restore_denormals(typingctx, word):
    """Give this thread back the control word `word` that `flush_denormals` returned."""
    def codegen(context, builder, sig, args):
        if _target.is_x86():
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            _control_word(builder, slot, store=False)
        return context.get_dummy_value()
    return types.none(types.int32), codegen


@intrinsic
def store_fence(typingctx):
    """A full memory fence (``fence seq_cst``): the non-temporal stores before it
    are visible before any store after it, so that another thread that sees
    the later stores sees them. On x86-64 LLVM 22 emits a locked ``or`` to
    the stack (read in the streamed kernels' machine code), which drains the
    write-combining buffers as ``sfence`` does (Intel SDM vol. 3, 11.3.1;
    AMD APM vol. 2, 7.4.2); on aarch64 ``dmb ish``."""
    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def split_exponent(typingctx, s):
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


@intrinsic
def round_scale(typingctx, t, a, magic):
    """(n, 2**(n + bias)) for n = t * a rounded to an integer, both float32,
    with `magic` = 1.5 * 2**23 + bias + 127 a float32 constant and
    |n + bias + 127| < 2**22: no float-int conversion.

    s = t * a + magic (one fused multiply-add where the CPU has one) rounds
    t * a to an integer, held in s's low mantissa bits (a tie goes to the
    even s: to the n that makes n + bias + 127 even); n = s - magic; and
    s's bits shifted left by 23 are the float32 2**(n + bias) for
    1 <= n + bias + 127 <= 254 (magic's own high bits shift out). The
    subtraction carries only the ``nsz`` flag, so LLVM cannot fold
    ``(t * a + magic) - magic`` back to ``t * a``.
    """
    def codegen(context, builder, sig, args):
        f32, i32 = ir.FloatType(), ir.IntType(32)
        s = call_llvm(builder, "llvm.fmuladd.f32", f32, args)
        n = builder.fsub(s, args[2], flags=("nsz",))
        field = builder.shl(builder.bitcast(s, i32), ir.Constant(i32, 23))
        return cgutils.make_anonymous_struct(builder, [n, builder.bitcast(field, f32)])
    if not t == a == magic == types.float32:
        return None
    return types.UniTuple(types.float32, 2)(t, a, magic), codegen


# The LLVM function attribute that lets the loop vectoriser use 512-bit vectors
# (clang's -mprefer-vector-width=512), for the kernel that carries it only.
_WIDE = '"prefer-vector-width"="512"'


def _add_string_attribute(function, attribute):
    """Add LLVM string attribute `attribute` (``"key"="value"``) to llvmlite
    ir.Function `function`. llvmlite checks function attributes against a
    list of LLVM keywords, which holds no string attributes, so it goes into
    the set past that check; llvmlite writes the set's entries as they are."""
    set.add(function.attributes, attribute)


@functools.cache
def _string_attributes_parse():
    """Whether a function carrying `_WIDE` (added by `_add_string_attribute`) comes
    out of llvmlite as IR that LLVM parses: if a later llvmlite kept or wrote
    its attributes otherwise, the kernels go without it rather than fail to
    compile."""
    try:
        module = ir.Module()
        function = ir.Function(module, ir.FunctionType(ir.VoidType(), []), "probe")
        ir.IRBuilder(function.append_basic_block()).ret_void()
        _add_string_attribute(function, _WIDE)
        parsed = llvm_binding.parse_assembly(str(module))
        parsed.verify()
    except Exception:   # noqa: BLE001 - any failure means: no string attributes
        return False
    return _WIDE in str(parsed)


@intrinsic
def vectorise_wide(typingctx):
    """Let LLVM vectorise the loops of the function that calls this 512 bits wide,
    where `xent._fused._target.wide_vectors` says so (on Intel's AVX-512 CPUs
    LLVM keeps to 256 bits otherwise); elsewhere nothing.

    Called first in each row kernel, whose loops include those of the helpers
    numba inlines (``INLINE``), and in each typed overload that holds a loop:
    an overload is compiled and optimised as a function of its own, then
    inlined by LLVM with its loops already vectorised."""
    def codegen(context, builder, sig, args):
        if _target.wide_vectors() and _string_attributes_parse():
            _add_string_attribute(builder.function, _WIDE)
        return context.get_dummy_value()
    return types.none(), codegen
