"""TensorFlow's and Keras' own test cases for these losses, re-expressed for xent.

Sources (re-expressed, not copied):
* tensorflow/python/kernel_tests/nn_ops/losses_test.py: SoftmaxCrossEntropyLossTest,
  SparseSoftmaxCrossEntropyLossTest, ComputeWeightedLossTest, AddLossTest, and the
  softmax half of SigmoidCrossEntropyLossTest.testSigmoidLabelSmoothingEqualsSoftmaxTwoLabel.
* keras/src/losses/losses_test.py: CategoricalCrossentropyTest and
  SparseCategoricalCrossentropyTest (TensorFlow-backend branches).

Each case runs the same inputs through TensorFlow and through xent and requires
xent to match TensorFlow; where the upstream test hard-codes a number, xent is
also held to that number with the upstream test's precision (TF's
`assertAlmostEqual(..., 3)` = 3 places; Keras' `assertAlmostEqual` = 3 decimals,
its `assertAllClose` = atol/rtol 1e-6).
"""
import numpy as np
import pytest

from xent import losses as xl
from xent.keras import losses as xk

DIAG10 = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]], np.float32)
DIAG100 = np.array([[100.0, -100.0, -100.0], [-100.0, 100.0, -100.0], [-100.0, -100.0, 100.0]],
                   np.float32)
ONEHOT_CORRECT = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
ONEHOT_WRONG = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]])
MEASUREMENT_WEIGHTS = np.array([[3, 4, 5], [2, 6, 0], [8, 0, 1]], np.float32)


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def _tf_places(actual, expected, places=3):
    """unittest's assertAlmostEqual(places=3): round(diff, places) == 0."""
    assert round(float(abs(float(actual) - float(expected))), places) == 0, (actual, expected)


def _match_tf(actual, tf_value, rtol=1e-6, atol=1e-5):
    actual, tf_value = np.asarray(actual), _np(tf_value)
    assert actual.dtype == tf_value.dtype
    assert actual.shape == tf_value.shape
    np.testing.assert_allclose(actual, tf_value, rtol=rtol, atol=atol)


# =========================================================================== v1: dense
class TestSoftmaxCrossEntropyLoss:
    def _both(self, tf, *args, **kwargs):
        return (xl.softmax_cross_entropy(*args, **kwargs),
                tf.compat.v1.losses.softmax_cross_entropy(*args, **kwargs))

    def test_none_weight_raises_value_error(self, tf):
        with pytest.raises(ValueError):
            tf.compat.v1.losses.softmax_cross_entropy(ONEHOT_CORRECT, DIAG10, weights=None)
        with pytest.raises(ValueError):
            xl.softmax_cross_entropy(ONEHOT_CORRECT, DIAG10, weights=None)

    def test_all_correct(self, tf):
        actual, expected = self._both(tf, ONEHOT_CORRECT, DIAG10)
        _match_tf(actual, expected)
        _tf_places(actual, 0.0)

    def test_all_wrong(self, tf):
        actual, expected = self._both(tf, ONEHOT_WRONG, DIAG10)
        _match_tf(actual, expected)
        _tf_places(actual, 10.0)

    @pytest.mark.parametrize("as_array", [False, True])
    def test_non_zero_loss_with_scalar_weight(self, tf, as_array):
        weights = np.float32(2.3) if as_array else 2.3
        actual, expected = self._both(tf, ONEHOT_WRONG, DIAG10, weights)
        _match_tf(actual, expected)
        _tf_places(actual, 2.3 * 10.0)

    def test_non_zero_loss_with_one_dim_batch_specific_weights(self, tf):
        actual, expected = self._both(tf, ONEHOT_WRONG, DIAG10, np.array([1.2, 3.4, 5.6]))
        _match_tf(actual, expected)
        _tf_places(actual, (1.2 + 3.4 + 5.6) * 10.0 / 3.0)

    def test_all_wrong_all_weights_missing(self, tf):
        actual, expected = self._both(tf, ONEHOT_WRONG, DIAG10, np.zeros(3, np.int32))
        _match_tf(actual, expected)
        _tf_places(actual, 0.0)

    def test_some_weights_missing(self, tf):
        actual, expected = self._both(tf, ONEHOT_WRONG, DIAG10, np.array([1.2, 0.0, 0.0]))
        _match_tf(actual, expected)
        _tf_places(actual, 12.0)

    def test_measurement_specific_weights_raise(self, tf):
        with pytest.raises(ValueError):
            tf.compat.v1.losses.softmax_cross_entropy(ONEHOT_CORRECT, DIAG100,
                                                      weights=MEASUREMENT_WEIGHTS)
        with pytest.raises(ValueError):
            xl.softmax_cross_entropy(ONEHOT_CORRECT, DIAG100, weights=MEASUREMENT_WEIGHTS)

    def test_label_smoothing(self, tf):
        logits = np.array([[100.0, -100.0, -100.0]], np.float32)
        actual, expected = self._both(tf, np.array([[1, 0, 0]]), logits, label_smoothing=0.1)
        _match_tf(actual, expected)
        _tf_places(actual, 400.0 * 0.1 / 3.0)

    def test_two_label_smoothed_softmax_equals_sigmoid(self, tf):
        """SigmoidCrossEntropyLossTest.testSigmoidLabelSmoothingEqualsSoftmaxTwoLabel."""
        sigmoid = tf.compat.v1.losses.sigmoid_cross_entropy(
            np.array([[1, 0, 1]]), np.array([[100.0, -100.0, -100.0]], np.float32),
            label_smoothing=0.1)
        logits = np.array([[0.0, 100.0], [100.0, 0.0], [100.0, 0.0]], np.float32)
        labels = np.array([[0, 1], [1, 0], [0, 1]])
        actual, expected = self._both(tf, labels, logits, label_smoothing=0.1)
        _match_tf(actual, expected)
        _tf_places(actual, _np(sigmoid))

    def test_no_loss_collection_adds_nothing(self, tf):
        """AddLossTest.testNoCollectLossesBatch2 (the softmax case)."""
        logits = np.array([[1.2, 0.4, -1.0, -1.1]] * 2, np.float32)
        labels = np.array([[1.0, 0.0, 0.0, 1.0]] * 2, np.float32)
        assert not xl.get_losses()
        actual = xl.softmax_cross_entropy(logits, labels, loss_collection=None)
        _match_tf(actual, tf.compat.v1.losses.softmax_cross_entropy(logits, labels,
                                                                    loss_collection=None))
        assert not xl.get_losses()


# =========================================================================== v1: sparse
class TestSparseSoftmaxCrossEntropyLoss:
    def _both(self, tf, *args, **kwargs):
        return (xl.sparse_softmax_cross_entropy(*args, **kwargs),
                tf.compat.v1.losses.sparse_softmax_cross_entropy(*args, **kwargs))

    def test_none_weight_raises_value_error(self, tf):
        labels = np.array([[0], [1], [2]])
        with pytest.raises(ValueError):
            tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, DIAG10, weights=None)
        with pytest.raises(ValueError):
            xl.sparse_softmax_cross_entropy(labels, DIAG10, weights=None)

    @pytest.mark.parametrize("labels", [np.array([[0], [1], [2]], np.int32),
                                        np.array([[0], [1], [2]], np.int64),
                                        np.array([0, 1, 2], np.int32)],
                             ids=["int32", "int64", "non_column"])
    def test_all_correct(self, tf, labels):
        actual, expected = self._both(tf, labels, DIAG10)
        _match_tf(actual, expected)
        _tf_places(actual, 0.0)

    @pytest.mark.parametrize("labels", [np.array([[2], [0], [1]], np.int32),
                                        np.array([[2], [0], [1]], np.int64),
                                        np.array([2, 0, 1], np.int32)],
                             ids=["int32", "int64", "non_column"])
    def test_all_wrong(self, tf, labels):
        actual, expected = self._both(tf, labels, DIAG10)
        _match_tf(actual, expected)
        _tf_places(actual, 10.0)

    @pytest.mark.parametrize("weights", [2.3, np.float32(2.3), np.array([2.3], np.float32)],
                             ids=["python", "scalar_tensor", "one_element_1d"])
    def test_non_zero_loss_with_scalar_like_weight(self, tf, weights):
        actual, expected = self._both(tf, np.array([[2], [0], [1]]), DIAG10, weights)
        _match_tf(actual, expected)
        _tf_places(actual, 2.3 * 10.0)

    @pytest.mark.parametrize("weights", [((1.2,), (3.4,), (5.6,)),
                                         np.array([1.2, 3.4, 5.6], np.float32).reshape(3, 1)],
                             ids=["nested_tuples", "column_array"])
    def test_non_zero_loss_with_column_weights(self, tf, weights):
        actual, expected = self._both(tf, np.array([[2], [0], [1]]), DIAG10, weights)
        _match_tf(actual, expected)
        _tf_places(actual, (1.2 + 3.4 + 5.6) * 10.0 / 3.0)

    def test_unknown_shapes_with_scalar_weight(self, tf):
        """testUnknownShapePlaceholderForLogitsLabelsButScalarWeights, fed eagerly."""
        actual, expected = self._both(tf, [[2], [0], [1]], DIAG10.tolist(), 1.0)
        _match_tf(actual, expected)
        _tf_places(actual, 10.0)

    def test_all_wrong_all_weights_missing(self, tf):
        actual, expected = self._both(tf, np.array([[2], [0], [1]]), DIAG10,
                                      np.zeros((3, 1), np.int32))
        _match_tf(actual, expected)
        _tf_places(actual, 0.0)

    def test_some_weights_missing(self, tf):
        actual, expected = self._both(tf, np.array([[2], [0], [1]]), DIAG10,
                                      np.array([1.2, 0.0, 0.0]).reshape(3, 1))
        _match_tf(actual, expected)
        _tf_places(actual, 12.0)

    @pytest.mark.parametrize("case", ["measurement_weights", "weight_size", "label_size",
                                      "weight_shape"])
    def test_inconsistent_shapes_raise_value_error(self, tf, case):
        logits4 = (np.eye(4, dtype=np.float32) * 200.0 - 100.0)
        labels, logits, weights = {
            "measurement_weights": (np.array([[0], [1], [2]]), DIAG100, MEASUREMENT_WEIGHTS),
            "weight_size": (np.array([[0], [1], [2]]), DIAG100,
                            np.array([1.2, 3.4, 5.6, 7.8], np.float32)),
            "label_size": (np.array([[0], [1], [2], [3]]), DIAG100,
                           np.array([1.2, 3.4, 5.6], np.float32)),
            "weight_shape": (np.array([[0], [1], [2], [3]]), logits4,
                             np.array([[1.2, 3.4], [5.6, 7.8]], np.float32)),
        }[case]
        # TF raises ValueError, or InvalidArgumentError from an eager squeeze; xent's
        # InvalidArgumentError is a ValueError.
        with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
            tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights=weights)
        with pytest.raises(ValueError):
            xl.sparse_softmax_cross_entropy(labels, logits, weights=weights)

    def test_inconsistent_label_shape_raises_rank_message(self, tf):
        logits = np.eye(4, dtype=np.float32) * 200.0 - 100.0
        labels = np.array([[0, 1], [2, 3]])
        message = "`labels.shape.rank` must equal `logits.shape.rank - 1`"
        with pytest.raises(ValueError, match=message):
            tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights=1.2)
        with pytest.raises(ValueError, match=message):
            xl.sparse_softmax_cross_entropy(labels, logits, weights=1.2)


# =========================================================================== v1: weighted
RAW_LOSSES = np.arange(24, dtype=np.float64).reshape(3, 2, 4)
RAW_LOSSES.setflags(write=False)
# TF's tests loop over Reduction.all(), whose last two keys are one string: once is enough.
REDUCTIONS = ("none", "weighted_sum", "weighted_mean", "weighted_sum_over_batch_size",
              "weighted_sum_by_nonzero_weights")
UNIT_WEIGHT_SHAPES = [None, (1, 1, 1), (1, 1, 4), (1, 2, 1), (1, 2, 4), (3, 1, 1), (3, 1, 4),
                      (3, 2, 1), (3, 2, 4)]
VALID_WEIGHTS = {
    "1x1x1": (((17.0,),),),
    "1x2x1": (((17.0,), (3.0,)),),
    "1x1x4": (((17.0, 0.0, 2.0, 5.0),),),
    "3x1x1": (((17.0,),), ((5.0,),), ((2.0,),)),
    "3x2x1": (((17.0,), (3.0,)), ((5.0,), (31.0,)), ((2.0,), (7.0,))),
    "3x1x4": (((17.0, 0.0, 2.0, 5.0),), ((5.0, 31.0, 17.0, 5.0),), ((7.0, 3.0, 11.0, 5.0),)),
    "1x2x4": (((17.0, 0.0, 2.0, 5.0), (3.0, 13.0, 11.0, 2.0)),),
    "3x2x4": (((17.0, 0.0, 2.0, 5.0), (3.0, 13.0, 11.0, 2.0)),
              ((5.0, 31.0, 17.0, 5.0), (13.0, 3.0, 0.0, 11.0)),
              ((0.0, 3.0, 11.0, 5.0), (13.0, 11.0, 1.0, 7.0))),
}
INVALID_WEIGHTS = {
    "too_many_dims": np.zeros((2, 2, 2, 2)),
    "3": (17.0, 5.0, 2.0),
    "3x1": ((17.0,), (5.0,), (2.0,)),
    "3x2": ((17.0, 3.0), (5.0, 31.0), (2.0, 7.0)),
    "1x2": (17.0, 3.0),
    "scalar_1d": (17.0,),
}


def _close(actual, expected):
    """Keras/TF assertAllClose (rtol=atol=1e-6), plus xent keeps float64."""
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-6, atol=1e-6)


class TestComputeWeightedLoss:
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    def test_unweighted(self, tf, reduction):
        results = []
        for shape in UNIT_WEIGHT_SHAPES:
            kwargs = {} if shape is None else {"weights": np.ones(shape)}
            actual = xl.compute_weighted_loss(RAW_LOSSES, reduction=reduction, **kwargs)
            expected = tf.compat.v1.losses.compute_weighted_loss(RAW_LOSSES, reduction=reduction,
                                                                 **kwargs)
            _match_tf(actual, expected)
            results.append(actual)
        assert len(xl.get_losses()) == 9
        for actual in results:
            if reduction == "none":
                _close(actual, RAW_LOSSES)
            elif reduction == "weighted_sum":
                _close(actual, np.sum(RAW_LOSSES))
            else:
                _close(actual, np.mean(RAW_LOSSES))

    def test_scalar_weight(self, tf):
        actual = xl.compute_weighted_loss(RAW_LOSSES, weights=17.0)
        assert len(xl.get_losses()) == 1
        _match_tf(actual, tf.compat.v1.losses.compute_weighted_loss(RAW_LOSSES, weights=17.0))
        _close(actual, np.mean(17.0 * RAW_LOSSES))

    @pytest.mark.parametrize("name", sorted(INVALID_WEIGHTS))
    def test_invalid_weights(self, tf, name):
        weights = INVALID_WEIGHTS[name]
        message = "weights can not be broadcast to values"
        with pytest.raises(ValueError, match=message):
            tf.compat.v1.losses.compute_weighted_loss(RAW_LOSSES, weights=weights)
        with pytest.raises(ValueError, match=message):
            xl.compute_weighted_loss(RAW_LOSSES, weights=weights)
        assert len(xl.get_losses()) == 0

    def test_invalid_weight_mismatched_dim(self, tf):
        raw = RAW_LOSSES.reshape(3, 2, 4, 1)
        weights = np.ones((3, 2, 4, 2))
        message = "weights can not be broadcast to values"
        with pytest.raises(ValueError, match=message):
            tf.compat.v1.losses.compute_weighted_loss(raw, weights=weights)
        with pytest.raises(ValueError, match=message):
            xl.compute_weighted_loss(raw, weights=weights)
        assert len(xl.get_losses()) == 0

    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("name", sorted(VALID_WEIGHTS))
    def test_valid_weights(self, tf, name, reduction):
        weights = VALID_WEIGHTS[name]
        actual = xl.compute_weighted_loss(RAW_LOSSES, weights=weights, reduction=reduction)
        assert len(xl.get_losses()) == 1
        expected = tf.compat.v1.losses.compute_weighted_loss(RAW_LOSSES, weights=weights,
                                                             reduction=reduction)
        _match_tf(actual, expected)
        weighted = np.asarray(weights) * RAW_LOSSES
        broadcast = np.asarray(weights) * np.ones_like(RAW_LOSSES)
        upstream_expectation = {
            "none": weighted,
            "weighted_sum": weighted.sum(),
            "weighted_mean": weighted.sum() / broadcast.sum(),
            "weighted_sum_by_nonzero_weights": weighted.sum() / np.count_nonzero(broadcast),
            "weighted_sum_over_batch_size": weighted.sum() / RAW_LOSSES.size,
        }[reduction]
        _close(actual, upstream_expectation)


# =========================================================================== Keras
Y_PRED_PROBS = np.array([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]], np.float32)
LOGITS = np.array([[8.0, 1.0, 1.0], [0.0, 9.0, 1.0], [2.0, 3.0, 5.0]])
SAMPLE_WEIGHT = np.array([[1.2], [3.4], [5.6]]).reshape((3, 1))


def _keras_decimal(actual, expected):
    """Keras' TestCase.assertAlmostEqual: np.testing.assert_almost_equal(decimal=3)."""
    np.testing.assert_almost_equal(np.asarray(actual, np.float64), expected, decimal=3)


def _keras_all_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-6, rtol=1e-6)


def _labels(cls_name, rows):
    """Sparse labels as a column (as Keras' tests pass them), or their one-hot."""
    rows = np.asarray(rows)
    return rows.reshape(-1, 1) if cls_name.startswith("Sparse") else np.eye(3, dtype=np.int64)[rows]


KERAS_CLASSES = ["SparseCategoricalCrossentropy", "CategoricalCrossentropy"]


@pytest.mark.parametrize("cls_name", KERAS_CLASSES)
class TestKerasCrossentropyCases:
    def _both(self, keras, cls_name, ctor, *args, **kwargs):
        return (getattr(xk, cls_name)(**ctor)(*args, **kwargs),
                getattr(keras.losses, cls_name)(**ctor)(*args, **kwargs))

    def test_config_round_trip(self, keras, cls_name):
        kwargs = {"name": "scce"} if cls_name.startswith("Sparse") else {"name": "cce", "axis": -1}
        obj = getattr(xk, cls_name)(**kwargs)
        config = obj.get_config()
        assert config == getattr(keras.losses, cls_name)(**kwargs).get_config()
        assert getattr(xk, cls_name).from_config(config).get_config() == config

    def test_all_correct_unweighted(self, keras, cls_name):
        y_true = _labels(cls_name, [0, 1, 2])
        y_pred = np.eye(3, dtype=np.float32)
        actual, expected = self._both(keras, cls_name, {}, y_true, y_pred)
        _match_tf(actual, expected)
        _keras_decimal(actual, 0.0)
        actual, expected = self._both(keras, cls_name, {"from_logits": True}, y_true,
                                      np.eye(3) * 10.0)
        _match_tf(actual, expected)
        _keras_decimal(actual, 0.0)

    def test_unweighted(self, keras, cls_name):
        y_true = _labels(cls_name, [0, 1, 2]).squeeze()
        actual, expected = self._both(keras, cls_name, {}, y_true, Y_PRED_PROBS)
        _match_tf(actual, expected)
        _keras_decimal(actual, 0.3239)
        actual, expected = self._both(keras, cls_name, {"from_logits": True}, y_true, LOGITS)
        _match_tf(actual, expected)
        _keras_decimal(actual, 0.0573)

    def test_scalar_weighted(self, keras, cls_name):
        y_true = _labels(cls_name, [0, 1, 2])
        actual, expected = self._both(keras, cls_name, {}, y_true, Y_PRED_PROBS, sample_weight=2.3)
        _match_tf(actual, expected)
        _keras_decimal(actual, 0.7449)
        actual, expected = self._both(keras, cls_name, {"from_logits": True}, y_true, LOGITS,
                                      sample_weight=2.3)
        _match_tf(actual, expected)
        _keras_decimal(actual, 0.1317)

    def test_sample_weighted(self, keras, cls_name):
        y_true = _labels(cls_name, [0, 1, 2])
        actual, expected = self._both(keras, cls_name, {}, y_true, Y_PRED_PROBS,
                                      sample_weight=SAMPLE_WEIGHT)
        _match_tf(actual, expected)
        _keras_decimal(actual, 1.0696)
        actual, expected = self._both(keras, cls_name, {"from_logits": True}, y_true, LOGITS,
                                      sample_weight=SAMPLE_WEIGHT)
        _match_tf(actual, expected)
        _keras_decimal(actual, 0.31829)

    def test_no_reduction(self, keras, cls_name):
        y_true = _labels(cls_name, [0, 1, 2])
        actual, expected = self._both(keras, cls_name, {"from_logits": True, "reduction": None},
                                      y_true, LOGITS)
        _match_tf(actual, expected)
        _keras_all_close(actual, (0.001822, 0.000459, 0.169846))

    def test_dtype_arg_bfloat16(self, keras, cls_name):
        y_true = _labels(cls_name, [0, 1, 2])
        y_pred = np.eye(3, dtype=np.float32)
        actual, expected = self._both(keras, cls_name, {"dtype": "bfloat16"}, y_true, y_pred)
        assert expected.dtype.name == "bfloat16"
        assert np.asarray(actual).dtype.name == "bfloat16"
        np.testing.assert_allclose(np.asarray(actual, np.float32), _np(expected).astype(np.float32),
                                   atol=1e-2)


@pytest.mark.parametrize("array_type", ["list", "ndarray"])
def test_categorical_label_smoothing(keras, array_type):
    logits = [[100.0, -100.0, -100.0]]
    y_true = [[1, 0, 0]]
    if array_type == "ndarray":
        logits, y_true = np.asarray(logits), np.asarray(y_true)
    kwargs = {"from_logits": True, "label_smoothing": 0.1}
    actual = xk.CategoricalCrossentropy(**kwargs)(y_true, logits)
    expected = keras.losses.CategoricalCrossentropy(**kwargs)(np.asarray(y_true),
                                                              np.asarray(logits))
    _match_tf(actual, expected)
    _keras_decimal(actual, 400.0 * 0.1 / 3.0)


def test_categorical_shape_mismatch(keras):
    y_true = np.array([[0], [1], [2]])
    y_pred = np.array([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]])
    with pytest.raises(ValueError, match="must have the same shape"):
        keras.losses.CategoricalCrossentropy()(y_true, y_pred)
    with pytest.raises(ValueError, match="must have the same shape"):
        xk.CategoricalCrossentropy()(y_true, y_pred)


@pytest.mark.parametrize("column", [False, True])
def test_sparse_ignore_class(keras, column):
    y_true = np.array([[[-1], [2]]]) if column else np.array([[-1, 2]])
    logits = np.array([[[0.854, 0.698, 0.598], [0.088, 0.86, 0.018]]])
    kwargs = {"from_logits": True, "ignore_class": -1, "reduction": None}
    actual = xk.SparseCategoricalCrossentropy(**kwargs)(y_true, logits)
    _match_tf(actual, keras.losses.SparseCategoricalCrossentropy(**kwargs)(y_true, logits))
    _keras_all_close(actual, [[0.0, 1.480129]])


BINARY_TRUE = np.array([[0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]])
BINARY_PERFECT = np.eye(2)[BINARY_TRUE]
BINARY_IMPERFECT = BINARY_PERFECT.copy()
BINARY_IMPERFECT[0, 3] = [0.2, 0.8]
BINARY_IMPERFECT[3, 3] = [0.6, 0.4]
MULTI_TRUE = np.array([[0, 1, 2, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]])
MULTI_PERFECT = np.eye(3)[MULTI_TRUE]
MULTI_IMPERFECT = MULTI_PERFECT.copy()
MULTI_IMPERFECT[0, 3] = [0.2, 0.0, 0.8]
MULTI_IMPERFECT[1, 0] = [0.7, 0.3, 0.0]
MULTI_IMPERFECT[3, 2] = [0.5, 0.5, 0.0]


@pytest.mark.parametrize("y_true,y_pred,upstream", [
    (BINARY_TRUE, BINARY_PERFECT, 0.0),
    (BINARY_TRUE, BINARY_IMPERFECT, (-np.log(0.2) - np.log(0.4)) / 16.0),
    (MULTI_TRUE, MULTI_PERFECT, 0.0),
    (MULTI_TRUE, MULTI_IMPERFECT, (-np.log(0.2) - np.log(0.3) - np.log(0.5)) / 16.0),
], ids=["binary_perfect", "binary_imperfect", "multi_perfect", "multi_imperfect"])
def test_sparse_segmentation(keras, y_true, y_pred, upstream):
    actual = xk.SparseCategoricalCrossentropy()(y_true, y_pred)
    _match_tf(actual, keras.losses.SparseCategoricalCrossentropy()(y_true, y_pred))
    _keras_all_close(actual, upstream)


@pytest.mark.parametrize("y_true,y_pred", [(BINARY_TRUE, BINARY_PERFECT),
                                           (MULTI_TRUE, MULTI_PERFECT)], ids=["binary", "multi"])
def test_sparse_segmentation_different_axis_refused_on_tf_backend(keras, y_true, y_pred):
    reshaped = np.moveaxis(y_pred, source=2, destination=0)
    message = "Only axis=-1 is currently supported. Received: axis=0"
    with pytest.raises(ValueError, match=message):
        keras.losses.SparseCategoricalCrossentropy(axis=0)(y_true, reshaped)
    with pytest.raises(ValueError, match=message):
        xk.SparseCategoricalCrossentropy(axis=0)(y_true, reshaped)
