"""NumPy calls hold no logits-sized temporaries (README, "Speed"), counted with
`tracemalloc`, which sees every NumPy data buffer: the peak of new memory
during a warm call, in units of the logits' bytes, beside the outputs.

Half-precision dense labels were widened to a float32 copy (2x the logits),
label smoothing made three float32 arrays (6x), and Keras' `ignore_class`
a zeros array beside its `where` (an independent review measured each).
"""
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import xent

N, C = 256, 4096   # 4 MiB of float32 logits: per-row buffers are far below 1% of them
HALF = [ml_dtypes.bfloat16, np.float16]


def _peak_new_bytes(call):
    """Peak memory `call` allocates beyond what was held before it (its result included)."""
    call()   # (compiles the kernel, fills any caches)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    del result
    return peak


def _inputs(dtype):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((N, C), np.float32).astype(dtype)
    labels = rng.integers(0, C, N)
    onehot = np.zeros((N, C), dtype)
    onehot[np.arange(N), labels] = 1
    return logits, labels, onehot


# What a call may make beyond its small outputs: nothing; one float32 array of
# the logits' shape (smoothed targets, xent's precision choice); or one array
# of the logits' dtype (Keras' own `where(mask, y_pred, 0)`).
NOTHING, FLOAT32, LOGITS_DTYPE = 0, 4, None

CALLS = {   # (the call, what it may make)
    "nn dense": (lambda x, lab, y: xent.nn.softmax_cross_entropy_with_logits(labels=y, logits=x), NOTHING),
    "v1 dense": (lambda x, lab, y: xent.losses.softmax_cross_entropy(y, x), NOTHING),
    "v1 dense smoothed": (lambda x, lab, y: xent.losses.softmax_cross_entropy(
        y, x, label_smoothing=0.1), FLOAT32),
    "keras function": (lambda x, lab, y: xent.keras.losses.categorical_crossentropy(
        y, x, from_logits=True), NOTHING),
    "keras function smoothed": (lambda x, lab, y: xent.keras.losses.categorical_crossentropy(
        y, x, from_logits=True, label_smoothing=0.1), FLOAT32),
    "keras ignore_class": (lambda x, lab, y: xent.keras.losses.sparse_categorical_crossentropy(
        np.where(lab % 3 == 0, 0, lab), x, from_logits=True, ignore_class=0), LOGITS_DTYPE),
    "raw dense in place": (lambda x, lab, y: xent.raw_ops.SoftmaxCrossEntropyWithLogits(
        x, y, backprop_out=x), NOTHING),
}


@pytest.mark.parametrize("dtype", HALF + [np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CALLS))
def test_numpy_calls_make_no_logits_sized_temporaries(name, dtype):
    call, itemsize = CALLS[name]
    logits, labels, onehot = _inputs(dtype)
    before = (logits.copy(), onehot.copy())
    peak = _peak_new_bytes(lambda: call(logits, labels, onehot))
    allowed = logits.size * (logits.itemsize if itemsize is None else itemsize)
    assert peak <= allowed + 0.05 * logits.nbytes, f"{peak / logits.nbytes:.2f}x the logits"
    if name != "raw dense in place":
        np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(onehot, before[1])


@pytest.mark.parametrize("wrap", [np.asarray, np.asmatrix, np.ma.masked_array],
                         ids=["ndarray", "matrix", "masked"])
def test_smoothing_in_place_never_touches_the_callers_labels(wrap):
    """Smoothing scales its own float32 copy in place; labels already float32
    (whatever array type holds them) are the caller's memory, left alone."""
    onehot = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    logits = np.zeros((4, 3), np.float32)
    labels = wrap(onehot.copy())
    xent.losses.softmax_cross_entropy(labels, logits, label_smoothing=0.3)
    xent.keras.losses.categorical_crossentropy(labels, logits, from_logits=True, label_smoothing=0.3)
    np.testing.assert_array_equal(np.asarray(labels), onehot)


class _RecordingKernels:
    """The kernel module in use, recording the labels each dense kernel call reads."""

    def __init__(self, inner):
        self.inner, self.labels = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def dense_rows(self, x, y, *args, **kwargs):
        self.labels.append(y)
        return self.inner.dense_rows(x, y, *args, **kwargs)


@pytest.fixture
def recording_kernels(monkeypatch):
    from xent import _core
    recorder = _RecordingKernels(_core.kernels())
    monkeypatch.setitem(_core._state, "kernels", recorder)
    return recorder


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_half_dense_labels_reach_the_kernel_as_they_are(dtype, recording_kernels):
    """A torch step's half-precision dense labels were cast to a float32 copy
    (2x the logits) before the kernel; the kernel now reads the caller's
    tensor, and the gradients still match the float32-labels call."""
    torch = pytest.importorskip("torch")
    from xent._torch._views import numpy_view
    logits, labels, onehot = _inputs(getattr(ml_dtypes, dtype) if dtype == "bfloat16" else np.float16)
    x = torch.from_numpy(logits.astype(np.float32)).to(getattr(torch, dtype)).requires_grad_()
    y = torch.from_numpy(onehot.astype(np.float32)).to(getattr(torch, dtype)).requires_grad_()
    loss = xent.nn.softmax_cross_entropy_with_logits(labels=y, logits=x)
    loss.sum().backward()
    assert len(recording_kernels.labels) == 1
    assert np.shares_memory(recording_kernels.labels[0], numpy_view(y.detach()))
    x32 = x.detach().clone().requires_grad_()
    y32 = y.detach().float().requires_grad_()
    loss32 = xent.nn.softmax_cross_entropy_with_logits(labels=y32, logits=x32)
    loss32.sum().backward()
    assert loss.dtype == x.dtype and x.grad.dtype == x.dtype and y.grad.dtype == y.dtype
    torch.testing.assert_close(loss, loss32, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x32.grad, rtol=0, atol=0)
    torch.testing.assert_close(y.grad, y32.grad.to(y.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_jax_half_dense_labels_reach_the_kernel_as_they_are(dtype, recording_kernels):
    """The same for a jitted JAX step: the callback's kernel reads half-precision
    labels, where a float32 cast made a buffer twice the logits."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    logits, labels, onehot = _inputs(getattr(ml_dtypes, dtype) if dtype == "bfloat16" else np.float16)
    x, y = jnp.asarray(logits), jnp.asarray(onehot)

    def step(x, y):
        return xent.nn.softmax_cross_entropy_with_logits(labels=y, logits=x).astype(jnp.float32).sum()

    grads = jax.jit(jax.grad(step, argnums=(0, 1)))(x, y)
    assert [np.dtype(a.dtype) for a in recording_kernels.labels] == [np.dtype(y.dtype)]
    grads32 = jax.jit(jax.grad(lambda x, y: step(x, y.astype(jnp.float32)), argnums=(0, 1)))(x, y)
    for got, want in zip(grads, grads32):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_a_float32_gradient_of_half_logits_widens_them_a_block_at_a_time(kind, monkeypatch):
    """float16's backprop on JAX's CPU kernel is float32 (TF's precision), so the kernel
    gets float32 logits (and dense targets): they were widened whole, two (dense:
    four) times the float16 logits beside the gradient; now a block of rows at a
    time, with the same bits."""
    from xent._fused import _launch
    logits, labels, onehot = _inputs(np.float16)
    targets = labels if kind == "sparse" else onehot
    rows = getattr(_launch, f"{kind}_rows")
    whole_grad = np.empty(logits.shape, np.float32)
    monkeypatch.setattr(_launch, "_WIDENED_ELEMENTS", logits.size)   # (one block: the whole)
    whole = rows(logits, targets, whole_grad)
    monkeypatch.setattr(_launch, "_WIDENED_ELEMENTS", logits.size // 16)
    grad = np.empty(logits.shape, np.float32)
    peak = _peak_new_bytes(lambda: rows(logits, targets, grad))
    assert peak <= 0.3 * logits.nbytes, f"{peak / logits.nbytes:.2f}x the logits"
    for got, want in zip(rows(logits, targets, grad) + (grad,), whole + (whole_grad,)):
        np.testing.assert_array_equal(got, want)
