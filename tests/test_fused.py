"""The fused numba kernels (`xent._fused`) against the NumPy reference (`xent._kernels`).

Both implement the same contract; the reference defines the numbers. Each test
runs the two on the same inputs: every dtype, odd shapes (one class, two, a
class count that is no multiple of the vector width, an empty batch), strided
and Fortran-ordered arrays, in-place and separate gradient buffers, rows with
infinities and NaN, and any thread count. Identity tests (thread counts,
in-place against a separate buffer) compare bit for bit.

The kernels are compiled for the CPU numba targets, and take other steps on
other CPUs (`xent._fused._target`). The tests marked ``every_target`` are run,
with tests/test_kernel_symbols.py after them, by tests/test_targets.py in
subprocesses that compile for the host, for the SSE2 baseline and, unless
the host is that level, for AVX2 (``NUMBA_CPU_NAME``); where the host's run
is among the selected tests, the suite's own process leaves them to it
(conftest.py). They use int64 labels only, so that each target compiles
each kernel once.
"""
import itertools
import os
import re
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import xent
from xent import _core, _kernels

try:
    from xent import _fused
except ImportError as exc:   # pragma: no cover - depends on the machine
    if os.environ.get("CI", "").lower() == "true":
        raise ImportError(f"numba is a dependency and CI must test the fused kernels: {exc}") from exc
    pytest.skip(f"numba is not installed ({exc}); the fused path is off", allow_module_level=True)
from xent._fused import _fetch, _formats, _launch, _math, _narrow, _rows, _scale  # noqa: E402
from xent._fused._stores import StoreChoice  # noqa: E402
from oracle import dense_scale, infinite_target_rows, label_scale  # noqa: E402

every_target = pytest.mark.every_target

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
FLOAT_IDS = [d.name for d in FLOATS]
SHAPES = [(5, 1), (6, 2), (7, 3), (4, 17), (3, 33), (9, 1000), (2, 1031), (0, 7), (1, 4100)]
SHAPE_IDS = [f"{n}x{c}" for n, c in SHAPES]


def logits_of(rng, shape, dtype, spread=4.0):
    """Random logits, exactly representable in `dtype`."""
    return (rng.standard_normal(shape) * spread).astype(dtype)


def accumulate(a):
    """`a` as float64, for comparisons."""
    return np.asarray(a).astype(np.float64)


# The fused kernels' exp for bfloat16 logits with integer labels has a relative
# error of 1e-4 (about a fortieth of a bfloat16 ulp), so their float32 losses
# may differ from the reference's by about that, in units of the row's scale
# (float16 logits take float32's exp).
HALF_EXP_ERROR = 1.5e-4


def is_half(dtype):
    return dtype is not None and np.dtype(dtype).name in ("float16", "bfloat16")


def assert_matches(got, want, dtype, scale=1.0, logits_dtype=None, terms=64):
    """`got` (fused) within rounding of `want` (reference), NaN where it is NaN.

    Accumulator results (float32/float64) may differ by a few ulps of the row's
    scale (exp and summation order differ), and by `HALF_EXP_ERROR` of it when
    the logits (`logits_dtype`) are bfloat16; half-precision outputs by
    one ulp of the output format plus that. A row's sum of `terms` exps
    carries a rounding error that grows as sqrt(terms) ulps: past 64 terms
    the tolerance grows with it. (Row 8 of `long_edge_rows`, 6149 terms:
    TensorFlow's float64 gradient is 1.2e-14 from the exact one, as xent's.)
    """
    got, want = accumulate(got), accumulate(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN positions differ")
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    eps = 1e-15 if np.dtype(dtype) == np.float64 else 1.2e-7
    with np.errstate(over="ignore", invalid="ignore"):
        tol = 8 * eps * max(1.0, np.sqrt(terms / 64)) * (np.abs(want) + np.asarray(scale, np.float64))
        if logits_dtype is not None and np.dtype(logits_dtype).name == "bfloat16" \
                and not is_half(dtype):
            tol = tol + HALF_EXP_ERROR * np.asarray(scale, np.float64)
        if np.dtype(dtype).name in ("float16", "bfloat16"):
            tol = tol + np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
    with np.errstate(invalid="ignore"):
        err = np.abs(got - want)
    bad = finite & ~(err <= tol)
    assert not bad.any(), f"{bad.sum()} entries off: got {got[bad][:4]}, want {want[bad][:4]}"


def sparse_both(logits, labels, grad):
    """(fused, reference) results of `sparse_rows`, each with its own gradient buffer."""
    results = []
    for kernels in (_fused, _kernels):
        out = np.empty_like(logits) if grad else None
        loss, lse = kernels.sparse_rows(logits.copy(), labels, out)
        results.append((loss, lse, out))
    return results


def row_scale(logits):
    """1 + max |finite logit| of each row, as float64."""
    mag = np.abs(accumulate(logits))
    return 1.0 + np.max(np.where(np.isfinite(mag), mag, 0.0), axis=-1, initial=0.0)


# -- every dtype, path and width against a float64 truth -----------------------------------

# the narrow path; narrow with 512-bit loops (`_narrow.narrow_max`), else one chunk;
# one chunk; two chunks
GRID_WIDTHS = (10, 100, 1000, 3000)


def float64_truth(logits, targets):
    """(loss, lse, grad) in float64 of rows of `logits` against integer labels
    (1-D `targets`) or target rows; extended precision for float64 logits."""
    wide = np.longdouble if np.dtype(logits.dtype) == np.float64 else np.float64
    x = np.asarray(logits).astype(wide)
    y = targets if targets.ndim == 2 else np.eye(x.shape[1], dtype=wide)[targets]
    y = np.asarray(y).astype(wide)
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    lse = m + np.log(s)
    loss = (y * (lse - x)).sum(axis=1)
    return loss.astype(np.float64), lse[:, 0].astype(np.float64), (e / s - y).astype(np.float64)


def grid_inputs(rng, dtype, kind, width, rows=37):
    """Logits ``[rows, width]`` of `dtype` and int64 labels (sparse) or target rows
    in the accumulator dtype (dense): what the grid and thread tests run."""
    logits = logits_of(rng, (rows, width), dtype)
    if kind == "sparse":
        return logits, rng.integers(0, width, size=rows)
    acc = np.float64 if dtype == np.float64 else np.float32
    targets = rng.random((rows, width))
    return logits, (targets / targets.sum(axis=1, keepdims=True)).astype(acc)


def into_a_buffer(run, logits, targets, *weights):
    """(loss, lse, grad) of `run` with a separate gradient buffer, whose rows
    start one element off the buffer's alignment: with plain stores and
    streamed (`_launch.STREAM`; where `_launch.store_kind` applies), which must
    give the same bits."""
    results = []
    for stream in (False, True):
        before, _launch.STREAM = _launch.STREAM, stream
        try:
            into = np.empty(logits.size + 1, logits.dtype)[1:].reshape(logits.shape)
            results.append(run(logits, targets, into, *weights) + (into,))
        finally:
            _launch.STREAM = before
    for a, b in zip(*results):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
    return results[0]


def run_three_ways(kind, logits, targets):
    """The kernel's (loss, lse, grad) on the loss-only, into-a-buffer (`into_a_buffer`:
    plain and streamed) and in-place paths."""
    run = _fused.sparse_rows if kind == "sparse" else _fused.dense_rows
    loss_only, lse_only = run(logits, targets)
    loss, lse, into = into_a_buffer(run, logits, targets)
    work = logits.copy()
    loss_in, lse_in = run(work, targets, work)
    return (loss_only, lse_only, None), (loss, lse, into), (loss_in, lse_in, work)


@every_target
@pytest.mark.parametrize("width", GRID_WIDTHS)
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_every_dtype_path_and_width_matches_float64_truth(rng, dtype, kind, width):
    """Loss only, loss and gradient into a buffer, and over the logits, on the
    narrow path (10 classes; float64 has none) and the chunk path (one chunk,
    two): each within the dtype's tolerance of the float64 truth, and the
    three paths' losses and the two gradients equal bit for bit."""
    logits, targets = grid_inputs(rng, dtype, kind, width)
    truth_loss, truth_lse, truth_grad = float64_truth(logits, targets)
    (loss_only, lse_only, _), (loss, lse, into), (loss_in, lse_in, work) = \
        run_three_ways(kind, logits, targets)
    scale = row_scale(logits) * (2.0 if kind == "dense" else 1.0)
    assert_matches(loss, truth_loss, loss.dtype, scale, logits_dtype=logits.dtype, terms=width)
    assert_matches(lse, truth_lse, lse.dtype, row_scale(logits), logits_dtype=logits.dtype,
                   terms=width)
    assert_matches(into, truth_grad, dtype, terms=width)
    for a, b in ((loss_only, loss), (lse_only, lse), (loss_in, loss), (lse_in, lse)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(work.view(np.uint8), into.view(np.uint8))


def _placed(memory, start, values):
    """`values` written into `memory` from element `start` on: a view of that place."""
    view = memory[start:start + values.size].reshape(values.shape)
    view[...] = values
    return view


@every_target
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype,width", [(np.float64, 5), (np.float64, 7), (np.float32, 17),
                                         (np.float32, 33), (BF16, 70)],
                         ids=lambda v: v if isinstance(v, int) else np.dtype(v).name)
def test_a_gradient_buffer_just_after_the_logits_or_targets_gives_the_same_bits(kind, dtype, width):
    """A gradient buffer starting a few vectors after the logits (or the dense targets),
    apart from them, sent LLVM's vectorised row loop to its scalar form (its run-time
    check is by the pointers' distance alone), which sums in another order: the
    same float64 call's loss one ulp apart from call to call (an independent
    review; here 17-50% of random rows on AVX-512, before). Placed up to 180
    bytes after or before, the bits of a buffer 4 KiB away; the inputs unchanged."""
    rng = np.random.default_rng(14)
    run = _fused.sparse_rows if kind == "sparse" else _fused.dense_rows
    away = 4096 // np.dtype(dtype).itemsize
    beside = ("logits", "targets") if kind == "dense" else ("logits",)
    for _ in range(24):
        logits = (rng.standard_normal((1, width)) * 2).astype(dtype)
        targets = (rng.dirichlet(np.ones(width), 1).astype(dtype) if kind == "dense"
                   else rng.integers(0, width, 1))
        memory = np.zeros(2 * width + away, dtype)
        far = memory[width + away:].reshape(logits.shape)
        want = run(_placed(memory, 0, logits), targets, far)
        for gap, order, near in itertools.product((0, 1, 2, 5, 11, 23), ("after", "before"), beside):
            memory = np.zeros(3 * width + gap + away, dtype)
            first, second = (0, width + gap) if order == "after" else (width + gap, 0)
            x, y = logits, targets   # (the one beside the gradient placed, the other away)
            if near == "logits":
                x = _placed(memory, first, logits)
            else:
                y = _placed(memory, first, targets)
                x = _placed(memory, 2 * width + gap + away, logits)
            out = memory[second:second + width].reshape(logits.shape)
            got = run(x, y, out)
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b, err_msg=f"{near} {order} {gap}")
            np.testing.assert_array_equal(out.view(np.uint8), far.view(np.uint8))
            np.testing.assert_array_equal(x.view(np.uint8), logits.view(np.uint8))


@every_target
@pytest.mark.parametrize("width", [2049, 32000])
def test_smoothed_and_uniform_dense_targets_keep_the_specs_float32_tolerance(rng, width):
    """Label-smoothed one-hot targets (0.1) and uniform ones (0.9 / C): each loss
    within the SPEC's float32 tolerance of the float64 truth (1e-6 relative
    plus 4 ulps of the row's largest logit), on every path. Their sums over a
    chunk were float32, one per vector lane: on `x86-64` 4.6e-6 off at 32000
    classes, 1.2e-6 on `haswell` (random soft targets, summing to 1 with no
    large entry, stayed within 2.5e-7)."""
    logits = rng.standard_normal((8, width)).astype(np.float32) * 2
    smoothed = np.full(logits.shape, 0.1 / width)
    smoothed[np.arange(8), rng.integers(0, width, 8)] += 0.9
    for targets in (smoothed.astype(np.float32), np.full(logits.shape, 0.9 / width, np.float32)):
        truth_loss = float64_truth(logits, targets)[0]
        tol = 1e-6 * np.abs(truth_loss) + 4 * np.spacing(np.abs(logits).max(axis=1))
        for loss, _, _ in run_three_ways("dense", logits, targets):
            error = np.abs(loss.astype(np.float64) - truth_loss)
            assert (error <= tol).all(), (error / np.abs(truth_loss)).max()


@every_target
@pytest.mark.parametrize("width", GRID_WIDTHS)
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_row_weights_scale_each_gradient_row_on_every_path(rng, dtype, kind, width):
    """Row weights (a mean's 1/N, zero, negative, and others) give each row of the
    float64 truth's gradient times its weight, within the dtype's tolerance,
    with the same bits into a buffer (plain and streamed) and over the
    logits, and the loss unweighted; weights of 1 give the unweighted bits.
    The NumPy reference kernels (`xent._kernels`) take the same weights."""
    logits, targets = grid_inputs(rng, dtype, kind, width)
    n = logits.shape[0]
    weights = rng.uniform(-2.0, 2.0, n)
    weights[:4] = [1.0 / n, 0.0, -0.5, 1.0]
    run = _fused.sparse_rows if kind == "sparse" else _fused.dense_rows
    reference = _kernels.sparse_rows if kind == "sparse" else _kernels.dense_rows
    _, truth_lse, truth_grad = float64_truth(logits, targets)
    want = truth_grad * weights[:, None]
    scale = np.abs(weights)[:, None]
    plain_loss, plain_lse, plain = into_a_buffer(run, logits, targets)
    loss, lse, into = into_a_buffer(run, logits, targets, weights)
    work = logits.copy()
    loss_in, lse_in = run(work, targets, work, weights)
    assert_matches(into, want, dtype, scale, terms=width)
    np.testing.assert_array_equal(work.view(np.uint8), into.view(np.uint8))
    for a in (loss, loss_in):
        np.testing.assert_array_equal(a, plain_loss)
    for a in (lse, lse_in):
        np.testing.assert_array_equal(a, plain_lse)
    ones = into_a_buffer(run, logits, targets, np.ones(n))[2]
    np.testing.assert_array_equal(ones.view(np.uint8), plain.view(np.uint8))
    ref = np.empty_like(logits)
    with np.errstate(all="ignore"):
        reference(logits, targets, ref, weights)
    assert_matches(ref, want, dtype, scale, terms=width)


# Threaded first, in a fresh process.
_THREADED_FIRST = """
import sys, numpy as np, xent
from xent._fused import _launch
rng = np.random.default_rng(0)
logits = (rng.standard_normal((53, 3000)) * 3).astype(np.float32)
labels = rng.integers(0, 3000, 53)
_launch.PARALLEL_MIN_BYTES = 0
def gradient(threads):
    xent.set_num_threads(threads)
    out = np.empty_like(logits)
    _launch.sparse_rows(logits, labels, out)
    return out
threaded = gradient(xent._threads.max_threads())
sys.exit(0 if np.array_equal(threaded, gradient(1)) else 1)
"""


def test_threaded_calls_give_one_thread_bits_when_loaded_from_the_disk_cache(tmp_path):
    """A process that loads the kernels from numba's disk cache and runs a
    threaded call first still gets the one-thread bits. (Until session 14 the
    threads ran numba ``parallel=True`` block kernels, whose library carried its
    own copy of the row code, 1-2 ulp apart; threads now run the row kernels
    themselves, `xent._fused._pool`.)"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    for how in ("compiled", "loaded from the cache"):
        run = subprocess.run([sys.executable, "-c", _THREADED_FIRST], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, (how, run.stderr[-2000:])


@every_target
@pytest.mark.parametrize("width", (10, 3000))
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16], ids=["float32", "bfloat16"])
def test_threaded_calls_equal_one_thread_on_every_path(rng, force_threads, dtype, kind, width):
    """Rows over threads (`xent._fused._pool`) give one thread's bits on
    every path; one thread matches the float64 truth (the grid test above)."""
    logits, targets = grid_inputs(rng, dtype, kind, width, rows=53)
    results = []
    for threads in sorted({1, xent._threads.max_threads()}):
        xent.set_num_threads(threads)
        results.append(run_three_ways(kind, logits, targets))
    for one, many in zip(results[0], results[-1]):
        for a, b in zip(one, many):
            if a is not None:
                np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
    truth_loss, _, truth_grad = float64_truth(logits, targets)
    scale = row_scale(logits) * (2.0 if kind == "dense" else 1.0)
    assert_matches(results[0][1][0], truth_loss, np.float32, scale, logits_dtype=logits.dtype,
                   terms=width)
    assert_matches(results[0][1][2], truth_grad, dtype, terms=width)


@every_target
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_prefetching_or_not_gives_the_same_bits(rng, force_threads, monkeypatch,
                                                              dtype, kind):
    """Whether pass A prefetches the logits ahead (`_launch.fetches_ahead`, chosen per
    CPU), and dense targets with them (`_launch.fetch_bits`, by size), changes
    no bit, on one thread and on several, on every path; every form runs here
    whatever this host's choice is."""
    logits, targets = grid_inputs(rng, dtype, kind, 5000, rows=53)
    results = []
    for fetch, targets_from in ((False, 0), (True, 0), (True, logits.nbytes + 1)):
        monkeypatch.setattr(_launch, "FETCH_AHEAD", fetch)
        monkeypatch.setattr(_launch, "FETCH_TARGETS_MIN_BYTES", targets_from)
        for threads in sorted({1, xent._threads.max_threads()}):
            xent.set_num_threads(threads)
            results.append(run_three_ways(kind, logits, targets))
    for other in results[1:]:
        for want, got in zip(results[0], other):
            for a, b in zip(want, got):
                if a is not None:
                    np.testing.assert_array_equal(np.asarray(a).view(np.uint8),
                                                  np.asarray(b).view(np.uint8))
    truth_loss, _, truth_grad = float64_truth(logits, targets)
    scale = row_scale(logits) * (2.0 if kind == "dense" else 1.0)
    assert_matches(results[0][1][0], truth_loss, results[0][1][0].dtype, scale,
                   logits_dtype=logits.dtype, terms=5000)
    assert_matches(results[0][1][2], truth_grad, dtype, terms=5000)


@pytest.mark.parametrize("host, loss, f32_inplace, f32_into, half_inplace, half_into", [
    ("znver4", False, False, False, True, True),
    ("znver3", False, False, False, False, False),
    ("znver2", False, False, False, False, False),
    ("znver5", False, False, False, True, True),
    ("icelake-server", True, True, True, True, True),
    ("haswell", True, True, True, True, True),
    ("emeraldrapids", True, True, True, True, True),
    ("apple-m1", True, True, True, True, True),
])
def test_fetch_ahead_choice_per_cpu_and_need(monkeypatch, host, loss, f32_inplace, f32_into,
                                            half_inplace, half_into):
    """The measured choice: every need prefetches but on AMD Zen hosts, where
    only half-precision gradients do, and not on Zen 1-3."""
    monkeypatch.setattr(_launch._target, "host_cpu_name", lambda: host)
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    assert _launch.fetches_ahead(f32, "loss") is loss
    assert _launch.fetches_ahead(BF16, "loss") is loss
    assert _launch.fetches_ahead(np.dtype(np.float16), "loss") is loss
    assert _launch.fetches_ahead(f64, "loss") is loss
    assert _launch.fetches_ahead(f32, "grad_inplace") is f32_inplace
    assert _launch.fetches_ahead(f64, "grad_inplace") is f32_inplace
    assert _launch.fetches_ahead(f32, "grad") is f32_into
    assert _launch.fetches_ahead(f64, "grad") is f32_into
    assert _launch.fetches_ahead(BF16, "grad_inplace") is half_inplace
    assert _launch.fetches_ahead(np.dtype(np.float16), "grad") is half_into


def test_each_need_passes_its_fetch_choice_to_the_chunk_kernels(rng, monkeypatch):
    """`_dispatch` asks `fetches_ahead` about the dtype each chunk kernel runs on
    (half logits with a float32 gradient run as float32) and its need, and hands
    the answer to that kernel; the narrow kernels are not asked. The bits cannot
    show this (a prefetch changes none), so the questions and calls are recorded
    (the answers alternate, so that each must reach its own call)."""
    calls, asked = [], []
    real_run = _launch._run

    def recording_run(rows, nbytes, args):
        calls.append((rows.__name__, args[-1]))
        return real_run(rows, nbytes, args)

    def recording_choice(dtype, need):
        asked.append((np.dtype(dtype).name, need))
        return len(asked) % 2 == 1

    monkeypatch.setattr(_launch, "_run", recording_run)
    monkeypatch.setattr(_launch, "fetches_ahead", recording_choice)
    labels = rng.integers(0, 3000, size=4)
    for dtype in (np.dtype(np.float32), BF16):
        logits = logits_of(rng, (4, 3000), dtype)
        work = logits.copy()
        _fused.sparse_rows(logits, labels)
        _fused.sparse_rows(logits, labels, np.empty_like(logits))
        _fused.sparse_rows(work, labels, work)
        _fused.dense_rows(logits, np.full((1, 3000), 1 / 3000, np.float32))
    _fused.sparse_rows(logits, labels, np.empty(logits.shape, np.float32))
    name = BF16.name
    assert asked == [("float32", "loss"), ("float32", "grad"), ("float32", "grad_inplace"),
                     ("float32", "loss"), (name, "loss"), (name, "grad"),
                     (name, "grad_inplace"), (name, "loss"), ("float32", "grad")]
    kernels = ["sparse_loss_rows", "sparse_grad_rows", "sparse_grad_rows_inplace",
               "dense_loss_rows"] * 2 + ["sparse_grad_rows"]
    assert calls == [(kernel, int(k % 2 == 0)) for k, kernel in enumerate(kernels)]
    calls.clear()
    narrow = logits_of(rng, (4, 10), np.dtype(np.float32))
    _fused.sparse_rows(narrow, labels % 10, np.empty_like(narrow))
    assert len(asked) == 9
    assert calls[0][0] == "sparse_narrow_grad_rows"
    assert isinstance(calls[0][1], np.ndarray)   # its last argument is lse, no choice


def test_dense_targets_are_prefetched_on_large_calls_only(rng, monkeypatch):
    """`_launch.fetch_bits`: the logits where `fetches_ahead` says so, and dense
    targets with them from `FETCH_TARGETS_MIN_BYTES` of logits on (the plain
    into-a-buffer kernel leaves its targets to the hardware); sparse labels,
    one target row for every row, and hosts that do not prefetch, never; each
    kernel gets the bits its call needs (recorded: the bits cannot show a
    prefetch)."""
    calls = []
    real_run = _launch._run

    def recording_run(rows, nbytes, args):
        calls.append((rows.__name__, args[-1]))
        return real_run(rows, nbytes, args)

    monkeypatch.setattr(_launch, "_run", recording_run)
    monkeypatch.setattr(_launch, "FETCH_AHEAD", True)
    logits = logits_of(rng, (4, 3000), np.dtype(np.float32))
    labels = rng.integers(0, 3000, size=4)
    targets = smoothed_targets(labels, 3000, np.float32)
    both = _fetch.FETCH_LOGITS | _fetch.FETCH_TARGETS
    for targets_from, dense_bits in ((logits.nbytes, both),
                                     (logits.nbytes + 1, _fetch.FETCH_LOGITS)):
        monkeypatch.setattr(_launch, "FETCH_TARGETS_MIN_BYTES", targets_from)
        calls.clear()
        work = logits.copy()
        _fused.dense_rows(logits, targets)
        _fused.dense_rows(work, targets, work)
        with monkeypatch.context() as streaming:
            streaming.setattr(_launch, "STREAM", True)
            _fused.dense_rows(logits, targets, np.empty_like(logits))
        _fused.sparse_rows(logits, labels)
        assert calls == [("dense_loss_rows", dense_bits), ("dense_grad_rows_inplace", dense_bits),
                         ("dense_grad_rows_streamed", dense_bits),
                         ("sparse_loss_rows", _fetch.FETCH_LOGITS)]
    calls.clear()
    monkeypatch.setattr(_launch, "FETCH_TARGETS_MIN_BYTES", 0)
    _fused.dense_rows(logits, targets[:1])
    _fused.dense_rows(logits, np.broadcast_to(targets[:1], targets.shape))
    monkeypatch.setattr(_launch, "FETCH_AHEAD", False)
    _fused.dense_rows(logits, targets)
    assert calls == [("dense_loss_rows", _fetch.FETCH_LOGITS)] * 2 + [("dense_loss_rows", 0)]


def test_an_explicit_fetch_choice_overrides_the_host_s(monkeypatch):
    monkeypatch.setattr(_launch._target, "host_cpu_name", lambda: "znver4")
    for fetch in (False, True):
        monkeypatch.setattr(_launch, "FETCH_AHEAD", fetch)
        for dtype in (np.dtype(np.float32), np.dtype(np.float64), BF16):
            for need in ("loss", "grad", "grad_inplace"):
                assert _launch.fetches_ahead(dtype, need) is fetch


# -- agreement with the reference ---------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64], ids=["int32", "int64"])
def test_sparse_matches_reference(rng, shape, dtype, label_dtype):
    logits = logits_of(rng, shape, dtype)
    labels = rng.integers(0, shape[1], size=shape[0]).astype(label_dtype)
    (loss, lse, grad), (ref_loss, ref_lse, ref_grad) = sparse_both(logits, labels, grad=True)
    scale = row_scale(logits)
    assert loss.dtype == ref_loss.dtype and grad.dtype == logits.dtype
    assert_matches(loss, ref_loss, loss.dtype, scale, logits_dtype=logits.dtype)
    assert_matches(lse, ref_lse, lse.dtype, scale, logits_dtype=logits.dtype)
    assert_matches(grad, ref_grad, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_loss_only_matches_loss_with_gradient(rng, shape, dtype):
    logits = logits_of(rng, shape, dtype)
    labels = rng.integers(0, shape[1], size=shape[0])
    loss, lse = _fused.sparse_rows(logits, labels)
    loss_g, lse_g = _fused.sparse_rows(logits, labels, np.empty_like(logits))
    np.testing.assert_array_equal(loss, loss_g)
    np.testing.assert_array_equal(lse, lse_g)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_matches_reference(rng, shape, dtype):
    logits = logits_of(rng, shape, dtype)
    labels = rng.random(shape).astype(np.float32 if dtype != np.float64 else np.float64)
    for grad in (False, True):
        out = np.empty_like(logits) if grad else None
        ref_out = np.empty_like(logits) if grad else None
        loss, lse = _fused.dense_rows(logits, labels, out)
        ref_loss, ref_lse = _kernels.dense_rows(logits, labels, ref_out)
        scale = row_scale(logits) * (1.0 + accumulate(labels).sum(axis=-1))
        assert_matches(loss, ref_loss, loss.dtype, scale, logits_dtype=logits.dtype)
        assert_matches(lse, ref_lse, lse.dtype, row_scale(logits), logits_dtype=logits.dtype)
        if grad:
            assert_matches(out, ref_out, dtype, 1.0)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_labels_in_the_logits_half_format_match_reference(rng, dtype):
    logits = logits_of(rng, (6, 19), dtype)
    labels = np.abs(logits_of(rng, (6, 19), dtype, 1.0))
    out, ref_out = np.empty_like(logits), np.empty_like(logits)
    loss, _ = _fused.dense_rows(logits, labels, out)
    ref_loss, _ = _kernels.dense_rows(logits, labels, ref_out)
    assert_matches(loss, ref_loss, loss.dtype, row_scale(logits) * 40, logits_dtype=logits.dtype)
    assert_matches(out, ref_out, dtype)


@pytest.mark.parametrize("labels_shape", [(1, 23), (8, 1), (1, 1)], ids=["row", "column", "scalar"])
def test_dense_broadcast_labels_match_reference(rng, labels_shape):
    logits = logits_of(rng, (8, 23), np.float32)
    labels = np.broadcast_to(rng.random(labels_shape).astype(np.float32), logits.shape)
    out, ref_out = np.empty_like(logits), np.empty_like(logits)
    loss, _ = _fused.dense_rows(logits, labels, out)
    ref_loss, _ = _kernels.dense_rows(logits, labels, ref_out)
    assert_matches(loss, ref_loss, np.float32, row_scale(logits) * 25, logits_dtype=logits.dtype)
    assert_matches(out, ref_out, np.float32)


@every_target
@pytest.mark.parametrize("c", [3, 100, 5000])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_infinite_and_nan_dense_targets_end_as_tensorflows_terms(dtype, c):
    """Dense targets of ±inf or NaN give TF's loss, whose terms y_j (log S -
    (x_j - M)) are ±inf or NaN there: +inf on the row's max, where xent's
    `lse·Σy - Σ y·(x - M)` met inf * 0 (NaN), -inf, NaN for both signs or
    beside a target 0 on a ``-inf`` logit or with S = 1; and softmax - y,
    on the narrow path (3, 100 classes; float64 takes one chunk) and over
    chunks (5000), loss only,
    into a buffer (plain and streamed) and in place."""
    x, y, truth_loss, truth_grad = infinite_target_rows(dtype, c)
    for loss, _, grad in run_three_ways("dense", x, y):
        assert_matches(loss, truth_loss, loss.dtype, row_scale(x) * 2, logits_dtype=x.dtype)
        if grad is not None:
            assert_matches(grad, truth_grad, dtype)


def test_dense_with_no_classes_is_zero_loss_and_minus_inf_lse():
    loss, lse = _fused.dense_rows(np.zeros((3, 0), np.float32), np.zeros((3, 0), np.float32))
    np.testing.assert_array_equal(loss, np.zeros(3, np.float32))
    np.testing.assert_array_equal(lse, np.full(3, -np.inf, np.float32))


# -- edge values: TensorFlow's NaN and finite results --------------------------------------

def edge_rows(dtype):
    """Rows with -inf off the label, all -inf, +inf, NaN (both signs), huge and tiny logits."""
    big = float(ml_dtypes.finfo(dtype).max) / 2
    tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    rows = [
        [0.5, -np.inf, 1.0, -np.inf], [-np.inf] * 4, [1.0, np.inf, 0.0, 2.0],
        [1.0, np.nan, 0.0, 2.0], [1.0, -np.nan, 0.0, 2.0], [big, -big, 0.0, big],
        [tiny, -tiny, 0.0, tiny], [3.0, 3.0, 3.0, 3.0], [-np.inf, 2.0, -np.inf, -np.inf],
    ]
    return np.array(rows, np.float64).astype(dtype), np.array([0, 1, 3, 0, 2, 1, 3, 2, 1])


@every_target
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_edge_values_match_reference(dtype):
    logits, labels = edge_rows(dtype)
    with np.errstate(all="ignore"):
        (loss, lse, grad), (ref_loss, ref_lse, ref_grad) = sparse_both(logits, labels, grad=True)
    assert_matches(loss, ref_loss, loss.dtype, label_scale(logits, labels), logits_dtype=logits.dtype)
    assert_matches(lse, ref_lse, lse.dtype, row_scale(logits), logits_dtype=logits.dtype)
    assert_matches(grad, ref_grad, dtype)


@every_target
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_edge_values_match_reference(dtype):
    logits, labels = edge_rows(dtype)
    targets = np.eye(4, dtype=np.float64)[labels]
    targets[0] = [0.5, 0.0, 0.5, 0.0]   # a zero target on a -inf logit: 0 * inf is NaN, as TF
    targets = targets.astype(np.float64 if dtype == np.float64 else np.float32)
    out, ref_out = np.empty_like(logits), np.empty_like(logits)
    with np.errstate(all="ignore"):
        loss, lse = _fused.dense_rows(logits, targets, out)
        ref_loss, ref_lse = _kernels.dense_rows(logits, targets, ref_out)
    assert_matches(loss, ref_loss, loss.dtype, dense_scale(logits, targets), logits_dtype=logits.dtype)
    assert_matches(out, ref_out, dtype)


@every_target
@pytest.mark.parametrize("c", [8, 40])
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16], ids=["float32", "bfloat16"])
def test_dense_products_past_float32_range_end_as_tensorflows_float32_terms(dtype, c):
    """Products y_j (x_j - M) past float32's range: TF's float32 terms are ±inf
    each, and NaN together (row 0: true loss +4.3e38; row 1: -6e59), as the
    NumPy kernels'; the narrow rows' fused multiply-adds kept one sign's
    overflow finite and gave -inf and +inf. Row 2, one overflow: +inf. Row 3
    (true loss +3e40): finite products whose sum overflows, not finite (the
    NumPy kernels' +inf on the narrow path, TF's NaN over chunks), where
    fast-math's regrouping of the rounded products' sum made it depend on
    the compile target."""
    top = float(np.finfo(np.float32).max if dtype == np.float32 else ml_dtypes.finfo(BF16).max)
    x = np.zeros((4, c), np.float64)
    y = np.zeros((4, c), np.float32)
    x[0, :4], y[0, :4] = [0.33, top, -top, 1.32], [0.684, 1.004, -0.618, 1.822]
    x[1, :3], y[1, :3] = [2.4e29, -1.7e30, 6.6e29], [1.1e30, -4.5e29, 4.3e29]
    x[2, :2], y[2, :2] = [top, -top], [0.0, 1.0]
    x[3, :8] = [11.25, 2.531e38, -0.8133, -9852, -0.8059, 5.038, 7.579, 7856]
    y[3, :8] = [57.96, -127.153, 1.235, -0.58, 0.635, -1.228, 58.32, 0.327]
    x = x.astype(dtype)
    ref_loss, _ = _kernels.dense_rows(x, y)
    np.testing.assert_array_equal(np.isnan(ref_loss), [True, True, False, False])
    assert ref_loss[2] == ref_loss[3] == np.inf
    for loss, _, _ in run_three_ways("dense", x, y):
        np.testing.assert_array_equal(loss[:3], ref_loss[:3])
        assert loss[3] == ref_loss[3] if c <= 16 else not np.isfinite(loss[3])


# -- rows of several chunks: the one-sweep path, its re-sweeps and its rescaling ----------

LONG = 3 * int(_fused.CHUNK) + 5


def long_edge_rows(dtype):
    """Rows of 3+ chunks that take every branch of pass A (see `xent._fused._chunks`).

    A record far above the running max in a later chunk (swept again), NaN and
    +inf found by the one-sweep loop, a first chunk of -inf, a chunk of -inf
    mid-row, masked entries, a chunk whose shift is so far below the row max
    that its rescaling factor is subnormal, a confident row whose max was
    taken against an earlier chunk's shift, logits so close to the format's
    max that shift * log2(e) overflows float32, and finite logits so far below
    the shift that the unfloored exp of the one-sweep loop is not finite.
    """
    rng = np.random.default_rng(7)
    c = int(_fused.CHUNK)
    big = float(ml_dtypes.finfo(dtype).max) / 4
    base = rng.standard_normal((13, LONG))
    base[1, 2 * c + 9] = 40.0
    base[2, 2 * c + 9] = np.nan
    base[3, c + 3] = np.inf
    base[4, :c] = -np.inf
    base[5, c:2 * c] = -np.inf
    base[6, rng.integers(0, LONG, 500)] = -np.inf
    base[7, :c], base[7, c:] = -big, big * np.tanh(base[7, c:])
    base[8, :c] = -96.0
    base[8, c:2 * c] = -80.0 - np.minimum(np.abs(base[8, c:2 * c]), 4.0)
    base[8, 2 * c:], base[8, 2 * c + 1] = -30.0, 0.0
    base[9, :] = -30.0
    base[9, 5], base[9, c + 17] = -10.0, 0.0
    base[10, :] = np.sort(base[10, :]) * 30   # a new record in every chunk
    top = float(ml_dtypes.finfo(dtype).max) * 0.9
    base[11, :] = top
    base[11, 2 * c + 4] = float(ml_dtypes.finfo(dtype).max)
    base[12, c + 11], base[12, 2 * c + 3], base[12, 2 * c + 4] = -3e9, -1e30, -1e300
    labels = np.array([3, 2 * c + 9, 0, 1, c + 1, 7, 11, c + 5, c + 2, c + 17, LONG - 1,
                       2 * c + 1, c + 11])
    labels[6] = np.flatnonzero(np.isfinite(base[6]))[0]
    with np.errstate(over="ignore"):   # -1e300 is -inf in the narrower formats
        return base.astype(dtype), labels


@every_target
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_long_rows_match_reference_in_place_and_not(dtype):
    logits, labels = long_edge_rows(dtype)
    with np.errstate(all="ignore"):
        (loss, lse, grad), (ref_loss, ref_lse, ref_grad) = sparse_both(logits, labels, grad=True)
        work = logits.copy()
        loss_in, lse_in = _fused.sparse_rows(work, labels, work)
        loss_only, _ = _fused.sparse_rows(logits, labels)
    assert_matches(loss, ref_loss, loss.dtype, label_scale(logits, labels),
                   logits_dtype=logits.dtype, terms=LONG)
    assert_matches(lse, ref_lse, lse.dtype, row_scale(logits), logits_dtype=logits.dtype, terms=LONG)
    assert_matches(grad, ref_grad, dtype, terms=LONG)
    np.testing.assert_array_equal(loss_in, loss)
    np.testing.assert_array_equal(lse_in, lse)
    np.testing.assert_array_equal(loss_only, loss)
    np.testing.assert_array_equal(work.view(np.uint8), grad.view(np.uint8))


@every_target
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_long_rows_match_reference_in_place_and_not(dtype):
    logits, labels = long_edge_rows(dtype)
    acc = np.float64 if dtype == np.float64 else np.float32
    targets = np.full(logits.shape, 0.1 / LONG)
    targets[np.arange(len(labels)), labels] += 0.9
    targets = targets.astype(acc)
    out, ref_out, work = np.empty_like(logits), np.empty_like(logits), logits.copy()
    with np.errstate(all="ignore"):
        loss, lse = _fused.dense_rows(logits, targets, out)
        ref_loss, ref_lse = _kernels.dense_rows(logits, targets, ref_out)
        loss_in, _ = _fused.dense_rows(work, targets, work)
        loss_only, _ = _fused.dense_rows(logits, targets)
    with np.errstate(over="ignore"):   # row 11's scale is float64's max
        loss_scale = dense_scale(logits, targets)
    assert_matches(loss, ref_loss, loss.dtype, loss_scale, logits_dtype=logits.dtype, terms=LONG)
    assert_matches(lse, ref_lse, lse.dtype, row_scale(logits), logits_dtype=logits.dtype,
                   terms=LONG)
    assert_matches(out, ref_out, dtype, terms=LONG)
    np.testing.assert_array_equal(loss_in, loss)
    np.testing.assert_array_equal(loss_only, loss)
    np.testing.assert_array_equal(work.view(np.uint8), out.view(np.uint8))


def smoothed_targets(labels, width, dtype):
    """Dense target rows ``[len(labels), width]`` of `dtype`: 0.1 spread evenly,
    plus 0.9 at each label inside [0, width) (rows of other labels: the 0.1 alone)."""
    targets = np.full((len(labels), width), 0.1 / width)
    inside = (labels >= 0) & (labels < width)
    targets[np.flatnonzero(inside), labels[inside]] += 0.9
    return targets.astype(dtype)


# How far below its row's max a logit's softmax is subnormal in each format.
SUBNORMAL_BELOW = {np.dtype(np.float32): (92.0, 95.0, 99.0), np.dtype(np.float64): (712.0, 720.0)}


@every_target
@pytest.mark.parametrize("threads", ["one", "several"])
@pytest.mark.parametrize("width", (10, 3000), ids=("narrow", "chunks"))
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64)],
                         ids=["float32", "float64"])
def test_subnormal_results_are_zero_and_the_caller_keeps_its_own(rng, force_threads, dtype,
                                                                  kind, width, threads):
    """On x86-64 the kernels run flushing results below the smallest normal
    float to 0 (`xent._fused._llvm.flush_denormals`), as TensorFlow's kernels
    do: the gradient entries of logits so far below their row's max that
    their softmax is subnormal are exactly 0, into a buffer (plain and
    streamed stores, equal bit for bit) and in place, on the narrow kernels
    (10 float32 classes) and the chunk ones, the others within tolerance of
    the float64 truth; and each thread gets its own setting back, so that
    NumPy on the calling thread still makes subnormals after every call.
    Elsewhere the kernels keep subnormals, and only the tolerance is checked."""
    from xent._fused import _target

    xent.set_num_threads(1 if threads == "one" else xent._threads.max_threads())
    logits, targets = grid_inputs(rng, dtype, kind, width, rows=9)
    top = logits.max(axis=1)
    far = np.zeros(logits.shape, bool)
    step = 3 * len(SUBNORMAL_BELOW[dtype]) if width < 100 else 97
    for k, below in enumerate(SUBNORMAL_BELOW[dtype]):
        far[:, 1 + 3 * k::step] = True
        logits[:, 1 + 3 * k::step] = (top - below)[:, None]
    if kind == "sparse":
        targets = np.where(far[np.arange(9), targets], 0, targets)
    else:   # (no target there: the gradient is the softmax alone)
        targets = np.where(far, 0, targets)
        targets /= targets.sum(axis=1, keepdims=True)
    tiny = np.finfo(dtype).tiny
    probe = dtype.type(tiny) / dtype.type(16)   # subnormal, unless this thread flushes
    assert probe != 0
    truth_grad = float64_truth(logits, targets)[2]
    subnormal = (np.abs(truth_grad) < tiny) & (truth_grad != 0)
    assert (subnormal == far).all()
    for _, _, grad in run_three_ways(kind, logits, targets)[1:]:
        assert dtype.type(tiny) / dtype.type(16) == probe
        assert_matches(grad, truth_grad, dtype, terms=width)
        if _target.is_x86():
            assert (grad[subnormal] == 0).all()


@every_target
@pytest.mark.parametrize("threads", ["one", "several"])
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64)],
                         ids=["float32", "float64"])
def test_streamed_gradient_has_the_plain_stores_bits_on_every_edge_row(rng, force_threads,
                                                                       monkeypatch, dtype,
                                                                       kind, threads):
    """The streamed kernel (`xent._fused._stream`: each row's gradient stored
    during the next row's pass A) on `long_edge_rows`, which take every branch
    of pass A (NaN rows between finite ones, a subnormal chunk factor, ...),
    and labels outside [0, C) (dense: their rows' smoothed targets), with row
    weights (negative ones among them), into buffers that start at each
    element offset within 32 bytes (rows of 6149 entries start anywhere): the
    plain stores' bits; and without weights, those of the gradient in place.
    On one thread, and over threads (each block of rows streams on its own)."""
    if threads == "one":
        xent.set_num_threads(1)
    logits, labels = long_edge_rows(dtype)
    logits = np.concatenate([logits, logits[[0, 1, 9]]])
    labels = np.concatenate([labels, [-1, LONG, 5]])
    run, targets = _fused.sparse_rows, labels
    if kind == "dense":
        run, targets = _fused.dense_rows, smoothed_targets(labels, LONG, dtype)
    weights = rng.random(len(labels)) * np.where(np.arange(len(labels)) % 3 == 1, -1, 1)
    work = logits.copy()
    with np.errstate(all="ignore"):
        loss_in, lse_in = run(work, targets, work)
        for offset in range(8):
            for w in (None, weights):
                monkeypatch.setattr(_launch, "STREAM", False)
                plain = np.empty_like(logits)
                want = run(logits, targets, plain, w)
                monkeypatch.setattr(_launch, "STREAM", True)
                streamed = np.empty(logits.size + 8, dtype)[offset:][:logits.size]
                streamed = streamed.reshape(logits.shape)
                got = run(logits, targets, streamed, w)
                for a, b in zip(want + (plain,), got + (streamed,)):
                    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
                if w is None:
                    np.testing.assert_array_equal(streamed.view(np.uint8), work.view(np.uint8))
                    np.testing.assert_array_equal(got[0], loss_in)
    assert np.isnan(streamed[2]).all()
    assert np.isnan(streamed[-3:-1]).all() == (kind == "sparse")
    assert np.isfinite(streamed[-1]).all()


@every_target
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64)],
                         ids=["float32", "float64"])
def test_negative_row_weights_give_the_negated_gradient(rng, dtype):
    """A row weight w < 0 gives exactly -1 times the gradient of weight -w, on
    the plain, streamed and in-place paths. (A negative chunk factor used to
    take the path for factors below the smallest normal float, through
    2**64: w = -1e25 gave -inf where w = 1e25 gave -3e21.)"""
    logits = logits_of(rng, (6, 3000), dtype)
    labels = rng.integers(0, 3000, 6)
    weights = np.array([1e25, 1.0, 0.5, 3e-30, 1e-300, 7.0])
    run = _fused.sparse_rows
    plus = into_a_buffer(run, logits, labels, weights)
    minus = into_a_buffer(run, logits, labels, -weights)
    np.testing.assert_array_equal(minus[0], plus[0])
    np.testing.assert_array_equal(minus[2], -plus[2])
    assert np.isfinite(plus[2]).all()
    work = logits.copy()
    run(work, labels, work, -weights)
    np.testing.assert_array_equal(work, minus[2])


def test_streamed_runs_are_whole_aligned_blocks():
    """`_stream.aligned_run` picks, inside [lo, hi), the whole 32-byte blocks of
    the buffer's memory (what a non-temporal vector store needs), whatever
    the buffer's offset, and none in a buffer whose elements are misaligned."""
    from numba import njit
    from xent._fused import _stream

    run = njit(lambda out, lo, hi: _stream.aligned_run(out, np.uint64(lo), np.uint64(hi)))
    for dtype in (np.float32, np.float64):
        size = np.dtype(dtype).itemsize
        lanes = 32 // size
        for offset in range(lanes):
            out = np.empty(200 + lanes, dtype)[offset:][:200]
            for lo, hi in ((0, 200), (3, 150), (5, 9), (0, 1), (17, 17), (40, 41)):
                first, last = run(out, lo, hi)
                assert lo <= first <= last <= hi
                assert (out.ctypes.data + first * size) % 32 == 0 or first == last == hi
                assert (last - first) % lanes == 0
                assert first - lo < lanes and (hi - last < lanes or first == hi)
                if hi - lo >= 2 * lanes:
                    assert last > first
    odd = np.frombuffer(bytearray(4 * 64 + 1), np.float32, 64, offset=1)
    assert run(odd, 0, 64) == (64, 64)


def test_streamed_stores_stop_on_cache_lines_and_blocks():
    """`_stream.line_start` and `_stream._block_start` move an index back to the
    nearest start of a 64-byte cache line (a 32-byte block) of the buffer's
    memory (or to 0), whatever the buffer's offset; a buffer whose elements are
    misaligned keeps the index (nothing of it is streamed)."""
    from numba import njit
    from xent._fused import _stream

    for name, bytes_ in (("line_start", 64), ("_block_start", 32)):
        cut = njit(lambda out, j, f=getattr(_stream, name): f(out, np.uint64(j)))
        for dtype in (np.float32, np.float64):
            size = np.dtype(dtype).itemsize
            for offset in range(64 // size):
                out = np.empty(300 + 64 // size, dtype)[offset:][:300]
                for j in (0, 1, 7, 16, 17, 100, 255, 299):
                    k = cut(out, j)
                    assert k <= j and j - k < bytes_ // size
                    assert (out.ctypes.data + k * size) % bytes_ == 0 or k == 0   # (the row start)
                    if (out.ctypes.data + j * size) % bytes_ == 0:
                        assert k == j
        odd = np.frombuffer(bytearray(4 * 64 + 1), np.float32, 64, offset=1)
        assert [cut(odd, j) for j in (0, 5, 63)] == [0, 5, 63]


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_the_streamed_kernel_emits_non_temporal_stores(kind):
    """The streamed kernel's fresh compile (cached code has no IR to read) holds
    stores marked ``!nontemporal``, and on x86-64 they are ``movnt`` instructions
    (the bit tests cannot tell a streamed store from a plain one)."""
    import platform

    from numba import njit

    kernel = getattr(_rows, f"{kind}_grad_rows_streamed")
    options = {k: v for k, v in kernel.targetoptions.items() if k not in ("cache", "nopython")}
    fresh = njit(**options)(kernel.py_func)
    x = logits_of(np.random.default_rng(0), (3, 100), np.float32)
    n = x.shape[0]
    targets = np.zeros(n, np.int64) if kind == "sparse" else np.full_like(x, 0.01)
    fresh(x, targets, np.ones(1), np.empty_like(x), np.empty(n, np.float32),
          np.empty(n, np.float32), False, 0, n)
    (ir,) = fresh.inspect_llvm().values()
    assert "!nontemporal" in ir
    if platform.machine().lower() in ("x86_64", "amd64"):
        (asm,) = fresh.inspect_asm().values()
        assert "movnt" in asm


def test_large_float_gradients_into_a_buffer_are_streamed(rng, monkeypatch):
    """`_launch.store_kind`: where streaming was kept, from `STREAM_MIN_BYTES`
    of gradient on, float32 and float64 gradients into a separate buffer of
    the logits' dtype (half logits with a float32 buffer run as float32) take
    the streamed kernel, with sparse labels or dense targets; smaller ones,
    half-precision buffers, a buffer of another dtype, the gradient in place
    and the narrow path do not, and `STREAM` overrides the choice. The bits cannot show the
    choice (the tests above check that they are the same), so the kernels
    run are recorded."""
    kept = StoreChoice()
    kept.streamed = True
    monkeypatch.setattr(_launch, "STORES", kept)
    calls = []
    real_run = _launch._run

    def recording_run(rows, nbytes, args):
        calls.append(rows.__name__)
        return real_run(rows, nbytes, args)

    monkeypatch.setattr(_launch, "_run", recording_run)
    monkeypatch.setattr(_launch, "STREAM_MIN_BYTES", 4 * 3000 * 4)
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    cases = [((4, 3000), f32, f32, "sparse_grad_rows_streamed"),
             ((3, 3000), f32, f32, "sparse_grad_rows"),
             ((2, 3000), f64, f64, "sparse_grad_rows_streamed"),
             ((8, 3000), BF16, BF16, "sparse_grad_rows"),
             ((8, 3000), BF16, f32, "sparse_grad_rows_streamed"),
             ((4, 3000), f32, f64, "sparse_grad_rows"),
             ((1200, 10), f32, f32, "sparse_narrow_grad_rows")]
    for shape, dtype, out_dtype, kernel in cases:
        calls.clear()
        logits = logits_of(rng, shape, dtype)
        _fused.sparse_rows(logits, rng.integers(0, shape[1], shape[0]), np.empty(shape, out_dtype))
        assert calls == [kernel], (shape, dtype, out_dtype)
    logits = logits_of(rng, (4, 3000), f32)
    labels = rng.integers(0, 3000, 4)
    calls.clear()
    _fused.sparse_rows(logits, labels, logits)
    _fused.dense_rows(logits, np.full((1, 3000), 1 / 3000, np.float32), np.empty_like(logits))
    assert calls == ["sparse_grad_rows_inplace", "dense_grad_rows_streamed"]
    calls.clear()
    _fused.dense_rows(logits[:3], np.full((1, 3000), 1 / 3000, np.float32),
                      np.empty((3, 3000), f32))
    assert calls == ["dense_grad_rows"]
    for stream, kernel in ((False, "sparse_grad_rows"), (True, "sparse_grad_rows_streamed")):
        monkeypatch.setattr(_launch, "STREAM", stream)
        calls.clear()
        _fused.sparse_rows(logits[:1], labels[:1], np.empty((1, 3000), f32))
        assert calls == [kernel]
    monkeypatch.setattr(_launch, "STREAM", None)
    kept.streamed = False
    calls.clear()
    _fused.sparse_rows(logits, labels, np.empty_like(logits))
    assert calls == ["sparse_grad_rows"]


def test_the_kind_of_store_is_timed_then_kept(rng, monkeypatch):
    """`StoreChoice` through `_launch`: calls too small to stream do not count;
    the first large call fixes the timed size and kind of targets, and calls
    of another size, or dense ones of that size, run plain, untimed; the first two of that size run plain then streamed,
    untimed; then streamed and plain alternate, each timed under the kind
    that ran, a call that found the threads busy is not recorded (its kind
    comes again), and once both kinds have `TRIALS` times the faster one
    (best time per byte) serves every later call, untimed."""
    choice = StoreChoice()
    monkeypatch.setattr(_launch, "STORES", choice)
    monkeypatch.setattr(_launch, "STREAM_MIN_BYTES", 4 * 3000 * 4)
    ran, busy = [], []   # the kind each call ran; the calls to report as busy threads
    real_run = _launch._run

    def recording_run(rows, nbytes, args):
        ran.append(rows.__name__.endswith("_streamed"))
        done = real_run(rows, nbytes, args)
        return done and len(ran) not in busy

    recorded = []
    real_record = choice.record

    def recording(streamed, seconds, nbytes):
        assert streamed == ran[-1]   # recorded as the kind that ran
        recorded.append(streamed)
        # streamed calls seen as far faster per byte than any plain one
        real_record(streamed, seconds / 1e6 if streamed else seconds, nbytes)

    monkeypatch.setattr(_launch, "_run", recording_run)
    monkeypatch.setattr(choice, "record", recording)
    logits = logits_of(rng, (5, 3000), np.dtype(np.float32))
    labels = rng.integers(0, 3000, 5)

    def call(rows):
        _fused.sparse_rows(logits[:rows], labels[:rows], np.empty((rows, 3000), np.float32))

    call(3)                       # too small
    call(4)                       # fixes the timed size; plain, untimed
    _fused.dense_rows(logits[:4], np.full((4, 3000), 1 / 3000, np.float32),
                      np.empty((4, 3000), np.float32))   # dense targets: plain, untimed
    call(5)                       # another size: plain, untimed
    call(4)                       # streamed, untimed
    assert ran == [False, False, False, False, True] and recorded == []
    busy.append(len(ran) + 2)     # the second timed call finds the threads busy
    for _ in range(2 * StoreChoice.TRIALS + 1 + 3):
        call(4)
    trials = [True, False, False, True, False, True, False]   # the busy plain call again
    assert ran[5:] == trials + [True] * 3
    assert recorded == [k for i, k in enumerate(trials) if i != 1]
    assert choice.streamed is True
    call(5)
    assert ran[-1] is True and len(recorded) == 2 * StoreChoice.TRIALS

    slower = StoreChoice()   # and the other way: streamed slower, plain kept
    assert [slower.next_kind("a") for _ in range(2)] == [(False, False), (True, False)]
    while slower.streamed is None:
        kind, timed = slower.next_kind("a")
        assert timed
        slower.record(kind, 2.0 if kind else 1.0, 100)
    assert slower.streamed is False and slower.next_kind("a") == (False, False)
    assert slower.best_ms_per_gib() == {"plain": round(2**30 / 100 * 1e3, 1),
                                        "streamed": round(2 * 2**30 / 100 * 1e3, 1)}


@every_target
def test_subnormal_rescaling_factor_keeps_normal_gradients_exact():
    """Row 8 of `long_edge_rows`: its middle chunk's factor exp(-96) / S is
    subnormal in float32, while its gradients, near exp(-80), are normal."""
    logits, labels = long_edge_rows(np.float32)
    grad = np.empty_like(logits)
    _fused.sparse_rows(logits[8:9], labels[8:9], grad[8:9])
    c = int(_fused.CHUNK)
    x = logits[8].astype(np.float64)
    want = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    middle = np.arange(c, 2 * c)
    middle = middle[middle != labels[8]]
    assert (want[middle] > np.finfo(np.float32).tiny).all()
    np.testing.assert_allclose(grad[8, middle], want[middle], rtol=1e-6)


@every_target
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_confident_loss_is_accurate_when_the_max_took_an_earlier_shift(dtype):
    """Row 9 of `long_edge_rows`: loss ~ exp(-10). The max's term, taken against
    the first chunk's max (-10), is made exactly 1, so even the half-precision
    exp (error 1e-4 of each term) leaves the loss accurate relative to itself."""
    logits, labels = long_edge_rows(dtype)
    loss, _ = _fused.sparse_rows(logits[9:10], labels[9:10])
    x = logits[9].astype(np.float64)
    want = np.log(np.exp(x - x.max()).sum()) - (x[labels[9]] - x.max())
    assert want < 1e-4
    rtol = 2e-4 if np.dtype(dtype).itemsize == 2 else 1e-5
    assert abs(loss[0] - want) <= rtol * want


def confident_rows(dtype, kind, width, rows=24):
    """Logits ``[rows, width]`` in [-1, 0] but for each row's max, 14 to 20 above
    them (every float32 term below the max under half the ulp of 1), at the
    row's label (sparse: int64 labels) or its one-hot target (dense: rows in
    the accumulator dtype): losses of 1e-9 to 1e-5 (to 3e-3 for rows of
    `LONG`, 6149 terms). Rows of `LONG` put their max in each chunk (a
    later chunk, whose max rises more than `_chunks.SHIFT_SLACK`, is swept
    again against it)."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-1.0, 0.0, (rows, width))
    labels = rng.integers(0, width, size=rows)
    x[np.arange(rows), labels] = np.linspace(14.0, 20.0, rows)
    logits = x.astype(dtype)
    if kind == "sparse":
        return logits, labels
    acc = np.float64 if dtype == np.float64 else np.float32
    return logits, np.eye(width, dtype=acc)[labels]


def assert_label_entries(grad, labels, want_at, kind, rtol):
    """grad's entries at the labels within rtol of want_at; plus two float32 ulps
    of 1 for a dense gradient (TensorFlow's softmax - y, a multiple of 6e-8 near
    y = 1), and an ulp of a half-precision gradient."""
    dtype = grad.dtype
    at = accumulate(grad[np.arange(len(labels)), labels])
    tol = rtol * np.abs(want_at)
    if kind == "dense" and dtype != np.float64:
        tol = tol + 2.0 ** -22
    if is_half(dtype):
        tol = tol + np.spacing(np.abs(want_at).astype(dtype)).astype(np.float64)
    assert (np.abs(at - want_at) <= tol).all(), (at[:4], want_at[:4])


@every_target
@pytest.mark.parametrize("width", (10, 16, 100, LONG))
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_confident_rows_keep_their_small_loss(dtype, kind, width):
    """A confident row's loss, and its gradient at the label, to their own size.

    Pass A once summed each row's exps in float32 with the max's term among
    them, which dropped the terms below half its ulp: float32 [16.75, 0 x 9],
    label 0, gave a loss of 0 (TensorFlow 4.77e-7, exact 4.78e-7). The
    half-precision exp is good to 1e-4 of each term; a half-precision
    gradient is rounded to its format (subnormal there). A dense gradient is
    TensorFlow's softmax - y, each in the accumulator's precision: at y = 1
    it is a multiple of float32's 6e-8 (TensorFlow's too; off by up to two
    of them where the exp's rounding of softmax near 1 adds one), and a dense loss
    takes y (x - shift) in float32: where the max's chunk was swept once,
    within an ulp of the max (SPEC's tolerance; not made exact here)."""
    logits, targets = confident_rows(dtype, kind, width)
    labels = targets if kind == "sparse" else targets.argmax(axis=1)
    if width == LONG:   # the max in a later chunk for some rows
        assert (labels >= int(_fused.CHUNK)).any()
    want_loss, _, want_grad = float64_truth(logits, targets)
    want_at = want_grad[np.arange(len(labels)), labels]
    rtol = 5e-4 if is_half(dtype) else 2e-6
    assert (want_loss > 1e-10).all() and (want_loss < 1e-2).all()
    loss_tol = rtol * want_loss
    if kind == "dense" and width == LONG and dtype != np.float64:
        loss_tol = loss_tol + np.spacing(np.float32(20.0))
    for loss, _, grad in run_three_ways(kind, logits, targets):
        err = np.abs(accumulate(loss) - want_loss)
        assert (err <= loss_tol).all(), (err / want_loss).max()
        if grad is None:
            continue
        assert_label_entries(grad, labels, want_at, kind, rtol)


@every_target
@pytest.mark.parametrize("width", (10, 32, 100, 128, 1000))
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_a_confident_max_that_is_not_the_label_keeps_its_softmax(dtype, width):
    """A confident row whose label is not its max: the softmax at the max, 1/S,
    to a few ulps. The narrow kernels summed such a row's terms in float32 with
    the max's 1 and dropped those below half its ulp: float32 [16.75, 0 x 9],
    label 3, gave 0.99999994 at the max (exact 0.99999952); they now sum the
    terms below the max apart, as the chunk kernels do."""
    logits, labels = confident_rows(dtype, "sparse", width)
    top = logits.astype(np.float64).argmax(axis=1)
    labels = (top + 1 + labels % (width - 1)) % width
    assert (labels != top).all()
    want_loss, _, want_grad = float64_truth(logits, labels)
    want_top = want_grad[np.arange(len(top)), top]
    rtol = 5e-4 if is_half(dtype) else 2.5e-7
    for loss, _, grad in run_three_ways("sparse", logits, labels):
        assert (np.abs(accumulate(loss) - want_loss) <= 2e-6 * want_loss).all()
        if grad is None:
            continue
        at = accumulate(grad[np.arange(len(top)), top])
        tol = rtol * want_top
        if is_half(dtype):
            tol = tol + np.spacing(want_top.astype(dtype)).astype(np.float64)
        assert (np.abs(at - want_top) <= tol).all(), (at[:4], want_top[:4])


@every_target
@pytest.mark.parametrize("width", (64, 100, 128))
def test_long_narrow_rows_sum_to_within_1e_6(width):
    """Rows of one kind of term, the hardest for a lane that sums them in order:
    a confident row [M, 0 x (C - 1)] (label 0, loss ~ (C - 1) e**-M) and
    [0, -3.9956 x (C - 1)]. With one float32 sum per lane, 128 classes put the
    loss 2.0e-6 and 1.1e-6 off (a review, session 22); each lane now sums
    half its terms in each of two."""
    logits = np.zeros((60, width), np.float32)
    logits[:, 0] = np.linspace(8.0, 22.0, 60)
    logits[-1, 1:] = np.float32(-3.9956)
    logits[-1, 0] = 0.0
    labels = np.zeros(60, np.int64)
    x = logits.astype(np.float64)
    want = np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1)) - (x[:, 0] - x.max(axis=1))
    for loss, _, _ in run_three_ways("sparse", logits, labels):
        err = np.abs(accumulate(loss) - want) / want
        assert err.max() <= 1e-6, (err.max(), err.argmax())


@every_target
def test_the_reviewed_confident_row_with_another_label():
    """float32 [16.75, 0 x 9], label 3 (found by a review, session 22): 0.99999994
    at the max, 7 ulps from the exact 0.99999952; now within an ulp."""
    logits = np.zeros((1, 10), np.float32)
    logits[0, 0] = 16.75
    want = 1.0 / (1.0 + 9.0 * np.exp(-16.75))
    for _, _, grad in run_three_ways("sparse", logits, np.array([3])):
        if grad is not None:
            assert abs(float(grad[0, 0]) - want) <= np.spacing(np.float32(want)), grad[0, 0]


@pytest.mark.parametrize("width", (10, 100))
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_the_numpy_kernels_keep_confident_rows_small_loss(dtype, kind, width):
    """`XENT_KERNELS=numpy` keeps a confident row's small loss as the fused
    kernels do: float32 [16.75, 0 x 9], label 0, gave 3.58e-7 (exact 4.78e-7),
    its float32 sum of exps rounded near 1. Their exps are float32's (float64's
    for float64 logits) whatever the input's format; the sparse gradient's
    label entry is to its own size, a dense one TensorFlow's softmax - y (a
    multiple of float32's 6e-8 at y = 1)."""
    logits, targets = confident_rows(dtype, kind, width)
    labels = targets if kind == "sparse" else targets.argmax(axis=1)
    want_loss, want_lse, want_grad = float64_truth(logits, targets)
    want_at = want_grad[np.arange(len(labels)), labels]
    run = _kernels.sparse_rows if kind == "sparse" else _kernels.dense_rows
    grad = np.empty_like(logits)
    loss, lse = run(logits, targets)
    loss_g, lse_g = run(logits, targets, grad)
    np.testing.assert_array_equal(loss, loss_g)
    np.testing.assert_array_equal(lse, lse_g)
    assert (np.abs(accumulate(loss) - want_loss) <= 2e-6 * want_loss).all()
    assert_matches(lse, want_lse, lse.dtype, np.abs(want_lse))
    assert_label_entries(grad, labels, want_at, kind, 2e-6)


@every_target
@pytest.mark.parametrize("width", (8, 3000), ids=("narrow", "chunks"))
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_float64_exps_far_below_the_max_are_zero_or_subnormal_as_they_should(kind, width):
    """float64 logits 700 to 6000 below the row's max, and -inf: the exp's floor
    depends on the path (`_math._floor64`: -5000 with ``vscalefpd``, where a
    masked logit's underflow stalled an Intel Xeon, -797.5 with the bits, where
    2**(n + 128) is +0.0). Every path gives exp(x - M) / S: 0 below -745.2,
    the subnormal between, on the host and the lower targets; on x86-64,
    where the kernels flush subnormal results (`_llvm.flush_denormals`), 0
    below -708.4 too. (A dense loss with a -inf logit is NaN, as
    TensorFlow's: 0 * -inf.)"""
    from xent._fused import _target

    offsets = [0.0, -700.0, -708.5, -720.0, -745.0, -745.3, -790.0, -797.4, -797.6, -800.0,
               -4999.0, -5001.0, -6000.0, -np.inf]
    logits = np.full((2, width + len(offsets)), -50.0)
    logits[:, -len(offsets):] = offsets
    logits[1] += 30.0
    labels = np.array([0, width + 1])
    targets = labels if kind == "sparse" else np.eye(logits.shape[1])[labels]
    with np.errstate(invalid="ignore"):   # (the truth's 0 * -inf for the dense loss)
        _, want_lse, want_grad = float64_truth(logits, targets)
    want_loss = want_lse - logits[[0, 1], labels] if kind == "sparse" else np.full(2, np.nan)
    assert (want_grad[:, -8:-1] == 0.0).all() and (want_grad[:, -12:-9] != 0.0).all()
    for loss, lse, grad in run_three_ways(kind, logits, targets):
        assert_matches(loss, want_loss, np.float64, row_scale(logits), terms=logits.shape[1])
        assert_matches(lse, want_lse, np.float64, row_scale(logits), terms=logits.shape[1])
        if grad is not None:
            zero = np.abs(want_grad) < np.finfo(np.float64).tiny if _target.is_x86() \
                else want_grad == 0.0
            np.testing.assert_array_equal(grad == 0.0, zero)
            assert_matches(grad, want_grad, np.float64, terms=logits.shape[1])


@every_target
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_a_first_chunk_of_minus_inf_before_low_logits_matches_reference(dtype, kind):
    """A chunk of ``-inf`` is shifted by 0. Before rows whose logits all lie below
    -88, its factor exp(0 - M) left float32's range: NaN gradients on the masked
    entries, and past -709 a loss of -709.4 against 0 (float32) or NaN (float64).
    The reference gives exact zeros there (found by a review, session 21)."""
    c = int(_fused.CHUNK)
    logits = np.full((3, c + 3), -np.inf)
    logits[0, c:] = [-100.0, -101.0, -99.0]
    logits[1, c:] = [-800.0, -800.5, -801.0]
    logits[2, c:] = [-5000.0, -5000.0, -5001.0]
    logits = logits.astype(dtype)
    labels = np.array([c, c + 1, c + 2])
    acc = np.float64 if dtype == np.float64 else np.float32
    targets = labels if kind == "sparse" else np.eye(c + 3, dtype=acc)[labels]
    run = _kernels.sparse_rows if kind == "sparse" else _kernels.dense_rows
    want_grad = np.empty_like(logits)
    with np.errstate(all="ignore"):
        want_loss, want_lse = run(logits, targets, want_grad)
        three = run_three_ways(kind, logits, targets)
    for loss, lse, grad in three:
        assert_matches(loss, want_loss, loss.dtype, 800.0, logits_dtype=logits.dtype)
        assert_matches(lse, want_lse, lse.dtype, row_scale(logits), logits_dtype=logits.dtype)
        if grad is not None:
            assert_matches(grad, want_grad, dtype)
            assert (grad[:, :c] == 0).all()


@every_target
def test_masked_logits_get_exactly_zero_gradient():
    logits = np.array([[0.5, -np.inf, 1.0, -np.inf]], np.float32)
    grad = np.empty_like(logits)
    _fused.sparse_rows(logits, np.array([0]), grad)
    assert grad[0, 1] == 0.0 and grad[0, 3] == 0.0


def test_label_outside_range_gives_nan_row_in_the_kernel():
    """The public functions raise first (see below); the kernel itself never reads out of bounds."""
    logits = np.zeros((2, 3), np.float32)
    grad = np.empty_like(logits)
    loss, _ = _fused.sparse_rows(logits, np.array([1, 3]), grad)
    assert loss[0] == pytest.approx(np.log(3)) and np.isnan(loss[1]) and np.isnan(grad[1]).all()


# -- memory layouts and gradient buffers ---------------------------------------------------

LAYOUTS = {
    "fortran": np.asfortranarray,
    "column-strided": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
    "row-strided": lambda a: np.repeat(a, 2, axis=0)[::2],
    "reversed": lambda a: a[::-1].copy()[::-1],
}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_non_contiguous_logits_give_the_contiguous_results(rng, layout, dtype):
    base = logits_of(rng, (7, 37), dtype)
    logits = LAYOUTS[layout](base)
    labels = rng.integers(0, 37, size=7)
    want_grad = np.empty_like(base)
    want_loss, _ = _fused.sparse_rows(base, labels, want_grad)
    grad = np.empty_like(base)
    loss, _ = _fused.sparse_rows(logits, labels, grad)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    np.testing.assert_array_equal(logits, base)   # inputs untouched


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_non_contiguous_gradient_buffers_are_filled(rng, layout):
    logits = logits_of(rng, (7, 37), np.float32)
    labels = rng.integers(0, 37, size=7)
    want = np.empty_like(logits)
    _fused.sparse_rows(logits, labels, want)
    out = LAYOUTS[layout](np.zeros_like(logits))
    _fused.sparse_rows(logits, labels, out)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_in_place_gradient_equals_separate_buffer(rng, dtype, kind):
    logits = logits_of(rng, (9, 1031), dtype)
    labels = rng.integers(0, 1031, size=9)
    if kind == "dense":
        labels = np.eye(1031, dtype=np.float32 if dtype != np.float64 else np.float64)[labels]
    run = _fused.sparse_rows if kind == "sparse" else _fused.dense_rows
    out = np.empty_like(logits)
    loss, _ = run(logits, labels, out)
    inplace = logits.copy()
    loss_inplace, _ = run(inplace, labels, inplace)
    np.testing.assert_array_equal(loss_inplace, loss)
    np.testing.assert_array_equal(inplace.view(np.uint8), out.view(np.uint8))


@pytest.mark.parametrize("layout", ["fortran", "row-strided"])
def test_in_place_on_non_contiguous_logits_overwrites_them(rng, layout):
    base = logits_of(rng, (6, 21), np.float32)
    labels = rng.integers(0, 21, size=6)
    want = np.empty_like(base)
    _fused.sparse_rows(base, labels, want)
    logits = LAYOUTS[layout](base)
    _fused.sparse_rows(logits, labels, logits)
    np.testing.assert_array_equal(logits, want)


def test_gradient_in_another_dtype_than_the_logits(rng):
    logits = logits_of(rng, (5, 40), BF16)
    labels = rng.integers(0, 40, size=5)
    out32, ref32 = np.empty((5, 40), np.float32), np.empty((5, 40), np.float32)
    _fused.sparse_rows(logits, labels, out32)
    _kernels.sparse_rows(logits, labels, ref32)
    assert_matches(out32, ref32, np.float32)


def _compiled_signatures():
    """How many signatures each row kernel has compiled (or loaded) in this process."""
    return {f"{module.__name__}.{name}": len(kernel.signatures)
            for module in (_rows, _narrow) for name, kernel in sorted(vars(module).items())
            if hasattr(kernel, "signatures") and name.endswith("_rows")}


@pytest.mark.parametrize("width", [10, 100], ids=["narrow", "chunk"])
def test_read_only_logits_and_int32_labels_compile_nothing_new(rng, monkeypatch, width):
    """The kernels compiled for writable logits and int64 labels also run a
    read-only array (JAX's, a broadcast's) and int32 labels: their second
    calls, which would otherwise each compile a kernel again, compile nothing
    and give the same bits. Every kernel gets its logits and targets read-only,
    and sparse labels as int64 (which holds whatever ran before this test)."""
    launched, run = [], _launch._run

    def spy(rows, nbytes, args):
        launched.append((rows.py_func.__name__, args[0], args[1]))
        return run(rows, nbytes, args)
    monkeypatch.setattr(_launch, "_run", spy)
    logits = rng.standard_normal((6, width)).astype(np.float32)
    labels = rng.integers(0, width, 6)
    targets = np.full((1, width), 1 / width, np.float32)

    def every_need(x, y, t):
        outs = np.empty_like(logits), np.empty_like(logits)
        return [*_fused.sparse_rows(x, y), *_fused.sparse_rows(x, y, outs[0]), outs[0],
                *_fused.dense_rows(x, t), *_fused.dense_rows(x, t, outs[1]), outs[1]]

    first = every_need(logits, labels.astype(np.int64), np.repeat(targets, 6, axis=0))
    before = _compiled_signatures()
    frozen = logits.copy()
    frozen.setflags(write=False)
    again = every_need(frozen, labels.astype(np.int32), np.broadcast_to(targets, (6, width)))
    assert _compiled_signatures() == before
    for want, got in zip(first, again):
        np.testing.assert_array_equal(got, want)
    assert len(launched) == 8
    for name, x, targets in launched:
        assert not (x.flags.writeable or targets.flags.writeable), name
        assert targets.dtype == (np.int64 if name.startswith("sparse") else np.float32), name


def test_core_keeps_a_gradient_buffer_that_has_no_flat_view(rng):
    logits = logits_of(rng, (3, 4, 11), np.float32)
    labels = rng.integers(0, 11, size=(3, 4))
    grad = np.asfortranarray(np.zeros_like(logits))
    loss, got = _core.sparse_xent(labels, logits, grad)
    want = np.empty((12, 11), np.float32)
    _fused.sparse_rows(logits.reshape(12, 11), labels.reshape(-1), want)
    assert got is grad
    np.testing.assert_array_equal(grad.reshape(12, 11), want)


# -- narrow rows (at most narrow_max() classes, 16 rows per vector) -------------------------

# (`_narrow.narrow_max`: 32 classes, or 128 where the loops are 512 bits wide)
NARROW_SHAPES = [(1, 1), (15, 2), (16, 10), (17, 16), (21, 17), (37, 31), (18, 32), (19, 33),
                 (33, 63), (20, 128), (22, 129)]
HALF_AND_SINGLE = [np.dtype(np.float16), BF16, np.dtype(np.float32)]


def assert_in_place_and_loss_only_agree(run, logits, labels, loss, lse, grad):
    """`run` (sparse_rows or dense_rows) in place and loss-only gives, bit for bit,
    the loss, lse and gradient it gave into a separate buffer."""
    work = logits.copy()
    loss_in, lse_in = run(work, labels, work)
    loss_only, lse_only = run(logits, labels)
    for a, b in ((loss_in, loss), (lse_in, lse), (loss_only, loss), (lse_only, lse)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(work.view(np.uint8), grad.view(np.uint8))


@pytest.mark.parametrize("shape", NARROW_SHAPES, ids=[f"{n}x{c}" for n, c in NARROW_SHAPES])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_narrow_rows_match_reference_in_place_and_not(rng, shape, dtype):
    """Around the narrow kernels' bounds: row counts on both sides of 16, C up to
    each `narrow_max` and one past it (the chunk path), float64 (always the chunk path)."""
    logits = logits_of(rng, shape, dtype)
    labels = rng.integers(0, shape[1], size=shape[0])
    (loss, lse, grad), (ref_loss, ref_lse, ref_grad) = sparse_both(logits, labels, grad=True)
    scale = row_scale(logits)
    assert_matches(loss, ref_loss, loss.dtype, scale, logits_dtype=logits.dtype)
    assert_matches(lse, ref_lse, lse.dtype, scale, logits_dtype=logits.dtype)
    assert_matches(grad, ref_grad, dtype)
    assert_in_place_and_loss_only_agree(_fused.sparse_rows, logits, labels, loss, lse, grad)


@pytest.mark.parametrize("shape", NARROW_SHAPES, ids=[f"{n}x{c}" for n, c in NARROW_SHAPES])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("targets", ["rows", "one row"])
def test_dense_narrow_rows_match_reference_in_place_and_not(rng, shape, dtype, targets):
    """Dense targets through the narrow kernels (up to NARROW_DENSE_MAX classes;
    the chunk kernels past it): one per row, or one row broadcast over every
    block (gathered once per call)."""
    logits = logits_of(rng, shape, dtype)
    acc = np.float64 if dtype == np.float64 else np.float32
    labels = rng.random(shape if targets == "rows" else (1, shape[1])).astype(acc)
    labels = np.broadcast_to(labels, shape)
    out, ref_out = np.empty_like(logits), np.empty_like(logits)
    loss, lse = _fused.dense_rows(logits, labels, out)
    ref_loss, ref_lse = _kernels.dense_rows(logits, labels, ref_out)
    scale = row_scale(logits) * (1.0 + accumulate(labels).sum(axis=-1))
    assert_matches(loss, ref_loss, loss.dtype, scale, logits_dtype=logits.dtype)
    assert_matches(lse, ref_lse, lse.dtype, row_scale(logits), logits_dtype=logits.dtype)
    assert_matches(out, ref_out, dtype, 1.0)
    assert_in_place_and_loss_only_agree(_fused.dense_rows, logits, labels, loss, lse, out)


@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=[d.name for d in HALF_AND_SINGLE])
def test_narrow_kernels_agree_with_the_chunk_kernels(rng, dtype):
    """The narrow kernels against the one-chunk row kernels on the same rows
    (the log and the sum's order differ: a few float32 ulps, one half ulp)."""
    logits = logits_of(rng, (53, 23), dtype, spread=6.0)
    # (read-only logits and int64 labels, as the launch passes them: the signatures
    # compiled for the suite's other tests)
    labels = _launch.read_only(rng.integers(0, 23, size=53).astype(np.int64))
    x, ones = _launch.read_only(_formats.kernel_view(logits)), _launch.read_only(np.ones(1))
    results = []
    for loss_rows, grad_rows, fetch in (
            (_narrow.sparse_narrow_loss_rows, _narrow.sparse_narrow_grad_rows, ()),
            (_rows.sparse_loss_rows, _rows.sparse_grad_rows, (False,))):
        loss, lse = np.empty(53, np.float32), np.empty(53, np.float32)
        loss_g, lse_g = np.empty(53, np.float32), np.empty(53, np.float32)
        out = np.empty_like(logits)
        loss_rows(x, labels, loss, lse, *fetch, 0, 53)
        grad_rows(x, labels, ones, _formats.kernel_view(out), loss_g, lse_g, *fetch, 0, 53)
        np.testing.assert_array_equal(loss, loss_g)
        results.append((loss, lse, out))
    (loss, lse, out), (want_loss, want_lse, want_out) = results
    scale = row_scale(logits)
    assert_matches(loss, want_loss, np.float32, scale)
    assert_matches(lse, want_lse, np.float32, scale)
    assert_matches(out, want_out, dtype)


@pytest.fixture(scope="module")
def log_of_sum():
    """`_math.log_of_sum` as a function callable from Python."""
    from numba import njit
    return njit(lambda s: _math.log_of_sum(s))


@every_target
def test_narrow_log_of_sum_is_float64_log_to_2e_11(log_of_sum):
    sums = np.concatenate([1.0 + np.geomspace(1e-12, 1.0, 500), np.linspace(1.0, 65.0, 4001),
                           [np.sqrt(2.0), np.sqrt(0.5) * 4, 2.0, 4.0, 64.0, 1e30]])
    got = np.array([log_of_sum(s) for s in sums])
    np.testing.assert_allclose(got, np.log(sums), rtol=0, atol=2e-11)


@every_target
def test_round_scale_gives_the_integer_and_its_power_of_two():
    """`round_scale` (the exps' n and 2**(n + 64) without AVX-512): n is t
    rounded to the nearest integer (a tie to the n that makes the sum even,
    n + 191), and the scale is exactly 2**(n + 64), over every n the exps
    use (-188 to 24)."""
    from numba import njit
    from xent._fused._llvm import round_scale

    @njit
    def run(t, magic, n, scale):
        for j in range(t.shape[0]):
            n[j], scale[j] = round_scale(t[j], np.float32(1.0), magic)

    ties = np.arange(-188, 24, dtype=np.float32) + np.float32(0.5)
    t = np.concatenate([np.linspace(-188.4, 24.4, 20001, dtype=np.float32), ties, -ties,
                        np.float32([-0.0, 0.0, 0.25, -0.25, 1e-30])])
    t = t[(t >= -188.4) & (t <= 24.4)]
    n, scale = np.empty_like(t), np.empty_like(t)
    run(t, _math._MAGIC32, n, scale)
    wide = t.astype(np.float64)
    tie = wide - np.floor(wide) == 0.5
    want = np.where(tie, np.floor(wide) + (np.floor(wide) + 191) % 2, np.rint(wide))
    np.testing.assert_array_equal(n, want)
    np.testing.assert_array_equal(scale.astype(np.float64), np.ldexp(1.0, want.astype(int) + 64))


@every_target
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=[d.name for d in HALF_AND_SINGLE])
def test_narrow_edge_rows_in_every_lane(dtype):
    """The edge rows (NaN, +inf, all -inf, masked, huge) at each of the 16 lanes,
    among ordinary rows, and a label out of range: NaN rows stay in their lane."""
    edges, edge_labels = edge_rows(dtype)
    rng = np.random.default_rng(7)
    for lane in range(0, 16, 5):
        logits = logits_of(rng, (16 + len(edges), 4), dtype)
        labels = rng.integers(0, 4, size=len(logits))
        logits[lane:lane + len(edges)] = edges
        labels[lane:lane + len(edges)] = edge_labels
        with np.errstate(all="ignore"):
            (loss, lse, grad), (ref_loss, ref_lse, ref_grad) = sparse_both(logits, labels, grad=True)
        assert_matches(loss, ref_loss, loss.dtype, label_scale(logits, labels), logits_dtype=logits.dtype)
        assert_matches(lse, ref_lse, lse.dtype, row_scale(logits), logits_dtype=logits.dtype)
        assert_matches(grad, ref_grad, dtype)
        labels[-1] = 4   # out of range: the reference raises; the kernel gives a NaN row
        bad_grad = np.empty_like(logits)
        with np.errstate(all="ignore"):
            bad_loss, _ = _fused.sparse_rows(logits, labels, bad_grad)
        assert np.isnan(bad_loss[-1]) and np.isnan(accumulate(bad_grad[-1])).all()
        np.testing.assert_array_equal(bad_loss[:-1], loss[:-1])
        np.testing.assert_array_equal(bad_grad[:-1].view(np.uint8), grad[:-1].view(np.uint8))


# -- threads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("classes", [515, 10])
def test_results_identical_whatever_the_thread_count(rng, force_threads, dtype, kind, classes):
    logits = logits_of(rng, (37, classes), dtype)
    labels = rng.integers(0, classes, size=37)
    if kind == "dense":
        labels = rng.random((37, classes)).astype(np.float64 if dtype == np.float64 else np.float32)
    run = _fused.sparse_rows if kind == "sparse" else _fused.dense_rows
    results = []
    for threads in range(1, xent._threads.max_threads() + 1):
        xent.set_num_threads(threads)
        out = np.empty_like(logits)
        inplace = logits.copy()
        results.append((run(logits, labels), run(logits, labels, out), out,
                        run(inplace, labels, inplace), inplace))
    flat = [[np.asarray(a).view(np.uint8) for a in _flatten(r)] for r in results]
    for other in flat[1:]:
        for a, b in zip(flat[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=[d.name for d in HALF_AND_SINGLE])
def test_broadcast_targets_identical_whatever_the_thread_count(rng, force_threads, dtype):
    """A row of targets broadcast over narrow rows split into blocks of any size."""
    logits = logits_of(rng, (53, 12), dtype)
    labels = np.broadcast_to(rng.random((1, 12)).astype(np.float32), logits.shape)
    results = []
    for threads in range(1, xent._threads.max_threads() + 1):
        xent.set_num_threads(threads)
        out = np.empty_like(logits)
        results.append((_fused.dense_rows(logits, labels, out), out))
    for (loss, lse), out in results[1:]:
        np.testing.assert_array_equal(loss, results[0][0][0])
        np.testing.assert_array_equal(out.view(np.uint8), results[0][1].view(np.uint8))
    ref_loss, _ = _kernels.dense_rows(logits, labels, np.empty_like(logits))
    assert_matches(results[0][0][0], ref_loss, np.float32, row_scale(logits) * 12,
                   logits_dtype=logits.dtype)


def _flatten(items):
    for item in items:
        if isinstance(item, tuple):
            yield from _flatten(item)
        else:
            yield item


def test_set_num_threads_rejects_bad_counts():
    with pytest.raises(ValueError, match="number of threads"):
        xent.set_num_threads(0)
    with pytest.raises(ValueError, match="number of threads"):
        xent.set_num_threads(xent._threads.max_threads() + 1)
    for bad in (1.5, "2", None, True):
        with pytest.raises(TypeError, match=rf"the number of threads must be an int; received "
                                            rf"{re.escape(repr(bad))}"):
            xent.set_num_threads(bad)
    xent.set_num_threads(np.int64(1))   # (an integer type that is not int)
    xent.set_num_threads(xent._threads.max_threads())


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_a_numba_num_threads_below_one_is_named(monkeypatch, bad):
    """Before numba is imported, the thread count comes from NUMBA_NUM_THREADS, read
    as numba reads it (``int``): a count below 1, on which numba's own import
    fails, is named; one that is not a number is numba's default (numba warns)."""
    monkeypatch.setitem(sys.modules, "numba", None)   # (as before `import numba`)
    monkeypatch.setenv("NUMBA_NUM_THREADS", bad)
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS must be a positive integer; "
                                         f"received '{bad}'"):
        xent._threads.max_threads()
    monkeypatch.setenv("NUMBA_NUM_THREADS", "+3")
    assert xent._threads.max_threads() == 3
    monkeypatch.delenv("NUMBA_NUM_THREADS")
    default = xent._threads.max_threads()
    for not_a_number in ("abc", "1.0"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", not_a_number)
        assert xent._threads.max_threads() == default


def test_get_num_threads_defaults_to_numba_pool():
    import numba

    assert 1 <= xent.get_num_threads() <= numba.config.NUMBA_NUM_THREADS


# -- through the public functions --------------------------------------------------------------

@pytest.fixture
def fused_on():
    """The public functions run on the fused kernels (whatever another test chose)."""
    with _core.using_kernels("fused"):
        assert _core.kernels() is _fused
        yield


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64], ids=["int32", "int64"])
def test_label_out_of_range_raises_tensorflows_error_on_the_fused_path(fused_on, label_dtype):
    logits = np.zeros((3, 4), np.float32)
    labels = np.array([0, 5, 1], label_dtype)
    with pytest.raises(xent.errors.InvalidArgumentError,
                       match=r"Received a label value of 5 which is outside the valid range of \[0, 4\)"):
        xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(xent.errors.InvalidArgumentError, match="label value of -1"):
        xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(logits, np.array([0, -1, 1], label_dtype))


def test_raw_op_backprop_out_is_the_logits_in_place(fused_on, rng):
    features = logits_of(rng, (4, 9), np.float32)
    labels = rng.integers(0, 9, size=4)
    want_loss, want_backprop = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features, labels)
    loss, backprop = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
        features, labels, backprop_out=features)
    assert np.shares_memory(backprop, features)
    np.testing.assert_array_equal(features, want_backprop)
    np.testing.assert_array_equal(loss, want_loss)


def test_set_kernels_switches_between_numpy_and_fused(rng):
    logits = logits_of(rng, (5, 40), np.float32)
    labels = rng.integers(0, 40, size=5)
    before = _core._state["kernels"]
    try:
        xent.set_kernels("numpy")
        assert xent.get_kernels() == "numpy" and _core.kernels() is _kernels
        on_numpy = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        xent.set_kernels("fused")
        assert xent.get_kernels() == "fused" and _core.kernels() is _fused
    finally:
        _core._state["kernels"] = before
    np.testing.assert_array_equal(on_numpy, _kernels.sparse_rows(logits, labels)[0])


def _python(code, **env):
    """Run `code` in a fresh interpreter with `env` added; (returncode, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=300)
    return done.returncode, done.stdout.strip(), done.stderr


def test_xent_kernels_numpy_in_the_environment_never_loads_numba():
    code = ("import sys, numpy as np, xent; "
            "xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0], logits=np.ones((1, 3), np.float32)); "
            "print(xent.get_kernels(), 'numba' in sys.modules)")
    code_, out, err = _python(code, XENT_KERNELS="numpy")
    assert (code_, out) == (0, "numpy False"), err


def test_a_bad_xent_kernels_value_is_a_clear_error():
    code = "import numpy as np, xent; xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0], logits=np.ones((1, 3), np.float32))"
    code_, _, err = _python(code, XENT_KERNELS="gpu")
    assert code_ != 0 and "XENT_KERNELS must be 'fused' or 'numpy'; received 'gpu'" in err


def test_a_long_compile_says_so_once_on_stderr(tmp_path):
    """A first call that compiles prints one line naming the CPU and numba's
    cache, once per process however many kernels compile; a process that loads
    the kernels from that cache prints nothing. The child lowers the notice's
    delay (the total compile seconds before it speaks, 1 s by default) so that
    the line cannot depend on how fast this machine compiles."""
    calls = ("f = xent.nn.sparse_softmax_cross_entropy_with_logits; "
             "f(labels=[0, 1], logits=np.ones((2, 3), np.float32)); "
             "f(labels=[0, 1], logits=np.ones((2, 3), ml_dtypes.bfloat16))")
    cold = ("import numpy as np, ml_dtypes, xent, xent._fused._notice as notice; "
            "notice.DELAY = 0.05; " + calls)
    code_, _, err = _python(cold, NUMBA_CACHE_DIR=str(tmp_path))
    assert code_ == 0, err
    lines = [line for line in err.splitlines() if line.startswith("xent: compiling kernels for ")]
    assert len(lines) == 1, err
    assert str(tmp_path) in lines[0] and "once; cached in" in lines[0]
    code_, _, err = _python("import numpy as np, ml_dtypes, xent; " + calls,
                            NUMBA_CACHE_DIR=str(tmp_path))
    assert code_ == 0 and "xent: compiling" not in err, err


def test_the_compile_notice_counts_seconds_over_several_compiles():
    """Compiles that are each shorter than the delay still speak once their
    total passes it (a fast machine compiles each kernel in under a second)."""
    import io
    import time
    from types import SimpleNamespace
    from xent._fused import _notice

    def kernel():
        pass
    kernel.__module__ = "xent._fused._rows"
    event = SimpleNamespace(data={"dispatcher": SimpleNamespace(py_func=kernel)})
    stream = io.StringIO()
    listener = _notice._CompileNotice(stream=stream, delay=1.0)
    for _ in range(2):
        listener.on_start(event)
        time.sleep(0.3)
        listener.on_end(event)
    assert stream.getvalue() == ""
    listener.on_start(event)
    time.sleep(0.8)
    listener.on_end(event)
    assert stream.getvalue().startswith("xent: compiling kernels for ") and listener.said


def test_the_compile_notice_says_nothing_without_a_stderr(monkeypatch, capsys):
    """With stderr closed (``2>&-``, pythonw: `sys.stderr` is None) the notice went to
    stdout (``print(file=None)``), into the program's own output."""
    from types import SimpleNamespace
    from xent._fused import _notice

    def kernel():
        pass
    kernel.__module__ = "xent._fused._rows"
    event = SimpleNamespace(data={"dispatcher": SimpleNamespace(py_func=kernel)})
    monkeypatch.setattr(sys, "stderr", None)
    listener = _notice._CompileNotice(delay=0.0)
    listener.on_start(event)
    listener._say(event.data["dispatcher"])
    listener.on_end(event)
    assert capsys.readouterr().out == ""


def test_a_cache_restamped_by_other_sources_is_neither_loaded_nor_saved(tmp_path, monkeypatch):
    """A process whose sources differ from the ones that last stamped the kernels'
    cache (a newer process re-stamped it after editing a helper) compiled and
    saved kernels from its old helpers, which every later process then loaded.
    Before each compile of one of xent's kernels the stamp is read again; a
    kernel whose cache is no longer this process's gets none (numba's
    NullCache). A stamp removed with its folder is written again."""
    from types import SimpleNamespace
    from numba.core import caching
    from xent._fused import _cache

    def kernel():
        pass
    kernel.__module__ = "xent._fused._rows"
    monkeypatch.setitem(_cache._state, "fingerprint", "ours")
    monkeypatch.setitem(_cache._state, "cache_dir", str(tmp_path))
    stamp = tmp_path / _cache._STAMP
    guard = _cache._StaleGuard()

    def compile_once():
        dispatcher = SimpleNamespace(py_func=kernel, _cache=object())
        guard.on_start(SimpleNamespace(data={"dispatcher": dispatcher}))
        return dispatcher._cache

    stamp.write_text("ours")
    assert not isinstance(compile_once(), caching.NullCache)
    stamp.write_text("a newer process's")
    assert isinstance(compile_once(), caching.NullCache)
    stamp.unlink()
    assert not isinstance(compile_once(), caching.NullCache)
    assert stamp.read_text() == "ours"


def test_import_xent_does_not_import_numba():
    code = "import sys, xent; print('numba' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# -- the kernels' own float conversions ----------------------------------------------------

def conversion_inputs():
    """float32 values around every bfloat16/float16 rounding case: ties both ways,
    subnormals, signed zeros, the largest finite values, random bit patterns."""
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 2 ** 16, 20_000).astype(np.uint32) << 16) | 0x8000
    edges = np.array([0, 0x80000000, 1, 0x807FFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000,
                      0x00008000, 0x00018000, 0x3F808000, 0x3F818000], np.uint32)
    values = np.concatenate([bits, ties, edges]).view(np.float32)
    return values[np.isfinite(values)]


@every_target
def test_half_precision_loads_are_exact_for_every_bit_pattern():
    """The kernels' float16 and bfloat16 loads (the CPU's conversion or the
    software one, `_formats.f16_to_f32`) give ml_dtypes' and NumPy's float32
    for all 65536 bit patterns, NaN for NaN."""
    from numba import njit

    @njit
    def load_all(hf, bf, out_h, out_b):
        for j in range(hf.shape[0]):
            out_h[j] = _formats.f16_to_f32(hf[j])
            out_b[j] = _formats.bf16_to_f32(bf[j])

    bits = np.arange(2 ** 16, dtype=np.uint16)
    out_h, out_b = np.empty(bits.shape, np.float32), np.empty(bits.shape, np.float32)
    load_all(bits.view(np.int16), bits, out_h, out_b)
    for got, want in ((out_h, bits.view(np.float16).astype(np.float32)),
                      (out_b, bits.view(BF16).astype(np.float32))):
        nan = np.isnan(want)
        np.testing.assert_array_equal(np.isnan(got), nan)
        np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@every_target
def test_finite_bfloat16_store_rounds_to_nearest_even_as_ml_dtypes():
    from numba import njit

    @njit
    def convert(values, out):
        for j in range(values.shape[0]):
            out[j] = _formats.finite_to_bf16(values[j])

    values = conversion_inputs()
    got = np.empty(values.shape, np.uint16)
    convert(values, got)
    np.testing.assert_array_equal(got, values.astype(BF16).view(np.uint16))


@every_target
def test_bfloat16_and_float16_stores_round_as_ml_dtypes_and_numpy():
    from numba import njit

    @njit
    def convert(values, bf, hf):
        for j in range(values.shape[0]):
            bf[j] = _formats.f32_to_bf16(values[j])
            hf[j] = _formats.f32_to_f16(values[j])

    values = np.concatenate([conversion_inputs(), np.float32([np.nan, np.inf, -np.inf])])
    bf, hf = np.empty(values.shape, np.uint16), np.empty(values.shape, np.int16)
    with np.errstate(over="ignore"):
        convert(values, bf, hf)
        want_bf, want_hf = values.astype(BF16), values.astype(np.float16)
    nan = np.isnan(values)
    np.testing.assert_array_equal(bf[~nan], want_bf[~nan].view(np.uint16))
    np.testing.assert_array_equal(hf[~nan], want_hf[~nan].view(np.int16))
    assert np.isnan(bf.view(BF16)[nan].astype(np.float32)).all()
    assert np.isnan(hf.view(np.float16)[nan]).all()


@every_target
def test_pass_b_hardware_bfloat16_rounding_equals_ml_dtypes():
    """Pass B rounds bfloat16 gradients with the CPU's conversion (`_scale_to_bf16`)
    in 64-entry blocks. It rounds like ml_dtypes; a range holding a product
    below the smallest normal float (which the instruction would flush) or a
    0 is redone in software, and still rounds like ml_dtypes."""
    from numba import njit

    @njit
    def pass_b_stores(e, out, f):
        n = np.uint64(e.shape[0])
        start = _scale._hardware_rounded(e, None, out, np.uint64(0), n, f)
        for j in range(start, n):
            _formats.store_finite(out, j, e[j] * f)
        return start

    values = np.abs(conversion_inputs())
    values = values[(values > 2.0 ** -100) & (values < 2.0 ** 100)][:100_000]
    factor = np.float32(0.37)
    hardware = _formats.hardware_bf16()   # without it, the software rounding does it all
    for e, blocks_done in [(values[:99_990], 99_968 if hardware else 0),
                           (np.concatenate([values[:300], np.float32([1e-39 / 0.37]),
                                            values[300:600]]), 0),
                           (np.concatenate([values[:300], np.float32([0.0]), values[300:600]]), 0)]:
        got = np.empty(e.shape, np.uint16)
        assert pass_b_stores(e, got, factor) == blocks_done
        np.testing.assert_array_equal(got, (e * factor).astype(BF16).view(np.uint16))


@every_target
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64], ids=["int32", "int64"])
def test_label_check_agrees_with_numpy(rng, label_dtype):
    """The compiled range check against NumPy's min and max: in range, one label
    just outside at either end (at every position of a short batch, so each
    lane of the vector loop and its tail sees one), the extremes, empty."""
    for n in (0, 1, 7, 33):
        labels = rng.integers(0, 10, n).astype(label_dtype)
        assert _fused.labels_fit(labels, 10) == _kernels.labels_fit(labels, 10) == True  # noqa: E712
        for position in range(n):
            for bad in (-1, 10, np.iinfo(label_dtype).min, np.iinfo(label_dtype).max):
                wrong = labels.copy()
                wrong[position] = bad
                assert _fused.labels_fit(wrong, 10) is False
                assert _kernels.labels_fit(wrong, 10) is False
    edge = np.array([0, 9], label_dtype)
    assert _fused.labels_fit(edge, 10) and not _fused.labels_fit(edge, 9)
