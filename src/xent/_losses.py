"""Per-example losses, validated: the step every TF face (`nn`, `losses`,
`keras.losses`) takes from its arrays to the backend's kernel, in the
accumulator dtype (the faces round, weight and reduce)."""
from xent import _dtypes, _smoothing, _validate
from xent.errors import InvalidArgumentError

__all__ = ["dense_losses", "sparse_losses"]


def sparse_losses(be, labels, logits, before_kernel=None):
    """Validated per-example sparse losses in the accumulator dtype (no rounding).

    The shared step behind every sparse face: dtype and shape checks, then
    `before_kernel` (a face's own checks, given the losses' shape), then the
    backend's kernel. labels ``[d...]``, logits ``[d..., C]`` → ``[d...]``.
    """
    _dtypes.check_float(be.dtype_name(logits), "logits")
    _dtypes.check_labels_int(be.dtype_name(labels), "labels")
    _validate.nn_sparse_shapes(labels, logits)
    _validate.at_least_one_class(logits)
    if before_kernel is not None:
        before_kernel(tuple(labels.shape))
    return be.sparse_xent(labels, logits)


def dense_losses(be, labels, logits, axis=-1, before_kernel=None):
    """Validated per-example dense losses in the accumulator dtype (no rounding).

    labels reach the kernel in the logits' dtype or the accumulator dtype
    (`_smoothing.kernel_targets`); the class `axis` is moved last;
    the result has the logits' shape without `axis`. `before_kernel`, if
    given, gets that shape after the checks and before the kernel runs.
    """
    logits_dtype = be.dtype_name(logits)
    _dtypes.check_float(logits_dtype, "logits")
    if logits.ndim == 0:
        raise InvalidArgumentError(   # (TF: its Slice op's InvalidArgumentError)
            f"`logits` must have rank >= 1; received logits.shape={tuple(logits.shape)}")
    labels = _smoothing.kernel_targets(be, labels, logits_dtype)
    axis = _validate.class_axis(axis, logits.ndim)
    if axis != logits.ndim - 1:
        _validate.same_rank(labels, logits)
        labels, logits = be.xp.moveaxis(labels, axis, -1), be.xp.moveaxis(logits, axis, -1)
    _validate.nn_dense_rows(logits.shape, labels.shape)
    if before_kernel is not None:
        before_kernel(tuple(logits.shape[:-1]))
    return be.dense_xent(labels, logits)
