"""The loss of each token of a block of logits, and its gradient, on the fused kernel.

For one token with logits ``z`` (``V`` classes, after the softcap
``z <- c·tanh(z/c)`` when one is set), target ``y``, ``lse = logsumexp(z)``
and ``p = softmax(z)``:

    nll   = lse - z_y
    loss  = (1 - ε)·nll + ε·(lse - mean_j z_j) + λ·lse²
    dloss/dz_j = a·p_j - (1 - ε)·[j = y] - ε/V,      a = 1 + 2λ·lse

and through the softcap ``dz_j/draw_j = 1 - (z_j/c)²``. The kernel of
`xent._core.kernels()` gives ``nll``, ``lse`` and ``p - onehot(y)`` in one
pass; the options are per-row corrections of those on the block while it is
in cache. A token whose target is ``ignore_index`` has loss 0 and gradient 0.
"""
import numpy as np

from xent import _core

__all__ = ["token_losses"]


def _capped(z, cap, out):
    """``cap·tanh(z/cap)`` into `out` (a new array if None), and ``1 - tanh²`` (new)."""
    t = np.multiply(z, 1.0 / cap, dtype=z.dtype)
    np.tanh(t, out=t)
    out = np.multiply(t, cap, out=out, dtype=z.dtype)
    np.multiply(t, t, out=t)
    np.subtract(1.0, t, out=t)
    return out, t


def _loss(nll, lse, mean_z, opts):
    """Per-token loss from the kernel's nll and lse (see the module's formula)."""
    loss = nll
    if opts.label_smoothing:
        eps = opts.label_smoothing
        loss = (1.0 - eps) * nll + eps * (lse - mean_z)
    if opts.z_loss:
        loss = loss + opts.z_loss * lse * lse
    return loss.astype(nll.dtype, copy=False)


def _correct_gradient(out, labels, lse, weights, opts):
    """Turn ``p - onehot`` in `out` into ``weights · dloss/dz`` (capped logits), in place."""
    a = 1.0 + 2.0 * opts.z_loss * lse if opts.z_loss else None
    scale = weights if a is None else weights * a
    if not np.all(scale == 1):
        out *= scale.astype(out.dtype, copy=False)[:, None]
    eps = opts.label_smoothing
    if eps:
        out -= (weights * (eps / out.shape[1])).astype(out.dtype)[:, None]
    if a is not None or eps:
        on_label = weights * ((a - 1.0 if a is not None else 0.0) + eps)
        out[np.arange(out.shape[0]), labels] += on_label.astype(out.dtype)


def token_losses(z, labels, valid, opts, weights=None, out=None):
    """Per-token loss of a block and, when `out` is given, its weighted gradient.

    Args:
      z: ``[n, V]`` float32 or float64 logits (not modified unless `out` is z).
      labels: ``[n]`` int64 targets in ``[0, V)`` where `valid` (any value elsewhere).
      valid: ``[n]`` bool, False for tokens to ignore.
      opts: `xent._large_vocab._options.Options`.
      weights: ``[n]`` factors of each token's gradient (d result / d loss_i);
        only with `out`.
      out: None (loss only), or an ``[n, V]`` array of z's dtype (may be z) that
        receives ``weights_i · dloss_i/dz_i`` (0 on ignored rows).

    Returns:
      ``[n]`` losses in z's dtype, 0 for ignored tokens.
    """
    labels = np.where(valid, labels, 0).astype(np.int64, copy=False)
    deriv = None
    if opts.softcap is not None:
        z, deriv = _capped(z, opts.softcap, out)
    mean_z = z.mean(axis=1) if opts.label_smoothing else None
    if out is None:
        nll, lse = _core.kernels().sparse_rows(z, labels)
    else:
        nll, lse = _core.kernels().sparse_rows(z, labels, out)
        _correct_gradient(out, labels, lse, np.where(valid, weights, 0).astype(lse.dtype), opts)
        if deriv is not None:
            out *= deriv
        out[~valid] = 0
    return np.where(valid, _loss(nll, lse, mean_z, opts), 0).astype(z.dtype, copy=False)
