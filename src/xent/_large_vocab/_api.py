"""The two public functions: check, then hand over to the caller's array type's face."""
from xent import _backend
from xent._errstate import quiet
from xent._large_vocab import _numpy
from xent._large_vocab._options import bool_option, chunk_rows, options
from xent._large_vocab._shapes import cross_entropy_shapes, linear_shapes, widen_target

__all__ = ["cross_entropy", "linear_cross_entropy"]


def _face(backend):
    """The module that runs the functions on `backend`'s arrays."""
    if backend.name == "torch":
        from xent._large_vocab import _torch
        return _torch
    if backend.name == "jax":
        from xent._large_vocab import _jax
        return _jax
    return _numpy


@quiet
def cross_entropy(logits, target, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                  softcap=None, reduction="mean", inplace_backward=False, return_grads=False):
    r"""Cross-entropy of each token's logits against its class index, with LLM options.

    For a token with logits ``z`` (``[V]``; ``z <- c·tanh(z/c)`` first when
    ``softcap=c``), target ``y``, ``lse = log Σ_j exp(z_j)``:

        loss = (1 - ε)·(lse - z_y) + ε·(lse - mean_j z_j) + λ·lse²

    with ``ε = label_smoothing`` (PyTorch's and TensorFlow's uniform ε/V mass)
    and ``λ = z_loss`` (PaLM's). Tokens whose target is `ignore_index` add 0
    and are not counted.

    Args:
      logits: ``[..., V]`` float16/bfloat16/float32/float64: NumPy array, torch
        tensor (autograd) or JAX array (``jax.grad``, ``jit``).
      target: ``[...]`` int32/int64 (or uint8, as PyTorch) class indices in
        ``[0, V)``, or `ignore_index`.
      ignore_index: the target value of tokens to skip (default -100, as PyTorch).
      label_smoothing: ε in ``[0, 1]``.
      z_loss: λ >= 0.
      softcap: c in [2^-100, 2^100], or None for no cap (Gemma 2 uses 30).
      reduction: ``"mean"`` over the tokens not ignored (0 if all are),
        ``"sum"`` (for gradient accumulation: divide by your global token
        count), or ``"none"`` (``[...]``, 0 where ignored).
      inplace_backward: write the gradient over `logits` (torch: during the
        forward, so the backward costs nothing; you promise not to read
        `logits` again). Refused for a leaf tensor that requires grad (or a
        view of one) and for a non-contiguous tensor. In float16 the
        gradient is then rounded before a loss scale multiplies it (without
        inplace_backward it is rounded once, after, as autograd does). No
        effect under torch.compile, torch.func and forward-mode AD levels
        (the registered operator runs there), nor off the CPU, nor on JAX
        arrays (on the CPU the gradient takes the logits' buffer wherever
        XLA can give it: logits made in the step, or donated).
      return_grads: NumPy only: return ``(loss, dloss/dlogits)`` (for
        ``"none"``, the gradient of ``loss.sum()``).

    Returns:
      The loss in the logits' dtype: a scalar, or ``[...]`` for ``"none"``.

    Raises:
      InvalidArgumentError: a target outside ``[0, V)`` that is not ignored
        (NumPy, CPU tensors, concrete JAX arrays; traced or on a GPU that
        token's loss is NaN instead).
      ValueError, TypeError: a bad shape, dtype or option, named.

    Examples:
      >>> import numpy as np, xent
      >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
      >>> print(xent.cross_entropy(logits, np.array([0, -100])))
      0.41703004
      >>> print(xent.cross_entropy(logits, np.array([0, 1]), reduction="none", label_smoothing=0.1))
      [0.51369673 0.36004952]

    PyTorch's ``F.cross_entropy(..., reduction="none", label_smoothing=0.1)``
    gives ``[0.5137, 0.3600]`` for the same rows.
    """
    opts = options(ignore_index, label_smoothing, z_loss, softcap, reduction)
    inplace_backward, return_grads = (bool_option("inplace_backward", inplace_backward),
                                      bool_option("return_grads", return_grads))
    backend = _backend.of(logits, target)
    swapped = not getattr(getattr(logits, "dtype", None), "isnative", True)
    if inplace_backward and return_grads and swapped:   # (it would be read into a copy)
        raise ValueError("inplace_backward=True writes the gradient over logits, which must "
                         "then be in the machine's byte order; received dtype "
                         f"{logits.dtype.str}")
    logits, target = backend.asarray(logits, "logits"), backend.asarray(target, "target")
    cross_entropy_shapes(tuple(logits.shape), backend.dtype_name(logits),
                         tuple(target.shape), backend.dtype_name(target))
    target = widen_target(backend, target)
    if return_grads and backend.name != "numpy":
        raise ValueError(f"return_grads=True is for NumPy arrays; {backend.name} arrays get "
                         "their gradients from their framework's autodiff")
    return _face(backend).cross_entropy(logits, target, opts, inplace_backward, return_grads)


@quiet
def linear_cross_entropy(input, weight, target, *, bias=None, ignore_index=-100,
                         label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean",
                         chunk_size=None, return_grads=False):
    r"""`cross_entropy(input @ weight.T + bias, target, ...)` without ever holding the whole logits.

    The tokens not ignored go through in chunks: a matmul, the fused loss and
    gradient kernel in place over the chunk, then the two gradient matmuls
    accumulated into ``dinput`` and ``dweight``; the extra memory is one
    chunk of ``[chunk_size, V]`` logits, not ``[N, V]``. Half-precision
    inputs accumulate the loss and the weight gradient in float32.

    Args:
      input: ``[..., H]`` float (the last hidden states).
      weight: ``[V, H]`` of input's dtype (the LM head).
      target: ``[...]`` int32/int64/uint8 class indices, or `ignore_index`.
      bias: optional ``[V]``.
      ignore_index, label_smoothing, z_loss, softcap, reduction: as in
        `cross_entropy`.
      chunk_size: tokens per chunk; None picks 24 MiB of float32 logits
        (96 tokens at V = 65536, 196 at V = 32000), and at least 96 tokens,
        below which the matmuls lose efficiency.
      return_grads: NumPy only: return ``(loss, grads)`` with ``grads`` a dict
        of ``"input"``, ``"weight"`` and ``"bias"`` (None without bias).

    Returns:
      The loss in the input's dtype: a scalar, or ``[...]`` for ``"none"``.

    Examples:
      >>> import numpy as np, xent
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
      >>> w = np.array([[2.0, 0.5], [1.0, 2.5], [0.1, 0.3]], np.float32)
      >>> print(xent.linear_cross_entropy(x, w, np.array([0, 1])))
      0.31853977
      >>> loss, grads = xent.linear_cross_entropy(x, w, np.array([0, 1]), return_grads=True)
      >>> print(grads["input"])
      [[-0.2148541   0.23257639]
       [ 0.01428913 -0.20641264]]
    """
    opts = options(ignore_index, label_smoothing, z_loss, softcap, reduction)
    return_grads = bool_option("return_grads", return_grads)
    backend = _backend.of(input, weight, target, bias)
    input, weight, target = (backend.asarray(a, name) for a, name in
                             ((input, "input"), (weight, "weight"), (target, "target")))
    bias = None if bias is None else backend.asarray(bias, "bias")
    linear_shapes(tuple(input.shape), backend.dtype_name(input), tuple(weight.shape),
                  backend.dtype_name(weight), tuple(target.shape), backend.dtype_name(target),
                  None if bias is None else tuple(bias.shape),
                  None if bias is None else backend.dtype_name(bias))
    target = widen_target(backend, target)
    chunk = chunk_rows(chunk_size, weight.shape[0])
    if return_grads and backend.name != "numpy":
        raise ValueError(f"return_grads=True is for NumPy arrays; {backend.name} arrays get "
                         "their gradients from their framework's autodiff")
    return _face(backend).linear_cross_entropy(input, weight, bias, target, opts, chunk, return_grads)
