"""The kernels' compiler (`xent._fused._pipeline`) builds a kernel's untyped IR once
for all its signatures, and what it builds from the kept IR is what numba's own
pipeline builds from the bytecode.

The oracle is numba's default pipeline, compiling the same function for the same
signature in a dispatcher of its own: the machine code must be the same but
for symbol names, and the results the same bits. Small functions pin what
the untyped stage reads of the argument types (an array's ``ndim``, a None).
"""
import re

import numpy as np
from numba import float64, literal_unroll, njit, objmode

from xent._fused import _narrow, _pipeline
from xent._fused._options import FAST, INLINE, KERNEL

# The kernel options, less numba's disk cache: each dispatcher here compiles.
COMPILED = {k: v for k, v in KERNEL.items() if k != "cache"}
DEFAULT = {k: v for k, v in COMPILED.items() if k != "pipeline_class"}


def started_from_kept_ir(dispatcher, signature):
    """Whether `signature`'s compile started from a kept untyped IR (read from
    numba's record of the passes it ran)."""
    times = dispatcher.overloads[signature].metadata["pipeline_times"]
    return any("xent_start_from_kept" in name for passes in times.values() for name in passes)


def without_unique_names(asm):
    """Assembly with the names that carry a compile's unique id blanked: mangled
    symbols, numba's constant buffers (and, in numba 0.62, its pickled constants
    and a Python object's address in their text), and the length of the error
    message that names a symbol (its id may have one digit more)."""
    asm = re.sub(r"\.const\.picklebuf\.\d+", "PICKLEBUF", re.sub(r"_ZN\w+", "SYMBOL", asm))
    asm = re.sub(r"\.const\.pickledata\.\d+", "PICKLEDATA", asm)
    asm = re.sub(r" at 0x[0-9a-f]+>", " at ADDRESS>", asm)
    return re.sub(r'(\.size\s+"\.const\.missing Environment: SYMBOL", )\d+', r"\1N", asm)


def machine_code(dispatcher, signature):
    """The flags and assembly (unique names blanked) of `dispatcher`'s code for
    `signature`. Call once per dispatcher: numba's ``inspect_asm`` runs LLVM's code
    generation on the module in place, so a second call shows other code."""
    return (dispatcher.overloads[signature].fndesc.abi_tags,
            without_unique_names(dispatcher.inspect_asm(signature)))


def narrow_loss_args(dtype, rows=20, classes=10):
    """Arguments of `_narrow.sparse_narrow_loss_rows`: ``[rows, classes]`` logits
    (float32, or float16 as its raw bits) and labels; loss and lse buffers."""
    x = np.random.default_rng(7).standard_normal((rows, classes)).astype(dtype)
    labels = np.arange(rows) % classes
    bits = x.view(np.int16) if dtype == np.float16 else x
    return bits, labels, np.empty(rows, np.float32), np.empty(rows, np.float32), 0, rows


def test_a_later_signature_compiles_from_the_kept_ir_to_numbas_own_machine_code(monkeypatch):
    """`sparse_narrow_loss_rows` (its lane helpers inlined) compiled for float16 bits,
    then float32: the float32 compile starts from the kept IR, and gives the
    assembly, losses and lses that numba's default pipeline gives for float32.
    (Nothing kept from this process's own compiles of the kernel.)"""
    monkeypatch.setattr(_pipeline, "_UNTYPED", {})
    kept = njit(**COMPILED)(_narrow.sparse_narrow_loss_rows.py_func)
    default = njit(**DEFAULT)(_narrow.sparse_narrow_loss_rows.py_func)
    first, later = narrow_loss_args(np.float16), narrow_loss_args(np.float32)
    kept(*first)
    kept(*later)
    oracle = narrow_loss_args(np.float32)
    default(*oracle)
    first_sig, later_sig = kept.signatures
    assert not started_from_kept_ir(kept, first_sig)
    assert started_from_kept_ir(kept, later_sig)
    assert default.signatures == [later_sig]
    # the same flags (numba's mangled names carry them), the same machine code
    assert machine_code(kept, later_sig) == machine_code(default, later_sig)
    for got, want in zip(later[2:4], oracle[2:4]):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@njit(**INLINE)
def _total(a):
    """Sum of all of `a` (an inlined helper; its ``a.ndim`` is typed, not rewritten)."""
    if a.ndim == 1:
        return a.sum()
    return a.sum() * 1.0


@njit(fastmath=FAST, error_model="numpy", pipeline_class=_pipeline.KernelCompiler)
def total_or_first(a, scale):
    """``a``'s total (times `scale`, if it is not None); 1-D arrays give the first entry.
    Its own ``a.ndim`` the untyped stage rewrites as a constant, and ``scale is
    None`` it prunes."""
    value = a[0] * 1.0 if a.ndim == 1 else _total(a)
    if scale is None:
        return value
    return value * scale


def test_the_kept_ir_is_keyed_by_each_arrays_ndim_and_by_a_none():
    """The untyped stage rewrites ``a.ndim`` and prunes ``scale is None`` by the
    argument types: each ndim and each None-ness gets its own kept IR, and
    every dtype after the first of each starts from it, with the right results."""
    two = np.arange(6.0).reshape(2, 3)
    cases = [(two, None, 15.0), (two.astype(np.float32), None, 15.0), (two, 2.0, 30.0),
             (two.astype(np.int64), 2.0, 30.0), (np.arange(1.0, 4.0), None, 1.0),
             (np.arange(1, 4, dtype=np.int32), 3.0, 3.0)]
    for a, scale, want in cases:
        assert total_or_first(a, scale) == want
    kept = [started_from_kept_ir(total_or_first, s) for s in total_or_first.signatures]
    assert kept == [False, True, False, True, False, False]


def test_a_function_with_an_object_mode_block_lifted_out_is_not_kept():
    """A kept IR must be whole: where the untyped stage lifted a ``with objmode``
    block out of the function (no kernel has one), nothing is kept, and each
    signature compiles from its bytecode, with the right results."""
    @njit(fastmath=FAST, pipeline_class=_pipeline.KernelCompiler)
    def doubled_total(a):
        with objmode(total="float64"):
            total = float(np.sum(a))
        return 2.0 * total

    assert doubled_total(np.arange(4.0)) == 12.0
    assert doubled_total(np.arange(4, dtype=np.int32)) == 12.0
    assert [started_from_kept_ir(doubled_total, s) for s in doubled_total.signatures] == \
        [False, False]


def _plain_total(a):
    """The total of 1-D `a`, summed in a loop."""
    total = 0
    for v in a:
        total += v
    return total


def test_a_function_with_local_types_or_a_literal_unroll_is_not_kept():
    """Nothing is kept where the untyped stage reads more than the key: ``locals=``
    types (SSA renames copy them) and ``literal_unroll`` (typed as it unrolls).
    Each signature compiles from its bytecode, with the right results."""
    total_of = njit(fastmath=FAST, locals={"total": float64},
                    pipeline_class=_pipeline.KernelCompiler)(_plain_total)

    @njit(fastmath=FAST, pipeline_class=_pipeline.KernelCompiler)
    def sum_of_each(a, b):
        total = 0.0
        for part in literal_unroll((a, b)):
            total += part.sum()
        return total

    assert total_of(np.arange(4.0)) == 6.0 and total_of(np.arange(4, dtype=np.int32)) == 6.0
    assert sum_of_each(np.ones(2), np.ones(3)) == 5.0
    assert sum_of_each(np.ones(2, np.float32), np.ones(3, np.float32)) == 5.0
    for function in (total_of, sum_of_each):
        assert [started_from_kept_ir(function, s) for s in function.signatures] == [False, False]


def test_a_dispatcher_with_local_types_never_starts_from_another_ones_kept_ir():
    """The kept IR is keyed by function, not by dispatcher: a second dispatcher of
    the same function with ``locals=`` types compiles from its bytecode (numba
    gives each SSA rename the local's type), though the first kept its IR."""
    plain = njit(fastmath=FAST, pipeline_class=_pipeline.KernelCompiler)(_plain_total)
    typed = njit(fastmath=FAST, locals={"total": float64},
                 pipeline_class=_pipeline.KernelCompiler)(_plain_total)
    assert plain(np.arange(4.0)) == 6.0 and plain(np.arange(5.0)) == 10.0
    assert typed(np.arange(4.0)) == 6.0
    assert [started_from_kept_ir(plain, s) for s in plain.signatures] == [False]
    assert [started_from_kept_ir(typed, s) for s in typed.signatures] == [False]
    assert plain(np.arange(4, dtype=np.int32)) == 6
    assert started_from_kept_ir(plain, plain.signatures[-1])


def test_a_numba_without_the_literal_propagation_pass_keeps_nothing(monkeypatch):
    """Where numba's untyped pipeline has no pass to keep the IR before, every
    signature compiles from its bytecode, through all of numba's untyped passes,
    and is right."""
    monkeypatch.setattr(_pipeline, "_LITERAL_PROPAGATION", None)
    monkeypatch.setattr(_pipeline, "_UNTYPED", {})
    total = njit(fastmath=FAST, pipeline_class=_pipeline.KernelCompiler)(_plain_total)
    assert total(np.arange(4.0)) == 6.0 and total(np.arange(4, dtype=np.int32)) == 6
    assert [started_from_kept_ir(total, s) for s in total.signatures] == [False, False]
    assert _pipeline._UNTYPED == {}
