"""The CPU the kernels are compiled for, and which conversions it does natively.

numba compiles for the host's CPU unless ``NUMBA_CPU_NAME`` and
``NUMBA_CPU_FEATURES`` name another (an older one, to test or time it:
``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=""`` is AVX2 with FMA,
``x86-64`` the SSE2 baseline). Some LLVM operations are one instruction on
some CPUs only: a vector ``fptrunc`` to ``bfloat`` is ``vcvtneps2bf16`` with
AVX-512 BF16, and half-precision conversions are ``vcvtph2ps``/``vcvtps2ph``
with F16C. Elsewhere LLVM calls a compiler-runtime helper (``__truncsfbf2``,
``__extendhfsf2``) that numba's JIT does not provide, and the process aborts
when the kernel is linked. So the kernels use such an operation only when
`lowers_natively` says so: it compiles a small probe for the same target and
reads its assembly. Otherwise they take the software path beside it
(`xent._fused._formats`), which the test suite runs by compiling for those
older targets in subprocesses.

`external_symbols` reads any assembly the same way; the tests apply it to
every compiled kernel.

The same probes pick the cheapest exp (`xent._fused._math`): ``llvm.ldexp``
is one instruction with AVX-512 (``vscalefps``) and a call to ``ldexpf`` per
element without; ``llvm.fma`` is one instruction with FMA and a call to
``fmaf`` without; ``llvm.lrint`` is ``cvtps2dq`` on every x86-64 CPU.
"""
import functools
import re

import llvmlite.binding as llvm
from numba.core import config
from numba.core.codegen import get_host_cpu_features

__all__ = ["cpu_name", "is_x86", "host_cpu_name", "cpu_features", "lowers_natively", "has_gather",
           "wide_vectors", "vector_ldexp", "external_symbols", "HALF_PROBE", "BFLOAT16_PROBE",
           "LDEXP_PROBE", "LDEXP_NARROW_PROBE",
           "LRINT_PROBE", "FMA_PROBE", "isa"]


def cpu_name():
    """The CPU numba compiles for: ``NUMBA_CPU_NAME``, else the host's (e.g. ``"znver3"``)."""
    return config.CPU_NAME or llvm.get_host_cpu_name()


@functools.cache
def is_x86():
    """Whether numba compiles for x86-64 (the process's own architecture)."""
    return llvm.get_process_triple().startswith(("x86_64", "amd64"))


@functools.cache
def host_cpu_name():
    """The CPU this process runs on, as LLVM names it (e.g. ``"znver4"``,
    ``"icelake-server"``), whatever numba compiles for: the memory system's
    behaviour (`xent._fused._launch.fetches_ahead`) is the host's."""
    return llvm.get_host_cpu_name()


def cpu_features():
    """The feature string numba compiles with: ``NUMBA_CPU_FEATURES``, else the host's."""
    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES
    return get_host_cpu_features()


@functools.cache
def _target_machine():
    """An LLVM target machine for numba's target: same CPU, same features."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=cpu_name(), features=cpu_features(), opt=2)


# An instruction that leaves for, or takes the address of, a symbol: a call or
# jump (x86-64 ``call foo``, aarch64 ``bl foo``), or a register loaded with
# the address under the JIT's large code model (``movabsq $foo, %rax``;
# ``movz x8, #:abs_g3:foo``). Local labels start with a dot.
_INSTRUCTION = re.compile(r"^\s+(callq?|jmpq?|bl|b|movabsq?|movz|movk|adrp)\s+(\S.*)$")
_SYMBOL = r"([A-Za-z_][\w$]*)"
_OPERAND = {   # where each instruction names a symbol
    "call": re.compile("^" + _SYMBOL), "jmp": re.compile("^" + _SYMBOL),
    "bl": re.compile("^" + _SYMBOL), "b": re.compile("^" + _SYMBOL),
    "movabs": re.compile(r"^\$" + _SYMBOL),
    "movz": re.compile(r"#:abs_g\d(?:_nc)?:" + _SYMBOL),
    "movk": re.compile(r"#:abs_g\d(?:_nc)?:" + _SYMBOL),
    "adrp": re.compile(r"^\w+,\s*" + _SYMBOL),
}


def external_symbols(asm):
    """The set of symbols that assembly text `asm` calls or takes the address of.

    Numba's own compiled functions (mangled ``_ZN...``) are left out: they
    live in the same JIT, as do the kernels.
    """
    found = set()
    for line in asm.splitlines():
        instruction = _INSTRUCTION.match(line)
        if instruction is None:
            continue
        mnemonic = instruction.group(1).rstrip("q") if instruction.group(1) != "movabsq" else "movabs"
        symbol = _OPERAND[mnemonic].search(instruction.group(2))
        if symbol and not symbol.group(1).startswith("_ZN"):
            found.add(symbol.group(1))
    return found


BFLOAT16_PROBE = """
define void @probe(ptr %src, ptr %dst) {
  %v = load <16 x float>, ptr %src, align 4
  %b = fptrunc <16 x float> %v to <16 x bfloat>
  store <16 x bfloat> %b, ptr %dst, align 2
  ret void
}
"""

HALF_PROBE = """
define void @probe(ptr %src, ptr %dst, ptr %hsrc, ptr %hdst) {
  %v = load <16 x float>, ptr %src, align 4
  %h = fptrunc <16 x float> %v to <16 x half>
  store <16 x half> %h, ptr %dst, align 2
  %w = load <16 x half>, ptr %hsrc, align 2
  %f = fpext <16 x half> %w to <16 x float>
  store <16 x float> %f, ptr %hdst, align 4
  %s = load half, ptr %hsrc, align 2
  %t = fpext half %s to float
  %u = fptrunc float %t to half
  store half %u, ptr %dst, align 2
  ret void
}
"""


LDEXP_PROBE = """
define void @probe(ptr %p, ptr %n, ptr %q, ptr %m) {
  %a = load <16 x float>, ptr %p, align 4
  %i = load <16 x i32>, ptr %n, align 4
  %r = call <16 x float> @llvm.ldexp.v16f32.v16i32(<16 x float> %a, <16 x i32> %i)
  store <16 x float> %r, ptr %p, align 4
  %b = load <8 x double>, ptr %q, align 8
  %j = load <8 x i32>, ptr %m, align 4
  %s = call <8 x double> @llvm.ldexp.v8f64.v8i32(<8 x double> %b, <8 x i32> %j)
  store <8 x double> %s, ptr %q, align 8
  ret void
}
declare <16 x float> @llvm.ldexp.v16f32.v16i32(<16 x float>, <16 x i32>)
declare <8 x double> @llvm.ldexp.v8f64.v8i32(<8 x double>, <8 x i32>)
"""

# The form LDEXP_PROBE's misses: LLVM also vectorises float64 loops 4 wide.
LDEXP_NARROW_PROBE = """
define void @probe(ptr %q, ptr %m) {
  %b = load <4 x double>, ptr %q, align 8
  %j = load <4 x i32>, ptr %m, align 4
  %s = call <4 x double> @llvm.ldexp.v4f64.v4i32(<4 x double> %b, <4 x i32> %j)
  store <4 x double> %s, ptr %q, align 8
  ret void
}
declare <4 x double> @llvm.ldexp.v4f64.v4i32(<4 x double>, <4 x i32>)
"""

LRINT_PROBE = """
define void @probe(ptr %p, ptr %n, ptr %q, ptr %m) {
  %a = load <16 x float>, ptr %p, align 4
  %i = call <16 x i32> @llvm.lrint.v16i32.v16f32(<16 x float> %a)
  store <16 x i32> %i, ptr %n, align 4
  %b = load <8 x double>, ptr %q, align 8
  %j = call <8 x i32> @llvm.lrint.v8i32.v8f64(<8 x double> %b)
  store <8 x i32> %j, ptr %m, align 4
  %c = load float, ptr %p, align 4
  %k = call i32 @llvm.lrint.i32.f32(float %c)
  store i32 %k, ptr %n, align 4
  ret void
}
declare <16 x i32> @llvm.lrint.v16i32.v16f32(<16 x float>)
declare <8 x i32> @llvm.lrint.v8i32.v8f64(<8 x double>)
declare i32 @llvm.lrint.i32.f32(float)
"""

FMA_PROBE = """
define void @probe(ptr %p, ptr %q) {
  %a = load <16 x float>, ptr %p, align 4
  %r = call <16 x float> @llvm.fma.v16f32(<16 x float> %a, <16 x float> %a, <16 x float> %a)
  store <16 x float> %r, ptr %p, align 4
  %b = load <8 x double>, ptr %q, align 8
  %s = call <8 x double> @llvm.fma.v8f64(<8 x double> %b, <8 x double> %b, <8 x double> %b)
  store <8 x double> %s, ptr %q, align 8
  ret void
}
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
declare <8 x double> @llvm.fma.v8f64(<8 x double>, <8 x double>, <8 x double>)
"""

# Plain vector arithmetic: its registers name the widest vectors the CPU has
# where FMA_PROBE's calls of fmaf (no FMA) hide them (`isa`).
ADD_PROBE = """
define void @probe(ptr %p) {
  %a = load <16 x float>, ptr %p, align 4
  %r = fadd <16 x float> %a, %a
  store <16 x float> %r, ptr %p, align 4
  ret void
}
"""

GATHER_PROBE = """
define <16 x float> @probe(<16 x ptr> %where) {
  %v = call <16 x float> @llvm.masked.gather.v16f32.v16p0(<16 x ptr> %where, i32 4,
        <16 x i1> <i1 1, i1 1, i1 1, i1 1, i1 1, i1 1, i1 1, i1 1,
                   i1 1, i1 1, i1 1, i1 1, i1 1, i1 1, i1 1, i1 1>, <16 x float> undef)
  ret <16 x float> %v
}
declare <16 x float> @llvm.masked.gather.v16f32.v16p0(<16 x ptr>, i32, <16 x i1>, <16 x float>)
"""


def _assembly(probe_ir):
    """The assembly LLVM makes of `probe_ir` (LLVM IR text) for numba's target."""
    module = llvm.parse_assembly(probe_ir)
    module.verify()
    return _target_machine().emit_assembly(module)


@functools.cache
def has_gather():
    """Whether the CPU numba compiles for has a vector gather instruction
    (AVX2 and AVX-512 ``vgatherdps``); elsewhere LLVM loads lane by lane."""
    return "gather" in _assembly(GATHER_PROBE)


@functools.cache
def lowers_natively(probe_ir):
    """Whether LLVM compiles `probe_ir` (a module of LLVM IR text) for numba's
    target without calling any function: `BFLOAT16_PROBE`, `HALF_PROBE`.

    Takes a few milliseconds, and runs only while a kernel compiles (a kernel
    loaded from numba's cache was compiled for this same CPU and features).
    """
    return not external_symbols(_assembly(probe_ir))


@functools.cache
def vector_ldexp():
    """Whether the kernels may use `llvm.ldexp` on float64 vectors: it lowers
    to the CPU's own instructions (`LDEXP_PROBE`: AVX-512's ``vscalefpd``)
    and, on x86, a ``<4 x double>`` one converts its int32 exponents to
    doubles first (`LDEXP_NARROW_PROBE`: ``vcvtdq2pd``).

    LLVM 22 forgets that conversion where AVX-512 lacks VL (Xeon Phi: `knl`,
    `knm`): the exponents' integer bits were read as doubles, and float64
    rows whose tail took 4 lanes gave NaN (found by an independent review).
    There, as on every CPU without AVX-512, the kernels build 2**n from its
    bits (`xent._fused._math.scale_by_bits`).
    """
    if not lowers_natively(LDEXP_PROBE):
        return False
    return not is_x86() or "cvtdq2pd" in _assembly(LDEXP_NARROW_PROBE)


# AVX-512 CPUs that lower their clock for 512-bit arithmetic (Intel's AVX-512
# licences on Skylake-SP and its successors up to Cooper Lake): LLVM
# vectorises loops 256 bits wide there, and so do the kernels (unmeasured).
_CLOCK_DROPS_AT_512 = ("skylake-avx512", "skx", "cascadelake", "cooperlake")


@functools.cache
def wide_vectors():
    """Whether the kernels' loops are vectorised 512 bits wide: on every AVX-512
    target but `_CLOCK_DROPS_AT_512`.

    LLVM's tuning for Intel's AVX-512 CPUs from Ice Lake on still prefers
    256-bit vectors (ymm) for loops; AMD's Zen 4 gets 512 (zmm). On a 16-core
    Intel Xeon VM (emeraldrapids, 2.1 GHz; one thread, in cache, float32, ns
    a logit, 256 / 512 bits): loss 0.603 / 0.481 and gradient in place
    0.724 / 0.448 on rows of 32000, 0.682 / 0.474 and 0.758 / 0.539 on rows
    of 1000. On its 16 threads, 8192x32000: the loss 1.52x / 1.41x the read.
    `xent._fused._llvm.vectorise_wide` applies it.
    """
    return "zmm" in _fma_assembly() and cpu_name() not in _CLOCK_DROPS_AT_512


@functools.cache
def _fma_assembly():
    """`FMA_PROBE`'s assembly: its registers name the vector width (`isa`, `wide_vectors`)."""
    return _assembly(FMA_PROBE)


def isa():
    """The instruction set the kernels are compiled for, in words, e.g.
    ``"znver3: AVX2+FMA"``, ``"x86-64: SSE2"`` or, where the loops stay 256 bits
    wide (`wide_vectors`), ``"cascadelake: AVX-512, 256-bit loops"``."""
    asm = _fma_assembly()
    if "zmm" in asm:
        level = "AVX-512" if wide_vectors() else "AVX-512, 256-bit loops"
    elif "ymm" in asm:
        level = "AVX2+FMA" if lowers_natively(FMA_PROBE) else "AVX"
    elif "ymm" in _assembly(ADD_PROBE):   # (AVX without FMA: Sandy and Ivy Bridge, Jaguar)
        level = "AVX"
    elif "xmm" in asm:
        level = "SSE2"
    else:
        level = "NEON" if "v0." in asm or "q0" in asm else "scalar"
    return f"{cpu_name()}: {level}"
