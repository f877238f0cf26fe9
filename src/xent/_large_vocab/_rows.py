"""The loss of each token of a block of logits, and its gradient, on the fused kernel.

For one token with logits ``z`` (``V`` classes, after the softcap
``z <- c·tanh(z/c)`` when one is set), target ``y``, ``lse = logsumexp(z)``
and ``p = softmax(z)``:

    nll   = lse - z_y
    loss  = (1 - ε)·nll + ε·(lse - mean_j z_j) + λ·lse²
          = nll + ε·mean_j (z_y - z_j) + λ·lse²
    dloss/dz_j = a·p_j - (1 - ε)·[j = y] - ε/V,      a = 1 + 2λ·lse

and through the softcap ``dz_j/draw_j = 1 - (z_j/c)²``. The kernel of
`xent._core.kernels()` gives ``nll``, ``lse`` and ``p - onehot(y)`` in one
pass, each row's gradient already times its weight; the options are per-row
corrections of those on the block while it is in cache. A token whose target is ``ignore_index`` has loss 0 and gradient 0.

Infinite and NaN rows give inf and NaN here as in torch, silently: the one
caller, `xent._large_vocab._cross_entropy.losses_and_gradient`, runs under
`xent._errstate.quiet` (NumPy's floating-point errors ignored).
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


# Entries summed in float32 before the partial sums go on in float64 (`_row_means`).
_SUM_CHUNK = 256


def _row_means(z):
    """``mean_j z_j`` of each row of ``[n, V]`` `z`, float64: pairwise float32 sums of
    `_SUM_CHUNK` entries (float64 for float64 logits), added in float64. A
    row whose sum overflows there (or holds an infinity or NaN) is redone as
    a float64 sum of ``z_j / V``, each term scaled first: float64 logits
    near 1.8e308 overflow a float64 sum too (a row of 1.7e308, 1.7e308 and 0
    gave a loss of -inf). 29 ms for 4096x32000 float32 against 23 for
    NumPy's float32 mean and 77 for its float64 one (AMD Zen 4)."""
    n, v = z.shape
    whole = v // _SUM_CHUNK * _SUM_CHUNK
    total = z[:, :whole].reshape(n, -1, _SUM_CHUNK).sum(axis=2).sum(axis=1, dtype=np.float64)
    if whole < v:
        total += z[:, whole:].sum(axis=1, dtype=np.float64)
    means = total / v
    redo = ~np.isfinite(means)
    if redo.any():
        means[redo] = np.add.reduce(z[redo].astype(np.float64) / v, axis=1)
    return means


def _smoothing_term(z, labels, eps):
    """``ε·mean_j (z_y - z_j) = ε·z_y - ε·mean_j z_j`` of each row, float64: the
    smoothed loss less nll, with the row means in float64 (`_row_means`),
    each side scaled by ε before the difference (which for float64 logits
    near 1.8e308 could overflow where the term does not). ``lse - mean_j
    z_j`` with a float32 mean gave -inf for a row of ±3e38 (the float64 loss
    is 2.25e37) and for a row of 2e38 and 0 (1e37), and 1.9e-5 relative
    error for logits around 1e4 (now 6e-6; torch's float32: 1.1e-7)."""
    z_y = z[np.arange(z.shape[0]), labels].astype(np.float64)
    return eps * z_y - eps * _row_means(z)


def _loss(nll, lse, term, opts):
    """Per-token loss from the kernel's nll and lse and the rows' `_smoothing_term`
    (see the module's formula).

    Where nll is +inf (a target logit of -inf, or a float64 difference that
    overflows) the smoothing term may be -inf or NaN; the loss is then
    ``(1 - ε)·nll + ε·inf`` (both terms of the first form are non-negative):
    +inf, or NaN for ε = 1, as torch's ``F.cross_entropy`` gives."""
    loss = nll
    if opts.label_smoothing:
        loss = nll + term
        infinite = np.isposinf(nll)
        if infinite.any():
            eps = opts.label_smoothing
            loss[infinite] = (1.0 - eps) * np.inf + eps * np.inf
    if opts.z_loss:
        loss = loss + opts.z_loss * lse * lse   # (an lse past 1.8e19 squares to inf, as in torch)
    return loss.astype(nll.dtype, copy=False)


def _correct_gradient(out, labels, nll, lse, weights, opts):
    """Turn the kernel's ``w·(p - onehot)`` in `out` into ``w·dloss/dz`` (capped
    logits), in place: ``a·out - w·ε/V`` off the target, with ``a = 1 + 2λ·lse``.

    The target's entry is made afresh in float64, ``w·(a·p_y - (1 - ε) -
    ε/V)``, as ``w·((a·p_y - 1) + ε·(1 - 1/V))`` with ``p_y = exp(-nll)`` and
    ``a`` from a float64 lse: adding ``a - 1`` or ``ε`` to the kernel's rounded
    ``p_y - 1`` lost its -1 to rounding once a passed 2**24 (a huge lse),
    where torch keeps it, and with ε near 1 cancelled the bits of ``p_y`` (a
    relative error of 6e-2 at ε = 1, V = 32000, where torch's float32 has
    1e-3); ``a`` in float32 kept ``2λ·lse`` to 6e-8 beside 1 (3.4e-5 relative
    error with one class); one class with smoothing alone gives exactly 0, as
    torch does (``1 - 0.9 - 0.1`` is not 0 in float64).
    """
    rows, eps = np.arange(out.shape[0]), opts.label_smoothing
    if not (eps or opts.z_loss):
        return   # (a softcap alone: the kernel's gradient, its derivative applied later)
    a = 1.0 + 2.0 * opts.z_loss * lse.astype(np.float64) if opts.z_loss else 1.0
    if opts.z_loss:
        out *= a.astype(out.dtype)[:, None]
    if eps:
        out -= (weights * (eps / out.shape[1])).astype(out.dtype)[:, None]
    on_label = weights * ((a * np.exp(-nll.astype(np.float64)) - 1.0)
                          + eps * (1.0 - 1.0 / out.shape[1]))
    out[rows, labels] = on_label.astype(out.dtype)


def token_losses(z, labels, valid, opts, weights=None, out=None):
    """Per-token loss of a block and, when `out` is given, its weighted gradient.

    Args:
      z: ``[n, V]`` logits (not modified unless `out` is z): any float dtype
        for the plain loss (`Options.plain`), else float32 or float64.
      labels: ``[n]`` int64 targets in ``[0, V)`` where `valid` (any value elsewhere).
      valid: ``[n]`` bool, False for tokens to ignore.
      opts: `xent._large_vocab._options.Options`.
      weights: ``[n]`` factors of each token's gradient (d result / d loss_i);
        only with `out`.
      out: None (loss only), or an ``[n, V]`` array (may be z; z's dtype
        unless plain) that receives ``weights_i · dloss_i/dz_i`` (0 on
        ignored rows).

    Returns:
      ``[n]`` losses in the accumulator dtype, 0 for ignored tokens.

    The plain loss is one kernel pass, the weights folded into it; the
    options correct the kernel's results afterwards (see the module doc).
    """
    labels = np.where(valid, labels, 0).astype(np.int64, copy=False)
    if out is not None:
        weights = np.where(valid, weights, 0.0)
    if opts.plain:
        nll, lse = _core.kernels().sparse_rows(z, labels, out, weights)
        loss = nll
    else:
        loss = _with_options(z, labels, opts, weights, out)
    if out is not None and not valid.all():
        out[~valid] = 0
    return np.where(valid, loss, 0).astype(loss.dtype, copy=False)


def _with_options(z, labels, opts, weights, out):
    """`token_losses` with smoothing, z-loss or softcap: the kernel, then corrections."""
    deriv = None
    if opts.softcap is not None:
        z, deriv = _capped(z, opts.softcap, out)
    term = _smoothing_term(z, labels, opts.label_smoothing) if opts.label_smoothing else None
    nll, lse = _core.kernels().sparse_rows(z, labels, out, weights)
    if out is not None:
        _correct_gradient(out, labels, nll, lse, weights.astype(lse.dtype), opts)
        if deriv is not None:
            out *= deriv
    return _loss(nll, lse, term, opts)
