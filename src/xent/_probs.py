"""Cross-entropy from probabilities: Keras' ``from_logits=False`` paths.

Keras (TensorFlow backend) treats predicted probabilities ``p`` this way:

  - sparse: ``logits = log(clip(p, eps, 1 - eps))``, then the softmax
    cross-entropy of those logits, which renormalises the clipped values:
    ``loss = log(sum_j clip(p)_j) - log(clip(p)_label)``;
  - categorical: ``q = clip(p / sum_j p_j, eps, 1 - eps)``, then
    ``loss = -sum_j y_j log(q_j)`` (no renormalisation after the clip).

``eps = 1e-7``. The clip runs in `p`'s own dtype (so its bounds round as in
Keras), the logarithm and sums in float32 (float64 for float64).
"""
from xent import _dtypes

EPSILON = 1e-7


def _clip(be, p):
    """``clip(p, eps, 1 - eps)`` in `p`'s dtype."""
    return be.xp.clip(p, be.astype(EPSILON, be.dtype_name(p)), be.astype(1.0 - EPSILON, be.dtype_name(p)))


def clipped_log(be, p):
    """``log(clip(p, eps, 1 - eps))`` in the accumulator dtype: logits for the sparse path."""
    acc = _dtypes.accumulator_name(be.dtype_name(p))
    return be.xp.log(be.astype(_clip(be, p), acc))


def categorical_from_probs(be, y_true, p, axis):
    """Keras' categorical cross-entropy of probabilities `p` against `y_true`.

    ``loss = -sum_j y_j * log(clip(p_j / sum_k p_k))`` along `axis`; the result
    drops `axis` and is in the accumulator dtype.
    """
    acc = _dtypes.accumulator_name(be.dtype_name(p))
    total = be.xp.sum(p, axis=axis, keepdims=True)
    q = _clip(be, p / total)
    logq = be.xp.log(be.astype(q, acc))
    return -be.xp.sum(be.astype(y_true, acc) * logq, axis=axis)
