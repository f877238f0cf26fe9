"""`xent.nn` against `tf.nn` on the same inputs.

The truth is TensorFlow run in float64 on the inputs (cast exactly to float64);
xent's result, in the logits' dtype, must lie within the SPEC's tolerance of it:
float32 within 1e-6 relative plus a few float32 ulps of the row's largest
|logit|, float64 likewise at float64 precision, float16/bfloat16 within one ulp
of the output dtype of the rounded truth (plus the float32 accumulation slack).
"""
import warnings

import ml_dtypes
import numpy as np
import pytest

import xent
from oracle import BF16, FLOAT_IDS, FLOATS, assert_close_to_truth, infinite_target_rows, \
    label_scale, row_scale

LABEL_DTYPES = [np.dtype(np.int32), np.dtype(np.int64)]

# (batch shape, number of classes): logits of rank 1..4, classes 1, 2, 3, 17, 1000.
CASES = [
    ((), 1), ((), 17), ((5,), 1), ((6,), 2), ((7,), 3), ((4,), 17), ((33,), 1000),
    ((2, 3), 17), ((2, 3, 2), 3), ((2, 2, 2), 1000),
]
CASE_IDS = [f"batch{b}-C{c}" for b, c in CASES]


def tf_sparse(tf, labels, logits):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits).numpy()


def tf_dense(tf, labels, logits, axis=-1):
    return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=axis).numpy()


def as64(x):
    return np.asarray(x).astype(np.float64)


def random_logits(rng, shape, dtype, spread=4.0):
    return (rng.standard_normal(shape) * spread).astype(dtype)


def random_distribution(rng, shape, dtype, axis=-1):
    raw = rng.random(shape) + 0.05
    return (raw / raw.sum(axis=axis, keepdims=True)).astype(dtype)


# -- values, shapes and dtypes over the whole grid ---------------------------------------


@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("batch,classes", CASES, ids=CASE_IDS)
def test_sparse_matches_tf_float64_truth(tf, rng, batch, classes, dtype, label_dtype):
    logits = random_logits(rng, batch + (classes,), dtype)
    labels = rng.integers(0, classes, size=batch).astype(label_dtype)
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close_to_truth(got, tf_sparse(tf, labels, as64(logits)), dtype, row_scale(logits))


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("batch,classes", CASES, ids=CASE_IDS)
def test_dense_matches_tf_float64_truth(tf, rng, batch, classes, dtype):
    logits = random_logits(rng, batch + (classes,), dtype)
    labels = random_distribution(rng, batch + (classes,), dtype)
    got = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close_to_truth(got, tf_dense(tf, as64(labels), as64(logits)), dtype, row_scale(logits))


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_result_dtype_matches_tf_native(tf, rng, dtype):
    logits = random_logits(rng, (3, 5), dtype)
    labels = np.array([0, 4, 2], np.int32)
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert np.asarray(got).dtype.name == tf_sparse(tf, labels, logits).dtype.name == dtype.name


@pytest.mark.parametrize("spread", [1e-3, 30.0, 1e3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_sparse_wide_and_narrow_logit_spreads_match_truth(tf, rng, dtype, spread):
    logits = random_logits(rng, (16, 50), dtype, spread)
    labels = rng.integers(0, 50, size=16)
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close_to_truth(got, tf_sparse(tf, labels, as64(logits)), dtype, row_scale(logits))


@pytest.mark.parametrize("spread", [1e-3, 30.0, 1e3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_dense_wide_and_narrow_logit_spreads_match_truth(tf, rng, dtype, spread):
    logits = random_logits(rng, (16, 50), dtype, spread)
    labels = random_distribution(rng, (16, 50), dtype)
    got = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close_to_truth(got, tf_dense(tf, as64(labels), as64(logits)), dtype, row_scale(logits))


def test_sparse_equals_dense_with_one_hot_labels(rng):
    logits = random_logits(rng, (4, 3, 7), np.float64)
    labels = rng.integers(0, 7, size=(4, 3))
    sparse = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    dense = xent.nn.softmax_cross_entropy_with_logits(labels=np.eye(7)[labels], logits=logits)
    np.testing.assert_allclose(sparse, dense, rtol=1e-13, atol=1e-14)


# -- the dense op's class axis -----------------------------------------------------------

AXIS_CASES = [((3, 4), a) for a in range(-2, 2)] + [((2, 3, 4), a) for a in range(-3, 3)] + [
    ((2, 3, 4, 5), a) for a in range(-4, 4)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape,axis", AXIS_CASES, ids=[f"{s}-axis{a}" for s, a in AXIS_CASES])
def test_dense_axis_matches_tf_nonnegative_axis(tf, rng, shape, axis, dtype):
    # TF 2.21 refuses negative axes other than -1; xent normalises them like NumPy.
    logits = random_logits(rng, shape, dtype)
    labels = random_distribution(rng, shape, dtype, axis=axis)
    got = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=axis)
    truth = tf_dense(tf, as64(labels), as64(logits), axis=axis % len(shape))
    assert_close_to_truth(got, truth, dtype, row_scale(logits, axis=axis))


@pytest.mark.parametrize("axis", [3, -4, 5])
def test_dense_axis_out_of_range_is_invalid_argument_like_tf(tf, axis):
    """TF raises InvalidArgumentError (from a Range op); xent its own, naming the axis."""
    logits, labels = np.zeros((2, 3, 4), np.float32), np.full((2, 3, 4), 0.25, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=axis)
    with pytest.raises(xent.errors.InvalidArgumentError, match=f"received axis={axis}"):
        xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=axis)


def test_dense_scalar_logits_are_invalid_argument_like_tf(tf):
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.nn.softmax_cross_entropy_with_logits(labels=np.float32(1), logits=np.float32(0))
    with pytest.raises(xent.errors.InvalidArgumentError, match="rank >= 1"):
        xent.nn.softmax_cross_entropy_with_logits(labels=np.float32(1), logits=np.float32(0))


def test_dense_axis_minus_two_equals_axis_ndim_minus_two(rng):
    logits = random_logits(rng, (2, 5, 3), np.float32)
    labels = random_distribution(rng, (2, 5, 3), np.float32, axis=1)
    neg = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=-2)
    pos = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=1)
    assert neg.shape == (2, 3)
    np.testing.assert_array_equal(neg, pos)


def test_dense_axis_numpy_integer_accepted(tf, rng):
    logits = random_logits(rng, (2, 3, 4), np.float32)
    labels = random_distribution(rng, (2, 3, 4), np.float32, axis=1)
    got = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=np.int64(1))
    assert_close_to_truth(got, tf_dense(tf, as64(labels), as64(logits), axis=1), np.float32,
                          row_scale(logits, axis=1))


@pytest.mark.parametrize("axis,tf_axis", [(None, -1), (np.array(1), 1), (np.array(-1), -1),
                                          (np.int32(0), 0)], ids=str)
def test_dense_axis_none_and_0d_integer_arrays_are_tfs(tf, rng, axis, tf_axis):
    """TF takes axis=None as the last axis and a 0-d integer array as its value
    (xent raised TypeError for both); the Keras function does the same."""
    logits = random_logits(rng, (2, 3, 4), np.float32)
    labels = random_distribution(rng, (2, 3, 4), np.float32, axis=tf_axis)
    assert_close_to_truth(
        np.asarray(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=axis)),
        tf_dense(tf, as64(labels), as64(logits), axis=tf_axis), np.float32, row_scale(logits, axis=tf_axis))
    truth = tf_dense(tf, as64(labels), as64(logits), axis=tf_axis)
    for got in (xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=axis),
                xent.keras.losses.categorical_crossentropy(labels, logits, from_logits=True, axis=axis)):
        assert_close_to_truth(got, truth, np.float32, row_scale(logits, axis=tf_axis))


@pytest.mark.parametrize("axis", [1.0, True, "1", np.array([1])], ids=repr)
def test_dense_axis_that_is_not_an_integer_is_named(axis):
    """None and integer types are taken (above); anything else is refused, naming `axis`."""
    labels, logits = np.eye(3, dtype=np.float32)[[0, 1]], np.ones((2, 3), np.float32)
    for call in (lambda: xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=axis),
                 lambda: xent.keras.losses.categorical_crossentropy(labels, logits, from_logits=True, axis=axis)):
        with pytest.raises((TypeError, ValueError), match="`axis` must be"):
            call()


# -- dense labels broadcast and flatten as TF does ----------------------------------------

BROADCASTS = [
    ((6, 3), (2, 3, 3)), ((1, 3), (2, 3, 3)), ((3,), (2, 3)), ((3,), (2, 3, 3)),
    ((1, 1, 3), (2, 3, 3)), ((2, 3, 3), (6, 3)), ((1,), (4, 1)), ((1, 4), (5, 4)),
    ((5, 1), (5, 4)),
]


@pytest.mark.parametrize("labels_shape,logits_shape", BROADCASTS,
                         ids=[f"labels{a}-logits{b}" for a, b in BROADCASTS])
def test_dense_labels_broadcast_and_flatten_like_tf(tf, rng, labels_shape, logits_shape):
    logits = random_logits(rng, logits_shape, np.float32)
    labels = rng.random(labels_shape).astype(np.float32)
    got = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    truth = tf_dense(tf, as64(labels), as64(logits))
    assert truth.shape == logits_shape[:-1]
    assert_close_to_truth(got, truth, np.float32, row_scale(logits) * 3)


AXIS_BROADCASTS = [((3, 1), (3, 4), 0), ((1, 4), (3, 4), 0), ((2, 1, 4), (2, 3, 4), 1),
                   ((3,), (3, 4), 0)]


@pytest.mark.parametrize("labels_shape,logits_shape,axis", AXIS_BROADCASTS,
                         ids=[f"labels{a}-logits{b}-axis{c}" for a, b, c in AXIS_BROADCASTS])
def test_dense_labels_broadcast_with_axis_like_tf(tf, rng, labels_shape, logits_shape, axis):
    logits = random_logits(rng, logits_shape, np.float32)
    labels = rng.random(labels_shape).astype(np.float32)
    try:
        truth = tf_dense(tf, as64(labels), as64(logits), axis=axis)
    except (ValueError, tf.errors.InvalidArgumentError):
        with pytest.raises(ValueError):
            xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=axis)
        return
    got = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=axis)
    assert_close_to_truth(got, truth, np.float32, row_scale(logits, axis=axis) * 4)


# -- Python lists and scalars convert as tf.convert_to_tensor does ------------------------

PY_SPARSE = [
    (0, [3.0, 1.0]),
    ([0, 1], [[3.0, 1.0], [0.5, 2.0]]),
    ((1, 0), ((1.0, 2.0), (3.0, 4.0))),
    (np.int64(1), [3.0, 1.0]),
    ([1], np.array([[3.0, 1.0]], np.float64)),
    (np.array([2, 0]), [[0.0, 1.0, 2.0], [5.0, 1.0, -1.0]]),
    # the first element decides a list's float dtype; NumPy integers of any kind give int32
    ([0, 1], [np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.2, 0.1])]),
    ([0, 1], [[3.0, 1.0], np.array([0.5, 2.0])]),
    ([1], [[np.float16(3.0), 1.0]]),
    ([np.uint8(0), np.uint8(1)], [[3.0, 1.0], [0.5, 2.0]]),
    ([np.uint64(1)], [[np.float64(3.0), 1e39]]),
]
PY_DENSE = [
    ([0.0, 1.0], [3.0, 1.0]),
    ([[0.25, 0.75], [1.0, 0.0]], [[3.0, 1.0], [0.5, 2.0]]),
    ([0, 1], np.array([3.0, 1.0], np.float16)),
    (np.array([[0.0, 1.0]]), [[3.0, 1.0]]),
    ([[0.25, 0.75]], np.array([[3.0, 1.0]], BF16)),
    (np.array([[0.5, 0.5]], np.float32), np.array([[3.0, 1.0]], np.float64)),
]


@pytest.mark.parametrize("labels,logits", PY_SPARSE, ids=[str(i) for i in range(len(PY_SPARSE))])
def test_sparse_python_values_convert_like_tf(tf, labels, logits):
    native = tf_sparse(tf, labels, logits)
    expected_dtype = native.dtype
    logits_arr = np.asarray(logits).astype(expected_dtype)
    truth = tf_sparse(tf, np.asarray(labels).astype(np.int64), as64(logits_arr))
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close_to_truth(got, truth, expected_dtype, row_scale(logits_arr))


@pytest.mark.parametrize("labels,logits", PY_DENSE, ids=[str(i) for i in range(len(PY_DENSE))])
def test_dense_python_values_convert_like_tf(tf, labels, logits):
    native = tf_dense(tf, labels, logits)
    expected_dtype = native.dtype
    logits_arr = np.asarray(logits).astype(expected_dtype)
    labels_arr = np.asarray(labels).astype(np.float64).astype(expected_dtype)
    truth = tf_dense(tf, as64(labels_arr), as64(logits_arr))
    got = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close_to_truth(got, truth, expected_dtype, row_scale(logits_arr))


def _python_inputs():
    """Python values whose dtype TF's convert_to_tensor decides (lists, tuples,
    other sequences, numbers), keyed by what they show."""
    import array
    import collections

    return {
        "first NumPy float64 decides": [np.float64(1.0), 2.0],
        "first Python float decides": [2.0, np.float64(1.0)],
        "rows of float64 arrays": [np.array([1.0, 2.0]), np.array([0.5, 0.2])],
        "float16 first": [np.float16(1.0), 2.0],
        "NumPy unsigned scalars": [np.uint8(1), np.uint8(2)],
        "uint64 beside int64": [np.uint64(1), np.int64(0)],
        "uint64 beside -1": [np.uint64(1), -1],
        "uint32 past int32": [np.uint32(2 ** 32 - 1)],
        "int past int32": [1, 2 ** 40],
        "int then float": [1, 2.5],
        "bools": [True, False],
        "empty": [],
        "empty float64 rows": (np.zeros((2, 0)),),
        "range": range(3),
        "deque of floats": collections.deque([1.0, 2.5]),
        "array of doubles": array.array("d", [1.0, 2.5]),
        "array of longs": array.array("l", [1, 2]),
        "largest float32": [3.4028235e38],
        "past float32": [3.4028236e38],
        "past int64": [2 ** 63, 0],
        "past uint64": [2 ** 64, 0],
        "far past int64, nested": [[2 ** 70], [1]],
        "below int64, past uint64": [-2 ** 64, 0],
        "NumPy int beside one past uint64": [np.int64(5), 2 ** 70],
        "int number past uint64": 2 ** 70,
        "deque past float32": collections.deque([1e39]),
        "float number past float32": 1e39,
        "int number past int64": 2 ** 63,
        # single Python numbers, which take a shorter path: each side of its range checks
        "float number": 1.0,
        "float number NaN": float("nan"),
        "float number -inf": -float("inf"),
        "float number rounding to float32's largest": 3.4028235677973362e38,
        "float number rounding to float32's inf": -3.4028235677973366e38,
        "int number": -7,
        "int number at int32's largest": 2 ** 31 - 1,
        "int number past int32": 2 ** 31,
        "int number at int32's least": -2 ** 31,
        "int number below int32": -2 ** 31 - 1,
        "bool number": True,
    }


@pytest.mark.parametrize("key", list(_python_inputs()))
def test_python_inputs_take_tfs_dtypes_and_range_errors(tf, key):
    """`_dtypes.to_array`, which every face applies to a non-array argument,
    against `tf.convert_to_tensor` on the same value: dtype and values, or
    TF's ValueError."""
    from xent import _dtypes

    value = _python_inputs()[key]
    try:
        expected = tf.convert_to_tensor(value).numpy()
    except ValueError:
        with pytest.raises(ValueError, match="Can't convert Python sequence"):
            _dtypes.to_array(value, "x")
        return
    got = _dtypes.to_array(value, "x")
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


_SPARSE = xent.nn.sparse_softmax_cross_entropy_with_logits
_ZEROS = np.zeros((2, 3), np.float32)
# (the argument named, the Python value TF cannot hold, a call that passes it)
PY_OUT_OF_RANGE = [
    ("logits", [[1e39, 0.0, 0.0]], lambda v: _SPARSE(labels=[0], logits=v)),
    ("logits", [[-3.5e38, 0.0]], lambda v: _SPARSE(labels=[0], logits=v)),
    ("labels", [[2 ** 63, 0, 0], [1, 0, 0]],
     lambda v: xent.nn.softmax_cross_entropy_with_logits(labels=v, logits=_ZEROS)),
    ("labels", [2 ** 63, 0], lambda v: _SPARSE(labels=v, logits=_ZEROS)),
    ("weights", [1e39], lambda v: xent.losses.sparse_softmax_cross_entropy([0], [[1.0, 2.0]], weights=v)),
    ("weights", 1e39, lambda v: xent.losses.sparse_softmax_cross_entropy([0], np.ones((1, 2)), weights=v)),
    ("weights", [-3.5e38], lambda v: xent.losses.compute_weighted_loss([1.0], weights=v)),
    ("weights", 1e39, lambda v: xent.losses.softmax_cross_entropy([[0.0, 1.0]], [[1.0, 2.0]], weights=v)),
    ("weights", [1e39], lambda v: xent.losses.sparse_softmax_cross_entropy(
        __import__("torch").tensor([0]), __import__("torch").ones(1, 2), weights=v)),
    # a bool first, then numbers: TF's "mixed types" (xent read [True, 1] as class 1 twice)
    ("labels", [True, 1], lambda v: _SPARSE(labels=v, logits=_ZEROS)),
    ("labels", [[True], [1]], lambda v: _SPARSE(labels=v, logits=np.zeros((2, 1, 3), np.float32))),
    ("weights", [True, 1.5], lambda v: xent.losses.compute_weighted_loss([1.0, 2.0], weights=v)),
]


@pytest.mark.parametrize("name,value,call", PY_OUT_OF_RANGE,
                         ids=[str(i) for i in range(len(PY_OUT_OF_RANGE))])
def test_python_values_tf_cannot_hold_raise_its_value_error(tf, name, value, call):
    """TF refuses Python numbers its dtype cannot hold (a float past float32's
    largest, an integer past int64); xent made them inf, NaN or 1e19."""
    with pytest.raises(ValueError, match="Can't convert Python sequence"):
        tf.convert_to_tensor(value)
    with pytest.raises(ValueError, match=f"Can't convert Python sequence with .*`{name}`"):
        call(value)


# -- empty batches and class counts -------------------------------------------------------

@pytest.mark.parametrize("batch", [(0,), (2, 0), (0, 3)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_empty_batch_gives_empty_result(tf, batch, dtype):
    logits = np.zeros(batch + (3,), dtype)
    labels = np.zeros(batch, np.int32)
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close_to_truth(got, tf_sparse(tf, labels, as64(logits)), dtype)


@pytest.mark.parametrize("batch", [(0,), (2, 0), (0, 3)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_empty_batch_gives_empty_result(tf, batch, dtype):
    logits = np.zeros(batch + (3,), dtype)
    got = xent.nn.softmax_cross_entropy_with_logits(labels=logits.copy(), logits=logits)
    assert_close_to_truth(got, tf_dense(tf, as64(logits), as64(logits)), dtype)


def test_dense_zero_classes_follows_tf(tf):
    logits = np.zeros((2, 0), np.float32)
    try:
        truth = tf_dense(tf, as64(logits), as64(logits))
    except (ValueError, tf.errors.InvalidArgumentError):
        with pytest.raises(ValueError):
            xent.nn.softmax_cross_entropy_with_logits(labels=logits, logits=logits)
        return
    got = xent.nn.softmax_cross_entropy_with_logits(labels=logits, logits=logits)
    assert_close_to_truth(got, truth, np.float32)


@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_one_class_loss_is_exactly_zero(tf, dtype, label_dtype):
    logits = np.array([[1.0], [-1.0], [0.0], [3e4], [-3e4]], dtype)
    labels = np.zeros(5, label_dtype)
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    np.testing.assert_array_equal(np.asarray(got).astype(np.float64), np.zeros(5))
    np.testing.assert_array_equal(tf_sparse(tf, labels, logits).astype(np.float64), np.zeros(5))
    assert np.asarray(got).dtype.name == dtype.name


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_one_class_loss_is_zero_for_any_label_weight(tf, dtype):
    labels = np.array([[-1.0], [0.0], [1.0], [1.0]], dtype)
    logits = np.array([[1.0], [-1.0], [0.0], [1.0]], dtype)
    got = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close_to_truth(got, tf_dense(tf, as64(labels), as64(logits)), dtype)
    np.testing.assert_array_equal(np.asarray(got).astype(np.float64), np.zeros(4))


# -- extreme values -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_minus_inf_masked_logits_stay_finite(tf, rng, dtype):
    logits = random_logits(rng, (6, 5), dtype)
    labels = np.array([0, 1, 2, 3, 4, 0])
    mask = rng.random((6, 5)) < 0.5
    mask[np.arange(6), labels] = False
    logits[mask] = -np.inf
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    truth = tf_sparse(tf, labels, as64(logits))
    assert np.isfinite(truth).all()
    assert np.isfinite(np.asarray(got).astype(np.float64)).all()
    assert_close_to_truth(got, truth, dtype, row_scale(logits))


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_label_on_minus_inf_logit_is_inf_like_tf(tf, dtype):
    logits = np.array([[0.0, -np.inf, 1.0]], dtype)
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[1], logits=logits)
    assert_close_to_truth(got, tf_sparse(tf, [1], as64(logits)), dtype)
    assert np.asarray(got).astype(np.float64)[0] == np.inf


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_all_minus_inf_row_is_nan_and_other_rows_unaffected(tf, dtype):
    logits = np.array([[1.0, 2.0, 3.0], [-np.inf] * 3, [0.5, -np.inf, 0.0]], dtype)
    labels = np.array([2, 1, 0])
    got = np.asarray(xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    truth = tf_sparse(tf, labels, as64(logits))
    assert np.isnan(truth[1]) and np.isnan(got[1].astype(np.float64))
    assert_close_to_truth(got, truth, dtype, row_scale(logits))


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_all_minus_inf_row_is_nan_and_other_rows_unaffected(tf, dtype):
    logits = np.array([[1.0, 2.0, 3.0], [-np.inf] * 3, [0.5, 1.0, 0.0]], dtype)
    labels = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.25, 0.25]], dtype)
    got = np.asarray(xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    truth = tf_dense(tf, as64(labels), as64(logits))
    assert np.isnan(truth[1]) and np.isnan(got[1].astype(np.float64))
    assert_close_to_truth(got, truth, dtype, row_scale(logits))


@pytest.mark.parametrize("classes", [3, 5000])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_infinite_and_nan_targets_match_tf(tf, dtype, classes):
    """Targets of ±inf or NaN (`oracle.infinite_target_rows`): TF's ±inf and NaN
    losses, its ``inf`` for an infinite target on the row's max among them
    (``lse·Σy - Σ y·(x - M)`` gave NaN there); the finite row within tolerance."""
    logits, labels, truth64, _ = infinite_target_rows(dtype, classes)
    got = np.asarray(xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    truth = tf_dense(tf, as64(labels), as64(logits))
    np.testing.assert_array_equal(np.isnan(truth), np.isnan(truth64))
    np.testing.assert_array_equal(truth[np.isinf(truth)], truth64[np.isinf(truth64)])
    assert_close_to_truth(got, truth, dtype, row_scale(logits))
    assert got.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_infinite_target_on_the_max_where_s_rounds_to_one_is_tfs(tf, dtype):
    """An infinite target on the row's max, the other exps below half an ulp
    of 1 (exp(-17) = 4e-8): in float32 S rounds to 1 and TF gives NaN (inf *
    log 1); in float64 S stays above 1 and TF gives inf. TF in the inputs'
    own dtype, as xent computes."""
    logits = np.array([[0.0, -17.0], [-17.0, 0.0]], dtype)
    labels = np.array([[np.inf, 0.0], [0.0, -np.inf]], dtype)
    got = np.asarray(xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    truth = tf_dense(tf, labels, logits).astype(np.float64)
    assert (np.isnan(truth).all() if dtype == np.float32
            else (truth == [np.inf, -np.inf]).all()), truth
    assert_close_to_truth(got, truth, dtype)


@pytest.mark.parametrize("classes", [2, 3])
def test_dense_targets_whose_float32_sum_overflows_give_tfs_finite_loss(tf, classes):
    """Two targets of 2e38 on logits 0, the rest -30 (their float32 sum
    overflows; each term 2e38 log 2 does not): TF's finite float32 loss,
    not inf."""
    logits = np.full((1, classes), -30.0, np.float32)
    logits[0, [0, -1]] = 0.0
    labels = np.zeros((1, classes), np.float32)
    labels[0, [0, -1]] = 2e38
    got = np.asarray(xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    truth = tf_dense(tf, labels, logits).astype(np.float64)
    assert np.isfinite(truth).all()
    assert_close_to_truth(got, truth, np.float32)


def huge_rows(dtype):
    big = 3e4 if np.dtype(dtype) == np.float16 else 1e30
    logits = np.array([[big, big, -big], [big, big, -big], [-big, -big, -big],
                       [big, 0.0, -big], [big, 0.0, -big], [-big, 0.0, big]], dtype)
    return logits, np.array([0, 2, 1, 1, 2, 2])


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_huge_logits_match_tf_without_cancellation(tf, dtype):
    logits, labels = huge_rows(dtype)
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    truth = tf_sparse(tf, labels, as64(logits))
    # TF shifts by the row max, so the error scales with |max - logit[label]|, not |max|:
    # a label on one of two tied 1e30 maxima gives log(2), as TF gives.
    assert_close_to_truth(got, truth, dtype, label_scale(logits, labels))


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_huge_logits_one_hot_match_tf_without_cancellation(tf, dtype):
    logits, labels = huge_rows(dtype)
    onehot = np.eye(3, dtype=dtype)[labels]
    got = xent.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=logits)
    truth = tf_dense(tf, as64(onehot), as64(logits))
    assert_close_to_truth(got, truth, dtype, label_scale(logits, labels))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_sparse_tiny_and_subnormal_logits_give_log_num_classes(tf, dtype):
    tiny = np.finfo(dtype).smallest_subnormal
    logits = np.array([[1e-30, -1e-30, 0.0], [tiny, 0.0, -tiny], [1e-38, 1e-38, 1e-38]], dtype)
    labels = np.array([0, 1, 2])
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close_to_truth(got, tf_sparse(tf, labels, as64(logits)), dtype)
    np.testing.assert_allclose(np.asarray(got, np.float64), np.log(3.0), rtol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_float_extremes_near_dtype_max_stay_finite_like_tf(tf, dtype):
    top = float(ml_dtypes.finfo(dtype).max) / 2
    logits = np.array([[top, -top, 0.0], [top, top, top]], dtype)
    labels = np.array([0, 1])
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    truth = tf_sparse(tf, labels, as64(logits))
    assert np.isfinite(np.asarray(got).astype(np.float64)).all()
    assert_close_to_truth(got, truth, dtype, [1.0, 1.0])


# -- memory layout and purity -------------------------------------------------------------

LAYOUTS = {
    "strided": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],
    "fortran": np.asfortranarray,
    "reversed": lambda a: a[::-1].copy()[::-1],
    "offset-view": lambda a: np.pad(a, 1)[1:-1, 1:-1],
    "byte-swapped": lambda a: a.astype(a.dtype.newbyteorder("S")),   # (big-endian data)
}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_sparse_non_contiguous_logits_match_truth(tf, rng, layout):
    base = random_logits(rng, (9, 17), np.float32)
    logits = LAYOUTS[layout](base)
    np.testing.assert_array_equal(logits, base)
    labels = np.repeat(rng.integers(0, 17, size=9), 2)[::2]
    if layout == "byte-swapped":
        labels = LAYOUTS[layout](labels)
    got = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert got.dtype == np.float32   # (in the machine's byte order, as TensorFlow's)
    assert_close_to_truth(got, tf_sparse(tf, labels, as64(base)), np.float32, row_scale(base))


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_dense_non_contiguous_inputs_match_truth(tf, rng, layout):
    base = random_logits(rng, (9, 17), np.float32)
    labels_base = random_distribution(rng, (9, 17), np.float32)
    logits, labels = LAYOUTS[layout](base), LAYOUTS[layout](labels_base)
    got = xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close_to_truth(got, tf_dense(tf, as64(labels_base), as64(base)), np.float32,
                          row_scale(base))


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_never_modifies_inputs(rng, dtype):
    logits = random_logits(rng, (4, 6), dtype)
    logits[0, 1] = -np.inf
    labels = np.array([0, 5, 2, 3], np.int64)
    logits_copy, labels_copy = logits.copy(), labels.copy()
    xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    np.testing.assert_array_equal(logits, logits_copy)
    np.testing.assert_array_equal(labels, labels_copy)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_never_modifies_inputs(rng, dtype):
    logits = random_logits(rng, (4, 6), dtype)
    labels = random_distribution(rng, (4, 6), dtype)
    logits_copy, labels_copy = logits.copy(), labels.copy()
    xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits, axis=0)
    np.testing.assert_array_equal(logits, logits_copy)
    np.testing.assert_array_equal(labels, labels_copy)


def test_sparse_and_dense_accept_read_only_inputs(tf, rng):
    logits = random_logits(rng, (5, 4), np.float32)
    labels = np.array([0, 1, 2, 3, 0])
    dist = random_distribution(rng, (5, 4), np.float32)
    for arr in (logits, labels, dist):
        arr.setflags(write=False)
    sparse = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    dense = xent.nn.softmax_cross_entropy_with_logits(labels=dist, logits=logits)
    assert_close_to_truth(sparse, tf_sparse(tf, labels, as64(logits)), np.float32, row_scale(logits))
    assert_close_to_truth(dense, tf_dense(tf, as64(dist), as64(logits)), np.float32, row_scale(logits))


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_extreme_rows_raise_no_numpy_floating_point_warnings(dtype):
    # TF returns NaN/inf silently; NumPy's "invalid value"/"overflow" warnings from the
    # kernel's internals would be noise the caller cannot act on.
    logits = np.array([[-np.inf] * 3, [0.0, -np.inf, 1.0], [np.inf, 0.0, 1.0]], dtype)
    labels = np.array([0, 1, 2])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(invalid value|overflow|divide by zero).*",
                                category=RuntimeWarning)
        xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        xent.nn.softmax_cross_entropy_with_logits(labels=np.eye(3, dtype=dtype)[labels],
                                                  logits=logits)


def test_repeated_calls_give_identical_results(rng):
    logits = random_logits(rng, (8, 1000), np.float32)
    labels = rng.integers(0, 1000, size=8)
    first = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    second = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    np.testing.assert_array_equal(first, second)


# -- the call signature -------------------------------------------------------------------


def test_sparse_positional_arguments_raise_type_error():
    with pytest.raises(TypeError):
        xent.nn.sparse_softmax_cross_entropy_with_logits([0], np.array([[1.0, 2.0]], np.float32))


def test_dense_positional_arguments_raise_type_error():
    logits = np.array([[1.0, 2.0]], np.float32)
    with pytest.raises(TypeError):
        xent.nn.softmax_cross_entropy_with_logits(logits, logits)


def test_name_argument_is_accepted_and_changes_nothing(rng):
    logits = random_logits(rng, (3, 4), np.float32)
    labels = np.array([0, 1, 3])
    plain = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    named = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits,
                                                             name="xent")
    np.testing.assert_array_equal(plain, named)
    dist = np.eye(4, dtype=np.float32)[labels]
    dense = xent.nn.softmax_cross_entropy_with_logits(labels=dist, logits=logits, name="xent")
    np.testing.assert_allclose(dense, plain, rtol=1e-6)
