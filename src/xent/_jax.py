"""JAX backend: `jax.Array` in, `jax.Array` out, under `jit`, `grad`, `jvp` and `vmap`.

Imported only when a JAX array reaches a public function (see
`xent._backend`). On the CPU the loss runs the fused kernel through an XLA
buffer callback (`xent._jax_cpu`, zero-copy): the forward of a
differentiated call writes the loss and TF's backprop in one pass, the
backward scales that backprop by the upstream gradient (a call that is not
differentiated writes the loss only). The kernel's backprop output is itself
a `custom_jvp` (`_kernel_rows`) whose rule is `jax.numpy` math, so second
derivatives (`jax.hessian`) are TensorFlow's there too.

Elsewhere the per-row math is `xent._array_kernels` in `jax.numpy`, so it
stays on the arrays' device (no host callback).

Each loss is a `jax.custom_jvp` whose rule is linear in the tangents, with
TF's backprop as the coefficient: ``d loss = Σ_j backprop_j·dx_j`` (dense
labels: ``− Σ_j log_softmax_j·dy_j``). Forward mode (`jax.jvp`, `jacfwd`,
`linearize`) is the rule; reverse mode is its transpose, TensorFlow's
gradient: logits get ``g * (softmax - target)``, dense labels
``-g * log_softmax(logits)``. Higher orders (``jax.grad(jax.grad(...))``,
`jax.hessian`) differentiate the rules: exact in the logits; the logits'
gradient has no derivative in the dense labels, as TensorFlow's registered
gradient (its backprop stops the labels' gradient): ``hessian(argnums=(0,
1))[0][1]`` is 0, while ``[1][0]``, the labels' gradient differentiated in
the logits, is exact.
On the CPU kernel the backward's product is `xent._jax_rows`' (the backprop
scaled in its own buffer); elsewhere XLA fuses it into the backward, and
outside `jit` the pullback keeps the coefficient.

Labels outside ``[0, C)``: with concrete arrays, TensorFlow's
`InvalidArgumentError` before any work; traced (under `jit` or `vmap`), the
bad rows' loss and gradient are NaN, as TensorFlow on a GPU.
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from xent import _array_kernels, _dtypes, _jax_cpu, _jax_mesh, _jax_rows, _validate
from xent.errors import InvalidArgumentError


class _Ops:
    """The operations `xent._array_kernels` needs, as `jax.numpy` calls."""

    exp = staticmethod(jnp.exp)
    tanh = staticmethod(jnp.tanh)
    isfinite = staticmethod(jnp.isfinite)
    log = staticmethod(jnp.log)
    where = staticmethod(jnp.where)
    stop_gradient = staticmethod(jax.lax.stop_gradient)

    @staticmethod
    def logsumexp_last(x):
        """``log Σ_j exp(x_j)`` over the last axis (shifted by the finite row max)."""
        return jax.nn.logsumexp(x, axis=-1)

    @staticmethod
    def max_last(x):
        return jnp.max(x, axis=-1, keepdims=True)

    @staticmethod
    def sum_last(x):
        return jnp.sum(x, axis=-1, keepdims=True)

    @staticmethod
    def take_last(x, idx):
        return jnp.take_along_axis(x, idx[..., None], axis=-1)[..., 0]

    @staticmethod
    def one_hot(idx, num_classes, dtype):
        return jax.nn.one_hot(idx, num_classes, dtype=dtype)

    @staticmethod
    def zeros_rows(x):
        return jnp.zeros((*x.shape[:-1], 1), x.dtype)


def _accumulate(logits):
    """`logits` in the accumulator dtype (`_dtypes.accumulator_name`)."""
    return logits.astype(_dtypes.accumulator_name(logits.dtype.name))


@jax.custom_jvp
def _sparse(logits, labels):
    """Per-row sparse loss ``[...]`` of logits ``[..., C]``, accumulator dtype."""
    return _array_kernels.sparse_rows(_Ops, _accumulate(logits), labels)[0]


def _is_zero(tangent):
    """Whether `tangent` is a symbolic zero: its input is not differentiated (a rule
    registered with ``symbolic_zeros=True``; outside `jit` nothing is then made for it)."""
    return isinstance(tangent, SymbolicZero)


def _tangent_sum(loss, terms):
    """``Σ_terms Σ_j coefficient_j·tangent_j`` per row, in the loss's dtype, from
    ``(coefficient [..., C], tangent [..., C])`` pairs (zeros when there are none).

    An einsum rather than ``sum(coefficient * tangent)``: its transpose (the
    backward) is one product ``g[..., None]·coefficient``, where the sum's
    first made ``g`` logits-sized (outside `jit`: 80 against 103 ms for a
    512x32000 sparse `jax.grad` on the kernel path, Zen 4). Under `jit` both
    compile to the same work."""
    d_loss = None
    for coefficient, tangent in terms:
        term = jnp.einsum("...c,...c->...", coefficient.astype(loss.dtype), tangent.astype(loss.dtype),
                          **_jax_mesh.rows_sharding(coefficient))
        d_loss = term if d_loss is None else d_loss + term
    return jnp.zeros_like(loss) if d_loss is None else d_loss


@_sparse.defjvp
def _sparse_jvp(primals, tangents):
    """``d loss = Σ_j backprop_j·dx_j``: reverse mode is its transpose, logits get
    ``g·backprop``, TF's gradient."""
    logits, labels = primals
    x = _accumulate(logits)
    loss, norm = _array_kernels.sparse_rows(_Ops, x, labels)
    backprop = _array_kernels.sparse_grad(_Ops, x, labels, norm)
    return loss, _tangent_sum(loss, [(backprop, tangents[0])])


@jax.custom_jvp
def _dense(logits, labels):
    """Per-row dense loss of logits and labels ``[..., C]``, accumulator dtype."""
    return _array_kernels.dense_rows(_Ops, _accumulate(logits), _accumulate(labels))[0]


def _dense_jvp(primals, tangents):
    """``d loss = Σ_j backprop_j·dx_j − Σ_j log_softmax_j·dy_j``: reverse mode gives
    logits ``g·backprop`` and labels ``−g·log_softmax(logits)``, TF's gradient.
    A term whose tangent is a symbolic zero is not made (`_tangent_sum`)."""
    logits, labels = primals
    dx, dy = tangents
    # (labels widened too: half-precision labels times float32 log-softmax is an
    # implicit promotion, which JAX's numpy_dtype_promotion("strict") refuses)
    x, labels = _accumulate(logits), _accumulate(labels)
    loss, norm = _array_kernels.dense_rows(_Ops, x, labels)
    terms = []
    if not _is_zero(dx):
        terms.append((_array_kernels.dense_grad(_Ops, x, labels, norm), dx))
    if not _is_zero(dy):
        terms.append((-_array_kernels.log_softmax(_Ops, x, norm), dy))
    return loss, _tangent_sum(loss, terms)


_dense.defjvp(_dense_jvp, symbolic_zeros=True)


# --- on the CPU: the fused kernel through a buffer callback -------------------------------------

@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _kernel_rows(kind, over_logits, logits, labels):
    """``(loss, lse, backprop)`` from one kernel pass (`_jax_cpu.rows`), the backprop
    written over the logits' buffer if `over_logits` (False where the caller
    reads the logits again: XLA would copy them)."""
    return _jax_cpu.rows(kind, logits, labels, with_grad=True, over_logits=over_logits)


@_kernel_rows.defjvp
def _kernel_rows_jvp(kind, over_logits, primals, tangents):
    """Tangents from the kernel's backprop and p = softmax(logits) (second order only):

        d loss     = Σ_j backprop_j·dx_j − Σ_j log_softmax_j·dy_j   (dense labels)
        d lse      = Σ_j p_j·dx_j
        d backprop = p ⊙ (dx − Σ_j p_j·dx_j)

    (TF's registered gradient passes nothing from the backprop to the labels.)
    """
    logits, labels = primals
    dx, dy = tangents
    loss, lse, backprop = _kernel_rows(kind, False, logits, labels)   # (p needs the logits)
    acc = lse.dtype
    bp, dx = backprop.astype(acc), dx.astype(acc)
    log_p = _array_kernels.log_softmax(_Ops, logits.astype(acc))   # (where a label is out
    p = jnp.exp(log_p)   # of range, the kernel's lse and backprop are NaN, and the row's
    p_dx = jnp.sum(p * dx, axis=-1)   # derivatives TF's: softmax's)
    d_loss = jnp.sum(bp * dx, axis=-1)
    d_backprop = p * (dx - p_dx[..., None])
    if kind == "dense":   # (log_p, not logits - lse: the kernel's lse = m + log S is rounded
        # at m's scale, an error of 8.7e-4 at logits near 1e5: an independent review)
        d_loss = d_loss - jnp.sum(log_p * dy.astype(acc), axis=-1)
    return (loss, lse, backprop), (d_loss, p_dx, d_backprop.astype(backprop.dtype))


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _on_kernel(kind, logits, labels):
    """Per-row loss on the kernel (loss only, when not differentiated)."""
    return _jax_cpu.rows(kind, logits, labels, with_grad=False)[0]


def _on_kernel_jvp(kind, primals, tangents):
    """The loss's tangent from the kernel's backprop (one pass for loss and backprop):

        d loss = Σ_j backprop_j·dx_j − Σ_j log_softmax_j·dy_j   (dense labels)

    Linear in the tangents, so reverse mode is its transpose: logits get
    ``g·backprop`` (each product rounded once to the logits' dtype), dense
    labels ``−g·log_softmax(logits)``; forward mode (`jax.jvp`, `jacfwd`)
    is the rule itself. A term whose tangent is a symbolic zero is not made.
    """
    logits, labels = primals
    dx, dy = tangents
    log_softmax_term = kind == "dense" and not _is_zero(dy)   # (needs the logits after)
    loss, lse, backprop = _kernel_rows(kind, not log_softmax_term, logits, labels)
    terms = []
    if log_softmax_term:   # (made again from the logits: see `_kernel_rows_jvp`)
        terms.append((-_array_kernels.log_softmax(_Ops, logits.astype(lse.dtype)), dy))
    d_loss = _tangent_sum(loss, terms)
    if not _is_zero(dx):   # (its transpose scales the backprop in its own buffer: `_jax_rows`)
        on_logits = _jax_rows.rows_dot(backprop, dx, loss.dtype)
        d_loss = on_logits + d_loss if terms else on_logits
    return loss, d_loss


_on_kernel.defjvp(_on_kernel_jvp, symbolic_zeros=True)


def _check_labels(labels, num_classes):
    """TensorFlow's error for concrete labels; traced ones give NaN rows instead."""
    if not isinstance(labels, jax.core.Tracer):
        _validate.labels_in_range(np.asarray(labels), num_classes)


def _dense_rows(labels, logits):
    """Labels and logits broadcast to ``[rows, C]``, and the loss's shape.

    `_validate.dense_layout` is the rule.
    """
    x_shape, y_shape, rows, loss_shape = _validate.dense_layout(logits.shape, labels.shape)
    y2 = jnp.broadcast_to(jnp.reshape(labels, y_shape), rows)
    return y2, jnp.broadcast_to(jnp.reshape(logits, x_shape), rows), loss_shape


def _backprop(grad_of, logits, labels):
    """TF's backprop in the logits' dtype, as plain (differentiable) jnp."""
    x = _accumulate(logits)
    return grad_of(_Ops, x, labels, _array_kernels.normaliser(_Ops, x)).astype(logits.dtype)


# The arguments whose integers are class indices (sparse labels, targets).
_CLASS_INDICES = ("labels", "target", "y_true")


def _held(array, name):
    """NumPy `array`, once every value is one JAX can hold: without
    ``jax_enable_x64`` JAX holds int64 as int32 and uint64 as uint32, and
    `jnp.asarray` wraps what does not fit (a label 2**32 + 1 would become
    class 1). Class indices that do not fit raise `InvalidArgumentError`
    naming `name` and the value; other integers (weights, which are cast to
    a float dtype anyway) become floats."""
    held = jax.dtypes.canonicalize_dtype(array.dtype)
    if array.dtype.kind not in "iu" or held == array.dtype or array.size == 0:
        return array
    limits = np.iinfo(held)
    low, high = array.min(), array.max()
    if low >= limits.min and high <= limits.max:
        return array
    if name not in _CLASS_INDICES:
        return array.astype(np.float64)
    raise InvalidArgumentError(
        f"{name} holds {low if low < limits.min else high}, which JAX cannot hold: without "
        f"`jax_enable_x64` it holds {array.dtype} as {held}, whose values lie in "
        f"[{limits.min}, {limits.max}]")


class JaxBackend:
    """JAX arrays in, JAX arrays out; everything traceable."""

    name = "jax"
    xp = jnp

    @staticmethod
    def compiling():
        """False: `jax.jit` traces arrays, and NumPy calls on Python lists run as usual."""
        return False

    @staticmethod
    def asarray(x, name="input"):
        """`x` as a JAX array; others convert as `tf.convert_to_tensor` first (errors
        name `name`: `_dtypes.to_array`)."""
        return x if isinstance(x, jax.Array) else jnp.asarray(_held(_dtypes.to_array(x, name), name))

    @staticmethod
    def dtype_name(x):
        """The dtype's name, e.g. ``"bfloat16"``."""
        return jnp.asarray(x).dtype.name

    @staticmethod
    def astype(x, name):
        """Cast to the dtype called `name` (Python scalars become arrays).

        64-bit names give 32-bit arrays unless ``jax_enable_x64`` is set, as
        every JAX array does.
        """
        return jnp.asarray(x, dtype=jax.dtypes.canonicalize_dtype(jnp.dtype(name)))

    @staticmethod
    def size(x):
        """Number of elements (static, also under tracing)."""
        return x.size

    @staticmethod
    def stop_gradient(x):
        """`x` with a zero derivative."""
        return jax.lax.stop_gradient(x)

    @staticmethod
    def finish(x):
        """Arrays are handed back as they are (0-d ones included)."""
        return x

    @staticmethod
    def sparse_xent(labels, logits):
        """Per-row loss ``[...]``, accumulator dtype, differentiable in `logits`."""
        _check_labels(labels, logits.shape[-1])
        if _jax_cpu.available(logits, labels):
            return _on_kernel("sparse", logits, labels)
        return _sparse(logits, labels)

    @staticmethod
    def dense_xent(labels, logits):
        """Per-row loss, accumulator dtype, differentiable in `logits` and `labels`."""
        y2, x2, loss_shape = _dense_rows(labels, logits)
        if x2.shape[-1] == 0:   # no classes: TensorFlow's loss is 0 (and the gradients empty)
            return jnp.zeros(loss_shape, _accumulate(x2).dtype)
        if _jax_cpu.available(x2, y2):
            return _on_kernel("dense", x2, y2).reshape(loss_shape)
        return _dense(x2, y2).reshape(loss_shape)

    @staticmethod
    def sparse_loss_and_grad(labels, logits, grad=True):
        """``(loss, backprop)`` of the raw op; autodiff of the backprop is TF's second order."""
        loss = JaxBackend.sparse_xent(labels, logits)
        return loss, _backprop(_array_kernels.sparse_grad, logits, labels)

    @staticmethod
    def dense_loss_and_grad(labels, logits, grad=True):
        """``(loss, backprop)`` of the dense raw op, labels broadcast to the logits."""
        labels, logits, _ = _dense_rows(labels, logits)
        if logits.shape[-1] == 0:   # (as `dense_xent`; the backprop is as empty as the logits)
            return jnp.zeros(logits.shape[:-1], _accumulate(logits).dtype), jnp.zeros_like(logits)
        return _dense(logits, labels), _backprop(_array_kernels.dense_grad, logits, labels)
