"""The base of the Keras loss classes: name, reduction, dtype policy and config.

`Loss` converts the inputs to its dtype (float32 unless ``dtype=`` says
otherwise, as Keras' dtype policy), asks its subclass for per-example losses
and a mask, then masks, weights and reduces them (`xent._keras_reduce`), as
Keras 3's `keras.losses.Loss`. `inputs` is the conversion the loss functions
share.
"""
import collections
import re
import sys
import threading

from xent import _backend, _dtypes
from xent._errstate import quiet
from xent.keras import _keras3
from xent._keras_reduce import (reduce_weighted_values, squeeze_or_expand_to_same_rank,
                                standardize_reduction)

__all__ = ["Loss", "inputs", "kept_logits"]


def inputs(y_true, y_pred, dtype=None, sample_weight=None):
    """Backend and arrays; `y_pred` (and `y_true`) cast to `dtype` when given.

    The backend is chosen by all three arrays, so a framework `sample_weight`
    with NumPy predictions still gives a framework result.
    """
    be = _backend.of(y_true, y_pred, sample_weight)
    y_true, y_pred = be.asarray(y_true, "y_true"), be.asarray(y_pred, "y_pred")
    if dtype is not None:
        y_true, y_pred = be.astype(y_true, dtype), be.astype(y_pred, dtype)
    _dtypes.check_float(be.dtype_name(y_pred), "y_pred")
    return be, y_true, y_pred


def kept_logits(y_pred, dtype=None):
    """The logits Keras' TF backend keeps on a softmax's output, or None.

    `keras.activations.softmax`, `keras.ops.softmax` and a ``Dense(...,
    activation="softmax")`` layer leave their input on the TF tensor they
    return (``y_pred._keras_logits``), and Keras' cross-entropies read those
    logits in place of the probabilities: exact where clipped probabilities
    would cap a row's loss at ``-log(1e-7)``. Only on TF tensors: Keras' torch
    and JAX backends set the attribute too but never read it. With `dtype` (a loss class's),
    only an output already of that dtype keeps them: Keras' cast makes a new
    tensor without them.
    """
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(y_pred, tf.Tensor):   # (Keras on torch and JAX keeps them
        return None                                       # too, and reads them nowhere)
    logits = getattr(y_pred, "_keras_logits", None)
    if logits is not None and dtype is not None and _dtypes.name_of(y_pred.dtype) != dtype:
        return None
    return logits


def _policy_dtype(dtype):
    """Compute dtype name of a Keras dtype policy: None → float32, mixed_* → half.

    `dtype` may be spelled as Keras takes it: a policy (its ``compute_dtype``)
    or any spelling of a dtype `_dtypes.name_of` reads (a name, NumPy's, TF's,
    torch's, a scalar type such as ``np.float64``; Python's ``float`` is
    Keras' float32), or a serialized policy (``{"class_name": "DTypePolicy",
    "config": {"name": ...}}``); ``""`` is float32, as Keras' ``dtype or floatx()``."""
    if isinstance(dtype, dict):   # (a serialized policy: its config's name, else floatx)
        config = dtype.get("config")
        dtype = config.get("name") if isinstance(config, dict) else None
    if dtype is None or dtype is float or (isinstance(dtype, str) and not dtype):
        return "float32"
    name = getattr(dtype, "compute_dtype", None) or _dtypes.name_of(dtype)
    name = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(name, name)
    _dtypes.check_float(name, "dtype")
    return name


# How often each automatic loss name was given in this thread (Keras'
# `naming.uniquify`, whose counts live in its thread-local global state).
_auto_names = threading.local()


def _auto_name(cls):
    """Keras' name for a loss built with ``name=None`` or ``""``: the class's
    name in snake case, then ``_1``, ``_2``, ... as it is taken again in the
    same thread. (`keras.backend.clear_session` restarts Keras' counts, not
    these.)"""
    name = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", cls.__name__)).lower()
    counts = getattr(_auto_names, "counts", None)
    if counts is None:
        counts = _auto_names.counts = collections.defaultdict(int)
    count = counts[name]
    counts[name] += 1
    return f"{name}_{count}" if count else name


class Loss:
    """Base of the loss classes: owns name, reduction and dtype policy.

    Subclasses implement `_values(be, y_true, y_pred, logits)` returning
    per-example losses and an optional mask (`logits`: `kept_logits`' or
    None); `__call__` weights and reduces them.
    """

    def __new__(cls, *args, **kwargs):
        """An instance of `cls`, and of `keras.losses.Loss` too once the caller has
        loaded Keras 3, so that ``model.compile`` passes it the sample weights
        (`_keras3`)."""
        keras = _keras3.loaded_keras()
        if keras is not None and not issubclass(cls, keras.losses.Loss):
            cls = _keras3.keras_subclass(cls, keras.losses.Loss)
        return object.__new__(cls)

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        self.name = name or _auto_name(type(self))
        self.reduction = standardize_reduction(reduction)
        self._dtype_arg = dtype
        self._dtype = _policy_dtype(dtype)

    @property
    def dtype(self):
        """The name of the dtype the loss computes in (its dtype policy's; read-only,
        as Keras')."""
        return self._dtype

    def __setstate__(self, state):
        """Unpickle, also what xent pickled before `dtype` became a property (its
        value then an attribute of the instance)."""
        state = dict(state)
        if "dtype" in state:
            state.setdefault("_dtype", state.pop("dtype"))
        self.__dict__.update(state)

    @quiet
    def __call__(self, y_true, y_pred, sample_weight=None):
        """Reduced loss: ``reduce(mask * sample_weight * per_example)``, in the loss's
        dtype (float32 unless ``dtype=`` was given, float64 inputs too).

        The mask is the loss's own (``ignore_class``) and, as in Keras' `Loss`,
        the one Keras layers leave on `y_pred` (``y_pred._keras_mask``, or Keras'
        side table for JAX tracers: an ``Embedding(mask_zero=True)`` model),
        both where both are given."""
        in_mask = _keras3.get_mask(y_pred)
        logits = kept_logits(y_pred, self.dtype)
        be, y_true, y_pred = inputs(y_true, y_pred, self.dtype, sample_weight)
        y_true, y_pred = squeeze_or_expand_to_same_rank(be, y_true, y_pred)
        values, mask = self._values(be, y_true, y_pred, logits)
        if in_mask is not None:
            in_mask = be.astype(be.asarray(in_mask, "y_pred._keras_mask"), "bool")
            mask = in_mask if mask is None else mask & in_mask
        loss = reduce_weighted_values(be, values, sample_weight, mask, self.reduction, self.dtype)
        return be.finish(loss)

    @quiet
    def call(self, y_true, y_pred):
        """Per-example losses, unreduced and unweighted, in `y_pred`'s dtype: the
        loss function on the inputs as given, as Keras' (whose `__call__` casts to
        the loss's dtype first)."""
        logits = kept_logits(y_pred)
        be, y_true, y_pred = inputs(y_true, y_pred)
        y_true, y_pred = squeeze_or_expand_to_same_rank(be, y_true, y_pred)
        values, _ = self._values(be, y_true, y_pred, logits)
        return be.finish(be.astype(values, be.dtype_name(y_pred)))

    def get_config(self):
        """Constructor arguments, as Keras' `Loss.get_config`.

        Keras leaves ``dtype`` out; xent adds it when one was given, so that
        `from_config` rebuilds the same loss.
        """
        config = {"name": self.name, "reduction": self.reduction}
        if self._dtype_arg is not None:
            config["dtype"] = self.dtype
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuild a loss from `get_config()`'s dict."""
        return cls(**config)
