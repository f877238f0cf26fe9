"""`tf.raw_ops`' cross-entropy kernels: 2-D in, ``(loss, backprop)`` out.

Beyond TensorFlow, ``backprop_out=`` names an existing array that receives the
gradient, so no logits-sized array is allocated; it may be `features` itself,
overwriting the logits in place as TensorFlow's kernel does when it may.
PyTorch and JAX inputs give ``(loss, backprop)`` of their own type, both
differentiable as TensorFlow's registered gradient says (no ``backprop_out``).
"""
from xent import _backend, _dtypes, _validate

__all__ = ["SparseSoftmaxCrossEntropyWithLogits", "SoftmaxCrossEntropyWithLogits"]


def _gradient_target(be, backprop_out, features, shape=None):
    """The `grad` request for `_core`: a fresh array (True) or the caller's buffer."""
    if backprop_out is None:
        return True
    if be.name != "numpy":
        raise TypeError(
            f"`backprop_out` takes a NumPy array, for NumPy features only; with {be.name} "
            "features the backprop is returned")
    _validate.out_buffer(backprop_out, shape or features.shape, features.dtype)
    return backprop_out


def SparseSoftmaxCrossEntropyWithLogits(features, labels, name=None, *, backprop_out=None):
    """Loss and gradient of sparse softmax cross-entropy, per row.

    ``loss[i] = logsumexp(features[i]) - features[i, labels[i]]``;
    ``backprop[i, j] = softmax(features[i])_j - [j == labels[i]]``.

    Args:
      features: ``[batch, C]`` float16/bfloat16/float32/float64, ``C >= 1``.
      labels: ``[batch]`` int32/int64 in ``[0, C)``.
      name: unused, for TensorFlow compatibility.
      backprop_out: optional ``[batch, C]`` array of the features' dtype that
        receives ``backprop`` (may be `features`).

    Returns:
      ``(loss, backprop)``: ``[batch]`` and ``[batch, C]``, the features' dtype.

    Mirrors `tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits`.

    Examples:
      >>> import numpy as np, xent
      >>> loss, backprop = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
      ...     features=np.array([[1.0, 2.0, 3.0]], np.float32), labels=np.array([2]))
      >>> loss
      array([0.407606], dtype=float32)
      >>> backprop
      array([[ 0.09003057,  0.24472846, -0.33475906]], dtype=float32)
    """
    be = _backend.of(features, labels)
    features, labels = be.asarray(features), be.asarray(labels)
    dtype = be.dtype_name(features)
    _dtypes.check_float(dtype, "features")
    _dtypes.check_labels_int(be.dtype_name(labels), "labels")
    _validate.raw_sparse_shapes(features, labels)
    grad = _gradient_target(be, backprop_out, features)
    loss, backprop = be.sparse_loss_and_grad(labels, features, grad)
    return be.astype(loss, dtype), backprop


def SoftmaxCrossEntropyWithLogits(features, labels, name=None, *, backprop_out=None):
    """Loss and gradient of softmax cross-entropy against target distributions.

    ``loss[i] = sum_j labels[i, j] * (logsumexp(features[i]) - features[i, j])``;
    ``backprop[i, j] = softmax(features[i])_j - labels[i, j]``.

    Args:
      features: ``[batch, C]`` float16/bfloat16/float32/float64.
      labels: ``[batch, C]``, or 2-D broadcastable to it (``[1, C]``,
        ``[batch, 1]``); cast to the features' dtype.
      name: unused, for TensorFlow compatibility.
      backprop_out: optional ``[batch, C]`` array of the features' dtype that
        receives ``backprop`` (may be `features`).

    Returns:
      ``(loss, backprop)``: ``[batch]`` and ``[batch, C]``, the features' dtype.

    Mirrors `tf.raw_ops.SoftmaxCrossEntropyWithLogits`.

    Examples:
      >>> import numpy as np, xent
      >>> loss, backprop = xent.raw_ops.SoftmaxCrossEntropyWithLogits(
      ...     features=np.array([[1.0, 2.0, 3.0]], np.float32),
      ...     labels=np.array([[0.0, 0.5, 0.5]], np.float32))
      >>> loss
      array([0.907606], dtype=float32)
    """
    be = _backend.of(features, labels)
    features, labels = be.asarray(features), be.asarray(labels)
    dtype = be.dtype_name(features)
    _dtypes.check_float(dtype, "features")
    rows_shape = _validate.dense_2d_shapes(features, labels)
    labels = be.astype(labels, dtype)
    grad = _gradient_target(be, backprop_out, features, rows_shape)
    loss, backprop = be.dense_loss_and_grad(labels, features, grad)
    return be.astype(loss, dtype), backprop
