"""`xent.raw_ops` against `tf.raw_ops`: (loss, backprop), shape and dtype errors, and
the `backprop_out=` buffer (separate, or `features` itself for in place).

The truth is TensorFlow's raw op run in float64 on the same inputs; tolerances are
the SPEC's (`oracle.assert_close_to_truth`).
"""
import os

import numpy as np
import pytest

import xent
from xent.errors import InvalidArgumentError
from oracle import BF16, FLOAT_IDS, FLOATS, assert_close_to_truth, row_scale, tf_message

LABEL_DTYPES = [np.dtype(np.int32), np.dtype(np.int64)]
SHAPES = [(1, 1), (5, 1), (6, 2), (7, 3), (4, 17), (33, 1000), (0, 3)]
SHAPE_IDS = [f"{n}x{c}" for n, c in SHAPES]
SPARSE = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits
DENSE = xent.raw_ops.SoftmaxCrossEntropyWithLogits


def assert_pair_matches(got, truth, dtype, features):
    assert isinstance(got, tuple) and len(got) == 2, type(got)
    assert_close_to_truth(got[0], truth[0], dtype, row_scale(features))
    assert_close_to_truth(got[1], truth[1], dtype, 1.0)


def tf_pair(op):
    loss, backprop = op
    return loss.numpy(), backprop.numpy()


def tf_sparse(tf, features, labels):
    return tf_pair(tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=features, labels=labels))


def tf_dense(tf, features, labels):
    return tf_pair(tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=features, labels=labels))


def as64(x):
    return np.asarray(x).astype(np.float64)


def random_features(rng, shape, dtype, spread=4.0):
    return (rng.standard_normal(shape) * spread).astype(dtype)


def random_distribution(rng, shape, dtype):
    raw = rng.random(shape) + 0.05
    return (raw / raw.sum(axis=-1, keepdims=True)).astype(dtype)


# -- values -------------------------------------------------------------------------------


@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_sparse_raw_loss_and_backprop_match_tf_float64(tf, rng, shape, dtype, label_dtype):
    features = random_features(rng, shape, dtype)
    labels = rng.integers(0, shape[1], size=shape[0]).astype(label_dtype)
    got = SPARSE(features=features, labels=labels)
    assert_pair_matches(got, tf_sparse(tf, as64(features), labels), dtype, features)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_dense_raw_loss_and_backprop_match_tf_float64(tf, rng, shape, dtype):
    features = random_features(rng, shape, dtype)
    labels = random_distribution(rng, shape, dtype)
    got = DENSE(features=features, labels=labels)
    assert_pair_matches(got, tf_dense(tf, as64(features), as64(labels)), dtype, features)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_raw_result_dtypes_match_tf_native(tf, rng, dtype):
    features = random_features(rng, (3, 4), dtype)
    labels = np.array([0, 3, 1])
    tf_loss, tf_backprop = tf_sparse(tf, features, labels)
    loss, backprop = SPARSE(features=features, labels=labels)
    assert loss.dtype.name == backprop.dtype.name == tf_loss.dtype.name == tf_backprop.dtype.name
    loss, backprop = DENSE(features=features, labels=np.eye(4, dtype=dtype)[labels])
    assert loss.dtype.name == backprop.dtype.name == dtype.name


@pytest.mark.parametrize("labels_shape", [(1, 5), (4, 1), (1, 1)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_raw_broadcasts_2d_labels_like_tf(tf, rng, dtype, labels_shape):
    features = random_features(rng, (4, 5), dtype)
    labels = rng.random(labels_shape).astype(dtype)
    got = DENSE(features=features, labels=labels)
    truth = tf_dense(tf, as64(features), as64(labels))
    assert truth[1].shape == (4, 5)
    assert_close_to_truth(got[0], truth[0], dtype, 5 * row_scale(features))
    assert_close_to_truth(got[1], truth[1], dtype, 1.0)


@pytest.mark.parametrize("features_shape,labels_shape", [((4, 5), (5,)), ((4, 5), ()), ((5,), (4, 5)),
                                                         ((), (4, 5)), ((1, 5), (5,))], ids=str)
def test_dense_raw_takes_lower_rank_inputs_that_broadcast_to_2d_like_tf(tf, rng, features_shape,
                                                                        labels_shape):
    """TF broadcasts the two inputs first and asks only that the result be 2-D;
    xent asked each to be 2-D. On torch and JAX too."""
    import jax.numpy as jnp
    import torch

    features = np.asarray(random_features(rng, features_shape, np.float32))
    labels = np.asarray(rng.random(labels_shape), np.float32)
    truth = tf_dense(tf, as64(features), as64(labels))
    for convert in (np.asarray, torch.as_tensor, jnp.asarray):
        got = DENSE(features=convert(features), labels=convert(labels))
        assert tuple(got[0].shape) == truth[0].shape and tuple(got[1].shape) == truth[1].shape
        assert_close_to_truth(np.asarray(got[0]), truth[0], np.float32, 5 * row_scale(np.broadcast_to(
            features, truth[1].shape)))
        assert_close_to_truth(np.asarray(got[1]), truth[1], np.float32, 1.0)


@pytest.mark.parametrize("features_shape,labels_shape", [((5,), (5,)), ((1, 4, 5), (4, 5)),
                                                         ((4, 5), (1, 1, 5)), ((4, 5), (3, 5))], ids=str)
def test_dense_raw_refuses_inputs_whose_broadcast_is_not_2d_like_tf(tf, features_shape, labels_shape):
    features, labels = np.zeros(features_shape), np.zeros(labels_shape)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=features, labels=labels)
    with pytest.raises(InvalidArgumentError, match="logits and labels must be"):
        DENSE(features=features, labels=labels)


def test_sparse_raw_minus_inf_masked_features(tf):
    features = np.array([[0.0, -np.inf, 1.0, -np.inf], [-np.inf, 2.0, -np.inf, 2.0]], np.float32)
    labels = np.array([2, 1])
    got = SPARSE(features=features, labels=labels)
    truth = tf_sparse(tf, as64(features), labels)
    assert np.isfinite(got[0]).all() and np.isfinite(got[1]).all()
    np.testing.assert_array_equal(got[1][features == -np.inf], 0.0)
    assert_pair_matches(got, truth, np.float32, features)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_raw_all_minus_inf_row_is_nan_loss_and_backprop(tf, dtype):
    features = np.array([[1.0, 2.0, 3.0], [-np.inf] * 3], dtype)
    got = SPARSE(features=features, labels=np.array([0, 2]))
    truth = tf_sparse(tf, as64(features), np.array([0, 2]))
    assert np.isnan(got[0][1].astype(np.float64)) and np.isnan(got[1][1].astype(np.float64)).all()
    assert_pair_matches(got, truth, dtype, features)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_raw_huge_logits_backprop_exact_like_tf(tf, dtype):
    big = 1e30
    features = np.array([[big, big, -big], [big, 0.0, -big], [-big, -big, -big]], dtype)
    labels = np.array([0, 2, 1])
    got = SPARSE(features=features, labels=labels)
    truth = tf_sparse(tf, as64(features), labels)
    np.testing.assert_allclose(got[1], [[-0.5, 0.5, 0], [1, 0, -1], [1 / 3, -2 / 3, 1 / 3]],
                               rtol=1e-6, atol=1e-7)
    assert_close_to_truth(got[0], truth[0], dtype, [1.0, 2 * big, 1.0])
    dense = DENSE(features=features, labels=np.eye(3, dtype=dtype)[labels])
    np.testing.assert_allclose(dense[1], got[1], rtol=1e-6, atol=1e-7)


BLOCK_EDGES = [7, 8, 9, 16, 17, 31, 32, 33, 64, 65, 128, 129, 255, 256, 257, 1023, 1024, 1025,
               4095, 4096, 4097, 65537]


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("classes", BLOCK_EDGES)
def test_sparse_raw_class_counts_around_block_sizes_match_tf(tf, rng, classes, dtype):
    # A streaming kernel walks the class axis in blocks; labels and maxima are put in the
    # first, last and a middle class so every block edge is exercised.
    features = random_features(rng, (4, classes), dtype)
    labels = np.array([0, classes - 1, classes // 2, classes - 1])
    features[1, classes - 1] = 30.0
    features[2, 0] = 30.0
    features[3, :] = -np.inf
    features[3, classes - 1] = 2.0
    truth = tf_sparse(tf, as64(features), labels)
    scale = row_scale(features)
    assert_pair_matches(SPARSE(features=features, labels=labels), truth, dtype, features)
    loss, _ = SPARSE(features=features, labels=labels, backprop_out=features)
    assert_close_to_truth(loss, truth[0], dtype, scale)
    assert_close_to_truth(features, truth[1], dtype, 1.0)


@pytest.mark.parametrize("classes", [255, 256, 257, 4097])
def test_dense_raw_class_counts_around_block_sizes_match_tf(tf, rng, classes):
    features = random_features(rng, (3, classes), np.float32)
    labels = random_distribution(rng, (3, classes), np.float32)
    features[1, classes - 1] = 30.0
    truth = tf_dense(tf, as64(features), as64(labels))
    assert_pair_matches(DENSE(features=features, labels=labels), truth, np.float32, features)


@pytest.mark.parametrize("rows", [1, 2, 3, 63, 64, 65, 1025, 4099])
def test_sparse_raw_many_rows_match_tf(tf, rng, rows):
    features = random_features(rng, (rows, 3), np.float32)
    labels = rng.integers(0, 3, size=rows)
    assert_pair_matches(SPARSE(features=features, labels=labels),
                        tf_sparse(tf, as64(features), labels), np.float32, features)


LAYOUTS = {
    "fortran": np.asfortranarray,
    "strided": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
    "reversed-rows": lambda a: a[::-1].copy()[::-1],
    "offset-view": lambda a: np.pad(a, 1)[1:-1, 1:-1],
}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
@pytest.mark.parametrize("op", ["sparse", "dense"])
def test_raw_non_contiguous_features_match_tf(tf, rng, op, layout):
    base = random_features(rng, (5, 9), np.float32)
    labels = rng.integers(0, 9, size=5)
    target = np.eye(9, dtype=np.float32)[labels] if op == "dense" else labels
    call = SPARSE if op == "sparse" else DENSE
    truth = tf_sparse(tf, as64(base), labels)
    assert_pair_matches(call(features=LAYOUTS[layout](base), labels=target), truth, np.float32, base)


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
@pytest.mark.parametrize("op", ["sparse", "dense"])
def test_raw_in_place_into_non_contiguous_features_overwrites_them_with_tf_backprop(
        tf, rng, op, layout):
    base = random_features(rng, (5, 9), np.float32)
    labels = rng.integers(0, 9, size=5)
    target = np.eye(9, dtype=np.float32)[labels] if op == "dense" else labels
    call = SPARSE if op == "sparse" else DENSE
    truth = tf_sparse(tf, as64(base), labels)
    features = LAYOUTS[layout](base)
    loss, backprop = call(features=features, labels=target, backprop_out=features)
    assert backprop is features
    assert_close_to_truth(loss, truth[0], np.float32, row_scale(base))
    assert_close_to_truth(np.ascontiguousarray(features), truth[1], np.float32, 1.0)


@pytest.mark.parametrize("op", ["sparse", "dense"])
def test_raw_fortran_backprop_out_for_c_order_features_receives_tf_backprop(tf, rng, op):
    features = random_features(rng, (6, 5), np.float32)
    labels = rng.integers(0, 5, size=6)
    target = np.eye(5, dtype=np.float32)[labels] if op == "dense" else labels
    call = SPARSE if op == "sparse" else DENSE
    truth = tf_sparse(tf, as64(features), labels)
    buffer = np.asfortranarray(np.zeros_like(features))
    _, backprop = call(features=features, labels=target, backprop_out=buffer)
    assert backprop is buffer
    assert_close_to_truth(np.ascontiguousarray(buffer), truth[1], np.float32, 1.0)


# A buffer that overlaps the features without being them: the kernels must not read
# what they have written. Shapes past the NumPy kernels' block of 2**18 elements too.
OVERLAPS = {
    "reversed-rows": lambda big, n: (big[:n], big[:n][::-1]),
    "reversed-columns": lambda big, n: (big[:n], big[:n][:, ::-1]),
    "shifted-a-row": lambda big, n: (big[1:n + 1], big[:n]),
}


@pytest.mark.parametrize("shape", [(5, 9), (700, 400)], ids=str)
@pytest.mark.parametrize("overlap", list(OVERLAPS))
@pytest.mark.parametrize("op", ["sparse", "dense"])
def test_backprop_out_overlapping_the_features_gets_tf_backprop(tf, rng, op, overlap, shape):
    n, c = shape
    base = random_features(rng, shape, np.float32)
    big = np.empty((n + 1, c), np.float32)
    features, buffer = OVERLAPS[overlap](big, n)
    features[...] = base
    _assert_into_buffer_gets_tf_backprop(tf, op, base, rng.integers(0, c, size=n), features, buffer)


def _assert_into_buffer_gets_tf_backprop(tf, op, base, labels, features, buffer):
    """`op` ("sparse"/"dense", one-hot `labels`) on `features`, which hold `base`'s
    values, into `buffer`: its loss, and what `buffer` holds, against TF's
    float64 answer on `base`."""
    target = labels
    if op == "dense":   # (one-hot rows, without an identity of C x C: 6.4 GB at 40000)
        target = np.zeros(base.shape, np.float32)
        target[np.arange(len(labels)), labels] = 1.0
    truth = tf_sparse(tf, as64(base), labels)
    loss, backprop = (SPARSE if op == "sparse" else DENSE)(features, target, backprop_out=buffer)
    assert backprop is buffer
    assert_close_to_truth(loss, truth[0], np.float32, row_scale(base))
    assert_close_to_truth(np.ascontiguousarray(buffer), truth[1], np.float32, 1.0)


@pytest.mark.parametrize("name", ["same", "hard-link"])
@pytest.mark.parametrize("shape", [(3, 7), (2, 40000)], ids=str)
@pytest.mark.parametrize("op", ["sparse", "dense"])
def test_backprop_out_mapping_the_features_file_again_gets_tf_backprop(tf, rng, tmp_path, op,
                                                                      shape, name):
    """Two mappings of one file (under one name or two) are one memory at two
    addresses, which NumPy's overlap test cannot see: the features are copied
    first, as for any overlap (the kernel read its own exps back as logits: a
    loss of 22026 for 11.04 where a row's maximum came last)."""
    base = random_features(rng, shape, np.float32)
    base[:, -1] = 10.0
    path = tmp_path / "logits.bin"
    base.tofile(path)
    other = path
    if name == "hard-link":
        other = tmp_path / "link.bin"
        os.link(path, other)
    features = np.memmap(path, np.float32, "r", shape=shape)
    buffer = np.memmap(other, np.float32, "r+", shape=shape)
    _assert_into_buffer_gets_tf_backprop(tf, op, base, np.zeros(shape[0], np.int64), features,
                                         buffer)


@pytest.mark.parametrize("shape", [(3, 7), (40, 5000)], ids=str)
@pytest.mark.parametrize("op", ["sparse", "dense"])
def test_read_only_view_of_backprop_out_as_features_is_in_place(tf, rng, op, shape):
    """Features that are a read-only view of the writable `backprop_out` (the
    same memory): the gradient in place, as into the buffer itself (numba's
    typing error on the read-only view before)."""
    base = random_features(rng, shape, np.float32)
    buffer = base.copy()
    features = buffer.view()
    features.flags.writeable = False
    _assert_into_buffer_gets_tf_backprop(tf, op, base, rng.integers(0, shape[1], size=shape[0]),
                                         features, buffer)


@pytest.mark.parametrize("view", ["same", "reversed-rows"])
def test_dense_backprop_out_over_the_labels_gets_tf_backprop(tf, rng, view):
    features = random_features(rng, (700, 400), np.float32)
    labels = random_distribution(rng, (700, 400), np.float32)
    truth = tf_dense(tf, as64(features), as64(labels))
    work = labels.copy()
    buffer = work if view == "same" else work[::-1]
    loss, backprop = DENSE(features, work, backprop_out=buffer)
    assert backprop is buffer
    assert_close_to_truth(loss, truth[0], np.float32, 400 * row_scale(features))
    assert_close_to_truth(np.ascontiguousarray(buffer), truth[1], np.float32, 1.0)


# -- the call --------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["SparseSoftmaxCrossEntropyWithLogits",
                                "SoftmaxCrossEntropyWithLogits"])
def test_raw_ops_return_tfs_named_tuple(tf, rng, op):
    features = random_features(rng, (3, 4), np.float32)
    labels = np.array([0, 3, 1])
    target = labels if op.startswith("Sparse") else np.eye(4, dtype=np.float32)[labels]
    want = getattr(tf.raw_ops, op)(features=as64(features), labels=target)
    got = getattr(xent.raw_ops, op)(features, target)
    assert type(got).__name__ == type(want).__name__ == op
    assert isinstance(got, tuple) and got._fields == want._fields == ("loss", "backprop")
    assert got.loss is got[0] and got.backprop is got[1]
    assert_close_to_truth(got.loss, want.loss.numpy(), np.float32, row_scale(features))
    assert_close_to_truth(got.backprop, want.backprop.numpy(), np.float32, 1.0)


def test_raw_ops_accept_positional_arguments(rng):
    features = random_features(rng, (3, 4), np.float32)
    labels = np.array([1, 0, 3])
    by_name = SPARSE(features=features, labels=labels)
    by_position = SPARSE(features, labels)
    np.testing.assert_array_equal(by_name[0], by_position[0])
    np.testing.assert_array_equal(by_name[1], by_position[1])
    dist = np.eye(4, dtype=np.float32)[labels]
    np.testing.assert_array_equal(DENSE(features, dist)[1], DENSE(features=features, labels=dist)[1])
    np.testing.assert_array_equal(DENSE(features, dist, "name")[0], by_name[0])


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_raw_ops_never_modify_inputs_without_backprop_out(rng, dtype):
    features = random_features(rng, (4, 6), dtype)
    labels = np.array([0, 5, 2, 3])
    dist = random_distribution(rng, (4, 6), dtype)
    copies = [a.copy() for a in (features, labels, dist)]
    SPARSE(features=features, labels=labels)
    DENSE(features=features, labels=dist)
    for arr, copy in zip((features, labels, dist), copies):
        np.testing.assert_array_equal(arr, copy)


def test_raw_ops_accept_python_lists_like_tf(tf):
    features = [[1.0, 2.0, 3.0], [0.5, 0.5, -1.0]]
    got = SPARSE(features=features, labels=[2, 0])
    truth = tf_sparse(tf, np.asarray(features, np.float64), np.array([2, 0]))
    assert_pair_matches(got, truth, np.float32, np.asarray(features))
    dense = DENSE(features=features, labels=[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert_pair_matches(dense, truth, np.float32, np.asarray(features))


# -- shape and dtype errors -----------------------------------------------------------

SPARSE_SHAPE_ERRORS = [
    ((3,), (1,)), ((3, 3, 3), (3, 3)), ((3, 3), (3, 1)), ((3, 3), (2,)), ((3, 3), ()),
    ((3, 0), (3,)), ((0, 0), (0,)),
]
DENSE_SHAPE_ERRORS = [
    ((3,), (3,)), ((3, 3, 1), (3, 3, 1)), ((3, 3), (2, 3)), ((3, 3), (3, 2)),
    ((2, 3), (3, 2)),
]


@pytest.mark.parametrize("features_shape,labels_shape", SPARSE_SHAPE_ERRORS,
                         ids=[f"f{a}-l{b}" for a, b in SPARSE_SHAPE_ERRORS])
def test_sparse_raw_shape_errors_raise_value_error_with_tf_text(tf, features_shape, labels_shape):
    features = np.zeros(features_shape, np.float32)
    labels = np.zeros(labels_shape, np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=features, labels=labels)
    with pytest.raises(ValueError) as err:
        SPARSE(features=features, labels=labels)
    assert tf_message(tf_err.value) in str(err.value)


@pytest.mark.parametrize("features_shape,labels_shape", DENSE_SHAPE_ERRORS,
                         ids=[f"f{a}-l{b}" for a, b in DENSE_SHAPE_ERRORS])
def test_dense_raw_shape_errors_raise_value_error_with_tf_text(tf, features_shape, labels_shape):
    features = np.zeros(features_shape, np.float32)
    labels = np.zeros(labels_shape, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=features, labels=labels)
    with pytest.raises(ValueError) as err:
        DENSE(features=features, labels=labels)
    assert tf_message(tf_err.value) in str(err.value)


BAD_FEATURE_DTYPES = [np.int32, np.int64, np.bool_, np.complex64, np.uint8]
BAD_LABEL_DTYPES = [np.float32, np.float64, np.int8, np.int16, np.uint8, np.uint32]


@pytest.mark.parametrize("bad", BAD_FEATURE_DTYPES, ids=lambda d: np.dtype(d).name)
def test_raw_ops_bad_feature_dtype_is_invalid_argument_and_type_error(tf, bad):
    features = np.ones((2, 3), bad)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=features, labels=np.array([0, 1]))
    for call in (lambda: SPARSE(features=features, labels=np.array([0, 1])),
                 lambda: DENSE(features=features, labels=features)):
        with pytest.raises(xent.errors.InvalidArgumentError) as err:
            call()
        assert isinstance(err.value, TypeError)
        assert np.dtype(bad).name in str(err.value)


@pytest.mark.parametrize("bad", BAD_LABEL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_sparse_raw_bad_label_dtype_is_invalid_argument_and_type_error(bad):
    # SPEC: labels are int32/int64 for raw ops too (TF's raw op quietly casts float32 zeros).
    with pytest.raises(xent.errors.InvalidArgumentError) as err:
        SPARSE(features=np.ones((2, 3), np.float32), labels=np.array([0, 1], bad))
    assert isinstance(err.value, TypeError)
    assert np.dtype(bad).name in str(err.value)


# -- backprop_out -----------------------------------------------------------------------


def sparse_case(rng, dtype, shape=(6, 17)):
    features = random_features(rng, shape, dtype)
    labels = rng.integers(0, shape[1], size=shape[0])
    if shape[0] > 0 and shape[1] > 3:
        features[0, 3] = -np.inf  # a masked logit off the label
        labels[0] = 0
    return features, labels


@pytest.mark.parametrize("shape", [(6, 17), (5, 1000), (0, 4), (3, 1)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_backprop_out_separate_buffer_receives_same_result(rng, dtype, shape):
    features, labels = sparse_case(rng, dtype, shape)
    before = features.copy()
    expected_loss, expected_backprop = SPARSE(features=features, labels=labels)
    buffer = np.full(shape, 7, dtype)
    loss, backprop = SPARSE(features=features, labels=labels, backprop_out=buffer)
    assert np.shares_memory(backprop, buffer) or backprop.size == 0
    assert backprop.shape == shape and backprop.dtype == buffer.dtype
    np.testing.assert_array_equal(buffer, expected_backprop)
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(features, before)


@pytest.mark.parametrize("shape", [(6, 17), (5, 1000), (0, 4), (3, 1)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_backprop_out_in_place_into_features_matches_out_of_place(rng, dtype, shape):
    features, labels = sparse_case(rng, dtype, shape)
    expected_loss, expected_backprop = SPARSE(features=features.copy(), labels=labels)
    loss, backprop = SPARSE(features=features, labels=labels, backprop_out=features)
    assert np.shares_memory(backprop, features) or backprop.size == 0
    np.testing.assert_array_equal(features, expected_backprop)
    np.testing.assert_array_equal(loss, expected_loss)


@pytest.mark.parametrize("shape", [(6, 17), (5, 1000), (0, 4), (3, 1)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_backprop_out_in_place_into_features_matches_out_of_place(rng, dtype, shape):
    features = random_features(rng, shape, dtype)
    labels = random_distribution(rng, shape, dtype)
    expected_loss, expected_backprop = DENSE(features=features.copy(), labels=labels)
    loss, backprop = DENSE(features=features, labels=labels, backprop_out=features)
    assert np.shares_memory(backprop, features) or backprop.size == 0
    np.testing.assert_array_equal(features, expected_backprop)
    np.testing.assert_array_equal(loss, expected_loss)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_dense_backprop_out_separate_buffer_receives_same_result(rng, dtype):
    features = random_features(rng, (6, 17), dtype)
    labels = random_distribution(rng, (6, 17), dtype)
    expected_loss, expected_backprop = DENSE(features=features, labels=labels)
    buffer = np.zeros_like(features)
    loss, backprop = DENSE(features=features, labels=labels, backprop_out=buffer)
    assert np.shares_memory(backprop, buffer)
    np.testing.assert_array_equal(buffer, expected_backprop)
    np.testing.assert_array_equal(loss, expected_loss)


@pytest.mark.parametrize("labels_shape", [(1, 6), (5, 1)], ids=str)
def test_dense_backprop_out_in_place_with_broadcast_labels_matches_tf(tf, rng, labels_shape):
    features = random_features(rng, (5, 6), np.float32)
    labels = rng.random(labels_shape).astype(np.float32)
    truth = tf_dense(tf, as64(features), as64(labels))
    scale = 6 * row_scale(features)
    loss, backprop = DENSE(features=features, labels=labels, backprop_out=features)
    assert np.shares_memory(backprop, features)
    assert_close_to_truth(loss, truth[0], np.float32, scale)
    assert_close_to_truth(features, truth[1], np.float32, 1.0)


def test_sparse_in_place_result_matches_tf(tf, rng):
    features, labels = sparse_case(rng, np.float32, (8, 1000))
    truth = tf_sparse(tf, as64(features), labels)
    scale = row_scale(features)
    loss, _ = SPARSE(features=features, labels=labels, backprop_out=features)
    assert_close_to_truth(loss, truth[0], np.float32, scale)
    assert_close_to_truth(features, truth[1], np.float32, 1.0)


@pytest.mark.parametrize("op", ["sparse", "dense"])
def test_backprop_out_into_a_strided_view_is_filled_and_its_gaps_untouched(tf, rng, op):
    features = random_features(rng, (4, 5), np.float32)
    labels = np.array([0, 4, 2, 1])
    target = np.eye(5, dtype=np.float32)[labels] if op == "dense" else labels
    call = SPARSE if op == "sparse" else DENSE
    truth = tf_sparse(tf, as64(features), labels)
    host = np.full((4, 10), 7.0, np.float32)
    view = host[:, ::2]
    _, backprop = call(features=features, labels=target, backprop_out=view)
    assert backprop is view
    assert_close_to_truth(np.ascontiguousarray(view), truth[1], np.float32, 1.0)
    np.testing.assert_array_equal(host[:, 1::2], 7.0)


BAD_BUFFERS = {
    "wider": lambda f: np.empty((f.shape[0], f.shape[1] + 1), f.dtype),
    "transposed-shape": lambda f: np.empty(f.shape[::-1], f.dtype),
    "flat": lambda f: np.empty(f.size, f.dtype),
    "one-row": lambda f: np.empty((1, f.shape[1]), f.dtype),
    "float64-for-float32": lambda f: np.empty(f.shape, np.float64),
    "float16-for-float32": lambda f: np.empty(f.shape, np.float16),
    "int32": lambda f: np.empty(f.shape, np.int32),
    "byte-swapped": lambda f: np.empty(f.shape, f.dtype.newbyteorder("S")),
}


@pytest.mark.parametrize("kind", list(BAD_BUFFERS), ids=list(BAD_BUFFERS))
@pytest.mark.parametrize("op", ["sparse", "dense"])
def test_bad_backprop_out_raises_value_error_naming_it_and_writes_nothing(rng, op, kind):
    features = random_features(rng, (3, 4), np.float32)
    before = features.copy()
    labels = np.array([0, 3, 1])
    target = np.eye(4, dtype=np.float32)[labels] if op == "dense" else labels
    call = SPARSE if op == "sparse" else DENSE
    buffer = BAD_BUFFERS[kind](features)
    buffer[...] = 7
    with pytest.raises(ValueError, match="backprop_out"):
        call(features=features, labels=target, backprop_out=buffer)
    np.testing.assert_array_equal(buffer, 7)
    np.testing.assert_array_equal(features, before)


@pytest.mark.parametrize("op", ["sparse", "dense"])
def test_read_only_backprop_out_raises_value_error(rng, op):
    features = random_features(rng, (3, 4), np.float32)
    labels = np.array([0, 3, 1])
    target = np.eye(4, dtype=np.float32)[labels] if op == "dense" else labels
    call = SPARSE if op == "sparse" else DENSE
    buffer = np.zeros_like(features)
    buffer.setflags(write=False)
    with pytest.raises(ValueError):
        call(features=features, labels=target, backprop_out=buffer)
    np.testing.assert_array_equal(buffer, 0)
