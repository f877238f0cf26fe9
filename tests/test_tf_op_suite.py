"""TensorFlow's own kernel tests for the two ops, re-expressed against xent.

Cases from `sparse_xent_op_test_base.py`, `xent_op_test_base.py` and
`xent_op_test.py` (tensorflow/python/kernel_tests). Where TF's test hard-codes
numbers, so does this file (with TF's tolerance); everything is also compared with
TensorFlow run on the same inputs. TF's GPU-only and graph-structure checks
(BatchMatMul in the graph) have no NumPy counterpart and are left out.
"""
import numpy as np
import pytest

import xent
from oracle import BF16, tf_message

SPARSE_NN = xent.nn.sparse_softmax_cross_entropy_with_logits
DENSE_NN = xent.nn.softmax_cross_entropy_with_logits
SPARSE_RAW = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits
DENSE_RAW = xent.raw_ops.SoftmaxCrossEntropyWithLogits
EPS32 = float(np.finfo(np.float32).eps)

# The classic two-row example of both test bases.
NP_LOGITS = [[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]]
NP_SOFT_LABELS = [[0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 0.5, 0.0]]

# TF's assertAllCloseAccordingToType tolerances, per dtype.
TYPE_TOL = {"float16": 1e-3, "bfloat16": 1e-2, "float32": 1e-6, "float64": 1e-6}


def close_according_to_type(got, expected, dtype, half_rtol=None):
    got = np.asarray(got)
    assert got.dtype.name == np.dtype(dtype).name
    tol = TYPE_TOL[np.dtype(dtype).name]
    rtol = half_rtol if half_rtol and np.dtype(dtype).name in ("float16", "bfloat16") else tol
    np.testing.assert_allclose(got.astype(np.float64), np.asarray(expected, np.float64),
                               rtol=rtol, atol=tol)


def np_xent(labels, logits, axis=-1):
    """The test bases' NumPy reference: softmax by max-shift, loss with a 1e-20 guard."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.float64)
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    probs = e / e.sum(axis=axis, keepdims=True)
    return -np.sum(labels * np.log(probs + 1e-20), axis=axis), probs - labels


def np_sparse_xent(labels, logits):
    logits = np.asarray(logits, np.float64)
    onehot = np.eye(logits.shape[-1])[np.asarray(labels)]
    return np_xent(onehot, logits)


def tf_fwd_bwd_sparse(tf, labels, logits):
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=x)
    return loss.numpy(), tape.gradient(loss, x).numpy()


def tf_fwd_bwd_dense(tf, labels, logits, axis=-1):
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=x, axis=axis)
    return loss.numpy(), tape.gradient(loss, x).numpy()


def numeric_gradient(f, x, h=1e-6):
    """Central differences of the scalar `f` at float64 `x`."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (f(up) - f(down)) / (2 * h)
    return grad


# ========================= sparse_xent_op_test_base.py ===============================


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64], ids=["int32", "int64"])
def test_sparse_single_class_gives_zero_loss_and_gradient(tf, label_dtype):  # testSingleClass
    labels = np.array([0, 0, 0], label_dtype)
    logits = np.array([[1.0], [-1.0], [0.0]], np.float32)
    loss, backprop = SPARSE_RAW(features=logits, labels=labels)
    np.testing.assert_allclose(SPARSE_NN(labels=labels, logits=logits), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(loss, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(backprop, [[0.0], [0.0], [0.0]])
    tf_loss, tf_grad = tf_fwd_bwd_sparse(tf, labels, logits)
    np.testing.assert_array_equal(loss, tf_loss)
    np.testing.assert_array_equal(backprop, tf_grad)


def test_sparse_invalid_label_cpu_raises(tf):  # testInvalidLabelCPU
    labels = [4, 3, 0, -1]
    logits = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0],
              [1.0, 2.0, 3.0, 4.0]]
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(xent.errors.InvalidArgumentError, match="Received a label value of") as err:
        SPARSE_NN(labels=labels, logits=logits)
    assert str(err.value) in tf_message(tf_err.value)


def test_sparse_np_xent_two_batches_match_tf_hard_coded_numbers(tf):  # testNpXent
    labels, logits = np.array([3, 0]), np.array(NP_LOGITS, np.float64)
    loss, backprop = SPARSE_RAW(features=logits, labels=labels)
    np.testing.assert_allclose(backprop, [[0.25, 0.25, 0.25, -0.75], [-0.968, 0.087, 0.237, 0.6439]],
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(loss, [1.3862, 3.4420], rtol=1e-3, atol=1e-3)
    tf_loss, tf_grad = tf_fwd_bwd_sparse(tf, labels, logits)
    np.testing.assert_allclose(loss, tf_loss, rtol=1e-12)
    np.testing.assert_allclose(backprop, tf_grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(SPARSE_NN(labels=labels, logits=logits), tf_loss, rtol=1e-12)


def test_sparse_shape_mismatch_message(tf):  # testShapeMismatch
    kwargs = dict(labels=[[0, 2]], logits=[[0.0, 1.0], [2.0, 3.0], [2.0, 3.0]])
    with pytest.raises(ValueError, match=r"`labels.shape.rank` must equal `logits.shape.rank - 1`"):
        SPARSE_NN(**kwargs)
    with pytest.raises(ValueError, match=r"`labels.shape.rank` must equal"):
        tf.nn.sparse_softmax_cross_entropy_with_logits(**kwargs)


def test_sparse_scalar_logits_rejected(tf):  # testScalar
    with pytest.raises(ValueError, match="`logits` cannot be a scalar"):
        SPARSE_NN(labels=np.int32(0), logits=np.float32(1.0))
    with pytest.raises(ValueError, match="`logits` cannot be a scalar"):
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.constant(0),
                                                       logits=tf.constant(1.0))


def test_sparse_scalar_labels_against_matrix_logits_rejected(tf):
    # testLabelsPlaceholderScalar / testScalarHandling: a scalar label fed to 2-D logits.
    # TF's graph mode reports "labels must be 1-D" from the kernel; eagerly the Python
    # rank check fires first. xent has no placeholders, so both faces are checked.
    with pytest.raises(ValueError):
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=0, logits=[[7.0]])
    with pytest.raises(ValueError, match="rank"):
        SPARSE_NN(labels=0, logits=[[7.0]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be 1-D"):
        tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=[[7.0]], labels=np.int32(0))
    with pytest.raises(ValueError, match="labels must be 1-D"):
        SPARSE_RAW(features=np.array([[7.0]], np.float32), labels=np.int32(0))
    squeezed = np.squeeze(np.zeros((1, 1), np.int32))
    with pytest.raises(ValueError):
        SPARSE_NN(labels=squeezed, logits=np.random.default_rng(0).standard_normal((1, 3)))


def test_sparse_vector_logits_with_scalar_label(tf):  # testVector
    loss = SPARSE_NN(labels=np.int32(0), logits=np.array([1.0], np.float32))
    np.testing.assert_allclose(loss, 0.0)
    assert np.shape(loss) == ()
    tf_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.constant(0),
                                                             logits=tf.constant([1.0]))
    np.testing.assert_array_equal(np.asarray(loss), tf_loss.numpy())


SPARSE_DTYPE_CASES = [("float32", [3, 0]), ("float64", [0, 3]), ("float16", [3, 0]),
                      ("bfloat16", [3, 0])]


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("dtype_name,labels", SPARSE_DTYPE_CASES,
                         ids=[c[0] for c in SPARSE_DTYPE_CASES])
def test_sparse_dtypes_match_np_reference(tf, dtype_name, labels, label_dtype):
    # testFloat / testDouble / testHalf / testBfloat16
    dtype = BF16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
    labels = np.array(labels, label_dtype)
    logits = np.array(NP_LOGITS, dtype)
    np_loss, np_grad = np_sparse_xent(labels, logits.astype(np.float64))
    loss, backprop = SPARSE_RAW(features=logits, labels=labels)
    close_according_to_type(loss, np_loss, dtype)
    close_according_to_type(backprop, np_grad, dtype)
    close_according_to_type(SPARSE_NN(labels=labels, logits=logits), np_loss, dtype)
    tf_loss, tf_grad = tf_fwd_bwd_sparse(tf, labels, logits)
    close_according_to_type(loss, tf_loss.astype(np.float64), dtype)
    close_according_to_type(backprop, tf_grad.astype(np.float64), dtype)


def test_sparse_empty_batch(tf):  # testEmpty
    labels, logits = np.zeros((0,), np.int32), np.zeros((0, 3))
    loss, backprop = SPARSE_RAW(features=logits, labels=labels)
    assert loss.shape == (0,) and backprop.shape == (0, 3)
    assert loss.dtype == backprop.dtype == np.float64
    tf_loss, tf_grad = tf_fwd_bwd_sparse(tf, labels, logits)
    assert SPARSE_NN(labels=labels, logits=logits).shape == tf_loss.shape == (0,)


GRAD_LOGITS = np.array([0.1, 0.2, 0.3, 0.4, 0.1, 0.4, 0.9, 1.6, 0.1, 0.8, 2.7, 6.4]).reshape(3, 4)


def test_sparse_backprop_matches_numeric_gradient(tf):  # testGradient
    labels = np.array([3, 0, 1])
    _, analytic = SPARSE_RAW(features=GRAD_LOGITS, labels=labels)
    numeric = numeric_gradient(lambda x: SPARSE_NN(labels=labels, logits=x).sum(), GRAD_LOGITS)
    np.testing.assert_allclose(analytic, numeric, atol=5e-8, rtol=5e-8)
    _, tf_grad = tf_fwd_bwd_sparse(tf, labels, GRAD_LOGITS)
    np.testing.assert_allclose(analytic, tf_grad, atol=1e-15, rtol=1e-12)


def tf_hessian_of_sum(tf, loss_fn, logits):
    x = tf.constant(logits)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            total = tf.reduce_sum(loss_fn(x))
        grad = inner.gradient(total, x)
    return outer.jacobian(grad, x).numpy()


def test_sparse_second_gradient_matches_tf(tf):  # testSecondGradient
    labels = np.array([3, 0, 1])
    logits = np.array([0.3, 0.4, 0.1, 1.2, 0.1, 1.9, 0.1, 0.7, 0.8, 0.2, 1.3, 1.3]).reshape(3, 4)
    hess_tf = tf_hessian_of_sum(
        tf, lambda x: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=x),
        logits)
    hess = np.zeros((3, 4, 3, 4))
    for idx in np.ndindex(3, 4):
        step = np.zeros_like(logits)
        step[idx] = 1e-6
        up = SPARSE_RAW(features=logits + step, labels=labels)[1]
        down = SPARSE_RAW(features=logits - step, labels=labels)[1]
        hess[..., idx[0], idx[1]] = (up - down) / 2e-6
    np.testing.assert_allclose(hess, hess_tf, atol=5e-8, rtol=5e-8)


HIGH_DIM = [
    ([[3], [0]], [[[1.0, 1.0, 1.0, 1.0]], [[1.0, 2.0, 3.0, 4.0]]]),
    ([[3, 2], [0, 3]], [[[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]],
                        [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]]),
]


@pytest.mark.parametrize("labels,logits", HIGH_DIM, ids=["testHighDim", "testHighDim2"])
def test_sparse_high_dim_matches_np_reference_and_tf(tf, labels, logits):
    labels, logits = np.array(labels), np.array(logits, np.float32)
    np_loss, _ = np_sparse_xent(labels.reshape(-1), logits.reshape(-1, 4))
    loss = SPARSE_NN(labels=labels, logits=logits)
    assert loss.shape == labels.shape and loss.dtype == np.float32
    close_according_to_type(loss, np_loss.reshape(labels.shape), np.float32)
    tf_loss, _ = tf_fwd_bwd_sparse(tf, labels, logits)
    np.testing.assert_allclose(loss, tf_loss, rtol=1e-6, atol=4 * EPS32 * 8)


# ============================ xent_op_test_base.py ===================================


@pytest.mark.parametrize("dtype", [np.dtype(np.float16), np.dtype(np.float32), BF16],
                         ids=["float16", "float32", "bfloat16"])
def test_dense_single_class_zero_loss_and_gradient_one_minus_label(tf, dtype):  # testSingleClass
    labels = np.array([[-1.0], [0.0], [1.0], [1.0]], dtype)
    logits = np.array([[1.0], [-1.0], [0.0], [1.0]], dtype)
    loss = DENSE_NN(labels=labels, logits=logits)
    raw_loss, backprop = DENSE_RAW(features=logits, labels=labels)
    np.testing.assert_allclose(np.asarray(loss, np.float64), [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(raw_loss.astype(np.float64), [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(backprop.astype(np.float64), [[2.0], [1.0], [0.0], [0.0]])
    tf_loss, tf_grad = tf_fwd_bwd_dense(tf, labels, logits)
    np.testing.assert_array_equal(backprop.astype(np.float64), tf_grad.astype(np.float64))


def test_dense_np_xent_two_batches_match_tf_hard_coded_numbers(tf):  # testNpXent
    labels, logits = np.array(NP_SOFT_LABELS), np.array(NP_LOGITS)
    loss, backprop = DENSE_RAW(features=logits, labels=labels)
    np.testing.assert_allclose(backprop, [[0.25, 0.25, 0.25, -0.75],
                                          [0.0321, -0.4129, -0.2632, 0.6439]],
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(loss, [1.3862, 1.9401], rtol=1e-3, atol=1e-3)
    tf_loss, tf_grad = tf_fwd_bwd_dense(tf, labels, logits)
    np.testing.assert_allclose(loss, tf_loss, rtol=1e-12)
    np.testing.assert_allclose(backprop, tf_grad, rtol=1e-12, atol=1e-15)


UNIFORM_LABELS_GRADIENT = [[0.25, 0.25, 0.25, 0.25], [-1.968, -1.913, -1.763, -1.355],
                           [-0.218, -0.163, -0.013, 0.394]]
LABEL_BROADCASTS = [
    ([[0.0, 0.0, 0.0, 1.0]], NP_LOGITS, None),
    ([[1.0]], [[1.0], [2.0]], None),
    ([[0.0], [2.0], [0.25]], [[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]],
     UNIFORM_LABELS_GRADIENT),
]


@pytest.mark.parametrize("labels,logits,expected_gradient", LABEL_BROADCASTS,
                         ids=["row", "one-by-one", "column"])
def test_dense_labels_broadcast_float16(tf, labels, logits, expected_gradient):  # testLabelsBroadcast
    labels, logits = np.array(labels, np.float16), np.array(logits, np.float16)
    np_loss, np_grad = np_xent(labels, logits)
    if expected_gradient is not None:
        np_grad = expected_gradient
    loss = DENSE_NN(labels=labels, logits=logits)
    raw_loss, backprop = DENSE_RAW(features=logits, labels=labels)
    close_according_to_type(loss, np_loss, np.float16, half_rtol=1e-2)
    close_according_to_type(raw_loss, np_loss, np.float16, half_rtol=1e-2)
    close_according_to_type(backprop, np_grad, np.float16)
    tf_loss, tf_grad = tf_fwd_bwd_dense(tf, labels, logits)
    close_according_to_type(loss, tf_loss.astype(np.float64), np.float16, half_rtol=1e-2)


def test_dense_shape_mismatch_raises_value_error(tf):  # testShapeMismatch
    labels = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    logits = [[0.0, 1.0], [2.0, 3.0]]
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(ValueError):
        DENSE_NN(labels=labels, logits=logits)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32", "float64"])
def test_dense_dtypes_match_np_reference(tf, dtype_name):  # testHalf/Bfloat16/Float/Double
    dtype = BF16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
    labels, logits = np.array(NP_SOFT_LABELS, dtype), np.array(NP_LOGITS, dtype)
    np_loss, np_grad = np_xent(labels, logits)
    loss = DENSE_NN(labels=labels, logits=logits)
    raw_loss, backprop = DENSE_RAW(features=logits, labels=labels)
    close_according_to_type(loss, np_loss, dtype, half_rtol=1e-2)
    close_according_to_type(raw_loss, np_loss, dtype, half_rtol=1e-2)
    close_according_to_type(backprop, np_grad, dtype)
    tf_loss, tf_grad = tf_fwd_bwd_dense(tf, labels, logits)
    close_according_to_type(backprop, tf_grad.astype(np.float64), dtype)


GRAD_LABELS = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.5]).reshape(3, 4)


def test_dense_backprop_matches_numeric_gradient(tf):  # testGradient
    _, analytic = DENSE_RAW(features=GRAD_LOGITS, labels=GRAD_LABELS)
    numeric = numeric_gradient(lambda x: DENSE_NN(labels=GRAD_LABELS, logits=x).sum(),
                               GRAD_LOGITS)
    np.testing.assert_allclose(analytic, numeric, atol=5e-8, rtol=5e-8)
    _, tf_grad = tf_fwd_bwd_dense(tf, GRAD_LABELS, GRAD_LOGITS)
    np.testing.assert_allclose(analytic, tf_grad, atol=1e-15, rtol=1e-12)


def test_dense_loss_gradient_wrt_labels_matches_tf_v2(tf):  # testGradientLabelWithV2
    y = tf.constant(GRAD_LABELS)
    with tf.GradientTape() as tape:
        tape.watch(y)
        total = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=GRAD_LOGITS))
    tf_grad = tape.gradient(total, y).numpy()
    numeric = numeric_gradient(lambda lab: DENSE_NN(labels=lab, logits=GRAD_LOGITS).sum(),
                               GRAD_LABELS)
    np.testing.assert_allclose(numeric, tf_grad, atol=5e-8, rtol=5e-8)


def test_dense_second_gradient_matches_tf(tf):  # testSecondGradient
    labels = np.array([0.0, 0.0, 1 / 3, 0.0, 1 / 3, 0.0, 0.0, 0.0, 0.0, 0.5 / 3, 0.0, 0.5 / 3])
    logits = GRAD_LOGITS.reshape(12)
    hess_tf = tf_hessian_of_sum(
        tf, lambda x: tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=x), logits)
    hess = np.zeros((12, 12))
    for j in range(12):
        step = np.zeros(12)
        step[j] = 1e-6
        up = DENSE_RAW(features=(logits + step)[None], labels=labels[None])[1][0]
        down = DENSE_RAW(features=(logits - step)[None], labels=labels[None])[1][0]
        hess[:, j] = (up - down) / 2e-6
    np.testing.assert_allclose(hess, hess_tf, atol=5e-8, rtol=5e-8)


TEST3D_LABELS = np.array([
    [[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]],
    [[0.0, 0.5, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0]],
    [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]], np.float32)
TEST3D_LOGITS = np.array([
    [[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]],
    [[2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0]],
    [[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]]], np.float32)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_dense_3d_along_each_axis(tf, axis):  # test3D
    np_loss, _ = np_xent(TEST3D_LABELS, TEST3D_LOGITS, axis=axis)
    loss = DENSE_NN(labels=TEST3D_LABELS, logits=TEST3D_LOGITS, axis=axis)
    close_according_to_type(loss, np_loss, np.float32)
    tf_loss = tf.nn.softmax_cross_entropy_with_logits(labels=TEST3D_LABELS, logits=TEST3D_LOGITS,
                                                      axis=axis).numpy()
    np.testing.assert_allclose(loss, tf_loss, rtol=1e-6, atol=4 * EPS32 * 9)


def test_dense_zero_dimension(tf):  # testZeroDimension
    zeros = np.zeros([0, 2, 4], np.float32)
    loss = DENSE_NN(labels=zeros, logits=zeros)
    tf_loss = tf.nn.softmax_cross_entropy_with_logits(labels=zeros, logits=zeros).numpy()
    assert loss.shape == tf_loss.shape == (0, 2)
    assert loss.dtype == np.float32
    np.testing.assert_array_equal(loss, tf_loss)


# =============================== xent_op_test.py =====================================


@pytest.mark.parametrize("broadcast_labels", [False, True])
@pytest.mark.parametrize("target_class", [0, 1])
@pytest.mark.parametrize("batch_size", [0, 1, 4096])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_small_tail_gradient_across_dtypes(tf, dtype, batch_size, target_class,
                                           broadcast_labels):  # testSmallGradientAcrossDtypes
    # TF's newer test: the non-target probability exp(-37.43) ~ 5.6e-17 must survive
    # (positive), and the target entry is 0 in float32 (1 - p rounds to 1), and either
    # -tail (exact) or 0 (TF 2.21) in float64.
    logits = np.zeros((batch_size, 2), dtype)
    logits[:, target_class] = 37.42994775023705
    labels = np.zeros((1 if broadcast_labels else batch_size, 2), dtype)
    labels[:, target_class] = 1.0
    tail = np.exp(-dtype(37.42994775023705))
    _, backprop = DENSE_RAW(features=logits, labels=labels)
    _, tf_backprop = tf_dense_raw(tf, logits, labels)
    np.testing.assert_allclose(backprop[:, 1 - target_class], tail, rtol=1e-6 if dtype ==
                               np.float32 else 1e-14, atol=0)
    assert np.all(backprop[:, 1 - target_class] > 0)
    np.testing.assert_allclose(backprop, tf_backprop, rtol=1e-6, atol=2 * tail)
    if dtype == np.float32:
        np.testing.assert_array_equal(backprop[:, target_class], 0.0)
    else:
        assert np.all(backprop[:, target_class] <= 0)


def tf_dense_raw(tf, features, labels):
    loss, backprop = tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=features, labels=labels)
    return loss.numpy(), backprop.numpy()


def test_double_multi_class_tail_gradient(tf):  # testDoublePreservesMultiClassTailGradient
    logits = np.zeros((3, 10))
    logits[0, 0] = 40.0
    logits[1, 9] = 40.0
    logits[2, 4] = 3.0
    labels = np.zeros_like(logits)
    labels[np.arange(3), [0, 9, 4]] = 1.0
    _, backprop = DENSE_RAW(features=logits, labels=labels)
    _, tf_backprop = tf_dense_raw(tf, logits, labels)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    expected = probs - labels
    # The off-target tail is kept exactly; the target entry is -9*exp(-40) exactly or
    # (as TF 2.21 computes it) 0.
    off = labels == 0
    np.testing.assert_allclose(backprop[off], expected[off], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(backprop, tf_backprop, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(backprop.sum(axis=-1), 0.0, atol=1e-15)


def test_double_soft_labels_and_positive_zero(tf):  # testDoublePreservesSoftLabelsAndPositiveZero
    # Newer TF keeps p0 - 0.5 strictly below 0.5; TF 2.21 rounds it to 0.5. Either is
    # as precise as the installed TF, so the check is "at most 0.5 and as TF within 1 ulp".
    logits = np.array([[37.42994775023705, 0.0]])
    _, backprop = DENSE_RAW(features=logits, labels=np.array([[0.5, 0.5]]))
    _, tf_backprop = tf_dense_raw(tf, logits, np.array([[0.5, 0.5]]))
    assert backprop[0, 0] <= 0.5
    np.testing.assert_allclose(backprop, tf_backprop, rtol=2.3e-16, atol=1e-16)
    np.testing.assert_allclose(backprop.sum(axis=-1), [0.0], atol=1e-15)
    _, single = DENSE_RAW(features=np.array([[0.0]]), labels=np.array([[1.0]]))
    _, tf_single = tf_dense_raw(tf, np.array([[0.0]]), np.array([[1.0]]))
    assert single[0, 0] == 0.0 == tf_single[0, 0]
    assert not np.signbit(single[0, 0])


def test_double_general_label_gradients_nan_and_inf(tf):  # testDoublePreservesGeneralLabelGradients
    logits = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [np.inf, 0.0], [np.nan, 0.0],
                       [-np.inf, -np.inf]])
    labels = np.array([[0.0, 0.0], [2.0, 0.0], [np.nan, 0.0], [1.0, 0.0], [1.0, 0.0],
                       [1.0, 0.0]])
    loss, backprop = DENSE_RAW(features=logits, labels=labels)
    tf_loss, tf_backprop = tf_dense_raw(tf, logits, labels)
    np.testing.assert_allclose(backprop[:2], [[0.5, 0.5], [-1.5, 0.5]])
    assert np.isnan(backprop[2, 0])
    np.testing.assert_allclose(backprop[2, 1], 0.5)
    assert np.isnan(backprop[3:]).all()
    np.testing.assert_array_equal(np.isnan(backprop), np.isnan(tf_backprop))
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(tf_loss))
    np.testing.assert_allclose(loss[:2], tf_loss[:2], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["float16", "float32"])
def test_dense_raw_rank_too_large(tf, dtype):  # testRankTooLarge
    features = np.array([[[1.0, 1.0, 1.0, 1.0]], [[1.0, 2.0, 3.0, 4.0]]], dtype)
    labels = np.array([[[0.0, 0.0, 0.0, 1.0]], [[0.0, 0.5, 0.5, 0.0]]], dtype)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=features, labels=labels)
    with pytest.raises(ValueError):
        DENSE_RAW(features=features, labels=labels)


def test_dense_raw_features_broadcast(tf):  # testFeaturesBroadcast
    np_f = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    np_l = np.array([[0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 0.5, 0.0]], np.float32)
    np_loss, np_grad = np_xent(np_l, np_f)
    loss, backprop = DENSE_RAW(np_f[:1], np_l)
    tf_loss, tf_backprop = tf_dense_raw(tf, np_f[:1], np_l)
    assert loss.shape == tf_loss.shape == (2,) and backprop.shape == tf_backprop.shape == (2, 4)
    close_according_to_type(loss, np_loss, np.float32)
    close_according_to_type(backprop, np_grad, np.float32)
    loss, backprop = DENSE_RAW(np.array([[1.0]], np.float32), np.array([[1.0], [1.0]], np.float32))
    np.testing.assert_allclose(loss, [0.0, 0.0])
    close_according_to_type(backprop, [[0.0], [0.0]], np.float32)


def test_dense_raw_not_matrix(tf):  # testNotMatrix
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=[0.0, 1.0, 2.0, 3.0],
                                                 labels=[0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        DENSE_RAW(np.array([0.0, 1.0, 2.0, 3.0], np.float32),
                  np.array([0.0, 1.0, 0.0, 1.0], np.float32))


@pytest.mark.parametrize("batch_size", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_dense_raw_zero_classes_follows_tf(tf, dtype, batch_size):  # testRejectsZeroClasses
    # Newer TF rejects zero classes ("Must have at least one class, but got 0 classes");
    # TF 2.21 returns a zero loss. xent follows the TF that is installed.
    empty = np.zeros((batch_size, 0), dtype)
    try:
        tf_loss, tf_backprop = tf_dense_raw(tf, empty, empty)
    except (ValueError, tf.errors.InvalidArgumentError):
        with pytest.raises(ValueError, match="at least one class"):
            DENSE_RAW(features=empty, labels=empty)
        return
    loss, backprop = DENSE_RAW(features=empty, labels=empty)
    np.testing.assert_array_equal(loss, tf_loss)
    assert backprop.shape == tf_backprop.shape
