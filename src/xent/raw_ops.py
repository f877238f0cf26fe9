"""`tf.raw_ops`' cross-entropy kernels: 2-D in, a named tuple ``(loss, backprop)`` out.

Beyond TensorFlow, ``backprop_out=`` names an existing array that receives the
gradient, so no logits-sized array is allocated; it may be `features` itself,
overwriting the logits in place as TensorFlow's kernel does when it may.
PyTorch and JAX inputs give ``(loss, backprop)`` of their own type, both
differentiable as TensorFlow's registered gradient says (no ``backprop_out``).
"""
import collections
import os

import numpy as np

from xent import _backend, _dtypes, _validate
from xent._errstate import quiet

__all__ = ["SparseSoftmaxCrossEntropyWithLogits", "SoftmaxCrossEntropyWithLogits"]

# The results are named tuples, as TensorFlow's: `.loss` and `.backprop`, or unpacked.
_SparseOutput = collections.namedtuple("SparseSoftmaxCrossEntropyWithLogits", ["loss", "backprop"])
_DenseOutput = collections.namedtuple("SoftmaxCrossEntropyWithLogits", ["loss", "backprop"])


def _gradient_target(be, backprop_out, features, shape=None):
    """The `grad` request for `_core`: a fresh array (True) or the caller's buffer."""
    if backprop_out is None:
        return True
    if be.name != "numpy":
        raise TypeError(
            f"`backprop_out` takes a NumPy array, for NumPy features and labels only; with "
            f"{be.name} inputs (features or labels) the backprop is returned")
    _validate.out_buffer(backprop_out, shape or features.shape, features.dtype)
    return backprop_out


def _same_buffer(a, b):
    """Whether arrays `a` and `b` are the same elements of the same memory."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.shape == b.shape and a.dtype == b.dtype)


def _mapped_file(a):
    """The file whose mapping `a` views (a `np.memmap`'s, or its base's) as its
    device and inode (one file under two names, links included), or None."""
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap) and a.filename is not None:
            try:
                status = os.stat(a.filename)   # (a str, or a Path from a Path)
            except OSError:   # (a file removed since it was mapped: its last name)
                return os.path.realpath(a.filename)
            return status.st_dev, status.st_ino
        a = a.base
    return None


def _may_overlap(out, out_file, a):
    """Whether `out` (mapping `out_file`: `_mapped_file`) may share memory with
    `a`: their bounds overlap, or both map one file (two mappings of a file are
    the same memory at two addresses, which `np.may_share_memory` cannot see)."""
    if a is None:
        return False
    return np.may_share_memory(out, a) or (out_file is not None and _mapped_file(a) == out_file)


def _apart_from(backprop_out, features, labels):
    """`features` and `labels`, each copied if the gradient's buffer overlaps it.

    The kernels read the inputs while they write the gradient. Into `features`
    itself (in place) that is safe: each element is read before it is
    overwritten. Into a view that overlaps them otherwise (rows reversed,
    shifted by one; a second mapping of the features' file) or into the dense
    labels, a kernel would read what it has already written; those inputs are
    copied first. (Memory mapped twice by other means, such as one shared
    memory block attached twice, is not seen.)
    """
    if backprop_out is None or not isinstance(backprop_out, np.ndarray):
        return features, labels
    out_file = _mapped_file(backprop_out)
    if _may_overlap(backprop_out, out_file, features) and not _same_buffer(backprop_out, features):
        features = features.copy()
    if _may_overlap(backprop_out, out_file, labels):
        labels = labels.copy()
    return features, labels


@quiet
def SparseSoftmaxCrossEntropyWithLogits(features, labels, name=None, *, backprop_out=None):
    """Loss and gradient of sparse softmax cross-entropy, per row.

    ``loss[i] = logsumexp(features[i]) - features[i, labels[i]]``;
    ``backprop[i, j] = softmax(features[i])_j - [j == labels[i]]``.

    Args:
      features: ``[batch, C]`` float16/bfloat16/float32/float64, ``C >= 1``.
      labels: ``[batch]`` int32/int64 in ``[0, C)``.
      name: unused, for TensorFlow compatibility.
      backprop_out: optional ``[batch, C]`` array of the features' dtype that
        receives ``backprop``: `features` itself (in place, no allocation), or
        any other array; one that overlaps `features` otherwise (a reversed
        view of it) gets the same numbers, through a copy of `features`.

    Returns:
      A named tuple ``(loss, backprop)``, as TensorFlow's: ``[batch]`` and
      ``[batch, C]``, the features' dtype.

    Mirrors `tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits`.

    Examples:
      >>> import numpy as np, xent
      >>> result = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
      ...     features=np.array([[1.0, 2.0, 3.0]], np.float32), labels=np.array([2]))
      >>> result.loss
      array([0.40760598], dtype=float32)
      >>> result.backprop
      array([[ 0.09003057,  0.24472849, -0.33475906]], dtype=float32)
    """
    be = _backend.of(features, labels)
    features, labels = be.asarray(features, "features"), be.asarray(labels, "labels")
    dtype = be.dtype_name(features)
    _dtypes.check_float(dtype, "features")
    _dtypes.check_labels_int(be.dtype_name(labels), "labels")
    _validate.raw_sparse_shapes(features, labels)
    grad = _gradient_target(be, backprop_out, features)
    features, labels = _apart_from(backprop_out, features, labels)
    loss, backprop = be.sparse_loss_and_grad(labels, features, grad)
    return _SparseOutput(be.astype(loss, dtype), backprop)


@quiet
def SoftmaxCrossEntropyWithLogits(features, labels, name=None, *, backprop_out=None):
    """Loss and gradient of softmax cross-entropy against target distributions.

    ``loss[i] = sum_j labels[i, j] * (logsumexp(features[i]) - features[i, j])``;
    ``backprop[i, j] = softmax(features[i])_j - labels[i, j]``.

    Args:
      features: ``[batch, C]`` float16/bfloat16/float32/float64.
      labels: ``[batch, C]``, or broadcastable with the features to a 2-D
        shape (``[1, C]``, ``[batch, 1]``, ``[C]``, a scalar; ``[C]``
        features against ``[batch, C]`` labels too, as TF broadcasts both);
        cast to the features' dtype.
      name: unused, for TensorFlow compatibility.
      backprop_out: optional ``[batch, C]`` array of the features' dtype that
        receives ``backprop``: `features` itself (in place, no allocation), or
        any other array; one that overlaps `features` or `labels` otherwise
        gets the same numbers, through a copy of what it overlaps.

    Returns:
      A named tuple ``(loss, backprop)``, as TensorFlow's: ``[batch]`` and
      ``[batch, C]``, the features' dtype.

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
    features, labels = be.asarray(features, "features"), be.asarray(labels, "labels")
    dtype = be.dtype_name(features)
    _dtypes.check_float(dtype, "features")
    features_2d, labels_2d = _validate.raw_dense_ranks(features.shape, labels.shape)
    features, labels = be.xp.reshape(features, features_2d), be.xp.reshape(labels, labels_2d)
    rows_shape = _validate.dense_2d_shapes(features, labels)
    labels = be.astype(labels, dtype)
    grad = _gradient_target(be, backprop_out, features, rows_shape)
    features, labels = _apart_from(backprop_out, features, labels)
    loss, backprop = be.dense_loss_and_grad(labels, features, grad)
    return _DenseOutput(be.astype(loss, dtype), backprop)
