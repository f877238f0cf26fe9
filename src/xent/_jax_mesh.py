"""Types of JAX values over a mesh: the manual axes a value varies over inside
`shard_map`, and the explicit axes its sharding names.

Inside `jax.shard_map` (with its default type checks) each value's type says
over which manual mesh axes it differs from device to device. JAX infers it
for its own operations, but not for what xent builds itself: a buffer
callback's results (they vary as the callback's inputs do) and the
cotangents a `custom_vjp` rule returns (a gradient made from varying values
for an input that does not vary is summed over those axes, as JAX's own
transpose of the implicit broadcast would). Outside `shard_map` every
function here gives its input back.

Over a mesh with explicit axes (`jax.make_mesh`'s default in JAX 0.10) a
value's type names its sharding too. A buffer callback's results came back
replicated (XLA gathers the callback's inputs), so a `custom_vjp` gave a
replicated cotangent for a sharded input, which JAX refuses ("the bwd rule
produced an output of type float32[8,6] corresponding to an input of type
float32[8@d,6]"), and the losses lost their batch sharding. `shard_as` gives
them their inputs' sharding back.
"""
import jax
import jax.numpy as jnp

__all__ = ["varying_axes", "vary_like", "sum_to_type_of", "shard_as", "replicated",
           "mergeable", "rows_sharding"]


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


def _explicit_spec(value):
    """`value`'s partition spec, one entry per axis, where its type names explicit
    mesh axes; None where it names none (no mesh, or automatic axes)."""
    sharding = getattr(jax.typeof(value), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if explicit is None or explicit not in tuple(getattr(mesh, "axis_types", ())):
        return None
    spec = tuple(sharding.spec) + (None,) * (jnp.ndim(value) - len(sharding.spec))
    return spec if any(axis is not None for axis in spec) else None


def _on_mesh_of(like, spec):
    """A sharding with partition `spec` on the mesh `like`'s type names. Not a bare
    PartitionSpec, which JAX takes only inside ``jax.set_mesh``: arrays placed
    on an explicit mesh are used outside it too (they failed, "Using
    PartitionSpec when you are not under a mesh context is not allowed")."""
    return jax.typeof(like).sharding.update(spec=jax.sharding.PartitionSpec(*spec))


def shard_as(values, likes):
    """Each of `values` (a tuple) sharded as its partner in `likes` over explicit mesh
    axes: a value of lower rank takes the partner's leading axes' sharding (the
    rows of a ``[..., C]`` array). Values whose partner names no explicit axes,
    or that are sharded so already, are given back as they are."""
    out = []
    for value, like in zip(values, likes):
        spec = _explicit_spec(like)
        if spec is not None and _explicit_spec(value) != spec[:jnp.ndim(value)]:
            value = jax.sharding.reshard(value, _on_mesh_of(like, spec[:jnp.ndim(value)]))
        out.append(value)
    return tuple(out)


def replicated(value):
    """`value` gathered whole on every device where its type shards it over explicit
    mesh axes; as it is elsewhere. (The jax.numpy linear head scans over chunks
    of the tokens, and `lax.scan` refuses a scanned axis that is sharded.)"""
    spec = _explicit_spec(value)
    return value if spec is None else jax.sharding.reshard(
        value, _on_mesh_of(value, (None,) * jnp.ndim(value)))


def mergeable(value, token_ndim):
    """`value`, gathered (`replicated`) where its type shards one of its first
    `token_ndim` axes but the first over explicit mesh axes: JAX's reshape of
    those axes into one (``[B, T@d, H]`` to ``[B·T, H]``) is refused
    ("ShardingTypeError: This reshape is not supported"); as it is elsewhere."""
    spec = _explicit_spec(value)
    if spec is None or all(axis is None for axis in spec[1:token_ndim]):
        return value
    return replicated(value)


def rows_sharding(value):
    """The keyword arguments that give a sum over the last axis of `value` its rows'
    sharding (``out_sharding``) where `value`'s type names explicit mesh axes;
    none elsewhere. An einsum over a sharded class axis is refused without it
    ("contracting dimensions are sharded and it is ambiguous how the output
    should be sharded")."""
    spec = _explicit_spec(value)
    return {} if spec is None else {"out_sharding": _on_mesh_of(value, spec[:-1])}
