"""The large-vocabulary functions on JAX arrays, under jit, grad and vmap.

Off the CPU, `cross_entropy` is `_array_math.token_losses` differentiated by JAX.
On the CPU both run the fused kernel through XLA buffer callbacks
(`_jax_cpu`; the linear head there for float32/float64), inside the same
`custom_vjp` rules: the forward makes the gradient of a mean or a sum in
the kernel's one pass, and the backward scales it. Elsewhere (and for a
half-precision linear head) they run `jax.numpy`:

`linear_cross_entropy` is a `jax.custom_vjp` over a `lax.scan` of chunks, each
chunk's logits made, used and dropped, so that one chunk of logits is alive
at a time. Each chunk adds ``dz·W`` to dx and ``dzᵀ·x`` to dW and ``Σ dz`` to
db (in float32 for half precision). For a mean or a sum that happens in the
forward, with the reduction's token weights, and the backward scales the
results; for ``"none"`` the forward makes the losses only and the backward
makes each chunk's logits again, with the upstream gradient of its tokens.
A call that is not differentiated (the custom_vjp's primal) makes no
gradient at all. The rules whose forward makes the gradient are registered
with ``optimize_remat``: under `jax.checkpoint`, which drops that residual,
the forward runs the primal (the loss only) and the backward the rule's
forward (the review's 3x the logits held: 2x, as optax).

Targets outside ``[0, V)``: concrete arrays raise TensorFlow's
`InvalidArgumentError`; traced ones give NaN losses for those tokens.
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from xent import _jax, _jax_mesh, _jax_rows
from xent._dtypes import accumulator_name
from xent._large_vocab import _array_math, _jax_cpu, _numpy

__all__ = ["cross_entropy", "linear_cross_entropy"]


def _accumulator(dtype):
    """float64 for float64, else float32 (half precision is computed in float32)."""
    return jnp.dtype(accumulator_name(jnp.dtype(dtype).name))


def _check(target, ignore_index, num_classes):
    """TensorFlow's range error for a concrete target (nothing under tracing), and
    a ValueError for an `ignore_index` the target's dtype cannot hold (JAX
    compares in that dtype: int32 unless x64 is enabled)."""
    info = np.iinfo(target.dtype)
    if not info.min <= ignore_index <= info.max:
        raise ValueError(f"ignore_index={ignore_index} does not fit the target's dtype "
                         f"{target.dtype} ([{info.min}, {info.max}]), in which JAX compares "
                         f"them; choose an ignore_index in that range")
    if not isinstance(target, jax.core.Tracer):
        _numpy.tokens(np.asarray(target), ignore_index, num_classes)


# --- on the CPU: the fused kernel through buffer callbacks -------------------------------------

@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _ce_tokens(x2, t, opts):
    """``[N]`` token losses on the kernel; the backward scales the forward's gradient."""
    valid = (t != opts.ignore_index).astype(_accumulator(x2.dtype))
    return _jax_cpu.ce(x2, t, valid, opts, with_grad=False)[0]


def _ce_tokens_fwd(x2, t, opts):
    valid = t != opts.ignore_index
    losses, grad = _jax_cpu.ce(x2, t, valid.astype(_accumulator(x2.dtype)), opts)
    return losses, (grad, jnp.zeros(0, x2.dtype), valid)


def _scaled_gradient(residuals, g):
    """The forward's gradient times the upstream `g` (``[N]`` or a scalar) row by
    row, rounded once to the logits' dtype, the empty array's of the residuals
    (a float16 gradient is float32 until it meets the upstream gradient,
    `_jax_cpu.grad_dtype`). Ignored tokens' rows stay 0 whatever g is, as
    torch's: 0 · NaN would be NaN (a NaN g on padding is common: an
    all-padding sequence's guarded 0/0)."""
    grad, like, valid = residuals
    return (grad * _row_factors(valid, g, grad.dtype)[:, None]).astype(like.dtype)


def _row_factors(valid, g, dtype):
    """``[N]`` factors of a gradient's rows: g, but 0 for an ignored token
    whose g is not finite (its row, 0, would become NaN). Where every g is
    finite, as a constant 1 (a ``.sum()``, a mean's upstream) is, XLA folds
    the choice and the product away (with ``where(valid, g, 0)`` it kept a
    pass over the logits-sized gradient: 215 against 195 ms a jitted step at
    4096x32000 float32, a review)."""
    return jnp.where(valid | jnp.isfinite(g), g, 0).astype(dtype)


def _ce_tokens_bwd(opts, residuals, g):
    """``grad ⊙ g[:, None]`` (as `_scaled_gradient`), by `_jax_rows.scale_rows`: on the
    CPU it writes the product over the gradient's own buffer, where a `jnp`
    product went to a fresh one (per-token losses reduced by the caller,
    ``.mean()`` or weighted: 2x the logits held, a review; now 1x)."""
    grad, like, valid = residuals
    factors = _row_factors(valid, g, _accumulator(grad.dtype))
    return _jax_rows.scale_rows(grad, factors, like.dtype), None   # (products rounded once)


_ce_tokens.defvjp(_ce_tokens_fwd, _ce_tokens_bwd, optimize_remat=True)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _ce_reduced(x2, t, opts):
    """The mean or sum on the kernel, its gradient made in the same pass."""
    w = _token_weights(t, opts, _accumulator(x2.dtype))
    return (_jax_cpu.ce(x2, t, w, opts, with_grad=False)[0] * w).sum()


def _ce_reduced_fwd(x2, t, opts):
    w = _token_weights(t, opts, _accumulator(x2.dtype))
    losses, grad = _jax_cpu.ce(x2, t, w, opts)
    return (losses * w).sum(), (grad, jnp.zeros(0, x2.dtype), t != opts.ignore_index)


def _ce_reduced_bwd(opts, residuals, g):
    """``grad · g`` (`_scaled_gradient`)."""
    return _scaled_gradient(residuals, g), None


_ce_reduced.defvjp(_ce_reduced_fwd, _ce_reduced_bwd, optimize_remat=True)


def cross_entropy(logits, target, opts, inplace_backward, return_grads):
    """`xent.cross_entropy` on JAX arrays (checked); `inplace_backward` has no effect (JAX
    arrays are immutable: on the CPU kernel the gradient always takes the logits'
    buffer where XLA can give it, `_jax_cpu.ce`). On the CPU the fused kernel
    runs (`_jax_cpu`), elsewhere `jax.numpy`."""
    _check(target, opts.ignore_index, logits.shape[-1])
    like = target
    logits, target = (_jax_mesh.mergeable(logits, logits.ndim - 1),
                      _jax_mesh.mergeable(target, target.ndim))
    x2, t = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    if _jax_cpu.available(logits, target):
        if opts.reduction == "none":
            return _per_token(_ce_tokens(x2, t, opts), like, logits.dtype)
        return _ce_reduced(x2, t, opts).astype(logits.dtype)
    losses = _array_math.token_losses(_jax._Ops, x2.astype(_accumulator(logits.dtype)), t, opts)
    if opts.reduction == "none":
        return _per_token(losses, like, logits.dtype)
    return _array_math.reduce(losses, target, opts).astype(logits.dtype)


def _per_token(losses, like, dtype):
    """``[N]`` token losses in the shape and the sharding of `like` (the caller's
    target, before `_jax_mesh.mergeable` gathered it), in `dtype`."""
    return _jax_mesh.shard_as((losses.reshape(like.shape).astype(dtype),), (like,))[0]


def _chunk_logits(xc, weight, bias):
    """``[C, V]`` logits of a chunk, computed and kept in the accumulator dtype."""
    acc = _accumulator(xc.dtype)
    return jnp.matmul(xc, weight.T, preferred_element_type=acc) + bias.astype(acc)[None, :]


def _in_chunks(x2, t, chunk, ignore_index):
    """x ``[k, C, H]`` and targets ``[k, C]``, padded with ignored tokens to k·C rows
    (C is `chunk`, or N when fewer tokens than that); ignored tokens' rows of x are 0.
    Tokens sharded over an explicit mesh are gathered first (`_jax_mesh.replicated`):
    under plain `jit` each device then runs every chunk (`jax.shard_map` splits them)."""
    x2, t = _jax_mesh.replicated(x2), _jax_mesh.replicated(t)
    n = x2.shape[0]
    chunk = min(chunk, max(n, 1))
    k = -(-n // chunk)
    pad = k * chunk - n
    x2 = jnp.where((t != ignore_index)[:, None], x2, 0)   # no inf/NaN of theirs reaches dW
    xs = jnp.pad(x2, ((0, pad), (0, 0))).reshape(k, chunk, x2.shape[1])
    ts = jnp.pad(t, (0, pad), constant_values=ignore_index).reshape(k, chunk)
    return xs, ts


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _linear_losses(x2, weight, bias, t, opts, chunk):
    """``[N]`` token losses of ``x2·Wᵀ + b`` (accumulator dtype), one chunk at a time."""
    return _linear_fwd(x2, weight, bias, t, opts, chunk)[0]


def _linear_fwd(x2, weight, bias, t, opts, chunk):
    xs, ts = _in_chunks(x2, t, chunk, opts.ignore_index)

    def step(carry, xt):
        z = _chunk_logits(xt[0], weight, bias)
        return carry, _array_math.token_losses(_jax._Ops, z, xt[1], opts)

    _, losses = jax.lax.scan(step, None, (xs, ts))
    losses, = _jax_mesh.shard_as((losses.reshape(-1)[:x2.shape[0]],), (x2,))   # (as the tokens)
    return losses, (x2, weight, bias, t)


def _chunk_grads(x2, weight, bias, t, g, opts, chunk):
    """``(losses [N], dx, dW, db)`` of Σ_i g_i·loss_i, one chunk's logits at a time.

    dW and db are summed in the accumulator dtype. The gradients come back in
    `_jax_cpu.grad_dtype` of their inputs' dtypes: float32 for float16, whose
    small entries would flush to zero before a loss scale multiplies them
    (`_reduced_bwd`); the inputs' own otherwise.
    """
    acc = _accumulator(x2.dtype)
    xs, ts = _in_chunks(x2, t, chunk, opts.ignore_index)
    g = _jax_mesh.replicated(g).astype(acc)   # (as the tokens: `_in_chunks`)
    gs = jnp.pad(g, (0, xs.shape[0] * xs.shape[1] - g.shape[0])).reshape(xs.shape[:2])

    def step(sums, xtg):
        xc, tc, gc = xtg
        z = _chunk_logits(xc, weight, bias)
        losses, vjp = jax.vjp(lambda z: _array_math.token_losses(_jax._Ops, z, tc, opts), z)
        dz = vjp(gc)[0]
        dxc = jnp.matmul(dz, weight.astype(acc)).astype(_jax_cpu.grad_dtype(x2.dtype))
        dw = sums[0] + jnp.matmul(dz.T, xc.astype(acc))
        return (dw, sums[1] + dz.sum(axis=0)), (losses, dxc)

    zeros = _jax_mesh.vary_like((jnp.zeros(weight.shape, acc), jnp.zeros(bias.shape, acc)),
                                x2, weight, bias, t, g)   # (the sums' type inside shard_map)
    (dw, db), (losses, dxs) = jax.lax.scan(step, zeros, (xs, ts, gs))
    n = x2.shape[0]
    losses, dx = _jax_mesh.shard_as((losses.reshape(-1)[:n], dxs.reshape(-1, x2.shape[1])[:n]),
                                    (x2, x2))   # (sharded as the tokens: `_in_chunks`)
    return (losses, dx, dw.astype(_jax_cpu.grad_dtype(weight.dtype)),
            db.astype(_jax_cpu.grad_dtype(bias.dtype)))


def _linear_bwd(opts, chunk, residuals, g):
    x2, weight, bias, t = residuals
    grads = _chunk_grads(x2, weight, bias, t, g, opts, chunk)[1:]
    return _as_inputs(grads, (x2, weight, bias)) + (None,)


def _as_inputs(grads, inputs):
    """``(dx, dW, db)`` in their inputs' dtypes, each summed over the mesh axes it
    varies over and its input does not (`_jax_mesh.sum_to_type_of`: a weight
    replicated over a `shard_map` gets the sum of the shards' gradients);
    `inputs` may be empty slices of them."""
    return tuple(_jax_mesh.sum_to_type_of(d.astype(a.dtype), a) for d, a in zip(grads, inputs))


def _witnesses(*arrays):
    """Empty slices of `arrays`: residuals that keep only their types (`_as_inputs`)."""
    return tuple(a.reshape(-1)[:0] for a in arrays)


_linear_losses.defvjp(_linear_fwd, _linear_bwd)


def _token_weights(t, opts, dtype):
    """d result / d loss_i of a mean or sum: 1/count (mean) or 1, 0 where ignored."""
    valid = t != opts.ignore_index
    if opts.reduction == "sum":
        return valid.astype(dtype)
    return valid.astype(dtype) / jnp.maximum(valid.sum(), 1).astype(dtype)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _linear_reduced(x2, weight, bias, t, opts, chunk):
    """The mean or sum of the token losses; its gradients are made in the forward."""
    losses = _linear_fwd(x2, weight, bias, t, opts, chunk)[0]
    return (losses * _token_weights(t, opts, _accumulator(x2.dtype))).sum()


def _reduced_fwd(x2, weight, bias, t, opts, chunk):
    w = _token_weights(t, opts, _accumulator(x2.dtype))
    losses, dx, dw, db = _chunk_grads(x2, weight, bias, t, w, opts, chunk)
    return (losses * w).sum(), ((dx, dw, db), _witnesses(x2, weight, bias),
                                t != opts.ignore_index)


def _reduced_bwd(opts, chunk, residuals, g):
    """The forward's gradients times g; ignored tokens' rows of dx stay 0 (`_row_factors`)."""
    (dx, *others), inputs, valid = residuals   # (others: dW, and db with a bias)
    grads = [dx * _row_factors(valid, g, dx.dtype)[:, None]] + [d * g.astype(d.dtype)
                                                                 for d in others]
    return _as_inputs(grads, inputs) + (None,)


_linear_reduced.defvjp(_reduced_fwd, _reduced_bwd, optimize_remat=True)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _linear_cpu_tokens(x2, weight, bias, t, opts, chunk):
    """``[N]`` token losses through the CPU chunk loop; the backward runs it again."""
    return _linear_cpu_tokens_fwd(x2, weight, bias, t, opts, chunk)[0]


def _linear_cpu_tokens_fwd(x2, weight, bias, t, opts, chunk):
    ones = jnp.ones(t.shape, _accumulator(x2.dtype))
    return _jax_cpu.linear(x2, weight, bias, t, ones, opts, chunk, False)[0], (x2, weight, bias, t)


def _linear_cpu_tokens_bwd(opts, chunk, residuals, g):
    x2, weight, bias, t = residuals
    grads = _jax_cpu.linear(x2, weight, bias, t, g.astype(_accumulator(x2.dtype)),
                            opts, chunk, True)[1:]
    return _as_inputs(grads, (x2, weight, bias)) + (None,)


_linear_cpu_tokens.defvjp(_linear_cpu_tokens_fwd, _linear_cpu_tokens_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _linear_cpu_reduced(x2, weight, bias, t, opts, chunk):
    """The mean or sum through the CPU chunk loop, the gradients made in the forward."""
    w = _token_weights(t, opts, _accumulator(x2.dtype))
    return (_jax_cpu.linear(x2, weight, bias, t, w, opts, chunk, False)[0] * w).sum()


def _linear_cpu_reduced_fwd(x2, weight, bias, t, opts, chunk):
    w = _token_weights(t, opts, _accumulator(x2.dtype))
    losses, dx, dw, db = _jax_cpu.linear(x2, weight, bias, t, w, opts, chunk, True)
    return (losses * w).sum(), ((dx, dw, db), _witnesses(x2, weight, bias),
                                t != opts.ignore_index)


_linear_cpu_reduced.defvjp(_linear_cpu_reduced_fwd, _reduced_bwd, optimize_remat=True)


def linear_cross_entropy(x, weight, bias, target, opts, chunk, return_grads):
    """`xent.linear_cross_entropy` on JAX arrays (checked).

    mean and sum make the gradients in the forward (three matmuls per chunk,
    the scan's one pass; `jax.grad` then only scales them); ``none`` makes the
    losses in the forward and each chunk's logits again in the backward.
    """
    _check(target, opts.ignore_index, weight.shape[0])
    b = jnp.zeros(weight.shape[0], x.dtype) if bias is None else bias
    like = target
    x, target = _jax_mesh.mergeable(x, x.ndim - 1), _jax_mesh.mergeable(target, target.ndim)
    x2, t = x.reshape(-1, x.shape[-1]), target.reshape(-1)
    if _jax_cpu.available(x, weight, bias, target) and x.dtype in (jnp.float32, jnp.float64):
        linear = _linear_cpu_tokens if opts.reduction == "none" else _linear_cpu_reduced
        result = linear(x2, weight, b, t, opts, chunk)
        if opts.reduction == "none":
            return _per_token(result, like, x.dtype)
        return result.astype(x.dtype)
    if opts.reduction == "none":
        return _per_token(_linear_losses(x2, weight, b, t, opts, chunk), like, x.dtype)
    return _linear_reduced(x2, weight, b, t, opts, chunk).astype(x.dtype)
