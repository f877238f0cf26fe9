"""The v1 loss collection: a process-wide registry of losses, by collection key.

TensorFlow 1 kept losses in graph collections (`tf.compat.v1.GraphKeys.LOSSES`)
so `get_total_loss` could add them up. xent keeps one registry per process,
as TensorFlow's default graph does; `clear_losses` empties it (TF's
`reset_default_graph`). The losses of `xent.losses` add their NumPy results
only: torch and JAX results are eager, as in TF 2 (see `xent.losses`).
"""
import re
import sys

import numpy as np

from xent import _dtypes
from xent._errstate import quiet


class GraphKeys:
    """Collection keys, as `tf.compat.v1.GraphKeys`."""

    LOSSES = "losses"
    REGULARIZATION_LOSSES = "regularization_losses"


_registry = {}
# Names of the collected losses' scopes and ops, lower-cased, and how often
# each was taken (`_unique_name`).
_names_in_use = {}


def add_loss(loss, loss_collection=GraphKeys.LOSSES):
    """Add `loss` to `loss_collection` (nothing if the collection is None/empty), as
    `tf.compat.v1.losses.add_loss`. It has no name for `get_losses(scope=...)` to
    match (`add_named_loss`)."""
    add_named_loss(loss, loss_collection, "")


def add_named_loss(loss, loss_collection, name):
    """`add_loss` with `name`, which `get_losses(scope=...)` matches: TF's name of the
    loss tensor (`loss_name`), given by the losses of `xent.losses`. Values traced
    by `jax.jit`/`jax.grad` are not kept: they are only valid inside the trace
    (as TF 2's eager mode, which keeps nothing)."""
    if loss_collection and not _is_traced(loss):
        _registry.setdefault(loss_collection, []).append((name, loss))


def _unique_name(name):
    """`name`, or ``name_1``, ``name_2``, ... if taken: TF's `Graph.unique_name`
    (case-blind), over the names the collected losses have used."""
    key = name.lower()
    count = _names_in_use.get(key, 0)
    _names_in_use[key] = count + 1
    if count == 0:
        return name
    while f"{key}_{count}" in _names_in_use:
        count += 1
    _names_in_use[f"{key}_{count}"] = 1
    return f"{name}_{count}"


def loss_name(scope, op):
    """TF's name of a v1 loss tensor: its last op `op` (``"Mul"`` unreduced,
    ``"Sum"`` summed, else ``"value"``; a cast for a loss not in float32) in
    name scope `scope`, which a second use makes ``scope_1`` (a scope ending
    in ``/`` is entered as it is), e.g. ``"tower_0/value:0"``. Other ops of the
    same scope are not counted, so a reentered scope's names may differ from
    TF's past the slash. An empty `scope` is the root: ``"value:0"``."""
    if not scope:
        return _unique_name(op) + ":0"
    scope = scope[:-1] if scope.endswith("/") else _unique_name(scope)
    return _unique_name(f"{scope}/{op}") + ":0"


def _is_traced(loss):
    """True for a JAX tracer: a value inside `jit`/`grad` that must not outlive it."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(loss, jax.core.Tracer)


def get_losses(scope=None, loss_collection=GraphKeys.LOSSES):
    """Losses in `loss_collection`; with `scope`, those whose name (`loss_name`) it
    matches from the start (`re.match`), as TF filters a collection."""
    entries = _registry.get(loss_collection, [])
    return [loss for name, loss in entries if scope is None or re.match(scope, name)]


def get_regularization_losses(scope=None):
    """Losses in the REGULARIZATION_LOSSES collection."""
    return get_losses(scope, GraphKeys.REGULARIZATION_LOSSES)


@quiet
def get_total_loss(add_regularization_losses=True, name="total_loss", scope=None):
    """Sum of `get_losses(scope)` (plus regularization losses by default).

    Raises as TF's ``add_n`` does: ValueError when there is nothing to add or
    the shapes differ, TypeError when the dtypes do (a float32 loss and a
    float64 one).
    """
    found = get_losses(scope) + (get_regularization_losses(scope) if add_regularization_losses else [])
    found = [_as_tensor(loss) for loss in found]
    if not found:
        raise ValueError("Inputs must be an iterable of at least one Tensor/IndexedSlices with "
                         "the same dtype and shape.")
    dtypes = [str(loss.dtype) for loss in found if hasattr(loss, "dtype")]
    if len(set(dtypes)) > 1:
        raise TypeError(f"Tensors in list passed to 'inputs' of 'AddN' Op have types "
                        f"[{', '.join(dtypes)}] that don't all match.")
    shapes = {tuple(getattr(loss, "shape", ())) for loss in found}
    if len(shapes) > 1:
        raise ValueError(f"Shapes must be equal to add the losses (tf.math.add_n); got {sorted(shapes)}")
    total = _fresh(found[0])
    for loss in found[1:]:
        total = total + loss
    return total


def _as_tensor(loss):
    """A loss given to `add_loss` as a Python value (a number, a list) as the array
    TF's ``add_n`` makes of it (``convert_to_tensor``: `_dtypes.to_array`);
    arrays and tensors as they are. Two lists had been concatenated by ``+``."""
    return loss if hasattr(loss, "dtype") else _dtypes.to_array(loss, "loss")


def _fresh(loss):
    """A copy of a mutable `loss` (a NumPy array; a torch tensor, through its graph):
    the total of one loss is a value of its own, as TF's, never the collection's
    (and the caller's) array, which ``total += ...`` would change."""
    if isinstance(loss, np.ndarray):
        return loss.copy()
    clone = getattr(loss, "clone", None)
    return clone() if callable(clone) else loss


def clear_losses():
    """Empty every collection (TensorFlow's `reset_default_graph`)."""
    _registry.clear()
    _names_in_use.clear()
