"""Which tokens count, their targets' range, and the reduction of their losses.

NumPy arrays only; the framework faces hand over NumPy views (CPU) or do the
same steps in their own ops (`xent._large_vocab._array_math`).
"""
import numpy as np

from xent._backend import NumpyBackend
from xent._dtypes import accumulator
from xent._validate import labels_in_range

__all__ = ["check_targets", "row_weights", "reduce"]


def check_targets(targets, valid, num_classes, shape, ignore_index):
    """Raise `InvalidArgumentError` for a target outside ``[0, V)`` that is not ignored.

    targets: ``[N]`` int array; valid: ``[N]`` bool (not `ignore_index`); shape:
    the caller's target's shape, which the message's positions refer to.
    The message is TensorFlow's, as for the other sparse losses, then says
    that the labels are `target`'s and the ignored ones are not checked.
    """
    labels_in_range(targets.reshape(shape), num_classes,
                    None if valid.all() else valid.reshape(shape),
                    note=f" (the values of `target`; those equal to ignore_index={ignore_index} "
                         f"are skipped)")


def row_weights(valid, reduction, dtype):
    """d result / d loss_i for each token: ``1/count`` (mean), 1 (sum, none); 0 where ignored.

    With every token ignored the mean is 0, so every weight is 0.
    """
    count = int(np.count_nonzero(valid))
    scale = 1.0 / count if reduction == "mean" and count else 1.0
    return np.where(valid, scale, 0.0).astype(dtype)


def reduce(losses, valid, reduction, shape, dtype):
    """The result: the mean over valid tokens (0 if none), the sum, or ``[...]`` per token.

    losses: ``[N]`` in the accumulator dtype (0 where ignored); the result has `dtype`
    (a loss past a half dtype's range is inf there, silently, as torch casts it).
    """
    name = np.dtype(dtype).name
    if reduction == "none":
        return NumpyBackend.astype(losses.reshape(shape), name)
    total = losses.sum(dtype=accumulator(losses.dtype))
    if reduction == "mean":
        count = int(np.count_nonzero(valid))
        total = total / count if count else np.zeros((), total.dtype)
    return NumpyBackend.astype(total, name)[()]
