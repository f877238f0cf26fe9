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
