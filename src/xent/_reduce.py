"""Weighting and reduction of per-example losses, `tf.compat.v1.losses` rules.

``weighted = losses * weights`` (weights a scalar, or of the losses' rank with
each dimension 1 or equal), then by reduction:

  - NONE: ``weighted``
  - SUM: ``sum(weighted)``
  - MEAN: ``sum(weighted) / sum(weights broadcast to losses)``
  - SUM_OVER_BATCH_SIZE: ``sum(weighted) / losses.size``
  - SUM_BY_NONZERO_WEIGHTS (= SUM_OVER_NONZERO_WEIGHTS):
    ``sum(weighted) / count(weights broadcast to losses != 0)``, a weight
    below float32's smallest normal in magnitude counting as 0 (as on TF's CPU)

A zero denominator gives 0, not NaN (TF's ``div_no_nan``). The arithmetic runs
in float32, or float64 for float64 losses, and is rounded once to the losses'
dtype (TensorFlow computes float64 in float32; xent does not lose that
precision).
"""
import numpy as np

from xent import _dtypes


class Reduction:
    """Types of loss reduction, as `tf.compat.v1.losses.Reduction`."""

    NONE = "none"
    SUM = "weighted_sum"
    SUM_OVER_BATCH_SIZE = "weighted_sum_over_batch_size"
    MEAN = "weighted_mean"
    SUM_BY_NONZERO_WEIGHTS = "weighted_sum_by_nonzero_weights"
    SUM_OVER_NONZERO_WEIGHTS = SUM_BY_NONZERO_WEIGHTS

    @classmethod
    def all(cls):
        """All the reduction keys, in TensorFlow's order."""
        return (cls.NONE, cls.SUM, cls.MEAN, cls.SUM_OVER_BATCH_SIZE,
                cls.SUM_OVER_NONZERO_WEIGHTS, cls.SUM_BY_NONZERO_WEIGHTS)

    @classmethod
    def validate(cls, key):
        """Raise ValueError unless `key` is a reduction key.

        TF's message, listing each key once (TF's lists ``all()``, where
        ``weighted_sum_by_nonzero_weights`` appears twice).
        """
        if key not in cls.all():
            keys = tuple(dict.fromkeys(cls.all()))
            raise ValueError(f"Invalid Reduction Key {key}. Key should be one of {keys}.")


def check_broadcastable(weights, values_shape):
    """TF's `assert_broadcastable` of `weights` to values of `values_shape`:
    scalar weights, or the same rank with each dimension 1 or equal."""
    prefix = "weights can not be broadcast to values."
    values_shape = tuple(values_shape)
    if weights.ndim == 0:
        return
    if weights.ndim != len(values_shape):
        raise ValueError(
            f"{prefix} values.rank={len(values_shape)}. weights.rank={weights.ndim}. "
            f"values.shape={values_shape}. weights.shape={tuple(weights.shape)}.")
    for i, (w, v) in enumerate(zip(weights.shape, values_shape)):
        if w not in (1, v):
            raise ValueError(
                f"{prefix} Mismatch at dim {i}. values.shape={values_shape}, "
                f"weights.shape={tuple(weights.shape)}.")


# TensorFlow counts the non-zero weights on its weights cast to float32, on
# CPU kernels that flush subnormals to zero: a weight of magnitude below
# float32's smallest normal (1e-40, or a float64 1e-50) counts as zero there.
_TINY32 = float(np.finfo(np.float32).tiny)


def div_no_nan(be, total, count):
    """``total / count``, or 0 where ``count == 0`` (TF's ``div_no_nan``)."""
    safe = be.xp.where(count == 0, be.xp.ones_like(count), count)
    return be.xp.where(count == 0, be.xp.zeros_like(total), total / safe)


def _denominator(be, losses, weights, reduction):
    """The divisor of ``sum(losses * weights)`` for a reducing `reduction`."""
    if reduction == Reduction.MEAN:
        return be.xp.sum(be.xp.ones_like(losses) * weights)
    if reduction == Reduction.SUM_BY_NONZERO_WEIGHTS:
        flushed = (weights > -_TINY32) & (weights < _TINY32)
        return be.xp.sum(be.xp.ones_like(losses) * be.astype(~flushed, be.dtype_name(losses)))
    return be.astype(be.xp.ones_like(be.xp.sum(losses)) * be.size(losses), be.dtype_name(losses))


def weighted_loss(be, losses, weights, reduction, out_dtype=None):
    """Weight and reduce per-example `losses` by TF v1 rules (see module doc).

    Args:
      be: the backend of the call (see `_backend`).
      losses: ``[d0, ..., dn]`` float array of per-example losses.
      weights: scalar or ``[d0 or 1, ..., dn or 1]`` array.
      reduction: a `Reduction` key.
      out_dtype: dtype name of the result; defaults to the losses' dtype.

    Returns:
      Scalar, or ``[d0, ..., dn]`` for NONE, in `out_dtype`.
    """
    Reduction.validate(reduction)
    check_broadcastable(weights, losses.shape)
    out_dtype = out_dtype or be.dtype_name(losses)
    acc = _dtypes.accumulator_name(out_dtype)
    if out_dtype.startswith("complex"):   # (TF reduces complex losses' real parts, silently)
        losses = be.xp.real(losses)
    losses, weights = be.astype(losses, acc), be.astype(weights, acc)
    weighted = losses * weights
    if reduction == Reduction.NONE:
        return be.astype(weighted, out_dtype)
    total = be.xp.sum(weighted)
    if reduction != Reduction.SUM:
        total = div_no_nan(be, total, _denominator(be, losses, weights, reduction))
    return be.astype(total, out_dtype)
