"""No fused kernel calls a function the JIT may lack, nor a helper, on the CPU compiled for.

A call from compiled code to a symbol the JIT does not provide aborts the
whole process when the kernel is linked (``LLVM ERROR: Symbol not found:
__truncsfbf2``): compiler-runtime helpers, and per-element libm calls such
as ``ldexpf`` or ``fmaf`` are what LLVM emits for an operation the CPU has
no instruction for. The kernels may call only what every numba function
relies on: numba's runtime (registered with LLVM by numba itself), the
Python C API and, from the process's libc and libm, ``memset``, ``memcpy``,
``memmove`` and ``log`` (once per row).

Nor does a kernel call a helper of its own (a function compiled apart and
not inlined): whether LLVM inlined one used to hang on what the process had
compiled before, and a loop of calls rounds a sum unlike the inlined loop,
so kernels from one disk cache disagreed by an ulp.

Each kernel is compiled here, or loaded from numba's disk cache, and its
object file's symbol table is read (tests/object_symbols.py). The suite runs
these tests, with tests/test_fused.py's ``every_target`` tests, in
subprocesses that compile for the host and for older CPUs
(tests/test_targets.py); ``pytest tests/test_kernel_symbols.py`` runs them
for the host, in its own process.
"""
import numpy as np
import numba
import pytest

from object_symbols import defined_functions, undefined_symbols
from test_fused import FLOATS, run_three_ways
from xent._fused import _labels, _math, _narrow, _rows, _target

pytestmark = pytest.mark.every_target

ALLOWED = {"memset", "memcpy", "memmove", "log", "printf",
           "_bzero",     # macOS's libc (memset of zeros; Mach-O's __bzero)
           "_fltused"}   # Windows: marks code that uses floating point (the CRT defines it)
ALLOWED_PREFIXES = ("NRT_", "numba_", "Py", "_Py", "printf_format")


def compile_every_kernel():
    """Call each fused kernel once per dtype, so that it is compiled (or loaded
    from numba's cache) in this process: sparse and dense (targets in the
    logits' dtype, and in float32 for half-precision logits); loss, gradient
    into a buffer and over the logits; 10 classes (the narrow kernels) and
    more than `_narrow.narrow_max()` (the chunk kernels). Threads run the same
    row kernels (`xent._fused._pool`). Cheap where tests/test_fused.py has run."""
    rng = np.random.default_rng(0)
    for dtype in FLOATS:
        for width in (10, max(300, _narrow.narrow_max() + 1)):
            logits = rng.standard_normal((8, width)).astype(dtype)
            run_three_ways("sparse", logits, rng.integers(0, width, 8))
            for target_dtype in {dtype, np.dtype(np.float32) if dtype.itemsize == 2 else dtype}:
                run_three_ways("dense", logits, np.full((8, width), 1 / width, target_dtype))


def compiled_kernels():
    """(name, dispatcher, signature) of every signature compiled or loaded in this
    process, each once."""
    seen = set()
    for module in (_rows, _narrow, _math, _labels):
        for name in sorted(vars(module)):
            dispatcher = getattr(module, name)
            if isinstance(dispatcher, numba.core.registry.CPUDispatcher):
                for signature in dispatcher.signatures:
                    if (id(dispatcher), signature) not in seen:
                        seen.add((id(dispatcher), signature))
                        yield f"{module.__name__}.{name}{signature}", dispatcher, signature


def object_code(dispatcher, signature):
    """The object file of `dispatcher`'s machine code for `signature` (with the
    helpers it calls, linked in): read back from numba's disk cache, where a
    kernel compiled here was saved as soon as it was compiled and a cached one
    came from, else emitted again from the code library compiled here (both
    through numba's private attributes: a numba that moves them fails this
    test, loudly). Emitting again is the slow way: about 0.7 s a kernel on a
    Zen 3, 70 s over the suite's kernels."""
    cache, reduced = dispatcher._cache, None
    if hasattr(cache, "_cache_file"):   # (not a NullCache: a kernel numba does not cache)
        reduced = cache._cache_file.load(cache._index_key(signature, dispatcher.targetctx.codegen()))
    # (numba numbers its data files without a lock: a process sharing the cache may
    # have saved another signature's code under this one's key)
    mangled = dispatcher.overloads[signature].fndesc.mangled_name
    if reduced is not None and reduced[1].mangled_name == mangled:   # ([1]: its fndesc)
        name, kind, (code, _bitcode) = reduced[0]   # the library, serialised as an object
        assert kind == "object", f"numba cached {name} as {kind}"
        return code
    library = dispatcher.overloads[signature].library
    return library._codegen._tm.emit_object(library._final_module)   # as `inspect_asm` does


def _machine(triple):
    """An LLVM target machine for `triple` and the SSE2 baseline."""
    import llvmlite.binding as llvm

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return llvm.Target.from_triple(triple).create_target_machine(cpu="x86-64", features="")


def forbidden(symbols):
    """The symbols of `symbols` that the JIT may not provide."""
    return {s for s in symbols if s not in ALLOWED and not s.startswith(ALLOWED_PREFIXES)}


@pytest.fixture(scope="module")
def kernel_objects():
    """(name, dispatcher, signature, object file) of every kernel compiled or
    loaded in this process (`compile_every_kernel`), each object read once for
    this module's checks."""
    compile_every_kernel()
    return [(name, dispatcher, signature, object_code(dispatcher, signature))
            for name, dispatcher, signature in compiled_kernels()]


def test_compiled_kernels_call_no_external_symbol(kernel_objects):
    # 5 per dtype and kind (sparse, dense) on one thread, and the streamed ones (sparse and
    # dense) for float32 and float64.
    assert len(kernel_objects) >= 20, f"only {len(kernel_objects)} kernels were compiled"
    offenders = {}
    for name, _, _, code in kernel_objects:
        symbols = undefined_symbols(code)
        assert symbols, f"{name}: no symbol read (each kernel's wrapper calls Python's C API)"
        bad = forbidden(symbols)
        if bad:
            offenders[name] = sorted(bad)
    assert not offenders, f"compiled for {_target.isa()}, kernels call {offenders}"


def helpers_left_called(object_code, mangled):
    """The functions that the object of the function mangled `mangled` defines
    besides that function, its wrappers and numba's runtime (``NRT_*``):
    helpers LLVM did not inline, left called (xent's, or numba's own)."""
    own = mangled.removeprefix("_ZN")
    return {name for name in defined_functions(object_code)
            if own not in name and not name.startswith("NRT_")}


def test_kernels_call_no_helper(kernel_objects):
    """No kernel calls a helper: each typed overload and each exp of
    `xent._fused._math` is marked for LLVM to inline (`_options.LLVM_INLINE`),
    and numba's own helpers (`np.empty`'s, `max`'s) are inlined by LLVM too.
    Whether LLVM inlined one, left to its judgement, hung on what the process
    had compiled before, and a loop of calls rounded its sum unlike the
    inlined loop: kernels from one disk cache, compiled by processes with
    different histories, gave losses 1 ulp apart (sessions 31 and 32)."""
    offenders = {}
    for name, dispatcher, signature, code in kernel_objects:
        if dispatcher.__module__ == _math.__name__:   # (the exps themselves)
            continue
        left = helpers_left_called(code, dispatcher.overloads[signature].fndesc.mangled_name)
        if left:
            offenders[name] = sorted(left)
    assert not offenders, f"compiled for {_target.isa()}, kernels call {offenders}"


@pytest.mark.aarch64_lowering
def test_kernels_for_the_sse2_baseline_lower_for_aarch64_with_no_external_symbol():
    """The kernels' portable forms (as compiled for the SSE2 baseline, in the
    x86-64 run of tests/target_runs.py, into an empty numba cache) lowered for
    aarch64 with NEON (tests/aarch64_lowering.py) call nothing the JIT may
    lack there either."""
    import aarch64_lowering

    assert _target.cpu_name() == "x86-64", "run by tests/target_runs.py's x86-64 run"
    compile_every_kernel()
    target, offenders, lowered = aarch64_lowering.machine(), {}, 0
    for name, dispatcher, signature in compiled_kernels():
        ir_text = str(dispatcher.overloads[signature].library._final_module)
        assert "define " in ir_text, f"{name}: no IR (loaded from a cache, not compiled here)"
        bad = forbidden(undefined_symbols(aarch64_lowering.lower(ir_text, target)))
        lowered += 1
        if bad:
            offenders[name] = sorted(bad)
    assert lowered >= 20, f"only {lowered} kernels were lowered"
    assert not offenders, f"lowered for aarch64, kernels call {offenders}"


def test_the_aarch64_lowering_sees_library_calls_and_keeps_numbas_runtime():
    """What the aarch64 check rests on: a vector ldexp (no NEON instruction) lowers to
    calls of libm's ``ldexp``, read from the aarch64 object, and a numba
    function compiled here (its runtime's x86-optimised atomic put back as the
    generic one) lowers with only the symbols every numba function needs."""
    import aarch64_lowering
    import llvmlite.binding as llvm

    target = aarch64_lowering.machine()
    probe = llvm.parse_assembly(_target.LDEXP_PROBE)
    probe.triple = aarch64_lowering.TRIPLE
    assert "ldexp" in forbidden(undefined_symbols(target.emit_object(probe)))
    _with_an_environment(np.ones(3))
    library = _with_an_environment.overloads[_with_an_environment.signatures[0]].library
    symbols = undefined_symbols(aarch64_lowering.lower(str(library._final_module), target))
    assert not forbidden(symbols), sorted(forbidden(symbols))
    assert {s for s in symbols if s.startswith("NRT_")}, sorted(symbols)


# An object file of each format (ELF, Mach-O, COFF).
TRIPLES = ["x86_64-unknown-linux-gnu", "x86_64-apple-macosx10.15", "x86_64-pc-windows-msvc"]


@pytest.mark.parametrize("triple", TRIPLES)
def test_the_symbol_readers_find_what_aborted_the_process(triple):
    """The object of a bfloat16 conversion (and of a vector ldexp) compiled for the
    SSE2 baseline calls ``__truncsfbf2`` (the abort of issue 12) and libm's
    ``ldexp``, in each object format; so does the assembly reader
    (`xent._fused._target`'s probes use it) on ELF's."""
    import llvmlite.binding as llvm

    machine = _machine(triple)
    for probe, needed in ((_target.BFLOAT16_PROBE, "__truncsfbf2"), (_target.LDEXP_PROBE, "ldexp")):
        module = llvm.parse_assembly(probe)
        module.triple = triple
        assert needed in forbidden(undefined_symbols(machine.emit_object(module)))
        if triple.endswith("linux-gnu"):
            assert needed in forbidden(_target.external_symbols(machine.emit_assembly(module)))


@numba.njit(cache=False)
def _with_an_environment(x):
    """A small numba function: its object has numba's environment global (a common
    symbol on Mach-O) and calls the runtime, as every kernel's does."""
    return (x * x).sum()   # (np.exp would call libm's exp: forbidden)


@pytest.mark.parametrize("triple", TRIPLES)
def test_a_numba_function_needs_only_allowed_symbols_in_each_format(triple):
    """numba's own code, compiled for each object format, needs nothing the check
    forbids (Mach-O's common environment globals are not undefined symbols),
    and the same runtime entry points as on ELF."""
    import llvmlite.binding as llvm

    _with_an_environment(np.ones(3))
    library = _with_an_environment.overloads[_with_an_environment.signatures[0]].library
    module = llvm.parse_assembly(str(library._final_module))
    module.triple = triple
    symbols = undefined_symbols(_machine(triple).emit_object(module))
    assert not forbidden(symbols), sorted(forbidden(symbols))
    assert {s for s in symbols if s.startswith(("NRT_", "Py"))}, sorted(symbols)


def test_the_object_reader_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="not an object file"):
        undefined_symbols(b"#!/bin/sh\n")


@numba.njit(cache=False, _dbg_optnone=True)
def _never_inlined(x):
    """A helper LLVM may not inline (optnone)."""
    return x * 2.0


@numba.njit(cache=False)
def _calls_a_helper(x):
    return _never_inlined(x) + 1.0


@numba.njit(cache=False)
def _small(x):
    """A helper LLVM inlines."""
    return x * 3.0


@numba.njit(cache=False)
def _inlines_a_helper(x):
    return _small(x) + 1.0


@pytest.mark.parametrize("triple", TRIPLES)
def test_the_helper_check_finds_a_helper_left_called(triple):
    """In each object format, `helpers_left_called` names a helper left called and
    nothing for a helper LLVM inlined."""
    import llvmlite.binding as llvm

    found = {}
    for function in (_calls_a_helper, _inlines_a_helper):
        function(1.5)
        compiled = function.overloads[function.signatures[0]]
        module = llvm.parse_assembly(str(compiled.library._final_module))
        module.triple = triple
        found[function.__name__] = helpers_left_called(
            _machine(triple).emit_object(module), compiled.fndesc.mangled_name)
    helper = _never_inlined.overloads[_never_inlined.signatures[0]].fndesc.mangled_name
    assert found["_calls_a_helper"] == {helper}
    assert found["_inlines_a_helper"] == set()
