"""Validation of shapes and label values, with TensorFlow's messages.

Every check runs before any arithmetic, so a bad call fails without work done
and without touching its inputs.
"""
import math
import operator

import numpy as np

from xent import _kernels
from xent.errors import InvalidArgumentError

def _dims(shape):
    """Format a shape as TF's kernels do: ``[2,3]``."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def require(name, value):
    """Raise TF's ValueError for a missing (None) argument."""
    if value is None:
        raise ValueError(f"Argument `{name}` must not be None.")


# TensorFlow lists every label value; past this many, xent lists the bad ones instead.
LISTED_LABELS = 32
SHOWN_BAD_LABELS = 5


def labels_in_range(labels, num_classes, checked=None, note=""):
    """Raise `InvalidArgumentError` if any label is outside ``[0, num_classes)``.

    The message starts as TensorFlow's (CPU kernel) does: the worst offender
    (the minimum if negative, else the maximum) and the valid range. Then,
    for up to `LISTED_LABELS` labels, TF's list of every label value; for
    more, how many are outside the range and the first few with their
    positions (TF's list of 100,000 labels is 200,000 characters long).
    `checked` (bool, the labels' shape; None: all) leaves out the labels
    not to check (an ``ignore_index``); positions and counts stay those of
    `labels` as given. `note` ends the message (what the labels are called
    where that is not "labels").
    """
    kept = labels if checked is None else labels[checked]
    if _kernels.labels_fit(kept, num_classes):
        return
    low, high = kept.min(), kept.max()
    bad = low if low < 0 else high
    raise InvalidArgumentError(
        f"Received a label value of {bad} which is outside the valid range of "
        f"[0, {num_classes}).  {_label_values(labels, num_classes, checked)}{note}")


def _label_values(labels, num_classes, checked=None):
    """TF's ``Label values: ...`` for a short batch, else a count and the first bad
    labels (among the `checked` ones)."""
    flat = labels.reshape(-1)
    if flat.size <= LISTED_LABELS:
        return "Label values: " + " ".join(str(v) for v in flat.tolist())
    outside = (flat < 0) | (flat >= num_classes)
    if checked is not None:
        outside &= checked.reshape(-1)
    bad = np.flatnonzero(outside)
    shown = ", ".join(f"{flat[i]} at {_position(i, labels.shape)}" for i in bad[:SHOWN_BAD_LABELS])
    more = ", ..." if bad.size > SHOWN_BAD_LABELS else ""
    return f"{bad.size} of {flat.size} label values are outside it: {shown}{more}"


def _position(flat_index, shape):
    """Where a flat index lies in an array of `shape`: ``[1500]``, ``[3, 7]``."""
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat_index, shape)) + "]"


def nn_sparse_shapes(labels, logits):
    """Shape rules of `tf.nn.sparse_softmax_cross_entropy_with_logits`.

    labels ``[d0..d(r-1)]``, logits ``[d0..d(r-1), C]`` with ``r >= 0``. The
    messages are TF's (without the stray backtick TF ends its scalar one with).
    """
    if logits.ndim == 0:
        raise ValueError(f"`logits` cannot be a scalar. Received logits={logits}")
    if labels.shape == logits.shape[:-1]:   # (the usual case: two shape reads, no tuples)
        return
    if labels.ndim != logits.ndim - 1:
        raise ValueError(
            "`labels.shape.rank` must equal `logits.shape.rank - 1`. "
            f"Received: labels.shape={tuple(labels.shape)} of rank {labels.ndim} and "
            f"logits.shape={tuple(logits.shape)} of rank {logits.ndim}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            "`labels.shape` must equal `logits.shape` except for the last "
            f"dimension. Received: labels.shape={tuple(labels.shape)} and "
            f"logits.shape={tuple(logits.shape)}")


def at_least_one_class(logits):
    """The sparse op needs ``C >= 1``, even for an empty batch (as TF)."""
    if logits.shape[-1] == 0:
        raise InvalidArgumentError(
            f"Must have at least one class, but got logits shape {_dims(logits.shape)}")


def raw_sparse_shapes(features, labels):
    """Shape rules of `tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits`."""
    if features.ndim != 2:
        raise InvalidArgumentError(
            f"logits must be 2-D, but got shape {_dims(features.shape)}")
    if labels.ndim != 1:
        raise InvalidArgumentError(
            f"labels must be 1-D, but got shape {_dims(labels.shape)}")
    if features.shape[0] != labels.shape[0]:
        raise InvalidArgumentError(
            "logits and labels must have the same first dimension, got logits "
            f"shape {_dims(features.shape)} and labels shape {_dims(labels.shape)}")
    at_least_one_class(features)


def raw_dense_ranks(features_shape, labels_shape):
    """The 2-D shapes `tf.raw_ops.SoftmaxCrossEntropyWithLogits` reads its inputs as.

    TF broadcasts features and labels of different shapes first and asks only
    that the broadcast be 2-D: ``[C]`` labels (or a scalar) against ``[N, C]``
    features, ``[C]`` features against ``[N, C]`` labels. Such shapes get
    leading 1s up to rank 2; shapes that do not broadcast raise TF's
    InvalidArgumentError, and others are left for `dense_2d_shapes` to refuse.
    """
    features_shape, labels_shape = tuple(features_shape), tuple(labels_shape)
    if features_shape == labels_shape:
        return features_shape, labels_shape
    try:
        rank = len(np.broadcast_shapes(features_shape, labels_shape))
    except ValueError:
        raise _not_broadcastable(features_shape, labels_shape) from None
    if rank != 2:
        return features_shape, labels_shape
    return (1,) * (2 - len(features_shape)) + features_shape, (1,) * (2 - len(labels_shape)) + labels_shape


def _not_broadcastable(features_shape, labels_shape):
    """TF's error for dense features and labels that do not broadcast."""
    return InvalidArgumentError("logits and labels must be broadcastable: logits_size="
                                f"{_dims(features_shape)} labels_size={_dims(labels_shape)}")


def dense_2d_shapes(features, labels):
    """Shape rules of `tf.raw_ops.SoftmaxCrossEntropyWithLogits`; returns the rows' shape.

    Both 2-D (the nn op flattens first); each dimension equal, or 1 on either
    side, as TF broadcasts both ways (``[1, C]`` features against ``[N, C]``
    labels give ``N`` rows).
    """
    if features.ndim != 2 or labels.ndim != 2:
        raise InvalidArgumentError(
            "logits and labels must be either 2-dimensional, or broadcasted to "
            "be 2-dimensional")
    fits = all(1 in (lab, feat) or lab == feat for lab, feat in zip(labels.shape, features.shape))
    if not fits:
        raise _not_broadcastable(features.shape, labels.shape)
    return tuple(max(f, l) if 0 not in (f, l) else 0 for f, l in zip(features.shape, labels.shape))


def dense_layout(logits_shape, labels_shape):
    """How the dense op lays its inputs out as rows: one rule for every backend.

    Both arrays are flattened to ``[rows, last]`` and checked by
    `dense_2d_shapes`; they then broadcast to a common ``[rows, C]``.

    Returns:
      ``(logits_2d, labels_2d, rows, loss_shape)``: the flattened shapes, the
      broadcast shape, and the shape of the per-row loss (the logits' shape
      without its last axis, or ``[rows]`` when one logits row was broadcast).
    """
    logits_2d = (math.prod(logits_shape[:-1]), logits_shape[-1])
    labels_2d = (math.prod(labels_shape[:-1]), labels_shape[-1])
    rows = dense_2d_shapes(_Shaped(logits_2d), _Shaped(labels_2d))
    loss_shape = tuple(logits_shape[:-1]) if rows == logits_2d else rows[:1]
    return logits_2d, labels_2d, rows, loss_shape


def nn_dense_rows(logits_shape, labels_shape):
    """The nn op's rule on top of the raw op's (`dense_layout`): the loss takes the
    logits' shape without its last axis, so labels may broadcast to the logits'
    rows but not the logits to more rows than they have. TF's op reshapes the
    raw op's loss to that shape and fails there, with its reshape's message.
    Shapes here have their class axis last."""
    if tuple(labels_shape) == tuple(logits_shape):   # (the usual case)
        return
    if not labels_shape:
        raise InvalidArgumentError(
            f"`labels` must have rank >= 1 (a class axis); received labels.shape=() with "
            f"logits.shape={tuple(logits_shape)}")
    _, _, rows, loss_shape = dense_layout(logits_shape, labels_shape)
    if loss_shape != tuple(logits_shape[:-1]):
        raise InvalidArgumentError(
            f"Input to reshape is a tensor with {rows[0]} values, but the requested shape "
            f"has {math.prod(logits_shape[:-1])}: the loss has a value per row of `logits`, "
            f"and their one row does not broadcast to the rows of `labels` "
            f"(labels.shape={tuple(labels_shape)}, logits.shape={tuple(logits_shape)})")


class _Shaped:
    """Just a shape, for the shape checks (which read only ``.shape``/``.ndim``)."""

    def __init__(self, shape):
        self.shape, self.ndim = tuple(shape), len(shape)


def class_axis(axis, ndim, of="logits"):
    """Normalise `axis` (negative counts from the end) for an array of rank `ndim`
    (the array `of` names); None is the last, as in TF, and any integer type (a
    0-d integer array too) is taken. One out of range raises
    `InvalidArgumentError` (a ValueError), as TF's ops do."""
    if axis is None:
        return ndim - 1
    if isinstance(axis, bool) or not hasattr(axis, "__index__") or getattr(axis, "ndim", 0):
        raise TypeError(f"`axis` must be an int; received axis={axis!r}")
    axis = operator.index(axis)
    if not -ndim <= axis < ndim:
        raise InvalidArgumentError(
            f"`axis` must be in [{-ndim}, {ndim}) for {of} of rank {ndim}; "
            f"received axis={axis}")
    return int(axis) % ndim


def traced_number(value):
    """Whether `value` is a number without a value: a numeric array of one element
    that `float` cannot read (a JAX tracer under `jit` or another transformation)."""
    dtype = getattr(value, "dtype", None)
    numeric = getattr(dtype, "kind", "") in ("b", "i", "u", "f") or \
        getattr(dtype, "name", "") == "bfloat16"   # (ml_dtypes' kind is "V")
    if math.prod(tuple(getattr(value, "shape", (0,)))) != 1 or not numeric:
        return False
    try:
        float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return True
    return False


def one_number(name, value):
    """The value of an option such as `label_smoothing` as a Python float, or an
    error: TypeError for a string, None, a complex, a non-number (TF's own
    error there is Python's, naming no argument) or a traced number;
    ValueError for an array of more than one element (TF's "truth value ...
    is ambiguous"). Any value TF takes (a bool, a 0-d or one-element array or
    tensor) passes. (A float can be compared with 0 outside a trace: a JAX
    array's comparison under `jit` is traced, even for a concrete array.)"""
    if isinstance(value, (bool, int, float)):   # (torch.compile's symbolic numbers
        return float(value)                     # too, which have no getattr)
    shape = tuple(getattr(value, "shape", ()))
    if math.prod(shape) != 1:
        raise ValueError(f"`{name}` must be a single number; received an array of shape {shape}")
    dtype = getattr(value, "dtype", None)
    if (isinstance(value, (str, bytes, complex)) or getattr(dtype, "kind", "") == "c"
            or getattr(dtype, "is_complex", False)):
        raise TypeError(f"`{name}` must be a real number; received {name}={value!r}")
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        if traced_number(value):
            raise TypeError(f"`{name}` must be a concrete number, as TF needs it to "
                            f"choose whether to smooth; received the traced {value!r} "
                            f"(under jax.jit or another transformation, make it a static "
                            f"argument)") from None
        raise TypeError(f"`{name}` must be a real number; received {name}={value!r}") from None


def out_buffer(out, shape, dtype, name="backprop_out"):
    """Check that a caller-given output array has the right shape and dtype."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy.ndarray; received {type(out).__name__}")
    if not out.dtype.isnative and out.dtype.newbyteorder("=") == dtype:
        raise ValueError(f"`{name}` must hold {np.dtype(dtype).name} in the machine's byte "
                         f"order, as xent writes it; received dtype {out.dtype.str}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(
            f"`{name}` must have shape {tuple(shape)} and dtype {np.dtype(dtype).name}; "
            f"received shape {out.shape} and dtype {out.dtype.name}")
    if not out.flags.writeable:
        raise ValueError(f"`{name}` must be writeable")


def same_rank(labels, logits):
    """For a class axis other than the last, labels and logits need equal ranks."""
    if labels.ndim != logits.ndim:
        raise ValueError(
            "`labels` and `logits` must have the same rank when `axis` is not the "
            f"last axis; received labels.shape={tuple(labels.shape)} and "
            f"logits.shape={tuple(logits.shape)}")


def compatible_shapes(logits, labels):
    """TF's ``assert_is_compatible_with``: identical static shapes."""
    if tuple(logits.shape) != tuple(labels.shape):
        raise ValueError(
            f"Shapes {tuple(logits.shape)} and {tuple(labels.shape)} are incompatible")
