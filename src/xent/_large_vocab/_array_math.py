"""The per-token loss in a framework's own ops, differentiated by its autodiff.

For torch tensors off the CPU and for JAX arrays: the same formula as
`xent._large_vocab._rows` (which is the fused kernel plus corrections),

    z    <- c·tanh(z/c)                          (softcap c)
    lse  = m + log Σ_j exp(z_j - m),  m = max_j z_j (a constant for autodiff)
    nll  = log Σ_j exp(z_j - m) - (z_y - m)     (= lse - z_y, shifted: precise for large z)
    loss = (1 - ε)·nll + ε·(lse - mean_j z_j) + λ·lse²
         = (1 - ε)·nll + ε·log Σ_j exp(z_j - m) + Σ_j (m·s - z_j·s) + λ·lse²,  s = ε/V

(every smoothing term non-negative and scaled before it is summed: a target
logit of -inf gives +inf, not inf - inf, and a row of ±3e38 no overflow)

0 for ignored tokens, whose logits are set to 0 first (so that an inf or NaN
there makes no NaN gradient); a token whose target is outside ``[0, V)`` gets NaN
logits, hence a NaN loss and gradient (no host sync is spent on a range
check here). `ops` is a backend's `_Ops` (tanh, where, logsumexp_last,
sum_last, take_last).
"""
__all__ = ["token_losses", "reduce"]


def token_losses(ops, z, targets, opts):
    """``[n]`` losses of ``[n, V]`` logits `z` (the accumulator dtype) and int `targets` ``[n]``."""
    num_classes = z.shape[-1]
    valid = targets != opts.ignore_index
    z = ops.where(valid[..., None], z, 0.0)
    if opts.softcap is not None:
        z = opts.softcap * ops.tanh(z * (1.0 / opts.softcap))
    in_range = (targets >= 0) & (targets < num_classes)
    # a bad target's row becomes NaN, so its loss and gradient are NaN (TensorFlow on a GPU)
    z = z + ops.where(in_range | ~valid, 0.0, float("nan"))[..., None]
    m = ops.stop_gradient(ops.max_last(z))[..., 0]
    log_s = ops.logsumexp_last(z - m[..., None])
    z_y = ops.take_last(z, ops.where(in_range, targets, 0 * targets))
    loss = log_s - (z_y - m)   # (lse - z_y with both shifted first: no cancellation)
    lse = m + log_s
    if opts.label_smoothing:   # (see the module doc)
        eps = opts.label_smoothing
        s = eps / num_classes
        spread = ops.sum_last(m[..., None] * s - z * s)[..., 0]
        loss = (1.0 - eps) * loss + eps * log_s + spread
    if opts.z_loss:
        loss = loss + opts.z_loss * lse * lse
    return ops.where(valid, loss, 0.0)


def reduce(losses, target, opts):
    """The mean over tokens not ignored (0 if none), the sum, or ``[...]`` per token
    (`losses` ``[N]`` and `target` ``[...]`` are torch tensors or JAX arrays alike)."""
    if opts.reduction == "none":
        return losses.reshape(target.shape)
    total = losses.sum()
    if opts.reduction == "sum":
        return total
    count = (target != opts.ignore_index).sum().clip(min=1)
    return total / _in_dtype_of(count, total)


def _in_dtype_of(value, like):
    """`value` cast to `like`'s dtype (torch's ``.to``, JAX's ``.astype``): explicit,
    as JAX's ``numpy_dtype_promotion("strict")`` asks of a float over an int."""
    return value.astype(like.dtype) if hasattr(value, "astype") else value.to(like.dtype)
