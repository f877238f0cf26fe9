"""`tf.compat.v1.losses`' cross-entropy losses, with weights and reductions.

Each loss computes per-example losses through `xent.nn`'s validated path,
weights and reduces them by `Reduction` (see `xent._reduce`), adds the result
to the loss collection, and returns it in the logits' dtype.

The collection (`get_losses`, `get_total_loss`) models TensorFlow's graph
mode for NumPy inputs: each result is added. torch tensors and JAX arrays
run eagerly, and TensorFlow 2 ignores ``loss_collection`` when executing
eagerly: their results are added nowhere, so a training loop through these
functions keeps no autograd graph (or device array) alive. `add_loss` adds
whatever it is given.
"""
import re

import numpy as np

from xent import _backend, _dtypes, _reduce, _smoothing, _validate
from xent._collection import (GraphKeys, add_loss, add_named_loss, clear_losses, get_losses,
                              get_regularization_losses, get_total_loss, loss_name)
from xent._errstate import quiet
from xent._losses import dense_losses, sparse_losses
from xent._reduce import Reduction
from xent.errors import InvalidArgumentError

__all__ = [
    "GraphKeys", "Reduction", "add_loss", "clear_losses", "compute_weighted_loss",
    "get_losses", "get_regularization_losses", "get_total_loss",
    "softmax_cross_entropy", "sparse_softmax_cross_entropy",
]


def _squeeze_last(be, x):
    """Drop a trailing axis of size 1 (TF raises if it is not 1)."""
    if x.shape[-1] != 1:
        raise InvalidArgumentError(
            f"Can not squeeze dim[{x.ndim - 1}], expected a dimension of 1, got "
            f"{x.shape[-1]} (shape {tuple(x.shape)})")
    return be.xp.reshape(x, tuple(x.shape[:-1]))


def _squeeze_sparse_args(be, labels, logits, weights):
    """TF's `_remove_squeezable_dimensions(expected_rank_diff=1)`.

    ``[batch, 1]`` labels against ``[batch, C]`` logits lose their last axis
    (logits two ranks above the labels lose a trailing axis of 1), and so do
    weights one rank above the (new) labels.
    """
    rank_diff = logits.ndim - labels.ndim
    if rank_diff == 0 and labels.ndim > 0 and labels.shape[-1] == 1:
        labels = _squeeze_last(be, labels)
    elif rank_diff == 2 and logits.shape[-1] == 1:
        logits = _squeeze_last(be, logits)
    if weights.ndim - labels.ndim == 1:
        weights = _squeeze_last(be, weights)
    return labels, logits, weights


def _weights_check(be, weights):
    """TF's check that `weights` broadcast to the per-example losses, as a
    function of their shape, which the kernel's step runs before it computes:
    TF's graph mode builds the check before it runs the loss (NumPy calls).
    None for torch and JAX calls, eager as TF 2's, where a bad label is found
    first and the weights are checked by the reduction."""
    if be.name != "numpy":
        return None
    return lambda shape: _reduce.check_broadcastable(weights, shape)


def _weights(be, weights):
    """``(weights, tf_dtype)``: the weights as an array, and the name of the dtype
    TensorFlow converts them to (which names its graph's casts, `_last_op`).

    Python numbers keep float64 so float64 losses lose nothing (TensorFlow
    converts them to float32 first; xent rounds only the result), after TF's
    conversion errors (a value past float32's range). Complex weights are
    refused (TensorFlow drops their imaginary part).
    """
    _validate.require("weights", weights)
    if not _dtypes.is_python_numbers(weights):
        weights = be.asarray(weights, "weights")
        tf_dtype = be.dtype_name(weights)
    elif be.compiling():   # (no NumPy call: torch.compile traces this one)
        return be.astype(weights, "float64"), "float32"
    else:
        tf_dtype = _dtypes.to_array(weights, "weights").dtype.name
        weights = _dtypes.numbers(weights, "weights")
        weights = be.asarray(weights if np.iscomplexobj(weights) else weights.astype(np.float64),
                             "weights")
    _dtypes.check_real(be.dtype_name(weights), "weights")
    return weights, tf_dtype


# TF's pattern for a name scope entered at the root (its graph's _VALID_OP_NAME_REGEX).
_ROOT_SCOPE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")

# The last op of a v1 loss, by reduction: what TF names its tensor after.
_LAST_OP = {Reduction.NONE: "Mul", Reduction.SUM: "Sum"}


def _last_op(reduction, dtype_name, casts):
    """The name of a v1 loss's last op in TF's graph: the `reduction`'s, or, for a
    loss not in float32 (TF computes in float32), the cast back to its dtype,
    the scope's `casts`-th cast (read from TF 2.21: 2 in `compute_weighted_loss`;
    3 in `softmax_cross_entropy`, 4 with label smoothing; 1 in
    `sparse_softmax_cross_entropy`, 2 with weights that are not float32)."""
    if dtype_name != "float32":
        return f"Cast_{casts}"
    return _LAST_OP.get(reduction, "value")


def _scope(be, scope, default):
    """The name scope TF enters: `default` for None; ``""`` is the root scope
    (TF's `name_scope("")`), so the loss is named by its last op alone.

    NumPy calls are TF's graph mode, which takes a str or bytes matching its
    root scope names' pattern, raising TypeError for anything else and
    ValueError for another name; torch and JAX calls, eager as TF 2's, ignore
    it. Checked before any work.
    """
    if scope is None:
        return default
    if be.name != "numpy":
        return scope
    if isinstance(scope, bytes):
        scope = scope.decode()
    if not isinstance(scope, str):
        raise TypeError(f"`scope` must be a string (or bytes); received {scope!r} "
                        f"of type {type(scope).__name__}")
    if scope and not _ROOT_SCOPE_NAME.match(scope):
        raise ValueError(f"'{scope}' is not a valid root scope name. A root scope name has "
                         f"to match the following pattern: {_ROOT_SCOPE_NAME.pattern}")
    return scope


def _finish(be, loss, scope, loss_collection, reduction, casts=1):
    """Hand the loss back in the caller's type, collected if NumPy computed it.

    NumPy calls are TF's graph mode: the loss joins `loss_collection` under
    the name TF's tensor would have (`xent._collection.loss_name`: `scope`, the
    caller's or TF's default for the loss, then its last op, `_last_op`),
    which `get_losses(scope=...)` matches. torch tensors and JAX arrays are
    eager, as TF 2's eager mode, where the collection is ignored: nothing is
    kept, so a training loop holds no autograd graph alive. A loss not
    collected (``loss_collection=None``) takes no name: a loop of them would
    fill the table of names in use (TF's graph takes one per op it builds, so
    a later collected loss's scope may be TF's without its ``_1``).
    """
    loss = be.finish(loss)
    if be.name == "numpy" and loss_collection:   # (a name only for a loss kept: taken
        op = _last_op(reduction, be.dtype_name(loss), casts)   # ones are kept for good)
        add_named_loss(loss, loss_collection, loss_name(scope, op))
    return loss


@quiet
def compute_weighted_loss(losses, weights=1.0, scope=None,
                          loss_collection=GraphKeys.LOSSES,
                          reduction=Reduction.SUM_BY_NONZERO_WEIGHTS):
    """Weight per-example `losses` and reduce them (see `Reduction`).

    Args:
      losses: ``[d0, ..., dn]`` per-example losses.
      weights: scalar, or of the losses' rank with each dimension 1 or equal.
      scope: a name; `get_losses(scope=...)` filters on it.
      loss_collection: where a NumPy result is added; None adds it nowhere.
        torch and JAX results are never added (TF 2's eager mode).
      reduction: a `Reduction` key.

    Returns:
      A scalar, or ``[d0, ..., dn]`` for `Reduction.NONE`, in the losses' dtype.

    Mirrors `tf.compat.v1.losses.compute_weighted_loss`.

    Examples:
      >>> import xent
      >>> xent.losses.compute_weighted_loss([1.0, 2.0, 3.0], weights=[1.0, 0.0, 1.0])
      np.float32(2.0)
    """
    _validate.require("losses", losses)
    Reduction.validate(reduction)
    be = _backend.of(losses, weights)
    scope = _scope(be, scope, "weighted_loss")
    losses, (weights, _) = be.asarray(losses, "losses"), _weights(be, weights)
    loss = _reduce.weighted_loss(be, losses, weights, reduction)
    return _finish(be, loss, scope, loss_collection, reduction, casts=2)


@quiet
def sparse_softmax_cross_entropy(labels, logits, weights=1.0, scope=None,
                                 loss_collection=GraphKeys.LOSSES,
                                 reduction=Reduction.SUM_BY_NONZERO_WEIGHTS):
    """Weighted sparse softmax cross-entropy, reduced.

    ``reduce(weights * (logsumexp(logits) - logits[label]))``

    Args:
      labels: int32/int64 ``[d0, ..., d(r-1)]`` (or ``[batch, 1]`` against
        ``[batch, C]`` logits) with values in ``[0, C)``.
      logits: float ``[d0, ..., d(r-1), C]``.
      weights: scalar, or of the labels' rank with each dimension 1 or the
        labels' (a ``[batch, 1]`` weight against ``[batch]`` labels is
        squeezed, as TF does); a lower rank raises TF's ValueError.
      scope, loss_collection, reduction: as in `compute_weighted_loss`.

    Returns:
      A scalar (``[d0..]`` for NONE) in the logits' dtype.

    Mirrors `tf.compat.v1.losses.sparse_softmax_cross_entropy`.

    Examples:
      >>> import numpy as np, xent
      >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
      >>> xent.losses.sparse_softmax_cross_entropy([0, 1], logits, weights=[1.0, 3.0])
      np.float32(0.5385893)
    """
    _validate.require("labels", labels)
    _validate.require("logits", logits)
    be = _backend.of(labels, logits, weights)
    scope = _scope(be, scope, "sparse_softmax_cross_entropy_loss")
    Reduction.validate(reduction)
    labels, logits = be.asarray(labels, "labels"), be.asarray(logits, "logits")
    weight_array, weights_dtype = _weights(be, weights)
    casts = 1 + (be.name == "numpy" and weights_dtype != "float32")
    labels, logits, weights = _squeeze_sparse_args(be, labels, logits, weight_array)
    losses = sparse_losses(be, labels, logits, _weights_check(be, weights))
    loss = _reduce.weighted_loss(be, losses, weights, reduction, be.dtype_name(logits))
    return _finish(be, loss, scope, loss_collection, reduction, casts)


@quiet
def softmax_cross_entropy(onehot_labels, logits, weights=1.0, label_smoothing=0,
                          scope=None, loss_collection=GraphKeys.LOSSES,
                          reduction=Reduction.SUM_BY_NONZERO_WEIGHTS):
    """Weighted softmax cross-entropy against (smoothed) one-hot labels, reduced.

    With ``ls = label_smoothing`` and ``C`` classes the targets are
    ``onehot_labels * (1 - ls) + ls / C``; then
    ``reduce(weights * sum_j targets_j * (logsumexp(logits) - logits_j))``.

    Args:
      onehot_labels: ``[batch, ..., C]``, the logits' shape.
      logits: float ``[batch, ..., C]``.
      weights: scalar, or of the per-example losses' rank (``[batch, ...]``)
        with each dimension 1 or equal.
      label_smoothing: a float, usually in ``[0, 1]``; as in TF, any value is applied
        (1.5 too) and one of 0 or less means no smoothing.
      scope, loss_collection, reduction: as in `compute_weighted_loss`.

    Returns:
      A scalar (``[batch, ...]`` for NONE) in the logits' dtype. No gradient
      flows into the labels (TF stops it).

    Mirrors `tf.compat.v1.losses.softmax_cross_entropy`.

    Examples:
      >>> import numpy as np, xent
      >>> logits = np.array([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]], np.float32)
      >>> onehot = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
      >>> xent.losses.softmax_cross_entropy(onehot, logits, label_smoothing=0.1)
      np.float32(0.3306288)
    """
    _validate.require("onehot_labels", onehot_labels)
    _validate.require("logits", logits)
    be = _backend.of(onehot_labels, logits, weights)
    scope = _scope(be, scope, "softmax_cross_entropy_loss")
    Reduction.validate(reduction)
    labels, logits = be.asarray(onehot_labels, "onehot_labels"), be.asarray(logits, "logits")
    weights, _ = _weights(be, weights)
    _validate.compatible_shapes(logits, labels)
    label_smoothing = _validate.one_number("label_smoothing", label_smoothing)   # (exact: a
    # float16 0.1 is 0.0999756, not rounded again in its own dtype; a tensor of another framework)
    smoothing = label_smoothing > 0
    # TF casts the labels to the logits' dtype and smooths them there (and
    # rounds 0.6 to 0.59765625 in bfloat16 before the loss sees it); xent
    # smooths in float32 (float64), where bfloat16 logits' targets ls / C stay
    # exact to float32 (a bfloat16 1/6 is 0.2% off).
    if smoothing:
        labels = _smoothing.smooth(be, labels, label_smoothing, be.dtype_name(logits))
    labels = be.stop_gradient(labels)
    losses = dense_losses(be, labels, logits, before_kernel=_weights_check(be, weights))
    loss = _reduce.weighted_loss(be, losses, weights, reduction, be.dtype_name(logits))
    return _finish(be, loss, scope, loss_collection, reduction, casts=3 + smoothing)
