"""Every fused kernel compiled in this process calls no function the JIT may lack.

Run by tests/test_targets.py after tests/test_fused.py's ``every_target``
tests, in a subprocess that compiles for one CPU into an empty numba cache
(numba keeps no assembly for kernels loaded from its cache). Not collected
by a plain ``pytest`` run: its name does not start with ``test_``.

A call from compiled code to a symbol the JIT does not provide aborts the
whole process when the kernel is linked (``LLVM ERROR: Symbol not found:
__truncsfbf2``): compiler-runtime helpers, and per-element libm calls such
as ``ldexpf`` or ``fmaf`` are what LLVM emits for an operation the CPU has
no instruction for. The kernels may call only what every numba function
relies on: numba's runtime (registered with LLVM by numba itself), the
Python C API and, from the process's libc and libm, ``memset``, ``memcpy``,
``memmove`` and ``log`` (once per row).
"""
import numba
import pytest

from xent._fused import _blocks, _labels, _math, _narrow, _rows, _target

pytestmark = pytest.mark.every_target

ALLOWED = {"memset", "memcpy", "memmove", "log", "printf",
           # numba's parallel runtime (its threading layer's entry points)
           "allocate_sched", "deallocate_sched", "do_scheduling_signed",
           "do_scheduling_unsigned", "get_num_threads", "set_num_threads", "get_thread_id",
           "get_parallel_chunksize", "set_parallel_chunksize", "get_sched_size"}
ALLOWED_PREFIXES = ("NRT_", "numba_", "Py", "_Py", "__gufunc__", "printf_format")


def compiled_kernels():
    """(name, dispatcher, signature) of every signature compiled in this process."""
    for module in (_rows, _narrow, _blocks, _math, _labels):
        for name in sorted(vars(module)):
            dispatcher = getattr(module, name)
            if isinstance(dispatcher, numba.core.registry.CPUDispatcher):
                for signature in dispatcher.signatures:
                    yield f"{module.__name__}.{name}{signature}", dispatcher, signature


def forbidden(symbols):
    """The symbols of `symbols` that the JIT may not provide."""
    return {s for s in symbols if s not in ALLOWED and not s.startswith(ALLOWED_PREFIXES)}


def test_compiled_kernels_call_no_external_symbol():
    kernels = list(compiled_kernels())
    assert len(kernels) >= 40, f"only {len(kernels)} kernels were compiled: run tests/test_fused.py first"
    offenders = {}
    for name, dispatcher, signature in kernels:
        if dispatcher.stats.cache_hits.get(signature):
            pytest.fail(f"{name} came from numba's cache, which keeps no assembly: "
                        "run with an empty NUMBA_CACHE_DIR")
        bad = forbidden(_target.external_symbols(dispatcher.inspect_asm(signature)))
        if bad:
            offenders[name] = sorted(bad)
    assert not offenders, f"compiled for {_target.isa()}, kernels call {offenders}"


def test_the_symbol_reader_finds_what_aborted_the_process():
    """`external_symbols` on the assembly LLVM makes of a bfloat16 conversion for
    the SSE2 baseline, where it calls ``__truncsfbf2`` (the abort of issue 12)."""
    import llvmlite.binding as llvm

    module = llvm.parse_assembly(_target.BFLOAT16_PROBE)
    machine = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(
        cpu="x86-64" if llvm.get_process_triple().startswith("x86_64") else "generic", features="")
    found = forbidden(_target.external_symbols(machine.emit_assembly(module)))
    if llvm.get_process_triple().startswith("x86_64"):
        assert "__truncsfbf2" in found
