"""Cross-entropy from probabilities: Keras' ``from_logits=False`` paths.

Keras (TensorFlow backend) treats predicted probabilities ``p`` this way:

  - sparse: ``logits = log(clip(p, eps, 1 - eps))``, then the softmax
    cross-entropy of those logits, which renormalises the clipped values:
    ``loss = log(sum_j clip(p)_j) - log(clip(p)_label)``;
  - categorical: ``q = clip(p / sum_j p_j, eps, 1 - eps)``, then
    ``loss = -sum_j y_j log(q_j)`` (no renormalisation after the clip).

``eps = 1e-7``. The clip's bounds are rounded to `p`'s own dtype, as in
Keras; the normalisation, the clip, the logarithm and the sums run in float32
(float64 for float64), where Keras stays in `p`'s dtype (a bfloat16 ``p / sum``
is rounded to 8 bits before its log).
"""
from xent import _dtypes

EPSILON = 1e-7


def _clip(be, p, bounds_dtype=None):
    """``clip(p, eps, 1 - eps)`` in `p`'s dtype, with the bounds rounded to
    `bounds_dtype` (default: `p`'s own).

    Built from two selects, as TF's ``clip_by_value`` is differentiated: an
    entry on a bound gets its whole gradient (``jnp.clip``, made of max and
    min, gave it half: saturated half-precision probabilities sit on 1 - eps)."""
    def bound(value):
        return be.astype(be.astype(value, bounds_dtype or be.dtype_name(p)), be.dtype_name(p))
    low, high = bound(EPSILON), bound(1.0 - EPSILON)
    return be.xp.where(p < low, low, be.xp.where(p > high, high, p))


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
    wide = be.astype(p, acc)
    q = _clip(be, wide / be.xp.sum(wide, axis=axis, keepdims=True), be.dtype_name(p))
    return -be.xp.sum(be.astype(y_true, acc) * be.xp.log(q), axis=axis)
