"""The fused kernels' LLVM IR, lowered for aarch64 (NEON) on an x86-64 machine.

numba compiles for the CPU it runs on, so an x86-64 machine cannot run the
kernels as an aarch64 one (Apple Silicon, Graviton) would build them. It can
lower their IR for aarch64, which LLVM's aarch64 backend (in every llvmlite)
does without running it: an operation with no NEON instruction becomes a call
to a library function there, and the object's symbol table shows it.

The IR to lower is what the kernels compile to for the SSE2 baseline
(``NUMBA_CPU_NAME=x86-64``): with `xent._fused._target`'s probes answering
as they do there, every step takes its portable form (2**n from the exponent
bits, half and bfloat16 rounding on the bits, a multiply and an add for FMA)
but ``llvm.lrint``, which the aarch64 probe lowers natively too. The native
forms aarch64 would choose on its own (FMA, half and bfloat16 conversions)
are the probes' operations, each chosen only where the probe, compiled for
that same CPU, lowers with no call.

    lower(ir_text) -> aarch64 ELF object (bytes)
"""
import re

import llvmlite.binding as llvm

__all__ = ["ENV", "TRIPLE", "machine", "lower"]

TRIPLE = "aarch64-unknown-linux-gnu"
# Set (to "1") for tests/target_runs.py's SSE2-baseline run, the one whose test
# lowers the kernels for aarch64; conftest.py deselects that test elsewhere.
ENV = "XENT_TEST_LOWER_FOR_AARCH64"

# numba's runtime (``NRT_decref``) reaches the final module optimised for x86:
# an atomic decrement whose result is tested for zero becomes an x86-only
# intrinsic (condition code 4: equal). It is put back as the generic atomic.
_X86_ATOMIC_SUB = re.compile(
    r"(%[\w.]+) = (?:tail )?call i8 @llvm\.x86\.atomic\.sub\.cc\.i64\("
    r"ptr (?:nonnull )?(%[\w.]+), i64 (\d+), i32 4\)")


def machine():
    """An LLVM target machine for aarch64 with NEON (``generic``: the ARMv8-A baseline)."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return llvm.Target.from_triple(TRIPLE).create_target_machine(cpu="generic", features="+neon",
                                                                 opt=2)


def _generic_atomic(match):
    """``old = atomicrmw sub``; the intrinsic's i8 is whether the new value is 0.
    The new values are named after the match's offset (a numbered one may not
    take a suffix, nor be added without renumbering the rest)."""
    result, pointer, amount = match.groups()
    name = f"%xent.atomic.{match.start()}"
    return (f"{name}.old = atomicrmw sub ptr {pointer}, i64 {amount} monotonic, align 8\n"
            f"  {name}.zero = icmp eq i64 {name}.old, {amount}\n"
            f"  {result} = zext i1 {name}.zero to i8")


# The kernels' reads and writes of x86's control word (`xent._fused._llvm.flush_denormals`),
# which a compile for any other CPU does not emit.
_X86_CONTROL_WORD = re.compile(r"^\s*(?:tail )?call void @llvm\.x86\.sse\.(?:st|ld)mxcsr\(.*$"
                               r"|^declare void @llvm\.x86\.sse\.(?:st|ld)mxcsr\(.*$", re.M)


def retarget(ir_text, target):
    """`ir_text` (a module compiled for x86-64) for `target`'s triple and data
    layout, without its x86 CPU attributes and its control-word calls; raises
    on any other x86-only intrinsic, which no other backend could lower."""
    ir_text = _X86_ATOMIC_SUB.sub(_generic_atomic, ir_text)
    ir_text = re.sub(r"^declare i8 @llvm\.x86\.atomic\.sub\.cc\.i64\(.*$", "", ir_text, flags=re.M)
    ir_text = _X86_CONTROL_WORD.sub("", ir_text)
    left = sorted(set(re.findall(r"@(llvm\.x86\.[\w.]+)", ir_text)))
    if left:
        raise ValueError(f"x86-only intrinsics in the IR: {left}")
    ir_text = re.sub(r'^target triple = ".*"$', f'target triple = "{TRIPLE}"', ir_text, flags=re.M)
    ir_text = re.sub(r'^target datalayout = ".*"$', f'target datalayout = "{target.target_data}"',
                     ir_text, flags=re.M)
    return re.sub(r'"(target-cpu|target-features|tune-cpu)"="[^"]*"', "", ir_text)


def lower(ir_text, target=None):
    """The aarch64 object file of x86-64 module `ir_text` (`retarget`)."""
    target = target or machine()
    module = llvm.parse_assembly(retarget(ir_text, target))
    module.verify()
    return target.emit_object(module)
