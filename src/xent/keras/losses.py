"""`tf.keras.losses`' categorical cross-entropies: functions and loss classes.

The functions return per-example losses in `y_pred`'s dtype. The classes are
thin configuration over them (`xent.keras._loss.Loss`: dtype policy, mask,
weights, reduction). Per-example losses come from the validated path the TF
faces share (`xent._losses`, logits) or `xent._probs` (probabilities).
"""
import math

import numpy as np

from xent import _dtypes, _probs, _smoothing, _validate
from xent._errstate import quiet
from xent._keras_reduce import Reduction
from xent._losses import dense_losses, sparse_losses
from xent._warnings import warn
from xent.errors import InvalidArgumentError
from xent.keras import _keras3
from xent.keras._loss import Loss, inputs, kept_logits

__all__ = [
    "CategoricalCrossentropy", "Reduction", "SparseCategoricalCrossentropy",
    "categorical_crossentropy", "sparse_categorical_crossentropy",
]


def _sparse_shapes(y_true, y_pred):
    """Keras' rank and shape checks for integer targets."""
    if y_pred.ndim < 1:
        raise ValueError(f"Argument `output` must be at least rank 1. Received: output.shape={tuple(y_pred.shape)}")
    shapes = f"target.shape={tuple(y_true.shape)}, output.shape={tuple(y_pred.shape)}"
    if y_true.ndim != y_pred.ndim - 1:
        raise ValueError(f"Argument `output` must have rank (ndim) `target.ndim - 1`. Received: {shapes}")
    if tuple(y_true.shape) != tuple(y_pred.shape[:-1]):
        raise ValueError("Arguments `target` and `output` must have the same shape up until the last "
                         f"dimension: {shapes}")


def _sparse_values(be, y_true, y_pred, from_logits, ignore_class, axis, logits=None):
    """Per-example sparse losses (accumulator dtype) and the ignore_class mask or
    None. `logits`: those Keras keeps on a softmax's output (`kept_logits`),
    read in place of `y_pred` unless `ignore_class` is given (Keras' mask makes
    a new tensor without them)."""
    if ignore_class is None:
        y_pred, from_logits = _read_kept_logits(be, logits, y_pred, from_logits,
                                                "sparse_categorical_crossentropy")
    if y_true.ndim == y_pred.ndim >= 1 and y_true.shape[axis] == 1:
        y_true = be.xp.squeeze(y_true, axis)
    if axis not in (-1, y_pred.ndim - 1):
        raise ValueError(f"Only axis=-1 is currently supported. Received: axis={axis}")
    valid, rows_shape = None, tuple(y_pred.shape)[:-1]
    if ignore_class is not None:
        if isinstance(ignore_class, (complex, np.complexfloating)) or (
                isinstance(ignore_class, np.ndarray) and ignore_class.dtype.kind == "c"):
            ignore_class = np.real(ignore_class)   # (Keras' cast to a float keeps the real part)
        _ignore_class_broadcasts(y_true, ignore_class)
        valid = y_true != ignore_class
        _mask_fits(be, valid, y_pred)
        y_true = be.xp.where(valid, y_true, be.xp.zeros_like(y_true))
        y_pred = be.xp.where(be.xp.expand_dims(valid, axis), y_pred, 0)   # (Keras' one new array)
    if "float" in be.dtype_name(y_true):
        # A NaN label becomes int64's minimum on x86 (TF's range error names it), but
        # 0 in XLA and on aarch64: class 0, silently. -inf is the minimum everywhere.
        y_true = be.xp.where(be.xp.isnan(y_true), -np.inf, y_true)
    labels = be.astype(y_true, "int64")
    _sparse_shapes(labels, y_pred)
    logits = y_pred if from_logits else _probs.clipped_log(be, y_pred)
    losses = sparse_losses(be, labels, logits)
    if valid is not None:
        # Keras reshapes the mask to y_pred's rows (``[1, N]`` labels against
        # ``[N, C]`` predictions: an ``[N]`` mask), and weights with that shape.
        valid = be.xp.reshape(valid, rows_shape)
        losses = be.xp.where(valid, losses, be.xp.zeros_like(losses))
    return losses, valid


def _ignore_class_broadcasts(y_true, ignore_class):
    """An array `ignore_class` must broadcast against the labels, as Keras'
    `not_equal` requires (TF's error, naming both shapes, in place of NumPy's)."""
    labels, ignored = tuple(y_true.shape), tuple(np.shape(ignore_class))
    try:
        np.broadcast_shapes(labels, ignored)
    except ValueError:
        raise InvalidArgumentError(f"Incompatible shapes: {list(labels)} vs. {list(ignored)}: "
                                   f"y_true against ignore_class={ignore_class!r}") from None


def _read_kept_logits(be, logits, y_pred, from_logits, fn_name):
    """`logits` (Keras' kept logits, see `kept_logits`) in place of `y_pred`, with
    ``from_logits=True``, where they are given and still have `y_pred`'s shape
    (a rank change in Keras makes a new tensor without them); Keras' warning
    when ``from_logits=True`` was given for such an output."""
    if logits is None or tuple(logits.shape) != tuple(y_pred.shape):
        return y_pred, from_logits
    if from_logits:
        warn(f'"`{fn_name}` received `from_logits=True`, but the `output` argument was '
             "produced by a Softmax activation and thus does not represent logits. Was this "
             "intended?", UserWarning)
    return be.astype(be.asarray(logits, "y_pred._keras_logits"), be.dtype_name(y_pred)), True


def _mask_fits(be, valid, y_pred):
    """Keras' check of the `ignore_class` mask: its `where` broadcasts y_pred to the
    labels (``[1, N]`` labels against ``[N, C]`` predictions are taken), and
    the mask is then reshaped to y_pred's rows, which refuses a mask of
    another size (TF's reshape error). Without it, 5 labels against one row
    of predictions gave 5 losses."""
    rows = math.prod(tuple(y_pred.shape)[:-1])
    if be.size(valid) != rows:
        raise InvalidArgumentError(f"Input to reshape is a tensor with {be.size(valid)} values, but "
                                   f"the requested shape has {rows}: the `ignore_class` mask of "
                                   f"y_true {tuple(valid.shape)} against y_pred "
                                   f"{tuple(y_pred.shape)}")


def _categorical_shapes(y_true, y_pred):
    """Keras' checks: rank at least 1, same rank, same shape (with Keras' messages)."""
    shapes = f"Received: target.shape={tuple(y_true.shape)}, output.shape={tuple(y_pred.shape)}"
    if y_true.ndim < 1:
        raise ValueError(f"Arguments `target` and `output` must be at least rank 1. {shapes}")
    if y_true.ndim != y_pred.ndim:
        raise ValueError(f"Arguments `target` and `output` must have the same rank (ndim). {shapes}")
    if tuple(y_true.shape) != tuple(y_pred.shape):
        raise ValueError(f"Arguments `target` and `output` must have the same shape. {shapes}")


def _warn_one_class(y_pred):
    """Keras' warning for ``[batch, 1]`` predictions: binary labels, usually by mistake."""
    warn(
        "In loss categorical_crossentropy, expected y_pred.shape to be (batch_size, num_classes) "
        f"with num_classes > 1. Received: y_pred.shape={tuple(y_pred.shape)}. Consider using "
        "'binary_crossentropy' if you only have 2 classes.",
        SyntaxWarning)


def _categorical_values(be, y_true, y_pred, from_logits, label_smoothing, axis, logits=None):
    """Per-example categorical losses in the accumulator dtype; `logits`, Keras'
    kept logits (`kept_logits`), are read in place of `y_pred`.

    Warns, as Keras does, when the last axis of `y_pred` has one class.
    """
    if isinstance(axis, bool):
        raise ValueError(f"`axis` must be of type `int`. Received: axis={axis} of type {type(axis)}")
    # (Keras takes None as no smoothing; the value as a Python float, exact)
    label_smoothing = 0.0 if label_smoothing is None else _validate.one_number(
        "label_smoothing", label_smoothing)
    # Keras smooths in y_pred's dtype; the accumulator dtype keeps ls / C
    # exact to float32 for half-precision predictions.
    if y_pred.ndim and y_pred.shape[-1] == 1:
        _warn_one_class(y_pred)
    _categorical_shapes(y_true, y_pred)
    y_pred, from_logits = _read_kept_logits(be, logits, y_pred, from_logits,
                                            "categorical_crossentropy")
    dtype = be.dtype_name(y_pred)
    if label_smoothing:
        y_true = _smoothing.smooth(be, y_true, label_smoothing, dtype)
    elif not from_logits:   # (the probabilities' arithmetic; logits go to `dense_losses`)
        y_true = be.astype(y_true, _dtypes.accumulator_name(dtype))
    if axis is None and not from_logits:
        # Keras normalises and sums over every axis: one row of all the values
        rows = (be.xp.reshape(y_true, (1, -1)), be.xp.reshape(y_pred, (1, -1)))
        return be.xp.reshape(_probs.categorical_from_probs(be, *rows, 1), ())
    if from_logits:
        return dense_losses(be, y_true, y_pred, axis)
    axis = _validate.class_axis(axis, y_pred.ndim, "probabilities")
    return _probs.categorical_from_probs(be, y_true, y_pred, axis)


@quiet
def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1):
    """Per-example cross-entropy of integer targets against predictions.

    With ``from_logits=True``: ``logsumexp(y_pred) - y_pred[y_true]``. Otherwise
    `y_pred` holds probabilities, clipped to ``[1e-7, 1 - 1e-7]`` and
    renormalised (see `xent._probs`).

    Args:
      y_true: ``[d0, ..., dn]`` or ``[d0, ..., dn, 1]`` class ids (int or float).
      y_pred: ``[d0, ..., dn, C]`` float logits or probabilities.
      from_logits: whether `y_pred` holds logits.
      ignore_class: a class id whose entries get loss 0.
      axis: the class axis; only the last is supported (as Keras).

    Returns:
      ``[d0, ..., dn]`` in `y_pred`'s dtype.

    Mirrors `tf.keras.losses.sparse_categorical_crossentropy`.

    Examples:
      >>> import xent
      >>> xent.keras.losses.sparse_categorical_crossentropy([1, 2], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]])
      array([0.05129339, 2.3025851 ], dtype=float32)
    """
    _check_ignore_class(ignore_class)
    logits = kept_logits(y_pred)
    be, y_true, y_pred = inputs(y_true, y_pred)
    losses, valid = _sparse_values(be, y_true, y_pred, from_logits, ignore_class, axis, logits)
    losses = be.finish(be.astype(losses, be.dtype_name(y_pred)))
    if valid is not None:   # (Keras' `Loss` then means over the valid entries only: an
        _keras3.set_mask(losses, valid)   # xent function given to ``model.compile``)
    return losses


@quiet
def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Per-example cross-entropy of target distributions against predictions.

    With ``from_logits=True``: ``sum_j y_j (logsumexp(y_pred) - y_pred_j)``.
    Otherwise ``-sum_j y_j log(clip(p_j / sum p))`` (see `xent._probs`).
    ``label_smoothing`` ``ls`` first maps ``y -> y (1 - ls) + ls / C``.

    Args:
      y_true: ``[d0, ..., C, ...]`` targets (read in float32, float64 for float64
        `y_pred`; Keras casts them to `y_pred`'s dtype).
      y_pred: the same shape, float logits or probabilities.
      from_logits, label_smoothing, axis: as above; `axis` is the class axis.

    Returns:
      `y_pred`'s shape without `axis`, in `y_pred`'s dtype.

    Mirrors `tf.keras.losses.categorical_crossentropy`.

    Examples:
      >>> import xent
      >>> xent.keras.losses.categorical_crossentropy([[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]])
      array([0.05129331, 2.3025851 ], dtype=float32)
    """
    logits = kept_logits(y_pred)
    be, y_true, y_pred = inputs(y_true, y_pred)
    losses = _categorical_values(be, y_true, y_pred, from_logits, label_smoothing, axis, logits)
    return be.finish(be.astype(losses, be.dtype_name(y_pred)))


def _check_ignore_class(ignore_class):
    """Keras compares labels with `ignore_class` cast to a float: anything
    numeric is taken (``True`` is class 1, ``1+2j`` class 1); a string fails
    in the cast, and xent refuses it when the loss is built. Python numbers
    take no NumPy call (torch.compile traces this); framework tensors are
    left to the comparison."""
    if ignore_class is None or isinstance(ignore_class, (int, float, complex)):
        return
    if isinstance(ignore_class, (str, bytes)):
        kind = "U"
    elif isinstance(ignore_class, (np.ndarray, np.generic)) or not hasattr(ignore_class, "dtype"):
        kind = np.asarray(ignore_class).dtype.kind
    else:
        return   # (a framework tensor)
    if kind not in "biufc":
        raise TypeError(f"`ignore_class` must be None or a class id (a number). Received: "
                        f"ignore_class={ignore_class!r} of type {type(ignore_class).__name__}")


class SparseCategoricalCrossentropy(Loss):
    """Reduced `sparse_categorical_crossentropy`, as `tf.keras.losses.SparseCategoricalCrossentropy`.

    Args:
      from_logits, ignore_class, axis: as `sparse_categorical_crossentropy`'s.
      reduction: ``"sum_over_batch_size"`` (the default), ``"sum"``, ``"mean"``,
        ``"mean_with_sample_weight"``, ``"none"`` or None (`Reduction`).
      name: the loss's name; None or ``""``: Keras' automatic one.
      dtype: the dtype the inputs are cast to and the loss computed in (a name,
        a Keras dtype policy); None: float32, whatever the inputs' dtype.

    Calling it gives ``reduce(mask · sample_weight · loss)`` (`Loss.__call__`).

    Examples:
      >>> import xent
      >>> loss = xent.keras.losses.SparseCategoricalCrossentropy()
      >>> loss([1, 2], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]])
      np.float32(1.1769392)
    """

    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size",
                 axis=-1, name="sparse_categorical_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        _check_ignore_class(ignore_class)
        self.from_logits = from_logits
        self.ignore_class = ignore_class
        self.axis = axis

    def _values(self, be, y_true, y_pred, logits):
        return _sparse_values(be, y_true, y_pred, self.from_logits, self.ignore_class, self.axis,
                              logits)

    def get_config(self):
        """Keras' config: name, reduction, from_logits, ignore_class."""
        return {**super().get_config(), "from_logits": self.from_logits,
                "ignore_class": self.ignore_class}


class CategoricalCrossentropy(Loss):
    """Reduced `categorical_crossentropy`, as `tf.keras.losses.CategoricalCrossentropy`.

    Args:
      from_logits, label_smoothing, axis: as `categorical_crossentropy`'s.
      reduction, name, dtype: as `SparseCategoricalCrossentropy`'s.

    Examples:
      >>> import xent
      >>> loss = xent.keras.losses.CategoricalCrossentropy()
      >>> loss([[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]])
      np.float32(1.1769392)
    """

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing
        self.axis = axis

    def _values(self, be, y_true, y_pred, logits):
        values = _categorical_values(be, y_true, y_pred, self.from_logits, self.label_smoothing,
                                     self.axis, logits)
        return values, None

    def get_config(self):
        """Keras' config: name, reduction, from_logits, label_smoothing, axis."""
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": self.axis}


_keras3.register(SparseCategoricalCrossentropy, CategoricalCrossentropy)
