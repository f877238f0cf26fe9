"""The autograd Functions of eager calls on tensors (no torch.func transform, no compiler).

`SPARSE_LOSS` and `DENSE_LOSS` give the per-row loss: when the logits need
a gradient, the forward writes TensorFlow's backprop ``softmax - target``
into one logits-sized tensor in the kernel's pass, and the backward scales
it in place by the upstream gradient and hands it back, so forward plus
backward hold the logits and one tensor of their size. A large loss folds
the upstream gradient it expects into that pass instead
(`xent._torch._upstream`). A second backward over a retained graph
recomputes it; with ``create_graph=True`` the backward is built from
differentiable torch ops, so second derivatives are TensorFlow's (which
supports them too). The dense loss also gives the labels their gradient,
``-log_softmax(logits)``. `LossAndBackprop` is the raw ops' Function:
``(loss, backprop)``, both differentiable.
"""
import torch

from xent._torch import _upstream
from xent._torch._math import (backprop_vjp, batchable_backward, differentiable_backprop,
                               gradient_rounded_once, labels_grad, loss_and_backprop,
                               on_kernels, row_factors, scale_rows_, upstream_grad)
from xent._torch._views import accumulator_dtype, empty_numpy, from_numpy, numpy_view


def _eager_apply(function):
    """`function.apply(logits, labels)` (a Function without ``setup_context``) for
    calls made where no torch.func transform is active (`graph_ops` is
    False), without `torch.autograd.Function.apply`'s Python layer: a 32x1000
    float32 step took 93-94 us against 98-101 (Zen 4, one process,
    interleaved). Tensors left by a finished transform are unwrapped first,
    as that layer does. Falls back to `function.apply` where torch lacks the
    pieces."""
    try:
        from torch._C._functorch import unwrap_if_dead
        apply = super(torch.autograd.Function, function).apply
    except (ImportError, AttributeError):
        return function.apply

    def eager(logits, labels):
        return apply(unwrap_if_dead(logits), unwrap_if_dead(labels))
    return eager


def _loss_function(kind):
    """The eager autograd Function of `kind` labels (``"sparse"`` or ``"dense"``):
    ``apply(logits, labels)`` gives the per-row loss, whose backward is
    TensorFlow's gradient (see the module doc).

    Tensors are its only arguments, the kind being the class's: a Function
    with two more (the kind, and whether the logits want a gradient, which
    ``ctx.needs_input_grad`` already says) cost a 32x1000 float32 step about
    1 us more (AMD Zen 4)."""

    class Loss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, labels):
            write = ctx.needs_input_grad[0]
            ctx.folds = write and not ctx.needs_input_grad[1] and on_kernels(logits) \
                and _upstream.foldable(logits)
            ctx.weights = ctx.slot = None
            if ctx.folds:
                write, ctx.weights, ctx.slot = _upstream.expected(
                    logits.shape[:-1], accumulator_dtype(logits.dtype), logits.dtype)
            loss, ctx.backprop = loss_and_backprop(kind, labels, logits, write, ctx.weights)
            ctx.save_for_backward(logits, labels)
            return loss

        @staticmethod
        def backward(ctx, g):
            need_logits, need_labels = ctx.needs_input_grad
            backprop, ctx.backprop = ctx.backprop, None   # (scaled in place: the first time only)
            if need_logits and not need_labels and not batchable_backward(g):
                if ctx.folds:
                    return _with_upstream(kind, ctx, backprop, g), None
                if backprop is not None and not gradient_rounded_once(kind, backprop.dtype):
                    return scale_rows_(backprop, g), None   # (no saved input needed: 2 us)
            logits, labels = ctx.saved_tensors
            d_logits = _logits_grad(kind, logits, labels, g, backprop) if need_logits else None
            d_labels = labels_grad(logits, labels, g) if need_labels else None
            return d_logits, d_labels

    Loss.__name__ = Loss.__qualname__ = f"_{kind.title()}Loss"
    return Loss


def _logits_grad(kind, logits, labels, g, backprop):
    """``g * backprop``: `backprop` (the forward's, or None) scaled in place, or
    the kernel's with g as the rows' weights (`upstream_grad`); differentiable
    torch ops when the graph is being built or g is batched (`batchable_backward`)."""
    if batchable_backward(g):
        backprop = differentiable_backprop(kind, logits, labels)
        return (g[..., None] * backprop).to(logits.dtype)
    return upstream_grad(kind, labels, logits, backprop, g)


def _with_upstream(kind, ctx, backprop, g):
    """The logits' gradient of a `kind` loss that folds its upstream gradient g
    (`xent._torch._upstream`): the kernel's with g as the rows' weights.
    That is `backprop` as the forward wrote it where it folded in this g
    (``ctx.weights``); else the kernel runs now, over `backprop` if the
    forward wrote one (None: it did not, or a first backward took it). A g
    with an infinity or a NaN scales the unweighted backprop instead, as a
    small loss does (`loss_and_backprop`).

    The saved logits are asked for every time, whether the kernel runs again
    or not, so that logits changed in place since the forward raise torch's
    error on every step, not only on those whose g changed."""
    logits, labels = ctx.saved_tensors
    done, weights = _upstream.observe(g, backprop is not None, ctx.weights, logits.dtype,
                                      ctx.slot)
    if done:
        return backprop
    return loss_and_backprop(kind, labels, logits, True, weights, into=backprop)[1]


SparseLoss, DenseLoss = _loss_function("sparse"), _loss_function("dense")
SPARSE_LOSS, DENSE_LOSS = _eager_apply(SparseLoss), _eager_apply(DenseLoss)


class LossAndBackprop(torch.autograd.Function):
    """The raw ops: ``(loss, backprop)`` from one kernel pass, both differentiable.

    As TensorFlow's registered gradient: the logits get ``g_loss * backprop``
    plus, when the backprop itself is differentiated, its softmax term; dense
    labels get ``-g_loss * log_softmax(logits)``.
    """

    @staticmethod
    def forward(ctx, kind, logits, labels):
        ctx.set_materialize_grads(False)
        loss, backprop = loss_and_backprop(kind, labels, logits, True)
        ctx.save_for_backward(logits, labels, backprop)
        return loss, backprop

    @staticmethod
    def backward(ctx, g_loss, g_backprop):
        logits, labels, backprop = ctx.saved_tensors
        d_logits = d_labels = None
        if ctx.needs_input_grad[1]:
            d_logits = LossAndBackprop._logits_grad(logits, backprop, g_loss, g_backprop)
        if ctx.needs_input_grad[2] and g_loss is not None:
            d_labels = labels_grad(logits, labels, g_loss)
        return None, d_logits, d_labels

    @staticmethod
    def _logits_grad(logits, backprop, g_loss, g_backprop):
        """``g_loss * backprop + softmax_vjp(g_backprop)``, either term possibly absent."""
        if g_backprop is None and g_loss is not None:   # (`row_factors`: the same bits)
            if batchable_backward(g_loss):
                return backprop * g_loss[..., None]
            factors = row_factors(g_loss, backprop.dtype)
            if not backprop.is_cpu:
                return backprop * factors
            out = from_numpy(empty_numpy(numpy_view(backprop)))   # (`empty_numpy`)
            return torch.mul(backprop, factors, out=out)
        return backprop_vjp(logits, backprop, g_loss, g_backprop)
