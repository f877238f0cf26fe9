"""Keras' weighting, masking and reduction of per-example losses.

Keras 3 (and tf-keras) reduce ``values * sample_weight`` as follows:

  - ``"none"``/None: the weighted values;
  - ``"sum"``: their sum;
  - ``"sum_over_batch_size"``/``"mean"`` (tf-keras ``AUTO``/``"auto"``): the
    sum divided by the number of values;
  - ``"mean_with_sample_weight"``: the sum divided by ``sum(sample_weight)``.

A mask (``ignore_class``) zeroes the masked values and, for the means, scales
the rest by ``count / valid`` so that the mean runs over the valid entries
only; with nothing valid the result is 0. Every division is ``div_no_nan``.
"""
import collections.abc

from xent import _dtypes
from xent._reduce import div_no_nan
from xent.errors import InvalidArgumentError

KERAS3_REDUCTIONS = ("sum_over_batch_size", "sum", None, "none", "mean", "mean_with_sample_weight")


class Reduction:
    """tf-keras' `tf.keras.losses.Reduction` keys."""

    AUTO = "auto"
    NONE = "none"
    SUM = "sum"
    SUM_OVER_BATCH_SIZE = "sum_over_batch_size"

    @classmethod
    def all(cls):
        """All tf-keras reduction keys."""
        return (cls.AUTO, cls.NONE, cls.SUM, cls.SUM_OVER_BATCH_SIZE)

    @classmethod
    def validate(cls, key):
        """Raise ValueError unless `key` is a tf-keras reduction key."""
        if key not in cls.all():
            raise ValueError(f'Invalid Reduction Key: {key}. Expected keys are "{cls.all()}"')


def standardize_reduction(reduction):
    """Keras 3's reduction names; tf-keras' ``"auto"`` means ``"sum_over_batch_size"``.
    Anything but a name or None is refused (an array: Keras' TypeError, as its
    set of names cannot hold it; a NumPy string is kept as a Python one)."""
    if isinstance(reduction, str):
        reduction = str(reduction)
    elif not isinstance(reduction, collections.abc.Hashable):
        raise TypeError(f"`reduction` must be a string or None; received "
                        f"reduction={reduction!r} of type {type(reduction).__name__}")
    if reduction == Reduction.AUTO:
        return "sum_over_batch_size"
    if reduction not in KERAS3_REDUCTIONS:
        allowed = set(KERAS3_REDUCTIONS) | {Reduction.AUTO}
        raise ValueError(
            "Invalid value for argument `reduction`. "
            f"Expected one of {allowed}. Received: reduction={reduction}")
    return reduction


def squeeze_or_expand_to_same_rank(be, x1, x2, expand_rank_1=True):
    """Make ranks equal when they differ by one trailing axis of size 1."""
    if x1.ndim == x2.ndim + 1 and x1.shape[-1] == 1:
        if x2.ndim == 1 and expand_rank_1:
            return x1, be.xp.expand_dims(x2, -1)
        return be.xp.squeeze(x1, -1), x2
    if x2.ndim == x1.ndim + 1 and x2.shape[-1] == 1:
        if x1.ndim == 1 and expand_rank_1:
            return be.xp.expand_dims(x1, -1), x2
        return x1, be.xp.squeeze(x2, -1)
    return x1, x2


def _sum(be, x):
    """The sum of all of `x`, in its dtype; a half-precision `x` is summed in float32
    and rounded once, as TensorFlow's reductions do (NumPy adds bfloat16 one
    element at a time in bfloat16: a thousand ones summed to 256)."""
    name = be.dtype_name(x)
    if name in _dtypes.HALF_NAMES:
        return be.astype(be.xp.sum(be.astype(x, "float32")), name)
    return be.xp.sum(x)


def _mask_weights(be, mask, dtype, reduction):
    """The mask as weights: 0 where masked, else 1 (or ``count / valid`` for means)."""
    float_mask = be.astype(mask, dtype)
    if reduction not in ("mean", "sum_over_batch_size"):
        return float_mask
    count = _sum(be, float_mask)
    total = be.astype(be.xp.ones_like(count) * be.size(mask), dtype)
    return float_mask * div_no_nan(be, total, count)


def _broadcast_check(values, weights):
    """Raise InvalidArgumentError (TF's "Incompatible shapes") if they don't broadcast."""
    for v, w in zip(reversed(tuple(values.shape)), reversed(tuple(weights.shape))):
        if v != w and 1 not in (v, w):
            raise InvalidArgumentError(
                f"Incompatible shapes: {list(values.shape)} vs. {list(weights.shape)}: "
                "`sample_weight` must broadcast to the per-example losses")


def reduce_values(be, values, sample_weight, reduction):
    """Sum (and divide) already weighted `values` per `reduction`."""
    if reduction in (None, "none") or values.ndim == 0 or tuple(values.shape) == (0,):
        return values
    loss = _sum(be, values)
    if reduction == "sum":
        return loss
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        divisor = _sum(be, sample_weight)
    else:
        divisor = be.xp.ones_like(loss) * be.size(values)
    return div_no_nan(be, loss, be.astype(divisor, be.dtype_name(loss)))


def reduce_weighted_values(be, values, sample_weight=None, mask=None,
                           reduction="sum_over_batch_size", dtype="float32"):
    """Keras' `reduce_weighted_values`: mask, weight and reduce `values`.

    Args:
      be: the call's backend.
      values: per-example losses ``[d0, ..., dn]`` (cast to `dtype`).
      sample_weight: None, a real scalar, or real and broadcastable to `values`
        (a trailing axis of size 1 is squeezed or added first); complex
        weights are refused (Keras drops their imaginary part).
      mask: None or a boolean ``[d0, ..., dn]``; False entries drop out.
      reduction: a Keras 3 reduction name (see `standardize_reduction`).
      dtype: dtype name of the arithmetic and the result.
    """
    reduction = standardize_reduction(reduction)
    values = be.astype(values, dtype)
    if sample_weight is not None:
        if _dtypes.is_python_numbers(sample_weight) and not be.compiling():
            # (Keras converts them straight to the loss's dtype, not through float32)
            sample_weight = _dtypes.to_array(sample_weight, "sample_weight", dtype)
        sample_weight = be.asarray(sample_weight, "sample_weight")
        _dtypes.check_real(be.dtype_name(sample_weight), "sample_weight")
        sample_weight = be.astype(sample_weight, dtype)
    if mask is not None:
        float_mask = _mask_weights(be, mask, dtype, reduction)
        if sample_weight is None:
            sample_weight = float_mask
        else:
            float_mask, sample_weight = squeeze_or_expand_to_same_rank(be, float_mask, sample_weight)
            _broadcast_check(float_mask, sample_weight)   # (the mask has the values' shape)
            sample_weight = sample_weight * float_mask
    if sample_weight is not None:
        values, sample_weight = squeeze_or_expand_to_same_rank(be, values, sample_weight)
        _broadcast_check(values, sample_weight)
        values = values * sample_weight
    return reduce_values(be, values, sample_weight, reduction)
