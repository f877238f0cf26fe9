"""`cross_entropy` on NumPy arrays: one kernel pass, or blocks of rows finished in cache.

The plain loss (no smoothing, z-loss or softcap) is one call of the kernel
over every row, which scales each row's gradient by its weight in the same
pass. With options, rows go to `_rows.token_losses` a block of about
`BLOCK_BYTES` at a time, so that the options' corrections of a block's
gradient run while the block is still in cache, and half-precision logits are
widened to float32 one block at a time.
"""
import numpy as np

from xent._dtypes import accumulator
from xent._errstate import quiet
from xent._large_vocab._rows import token_losses

__all__ = ["losses_and_gradient", "BLOCK_BYTES"]

# Large enough that the kernel splits a block over threads (its threshold is 4 MB).
BLOCK_BYTES = 8 << 20


def _blocks(n_rows, n_cols):
    """Slices of about `BLOCK_BYTES` of float32 logits covering ``range(n_rows)``."""
    step = max(1, BLOCK_BYTES // (4 * max(n_cols, 1)))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


@quiet   # (also run from torch's backward and JAX's callbacks, outside the public call)
def losses_and_gradient(logits, targets, valid, opts, weights=None, grad_out=None):
    """Per-token losses and, with `grad_out`, the weighted gradient of the logits.

    Args:
      logits: ``[N, V]`` float16/bfloat16/float32/float64 (not modified unless
        `grad_out` is `logits`).
      targets: ``[N]`` int64, in range where `valid`; valid: ``[N]`` bool.
      opts: `Options`.
      weights: ``[N]`` d result / d loss_i (with `grad_out`).
      grad_out: None, or ``[N, V]`` of the logits' dtype (may be `logits`):
        receives ``weights_i · dloss_i/dlogits_i``.

    Returns:
      ``[N]`` losses in the accumulator dtype (float32 for half precision), 0
      where ignored.
    """
    if opts.plain:   # one kernel pass over every row, the weights folded in
        return token_losses(logits, targets, valid, opts, weights, grad_out)
    acc = accumulator(logits.dtype)
    losses = np.empty(logits.shape[0], acc)
    for rows in _blocks(*logits.shape):
        z, out = logits[rows], None if grad_out is None else grad_out[rows]
        if z.dtype != acc:
            z = z.astype(acc)
        w = None if weights is None else weights[rows]
        scratch = out if out is None or out.dtype == acc else z
        losses[rows] = token_losses(z, targets[rows], valid[rows], opts, w, scratch)
        if scratch is not out:
            out[...] = scratch
    return losses
