"""Two row-wise bilinear maps, each the other's transpose, as JAX primitives:

    rows_dot(c, t)[...]         = Σ_j c[..., j]·t[..., j]       (in `dtype`)
    scale_rows(c, g)[..., j]    = c[..., j]·g[...]              (in g's dtype, rounded once to `dtype`)

with c and t ``[..., C]`` and g ``[...]``. The TF faces' loss on the CPU
kernel has the forward-mode rule ``d loss = rows_dot(backprop, dx)``, and
reverse mode is its transpose, ``scale_rows(backprop, g)``: the gradient.

Why primitives, not `jnp`: XLA on the CPU never writes an elementwise fusion
over a custom call's output, so ``g[..., None] * backprop`` went into a fresh
logits-sized buffer beside the kernel's backprop. A `.mean()` step (optax's
usual form; the Keras and v1 reductions too) held two logits-sized buffers
and paid a second buffer's first-touch faults, where a `.sum()` (whose
product by ones XLA drops) held one: `memory_analysis()` of a 2048x32000
step whose logits come from a matmul, temporaries 2.00x the logits against
1.00x. Here `scale_rows` on the CPU is a buffer callback that writes the
product over c's own buffer (``input_output_aliases``; XLA copies c first
only where it is still needed), and that skips g all ones.

Derivatives of every order are these maps again (both are bilinear:
`jax.interpreters.ad.defbilinear`), and `vmap` moves the batch axis in front
(each is a map of rows: leading axes are rows, the class axis stays last).
On other platforms, and outside `jit`, both are `jax.numpy` arithmetic.
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.buffer_callback import buffer_callback
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.sharding import PartitionSpec

from xent import _jax_mesh


__all__ = ["rows_dot", "scale_rows"]

rows_dot_p = Primitive("xent_rows_dot")
scale_rows_p = Primitive("xent_scale_rows")


def rows_dot(c, t, dtype):
    """``Σ_j c[..., j]·t[..., j]`` in `dtype` (both widened to it first): ``[...]``."""
    return rows_dot_p.bind(c, t, dtype=np.dtype(dtype))


def scale_rows(c, g, dtype):
    """``c[..., j]·g[...]`` computed in g's dtype and rounded once to `dtype`: ``[..., C]``."""
    return scale_rows_p.bind(c, g, dtype=np.dtype(dtype))


# --- the arithmetic (eager calls, other platforms, and inside every lowering) -----------------

def _rows_dot_jnp(c, t, *, dtype):
    return jnp.einsum("...c,...c->...", c.astype(dtype), t.astype(dtype),
                      **_jax_mesh.rows_sharding(c))


def _scale_rows_jnp(c, g, *, dtype):
    return (c.astype(g.dtype) * g[..., None]).astype(dtype)


def _shaped(like, dtype, rows_only=False):
    """The abstract value of `like` (``[..., C]``) in `dtype`, or of its rows
    ``[...]`` if `rows_only`: the same sharding of the axes kept, and the same
    mesh axes varied over (inside `shard_map`)."""
    if not rows_only:
        return like.update(dtype=dtype, weak_type=False)
    sharding = getattr(like, "sharding", None)
    spec = getattr(sharding, "spec", None)
    if spec is None:
        return jax.core.ShapedArray(like.shape[:-1], dtype)
    spec = tuple(spec) + (None,) * (like.ndim - len(spec))
    return like.update(shape=like.shape[:-1], dtype=dtype, weak_type=False,
                       sharding=sharding.update(spec=PartitionSpec(*spec[:-1])))


rows_dot_p.def_impl(_rows_dot_jnp)
rows_dot_p.def_abstract_eval(lambda c, t, *, dtype: _shaped(c, dtype, rows_only=True))
mlir.register_lowering(rows_dot_p, mlir.lower_fun(_rows_dot_jnp, multiple_results=False))

scale_rows_p.def_impl(_scale_rows_jnp)
scale_rows_p.def_abstract_eval(lambda c, g, *, dtype: _shaped(c, dtype))
mlir.register_lowering(scale_rows_p, mlir.lower_fun(_scale_rows_jnp, multiple_results=False))


# --- scale_rows in place on the CPU ---------------------------------------------------------------

# Rows of half-precision c are widened to g's dtype this many elements at a time.
_BLOCK_ELEMENTS = 1 << 18


def _scale_rows_numpy(out, c, g):
    """``out = c * g[:, None]`` in g's dtype: one NumPy multiply where c and out are
    in g's dtype; half-precision rows widened a block at a time, never whole."""
    if c.dtype == g.dtype and out.dtype == g.dtype:
        np.multiply(c, g[:, None], out=out)
        return
    step = max(1, _BLOCK_ELEMENTS // max(1, c.shape[1]))
    for start in range(0, g.size, step):
        stop = min(g.size, start + step)
        out[start:stop] = c[start:stop].astype(g.dtype) * g[start:stop, None]


def _scale_body(ctx, out, c, g):
    """The callback: XLA's output buffer (c's own, under the alias) gets ``c * g``.

    On XLA's own thread, whose products flush subnormal results to zero as
    XLA's do: on the kernels' helper threads, which need not, the bits of a
    product past float32's normal range depended on the thread that took its
    row (a review: 6 different results in 8 runs of one step). One thread
    scales 4096x32000 float32 in 30-35 ms, two took 17-19 (rocketlake).
    NumPy's error state is xent's (`xent._errstate`): an infinite g times a
    zero entry is NaN, silently, as TF's.
    """
    g = np.asarray(g).reshape(-1)
    c = np.asarray(c)
    out = np.asarray(out)
    c = c.reshape(g.size, -1) if g.size else c.reshape(0, 0)
    out = out.reshape(c.shape)
    if out.ctypes.data == c.ctypes.data and np.all(g == 1):
        return   # (the gradient of a .sum(): nothing to scale)
    with np.errstate(all="ignore"):
        _scale_rows_numpy(out, c, g)


_state = {"in_place": True}


def scale_in_place(flag=True):
    """Whether `scale_rows` on the CPU writes over c's buffer (else XLA's product
    into a new one, for `bench/jax_mean_step.py`); for calls jitted after it."""
    _state["in_place"] = flag


def _scale_rows_cpu(c, g, *, dtype):
    """`scale_rows` as a buffer callback over c's buffer where c is already in
    `dtype`; else (a cast is needed anyway) `jax.numpy`."""
    if c.dtype != dtype or c.ndim == 0 or not _state["in_place"]:
        return _scale_rows_jnp(c, g, dtype=dtype)
    callback = buffer_callback(_scale_body, jax.ShapeDtypeStruct(c.shape, c.dtype),
                               input_output_aliases={0: 0})
    return callback(c, g)


mlir.register_lowering(scale_rows_p, mlir.lower_fun(_scale_rows_cpu, multiple_results=False),
                       platform="cpu")


# --- derivatives: both maps are bilinear ----------------------------------------------------------

def _rows_dot_ct_c(ct, c, t, *, dtype):
    return scale_rows(t, ct, c.aval.dtype)


def _rows_dot_ct_t(ct, c, t, *, dtype):
    return scale_rows(c, ct, t.aval.dtype)


def _scale_rows_ct_c(ct, c, g, *, dtype):
    return scale_rows(ct, g, c.aval.dtype)


def _scale_rows_ct_g(ct, c, g, *, dtype):
    return rows_dot(c, ct, g.aval.dtype)


ad.defbilinear(rows_dot_p, _rows_dot_ct_c, _rows_dot_ct_t)
ad.defbilinear(scale_rows_p, _scale_rows_ct_c, _scale_rows_ct_g)


# --- vmap: the batch axis becomes the first row axis -----------------------------------------------

def _batch_rows(prim, args, dims, **params):
    """Both operands with the batch axis first (an unbatched one broadcast to it)."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [jnp.broadcast_to(a, (size, *a.shape)) if d is None
             else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    return prim.bind(*moved, **params), 0


batching.primitive_batchers[rows_dot_p] = partial(_batch_rows, rows_dot_p)
batching.primitive_batchers[scale_rows_p] = partial(_batch_rows, scale_rows_p)
