"""Which path JAX arrays on the CPU take: the fused kernels, or `jax.numpy`.

By default a JAX array on the CPU reaches xent's fused kernel through an XLA
buffer callback (`xent._jax_cpu`): zero-copy, the loss and gradient in one
pass. A host callback cannot be serialized, so `jax.export` of a function
that calls xent fails there ("serialization of host_callbacks is not yet
implemented"); after ``set_jax_path("jax.numpy")`` the calls (and traces) run
the `jax.numpy` path of other devices instead, which exports. This module
imports no JAX.
"""
import sys

__all__ = ["set_jax_path", "get_jax_path", "uses_jax_numpy"]

JAX_PATHS = ("kernels", "jax.numpy")
_state = {"path": "kernels"}


def set_jax_path(path):
    """Choose how JAX arrays on the CPU are computed, from the next call or trace on.

    Args:
      path: ``"kernels"`` (the default: the fused kernels through XLA buffer
        callbacks) or ``"jax.numpy"`` (plain `jax.numpy`, as on other
        devices: slower and logits-sized temporaries, but no host callback,
        so that `jax.export` can serialize the function).

    JAX caches a function's trace under keys that do not include this choice,
    so a change clears JAX's caches (`jax.clear_caches`): functions traced
    before are traced again, on the new path (a jitted function kept its old
    trace, and `jax.export` of it still met the host callback: the review of
    this session's diff).

    Raises:
      ValueError: `path` is neither.
    """
    if path not in JAX_PATHS:
        raise ValueError(f"the path given to xent.set_jax_path must be 'kernels' or "
                         f"'jax.numpy'; received {path!r}")
    if path != _state["path"]:
        _state["path"] = path
        jax = sys.modules.get("jax")
        if jax is not None:
            jax.clear_caches()


def get_jax_path():
    """The path JAX arrays on the CPU take: ``"kernels"`` or ``"jax.numpy"``."""
    return _state["path"]


def uses_jax_numpy():
    """Whether JAX arrays on the CPU take the `jax.numpy` path."""
    return _state["path"] == "jax.numpy"
