"""`tf.compat.v1.nn`'s softmax cross-entropy ops, for TensorFlow 1 code.

Thin over `xent.nn`: the same losses, with TensorFlow 1's arguments (``dim``,
the old name of ``axis``; positional labels and logits) and, for the v1
`softmax_cross_entropy_with_logits`, no gradient into the labels (TF 1 stops
it; its ``_v2`` and TF 2's `tf.nn` let it flow).
"""
from xent import nn as _nn
from xent._errstate import quiet

__all__ = ["softmax_cross_entropy_with_logits", "softmax_cross_entropy_with_logits_v2",
           "sparse_softmax_cross_entropy_with_logits"]


def _class_axis(axis, dim):
    """TF's lookup of `axis` and its deprecated name `dim`: one of them, not both."""
    if axis is not None and dim is not None:
        raise ValueError("Cannot specify both 'dim' and 'axis'.")
    return -1 if axis is None and dim is None else (dim if axis is None else axis)


@quiet
def softmax_cross_entropy_with_logits(labels=None, logits=None, dim=-1, name=None, axis=None):
    """`xent.nn.softmax_cross_entropy_with_logits` with no gradient into `labels`.

    ``loss[i] = sum_j labels[i, j] * (logsumexp(logits[i, :]) - logits[i, j])``

    Args:
      labels, logits: as `xent.nn.softmax_cross_entropy_with_logits`; the
        labels are held constant (TF 1's ``stop_gradient``).
      dim: the class axis (TF 1's name). As in TensorFlow, `axis` given beside
        it (whose default -1 counts as given) raises ValueError.
      name: accepted for TensorFlow compatibility; unused.
      axis: the class axis, in place of `dim` (then pass ``dim=None``).

    Mirrors `tf.compat.v1.nn.softmax_cross_entropy_with_logits`.

    Examples:
      >>> import numpy as np, xent
      >>> logits = np.array([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]], np.float32)
      >>> labels = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]], np.float32)
      >>> xent.compat.v1.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
      array([0.16984601, 0.8247449 ], dtype=float32)
    """
    class_axis = _class_axis(axis, dim)
    be, labels, logits = _nn._inputs(labels, logits, "softmax_cross_entropy_with_logits")
    return _nn.softmax_cross_entropy_with_logits(labels=be.stop_gradient(labels), logits=logits,
                                                 axis=class_axis, name=name)


@quiet
def softmax_cross_entropy_with_logits_v2(labels, logits, axis=None, name=None, dim=None):
    """`xent.nn.softmax_cross_entropy_with_logits` (gradients into the labels too) under
    TF 1's name and arguments: `axis` or its old name `dim` (default -1), not both.
    Mirrors `tf.compat.v1.nn.softmax_cross_entropy_with_logits_v2`."""
    return _nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits,
                                                 axis=_class_axis(axis, dim), name=name)


@quiet
def sparse_softmax_cross_entropy_with_logits(labels=None, logits=None, name=None):
    """`xent.nn.sparse_softmax_cross_entropy_with_logits`, which TF 1 also takes
    positionally. Mirrors `tf.compat.v1.nn.sparse_softmax_cross_entropy_with_logits`."""
    return _nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits, name=name)
