"""The large-vocabulary functions on NumPy arrays: gradients by ``return_grads``."""
import numpy as np

from xent._dtypes import accumulator
from xent._large_vocab._cross_entropy import losses_and_gradient
from xent._large_vocab._linear import NumpyMatmuls, chunked
from xent._large_vocab._tokens import check_targets, reduce, row_weights

__all__ = ["cross_entropy", "linear_cross_entropy", "tokens"]


def tokens(target, ignore_index, num_classes):
    """``(targets [N] int64, valid [N] bool)``, after TF's range check of the kept ones."""
    target = np.asarray(target)
    flat = target.reshape(-1).astype(np.int64, copy=False)
    valid = flat != ignore_index
    check_targets(flat, valid, num_classes, target.shape, ignore_index)
    return flat, valid


def _inplace_target(logits):
    """`logits` as the gradient's buffer, or a ValueError saying why it cannot be."""
    if not (isinstance(logits, np.ndarray) and logits.flags.c_contiguous and logits.flags.writeable):
        raise ValueError("inplace_backward=True writes the gradient over logits, which must be a "
                         "writable C-contiguous NumPy array; received "
                         f"{type(logits).__name__} (contiguous: {getattr(getattr(logits, 'flags', None), 'c_contiguous', None)}, "
                         f"writable: {getattr(getattr(logits, 'flags', None), 'writeable', None)})")
    return logits


def cross_entropy(logits, target, opts, inplace_backward, return_grads):
    """`xent.cross_entropy` on NumPy arrays (checked): the loss, or ``(loss, dloss/dlogits)``."""
    num_classes = logits.shape[-1]
    targets, valid = tokens(target, opts.ignore_index, num_classes)
    x2 = logits.reshape(-1, num_classes)
    grad, weights = None, None
    if return_grads:
        grad = _inplace_target(logits).reshape(x2.shape) if inplace_backward else np.empty_like(x2)
        weights = row_weights(valid, opts.reduction, accumulator(logits.dtype))
    losses = losses_and_gradient(x2, targets, valid, opts, weights, grad)
    loss = reduce(losses, valid, opts.reduction, np.shape(target), logits.dtype)
    if not return_grads:
        return loss
    return loss, logits if inplace_backward else grad.reshape(logits.shape)


def linear_cross_entropy(x, weight, bias, target, opts, chunk, return_grads):
    """`xent.linear_cross_entropy` on NumPy arrays (checked).

    Half precision is computed in float32 (NumPy has no fast half matmul):
    the inputs are widened once, and the results rounded once.
    """
    dtype, work = x.dtype, accumulator(x.dtype)
    x2 = x.reshape(-1, x.shape[-1]).astype(work, copy=False)
    w = weight.astype(work, copy=False)
    b = None if bias is None else bias.astype(work, copy=False)
    targets, valid = tokens(target, opts.ignore_index, weight.shape[0])
    grads, weights = None, None
    if return_grads:
        grads = (np.zeros_like(x2), np.zeros_like(w), None if b is None else np.zeros_like(b))
        weights = row_weights(valid, opts.reduction, work)
    losses = chunked(NumpyMatmuls, x2, w, b, targets, valid, opts, chunk, weights, grads)
    loss = reduce(losses, valid, opts.reduction, np.shape(target), dtype)
    if not return_grads:
        return loss
    dx, dw, db = (None if g is None else g.astype(dtype, copy=False) for g in grads)
    return loss, {"input": dx.reshape(x.shape), "weight": dw, "bias": db}
