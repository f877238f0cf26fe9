"""The per-row math once, for any array library: PyTorch's ops and JAX's.

`_kernels` defines the numbers on NumPy; this module states the same steps
against a tiny namespace of operations (``ops``) that each framework's glue
supplies (`xent._torch`, `xent._jax`), so that CUDA tensors and JAX arrays
stay on their device and remain differentiable by the framework itself.
Along the last axis of ``x`` (``C`` classes, accumulator dtype):

    m        = stop_gradient(max_j x_j)
    log_sum  = log(sum_j exp(x_j - m))
    lse      = m + log_sum
    loss     = lse - x_label               (dense: sum_j y_j (lse - x_j))
    grad_j   = exp(x_j - lse) - y_j        (TensorFlow's ``backprop``)

A label outside ``[0, C)`` cannot raise inside a traced or asynchronous
computation; its row's loss and gradient are NaN, as TensorFlow on a GPU.

``ops`` provides: ``max_last(x)`` and ``sum_last(x)`` (keeping the axis),
``exp``, ``log``, ``where``, ``stop_gradient``, ``take_last(x, idx)`` (one
entry per row), ``one_hot(idx, C, dtype)`` and ``zeros_rows(x)`` /
``full_rows(x, value)`` (arrays of ``x.shape[:-1]``).
"""
NAN = float("nan")


def _parts(ops, x):
    """``(m, x - m, log_sum)`` of TF's shift-by-max; ``m`` and ``log_sum`` keep the axis."""
    m = ops.stop_gradient(ops.max_last(x))
    shifted = x - m
    return m, shifted, ops.log(ops.sum_last(ops.exp(shifted)))


def _valid(labels, num_classes):
    """Where ``0 <= labels < num_classes``."""
    return (labels >= 0) & (labels < num_classes)


def lse(ops, x):
    """``log(sum_j exp(x_j))`` per row, shape ``x.shape[:-1]``."""
    m, _, log_sum = _parts(ops, x)
    return (m + log_sum)[..., 0]


def log_softmax(ops, x, row_lse=None):
    """``x_j - lse`` (lse recomputed unless given); its negative is the dense
    loss's gradient for the labels."""
    if row_lse is not None:
        return x - row_lse[..., None]
    _, shifted, log_sum = _parts(ops, x)
    return shifted - log_sum


def sparse_rows(ops, x, labels):
    """``(loss, lse)`` per row against integer `labels` (NaN rows where out of range).

    x: ``[..., C]``, ``C >= 1``; labels: int ``[...]``.
    """
    valid = _valid(labels, x.shape[-1])
    m, shifted, log_sum = _parts(ops, x)
    picked = ops.take_last(shifted, ops.where(valid, labels, 0))
    loss = ops.where(valid, log_sum[..., 0] - picked, NAN)
    return loss, (m + log_sum)[..., 0]


def dense_rows(ops, x, y):
    """``(loss, lse)`` per row against target distributions `y` (x's shape).

    With no classes the loss is 0 and lse is ``-inf``, as in `_kernels`.
    """
    if x.shape[-1] == 0:
        return ops.zeros_rows(x), ops.full_rows(x, -float("inf"))
    m, shifted, log_sum = _parts(ops, x)
    return ops.sum_last(y * (log_sum - shifted))[..., 0], (m + log_sum)[..., 0]


def sparse_grad(ops, x, labels, row_lse):
    """``softmax(x) - one_hot(labels)`` given each row's lse; NaN rows where out of range."""
    num_classes = x.shape[-1]
    p = ops.exp(x - row_lse[..., None])
    grad = p - ops.one_hot(labels, num_classes, p.dtype)
    return ops.where(_valid(labels, num_classes)[..., None], grad, NAN)


def dense_grad(ops, x, y, row_lse):
    """``softmax(x) - y`` given each row's lse (TF's backprop, whatever ``sum(y)``).

    Differentiated again, it depends on the logits only: TensorFlow's
    registered gradient passes nothing from the backprop to the labels.
    """
    return ops.exp(x - row_lse[..., None]) - ops.stop_gradient(y)


def softmax_vjp(ops, x, row_lse, v):
    """``v`` pulled back through ``softmax(x)``: ``p * (v - sum_j v_j p_j)``.

    The second-order term TensorFlow adds when the backprop output itself is
    differentiated (``grad_grad`` in its registered gradient).
    """
    p = ops.exp(x - row_lse[..., None])
    return p * (v - ops.sum_last(v * p))
