"""Reference kernels in plain NumPy: per-row loss, log-sum-exp and gradient.

These define the numbers; the fused kernels in `_fused` must agree with them.
For a row ``x`` of logits (``C`` classes) and target distribution ``y``:

    m       = max_j x_j
    lse     = m + log(sum_j exp(x_j - m))
    loss    = sum_j y_j * (lse - x_j)          (sparse: lse - x_label)
    grad_j  = exp(x_j - lse) - y_j             (d loss / d x_j)

The arithmetic follows TensorFlow's CPU kernels step for step (shift by the
max, exponentiate, sum, log), so huge, tiny and infinite logits give the same
finite or NaN results as TensorFlow. Work runs in float32 for half precision
and float64 for float64, one block of rows at a time so that temporaries stay
a few MB whatever the input size. NaN and inf arise silently, as in
TensorFlow, without NumPy's floating-point warnings.
"""
import numpy as np

from xent._dtypes import accumulator

_BLOCK_ELEMENTS = 1 << 18


def _row_blocks(n_rows, n_cols):
    """Yield slices of about `_BLOCK_ELEMENTS` elements covering ``range(n_rows)``."""
    step = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _shifted_exp(x):
    """Return ``(m, shifted, e, s)``: row max, ``x - m``, ``exp(x - m)``, its row sum.

    x: ``[rows, C]`` with ``C >= 1``, already in the accumulator dtype; ``m`` and
    ``s`` are ``[rows, 1]``.
    """
    m = x.max(axis=1, keepdims=True)
    shifted = x - m
    e = np.exp(shifted)
    return m, shifted, e, e.sum(axis=1, keepdims=True)


_QUIET = np.errstate(invalid="ignore", over="ignore", divide="ignore")


def labels_fit(labels, num_classes):
    """True when every entry of the int array `labels` is in ``[0, num_classes)``."""
    return labels.size == 0 or bool(labels.min() >= 0 and labels.max() < num_classes)


@_QUIET
def sparse_rows(logits, labels, grad_out=None, weights=None):
    """Sparse softmax cross-entropy of each row.

    Args:
      logits: ``[N, C]`` float array, ``C >= 1``.
      labels: ``[N]`` int array, each in ``[0, C)`` (already validated).
      grad_out: optional ``[N, C]`` array (may be `logits` itself) that receives
        ``softmax(logits) - one_hot(labels)``, cast to its dtype, each row
        times its weight.
      weights: optional ``[N]`` row weights (None: all 1).

    Returns:
      ``(loss, lse)``: two ``[N]`` arrays in the accumulator dtype.
    """
    acc = accumulator(logits.dtype)
    loss = np.empty(logits.shape[0], acc)
    lse = np.empty(logits.shape[0], acc)
    for rows in _row_blocks(*logits.shape):
        x = logits[rows].astype(acc)
        m, shifted, e, s = _shifted_exp(x)
        log_sum = np.log(s[:, 0])
        picked = np.arange(x.shape[0]), labels[rows]
        loss[rows] = log_sum - shifted[picked]
        lse[rows] = m[:, 0] + log_sum
        if grad_out is not None:
            e /= s
            e[picked] -= 1
            if weights is not None:
                e *= np.asarray(weights, np.float64)[rows, None].astype(acc)
            grad_out[rows] = e
    return loss, lse


@_QUIET
def dense_rows(logits, labels, grad_out=None, weights=None):
    """Softmax cross-entropy of each row against a target distribution.

    Args:
      logits: ``[N, C]`` float array.
      labels: ``[N, C]`` float array (may be a broadcast view).
      grad_out: optional ``[N, C]`` array (may be `logits`) that receives
        ``softmax(logits) - labels``, cast to its dtype, each row times its
        weight.
      weights: optional ``[N]`` row weights (None: all 1).

    Returns:
      ``(loss, lse)``: two ``[N]`` arrays in the accumulator dtype. With
      ``C == 0`` the loss is 0 and lse is ``-inf``.
    """
    acc = accumulator(logits.dtype)
    n, c = logits.shape
    if c == 0:
        return np.zeros(n, acc), np.full(n, -np.inf, acc)
    loss = np.empty(n, acc)
    lse = np.empty(n, acc)
    for rows in _row_blocks(n, c):
        x = logits[rows].astype(acc)
        y = labels[rows].astype(acc)
        m, shifted, e, s = _shifted_exp(x)
        log_sum = np.log(s)
        loss[rows] = np.sum(y * (log_sum - shifted), axis=1)
        lse[rows] = (m + log_sum)[:, 0]
        if grad_out is not None:
            e /= s
            e -= y
            if weights is not None:
                e *= np.asarray(weights, np.float64)[rows, None].astype(acc)
            grad_out[rows] = e
    return loss, lse
