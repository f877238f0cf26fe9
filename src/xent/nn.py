"""`tf.nn`'s softmax cross-entropy ops: per-example losses, no reduction."""
from xent import _backend
from xent._errstate import quiet
from xent._losses import dense_losses, sparse_losses

__all__ = ["sparse_softmax_cross_entropy_with_logits", "softmax_cross_entropy_with_logits"]


def _inputs(labels, logits, fn_name):
    """Pick the backend and convert both arguments (TF's None check first; TF's
    message, with the space after the function's name that TF's lacks)."""
    if labels is None or logits is None:
        raise ValueError(
            f"Both `labels` and `logits` must be provided for {fn_name}. "
            f"Received: labels={labels} and logits={logits}")
    be = _backend.of(labels, logits)
    return be, be.asarray(labels, "labels"), be.asarray(logits, "logits")


@quiet
def sparse_softmax_cross_entropy_with_logits(*, labels, logits, name=None):
    """Softmax cross-entropy of each example against an integer class label.

    ``loss[i] = logsumexp(logits[i, :]) - logits[i, labels[i]]``

    Args:
      labels: int32/int64 ``[d0, ..., d(r-1)]``, values in ``[0, C)``.
      logits: float16/bfloat16/float32/float64 ``[d0, ..., d(r-1), C]``.
      name: accepted for TensorFlow compatibility; unused.

    Returns:
      ``[d0, ..., d(r-1)]`` in the logits' dtype (half precision is computed in
      float32 and rounded once).

    Raises:
      ValueError: ranks or shapes that do not match (TF's messages).
      xent.errors.InvalidArgumentError: a label outside ``[0, C)``; a bad dtype
        (also a `TypeError`).

    Edge cases follow TensorFlow: a ``-inf`` logit off the label is ignored, a
    row of all ``-inf`` (or any ``+inf``) gives NaN, one class gives 0, an
    empty batch gives an empty result. Mirrors
    `tf.nn.sparse_softmax_cross_entropy_with_logits`.

    Examples:
      >>> import numpy as np, xent
      >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
      >>> xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 1], logits=logits)
      array([0.41703004, 0.22004952], dtype=float32)
    """
    be, labels, logits = _inputs(labels, logits, "sparse_softmax_cross_entropy_with_logits")
    loss = sparse_losses(be, labels, logits)
    return be.finish(be.astype(loss, be.dtype_name(logits)))


@quiet
def softmax_cross_entropy_with_logits(*, labels, logits, axis=-1, name=None):
    """Softmax cross-entropy of each example against a target distribution.

    ``loss[i] = sum_j labels[i, j] * (logsumexp(logits[i, :]) - logits[i, j])``

    Args:
      labels: ``[d0, ..., C, ..., dn]`` (in another dtype than the logits', read in
        float32, float64 for float64 logits; TF casts them to the logits'); after the
        class axis is moved last and the rest flattened, labels must broadcast
        to the logits' rows, as in TensorFlow.
      logits: float16/bfloat16/float32/float64, same layout as `labels`.
      axis: the class axis (negative counts from the end).
      name: accepted for TensorFlow compatibility; unused.

    Returns:
      The logits' shape without `axis`, in the logits' dtype.

    Gradients (through the PyTorch/JAX backends) flow into `labels` too, as in
    TensorFlow's v2 op. A ``-inf`` logit with a zero label gives NaN, as in
    TensorFlow (``0 * inf``). Mirrors `tf.nn.softmax_cross_entropy_with_logits`.

    Examples:
      >>> import numpy as np, xent
      >>> logits = np.array([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]], np.float32)
      >>> labels = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]], np.float32)
      >>> xent.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
      array([0.16984601, 0.8247449 ], dtype=float32)
    """
    be, labels, logits = _inputs(labels, logits, "softmax_cross_entropy_with_logits")
    loss = dense_losses(be, labels, logits, axis)
    return be.finish(be.astype(loss, be.dtype_name(logits)))
