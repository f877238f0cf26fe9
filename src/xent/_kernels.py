"""Reference kernels in plain NumPy: per-row loss, log-sum-exp and gradient.

These define the numbers; the fused kernels in `_fused` must agree with them.
For a row ``x`` of logits (``C`` classes) and target distribution ``y``:

    m       = max_j x_j
    lse     = m + log(sum_j exp(x_j - m))
    loss    = sum_j y_j * (lse - x_j)          (sparse: lse - x_label)
    grad_j  = exp(x_j - lse) - y_j             (d loss / d x_j)

The arithmetic follows TensorFlow's CPU kernels step for step (shift by the
max, exponentiate, sum, log), so huge, tiny and infinite logits give the same
finite or NaN results as TensorFlow; but a float32 sum of exps keeps the
first max's exp (1) apart from the rest, adding it in float64, so that a
confident row keeps its small loss where TensorFlow's float32 sum rounds it
to 6e-8 steps. Work runs in float32 for half precision
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
    """Return ``(m, shifted, e, total)``: row max, ``x - m``, ``exp(x - m)`` and
    its row sum S as float64.

    x: ``[rows, C]`` with ``C >= 1``, already in the accumulator dtype; ``m``
    is ``[rows, 1]``, ``total`` ``[rows]``. In float32, S is 1 (the first
    max's exp) plus the float32 sum of the other terms: summed with the 1, a
    float32 S keeps them only to float32's 6e-8 steps near 1, and a confident
    row (float32 [16.75, 0 x 9], label 0) had a loss log S of 3.58e-7 against
    an exact 4.78e-7 (the fused kernels count the max's terms apart alike:
    `xent._fused._chunks.counted_sum`). A row whose max is not finite has S NaN.
    """
    rows = np.arange(x.shape[0])
    top = x.argmax(axis=1)   # (a NaN's index where the row holds one)
    m = x[rows, top][:, None]
    shifted = x - m
    e = np.exp(shifted)
    if e.dtype == np.float64:
        return m, shifted, e, e.sum(axis=1)
    e[rows, top] = 0.0
    rest = e.sum(axis=1)
    e[rows, top] = 1.0
    return m, shifted, e, np.where(np.isfinite(m[:, 0]), 1.0 + rest.astype(np.float64), np.nan)


_QUIET = np.errstate(all="ignore")   # (TF is silent; a caller's np.seterr must not raise here)


def labels_fit(labels, num_classes):
    """True when every entry of the int array `labels` is in ``[0, num_classes)``."""
    return labels.size == 0 or bool(labels.min() >= 0 and labels.max() < num_classes)


@_QUIET
def sparse_rows(logits, labels, grad_out=None, weights=None):
    """Sparse softmax cross-entropy of each row.

    Args:
      logits: ``[N, C]`` float array, ``C >= 1``.
      labels: ``[N]`` int array, each in ``[0, C)``; a row whose label is not
        (unchecked under `jax.jit`) gets NaN for its loss, lse and gradient,
        as on the fused kernels.
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
    c = logits.shape[1]
    bad = None if labels_fit(labels, c) else (labels < 0) | (labels >= c)
    if bad is not None:
        labels = np.where(bad, 0, labels)   # (picked safely; their rows are NaN below)
    for rows in _row_blocks(*logits.shape):
        x = logits[rows].astype(acc)
        m, shifted, e, total = _shifted_exp(x)
        log_sum = np.log(total)
        picked = np.arange(x.shape[0]), labels[rows]
        loss[rows] = log_sum - shifted[picked]
        lse[rows] = m[:, 0] + log_sum
        if grad_out is not None:
            # The label's entry softmax - 1 in float64: a confident row's is
            # -(S - 1) / S, which float32's 1 / S would round to a multiple of 6e-8.
            at_label = e[picked] / total - 1.0
            e /= total.astype(acc)[:, None]
            if weights is not None:
                w = np.asarray(weights, np.float64)[rows]
                e *= w[:, None].astype(acc)
                at_label *= w
            e[picked] = at_label
            grad_out[rows] = e
    if bad is not None:
        loss[bad] = lse[bad] = np.nan
        if grad_out is not None:
            grad_out[bad] = np.nan
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
        m, shifted, e, total = _shifted_exp(x)
        log_sum = np.log(total)
        # sum_j y_j (log S - shifted_j), with log S (float64) kept out of the
        # float32 sums: a confident row's loss is log S itself.
        y_sum = y.sum(axis=1)
        loss[rows] = log_sum * y_sum - np.sum(y * shifted, axis=1)
        infinite = ~np.isfinite(y_sum)
        if infinite.any():
            # Infinite or NaN targets: TF's terms one by one, where the sums
            # would meet inf * 0 (an infinite target on the max: inf, not
            # NaN), with log S of S rounded to the accumulator, as TF's (0
            # where S rounds to 1: NaN there, as TF's inf * 0).
            log_s = np.log(total[infinite].astype(acc)).astype(np.float64)
            loss[rows][infinite] = np.sum(y[infinite] * (log_s[:, None] - shifted[infinite]),
                                          axis=1)
        lse[rows] = m[:, 0] + log_sum
        if grad_out is not None:
            e /= total.astype(acc)[:, None]
            e -= y
            if weights is not None:
                e *= np.asarray(weights, np.float64)[rows, None].astype(acc)
            grad_out[rows] = e
    return loss, lse
