"""The kernels' helpers are inlined by `xent._fused._inliner` (each helper's IR built
once) into the IR numba's own inliner builds.

The oracle is numba's default pipeline compiling the same function for the same
signature in a dispatcher of its own: the machine code must be the same but for
symbol names, and the results the same bits. Small helpers, nested and called
from several sites, pin the renaming and the splicing; one kernel pins it at
full size.
"""
import functools
import re

import numba
import numpy as np
import pytest
from numba import njit
from numba.core import errors, inline_closurecall, ir_utils
from numba.core.untyped_passes import InlineInlinables

from xent._fused import _inliner, _narrow, _pipeline
from xent._fused._options import INLINE

from test_pipeline import COMPILED, DEFAULT, machine_code, narrow_loss_args


@njit(**INLINE)
def _bent(a, b):
    """``a² - b`` where ``a² > b``, else ``a² + b`` (two returns, a branch)."""
    square = a * a
    if square > b:
        return square - b
    return square + b


@njit(**INLINE)
def _bent_total(x, lo, hi):
    """Sum over ``x[lo:hi]`` of ``_bent(v, 1) + _bent(v, 2)`` (a loop, one helper at
    two sites)."""
    total = 0.0
    for i in range(lo, hi):
        total += _bent(x[i], 1.0) + _bent(x[i], 2.0)
    return total


def bent_difference(x, half):
    """``_bent_total`` of the first `half` of `x` less that of the rest, plus
    ``_bent(x[0], 3)``: helpers nested two deep, at five call sites in all."""
    n = x.shape[0]
    return _bent_total(x, 0, half) - _bent_total(x, half, n) + _bent(x[0], 3.0)


def _kernel_and_oracle(function):
    """`function` compiled by the kernels' compiler and by numba's default pipeline."""
    return njit(**COMPILED)(function), njit(**DEFAULT)(function)


def _same_machine_code(kernel, oracle, signature):
    """Whether the two dispatchers' code for `signature` is the same (`machine_code`)."""
    return machine_code(kernel, signature) == machine_code(oracle, signature)


def test_the_installed_numba_is_the_one_the_inliner_mirrors():
    """numba 0.62 to 0.68 (0.67 is the oldest xent asks for) have the inliner
    `_inliner` mirrors (its source read in each); a later numba may not, and its
    kernels then inline by numba's own pass
    (`test_a_numba_whose_inliner_reads_otherwise_inlines_by_its_own_pass`)."""
    version = tuple(int(part) for part in numba.__version__.split(".")[:2])
    if (0, 62) <= version <= (0, 68):
        assert _inliner.MIRRORS_NUMBA, f"numba {numba.__version__}"


def test_nested_helpers_inline_to_numbas_own_machine_code_each_built_once(monkeypatch):
    """Five call sites of two helpers, nested: the same machine code and results as
    numba's own inlining, and each helper's IR built once (numba builds it at
    every call site, and again inside each build of its caller)."""
    monkeypatch.setattr(_inliner, "_HELPER_IR", {})
    monkeypatch.setattr(_pipeline, "_UNTYPED", {})
    builds = []
    numbas = inline_closurecall.InlineWorker.run_untyped_passes

    def counted(worker, func, enable_ssa=False):
        builds.append(func)
        return numbas(worker, func, enable_ssa)

    monkeypatch.setattr(inline_closurecall.InlineWorker, "run_untyped_passes", counted)
    kernel, oracle = _kernel_and_oracle(bent_difference)
    x = np.random.default_rng(3).standard_normal(9)
    got = kernel(x, 4)
    ours = list(builds)
    want = oracle(x, 4)
    assert sorted(f.__name__ for f in ours) == ["_bent", "_bent_total"]
    # numba: _bent_total twice, each building _bent for its two sites; _bent once more
    assert len(builds) - len(ours) == 7
    assert np.float64(got).view(np.uint64) == np.float64(want).view(np.uint64)
    assert _same_machine_code(kernel, oracle, kernel.signatures[0])
    # each call site's variables have names of their own, as numba's own inlining gives
    # them (``<helper>_v<id>_<name>``, the id new for each site): none is a second
    # version of another site's variable
    (kernel_ir, _), = [kept for key, kept in _pipeline._UNTYPED.items()
                       if key[0] is bent_difference]
    names = kernel_ir.blocks[min(kernel_ir.blocks)].scope.localvars._con
    sites = {re.match(r"_bent_total_v(\d+)_", name).group(1)
             for name in names if name.startswith("_bent_total_v")}
    assert len(sites) == 2


def test_a_kernel_inlines_to_numbas_own_machine_code_from_built_or_kept_helpers(monkeypatch):
    """`sparse_narrow_loss_rows` (its lane helpers inlined): compiled with each helper
    built during its compile, and again in a second dispatcher from the kept
    helpers, the same machine code, losses and lses as numba's own pipeline."""
    monkeypatch.setattr(_inliner, "_HELPER_IR", {})
    monkeypatch.setattr(_pipeline, "_UNTYPED", {})
    function = _narrow.sparse_narrow_loss_rows.py_func
    oracle = njit(**DEFAULT)(function)
    want = narrow_loss_args(np.float32)
    oracle(*want)
    numbas_code = machine_code(oracle, oracle.signatures[0])
    built = []
    for _ in range(2):
        _pipeline._UNTYPED.clear()   # (the kernel's own IR built again: its helpers inlined)
        kernel = njit(**COMPILED)(function)
        got = narrow_loss_args(np.float32)
        kernel(*got)
        built.append(len(_inliner._HELPER_IR))
        assert machine_code(kernel, oracle.signatures[0]) == numbas_code
        for ours, numbas in zip(got[2:4], want[2:4]):
            np.testing.assert_array_equal(ours.view(np.uint32), numbas.view(np.uint32))
    assert built[0] >= 2 and built[1] == built[0]


def _passes_of(function):
    """The untyped pass classes the kernels' compiler runs for `function`'s first
    float64 signature."""
    kernel = njit(**COMPILED)(function)
    kernel(np.arange(6.0), 3)
    times = kernel.overloads[kernel.signatures[0]].metadata["pipeline_times"]
    return {name.split("_", 1)[1] for passes in times.values() for name in passes}


def test_a_numba_whose_inliner_reads_otherwise_inlines_by_its_own_pass(monkeypatch):
    """Where `MIRRORS_NUMBA` is False (another numba's source, a function gone, no
    source shipped), the kernels inline by numba's ``InlineInlinables``, with the
    right results; where True, by `HelperInlining`."""
    monkeypatch.setattr(_pipeline, "_UNTYPED", {})
    assert "xent_inline_helpers" in _passes_of(bent_difference)
    monkeypatch.setattr(_inliner, "MIRRORS_NUMBA", False)
    monkeypatch.setattr(_pipeline, "_UNTYPED", {})
    passes = _passes_of(bent_difference)
    assert InlineInlinables._name in passes and "xent_inline_helpers" not in passes
    x = np.random.default_rng(4).standard_normal(6)
    kernel, oracle = _kernel_and_oracle(bent_difference)
    assert kernel(x, 3) == oracle(x, 3)


def test_the_mirror_check_fails_on_another_source_a_missing_function_or_no_source(
        monkeypatch):
    """`_mirrors_numba` is False where one mirrored method's source differs, where a
    numba function the inlining calls is gone, where a method is wrapped (its
    source is read from the function it wraps), and where no source can be read."""
    assert _inliner._mirrors_numba()
    with monkeypatch.context() as m:
        m.setitem(_inliner._MIRRORED, "InlineWorker.inline_ir", "0000000000")
        assert not _inliner._mirrors_numba()
    with monkeypatch.context() as m:
        m.delattr(inline_closurecall, "_replace_returns")
        assert not _inliner._mirrors_numba()
    with monkeypatch.context() as m:
        m.delattr(ir_utils, "find_topo_order")
        assert not _inliner._mirrors_numba()
    with monkeypatch.context() as m:   # a patch that wraps numba's own method
        numbas = inline_closurecall.InlineWorker.run_untyped_passes
        m.setattr(inline_closurecall.InlineWorker, "run_untyped_passes",
                  functools.wraps(numbas)(lambda *args, **kwargs: numbas(*args, **kwargs)))
        assert not _inliner._mirrors_numba()
    with monkeypatch.context() as m:
        def no_source(_):
            raise OSError("could not get source code")
        m.setattr(_inliner.inspect, "getsource", no_source)
        assert not _inliner._mirrors_numba()


def test_a_kernel_with_other_options_builds_its_helpers_for_its_own_flags(monkeypatch):
    """A helper's IR is kept by the flags it was built with: a kernel without
    fast-math and with Python's error model builds its own (numba gives its
    compile other flags), and gets the code numba's own pipeline gives it; a
    second kernel with the kernels' options builds none."""
    monkeypatch.setattr(_inliner, "_HELPER_IR", {})
    monkeypatch.setattr(_pipeline, "_UNTYPED", {})
    x = np.random.default_rng(5).standard_normal(7)
    assert njit(**COMPILED)(bent_difference)(x, 2) == njit(**DEFAULT)(bent_difference)(x, 2)
    assert len(_inliner._HELPER_IR) == 2
    assert njit(**COMPILED)(bent_difference)(x, 3) == njit(**DEFAULT)(bent_difference)(x, 3)
    assert len(_inliner._HELPER_IR) == 2
    kernel = njit(error_model="python", pipeline_class=_pipeline.KernelCompiler)(bent_difference)
    oracle = njit(error_model="python")(bent_difference)
    assert kernel(x, 2) == oracle(x, 2)
    assert len(_inliner._HELPER_IR) == 4
    assert _same_machine_code(kernel, oracle, kernel.signatures[0])


@njit(**INLINE)
def _counted_to(n):
    """0, 1, ..., n - 1 (a generator: numba inlines none)."""
    for i in range(n):
        yield i


def total_counted_to(n):
    """The sum of `_counted_to(n)`."""
    total = 0
    for value in _counted_to(n):
        total += value
    return total


def test_a_helper_numba_cannot_inline_fails_as_numbas_own_inliner_fails():
    """A generator helper: numba's inliner refuses it (its validator), and so does
    the kernels' compiler, with numba's error."""
    for options in (COMPILED, DEFAULT):
        with pytest.raises(errors.UnsupportedError, match="yield in a closure"):
            njit(**options)(total_counted_to)(4)


def _scaled_kernel(scale):
    """A kernel calling a closure helper that multiplies by `scale`."""
    @njit(**INLINE)
    def scaled(x):
        return x * scale

    def twice_scaled(x):
        return scaled(x) + scaled(x)

    return njit(**COMPILED)(twice_scaled), scaled.py_func


def test_a_closure_helper_is_built_at_each_call_site(monkeypatch):
    """A closure's cells may change, so its IR is not kept; each kernel reads its own."""
    monkeypatch.setattr(_inliner, "_HELPER_IR", {})
    (two, helper_two), (three, helper_three) = _scaled_kernel(2.0), _scaled_kernel(3.0)
    assert two(1.5) == 6.0 and three(1.5) == 9.0
    kept = {key[0] for key in _inliner._HELPER_IR}
    assert helper_two not in kept and helper_three not in kept
