"""The loss's numbers on tensors: the fused kernel on CPU tensors, torch ops elsewhere.

`loss_and_backprop` is the one place a loss and TF's backprop are computed: on CPU
tensors (`on_kernels`) the fused NumPy kernel (`xent._core`) runs on
zero-copy views (`xent._torch._views`), on any other device the same steps
as torch ops (`xent._array_kernels` with `Ops`). The rest are the gradient
pieces that the autograd Functions (`xent._torch._eager`) and the
registered operators (`xent._torch._ops`) share: the backprop scaled by the
upstream gradient (in place), the labels' gradient, and differentiable
forms for second derivatives.
"""
import ctypes

import torch

from xent import _array_kernels, _core, _dtypes
from xent._torch._views import accumulate, empty_numpy, numpy_view, own_tensor


_state = {"torch_ops_on_cpu": False}


def use_torch_ops_on_cpu(flag=True):
    """Run CPU tensors through the torch-ops path of other devices (for tests)."""
    _state["torch_ops_on_cpu"] = flag


def on_kernels(logits):
    """Whether a loss on `logits` runs xent's kernels (a CPU tensor), not torch ops."""
    return logits.is_cpu and not _state["torch_ops_on_cpu"]


class Ops:
    """The operations `xent._array_kernels` needs, as torch calls."""

    exp = staticmethod(torch.exp)
    tanh = staticmethod(torch.tanh)
    isfinite = staticmethod(torch.isfinite)
    log = staticmethod(torch.log)
    where = staticmethod(torch.where)

    @staticmethod
    def max_last(x):
        return torch.amax(x, dim=-1, keepdim=True)

    @staticmethod
    def logsumexp_last(x):
        """``log Σ_j exp(x_j)`` over the last axis, as one torch op: its backward
        recomputes the softmax, where a hand-made ``m + log Σ exp(x - m)`` saved
        its exp, which inductor (torch 2.13, dynamic shapes) overwrote with the
        gradient, breaking a second backward over a retained graph."""
        return torch.logsumexp(x, dim=-1)

    @staticmethod
    def sum_last(x):
        return torch.sum(x, dim=-1, keepdim=True)

    @staticmethod
    def stop_gradient(x):
        return x.detach()

    @staticmethod
    def take_last(x, idx):
        return torch.gather(x, -1, idx.long().unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def one_hot(idx, num_classes, dtype):
        return (idx.unsqueeze(-1) == torch.arange(num_classes, device=idx.device)).to(dtype)

    @staticmethod
    def zeros_rows(x):
        return x.new_zeros((*x.shape[:-1], 1))


_ROWS = {"sparse": _array_kernels.sparse_rows, "dense": _array_kernels.dense_rows}
_GRAD = {"sparse": _array_kernels.sparse_grad, "dense": _array_kernels.dense_grad}
_CORE = {"sparse": _core.sparse_xent, "dense": _core.dense_xent}


def loss_and_backprop(kind, labels, logits, want_grad, weights=None, into=None):
    """Per-row loss (accumulator dtype) and, if wanted, TF's backprop (logits' dtype).

    `kind` is ``"sparse"`` (int labels ``[...]``) or ``"dense"`` (labels of the
    logits' shape); logits are ``[..., C]``. With `weights` (``[...]``, the
    loss's shape), each row of the backprop times its weight, folded into
    the kernel's pass on the CPU; weights with an infinity or a NaN scale
    the backprop after it instead (`scale_rows_`: TensorFlow's ±inf entries,
    where the weighted kernel gives NaN rows; elsewhere the weights are that
    product already). `into` (CPU, C-contiguous, the logits' shape and
    dtype) receives the backprop, which is then `into` itself.
    """
    if on_kernels(logits):
        if weights is not None and not bool(torch.isfinite(weights).all()):
            if want_grad and logits.dtype in (torch.float16, torch.bfloat16):
                # (the weights meet the backprop unrounded, as TF's float32 product: a
                # half-precision entry that rounds to 0 times inf was NaN, TF's ±inf)
                loss = loss_and_backprop(kind, labels, logits, False)[0]
                wide = differentiable_backprop(kind, logits, labels)
                backprop = (wide * weights[..., None].to(wide.dtype)).to(logits.dtype)
                return loss, backprop if into is None else into.copy_(backprop)
            loss, backprop = loss_and_backprop(kind, labels, logits, want_grad, None, into)
            return loss, None if backprop is None else scale_rows_(backprop, weights)
        x = numpy_view(logits)
        out = None if not want_grad else empty_numpy(x) if into is None else numpy_view(into)
        w = None if weights is None else numpy_view(weights.detach().to(torch.float64).contiguous())
        loss, _ = _CORE[kind](numpy_view(labels), x, out, w)
        backprop = None if out is None else own_tensor(out) if into is None else into
        return own_tensor(loss), backprop
    x = accumulate(logits)
    loss, norm = _ROWS[kind](Ops, x, labels)
    grad = None
    if want_grad:
        grad = _GRAD[kind](Ops, x, labels, norm)
        grad = (grad if weights is None else grad * weights[..., None].to(grad.dtype)).to(logits.dtype)
    return loss, grad


def differentiable_backprop(kind, logits, labels):
    """TF's backprop from torch ops that autograd can differentiate again."""
    x = accumulate(logits)
    return _GRAD[kind](Ops, x, labels, _array_kernels.normaliser(Ops, x))


def batchable_backward(g):
    """Whether a backward with upstream gradient `g` (or None) must be made of plain
    (differentiable, batchable) torch ops: when autograd records it
    (``create_graph=True``), when a torch.func transform runs it, and when g
    is batched, as ``autograd.grad(..., is_grads_batched=True)`` and
    ``jacobian(..., vectorize=True)`` make it (torch's legacy vmap, which no
    transform flag shows): in-place products, reads of g's values and ``out=``
    products have no batching rule there."""
    return (torch.is_grad_enabled() or torch._C._are_functorch_transforms_active()
            or (g is not None and _legacy_batched(g)))


_legacy_batched = getattr(getattr(torch._C, "_functorch", None), "is_legacy_batchedtensor",
                          lambda g: False)


def labels_grad(logits, labels, g):
    """Gradient of the dense loss for its labels: ``-g * log_softmax(logits)``."""
    return (-g[..., None] * _array_kernels.log_softmax(Ops, accumulate(logits))).to(labels.dtype)


def row_factors(g, dtype):
    """``g[..., None]``, the per-row factors of a `dtype` backprop: in `dtype` itself
    when g is exact there, else as they are.

    torch multiplies a half-precision tensor by a float32 one through two
    whole-tensor conversions (8192x32000 bfloat16, in place: 610 ms). The
    per-row g (float32, the loss's accumulator dtype) is usually exact in the
    half dtype, being the upstream gradient of the loss cast from it; then
    the half-by-half product, computed exactly in float32 and rounded once,
    is the same number (20-30 ms). On other devices the check would cost a
    host sync, and is skipped (the mixed product is rounded once there too).
    """
    if g.dtype != dtype and dtype in (torch.float16, torch.bfloat16) and g.is_cpu:
        narrow = g.to(dtype)
        if torch.equal(narrow.to(g.dtype), g):
            g = narrow
    return g[..., None]


# From this many elements on, `scale_rows_` first checks whether g is all ones
# (three small torch ops, about 10 us: more than the multiply of a small backprop).
_ONES_CHECK_MIN = 1 << 18


def scale_rows_(backprop, g):
    """``backprop *= g[..., None]`` in place, each product rounded once to backprop's dtype;
    nothing to do on the CPU when every g is 1 (the gradient of a ``.sum()``),
    which saves a pass over a large backprop (on other devices the check
    would cost a host sync)."""
    if backprop.is_cpu and (
            _broadcast_one(g) if backprop.numel() < _ONES_CHECK_MIN else bool((g == 1).all())):
        return backprop
    return backprop.mul_(row_factors(g, backprop.dtype))


# (kind, torch dtype) pairs whose gradient TF rounds once (`_dtypes.gradient_rounded_once`).
_ROUNDED_ONCE = frozenset((kind, getattr(torch, name)) for kind in ("sparse", "dense")
                          for name in ("float16", "bfloat16")
                          if _dtypes.gradient_rounded_once(kind, name))


def gradient_rounded_once(kind, dtype):
    """`_dtypes.gradient_rounded_once` for a torch `dtype` (a set lookup: a small
    step's backward asks)."""
    return (kind, dtype) in _ROUNDED_ONCE


def upstream_grad(kind, labels, logits, backprop, g):
    """The logits' gradient ``g[..., None] * (softmax - labels)`` (no graph), given the
    forward's `backprop` or None (made now): the backprop scaled in place
    (`scale_rows_`), the same bits on every backward.

    float16 logits, and bfloat16 ones with dense labels
    (`_dtypes.gradient_rounded_once`), unless every g is 1 (the check made
    whole: a half-precision ``.sum()`` brings ones that are not a broadcast),
    take the kernel with g as the rows' weights instead (over the backprop if
    there is one; on other devices the same torch ops with the weights): TF
    computes those losses in float32 (its ``precise_logits``), so its
    gradient is rounded once, where a half-precision backprop times g rounds
    twice (float16 entries below its normal range, 6.1e-5, lost up to 1580
    ulps under a g of about 1000: an independent review). TF's sparse op
    keeps bfloat16, rounded twice as here.
    """
    if gradient_rounded_once(kind, logits.dtype) and not (
            g.is_cpu and (_broadcast_one(g) or bool((g == 1).all()))):
        return loss_and_backprop(kind, labels, logits, True, g, into=backprop)[1]
    if backprop is None:
        backprop = loss_and_backprop(kind, labels, logits, True)[1]
    return scale_rows_(backprop, g)


# ctypes types to read one element of a CPU tensor in place (`_broadcast_one`).
_C_SCALARS = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


def _broadcast_one(g):
    """Whether CPU tensor `g` is one 1 broadcast to its shape (all strides 0), as
    the gradient of a ``.sum()`` arrives: 0.3 us to check (reading the element
    at its address), against 3 us for the multiply of a small backprop. A g
    with torch's negative bit reads 1 where it holds -1 (an independent review:
    the gradient came back with its sign flipped): no."""
    scalar = _C_SCALARS.get(g.dtype)
    if scalar is None or g.requires_grad or g.numel() == 0 or any(g.stride()) or g.is_neg():
        return False
    return scalar.from_address(g.data_ptr()).value == 1


def backprop_vjp(logits, backprop, g_loss, g_backprop):
    """The logits' gradient of the raw op's two outputs, in differentiable torch ops:
    ``g_loss·backprop + softmax_vjp(g_backprop)`` (either g may be None)."""
    d = torch.zeros_like(backprop) if g_loss is None else backprop * g_loss[..., None]
    if g_backprop is not None:
        x = accumulate(logits)
        norm = _array_kernels.normaliser(Ops, x)
        vjp = _array_kernels.softmax_vjp(Ops, x, norm, accumulate(g_backprop))
        d = d + vjp.to(d.dtype)
    return d
