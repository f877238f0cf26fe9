"""The per-row math once, for any array library: PyTorch's ops and JAX's.

`_kernels` defines the numbers on NumPy; this module states the same steps
against a tiny namespace of operations (``ops``) that each framework's glue
supplies (`xent._torch`, `xent._jax`), so that CUDA tensors and JAX arrays
stay on their device and remain differentiable by the framework itself.
Along the last axis of ``x`` (``C`` classes, accumulator dtype):

    m        = stop_gradient(max_j x_j)
    log_sum  = log(sum_j exp(x_j - m))
    loss     = log_sum - (x_label - m)     (dense: sum_j y_j (log_sum - (x_j - m)))
    grad_j   = exp((x_j - m) - log_sum) - y_j        (TensorFlow's ``backprop``)

A row's normaliser ``norm = (m, log_sum)`` (each ``[..., 1]``) is all a
backward needs besides the inputs. It is kept as two numbers, not as
``lse = m + log_sum``: with logits near ±1e30, ``x - lse`` loses ``log_sum``
to rounding and the softmax would come out wrong.

A label outside ``[0, C)`` cannot raise inside a traced or asynchronous
computation; its row's loss and gradient are NaN, as TensorFlow on a GPU.

``ops`` provides: ``max_last(x)`` and ``sum_last(x)`` (keeping the axis),
``exp``, ``log``, ``where``, ``stop_gradient``, ``take_last(x, idx)`` (one
entry per row), ``one_hot(idx, C, dtype)`` and ``zeros_rows(x)`` (zeros of
shape ``x.shape[:-1] + (1,)``).
"""
NAN = float("nan")


def normaliser(ops, x):
    """``(m, log_sum)`` of each row, both ``[..., 1]``; differentiable (``m`` is constant).

    Rows of no classes have nothing to normalise: both 0 (a max over an empty
    axis raises), so that their gradients come out as empty as the logits.
    """
    if x.shape[-1] == 0:
        zero = ops.zeros_rows(x)
        return zero, zero
    m = ops.stop_gradient(ops.max_last(x))
    return m, ops.log(ops.sum_last(ops.exp(x - m)))


def log_softmax(ops, x, norm=None):
    """``(x_j - m) - log_sum``, the normaliser recomputed unless given; its negative
    is the dense loss's gradient for the labels."""
    m, log_sum = normaliser(ops, x) if norm is None else norm
    return (x - m) - log_sum


def valid_labels(labels, num_classes):
    """Where ``0 <= labels < num_classes`` (any array library's integers)."""
    return (labels >= 0) & (labels < num_classes)


def sparse_rows(ops, x, labels):
    """``(loss, norm)`` per row against integer `labels` (NaN rows where out of range).

    x: ``[..., C]``, ``C >= 1``; labels: int ``[...]``; loss ``[...]``.
    """
    valid = valid_labels(labels, x.shape[-1])
    norm = normaliser(ops, x)
    # Take x_label first, then shift it: taking from ``x - m`` made XLA write
    # that whole logits-sized difference out (3x optax's time at 8192x32000).
    picked = ops.take_last(x, ops.where(valid, labels, 0)) - norm[0][..., 0]
    loss = ops.where(valid, norm[1][..., 0] - picked, NAN)
    return loss, norm


def dense_rows(ops, x, y):
    """``(loss, norm)`` per row against target distributions `y` (x's shape).

    With no classes the loss is 0, as in `_kernels`.
    """
    norm = normaliser(ops, x)
    if x.shape[-1] == 0:
        return norm[0][..., 0], norm
    return -ops.sum_last(y * log_softmax(ops, x, norm))[..., 0], norm


def sparse_grad(ops, x, labels, norm):
    """``softmax(x) - one_hot(labels)`` given each row's norm; NaN rows where out of range.

    The NaN is added to the row as a constant, so that the row's derivative is
    still softmax's, as TensorFlow's registered gradient has it whatever the
    label (a `where` would cut it to 0)."""
    num_classes = x.shape[-1]
    p = ops.exp(log_softmax(ops, x, norm))
    grad = p - ops.one_hot(labels, num_classes, p.dtype)
    return grad + ops.where(valid_labels(labels, num_classes), 0.0, NAN)[..., None]


def dense_grad(ops, x, y, norm):
    """``softmax(x) - y`` given each row's norm (TF's backprop, whatever ``sum(y)``).

    Differentiated again, it depends on the logits only: TensorFlow's
    registered gradient passes nothing from the backprop to the labels.
    """
    return ops.exp(log_softmax(ops, x, norm)) - ops.stop_gradient(y)


def softmax_vjp(ops, x, norm, v):
    """``v`` pulled back through ``softmax(x)``: ``p * (v - sum_j v_j p_j)``.

    The second-order term TensorFlow adds when the backprop output itself is
    differentiated (``grad_grad`` in its registered gradient).
    """
    p = ops.exp(log_softmax(ops, x, norm))
    return p * (v - ops.sum_last(v * p))
