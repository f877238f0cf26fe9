"""JAX arrays on the CPU reach the fused kernel through XLA buffer callbacks.

`jax.experimental.buffer_callback` hands a callback XLA's own buffers as
NumPy arrays, with no copy (on the CPU the device is the host), and the
callback writes its results into XLA's output buffers in place. Here the
TensorFlow faces' callback (`rows`): logits ``[..., C]`` and labels →

    loss ``[...]``, lse ``[...]`` (accumulator dtype) and, when asked,
    TF's backprop ``softmax(logits) - labels`` ``[..., C]`` (logits' dtype)

in the kernel's one pass. The backprop is written over the logits' own
buffer (``input_output_aliases``): where the logits die at the loss, as in a
training step or under donation, the gradient needs no fresh logits-sized
memory, whose first touch costs a page fault every 4 KiB (2 MiB with huge
pages); where they are still needed (a parameter of the jitted function not
donated, or used again after the loss), XLA copies them first. Under `vmap`
the callback gets the batched arrays whole (``broadcast_all``): the kernel
works on rows, whatever the leading dimensions. A label outside ``[0, C)``
gives that row NaN, as TensorFlow on a GPU (no error can be raised under
`jit`). The large-vocabulary functions have their own callbacks
(`xent._large_vocab._jax_cpu`) and share `available`.
"""
import functools

import jax
import numpy as np
from jax.experimental.buffer_callback import buffer_callback

from xent import _core, _dtypes, _hugepages, _jax_mesh, _jax_path

__all__ = ["available", "kernel_logits", "rows", "use_jax_numpy_on_cpu"]


def use_jax_numpy_on_cpu(flag=True):
    """Run CPU arrays through the `jax.numpy` path of other devices (tests; the public
    form is `xent.set_jax_path`)."""
    _jax_path.set_jax_path("jax.numpy" if flag else "kernels")


def available(*arrays):
    """Whether the callbacks can run: JAX computes on the CPU, and every concrete
    array among `arrays` lives there."""
    if _jax_path.uses_jax_numpy() or jax.default_backend() != "cpu":
        return False
    return all(isinstance(a, jax.core.Tracer) or a is None
               or all(d.platform == "cpu" for d in a.devices()) for a in arrays)


@functools.lru_cache(maxsize=None)
def _rows_body(kind, with_grad):
    """The callback: the kernel's `kind` ("sparse"/"dense") rows into XLA's buffers
    (one function per kind, so that JAX's caches see the same callback each call:
    a new one each time made every eager call compile anew, 31 ms)."""
    def body(ctx, out, logits, labels):
        x = np.asarray(logits)
        num_classes = x.shape[-1]
        x2 = x.reshape(-1, num_classes)
        grad = None
        if with_grad:
            grad = np.asarray(out[2]).reshape(x2.shape)
            x2 = kernel_logits(x2, grad)
        if kind == "sparse":
            y = np.asarray(labels).reshape(-1)
        else:
            y = np.asarray(labels).reshape(x2.shape)
        run = _core.kernels().sparse_rows if kind == "sparse" else _core.kernels().dense_rows
        loss, lse = run(x2, y, grad)
        np.asarray(out[0]).reshape(-1)[...] = loss
        np.asarray(out[1]).reshape(-1)[...] = lse
    return body


def kernel_logits(x, grad):
    """The logits a callback's kernel reads, given its gradient output `grad`: `grad`
    itself where XLA gave both one buffer (an alias: the kernel then runs in
    place, on the writable view), else `x`, with huge pages asked for behind
    the fresh `grad` (fewer first-touch faults, `_hugepages`)."""
    if grad.ctypes.data == x.ctypes.data:
        return grad
    _hugepages.advise(grad)
    return x


def backprop_dtype(kind, dtype):
    """The dtype the kernel's backprop is written in for `kind` logits of `dtype`: their
    own, but float32 where TF rounds the gradient once (`_dtypes.gradient_rounded_once`:
    float16, and bfloat16 with dense labels), as it computes those losses in
    float32; a half-precision backprop scaled by the upstream gradient would be
    rounded twice (float16 entries below its normal range, 6.1e-5, lost
    hundreds of ulps under a loss scale of about 1000). bfloat16 sparse
    losses stay in bfloat16 in TF, rounded twice, as here."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if _dtypes.gradient_rounded_once(kind, dtype.name) else dtype


def rows(kind, logits, labels, with_grad, over_logits=True):
    """``(loss, lse)`` or ``(loss, lse, backprop)`` of `kind` ("sparse": int labels
    ``[...]``; "dense": labels of the logits' shape) on the fused kernel; the
    backprop in `backprop_dtype`, in the logits' buffer if `over_logits` and
    that is their dtype (XLA copies the logits first where they are still
    needed), else in a fresh one."""
    acc = _dtypes.accumulator_name(logits.dtype.name)
    row = jax.ShapeDtypeStruct(logits.shape[:-1], acc)
    grad = backprop_dtype(kind, logits.dtype)
    shapes = (row, row) + ((jax.ShapeDtypeStruct(logits.shape, grad),) if with_grad else ())
    aliases = {0: 2} if with_grad and over_logits and grad == logits.dtype else None
    outputs = buffer_callback(_rows_body(kind, with_grad), shapes, vmap_method="broadcast_all",
                              input_output_aliases=aliases)(logits, labels)
    outputs = _jax_mesh.vary_like(outputs, logits, labels)   # (inside shard_map)
    return _jax_mesh.shard_as(outputs, (logits,) * len(outputs))   # (explicit mesh axes)
