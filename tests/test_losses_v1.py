"""`xent.losses` against `tf.compat.v1.losses`, computed live through TensorFlow.

Oracles, by dtype of the logits (or losses):

* float32: TensorFlow's own v1 loss on the same inputs (rtol 1e-6, plus a few
  float32 ulps of the largest logit for per-element values near zero).
* float64: TensorFlow computes v1 `compute_weighted_loss` in float32 and casts
  back, while xent keeps float64 (SPEC). The truth is TensorFlow's float64
  per-element loss (`tf.nn.*_with_logits` on float64 logits) weighted and
  reduced in float64 by `_reference_reduce`, which follows TF's
  `compute_weighted_loss`; every float64 case also checks that reference
  against TensorFlow's own (float32-accurate) v1 answer.
* float16 / bfloat16: the same float64 truth; xent must be within one ulp of the
  output dtype (it accumulates in float32 and rounds once).
"""
import itertools
import re
import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracle import assert_within_one_ulp
from pairwise import pairwise
from xent import errors as xerrors
from xent import losses as xl

REDUCTION_NAMES = (
    "NONE",
    "SUM",
    "MEAN",
    "SUM_OVER_BATCH_SIZE",
    "SUM_OVER_NONZERO_WEIGHTS",
    "SUM_BY_NONZERO_WEIGHTS",
)
# The string values of tf.compat.v1.losses.Reduction (checked against TF below).
REDUCTION_VALUES = {
    "NONE": "none",
    "SUM": "weighted_sum",
    "MEAN": "weighted_mean",
    "SUM_OVER_BATCH_SIZE": "weighted_sum_over_batch_size",
    "SUM_OVER_NONZERO_WEIGHTS": "weighted_sum_by_nonzero_weights",
    "SUM_BY_NONZERO_WEIGHTS": "weighted_sum_by_nonzero_weights",
}
# The distinct reductions: SUM_OVER_NONZERO_WEIGHTS is SUM_BY_NONZERO_WEIGHTS's string, so
# a grid over both names would run each case twice.
REDUCTIONS = ("NONE", "SUM", "MEAN", "SUM_OVER_BATCH_SIZE", "SUM_BY_NONZERO_WEIGHTS")
LABEL_SHAPES = {1: (6,), 2: (3, 4), 3: (2, 3, 2)}
HALF_DTYPES = (np.float16, ml_dtypes.bfloat16)
ALL_DTYPES = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16)
DTYPE_IDS = ("float32", "float64", "float16", "bfloat16")
# Weight layouts that TF accepts for both losses (a function of the labels' shape).
WEIGHT_KINDS = (
    "python_scalar",
    "zero_scalar",
    "array_scalar",
    "per_example",
    "some_zero",
    "all_zero",
    "unit_dims",
    "leading_dim_only",
    "trailing_dim_only",
)


# --------------------------------------------------------------------------- helpers
def _make_weights(kind, shape, rng):
    """Weights of the layout `kind` for per-element losses of `shape`."""
    rank = len(shape)
    if kind == "python_scalar":
        return 0.75  # exact in every dtype; 0.7's precision is pinned separately
    if kind == "zero_scalar":
        return 0.0
    if kind == "array_scalar":
        return np.array(2.5)
    if kind == "per_example":
        return rng.uniform(0.25, 2.0, shape)
    if kind == "some_zero":
        w = rng.uniform(0.25, 2.0, shape)
        w.reshape(-1)[::2] = 0.0
        return w
    if kind == "all_zero":
        return np.zeros(shape)
    if kind == "unit_dims":
        return np.full((1,) * rank, 1.5)
    if kind == "leading_dim_only":
        return rng.uniform(0.0, 2.0, (shape[0],) + (1,) * (rank - 1)).round(1)
    if kind == "trailing_dim_only":
        return rng.uniform(0.0, 2.0, (1,) * (rank - 1) + (shape[-1],)).round(1)
    if kind == "sparse_trailing_1":  # one rank above the labels; TF squeezes it
        return rng.uniform(0.25, 2.0, shape + (1,))
    raise AssertionError(kind)


def _reference_reduce(losses, weights, reduction):
    """TF's `compute_weighted_loss`, in float64 (the float64/half truth)."""
    losses = np.asarray(losses, np.float64)
    weights = np.asarray(weights, np.float64)
    weighted = losses * weights
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "weighted_sum":
        return total
    if reduction == "weighted_mean":
        denominator = (np.ones_like(losses) * weights).sum()
    elif reduction == "weighted_sum_by_nonzero_weights":
        denominator = np.count_nonzero(np.broadcast_to(weights != 0, losses.shape))
    elif reduction == "weighted_sum_over_batch_size":
        denominator = losses.size
    else:
        raise AssertionError(reduction)
    return total / denominator if denominator != 0 else np.float64(0.0)


def _assert_float32_matches_tf(actual, expected, logits, weights):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(logits)))) * max(1.0, float(np.max(np.abs(weights))))
    atol = 8 * np.finfo(np.float32).eps * scale
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=atol)


def _assert_float64_matches_truth(actual, truth, tf_answer):
    actual = np.asarray(actual)
    assert actual.dtype == np.float64
    assert actual.shape == np.shape(truth)
    np.testing.assert_allclose(actual, truth, rtol=1e-12, atol=1e-12)
    # The oracle itself: TF's float32-internal answer agrees to float32 accuracy.
    np.testing.assert_allclose(np.asarray(tf_answer), truth, rtol=2e-6, atol=1e-5)


def _tf_sparse_per_element(tf, labels, logits):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=np.asarray(logits, np.float64)).numpy()


def _tf_dense_per_element(tf, labels, logits):
    return tf.nn.softmax_cross_entropy_with_logits(
        labels=np.asarray(labels, np.float64), logits=np.asarray(logits, np.float64)).numpy()


def _smooth(onehot, label_smoothing):
    """TF's v1 smoothing ``y (1 - ls) + ls / C`` (only when ``ls > 0``), exactly, in float64.

    TensorFlow smooths in the logits' dtype (0.6 is 0.59765625 in bfloat16);
    xent smooths in float32 and rounds only the loss (SPEC), so the truth for
    half precision is the loss of the exactly smoothed targets.
    """
    onehot = np.asarray(onehot, np.float64)
    if label_smoothing > 0:
        return onehot * (1.0 - label_smoothing) + label_smoothing / onehot.shape[-1]
    return onehot


def _case(rng, rank, num_classes, dtype, label_dtype=np.int64):
    shape = LABEL_SHAPES[rank]
    labels = rng.integers(0, num_classes, shape).astype(label_dtype)
    logits = (rng.normal(0.0, 3.0, shape + (num_classes,))).astype(dtype)
    return labels, logits


DTYPES_BY_ID = dict(zip(DTYPE_IDS, ALL_DTYPES))
RANKS = (1, 2, 3)
SMOOTHINGS = (0.0, 0.1, 0.5)


def _grid(pairs, *full):
    """The cases of a pairwise grid, then those of full cross-products not already in it."""
    return list(dict.fromkeys([*pairs, *itertools.chain(*full)]))


def _check_against_oracle(tf, dtype, actual, per_element_truth, weights, reduction, tf_answer,
                          logits):
    if dtype == np.float32:
        _assert_float32_matches_tf(actual, tf_answer, logits, weights)
        return
    truth = _reference_reduce(per_element_truth, weights, reduction)
    if dtype == np.float64:
        _assert_float64_matches_truth(actual, truth, tf_answer)
    else:
        assert_within_one_ulp(actual, truth, dtype)


# --------------------------------------------------------------------------- Reduction
def test_reduction_values_equal_tf(tf):
    tf_reduction = tf.compat.v1.losses.Reduction
    for name in REDUCTION_NAMES:
        assert getattr(xl.Reduction, name) == getattr(tf_reduction, name) == REDUCTION_VALUES[name]


def test_reduction_all_equals_tf_including_duplicate(tf):
    assert tuple(xl.Reduction.all()) == tuple(tf.compat.v1.losses.Reduction.all())
    assert len(xl.Reduction.all()) == 6


@pytest.mark.parametrize("name", REDUCTION_NAMES)
def test_reduction_validate_accepts_every_key(name):
    assert xl.Reduction.validate(getattr(xl.Reduction, name)) is None


def _without_repeats(tf_text):
    """TF's Invalid Reduction Key message, listing each key once (TF's lists `all()`,
    which names weighted_sum_by_nonzero_weights twice)."""
    head, keys = tf_text.split("Key should be one of ")
    assert keys.count("'weighted_sum_by_nonzero_weights'") == 2, tf_text
    distinct = tuple(dict.fromkeys(re.findall(r"'([a-z_]+)'", keys)))
    return f"{head}Key should be one of {distinct}."


@pytest.mark.parametrize("bad", ["bogus", "sum", "mean", "sum_over_batch_size", "auto", None])
def test_reduction_validate_rejects_with_tf_message_listing_each_key_once(tf, bad):
    with pytest.raises(ValueError) as tf_error:
        tf.compat.v1.losses.Reduction.validate(bad)
    with pytest.raises(ValueError) as error:
        xl.Reduction.validate(bad)
    assert str(error.value) == _without_repeats(str(tf_error.value))
    assert str(error.value).count("weighted_sum_by_nonzero_weights") == 1


@pytest.mark.parametrize("function", ["sparse", "dense", "weighted"])
def test_invalid_reduction_key_raises_tf_message(tf, function):
    labels = np.array([0, 1, 2])
    logits = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError) as tf_error:
        tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, reduction="bogus")
    with pytest.raises(ValueError) as error:
        if function == "sparse":
            xl.sparse_softmax_cross_entropy(labels, logits, reduction="bogus")
        elif function == "dense":
            xl.softmax_cross_entropy(np.eye(3), logits, reduction="bogus")
        else:
            xl.compute_weighted_loss(np.ones(3, np.float32), reduction="bogus")
    assert str(error.value) == _without_repeats(str(tf_error.value))


def test_default_reduction_is_sum_by_nonzero_weights(tf, rng):
    labels, logits = _case(rng, 2, 5, np.float32)
    weights = _make_weights("some_zero", labels.shape, rng)
    expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights).numpy()
    explicit = xl.sparse_softmax_cross_entropy(
        labels, logits, weights, reduction=xl.Reduction.SUM_BY_NONZERO_WEIGHTS)
    default = xl.sparse_softmax_cross_entropy(labels, logits, weights)
    np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))
    _assert_float32_matches_tf(default, expected, logits, weights)


# --------------------------------------------------------------------------- sparse
# Every pair of options, and every dtype with every reduction over some zero weights.
SPARSE_CASES = _grid(
    pairwise(DTYPE_IDS, RANKS, WEIGHT_KINDS + ("sparse_trailing_1",), REDUCTIONS),
    itertools.product(DTYPE_IDS, (1,), ("some_zero",), REDUCTIONS))


@pytest.mark.parametrize("dtype_id,rank,weight_kind,reduction_name", SPARSE_CASES)
def test_sparse_softmax_cross_entropy_matches_tf(tf, rng, dtype_id, rank, weight_kind,
                                                 reduction_name):
    dtype, reduction = DTYPES_BY_ID[dtype_id], REDUCTION_VALUES[reduction_name]
    label_dtype = np.int32 if rank == 2 else np.int64
    labels, logits = _case(rng, rank, 5, dtype, label_dtype)
    weights = _make_weights(weight_kind, labels.shape, rng)
    actual = xl.sparse_softmax_cross_entropy(labels, logits, weights, reduction=reduction)

    tf_logits = logits if dtype == np.float32 else logits.astype(np.float64)
    tf_answer = tf.compat.v1.losses.sparse_softmax_cross_entropy(
        labels, tf_logits, weights, reduction=reduction).numpy()
    reference_weights = np.squeeze(weights, -1) if weight_kind == "sparse_trailing_1" else weights
    per_element = None if dtype == np.float32 else _tf_sparse_per_element(tf, labels, logits)
    _check_against_oracle(tf, dtype, actual, per_element, reference_weights, reduction,
                          tf_answer, logits)


@pytest.mark.parametrize("dtype_id,rank,num_classes",
                         pairwise(DTYPE_IDS, RANKS, (1, 2, 17, 300)))
def test_sparse_class_counts_match_tf(tf, rng, dtype_id, rank, num_classes):
    dtype, reduction = DTYPES_BY_ID[dtype_id], "weighted_sum_by_nonzero_weights"
    labels, logits = _case(rng, rank, num_classes, dtype)
    weights = _make_weights("some_zero", labels.shape, rng)
    actual = xl.sparse_softmax_cross_entropy(labels, logits, weights, reduction=reduction)
    tf_logits = logits if dtype == np.float32 else logits.astype(np.float64)
    tf_answer = tf.compat.v1.losses.sparse_softmax_cross_entropy(
        labels, tf_logits, weights, reduction=reduction).numpy()
    per_element = None if dtype == np.float32 else _tf_sparse_per_element(tf, labels, logits)
    _check_against_oracle(tf, dtype, actual, per_element, weights, reduction, tf_answer, logits)


@pytest.mark.parametrize("reduction_name", REDUCTIONS)
@pytest.mark.parametrize("rank", RANKS)
def test_sparse_trailing_unit_labels_are_squeezed_like_tf(tf, rng, rank, reduction_name):
    """Labels of the logits' rank with a last dimension of 1 lose that dimension."""
    reduction = REDUCTION_VALUES[reduction_name]
    labels, logits = _case(rng, rank, 4, np.float32)
    column_labels = labels[..., None]
    weights = _make_weights("sparse_trailing_1", labels.shape, rng)
    expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(
        column_labels, logits, weights, reduction=reduction).numpy()
    actual = xl.sparse_softmax_cross_entropy(column_labels, logits, weights, reduction=reduction)
    _assert_float32_matches_tf(actual, expected, logits, weights)


def test_sparse_weights_two_ranks_up_with_unit_tail_squeeze_once_and_broadcast(tf, rng):
    """[b, t] labels with [b, 1, 1] weights: TF squeezes to [b, 1], then broadcasts."""
    labels, logits = _case(rng, 2, 5, np.float32)
    weights = rng.uniform(0.5, 2.0, (labels.shape[0], 1, 1))
    expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(
        labels, logits, weights, reduction="none").numpy()
    actual = xl.sparse_softmax_cross_entropy(labels, logits, weights, reduction="none")
    _assert_float32_matches_tf(actual, expected, logits, weights)


def test_sparse_integer_weights_match_tf(tf, rng):
    labels, logits = _case(rng, 1, 4, np.float32)
    weights = np.array([0, 1, 2, 3, 0, 5], dtype=np.int32)
    expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights).numpy()
    actual = xl.sparse_softmax_cross_entropy(labels, logits, weights)
    _assert_float32_matches_tf(actual, expected, logits, weights)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_sparse_label_dtypes_give_identical_results(tf, rng, label_dtype):
    labels, logits = _case(rng, 2, 6, np.float32)
    expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits).numpy()
    actual = xl.sparse_softmax_cross_entropy(labels.astype(label_dtype), logits)
    _assert_float32_matches_tf(actual, expected, logits, 1.0)


def test_sparse_float_labels_are_refused_like_tf(tf):
    logits = np.eye(3, dtype=np.float32)
    labels = np.array([0.0, 2.0, 1.0])
    with pytest.raises(Exception):  # TF: InvalidArgumentError (Tlabels double not allowed)
        tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    with pytest.raises((TypeError, ValueError)):
        xl.sparse_softmax_cross_entropy(labels, logits)


def test_sparse_label_out_of_range_raises_invalid_argument_naming_value(tf):
    logits = np.zeros((3, 3), np.float32)
    labels = np.array([0, 5, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="label value of 5"):
        tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    with pytest.raises(xerrors.InvalidArgumentError,
                       match=re.escape("Received a label value of 5 which is outside the valid "
                                       "range of [0, 3)")):
        xl.sparse_softmax_cross_entropy(labels, logits)
    assert xl.get_losses() == []


# --------------------------------------------------------------------------- dense
# Every pair of options, and every dtype with every reduction and smoothing at rank 2.
DENSE_CASES = _grid(
    pairwise(DTYPE_IDS, RANKS, WEIGHT_KINDS, REDUCTIONS, SMOOTHINGS),
    itertools.product(DTYPE_IDS, (2,), ("leading_dim_only",), REDUCTIONS, SMOOTHINGS))


@pytest.mark.parametrize("dtype_id,rank,weight_kind,reduction_name,label_smoothing", DENSE_CASES)
def test_softmax_cross_entropy_matches_tf(tf, rng, dtype_id, rank, weight_kind, reduction_name,
                                          label_smoothing):
    dtype, reduction = DTYPES_BY_ID[dtype_id], REDUCTION_VALUES[reduction_name]
    labels, logits = _case(rng, rank, 5, dtype)
    onehot = np.eye(5, dtype=np.float32)[labels]
    weights = _make_weights(weight_kind, labels.shape, rng)
    actual = xl.softmax_cross_entropy(onehot, logits, weights, label_smoothing=label_smoothing,
                                      reduction=reduction)

    tf_logits = logits if dtype == np.float32 else logits.astype(np.float64)
    tf_answer = tf.compat.v1.losses.softmax_cross_entropy(
        onehot, tf_logits, weights, label_smoothing=label_smoothing,
        reduction=reduction).numpy()
    per_element = None
    if dtype != np.float32:
        per_element = _tf_dense_per_element(tf, _smooth(onehot, label_smoothing), logits)
    _check_against_oracle(tf, dtype, actual, per_element, weights, reduction, tf_answer, logits)


@pytest.mark.parametrize("dtype_id,num_classes,label_smoothing",
                         pairwise(DTYPE_IDS, (1, 2, 17, 300), SMOOTHINGS))
def test_dense_class_counts_match_tf(tf, rng, dtype_id, num_classes, label_smoothing):
    dtype, reduction = DTYPES_BY_ID[dtype_id], "weighted_sum_by_nonzero_weights"
    labels, logits = _case(rng, 2, num_classes, dtype)
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    weights = _make_weights("some_zero", labels.shape, rng)
    actual = xl.softmax_cross_entropy(onehot, logits, weights, label_smoothing=label_smoothing,
                                      reduction=reduction)
    tf_logits = logits if dtype == np.float32 else logits.astype(np.float64)
    tf_answer = tf.compat.v1.losses.softmax_cross_entropy(
        onehot, tf_logits, weights, label_smoothing=label_smoothing,
        reduction=reduction).numpy()
    per_element = None
    if dtype != np.float32:
        per_element = _tf_dense_per_element(tf, _smooth(onehot, label_smoothing), logits)
    _check_against_oracle(tf, dtype, actual, per_element, weights, reduction, tf_answer, logits)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_dense_soft_labels_match_tf(tf, rng, label_smoothing):
    logits = rng.normal(0.0, 2.0, (4, 3, 6)).astype(np.float32)
    soft = rng.dirichlet(np.ones(6), (4, 3)).astype(np.float32)
    expected = tf.compat.v1.losses.softmax_cross_entropy(
        soft, logits, label_smoothing=label_smoothing, reduction="none").numpy()
    actual = xl.softmax_cross_entropy(soft, logits, label_smoothing=label_smoothing,
                                      reduction="none")
    _assert_float32_matches_tf(actual, expected, logits, 1.0)


def test_dense_integer_onehot_labels_are_cast_to_logits_dtype(tf, rng):
    labels, logits = _case(rng, 1, 4, np.float32)
    onehot = np.eye(4, dtype=np.int32)[labels]
    expected = tf.compat.v1.losses.softmax_cross_entropy(onehot, logits).numpy()
    actual = xl.softmax_cross_entropy(onehot, logits)
    _assert_float32_matches_tf(actual, expected, logits, 1.0)


@pytest.mark.parametrize("weights", [np.float64(1e300), 1e300], ids=["numpy-float64", "python"])
def test_a_numpy_float64_weight_is_an_array_and_a_python_float_a_number_as_tf(tf, weights):
    """TF converts a Python float past float32's range with an error, and a NumPy
    float64 (a subclass of float) as a float64 array: the loss is inf."""
    labels, logits = np.array([0, 1, 2]), np.eye(3, 4, dtype=np.float32)
    try:
        expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights=weights)
    except ValueError:
        with pytest.raises(ValueError):
            xl.sparse_softmax_cross_entropy(labels, logits, weights=weights)
        return
    actual = xl.sparse_softmax_cross_entropy(labels, logits, weights=weights)
    assert actual.dtype == expected.numpy().dtype and actual == expected.numpy()


def _smoothing_value(kind):
    """A label smoothing of 0.1 or 0.3 held in a scalar of `kind`, and its exact value."""
    value = {"float16": np.float16(0.1), "bfloat16": ml_dtypes.bfloat16(0.3),
             "float32": np.float32(0.1), "torch-float16": "torch", "jax": "jax"}[kind]
    if value == "torch":
        value = pytest.importorskip("torch").tensor(0.3, dtype=pytest.importorskip("torch").float16)
    elif value == "jax":
        value = pytest.importorskip("jax.numpy").float32(0.1)
    return value, float(value)


def _smoothed_truth(onehot, logits, label_smoothing):
    """float64 ``-sum((y (1 - ls) + ls / C) log_softmax(x))`` per row."""
    x = np.asarray(logits, np.float64)
    log_softmax = x - x.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    targets = onehot * (1.0 - label_smoothing) + label_smoothing / onehot.shape[-1]
    return -(targets * log_softmax).sum(-1)


@pytest.mark.parametrize("kind,dtype", [("float16", np.float32), ("bfloat16", np.float32),
                                        ("float32", np.float64), ("torch-float16", np.float32),
                                        ("jax", np.float64)])
def test_label_smoothing_scalar_of_any_dtype_or_framework_is_used_exactly(rng, kind, dtype):
    """A float16 0.1 is 0.0999756 exactly: the targets use that value, not one
    rounded again in the scalar's own dtype (which put the loss 1300 float32
    ulps off); a 0-d tensor of another framework is a number like any other."""
    label_smoothing, exact = _smoothing_value(kind)
    logits = rng.normal(0.0, 2.0, (6, 5)).astype(dtype)
    onehot = np.eye(5, dtype=dtype)[rng.integers(0, 5, 6)]
    actual = xl.softmax_cross_entropy(onehot, logits, label_smoothing=label_smoothing,
                                      reduction="none")
    truth = _smoothed_truth(onehot, logits, exact)
    np.testing.assert_allclose(actual, truth, rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.0])
def test_dense_label_smoothing_edge_values_match_tf(tf, rng, label_smoothing):
    """Negative smoothing is ignored by TF (`if label_smoothing > 0`); 1.0 is uniform."""
    labels, logits = _case(rng, 1, 4, np.float32)
    onehot = np.eye(4, dtype=np.float32)[labels]
    expected = tf.compat.v1.losses.softmax_cross_entropy(
        onehot, logits, label_smoothing=label_smoothing).numpy()
    actual = xl.softmax_cross_entropy(onehot, logits, label_smoothing=label_smoothing)
    _assert_float32_matches_tf(actual, expected, logits, 1.0)


def test_dense_refuses_batch_by_one_weights_that_sparse_accepts(tf, rng):
    labels, logits = _case(rng, 1, 3, np.float32)
    onehot = np.eye(3, dtype=np.float32)[labels]
    weights = rng.uniform(0.5, 2.0, (labels.shape[0], 1))
    with pytest.raises(ValueError, match="weights can not be broadcast to values"):
        tf.compat.v1.losses.softmax_cross_entropy(onehot, logits, weights)
    with pytest.raises(ValueError, match="weights can not be broadcast to values"):
        xl.softmax_cross_entropy(onehot, logits, weights)
    expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights).numpy()
    _assert_float32_matches_tf(xl.sparse_softmax_cross_entropy(labels, logits, weights),
                               expected, logits, weights)


def test_dense_logits_labels_shape_mismatch_raises_value_error(tf):
    logits = np.zeros((3, 3), np.float32)
    labels = np.eye(4, dtype=np.float32)[:3]
    with pytest.raises(ValueError):
        tf.compat.v1.losses.softmax_cross_entropy(labels, logits)
    with pytest.raises(ValueError):
        xl.softmax_cross_entropy(labels, logits)


# --------------------------------------------------------------------------- compute_weighted_loss
# Every pair of options, and every dtype with every reduction over some zero weights.
WEIGHTED_CASES = _grid(
    pairwise(DTYPE_IDS, RANKS, WEIGHT_KINDS, REDUCTIONS),
    itertools.product(DTYPE_IDS, (3,), ("some_zero",), REDUCTIONS))


@pytest.mark.parametrize("dtype_id,rank,weight_kind,reduction_name", WEIGHTED_CASES)
def test_compute_weighted_loss_matches_tf(tf, rng, dtype_id, rank, weight_kind, reduction_name):
    dtype, reduction = DTYPES_BY_ID[dtype_id], REDUCTION_VALUES[reduction_name]
    shape = LABEL_SHAPES[rank]
    raw = rng.uniform(0.0, 4.0, shape).astype(dtype)
    weights = _make_weights(weight_kind, shape, rng)
    actual = xl.compute_weighted_loss(raw, weights, reduction=reduction)
    tf_raw = raw if dtype == np.float32 else raw.astype(np.float64)
    tf_answer = tf.compat.v1.losses.compute_weighted_loss(
        tf_raw, weights, reduction=reduction).numpy()
    _check_against_oracle(tf, dtype, actual, raw.astype(np.float64), weights, reduction,
                          tf_answer, raw)


@pytest.mark.parametrize("function", ["sparse", "dense", "weighted"])
def test_float64_losses_apply_python_float_weight_at_float64_precision(tf, rng, function):
    """A Python float weight is a float64 value; float32(0.7) is off by 1.7e-8 relative."""
    labels, logits = _case(rng, 1, 4, np.float64)
    onehot = np.eye(4)[labels]
    per_element = _tf_sparse_per_element(tf, labels, logits)
    truth = _reference_reduce(per_element, 0.7, "weighted_sum")
    if function == "sparse":
        actual = xl.sparse_softmax_cross_entropy(labels, logits, 0.7, reduction="weighted_sum")
    elif function == "dense":
        actual = xl.softmax_cross_entropy(onehot, logits, 0.7, reduction="weighted_sum")
    else:
        actual = xl.compute_weighted_loss(per_element, 0.7, reduction="weighted_sum")
    assert np.asarray(actual).dtype == np.float64
    np.testing.assert_allclose(actual, truth, rtol=1e-13)


@st.composite
def _broadcastable_case(draw):
    """Losses of rank 1-4 and weights: a scalar, or each dimension 1 or equal."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    if draw(st.booleans()):
        weight_shape = ()
    else:
        weight_shape = tuple(d if draw(st.booleans()) else 1 for d in shape)
    zero_fraction = draw(st.sampled_from([0.0, 0.5, 1.0]))
    reduction = draw(st.sampled_from(sorted(set(REDUCTION_VALUES.values()))))
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, weight_shape, zero_fraction, reduction, seed


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(case=_broadcastable_case())
def test_compute_weighted_loss_random_broadcasts_match_tf(tf, case):
    shape, weight_shape, zero_fraction, reduction, seed = case
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.0, 3.0, shape).astype(np.float32)
    weights = rng.uniform(0.1, 2.0, weight_shape)
    weights = np.where(rng.uniform(size=weight_shape) < zero_fraction, 0.0, weights)
    expected = tf.compat.v1.losses.compute_weighted_loss(raw, weights, reduction=reduction)
    actual = xl.compute_weighted_loss(raw, weights, reduction=reduction, loss_collection=None)
    _assert_float32_matches_tf(actual, expected.numpy(), raw, weights)


def test_compute_weighted_loss_keeps_float64_precision_tf_loses(tf):
    """TF sums float64 losses in float32; xent keeps float64 (SPEC)."""
    raw = np.array([1.0 + 1e-10, 3.0])
    tf_answer = tf.compat.v1.losses.compute_weighted_loss(raw, reduction="weighted_sum").numpy()
    actual = xl.compute_weighted_loss(raw, reduction="weighted_sum")
    assert np.asarray(actual).dtype == np.float64
    assert np.asarray(actual) == 4.0 + 1e-10
    assert abs(tf_answer - 4.0) < 1e-6  # TF's float32 path: the 1e-10 is gone


@pytest.mark.parametrize("reduction_name", REDUCTIONS[1:])
def test_empty_losses_reduce_to_zero_not_nan(tf, reduction_name):
    reduction = REDUCTION_VALUES[reduction_name]
    logits = np.zeros((0, 3), np.float32)
    labels = np.zeros((0,), np.int64)
    expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(
        labels, logits, reduction=reduction).numpy()
    assert expected == 0.0
    actual = np.asarray(xl.sparse_softmax_cross_entropy(labels, logits, reduction=reduction))
    assert actual.shape == () and actual == 0.0
    actual = np.asarray(xl.compute_weighted_loss(np.zeros((0,), np.float32), reduction=reduction))
    assert actual.shape == () and actual == 0.0


def test_mean_reduction_with_weights_summing_to_zero_is_zero(tf):
    raw = np.array([1.0, 2.0], np.float32)
    weights = np.array([1.0, -1.0])
    expected = tf.compat.v1.losses.compute_weighted_loss(raw, weights,
                                                         reduction="weighted_mean").numpy()
    actual = xl.compute_weighted_loss(raw, weights, reduction="weighted_mean")
    assert expected == 0.0
    assert np.asarray(actual) == 0.0


@pytest.mark.parametrize("reduction_name", REDUCTIONS[1:])
def test_sum_by_nonzero_weights_all_zero_is_zero(tf, rng, reduction_name):
    reduction = REDUCTION_VALUES[reduction_name]
    labels, logits = _case(rng, 2, 5, np.float32)
    weights = np.zeros(labels.shape)
    expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(
        labels, logits, weights, reduction=reduction).numpy()
    actual = np.asarray(xl.sparse_softmax_cross_entropy(labels, logits, weights,
                                                        reduction=reduction))
    assert expected == 0.0
    assert actual == 0.0 and not np.isnan(actual)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_by_nonzero_weights_counts_weights_below_float32s_normals_as_zero(tf, dtype):
    """TF counts non-zero weights on the weights cast to float32, on CPU kernels
    that flush subnormals: 1e-40 (a float32 subnormal) and 1e-50 (0 in float32)
    count as zero there, NaN and 1e-37 as weights. Before, xent counted them:
    1.20 where TF gives 2.41."""
    logits = np.array([[1, 2, 3], [1, 2, 3], [3, 1, 0], [0, 0, 1]], dtype)
    labels = np.array([0, 2, 1, 2])
    for weights in ([1.0, 1e-40, 0.0, 1e-50], [1.0, -1e-40, 2.0, 1e-37], [np.nan, 1e-45, 1, 0]):
        weights = np.array(weights, dtype)
        expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights)
        actual = xl.sparse_softmax_cross_entropy(labels, logits, weights)
        np.testing.assert_allclose(np.asarray(actual), expected.numpy(), rtol=1e-6)
        unweighted = tf.compat.v1.losses.compute_weighted_loss(
            np.arange(1, 5, dtype=dtype), weights)
        np.testing.assert_allclose(
            np.asarray(xl.compute_weighted_loss(np.arange(1, 5, dtype=dtype), weights)),
            unweighted.numpy(), rtol=1e-6)


# --------------------------------------------------------------------------- weight errors
INVALID_WEIGHT_SHAPES = {
    "wrong_length": lambda shape: np.ones(shape[0] + 1),
    "too_many_dims": lambda shape: np.ones(shape + (2, 2)),
    "lower_rank_nonscalar": lambda shape: np.ones(shape[:1]),
    "mismatched_dim": lambda shape: np.ones(shape[:-1] + (shape[-1] + 1,)),
}


@pytest.mark.parametrize("layout", sorted(INVALID_WEIGHT_SHAPES))
def test_compute_weighted_loss_non_broadcastable_weights_raise_tf_message(tf, layout):
    raw = np.ones((3, 2, 4), np.float32)
    weights = INVALID_WEIGHT_SHAPES[layout](raw.shape)
    with pytest.raises(ValueError, match="weights can not be broadcast to values"):
        tf.compat.v1.losses.compute_weighted_loss(raw, weights)
    with pytest.raises(ValueError, match="weights can not be broadcast to values"):
        xl.compute_weighted_loss(raw, weights)
    assert xl.get_losses() == []


@pytest.mark.parametrize("layout", ["wrong_length", "lower_rank_nonscalar", "mismatched_dim"])
@pytest.mark.parametrize("function", ["sparse", "dense"])
def test_loss_non_broadcastable_weights_raise_tf_message(tf, rng, function, layout):
    labels, logits = _case(rng, 2, 3, np.float32)
    onehot = np.eye(3, dtype=np.float32)[labels]
    weights = INVALID_WEIGHT_SHAPES[layout](labels.shape)
    tf_fn = (tf.compat.v1.losses.sparse_softmax_cross_entropy if function == "sparse"
             else tf.compat.v1.losses.softmax_cross_entropy)
    xent_fn = xl.sparse_softmax_cross_entropy if function == "sparse" else xl.softmax_cross_entropy
    tf_labels = labels if function == "sparse" else onehot
    with pytest.raises(ValueError, match="weights can not be broadcast to values"):
        tf_fn(tf_labels, logits, weights)
    with pytest.raises(ValueError, match="weights can not be broadcast to values"):
        xent_fn(tf_labels, logits, weights)


def test_sparse_weights_one_rank_up_without_unit_tail_are_refused(tf, rng):
    """TF squeezes weights one rank above the labels and fails when the tail is not 1."""
    labels, logits = _case(rng, 1, 3, np.float32)
    weights = np.ones(labels.shape + (3,))
    with pytest.raises(tf.errors.InvalidArgumentError, match="squeeze"):
        tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights)
    with pytest.raises(ValueError):
        xl.sparse_softmax_cross_entropy(labels, logits, weights)


@pytest.mark.parametrize("function", ["sparse", "dense", "weighted"])
def test_weights_none_raises_value_error(tf, function):
    logits = np.eye(3, dtype=np.float32)
    calls = {
        "sparse": (lambda m: m.sparse_softmax_cross_entropy(np.array([0, 1, 2]), logits,
                                                           weights=None)),
        "dense": lambda m: m.softmax_cross_entropy(np.eye(3), logits, weights=None),
        "weighted": lambda m: m.compute_weighted_loss(np.ones(3, np.float32), weights=None),
    }
    with pytest.raises(ValueError):
        calls[function](tf.compat.v1.losses)
    with pytest.raises(ValueError):
        calls[function](xl)


@pytest.mark.parametrize("weights", [np.array([1.0 + 2.0j, 0.5 + 1.0j]), [1.0 + 2.0j, 0.5], 1j],
                         ids=["array", "list", "scalar"])
@pytest.mark.parametrize("function", ["sparse", "dense", "weighted"])
def test_complex_weights_are_refused_where_tf_drops_their_imaginary_part(tf, function, weights):
    labels, logits = np.array([0, 1]), np.eye(2, dtype=np.float32)
    calls = {
        "sparse": lambda m, w: m.sparse_softmax_cross_entropy(labels, logits, w),
        "dense": lambda m, w: m.softmax_cross_entropy(np.eye(2), logits, w),
        "weighted": lambda m, w: m.compute_weighted_loss(np.ones(2, np.float32), w),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # NumPy's ComplexWarning: TF's only sign
        truncated = calls[function](tf.compat.v1.losses, weights).numpy()
    real = calls[function](tf.compat.v1.losses, np.real(np.asarray(weights))).numpy()
    np.testing.assert_array_equal(truncated, real)
    with pytest.raises(TypeError, match="`weights` must be real; received dtype complex128"):
        calls[function](xl, weights)
    assert xl.get_losses() == []


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("reduction", ["none", "weighted_sum", "weighted_sum_by_nonzero_weights"])
def test_complex_losses_reduce_their_real_parts_silently_as_tf(tf, framework, reduction):
    """TF's `compute_weighted_loss` casts complex losses to float32 (its cast
    drops the imaginary part, silently) and the result back: so does xent,
    without NumPy's, torch's or JAX's warning of the cast."""
    losses = np.array([1 + 5j, 2, 3 - 1j], np.complex64)
    weights = np.array([1.0, 2.0, 0.0], np.float32)
    expected = tf.compat.v1.losses.compute_weighted_loss(losses, weights, reduction=reduction)
    convert = {"numpy": np.asarray, "torch": pytest.importorskip("torch").as_tensor,
               "jax": pytest.importorskip("jax.numpy").asarray}[framework]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        actual = xl.compute_weighted_loss(convert(losses), convert(weights), reduction=reduction)
    actual = np.asarray(actual)
    assert actual.dtype == np.complex64 and actual.shape == tuple(expected.shape)
    np.testing.assert_array_equal(actual, expected.numpy())


# --------------------------------------------------------------------------- None arguments
@pytest.mark.parametrize("which", ["labels", "logits"])
def test_sparse_none_argument_message_matches_tf(tf, which):
    args = {"labels": np.array([0, 1]), "logits": np.eye(2, dtype=np.float32)}
    args[which] = None
    with pytest.raises(ValueError) as tf_error:
        tf.compat.v1.losses.sparse_softmax_cross_entropy(**args)
    assert str(tf_error.value) == f"Argument `{which}` must not be None."
    with pytest.raises(ValueError, match=re.escape(str(tf_error.value))):
        xl.sparse_softmax_cross_entropy(**args)


@pytest.mark.parametrize("function", ["sparse_softmax_cross_entropy", "softmax_cross_entropy"])
def test_none_weights_message_is_one(tf, function):
    """``weights=None`` is TF's ValueError with one message on every function and
    array type (the NumPy sparse one said "`weights` must hold numbers;
    received None"; TF's own text differs between the two functions)."""
    torch = pytest.importorskip("torch")
    labels = np.array([0, 1]) if function.startswith("sparse") else np.eye(2)
    args = (labels, np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError):
        getattr(tf.compat.v1.losses, function)(*args, weights=None)
    for inputs in (args, tuple(torch.from_numpy(a) for a in args)):
        with pytest.raises(ValueError) as error:
            getattr(xl, function)(*inputs, weights=None)
        assert str(error.value) == "Argument `weights` must not be None."


@pytest.mark.parametrize("which", ["onehot_labels", "logits"])
def test_dense_none_argument_message_matches_tf(tf, which):
    args = {"onehot_labels": np.eye(2), "logits": np.eye(2, dtype=np.float32)}
    args[which] = None
    with pytest.raises(ValueError) as tf_error:
        tf.compat.v1.losses.softmax_cross_entropy(**args)
    assert str(tf_error.value) == f"Argument `{which}` must not be None."
    with pytest.raises(ValueError, match=re.escape(str(tf_error.value))):
        xl.softmax_cross_entropy(**args)


def test_compute_weighted_loss_none_losses_raise_value_error(tf):
    with pytest.raises(ValueError):
        tf.compat.v1.losses.compute_weighted_loss(None)
    with pytest.raises(ValueError):
        xl.compute_weighted_loss(None)


# --------------------------------------------------------------------------- dtypes, inputs
@pytest.mark.parametrize("reduction_name", REDUCTIONS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DTYPE_IDS)
def test_result_dtype_is_logits_dtype(rng, dtype, reduction_name):
    reduction = REDUCTION_VALUES[reduction_name]
    labels, logits = _case(rng, 2, 4, dtype)
    onehot = np.eye(4, dtype=np.float32)[labels]
    for result in (
        xl.sparse_softmax_cross_entropy(labels, logits, reduction=reduction),
        xl.softmax_cross_entropy(onehot, logits, label_smoothing=0.1, reduction=reduction),
        xl.compute_weighted_loss(logits[..., 0], reduction=reduction),
    ):
        assert np.asarray(result).dtype == np.dtype(dtype)


def test_python_list_losses_default_to_float32_like_tf(tf):
    expected = tf.compat.v1.losses.compute_weighted_loss([1.0, 2.0, 3.0],
                                                         weights=[1.0, 0.0, 1.0])
    actual = np.asarray(xl.compute_weighted_loss([1.0, 2.0, 3.0], weights=[1.0, 0.0, 1.0]))
    assert actual.dtype == expected.dtype.as_numpy_dtype
    assert actual == expected.numpy()


@pytest.mark.parametrize("function", ["sparse", "dense", "weighted"])
def test_inputs_are_never_modified(rng, function):
    labels, logits = _case(rng, 2, 4, np.float32)
    onehot = np.eye(4, dtype=np.float32)[labels]
    weights = _make_weights("some_zero", labels.shape, rng)
    inputs = {"labels": labels, "logits": logits, "onehot": onehot, "weights": weights}
    before = {k: v.copy() for k, v in inputs.items()}
    if function == "sparse":
        xl.sparse_softmax_cross_entropy(labels, logits, weights)
    elif function == "dense":
        xl.softmax_cross_entropy(onehot, logits, weights, label_smoothing=0.2)
    else:
        xl.compute_weighted_loss(logits, weights[..., None], reduction="none")
    for key, value in inputs.items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
        assert value.dtype == before[key].dtype


def test_read_only_inputs_are_accepted(tf, rng):
    labels, logits = _case(rng, 2, 4, np.float32)
    weights = _make_weights("per_example", labels.shape, rng)
    for array in (labels, logits, weights):
        array.setflags(write=False)
    expected = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights).numpy()
    actual = xl.sparse_softmax_cross_entropy(labels, logits, weights)
    _assert_float32_matches_tf(actual, expected, logits, weights)
    assert np.asarray(xl.compute_weighted_loss(logits, reduction="weighted_sum")).dtype == np.float32


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_zero_classes_with_label_smoothing_give_tfs_zero(tf, label_smoothing):
    """No classes: TF's ls / C is inf times an empty array; xent divided a Python float by 0."""
    empty = np.ones((2, 0), np.float32)
    expected = tf.compat.v1.losses.softmax_cross_entropy(
        empty, empty, label_smoothing=label_smoothing).numpy()
    actual = np.asarray(xl.softmax_cross_entropy(empty, empty, label_smoothing=label_smoothing))
    assert actual.shape == expected.shape == () and actual.dtype == expected.dtype
    assert actual == expected == 0.0


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_eager_inputs_find_a_bad_label_before_bad_weights_as_tf_eager(tf, backend):
    """torch and JAX calls are eager, as TF 2's, which computes the loss (and
    finds the label out of range) before the reduction checks the weights; TF's
    graph mode, like NumPy calls, checks the weights first."""
    labels, logits, weights = [0, 5, 1, 2], np.zeros((4, 3), np.float32), np.ones(3, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="label value of 5"):
        tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights=weights)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        convert = torch.tensor
    else:
        convert = pytest.importorskip("jax.numpy").asarray
    with pytest.raises(xerrors.InvalidArgumentError, match="label value of 5"):
        xl.sparse_softmax_cross_entropy(convert(labels), convert(logits), weights=convert(weights))
    with pytest.raises(ValueError, match="weights can not be broadcast"):
        xl.sparse_softmax_cross_entropy(np.array(labels), logits, weights=weights)
