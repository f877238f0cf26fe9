"""Types of JAX values inside `shard_map`: the mesh axes a value varies over.

Inside `jax.shard_map` (with its default type checks) each value's type says
over which manual mesh axes it differs from device to device. JAX infers it
for its own operations, but not for what xent builds itself: a buffer
callback's results (they vary as the callback's inputs do) and the
cotangents a `custom_vjp` rule returns (a gradient made from varying values
for an input that does not vary is summed over those axes, as JAX's own
transpose of the implicit broadcast would). Outside `shard_map` every
function here gives its input back.
"""
import jax

__all__ = ["varying_axes", "vary_like", "sum_to_type_of"]


def varying_axes(value):
    """The mesh axes `value` varies over (`mat.varying` in JAX 0.10, `vma` before)."""
    aval = jax.typeof(value)
    mat = getattr(aval, "mat", None)
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def vary_like(values, *operands):
    """`values` (a tuple) typed as varying over every axis one of `operands` varies over."""
    axes = set()
    for operand in operands:
        axes |= varying_axes(operand)
    if not axes:
        return values
    names = tuple(sorted(axes))
    if hasattr(jax.lax, "pcast"):
        return tuple(jax.lax.pcast(v, names, to="varying") for v in values)
    return tuple(jax.lax.pvary(v, names) for v in values)   # (JAX before 0.8)


def sum_to_type_of(cotangent, primal):
    """`cotangent` summed (``psum``) over the axes it varies over and `primal` (an
    array of the primal's type, which may be empty) does not."""
    extra = varying_axes(cotangent) - varying_axes(primal)
    return jax.lax.psum(cotangent, tuple(sorted(extra))) if extra else cotangent
