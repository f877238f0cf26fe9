"""Which path JAX arrays on the CPU take: the fused kernels, or `jax.numpy`.

By default a JAX array on the CPU reaches xent's fused kernel through an XLA
buffer callback (`xent._jax_cpu`): zero-copy, the loss and gradient in one
pass. A host callback cannot be serialized, so `jax.export` of a function
that calls xent fails there ("serialization of host_callbacks is not yet
implemented"); with ``set_jax_path("jax.numpy")`` functions traced afterwards
run the `jax.numpy` path of other devices instead, which exports. This
module imports no JAX.
"""
__all__ = ["set_jax_path", "get_jax_path", "uses_jax_numpy"]

JAX_PATHS = ("kernels", "jax.numpy")
_state = {"path": "kernels"}


def set_jax_path(path):
    """Choose how JAX arrays on the CPU are computed, for calls traced after it.

    Args:
      path: ``"kernels"`` (the default: the fused kernels through XLA buffer
        callbacks) or ``"jax.numpy"`` (plain `jax.numpy`, as on other
        devices: slower and logits-sized temporaries, but no host callback,
        so that `jax.export` can serialize the function).

    A function already jitted keeps the path it was traced with.

    Raises:
      ValueError: `path` is neither.
    """
    if path not in JAX_PATHS:
        raise ValueError(f"the path given to xent.set_jax_path must be 'kernels' or "
                         f"'jax.numpy'; received {path!r}")
    _state["path"] = path


def get_jax_path():
    """The path JAX arrays on the CPU take: ``"kernels"`` or ``"jax.numpy"``."""
    return _state["path"]


def uses_jax_numpy():
    """Whether JAX arrays on the CPU take the `jax.numpy` path."""
    return _state["path"] == "jax.numpy"
