"""`xent.keras.losses` against `tf.keras.losses` (Keras 3 on the TensorFlow backend).

Every expected value is computed live by tf.keras on the same inputs. float32
results are compared with rtol 1e-6 plus a few float32 ulps of the largest
log-probability involved (|log 1e-7| = 16.1 when probabilities are clipped);
float64 results with rtol 1e-10; half-precision results against a float64
truth (tf.keras run in float64 on the half-rounded inputs) within one ulp of
the output dtype.
"""
import math
import re
import warnings

import ml_dtypes
import numpy as np
import pytest

from oracle import assert_within_one_ulp, tf_message
from pairwise import pairwise
from xent import errors as xerrors
from xent import losses as xent_losses
from xent.keras import losses as xk

KERAS3_REDUCTIONS = ("sum_over_batch_size", "sum", "none", None, "mean",
                     "mean_with_sample_weight")
# xent also takes tf-keras's "auto", which means sum_over_batch_size.
ALL_REDUCTIONS = KERAS3_REDUCTIONS + ("auto",)
EPS32 = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------- helpers
def _tf_reduction(reduction):
    """The Keras 3 reduction TF is asked for: "auto" is tf-keras's sum_over_batch_size."""
    return "sum_over_batch_size" if reduction == "auto" else reduction


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _predictions(kind, shape, rng):
    """y_pred of `shape` ([..., C]): logits, or probabilities of several flavours."""
    if kind == "logits":
        return rng.normal(0.0, 3.0, shape).astype(np.float32)
    if kind == "softmax":
        return _softmax(rng.normal(0.0, 2.0, shape)).astype(np.float32)
    if kind == "unnormalized":  # rows do not sum to 1: renormalisation matters
        return rng.uniform(0.05, 1.0, shape).astype(np.float32)
    if kind == "clipping_bites":  # exact zeros and ones, and [0, .25, .25]-style rows
        p = np.zeros(shape, np.float32)
        flat = p.reshape(-1, shape[-1])
        for i, row in enumerate(flat):
            pattern = i % 3
            if pattern == 0:
                row[:] = 0.25
                row[0] = 0.0
            elif pattern == 1:
                row[i % shape[-1]] = 1.0
            else:
                row[:] = rng.uniform(0.0, 1.0, shape[-1])
                row[rng.integers(shape[-1])] = 0.0
        return p
    raise AssertionError(kind)


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def _assert_close(actual, expected, scale=16.2):
    """Match TF's result in dtype, shape and value (tolerance by dtype)."""
    actual, expected = np.asarray(actual), _np(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.dtype == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=4 * EPS32 * scale)


def _scale(y_pred, from_logits):
    return max(1.0, float(np.max(np.abs(y_pred)))) if from_logits else 16.2


def _sample_weight(kind, shape, rng):
    """sample_weight layouts for per-example losses of `shape`."""
    if kind is None:
        return None
    if kind == "python_scalar":
        return 2.3
    if kind == "array_scalar":
        return np.array(0.5)
    if kind == "same_rank":
        return rng.uniform(0.2, 2.0, shape)
    if kind == "batch_column":  # [batch, 1]
        return rng.uniform(0.2, 2.0, (shape[0], 1))
    if kind == "trailing_row":  # [1, t] against [b, t]
        return rng.uniform(0.2, 2.0, (1,) + shape[1:])
    if kind == "some_zero":
        w = rng.uniform(0.2, 2.0, shape)
        w.reshape(-1)[::2] = 0.0
        return w
    if kind == "all_zero":
        return np.zeros(shape)
    raise AssertionError(kind)


SPARSE_SHAPES = {1: (5,), 2: (3, 4), 3: (2, 2, 3)}
WEIGHT_KINDS_RANK1 = (None, "python_scalar", "array_scalar", "same_rank", "batch_column",
                      "some_zero", "all_zero")
WEIGHT_KINDS_RANK2 = (None, "python_scalar", "same_rank", "batch_column", "trailing_row",
                      "some_zero")


# --------------------------------------------------------------------------- functions
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("kind", ["logits", "softmax", "unnormalized", "clipping_bites"])
def test_sparse_categorical_crossentropy_function_matches_tf(keras, rng, kind, rank, dtype):
    from_logits = kind == "logits"
    shape = SPARSE_SHAPES[rank]
    y_true = rng.integers(0, 3, shape)
    y_pred = _predictions(kind, shape + (3,), rng).astype(dtype)
    expected = keras.losses.sparse_categorical_crossentropy(y_true, y_pred,
                                                            from_logits=from_logits)
    actual = xk.sparse_categorical_crossentropy(y_true, y_pred, from_logits=from_logits)
    _assert_close(actual, expected, _scale(y_pred, from_logits))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("kind", ["logits", "softmax", "unnormalized", "clipping_bites"])
def test_categorical_crossentropy_function_matches_tf(keras, rng, kind, rank, dtype,
                                                      label_smoothing):
    from_logits = kind == "logits"
    shape = SPARSE_SHAPES[rank]
    y_true = np.eye(3)[rng.integers(0, 3, shape)]
    y_pred = _predictions(kind, shape + (3,), rng).astype(dtype)
    expected = keras.losses.categorical_crossentropy(
        y_true, y_pred, from_logits=from_logits, label_smoothing=label_smoothing)
    actual = xk.categorical_crossentropy(y_true, y_pred, from_logits=from_logits,
                                         label_smoothing=label_smoothing)
    _assert_close(actual, expected, _scale(y_pred, from_logits))


@pytest.mark.parametrize("label", [0, 1])
def test_clipping_order_sparse_renormalises_after_clipping(keras, label):
    """Sparse: clip p=[0, .25, .25] to [1e-7, 1-1e-7], then log-softmax renormalises."""
    y_pred = np.array([[0.0, 0.25, 0.25]], np.float32)
    expected = keras.losses.sparse_categorical_crossentropy(np.array([label]), y_pred)
    actual = xk.sparse_categorical_crossentropy(np.array([label]), y_pred)
    _assert_close(actual, expected)
    if label == 0:  # -log(1e-7 / (0.5 + 1e-7)), not -log(1e-7)
        np.testing.assert_allclose(actual, [-np.log(1e-7 / 0.5000001)], rtol=1e-5)


@pytest.mark.parametrize("label", [0, 1])
def test_clipping_order_categorical_normalises_before_clipping(keras, label):
    """Categorical: divide by the row sum first, then clip; no renormalisation after."""
    y_pred = np.array([[0.0, 0.25, 0.25]], np.float32)
    y_true = np.eye(3, dtype=np.float32)[[label]]
    expected = keras.losses.categorical_crossentropy(y_true, y_pred)
    actual = xk.categorical_crossentropy(y_true, y_pred)
    _assert_close(actual, expected)
    if label == 0:  # -log(1e-7) exactly: the clipped 1e-7 is not renormalised
        np.testing.assert_allclose(actual, [-np.log(1e-7)], rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64],
                         ids=["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("function", ["sparse", "categorical"])
def test_functions_keep_y_pred_dtype(keras, rng, function, dtype):
    logits = rng.normal(0.0, 2.0, (4, 5)).astype(dtype)
    labels = rng.integers(0, 5, 4)
    if function == "sparse":
        actual = xk.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        truth_fn = keras.losses.sparse_categorical_crossentropy
        truth = truth_fn(labels, logits.astype(np.float64), from_logits=True)
    else:
        actual = xk.categorical_crossentropy(np.eye(5)[labels], logits, from_logits=True)
        truth_fn = keras.losses.categorical_crossentropy
        truth = truth_fn(np.eye(5)[labels], logits.astype(np.float64), from_logits=True)
    if dtype in (np.float32, np.float64):
        expected = truth_fn(labels if function == "sparse" else np.eye(5)[labels], logits,
                            from_logits=True)
        _assert_close(actual, expected, _scale(logits, True))
    else:
        assert_within_one_ulp(actual, _np(truth), dtype)


def test_sparse_function_float_labels_are_cast_like_tf(keras, rng):
    y_pred = _predictions("softmax", (4, 3), rng)
    y_true = np.array([0.0, 2.0, 1.0, 2.0])
    expected = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
    _assert_close(xk.sparse_categorical_crossentropy(y_true, y_pred), expected)


@pytest.mark.parametrize("from_logits", [True, False])
def test_sparse_scalar_predictions_get_keras_rank_error_not_an_index_error(keras, from_logits):
    """A 0-d y_pred: TF's Keras fails with an IndexError while squeezing the labels
    (it reads y_true.shape[-1]); xent gives Keras' own rank message, which names it."""
    with pytest.raises(IndexError):
        keras.losses.sparse_categorical_crossentropy(np.array(1), np.float32(1.0),
                                                     from_logits=from_logits)
    for call in (xk.sparse_categorical_crossentropy,
                 xk.SparseCategoricalCrossentropy(from_logits=from_logits)):
        kwargs = {"from_logits": from_logits} if call is xk.sparse_categorical_crossentropy else {}
        with pytest.raises(ValueError, match=re.escape(
                "Argument `output` must be at least rank 1. Received: output.shape=()")):
            call(np.array(1), np.float32(1.0), **kwargs)


@pytest.mark.parametrize("ignore_class", [None, 0])
@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_sparse_nan_label_is_out_of_range_like_tf(keras, rng, framework, ignore_class):
    """TF casts a NaN float label to int64's minimum (x86): out of range, its error.
    XLA casts NaN to 0: on JAX it was class 0's loss, silently, even with
    ignore_class=0. Eager calls raise TF's error; under jit its row is NaN."""
    y_true = np.array([0.0, np.nan, 1.0], np.float32)
    y_pred = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(Exception, match="outside the valid range") as tf_error:
        keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True,
                                                     ignore_class=ignore_class)
    convert = {"numpy": np.asarray, "torch": pytest.importorskip("torch").as_tensor,
               "jax": pytest.importorskip("jax.numpy").asarray}[framework]
    with pytest.raises(xerrors.InvalidArgumentError) as error:
        xk.sparse_categorical_crossentropy(convert(y_true), convert(y_pred), from_logits=True,
                                           ignore_class=ignore_class)
    if framework == "jax":   # (without x64, JAX's labels are int32: their minimum)
        import jax
        wanted = str(np.iinfo(np.int64 if jax.config.jax_enable_x64 else np.int32).min)
        assert f"Received a label value of {wanted} which is outside the valid range of [0, 4)" \
            in str(error.value)
    else:
        assert str(error.value) == tf_message(tf_error.value)
    if framework == "jax":
        import jax
        got = np.asarray(jax.jit(lambda y, x: xk.sparse_categorical_crossentropy(
            y, x, from_logits=True, ignore_class=ignore_class))(convert(y_true), convert(y_pred)))
        assert np.isnan(got[1])
        kept = keras.losses.sparse_categorical_crossentropy(y_true[[0, 2]], y_pred[[0, 2]],
                                                            from_logits=True, ignore_class=ignore_class)
        _assert_close(got[[0, 2]], kept)


@pytest.mark.parametrize("rank", [1, 2])
def test_sparse_function_trailing_unit_labels_squeezed_like_tf(keras, rng, rank):
    shape = SPARSE_SHAPES[rank]
    y_true = rng.integers(0, 4, shape + (1,))
    y_pred = _predictions("softmax", shape + (4,), rng)
    expected = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
    _assert_close(xk.sparse_categorical_crossentropy(y_true, y_pred), expected)


@pytest.mark.parametrize("ignore_class", [-1, 255, 0])
@pytest.mark.parametrize("from_logits", [True, False])
def test_sparse_function_ignore_class_zeroes_entries_like_tf(keras, rng, from_logits,
                                                             ignore_class):
    y_true = np.array([[1, ignore_class, 2, 0], [ignore_class, 2, 1, 1]])
    y_pred = _predictions("logits" if from_logits else "softmax", (2, 4, 3), rng)
    expected = keras.losses.sparse_categorical_crossentropy(
        y_true, y_pred, from_logits=from_logits, ignore_class=ignore_class)
    actual = xk.sparse_categorical_crossentropy(y_true, y_pred, from_logits=from_logits,
                                                ignore_class=ignore_class)
    _assert_close(actual, expected, _scale(y_pred, from_logits))
    assert np.all(np.asarray(actual)[y_true == ignore_class] == 0.0)


def test_sparse_function_accepts_python_lists_as_documented(keras):
    """The docstring passes lists; TF 2.21's Keras trips on `.shape`, so check numbers."""
    expected = keras.losses.sparse_categorical_crossentropy(
        np.array([1, 2]), np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], np.float32))
    actual = xk.sparse_categorical_crossentropy([1, 2], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]])
    _assert_close(actual, expected)
    np.testing.assert_allclose(actual, [0.0513, 2.303], atol=5e-4)


def test_categorical_function_python_lists_match_documented_example(keras):
    y_true = [[0, 1, 0], [0, 0, 1]]
    y_pred = [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]
    expected = keras.losses.categorical_crossentropy(y_true, y_pred)
    actual = xk.categorical_crossentropy(y_true, y_pred)
    _assert_close(actual, expected)
    np.testing.assert_allclose(actual, [0.0513, 2.303], atol=5e-4)


def test_backend_docstring_example_categorical_probabilities(keras):
    a = np.eye(3, dtype=np.float32)
    b = np.array([[0.9, 0.05, 0.05], [0.05, 0.89, 0.06], [0.05, 0.01, 0.94]], np.float32)
    expected = keras.losses.categorical_crossentropy(a, b)
    actual = xk.categorical_crossentropy(a, b)
    _assert_close(actual, expected)
    np.testing.assert_allclose(np.round(actual, 5), [0.10536, 0.11653, 0.06188])
    np.testing.assert_allclose(xk.categorical_crossentropy(a, a), [0.0, 0.0, 0.0], atol=1e-6)


def test_ops_docstring_example_sparse_probabilities(keras):
    target = np.array([0, 1, 2], np.int32)
    output = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]], np.float32)
    expected = keras.losses.sparse_categorical_crossentropy(target, output)
    actual = xk.sparse_categorical_crossentropy(target, output)
    _assert_close(actual, expected)
    np.testing.assert_allclose(actual, [0.10536056, 0.22314355, 0.6931472], rtol=1e-6)


# (from_logits=True, axis=-2) is left out: TF 2.21 itself fails there (tf.range(0, -2)).
@pytest.mark.parametrize("from_logits,axis", [(True, 1), (False, 1), (False, -2)])
def test_categorical_axis_channels_first_matches_tf(keras, rng, from_logits, axis):
    y_true = np.moveaxis(np.eye(4)[rng.integers(0, 4, (2, 3))], -1, 1)  # [b, C, t]
    y_pred = np.moveaxis(_predictions("logits" if from_logits else "unnormalized",
                                      (2, 3, 4), rng), -1, 1)
    expected = keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=from_logits,
                                                     axis=axis)
    actual = xk.categorical_crossentropy(y_true, y_pred, from_logits=from_logits, axis=axis)
    _assert_close(actual, expected, _scale(y_pred, from_logits))
    cls_expected = keras.losses.CategoricalCrossentropy(from_logits=from_logits, axis=axis)(
        y_true, y_pred)
    _assert_close(xk.CategoricalCrossentropy(from_logits=from_logits, axis=axis)(y_true, y_pred),
                  cls_expected, _scale(y_pred, from_logits))


def test_sparse_axis_last_index_equals_minus_one(keras, rng):
    y_true = rng.integers(0, 3, (2, 4))
    y_pred = _predictions("softmax", (2, 4, 3), rng)
    expected = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, axis=2)
    _assert_close(xk.sparse_categorical_crossentropy(y_true, y_pred, axis=2), expected)
    _assert_close(xk.sparse_categorical_crossentropy(y_true, y_pred, axis=-1), expected)


def test_sparse_axis_other_than_last_is_refused_like_tf_backend(keras, rng):
    y_true = rng.integers(0, 2, (4, 4))
    y_pred = np.moveaxis(_predictions("softmax", (4, 4, 2), rng), 2, 0)
    message = re.escape("Only axis=-1 is currently supported. Received: axis=0")
    with pytest.raises(ValueError, match=message):
        keras.losses.SparseCategoricalCrossentropy(axis=0)(y_true, y_pred)
    with pytest.raises(ValueError, match=message):
        xk.SparseCategoricalCrossentropy(axis=0)(y_true, y_pred)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("axis", [3, -4, 5])
def test_categorical_axis_out_of_range_is_invalid_argument_like_tf(keras, tf, axis, from_logits):
    """TF raises InvalidArgumentError for either kind of prediction; so does xent
    (NumPy's AxisError leaked from the probabilities' path)."""
    y_pred, y_true = np.zeros((2, 3, 4), np.float32), np.full((2, 3, 4), 0.25, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=from_logits, axis=axis)
    kind = "logits" if from_logits else "probabilities"
    with pytest.raises(xerrors.InvalidArgumentError,
                       match=re.escape(f"for {kind} of rank 3; received axis={axis}")):
        xk.categorical_crossentropy(y_true, y_pred, from_logits=from_logits, axis=axis)


def test_categorical_axis_bool_is_refused_like_tf(keras):
    y = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="`axis` must be of type `int`"):
        keras.losses.categorical_crossentropy(y, y, axis=True)
    with pytest.raises(ValueError, match="`axis` must be of type `int`"):
        xk.categorical_crossentropy(y, y, axis=True)


# Keras smooths whenever label_smoothing is truthy, so a negative value is applied too.
@pytest.mark.parametrize("label_smoothing", [-0.1, 0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("from_logits", [True, False])
def test_categorical_label_smoothing_matches_tf(keras, rng, from_logits, label_smoothing):
    y_true = np.eye(4)[rng.integers(0, 4, 6)]
    y_pred = _predictions("logits" if from_logits else "clipping_bites", (6, 4), rng)
    expected = keras.losses.CategoricalCrossentropy(
        from_logits=from_logits, label_smoothing=label_smoothing, reduction=None)(y_true, y_pred)
    actual = xk.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=label_smoothing,
                                        reduction=None)(y_true, y_pred)
    _assert_close(actual, expected, _scale(y_pred, from_logits))


# --------------------------------------------------------------------------- classes
@pytest.mark.parametrize("from_logits,weight_kind,reduction",
                         pairwise((True, False), WEIGHT_KINDS_RANK1, ALL_REDUCTIONS))
def test_sparse_class_rank1_matches_tf(keras, rng, from_logits, weight_kind, reduction):
    y_true = rng.integers(0, 4, (5,))
    y_pred = _predictions("logits" if from_logits else "unnormalized", (5, 4), rng)
    sample_weight = _sample_weight(weight_kind, (5,), rng)
    expected = keras.losses.SparseCategoricalCrossentropy(
        from_logits=from_logits, reduction=_tf_reduction(reduction))(
        y_true, y_pred, sample_weight=sample_weight)
    actual = xk.SparseCategoricalCrossentropy(from_logits=from_logits, reduction=reduction)(
        y_true, y_pred, sample_weight=sample_weight)
    _assert_close(actual, expected, _scale(y_pred, from_logits))


@pytest.mark.parametrize("from_logits,weight_kind,reduction",
                         pairwise((True, False), WEIGHT_KINDS_RANK2, ALL_REDUCTIONS))
def test_sparse_class_rank2_matches_tf(keras, rng, from_logits, weight_kind, reduction):
    y_true = rng.integers(0, 3, (3, 4))
    y_pred = _predictions("logits" if from_logits else "clipping_bites", (3, 4, 3), rng)
    sample_weight = _sample_weight(weight_kind, (3, 4), rng)
    expected = keras.losses.SparseCategoricalCrossentropy(
        from_logits=from_logits, reduction=_tf_reduction(reduction))(
        y_true, y_pred, sample_weight=sample_weight)
    actual = xk.SparseCategoricalCrossentropy(from_logits=from_logits, reduction=reduction)(
        y_true, y_pred, sample_weight=sample_weight)
    _assert_close(actual, expected, _scale(y_pred, from_logits))


@pytest.mark.parametrize("from_logits,weight_kind,reduction",
                         pairwise((True, False), WEIGHT_KINDS_RANK1, ALL_REDUCTIONS))
def test_categorical_class_rank1_matches_tf(keras, rng, from_logits, weight_kind, reduction):
    y_true = np.eye(4)[rng.integers(0, 4, (5,))]
    y_pred = _predictions("logits" if from_logits else "clipping_bites", (5, 4), rng)
    sample_weight = _sample_weight(weight_kind, (5,), rng)
    expected = keras.losses.CategoricalCrossentropy(
        from_logits=from_logits, reduction=_tf_reduction(reduction))(
        y_true, y_pred, sample_weight=sample_weight)
    actual = xk.CategoricalCrossentropy(from_logits=from_logits, reduction=reduction)(
        y_true, y_pred, sample_weight=sample_weight)
    _assert_close(actual, expected, _scale(y_pred, from_logits))


@pytest.mark.parametrize("reduction", ALL_REDUCTIONS)
@pytest.mark.parametrize("weight_kind", WEIGHT_KINDS_RANK2)
def test_categorical_class_rank2_matches_tf(keras, rng, weight_kind, reduction):
    y_true = np.eye(3)[rng.integers(0, 3, (3, 4))]
    y_pred = _predictions("unnormalized", (3, 4, 3), rng)
    sample_weight = _sample_weight(weight_kind, (3, 4), rng)
    expected = keras.losses.CategoricalCrossentropy(reduction=_tf_reduction(reduction))(
        y_true, y_pred, sample_weight=sample_weight)
    actual = xk.CategoricalCrossentropy(reduction=reduction)(
        y_true, y_pred, sample_weight=sample_weight)
    _assert_close(actual, expected)


@pytest.mark.parametrize("reduction", ALL_REDUCTIONS)
def test_sparse_class_column_y_true_equals_flat_y_true(keras, rng, reduction):
    y_true = rng.integers(0, 3, (6,))
    y_pred = _predictions("softmax", (6, 3), rng)
    tf_loss = keras.losses.SparseCategoricalCrossentropy(reduction=_tf_reduction(reduction))
    xent_loss = xk.SparseCategoricalCrossentropy(reduction=reduction)
    for labels in (y_true, y_true[:, None]):
        _assert_close(xent_loss(labels, y_pred), tf_loss(labels, y_pred))


def test_sparse_class_float_y_true_matches_tf(keras, rng):
    y_true = np.array([[0.0], [2.0], [1.0]], np.float32)
    y_pred = _predictions("softmax", (3, 3), rng)
    expected = keras.losses.SparseCategoricalCrossentropy()(y_true, y_pred)
    _assert_close(xk.SparseCategoricalCrossentropy()(y_true, y_pred), expected)


def test_batch_column_sample_weight_with_no_reduction_keeps_tf_shape(keras, rng):
    """[batch, 1] sample_weight expands [batch] losses: "none" returns [batch, 1]."""
    y_true = rng.integers(0, 3, (4,))
    y_pred = _predictions("softmax", (4, 3), rng)
    sample_weight = rng.uniform(0.5, 2.0, (4, 1))
    for tf_cls, xent_cls, labels in (
        (keras.losses.SparseCategoricalCrossentropy, xk.SparseCategoricalCrossentropy, y_true),
        (keras.losses.CategoricalCrossentropy, xk.CategoricalCrossentropy, np.eye(3)[y_true]),
    ):
        expected = tf_cls(reduction="none")(labels, y_pred, sample_weight=sample_weight)
        assert tuple(expected.shape) == (4, 1)
        _assert_close(xent_cls(reduction="none")(labels, y_pred, sample_weight=sample_weight),
                      expected)


def test_batch_sample_weight_against_rank2_losses_is_refused_like_tf(keras, rng):
    """[b] sample_weight does not broadcast against [b, t] losses (b != t)."""
    y_true = rng.integers(0, 3, (2, 4))
    y_pred = _predictions("softmax", (2, 4, 3), rng)
    sample_weight = np.array([1.0, 2.0])
    with pytest.raises(Exception, match="Incompatible shapes"):
        keras.losses.SparseCategoricalCrossentropy()(y_true, y_pred, sample_weight=sample_weight)
    with pytest.raises(ValueError):
        xk.SparseCategoricalCrossentropy()(y_true, y_pred, sample_weight=sample_weight)


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_unbroadcastable_sample_weight_with_ignore_class_is_refused_like_tf(keras, rng, framework):
    """With a mask too, TF's "Incompatible shapes" as xent's InvalidArgumentError, on
    every backend (the mask's product had raised the framework's own error)."""
    convert = {"numpy": np.asarray, "torch": pytest.importorskip("torch").as_tensor,
               "jax": pytest.importorskip("jax.numpy").asarray}[framework]
    y_true = np.array([[0, 1, 2], [2, 1, 0]])
    y_pred = rng.standard_normal((2, 3, 4)).astype(np.float32)
    sample_weight = np.array([1.0, 2.0], np.float32)
    with pytest.raises(Exception, match="Incompatible shapes"):
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=2)(
            y_true, y_pred, sample_weight=sample_weight)
    loss = xk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=2)
    with pytest.raises(xerrors.InvalidArgumentError, match="Incompatible shapes"):
        loss(convert(y_true), convert(y_pred), sample_weight=convert(sample_weight))


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("y_true,y_pred_shape", [
    (np.array([0, 1, 2, 1, 0]), (1, 3)),            # one row of predictions for 5 labels
    (np.array([[0, 1, 2], [2, 1, 0]]), (3, 3)),     # no batch axis in y_pred
    (np.zeros((3, 3), np.int64), (3, 3, 1)),       # one class
], ids=["one-row", "no-batch-axis", "one-class"])
def test_ignore_class_never_broadcasts_mismatched_shapes(keras, y_true, y_pred_shape, framework):
    """With `ignore_class`, the mask's `where` broadcast y_pred to the labels' shape
    before the shape check, and a loss came back where Keras raises (its reshape's
    error; xent's is the one it gives without `ignore_class`)."""
    convert = {"numpy": np.asarray, "torch": pytest.importorskip("torch").as_tensor,
               "jax": pytest.importorskip("jax.numpy").asarray}[framework]
    y_pred = np.full(y_pred_shape, 0.5, np.float32)
    with pytest.raises(Exception):
        keras.losses.SparseCategoricalCrossentropy(ignore_class=2, reduction=None)(y_true, y_pred)
    refusal = "Input to reshape|same shape up until the last dimension|rank"
    with pytest.raises(ValueError, match=refusal):
        xk.SparseCategoricalCrossentropy(ignore_class=2, reduction=None)(convert(y_true), convert(y_pred))
    if y_pred_shape[-1] == 1:
        return   # (the class squeezes y_pred's one class, as Keras; the function's shapes agree)
    with pytest.raises(ValueError, match=refusal):
        xk.sparse_categorical_crossentropy(convert(y_true), convert(y_pred), ignore_class=2)


@pytest.mark.parametrize("y_true", [np.array([[0, 1, 2, 1]]), np.array([[[0, 1, 2, 1]]])],
                         ids=["1xN", "1x1xN"])
def test_ignore_class_broadcasts_labels_of_the_rows_size_as_keras(keras, y_true):
    """Keras' mask broadcasts y_pred to labels of another shape but as many values
    as y_pred has rows (``[1, N]`` against ``[N, C]``): a loss, not an error."""
    y_pred = np.array([[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3], [1, 1, 1]], np.float32)
    want = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True, ignore_class=2)
    got = xk.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True, ignore_class=2)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6)
    want = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=2)(y_true, y_pred)
    got = xk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=2)(y_true, y_pred)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "sum_over_batch_size", "mean_with_sample_weight"])
@pytest.mark.parametrize("weight_shape", [(4, 1), (4,), (2, 1), (2, 5, 1)])
def test_ignore_class_mask_of_1xn_labels_weights_as_keras(keras, reduction, weight_shape):
    """``[1, N]`` labels against ``[N, C]`` predictions: Keras reshapes the
    `ignore_class` mask to y_pred's rows (``[N]``) before it meets the
    weights. xent had kept it ``[1, N]``: other numbers for ``[N, 1]`` weights
    (0.892 for 0.803), a loss where Keras raises for ``[2, 1]`` and an error
    where Keras gives one for ``[2, 5, 1]`` (an independent review)."""
    y_true = np.array([[1, 0, 2, 0]])
    y_pred = np.array([[.5, 1, -1], [2, .1, .3], [.2, .2, 1.5], [1, -2, 0]], np.float32)
    weights = np.arange(1, 1 + math.prod(weight_shape), dtype=np.float32).reshape(weight_shape)
    try:
        want = np.asarray(keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=1, reduction=reduction)(y_true, y_pred, weights))
    except Exception as error:   # noqa: BLE001 - Keras' own refusal, matched below
        with pytest.raises(ValueError, match="Incompatible shapes|broadcast"):
            xk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=1,
                                             reduction=reduction)(y_true, y_pred, weights)
        assert "Incompatible shapes" in str(error) or "broadcast" in str(error)
        return
    got = xk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=1,
                                           reduction=reduction)(y_true, y_pred, weights)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("sample_weight", [2.0, np.array([[1.0], [3.0]])])
def test_mean_with_sample_weight_divides_by_unbroadcast_weight_sum_like_tf(keras, rng,
                                                                           sample_weight):
    """Keras 3 divides by sum(sample_weight) as given, not by its broadcast sum."""
    y_true = rng.integers(0, 3, (2, 4))
    y_pred = _predictions("softmax", (2, 4, 3), rng)
    expected = keras.losses.SparseCategoricalCrossentropy(reduction="mean_with_sample_weight")(
        y_true, y_pred, sample_weight=sample_weight)
    actual = xk.SparseCategoricalCrossentropy(reduction="mean_with_sample_weight")(
        y_true, y_pred, sample_weight=sample_weight)
    _assert_close(actual, expected)


@pytest.mark.parametrize("ignore_class,from_logits,weighted,reduction",
                         pairwise((-1, 255, 0), (True, False), (False, True), ALL_REDUCTIONS))
def test_sparse_class_ignore_class_matches_tf(keras, rng, ignore_class, from_logits, weighted,
                                              reduction):
    y_true = np.array([[1, ignore_class, 2, 0], [ignore_class, 2, 1, 1], [2, 2, ignore_class,
                                                                          ignore_class]])
    y_pred = _predictions("logits" if from_logits else "clipping_bites", (3, 4, 3), rng)
    sample_weight = rng.uniform(0.2, 2.0, (3, 4)) if weighted else None
    expected = keras.losses.SparseCategoricalCrossentropy(
        from_logits=from_logits, ignore_class=ignore_class,
        reduction=_tf_reduction(reduction))(y_true, y_pred, sample_weight=sample_weight)
    actual = xk.SparseCategoricalCrossentropy(
        from_logits=from_logits, ignore_class=ignore_class,
        reduction=reduction)(y_true, y_pred, sample_weight=sample_weight)
    _assert_close(actual, expected, _scale(y_pred, from_logits))


@pytest.mark.parametrize("reduction", ALL_REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_all_entries_ignored_gives_zero_not_nan(keras, rng, reduction, weighted):
    y_true = np.full((4,), -1)
    y_pred = _predictions("softmax", (4, 3), rng)
    sample_weight = rng.uniform(0.5, 2.0, (4,)) if weighted else None
    expected = keras.losses.SparseCategoricalCrossentropy(
        ignore_class=-1, reduction=_tf_reduction(reduction))(y_true, y_pred,
                                                             sample_weight=sample_weight)
    assert not np.any(np.isnan(_np(expected)))
    actual = xk.SparseCategoricalCrossentropy(ignore_class=-1, reduction=reduction)(
        y_true, y_pred, sample_weight=sample_weight)
    assert not np.any(np.isnan(np.asarray(actual)))
    _assert_close(actual, expected)
    assert np.all(np.asarray(actual) == 0.0)


def test_ignore_class_with_column_y_true_matches_tf(keras, rng):
    y_true = np.array([[[-1], [2]], [[1], [-1]]])
    y_pred = _predictions("logits", (2, 2, 3), rng)
    expected = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=-1, reduction=None)(y_true, y_pred)
    actual = xk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1,
                                              reduction=None)(y_true, y_pred)
    _assert_close(actual, expected, _scale(y_pred, True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy",
                                      "CategoricalCrossentropy"])
def test_call_returns_unreduced_losses_like_tf(keras, rng, cls_name, dtype):
    """`call` is the loss function on the inputs as given: in y_pred's dtype, not
    the loss's (float32 here; `__call__` casts to it, `call` does not)."""
    y_pred = _predictions("unnormalized", (5, 3), rng).astype(dtype)
    labels = rng.integers(0, 3, (5,))
    y_true = labels if cls_name.startswith("Sparse") else np.eye(3, dtype=np.float32)[labels]
    kwargs = {"ignore_class": 2} if cls_name.startswith("Sparse") else {"label_smoothing": 0.2}
    expected = getattr(keras.losses, cls_name)(**kwargs).call(y_true, y_pred)
    actual = getattr(xk, cls_name)(**kwargs).call(y_true, y_pred)
    _assert_close(actual, expected)


@pytest.mark.parametrize("reduction", ALL_REDUCTIONS)
@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy",
                                      "CategoricalCrossentropy"])
def test_empty_batch_matches_tf(keras, cls_name, reduction):
    """Keras 3 leaves a (0,)-shaped loss unreduced for every reduction."""
    y_pred = np.zeros((0, 3), np.float32)
    y_true = np.zeros((0,), np.int64) if cls_name.startswith("Sparse") else y_pred
    expected = getattr(keras.losses, cls_name)(reduction=_tf_reduction(reduction))(y_true, y_pred)
    actual = getattr(xk, cls_name)(reduction=reduction)(y_true, y_pred)
    _assert_close(actual, expected)


def test_single_class_sparse_loss_is_zero_like_tf(keras, rng):
    y_true = np.zeros((4,), np.int64)
    y_pred = rng.uniform(0.1, 1.0, (4, 1)).astype(np.float32)
    for from_logits in (True, False):
        expected = keras.losses.SparseCategoricalCrossentropy(
            from_logits=from_logits, reduction=None)(y_true, y_pred)
        actual = xk.SparseCategoricalCrossentropy(from_logits=from_logits,
                                                  reduction=None)(y_true, y_pred)
        _assert_close(actual, expected)


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("input_dtype", [np.float16, np.float32, np.float64],
                         ids=["float16", "float32", "float64"])
@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy",
                                      "CategoricalCrossentropy"])
def test_loss_objects_return_float32_by_default(keras, rng, cls_name, input_dtype):
    y_pred = _predictions("softmax", (4, 3), rng).astype(input_dtype)
    labels = rng.integers(0, 3, (4,))
    y_true = labels if cls_name.startswith("Sparse") else np.eye(3)[labels]
    expected = getattr(keras.losses, cls_name)()(y_true, y_pred)
    actual = getattr(xk, cls_name)()(y_true, y_pred)
    assert np.asarray(actual).dtype == np.float32
    _assert_close(actual, expected)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy",
                                      "CategoricalCrossentropy"])
def test_loss_object_dtype_float64_computes_in_float64(keras, rng, cls_name, from_logits):
    y_pred = _predictions("logits" if from_logits else "clipping_bites", (4, 3), rng)
    y_pred = y_pred.astype(np.float64) + rng.uniform(0, 1e-9, y_pred.shape) * from_logits
    labels = rng.integers(0, 3, (4,))
    y_true = labels if cls_name.startswith("Sparse") else np.eye(3)[labels]
    expected = getattr(keras.losses, cls_name)(from_logits=from_logits, dtype="float64")(
        y_true, y_pred)
    actual = getattr(xk, cls_name)(from_logits=from_logits, dtype="float64")(y_true, y_pred)
    assert np.asarray(actual).dtype == np.float64
    _assert_close(actual, expected)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy",
                                      "CategoricalCrossentropy"])
def test_loss_object_half_dtype_rounds_float64_truth_once(keras, rng, cls_name, dtype,
                                                          from_logits):
    np_dtype = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    y_pred = _predictions("logits" if from_logits else "softmax", (6, 4), rng)
    labels = rng.integers(0, 4, (6,))
    y_true = labels if cls_name.startswith("Sparse") else np.eye(4)[labels]
    # Keras casts inputs to the loss dtype first; the truth sees the same rounded inputs.
    rounded = y_pred.astype(np_dtype).astype(np.float64)
    truth = getattr(keras.losses, cls_name)(from_logits=from_logits, dtype="float64")(
        y_true, rounded)
    assert getattr(keras.losses, cls_name)(dtype=dtype)(y_true, y_pred).dtype.name == dtype
    actual = getattr(xk, cls_name)(from_logits=from_logits, dtype=dtype)(y_true, y_pred)
    assert_within_one_ulp(actual, _np(truth), np_dtype)


@pytest.mark.parametrize("reduction,weighted,ignore_class", [
    ("sum_over_batch_size", False, None), ("sum", True, None),
    ("mean_with_sample_weight", True, None), ("sum_over_batch_size", True, 4)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_half_dtype_losses_of_many_examples_are_summed_in_float32(keras, rng, framework, dtype,
                                                                  reduction, weighted,
                                                                  ignore_class):
    """A thousand half-precision losses are summed in float32 and rounded once, as
    Keras on TF does (within one ulp of Keras in float64 on the same inputs,
    whose products are exact here). NumPy added bfloat16 one element at a
    time in bfloat16: a mean of 1000 losses of log 5 came out 0.51, and the
    count of entries not ignored stopped growing too."""
    np_dtype = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    n = 1000
    y_pred = rng.standard_normal((n, 5)).astype(np_dtype).astype(np.float32)
    y_true = rng.integers(0, 5, n)
    weight = rng.choice([0.5, 1.0, 2.0], n).astype(np.float32) if weighted else None
    truth = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=reduction, ignore_class=ignore_class, dtype="float64")(
        y_true, y_pred, sample_weight=weight)
    args = [y_true, y_pred, weight]
    if framework == "torch":
        torch = pytest.importorskip("torch")
        args = [None if a is None else torch.from_numpy(a) for a in args]
    elif framework == "jax":
        jnp = pytest.importorskip("jax.numpy")
        args = [None if a is None else jnp.asarray(a) for a in args]
    loss = xk.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction,
                                            ignore_class=ignore_class, dtype=dtype)
    actual = loss(args[0], args[1], sample_weight=args[2])
    if framework == "torch" and dtype == "bfloat16":   # (no .numpy() for bfloat16)
        actual = actual.view(torch.int16).numpy().view(np_dtype)
    assert_within_one_ulp(_np(actual), _np(truth), np_dtype)


# --------------------------------------------------------------------------- reductions
def _tf_reduction_v2(tf):
    """TensorFlow's ``ReductionV2`` (tensorflow/python/keras/utils/losses_utils.py, in the
    tensorflow-cpu wheel): the class tf-keras' `tf.keras.losses.Reduction` copies.

    tf-keras itself is not a test dependency: it requires the full `tensorflow`
    wheel (572 MB) on top of tensorflow-cpu, for these two tests.
    """
    from tensorflow.python.keras.utils import losses_utils

    return losses_utils.ReductionV2


def test_tf_keras_reduction_constants_match_tensorflows_reduction_v2(tf):
    reference = _tf_reduction_v2(tf)
    for name in ("AUTO", "NONE", "SUM", "SUM_OVER_BATCH_SIZE"):
        assert getattr(xk.Reduction, name) == getattr(reference, name)
    assert tuple(xk.Reduction.all()) == tuple(reference.all())


def test_tf_keras_reduction_validate_accepts_tensorflows_keys_and_refuses_others(tf):
    reference = _tf_reduction_v2(tf)
    for key in reference.all():
        assert xk.Reduction.validate(key) is None
    with pytest.raises(ValueError, match="Invalid Reduction Key"):
        reference.validate("bogus")
    # tf-keras 2.21.0's text (tf_keras/src/utils/losses_utils.py, ReductionV2.validate):
    #     f'Invalid Reduction Key: {key}. Expected keys are "{cls.all()}"'
    expected = "Invalid Reduction Key: bogus. Expected keys are \"('auto', 'none', 'sum', " \
               "'sum_over_batch_size')\""
    with pytest.raises(ValueError) as err:
        xk.Reduction.validate("bogus")
    assert str(err.value) == expected


@pytest.mark.parametrize("name", ["AUTO", "NONE", "SUM", "SUM_OVER_BATCH_SIZE"])
@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy",
                                      "CategoricalCrossentropy"])
def test_tf_keras_reduction_constants_reduce_like_keras3_strings(keras, rng, cls_name, name):
    keras3 = {"AUTO": "sum_over_batch_size", "NONE": "none", "SUM": "sum",
              "SUM_OVER_BATCH_SIZE": "sum_over_batch_size"}[name]
    y_pred = _predictions("softmax", (5, 3), rng)
    labels = rng.integers(0, 3, (5,))
    y_true = labels if cls_name.startswith("Sparse") else np.eye(3)[labels]
    sample_weight = rng.uniform(0.5, 2.0, (5,))
    expected = getattr(keras.losses, cls_name)(reduction=keras3)(y_true, y_pred,
                                                                 sample_weight=sample_weight)
    actual = getattr(xk, cls_name)(reduction=getattr(xk.Reduction, name))(
        y_true, y_pred, sample_weight=sample_weight)
    _assert_close(actual, expected)


@pytest.mark.parametrize("bad", ["bogus", "weighted_sum", "SUM", "mean_with_weights"])
@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy",
                                      "CategoricalCrossentropy"])
def test_invalid_reduction_raises_value_error_like_tf(keras, cls_name, bad):
    with pytest.raises(ValueError, match="Invalid value for argument `reduction`"):
        getattr(keras.losses, cls_name)(reduction=bad)
    with pytest.raises(ValueError, match=re.escape("Invalid value for argument `reduction`")
                       + ".*" + re.escape(f"Received: reduction={bad}")):
        getattr(xk, cls_name)(reduction=bad)


@pytest.mark.parametrize("reduction", [np.array("sum"), ["sum"], np.str_("sum")])
def test_reduction_must_be_a_name_as_keras(keras, reduction):
    """Keras looks the reduction up in a set: an array or a list is a TypeError
    (unhashable); a NumPy string is a name (kept as a Python string, so that
    the config stays plain)."""
    if isinstance(reduction, str):
        config = keras.losses.CategoricalCrossentropy(reduction=reduction).get_config()
        ours = xk.CategoricalCrossentropy(reduction=reduction).get_config()
        assert ours["reduction"] == config["reduction"] and type(ours["reduction"]) is str
        return
    with pytest.raises(TypeError):
        keras.losses.CategoricalCrossentropy(reduction=reduction)
    with pytest.raises(TypeError, match=re.escape(f"received reduction={reduction!r}")):
        xk.CategoricalCrossentropy(reduction=reduction)


# --------------------------------------------------------------------------- config
SPARSE_CONFIGS = [
    {},
    {"from_logits": True},
    {"ignore_class": 255, "reduction": "sum"},
    {"ignore_class": -1, "reduction": None, "name": "scce"},
    {"reduction": "mean_with_sample_weight", "from_logits": True, "name": "x"},
    {"reduction": "none", "axis": -1},
]
CATEGORICAL_CONFIGS = [
    {},
    {"from_logits": True, "label_smoothing": 0.1},
    {"axis": 1, "reduction": "sum", "name": "cce"},
    {"reduction": None, "label_smoothing": 0.5},
    {"reduction": "mean", "axis": -1},
]


@pytest.mark.parametrize("kwargs", SPARSE_CONFIGS)
def test_sparse_get_config_matches_tf(keras, kwargs):
    expected = keras.losses.SparseCategoricalCrossentropy(**kwargs).get_config()
    assert xk.SparseCategoricalCrossentropy(**kwargs).get_config() == expected


@pytest.mark.parametrize("kwargs", CATEGORICAL_CONFIGS)
def test_categorical_get_config_matches_tf(keras, kwargs):
    expected = keras.losses.CategoricalCrossentropy(**kwargs).get_config()
    assert xk.CategoricalCrossentropy(**kwargs).get_config() == expected


@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy", "CategoricalCrossentropy"])
def test_no_name_gives_kerass_automatic_names(keras, cls_name):
    # Keras names a loss built with name=None or "" after its class, then
    # numbers the names it gives again (`naming.auto_name`).
    from keras.src.utils import naming
    from xent.keras import _loss as module

    naming.reset_uids()
    module._auto_names.__dict__.clear()
    for name in [None, "", None, "given", ""]:
        expected = getattr(keras.losses, cls_name)(name=name)
        actual = getattr(xk, cls_name)(name=name)
        assert actual.name == expected.name
        assert actual.get_config() == expected.get_config()
    # Keras counts per thread: a new thread starts again from the bare name
    import threading

    names = []

    def in_a_thread():
        names.append(getattr(keras.losses, cls_name)(name=None).name)
        names.append(getattr(xk, cls_name)(name=None).name)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    bare = {"SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
            "CategoricalCrossentropy": "categorical_crossentropy"}[cls_name]
    assert names == [bare, bare]


@pytest.mark.parametrize("sample_weight", [[0.1, 0.3], [1e39, 1.0], 1e39, [1e-46, 1.0]], ids=str)
def test_float64_loss_reads_python_sample_weights_in_float64_as_keras(keras, sample_weight):
    """Keras converts a Python `sample_weight` straight to the loss's dtype; xent
    went through float32 (0.1 lost its last bits; 1e39 became inf, then an error)."""
    y_true = np.array([[0.0, 1.0], [1.0, 0.0]])
    y_pred = np.array([[0.3, 0.7], [0.6, 0.4]])
    expected = keras.losses.CategoricalCrossentropy(dtype="float64", reduction="sum")(
        y_true, y_pred, sample_weight=sample_weight)
    got = xk.CategoricalCrossentropy(dtype="float64", reduction="sum")(y_true, y_pred, sample_weight=sample_weight)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-14)


@pytest.mark.parametrize("sample_weight", [1e39, [1e39, 1.0], 2 ** 70, [2 ** 70, 1], -1e300,
                                           [np.int64(5), 2 ** 70], [True, 2 ** 70],
                                           [2 ** 70, np.float32(1.0)]], ids=repr)
def test_python_sample_weight_past_float32_is_read_as_keras_reads_it(keras, sample_weight):
    """Keras converts a Python sample_weight with ``convert_to_tensor(w, dtype=float32)``:
    a number past float32's range is inf, an integer past int64 a float (xent
    refused both, the second as "not numbers")."""
    y_true, y_pred = np.array([0, 1]), np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
    for reduction in ("sum_over_batch_size", None):
        expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)(
            y_true, y_pred, sample_weight=sample_weight)
        got = xk.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)(
            y_true, y_pred, sample_weight=sample_weight)
        assert np.asarray(got).dtype == np.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6)


@pytest.mark.parametrize("sample_weight,match", [
    (["a", "b"], "`sample_weight` must hold numbers"),
    ([[1.0, 2.0], [3.0]], "`sample_weight` must be rectangular"),
], ids=["strings", "ragged"])
def test_bad_python_sample_weight_is_named(sample_weight, match):
    """What is not numbers, or not rectangular, is refused naming the argument."""
    y_true, y_pred = np.eye(2)[[0, 1]], np.array([[0.3, 0.7], [0.6, 0.4]])
    with pytest.raises(ValueError, match=match):
        xk.CategoricalCrossentropy()(y_true, y_pred, sample_weight=sample_weight)


@pytest.mark.parametrize("shape", [(2, 3), (2, 2, 3)], ids=str)
def test_probabilities_with_axis_none_normalise_and_sum_over_every_axis_as_keras(keras, rng, shape):
    """Keras' probability path with axis=None normalises by the sum of every value
    and sums over every axis: one number."""
    y_true = rng.random(shape).astype(np.float32)
    y_pred = rng.random(shape).astype(np.float32)
    expected = keras.losses.categorical_crossentropy(y_true, y_pred, axis=None)
    got = xk.categorical_crossentropy(y_true, y_pred, axis=None)
    assert np.shape(got) == np.shape(expected) == ()
    np.testing.assert_allclose(got, np.asarray(expected), rtol=2e-6)
    loss = xk.CategoricalCrossentropy(axis=None)
    np.testing.assert_allclose(loss(y_true, y_pred),
                               np.asarray(keras.losses.CategoricalCrossentropy(axis=None)(y_true, y_pred)),
                               rtol=2e-6)


@pytest.mark.parametrize("ignore_class", ["1", b"1", object(), np.str_("1"), np.bytes_(b"1"),
                                          np.datetime64(1, "D")])
def test_non_numeric_ignore_class_is_refused(keras, ignore_class):
    y_pred = np.array([[0.2, 0.3, 0.5]] * 3, np.float32)
    with pytest.raises(Exception):  # Keras fails in its cast (UnimplementedError, ValueError)
        keras.losses.SparseCategoricalCrossentropy(ignore_class=ignore_class)(np.array([0, 1, 2]), y_pred)
    with pytest.raises(TypeError, match="ignore_class"):
        xk.SparseCategoricalCrossentropy(ignore_class=ignore_class)
    with pytest.raises(TypeError, match="ignore_class"):
        xk.sparse_categorical_crossentropy(np.array([0, 1, 2]), y_pred, ignore_class=ignore_class)


@pytest.mark.parametrize("ignore_class", [True, 1.5, np.int64(1), np.array(1), [1], 1 + 2j,
                                          np.complex64(2 - 1j)])
def test_numeric_ignore_class_spellings_match_tf(keras, ignore_class):
    y_true, y_pred = np.array([0, 1, 2]), np.array([[0.2, 0.3, 0.5]] * 3, np.float32)
    expected = keras.losses.SparseCategoricalCrossentropy(ignore_class=ignore_class, reduction=None)(y_true, y_pred)
    actual = xk.SparseCategoricalCrossentropy(ignore_class=ignore_class, reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(actual, np.asarray(expected), rtol=1e-6)


KEPT_LOGITS_CASES = [
    ("SparseCategoricalCrossentropy", {}), ("SparseCategoricalCrossentropy", {"from_logits": True}),
    ("SparseCategoricalCrossentropy", {"ignore_class": 1}),   # (Keras' mask: a new tensor)
    ("SparseCategoricalCrossentropy", {"dtype": "float64"}),  # (Keras' cast: a new tensor)
    ("CategoricalCrossentropy", {}), ("CategoricalCrossentropy", {"label_smoothing": 0.1}),
    ("CategoricalCrossentropy", {"from_logits": True}), ("CategoricalCrossentropy", {"axis": 0}),
]


@pytest.mark.parametrize("how", ["__call__", "call", "function"])
@pytest.mark.parametrize("cls_name,kwargs", KEPT_LOGITS_CASES)
def test_softmax_outputs_of_keras_on_tf_are_read_through_their_kept_logits(keras, tf, cls_name,
                                                                          kwargs, how):
    """Keras' TF backend leaves a softmax's logits on its output
    (``_keras_logits``) and its cross-entropies read them: a confident wrong row
    costs its full 40, not the clipped probability's 16.1. Values and Keras'
    warning for ``from_logits=True``, as Keras; where Keras makes a new tensor
    first (a mask, a cast), the clipped probabilities, as Keras."""
    z = tf.constant([[0.0, 20.0, -20.0], [1.0, 2.0, 3.0], [-3.0, 0.5, 2.0]])
    layer = keras.layers.Dense(3, activation="softmax", use_bias=False, kernel_initializer="identity")
    for p in (keras.activations.softmax(z), keras.ops.softmax(z), layer(z)):
        assert hasattr(p, "_keras_logits")
        labels = np.array([2, 0, 1])
        y_true = labels if cls_name.startswith("Sparse") else np.eye(3, dtype=np.float32)[labels]
        results = []
        for module in (keras.losses, xk):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                loss = getattr(module, cls_name)(reduction=None, **kwargs)
                if how == "function":
                    function = {"SparseCategoricalCrossentropy": module.sparse_categorical_crossentropy,
                                "CategoricalCrossentropy": module.categorical_crossentropy}[cls_name]
                    kw = {k: v for k, v in kwargs.items() if k != "dtype"}
                    value = function(y_true, p, **kw)
                else:
                    value = getattr(loss, how)(y_true, p)
            results.append((_np(value), [str(w.message) for w in caught
                                         if "from_logits" in str(w.message)]))
        (expected, keras_warnings), (actual, warnings_) = results
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=2e-6)
        assert warnings_ == keras_warnings


def test_kept_logits_are_read_on_tf_tensors_only(keras):
    """Keras on torch and JAX leaves ``_keras_logits`` on a softmax's output
    too, and its losses there never read it: the clipped probabilities."""
    torch = pytest.importorskip("torch")
    z = torch.tensor([[0.0, 20.0, -20.0], [1.0, 2.0, 3.0]])
    p = torch.softmax(z, -1)
    plain = xk.sparse_categorical_crossentropy(torch.tensor([2, 0]), p.clone())
    p._keras_logits = z
    for loss in (xk.sparse_categorical_crossentropy(torch.tensor([2, 0]), p),
                 xk.CategoricalCrossentropy(reduction=None)(torch.eye(3)[[2, 0]], p)):
        torch.testing.assert_close(loss, plain, rtol=2e-6, atol=0)
        assert 16.0 < float(loss[0]) < 16.2   # (the clip's -log(1e-7), not the logits' 40)


@pytest.mark.parametrize("inputs,smoothing", [("numpy", "float16"), ("numpy", "torch"),
                                               ("torch", "jax"), ("jax", "torch")])
def test_label_smoothing_scalar_of_any_dtype_or_framework_is_used_exactly(rng, inputs, smoothing):
    """The smoothing's exact value (a float16 0.1 is 0.0999756), not rounded
    again in its own dtype, and a 0-d tensor of another framework than the
    inputs' (it failed in the arithmetic, naming no argument)."""
    torch, jnp = pytest.importorskip("torch"), pytest.importorskip("jax.numpy")
    label_smoothing = {"float16": np.float16(0.1), "torch": torch.tensor(0.3, dtype=torch.float16),
                       "jax": jnp.float32(0.1)}[smoothing]
    exact = float(label_smoothing)
    logits = rng.normal(0.0, 2.0, (6, 5)).astype(np.float32)
    onehot = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 6)]
    convert = {"numpy": np.asarray, "torch": torch.as_tensor, "jax": jnp.asarray}[inputs]
    actual = xk.categorical_crossentropy(convert(onehot), convert(logits), from_logits=True,
                                         label_smoothing=label_smoothing)
    x = logits.astype(np.float64)
    log_softmax = x - x.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    truth = -((onehot * (1.0 - exact) + exact / 5) * log_softmax).sum(-1)
    np.testing.assert_allclose(_np(actual), truth, rtol=4 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("ignore_class", [np.array([1, 2]), np.array([[1], [2]]), np.array([1, 2, 3])])
def test_array_ignore_class_broadcasts_against_the_labels_as_tf(keras, tf, ignore_class):
    """Keras compares the labels with `ignore_class` elementwise: an array that
    broadcasts masks per entry; one that does not gets TF's shapes error."""
    y_true, y_pred = np.array([0, 1, 2]), np.array([[0.2, 0.3, 0.5]] * 3, np.float32)
    try:
        expected = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, ignore_class=ignore_class)
    except tf.errors.InvalidArgumentError as tf_error:
        with pytest.raises(xerrors.InvalidArgumentError) as ours:
            xk.sparse_categorical_crossentropy(y_true, y_pred, ignore_class=ignore_class)
        assert str(ours.value).startswith(tf_message(tf_error))
        assert "ignore_class" in str(ours.value)
        return
    actual = xk.sparse_categorical_crossentropy(y_true, y_pred, ignore_class=ignore_class)
    np.testing.assert_allclose(actual, np.asarray(expected), rtol=1e-6)


@pytest.mark.parametrize("cls_name,kwargs",
                         [("SparseCategoricalCrossentropy", k) for k in SPARSE_CONFIGS]
                         + [("CategoricalCrossentropy", k) for k in CATEGORICAL_CONFIGS])
def test_from_config_round_trips_and_accepts_tf_config(keras, rng, cls_name, kwargs):
    cls = getattr(xk, cls_name)
    original = cls(**kwargs)
    clone = cls.from_config(original.get_config())
    assert isinstance(clone, cls)
    assert clone.get_config() == original.get_config()
    from_tf = cls.from_config(getattr(keras.losses, cls_name)(**kwargs).get_config())
    assert from_tf.get_config() == original.get_config()
    if kwargs.get("axis", -1) == -1:
        y_pred = _predictions("softmax", (4, 3), rng)
        labels = np.array([0, 255, 2, 1]) if kwargs.get("ignore_class") == 255 else \
            rng.integers(0, 3, (4,))
        y_true = labels if cls_name.startswith("Sparse") else np.eye(3)[labels]
        np.testing.assert_array_equal(np.asarray(clone(y_true, y_pred)),
                                      np.asarray(original(y_true, y_pred)))


def test_default_names_and_attributes_match_tf(keras):
    for cls_name in ("SparseCategoricalCrossentropy", "CategoricalCrossentropy"):
        tf_obj, xent_obj = getattr(keras.losses, cls_name)(), getattr(xk, cls_name)()
        assert xent_obj.name == tf_obj.name
        assert xent_obj.reduction == tf_obj.reduction


# --------------------------------------------------------------------------- documented examples
DOC_Y_PRED = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])


@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy",
                                      "CategoricalCrossentropy"])
def test_documented_class_examples_through_tf(keras, cls_name):
    y_true = np.array([1, 2]) if cls_name.startswith("Sparse") else np.array([[0, 1, 0],
                                                                              [0, 0, 1]])
    tf_cls, xent_cls = getattr(keras.losses, cls_name), getattr(xk, cls_name)
    cases = [
        ({}, {}, 1.177),
        ({}, {"sample_weight": np.array([0.3, 0.7])}, 0.814),
        ({"reduction": "sum"}, {}, 2.354),
        ({"reduction": None}, {}, [0.0513, 2.303]),
    ]
    for ctor, call, documented in cases:
        expected = tf_cls(**ctor)(y_true, DOC_Y_PRED, **call)
        actual = xent_cls(**ctor)(y_true, DOC_Y_PRED, **call)
        _assert_close(actual, expected)
        np.testing.assert_allclose(actual, documented, atol=5e-4)


@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy",
                                      "CategoricalCrossentropy"])
def test_seed_example_gives_0_3239(keras, cls_name):
    """Keras' `test_unweighted`: the middle row sums to 1.99 and must be renormalised."""
    labels = np.array([0, 1, 2])
    y_true = labels if cls_name.startswith("Sparse") else np.eye(3, dtype=np.int64)[labels]
    y_pred = np.array([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]], np.float32)
    expected = getattr(keras.losses, cls_name)()(y_true, y_pred)
    actual = getattr(xk, cls_name)()(y_true, y_pred)
    _assert_close(actual, expected)
    np.testing.assert_almost_equal(float(actual), 0.3239, decimal=3)  # as Keras asserts it


# --------------------------------------------------------------------------- errors, inputs
def test_sparse_label_out_of_range_raises_invalid_argument(keras):
    y_pred = np.full((2, 3), 1.0 / 3, np.float32)
    with pytest.raises(Exception, match="label value of 3"):
        keras.losses.SparseCategoricalCrossentropy()(np.array([0, 3]), y_pred)
    with pytest.raises(xerrors.InvalidArgumentError,
                       match=re.escape("Received a label value of 3 which is outside the valid "
                                       "range of [0, 3)")):
        xk.SparseCategoricalCrossentropy()(np.array([0, 3]), y_pred)


BAD_LABEL_CALLS = {   # (call on a losses module, y_true): each reaches the sparse op
    "function": (lambda m, y, p: m.sparse_categorical_crossentropy(y, p), [0, 3, 1]),
    "function-from_logits": (
        lambda m, y, p: m.sparse_categorical_crossentropy(y, p, from_logits=True), [0, 3, 1]),
    "class-from_logits": (
        lambda m, y, p: m.SparseCategoricalCrossentropy(from_logits=True)(y, p), [0, 3, 1]),
    "class-ignore_class=-1-label-2": (
        lambda m, y, p: m.SparseCategoricalCrossentropy(ignore_class=-1)(y, p), [0, -1, -2]),
    "function-ignore_class=-1-label-2": (
        lambda m, y, p: m.sparse_categorical_crossentropy(y, p, ignore_class=-1), [0, -1, -2]),
}


@pytest.mark.parametrize("call", list(BAD_LABEL_CALLS))
def test_out_of_range_label_raises_tfs_invalid_argument_through_every_keras_form(tf, keras, call):
    fn, y_true = BAD_LABEL_CALLS[call]
    y_pred = np.full((3, 3), 1.0 / 3, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        fn(keras.losses, np.array(y_true), y_pred)
    with pytest.raises(xerrors.InvalidArgumentError) as err:
        fn(xk, np.array(y_true), y_pred)
    # TF masks ignored labels to 0 before its op, so its message lists the masked values.
    assert str(err.value) == tf_message(tf_err.value)


@pytest.mark.parametrize("form", ["function", "class"])
def test_one_class_predictions_warn_as_keras_does(keras, form):
    """[batch, 1] categorical predictions usually mean binary labels passed by mistake."""
    y_true, y_pred = np.array([[1.0], [1.0]]), np.array([[0.3], [0.9]], np.float32)
    call = {"function": lambda m: m.categorical_crossentropy(y_true, y_pred),
            "class": lambda m: m.CategoricalCrossentropy()(y_true, y_pred)}[form]
    with pytest.warns(SyntaxWarning) as tf_warned:
        expected = call(keras.losses)
    with pytest.warns(SyntaxWarning) as warned:
        actual = call(xk)
    assert [str(w.message) for w in warned] == [str(tf_warned[0].message)]
    assert warned[0].filename == __file__   # it points at the caller, not into xent
    _assert_close(actual, expected)


def test_many_class_predictions_do_not_warn(keras):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xk.CategoricalCrossentropy()(np.eye(2), np.array([[0.3, 0.7], [0.9, 0.1]], np.float32))


def test_complex_sample_weight_is_refused_where_keras_drops_its_imaginary_part(keras):
    y_true, y_pred = np.array([0, 1]), np.full((2, 3), 1.0 / 3, np.float32)
    weight = np.array([1.0 + 2.0j, 0.5 + 1.0j])
    with pytest.warns(np.exceptions.ComplexWarning):   # Keras' only sign
        truncated = keras.losses.SparseCategoricalCrossentropy()(y_true, y_pred, sample_weight=weight)
    real = keras.losses.SparseCategoricalCrossentropy()(y_true, y_pred, sample_weight=weight.real)
    np.testing.assert_array_equal(_np(truncated), _np(real))
    for given in (weight, weight.tolist()):   # (a list is read in the loss's dtype: not by a cast)
        with pytest.raises(TypeError, match="`sample_weight` must be real; received dtype complex128"):
            xk.SparseCategoricalCrossentropy()(y_true, y_pred, sample_weight=given)


@pytest.mark.parametrize("y_true_shape, y_pred_shape", [((2,), (3, 3)), ((2, 2), (2, 2)),
                                                        ((3, 4), (3, 4, 1))],
                         ids=["batch", "rank", "rank-after-squeeze"])
@pytest.mark.parametrize("form", ["function", "class"])
def test_sparse_shape_mismatch_raises_kerass_value_error(keras, y_true_shape, y_pred_shape, form):
    """Keras checks the rank, then the shape, each with its own message (the class
    squeezes a trailing 1 off `y_pred` first: a rank error there too)."""
    y_true = np.zeros(y_true_shape, np.int64)
    y_pred = np.full(y_pred_shape, 0.5, np.float32)

    def call(module):
        if form == "function":
            return module.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        return module.SparseCategoricalCrossentropy(from_logits=True)(y_true, y_pred)
    if form == "function" and y_true_shape == (3, 4):   # (the function squeezes nothing: fine)
        np.testing.assert_allclose(call(xk), _np(call(keras.losses)), rtol=1e-6)
        return
    with pytest.raises(ValueError) as want:
        call(keras.losses)
    with pytest.raises(ValueError) as got:
        call(xk)
    assert str(got.value) == str(want.value)


def test_categorical_rank_mismatch_raises_value_error_like_tf(keras):
    y_pred = np.full((3, 3), 1.0 / 3, np.float32)
    with pytest.raises(ValueError, match="must have the same rank"):
        keras.losses.categorical_crossentropy(np.array([0.0, 1.0, 0.0]), y_pred)
    with pytest.raises(ValueError, match="must have the same rank"):
        xk.categorical_crossentropy(np.array([0.0, 1.0, 0.0]), y_pred)


@pytest.mark.parametrize("cls_name", ["SparseCategoricalCrossentropy",
                                      "CategoricalCrossentropy"])
def test_inputs_are_never_modified(rng, cls_name):
    y_pred = _predictions("clipping_bites", (4, 3), rng)
    labels = np.array([0, 1, -1, 2])
    if cls_name.startswith("Sparse"):
        y_true, kwargs = labels, {"ignore_class": -1}
    else:
        y_true, kwargs = np.eye(3, dtype=np.float32)[np.abs(labels)], {"label_smoothing": 0.2}
    sample_weight = rng.uniform(0.5, 2.0, (4,))
    before = [a.copy() for a in (y_true, y_pred, sample_weight)]
    getattr(xk, cls_name)(**kwargs)(y_true, y_pred, sample_weight=sample_weight)
    for array, copy in zip((y_true, y_pred, sample_weight), before):
        np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("spelling", [float, np.float64, np.float16, ml_dtypes.bfloat16,
                                      np.dtype("float64"), "tf.float64", "mixed_bfloat16", "",
                                      {"module": "keras", "class_name": "DTypePolicy",
                                       "config": {"name": "mixed_float16"}, "registered_name": None}],
                         ids=repr)
def test_loss_object_takes_every_dtype_spelling_keras_takes(keras, tf, rng, spelling):
    """Python's float (Keras' float32), NumPy scalar types and dtypes, ml_dtypes'
    bfloat16, TF's dtypes, policy names, a serialized policy and "" (Keras'
    ``dtype or floatx()``) give Keras' dtype and result."""
    dtype = tf.float64 if spelling == "tf.float64" else spelling
    y_pred = _predictions("softmax", (4, 3), rng)
    labels = rng.integers(0, 3, (4,))
    expected = keras.losses.SparseCategoricalCrossentropy(dtype=dtype)(labels, y_pred)
    loss = xk.SparseCategoricalCrossentropy(dtype=dtype)
    actual = loss(labels, y_pred)
    assert loss.dtype == _np(expected).dtype.name == np.asarray(actual).dtype.name
    assert xk.SparseCategoricalCrossentropy.from_config(loss.get_config()).dtype == loss.dtype


@pytest.mark.parametrize("cls", [xk.SparseCategoricalCrossentropy,
                                 xk.CategoricalCrossentropy])
def test_loss_object_non_float_dtype_is_refused_naming_dtype(cls):
    with pytest.raises(TypeError, match="`dtype`.*int32"):
        cls(dtype="int32")


def test_functions_refuse_integer_predictions_naming_y_pred():
    with pytest.raises(TypeError, match="`y_pred`.*int64"):
        xk.sparse_categorical_crossentropy(np.array([0, 1]), np.array([[1, 0], [0, 1]]))
    with pytest.raises(TypeError, match="`y_pred`.*int64"):
        xk.categorical_crossentropy(np.eye(2), np.array([[1, 0], [0, 1]]))


def test_ignore_class_is_compared_exactly_where_keras_rounds_it_to_y_preds_dtype(keras):
    """README, differences: with bfloat16 predictions Keras casts ignore_class=256 to
    bfloat16 before comparing, so it also ignores label 257 (which rounds to 256);
    xent ignores label 256 only, and gives 257 its loss."""
    y_pred = np.random.default_rng(0).normal(size=(3, 300)).astype(ml_dtypes.bfloat16)
    labels = np.array([257, 1, 256])
    theirs = _np(keras.losses.sparse_categorical_crossentropy(
        labels, y_pred, from_logits=True, ignore_class=256))
    ours = xk.sparse_categorical_crossentropy(labels, y_pred, from_logits=True, ignore_class=256)
    unmasked = xk.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)
    assert theirs[0] == 0 and theirs[2] == 0   # (Keras' rounding)
    np.testing.assert_array_equal(ours[:2], unmasked[:2])
    assert ours[0] != 0 and ours[2] == 0
    np.testing.assert_array_equal(ours[1:], theirs[1:].astype(ours.dtype))


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("function", ["sparse", "categorical"])
def test_probabilities_on_the_clip_bounds_get_tfs_whole_gradient(keras, tf, framework, function):
    """Probabilities equal to eps or 1 - eps (where saturated half-precision ones
    sit) pass their whole gradient through the clip, as TF's clip_by_value
    does; jnp.clip (max and min) passed half of it."""
    p = np.array([[np.float32(1e-7), np.float32(1 - 1e-7), 0.0],
                  [0.25, 0.5, 0.25]], np.float32)
    labels = np.array([0, 1])
    y_true = labels if function == "sparse" else np.eye(3, dtype=np.float32)[labels]
    name = f"{function}_categorical_crossentropy" if function == "sparse" \
        else "categorical_crossentropy"
    x = tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(getattr(keras.losses, name)(y_true, x))
    want = tape.gradient(total, x).numpy()
    fn = getattr(xk, name)
    if framework == "torch":
        torch = pytest.importorskip("torch")
        xt = torch.from_numpy(p.copy()).requires_grad_(True)
        fn(torch.from_numpy(y_true), xt).sum().backward()
        got = xt.grad.numpy()
    else:
        jax = pytest.importorskip("jax")
        got = np.asarray(jax.grad(lambda a: fn(jax.numpy.asarray(y_true), a).sum())(
            jax.numpy.asarray(p)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "none"])
@pytest.mark.parametrize("cls_name,ignore_class", [("SparseCategoricalCrossentropy", None),
                                                   ("SparseCategoricalCrossentropy", 1),
                                                   ("CategoricalCrossentropy", None)])
def test_loss_objects_apply_the_keras_mask_on_y_pred(keras, tf, rng, cls_name, ignore_class,
                                                     reduction):
    """The mask Keras layers leave on a model's output (``y_pred._keras_mask``, an
    ``Embedding(mask_zero=True)`` upstream) drops entries as Keras' `Loss`
    does, with ``ignore_class``'s own mask where both are given: on TF
    tensors and on torch tensors (Keras 3's torch backend sets it there).
    xent gave the unmasked loss (1.056 against Keras' 1.148 in the probe)."""
    torch = pytest.importorskip("torch")
    sparse = cls_name.startswith("Sparse")
    logits = rng.standard_normal((3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (3, 4))
    y_true = labels if sparse else np.eye(5, dtype=np.float32)[labels]
    mask = rng.random((3, 4)) < 0.6
    kwargs = {"from_logits": True, "reduction": reduction}
    if sparse:
        kwargs["ignore_class"] = ignore_class
    x = tf.constant(logits)
    x._keras_mask = tf.constant(mask)
    want = _np(getattr(keras.losses, cls_name)(**kwargs)(y_true, x))
    unmasked = _np(getattr(keras.losses, cls_name)(**kwargs)(y_true, tf.constant(logits)))
    assert not np.allclose(want, unmasked)
    xt = torch.from_numpy(logits)
    xt._keras_mask = torch.from_numpy(mask)
    for y_pred, targets in ((x, y_true), (xt, torch.from_numpy(y_true))):
        got = getattr(xk, cls_name)(**kwargs)(targets, y_pred)
        _assert_close(_np(got), want)


@pytest.mark.parametrize("from_logits", [True, False])
def test_zero_classes_with_label_smoothing_match_tf(keras, from_logits):
    """No classes: Keras' ls / C is inf times an empty array; xent divided a Python float by 0."""
    empty = np.ones((2, 0), np.float32)
    expected = keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=0.1)(
        empty, empty)
    actual = xk.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=0.1)(empty, empty)
    _assert_close(actual, expected)
    expected = keras.losses.categorical_crossentropy(empty, empty, from_logits=from_logits,
                                                     label_smoothing=0.1)
    actual = xk.categorical_crossentropy(empty, empty, from_logits=from_logits, label_smoothing=0.1)
    assert np.asarray(actual).shape == tuple(expected.shape) == (2,)
    _assert_close(actual, expected)


SMOOTHING_FACES = ["v1", "keras function", "keras class"]


def _smoothed_call(tf, keras, face, label_smoothing, module):
    """`face`'s categorical loss with `label_smoothing`, from xent (`module` None) or TF."""
    y = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    p = np.array([[1.0, 2.0, 0.5], [0.1, 0.0, 3.0]], np.float32)
    if face == "v1":
        fn = (tf.compat.v1.losses if module == "tf" else xent_losses).softmax_cross_entropy
        return fn(y, p, label_smoothing=label_smoothing)
    kl = keras.losses if module == "tf" else xk
    if face == "keras function":
        return kl.categorical_crossentropy(y, p, from_logits=True, label_smoothing=label_smoothing)
    return kl.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)(y, p)


@pytest.mark.parametrize("face", SMOOTHING_FACES)
@pytest.mark.parametrize("value", [
    "a", None, 1 + 1j, np.array([0.1, 0.2, 0.3]), True, np.float32(0.25), np.array(0.25),
    np.array([0.25])], ids=["str", "None", "complex", "array", "bool", "numpy scalar", "0-d",
                            "one element"])
def test_label_smoothing_in_any_form_gives_tfs_loss_or_its_error_naming_it(tf, keras, face,
                                                                          value):
    """Where TF raises, it is Python's own error ('>' not supported, the truth
    value of an array is ambiguous), naming nothing: xent raises the same
    class, naming `label_smoothing`, before any work. Where TF takes the value
    (Keras takes None as no smoothing), xent gives its loss."""
    try:
        expected = np.asarray(_smoothed_call(tf, keras, face, value, "tf"))
    except (TypeError, ValueError) as tf_error:
        with pytest.raises(type(tf_error), match="`label_smoothing` must be"):
            _smoothed_call(tf, keras, face, value, None)
        return
    got = np.asarray(_smoothed_call(tf, keras, face, value, None))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
