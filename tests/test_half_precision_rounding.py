"""Half-precision results are the float64 truth rounded once, where TensorFlow rounds twice.

Keras (and tf.compat.v1.losses) normalise probabilities and smooth labels in
the predictions' float16/bfloat16, so their results land up to 2 ulps from the
exact value. xent does that arithmetic in float32 and rounds the result once:
within half an ulp of the float64 truth, plus float32's own rounding.
"""
import ml_dtypes
import numpy as np
import pytest

import xent

HALF = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
C = 7


def truth(y_true, y_pred, from_logits, label_smoothing):
    """Keras' categorical cross-entropy in float64 (the clip's bounds in y_pred's dtype)."""
    y = y_true.astype(np.float64) * (1 - label_smoothing) + label_smoothing / C
    x = y_pred.astype(np.float64)
    if from_logits:
        m = x.max(-1, keepdims=True)
        return (y * (m + np.log(np.exp(x - m).sum(-1, keepdims=True))) - y * x).sum(-1)
    lo, hi = (float(np.array(b, y_pred.dtype)) for b in (1e-7, 1 - 1e-7))
    return -(y * np.log(np.clip(x / x.sum(-1, keepdims=True), lo, hi))).sum(-1)


def assert_rounded_once(got, want, dtype):
    """|got - want| within half an ulp of `dtype` at want, plus float32's 2**-20."""
    ulp = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
    err = np.abs(np.asarray(got).astype(np.float64) - want)
    assert (err <= 0.5 * ulp + 2.0 ** -20 * np.abs(want)).all(), (err / ulp).max()


@pytest.mark.parametrize("from_logits, label_smoothing", [(False, 0.0), (True, 0.1), (True, 0.3)])
@pytest.mark.parametrize("dtype", HALF, ids=[d.name for d in HALF])
def test_keras_categorical_crossentropy_rounds_once(rng, dtype, from_logits, label_smoothing):
    y_pred = ((rng.standard_normal((256, C)) * 3) if from_logits else rng.random((256, C))).astype(dtype)
    y_true = np.eye(C, dtype=np.float32)[rng.integers(0, C, 256)]
    got = xent.keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=from_logits,
                                                     label_smoothing=label_smoothing)
    assert got.dtype == dtype
    assert_rounded_once(got, truth(y_true, y_pred, from_logits, label_smoothing), dtype)


@pytest.mark.parametrize("dtype", HALF, ids=[d.name for d in HALF])
def test_v1_softmax_cross_entropy_with_label_smoothing_rounds_once(rng, dtype):
    logits = (rng.standard_normal((256, C)) * 3).astype(dtype)
    onehot = np.eye(C, dtype=np.float32)[rng.integers(0, C, 256)]
    got = xent.losses.softmax_cross_entropy(onehot, logits, label_smoothing=0.5,
                                            reduction=xent.losses.Reduction.NONE)
    assert got.dtype == dtype
    assert_rounded_once(got, truth(onehot, logits, True, 0.5), dtype)


def sparse_truth(logits, labels):
    """The sparse loss of each row in float64, the logits as given."""
    x = logits.astype(np.float64)
    m = x.max(-1)
    return m + np.log(np.exp(x - m[:, None]).sum(-1)) - x[np.arange(len(x)), labels]


@pytest.mark.parametrize("classes", [33, 1000, 5000], ids=["narrow", "one-chunk", "chunks"])
def test_float16_sparse_losses_round_once_on_every_path(rng, classes):
    """float16 sparse losses, loss only and with the gradient, are the float64 truth
    rounded once, as TensorFlow's. With bfloat16's cheaper exp (1e-4), 95 of 20000
    rows of 33 classes were a rounding away from it (bfloat16's coarser ulp keeps
    that exp: its results stay within one ulp, README)."""
    logits = (rng.standard_normal((4000 if classes < 5000 else 800, classes)) * 5).astype(np.float16)
    labels = rng.integers(0, classes, len(logits))
    want = sparse_truth(logits, labels)
    loss_only = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with_grad = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(logits, labels).loss
    for got in (loss_only, with_grad):
        assert got.dtype == np.float16
        assert_rounded_once(got, want, np.float16)
