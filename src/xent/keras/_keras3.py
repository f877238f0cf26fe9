"""Working inside a Keras 3 the caller has loaded (never imported here).

Keras' ``model.compile(loss=...)`` hands `sample_weight` (and ``class_weight``'s
weights) to a loss only if it is a `keras.losses.Loss`; any other callable is
wrapped in Keras' `LossFunctionWrapper`, which calls it without them and then
weights the already reduced scalar: ``mean(l)·mean(w)`` where ``mean(w·l)`` is
meant, silently. So once Keras 3 is in ``sys.modules``, xent's loss objects are
built as a subclass of both their xent class and Keras' `Loss`
(`keras_subclass`): Keras then calls xent's own ``__call__`` with the weights.

Keras keeps masks (``Embedding(mask_zero=True)``, and the valid entries of its
``sparse_categorical_crossentropy(..., ignore_class=...)``) on the tensor, or in
a side table for tensors that take no attributes (JAX tracers under `jit`):
`get_mask` and `set_mask` read and write both, as Keras' own functions do.
"""
import sys

import numpy as np

from xent import _threads

__all__ = ["loaded_keras", "get_mask", "set_mask", "keras_subclass", "register"]


def loaded_keras():
    """The Keras 3 module if the caller has imported it, else None."""
    keras = sys.modules.get("keras")
    major = getattr(keras, "__version__", "").partition(".")[0]
    if not major.isdigit() or int(major) < 3:
        return None
    return keras if isinstance(getattr(getattr(keras, "losses", None), "Loss", None), type) else None


def _masking():
    """Keras' module of `get_keras_mask` / `set_keras_mask` once Keras 3 is loaded, or None."""
    return None if loaded_keras() is None else sys.modules.get("keras.src.backend.common.masking")


def get_mask(x):
    """The mask Keras left on `x` (its attribute, or Keras' side table), or None."""
    masking = _masking()
    if masking is not None:
        return masking.get_keras_mask(x)
    return getattr(x, "_keras_mask", None)


def set_mask(x, mask):
    """Leave `mask` on `x` for Keras' `Loss` (nothing when Keras is not loaded, or `x`
    is a NumPy scalar, which Keras' side table cannot hold)."""
    masking = _masking()
    if masking is not None and not isinstance(x, np.generic):
        masking.set_keras_mask(x, mask)


def _rebuild(cls, state):
    """Unpickle an xent loss (as its class, which picks the Keras subclass again)."""
    loss = cls.__new__(cls)
    loss.__setstate__(state)
    return loss


_subclasses = {}   # (xent class, Keras' Loss) -> their subclass
_subclasses_lock = _threads.fork_safe_lock()


def keras_subclass(cls, keras_loss):
    """`cls` (an xent loss class, or a user's subclass of one) also deriving from
    `keras_loss` (`keras.losses.Loss`): xent's methods first; pickled and copied
    as `cls` (Keras' own ``__reduce__`` saves a model). One per class, whichever
    threads build their first loss at once."""
    key = (cls, keras_loss)
    subclass = _subclasses.get(key)
    if subclass is None:
        with _subclasses_lock:
            subclass = _subclasses.get(key)
            if subclass is None:
                subclass = _subclasses[key] = _derive(cls, keras_loss)
    return subclass


def _derive(cls, keras_loss):
    """The subclass of `cls` and `keras_loss`, registered with Keras' serialisation
    (so that Keras' ``deserialize`` and ``keras.models.load_model`` find it):
    xent's own classes as ``xent>Name``, a user's subclass under the name its
    class is registered with, else ``its.module>Name`` (under ``xent>`` it
    took xent's entry, the diff's review)."""
    def __reduce__(self):
        return _rebuild, (cls, dict(self.__dict__))

    subclass = type(cls.__name__, (cls, keras_loss), {
        "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
        "__reduce__": __reduce__, "_obj_type": lambda self: "Loss"})
    saving = loaded_keras().saving
    package, name = "xent", cls.__name__
    if not cls.__module__.startswith("xent."):
        registered = saving.get_registered_name(cls)
        package, name = registered.split(">", 1) if ">" in registered else (cls.__module__, name)
    saving.register_keras_serializable(package=package, name=name)(subclass)
    return subclass


def register(*classes):
    """Build (and register with Keras' serialisation) the Keras subclasses of `classes`
    now, if Keras 3 is loaded: ``keras.models.load_model`` then finds xent's losses
    in a process that has built none yet."""
    keras = loaded_keras()
    if keras is not None:
        for cls in classes:
            keras_subclass(cls, keras.losses.Loss)
