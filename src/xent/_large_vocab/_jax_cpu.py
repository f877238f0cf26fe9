"""JAX arrays on the CPU reach the fused kernel through XLA buffer callbacks.

`jax.experimental.buffer_callback` hands the callback XLA's own buffers as
NumPy arrays, with no copy (the device is the host), and the callback writes
its results into the output buffers in place. Two callbacks serve both
functions:

  - `ce`:     logits ``[N, V]``, targets, token weights w → per-token losses
              and ``w_i · dloss_i/dz_i`` (the fused kernel, one pass);
  - `linear`: x, W, b, targets, w → per-token losses and, when asked, the
              weighted dx, dW, db (`_linear.chunked`, one chunk at a time).

Under `jit` no error can be raised, so a target outside ``[0, V)`` that is
not ignored gives that token NaN loss and gradient, as TensorFlow on a GPU.
`vmap` runs the callback once per batch element. `available` (and the
tests' switch to `jax.numpy`) is the TensorFlow faces' (`xent._jax_cpu`).
Both callbacks are differentiable once, in reverse mode (the functions'
`custom_vjp` rules): a derivative of their own results (a Hessian, a
gradient of a gradient) raises a named error, as on torch tensors.
"""
import functools

import jax
import numpy as np
from jax.experimental.buffer_callback import buffer_callback

from xent import _jax_mesh
from xent._jax_cpu import available, kernel_logits, use_jax_numpy_on_cpu
from xent._large_vocab._cross_entropy import losses_and_gradient
from xent._large_vocab._linear import NumpyMatmuls, chunked

__all__ = ["available", "ce", "linear", "use_jax_numpy_on_cpu"]


def _tokens(targets, num_classes, ignore_index):
    """``(targets int64 with bad ones at 0, valid, bad)`` of a callback's targets."""
    t = np.asarray(targets).astype(np.int64)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= num_classes))
    return np.where(bad, 0, t), valid & ~bad, bad


@functools.lru_cache(maxsize=64)
def _ce_body(opts):
    def body(ctx, out, logits, targets, weights):
        losses, grad = np.asarray(out[0]), (np.asarray(out[1]) if len(out) > 1 else None)
        x = np.asarray(logits) if grad is None else kernel_logits(np.asarray(logits), grad)
        if grad is not None and grad.dtype != x.dtype:   # (float16: a float32 gradient, `ce`)
            x = x.astype(grad.dtype)
        t, valid, bad = _tokens(targets, x.shape[1], opts.ignore_index)
        losses[...] = losses_and_gradient(x, t, valid, opts, np.asarray(weights), grad)
        losses[bad] = np.nan
        if grad is not None:
            grad[bad] = np.nan
    return body


def grad_dtype(dtype):
    """The dtype of `ce`'s gradient for `dtype` logits: float32 for float16, whose
    narrow exponent would flush small entries before the upstream gradient (a
    loss scale, often) multiplies them; the logits' own otherwise (as the
    torch face's operator, `xent._large_vocab._torch_ops`)."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def _refuse_derivatives(*args):
    """The rule of `ce` and `linear` for a derivative of the kernel's own results."""
    raise RuntimeError(
        "xent's large-vocabulary functions on JAX CPU arrays are differentiable once, in "
        "reverse mode: their gradient comes from the fused kernel through a buffer callback "
        "and has no derivative of its own (jax.hessian, a gradient of a gradient); compute "
        "such terms with jax.numpy (optax's cross-entropy)")


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def ce(logits, targets, weights, opts, with_grad=True):
    """``(losses [N], weights_i · dloss_i/dlogits_i [N, V])`` on the fused kernel
    (``(losses,)`` without `with_grad`); the gradient in `grad_dtype`, written
    over the logits' buffer when that is the logits' dtype (XLA copies the
    logits first where they are still needed: `xent._jax_cpu.rows`)."""
    shapes = [jax.ShapeDtypeStruct(logits.shape[:1], weights.dtype)]
    aliases = None
    if with_grad:
        shapes.append(jax.ShapeDtypeStruct(logits.shape, grad_dtype(logits.dtype)))
        if shapes[1].dtype == logits.dtype:
            aliases = {0: 1}
    outputs = buffer_callback(_ce_body(opts), tuple(shapes), vmap_method="sequential",
                              input_output_aliases=aliases)(logits, targets, weights)
    outputs = _jax_mesh.vary_like(tuple(outputs), logits, targets, weights)   # (inside shard_map)
    return _jax_mesh.shard_as(outputs, (logits,) * len(outputs))   # (explicit mesh axes)


ce.defjvp(_refuse_derivatives)


@functools.lru_cache(maxsize=64)
def _linear_body(opts, chunk, with_grads):
    def body(ctx, out, x, weight, bias, targets, weights):
        x, w, b = np.asarray(x), np.asarray(weight), np.asarray(bias)
        t, valid, bad = _tokens(targets, w.shape[0], opts.ignore_index)
        arrays = [np.asarray(o) for o in out]
        grads = None
        if with_grads:
            for a in arrays[1:]:
                a[...] = 0
            grads = (arrays[1], arrays[2], arrays[3])
        arrays[0][...] = chunked(NumpyMatmuls, x, w, b, t, valid, opts, chunk, np.asarray(weights), grads)
        arrays[0][bad] = np.nan
        if with_grads and bad.any():   # a NaN row of dz: its dx row, and all of dW and db
            arrays[1][bad] = np.nan
            arrays[2][...] = np.nan
            arrays[3][...] = np.nan
    return body


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6, 7))
def linear(x, weight, bias, targets, weights, opts, chunk, with_grads):
    """``(losses [N], dx, dW, db)`` (the last three only `with_grads`) through the chunk
    loop, each token's gradient weighted by `weights`; float32/float64 only."""
    acc = weights.dtype
    shapes = [jax.ShapeDtypeStruct(x.shape[:1], acc)]
    if with_grads:
        shapes += [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, weight, bias)]
    body = _linear_body(opts, chunk, with_grads)
    outputs = buffer_callback(body, tuple(shapes), vmap_method="sequential")(
        x, weight, bias, targets, weights)
    outputs = _jax_mesh.vary_like(tuple(outputs), x, weight, bias, targets, weights)
    return _jax_mesh.shard_as(outputs, (x, x, weight, bias))   # (explicit mesh axes)


linear.defjvp(_refuse_derivatives)
