"""The large-vocabulary functions on torch tensors, differentiable by autograd.

CPU tensors run the fused kernel on zero-copy NumPy views (`_cross_entropy`,
`_linear`), with TensorFlow's range error for a bad target. When autograd
will want it (grad mode on, and an input that requires grad), the gradient is
computed in the forward pass, in the same kernel pass as the loss, already
scaled for the reduction (1/count for the mean); the backward hands it over
(scaled again only when the upstream gradient is not 1). For
``reduction="none"`` the per-token upstream gradient scales the rows in the
backward (`cross_entropy`), or the chunks are computed again with it
(`linear_cross_entropy`). float16 is the exception: its narrow exponent
would lose small gradients if they were rounded before a loss scale
multiplies them, so its gradient is made in the backward, with the upstream
gradient folded into the row weights and rounded once, as autograd does
(unless ``inplace_backward`` asks for it in the forward).

Graphs that torch.compile captures, torch.func transforms and forward-mode
levels (where the operators refuse forward mode by name) run both functions
through registered operators instead (`_torch_ops`, `_torch_linear_ops`).

Tensors on other devices run `_array_math` in torch ops under autograd (the
linear head chunk by chunk, each chunk recomputed in the backward by
`torch.utils.checkpoint`, so only one chunk's logits are held);
``inplace_backward`` has no effect there (autograd makes the gradient). So
do CPU tensors under a torch.func transform inside torch.compile, whose
tracer ignores an autograd.Function's own backward (`xent._torch._traced`).
"""
import math

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from xent._dtypes import accumulator
from xent._errstate import quiet
from xent._large_vocab import _array_math, _numpy, _torch_chunks, _torch_linear_ops, _torch_ops
from xent._large_vocab._cross_entropy import losses_and_gradient
from xent._large_vocab._float32_sums import shared_in_float32
from xent._large_vocab._tokens import reduce, row_weights
from xent._torch import _backend as torch_backend, _math as torch_math, _views as torch_views
from xent._torch._traced import in_compiled_transform

__all__ = ["cross_entropy", "linear_cross_entropy"]


def _loss_tensor(loss):
    """A NumPy result (scalar or array) as a CPU tensor."""
    return torch_views.from_numpy(np.asarray(loss))


def _scaled(grad, g, reduction, valid=None):
    """`grad` times the upstream gradient `g` (per row for ``"none"``), in place.

    Rows of ignored tokens (`valid` False; None: all kept), 0 from the
    kernel, stay 0 whatever g is, as torch's: their g is taken as 1 (0 · NaN
    would be NaN, and a NaN g on padding is common: an all-padding sequence's
    guarded 0/0, which ``x @ W.T`` then spread over all of W's gradient). As
    1, not 0, so that a ``.sum()``'s g stays all ones and takes no pass
    (`scale_rows_`; with 0 a padded 4096x32000 float32 backward took 20 ms
    against 0.3, a review)."""
    some_ignored = valid is not None and not valid.all()
    batched = torch_math.batchable_backward(g)   # (a batched g: out of place, values unread)
    if reduction != "none" and not batched:
        scale = g.item()
        if scale == 1.0:
            return grad
        if math.isfinite(scale) or not some_ignored:
            return grad.mul_(g.to(grad.dtype) if grad.dtype.is_floating_point else g)
    if reduction != "none":
        g = g.expand(grad.shape[:-1])
    if some_ignored:
        g = torch.where(torch.from_numpy(valid).reshape(g.shape), g, 1)
    return grad * g[..., None].to(grad.dtype) if batched else torch_math.scale_rows_(grad, g)


@quiet   # (torch's backward: outside the public call)
def _upstream_weights(weights, g, reduction):
    """The row weights times the upstream gradient `g` (per token for ``"none"``)."""
    g = torch_views.numpy_view(g.detach().to(torch.float64).reshape(-1).contiguous())
    return (weights * (g if reduction == "none" else g[0])).astype(weights.dtype)


def _refuse_double_backward():
    """Raise in a backward asked to build a graph (``create_graph=True``): the
    kernel's gradient has no derivative of its own, and a silent zero would be wrong."""
    if torch.is_grad_enabled():
        _torch_ops.refuse_second_derivative()


def _check_inplace(logits):
    """Refuse inplace_backward where writing over `logits` cannot be safe."""
    base = logits if logits._base is None else logits._base
    if base.is_leaf and base.requires_grad:
        what = "a leaf tensor" if base is logits else "a view of a leaf tensor"
        raise ValueError(f"inplace_backward=True would overwrite logits, {what} that "
                         "requires grad (its .grad would be its own overwritten values); pass "
                         "logits computed from your parameters, or inplace_backward=False")
    if not logits.is_contiguous():
        raise ValueError(f"inplace_backward=True needs contiguous logits; received a tensor "
                         f"of shape {list(logits.shape)} with strides {list(logits.stride())}")


def _checked(target):
    """`target` to save for autograd's version check, or None for an inference tensor
    (which autograd cannot save, and nothing can change in place outside
    inference mode: targets made under `torch.inference_mode` worked before)."""
    return None if target.is_inference() else target


class _CrossEntropy(torch.autograd.Function):
    """`cross_entropy` on the kernel: the loss, with the gradient made in the forward.

    The first backward hands that gradient over (autograd may keep it as a
    leaf's ``.grad`` and add into it later, so it is never handed out twice).
    A second backward over a retained graph, and float16 (see the module
    doc), make it in the backward from the logits, unless they were
    overwritten (``inplace_backward``).
    """

    @staticmethod
    def forward(ctx, logits, target, opts, inplace, grad_wanted):
        x = torch_views.numpy_view(logits)
        targets, valid = _numpy.tokens(torch_views.numpy_view(target), opts.ignore_index,
                                       x.shape[-1])
        x2, grad = x.reshape(-1, x.shape[-1]), None
        if inplace or (grad_wanted and logits.dtype != torch.float16):
            grad = x2 if inplace else torch_views.empty_numpy(x2)
        weights = row_weights(valid, opts.reduction, accumulator(x.dtype))
        losses = losses_and_gradient(x2, targets, valid, opts, weights, grad)
        if inplace and grad is not None:
            torch.autograd.graph.increment_version(logits)
        ctx.grad = None if grad is None else torch_views.from_numpy(grad).reshape(logits.shape)
        ctx.opts, ctx.tokens, ctx.inplace = opts, (targets, valid, weights), inplace
        # (the target saved too, though ctx.tokens holds it, for autograd's version
        # check where the backward reads it again: one changed in place since raises,
        # as F.cross_entropy's; the kernel read the new labels: an independent review)
        ctx.save_for_backward(None if inplace else logits, _checked(target))
        return _loss_tensor(reduce(losses, valid, opts.reduction, tuple(target.shape), x.dtype))

    @staticmethod
    def backward(ctx, g):
        _refuse_double_backward()
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            grad = _CrossEntropy._in_backward(ctx, g)
        else:
            grad = _scaled(grad, g, ctx.opts.reduction, ctx.tokens[1])
        return grad, None, None, None, None

    @staticmethod
    def _in_backward(ctx, g):
        """The gradient made from the logits (logits or target changed in place since
        the forward raise torch's error): float16's with the upstream `g` in the
        row weights, rounded once; other dtypes' as the forward made it, then
        times g as the first backward does, so that a second backward over a
        retained graph gives the first's bits (gradcheck's reentrancy check)."""
        if ctx.inplace:
            raise RuntimeError("xent.cross_entropy(inplace_backward=True) can run its backward "
                               "once: the logits now hold the gradient")
        logits, _ = ctx.saved_tensors
        x2 = torch_views.numpy_view(logits).reshape(-1, logits.shape[-1])
        targets, valid, weights = ctx.tokens
        batched = torch_math.batchable_backward(g)   # (whose values cannot reach the kernel)
        if logits.dtype == torch.float16 and not batched:
            grad = torch_views.empty_numpy(x2)
            weights = _upstream_weights(weights, g, ctx.opts.reduction)
            losses_and_gradient(x2, targets, valid, ctx.opts, weights, grad)
            return torch_views.from_numpy(grad).reshape(logits.shape)
        if batched:   # (float16's in float32, g out of place, rounded once)
            x2 = x2.astype(weights.dtype, copy=False)
        grad = torch_views.empty_numpy(x2)
        losses_and_gradient(x2, targets, valid, ctx.opts, weights, grad)
        grad = torch_views.from_numpy(grad).reshape(logits.shape)
        return _scaled(grad, g, ctx.opts.reduction, valid).to(logits.dtype)


def _device_cross_entropy(logits, target, opts):
    """`cross_entropy` in torch ops (other devices): autograd does the gradient."""
    z = logits.reshape(-1, logits.shape[-1]).to(torch_views.accumulator_dtype(logits.dtype))
    losses = _array_math.token_losses(torch_math.Ops, z, target.reshape(-1).long(), opts)
    return _array_math.reduce(losses, target, opts).to(logits.dtype)


@torch.compiler.disable
def _apply(function, *args):
    """`function.apply(*args)`, left out of torch.compile's graphs: dynamo cannot
    trace the kernel's NumPy and numba calls (graphs it captures get the
    registered operators instead; this is for eager calls only)."""
    return function.apply(*args)


def _graph_cross_entropy(logits, target, opts, grad_wanted):
    """`cross_entropy` through the registered operator (`_torch_ops`), for graphs
    torch.compile captures and torch.func transforms: per-token losses, then
    the reduction in torch ops."""
    losses = _torch_ops.losses(logits, target, opts, grad_wanted)
    return _array_math.reduce(losses, target, opts).to(logits.dtype)


def cross_entropy(logits, target, opts, inplace_backward, return_grads):
    """`xent.cross_entropy` on torch tensors (checked).

    The paths in torch ops compare int64 targets with `ignore_index` (torch
    compares in the tensor's dtype: an int32 target against 2**32 + 1 would
    match 1), as the kernel's path does in NumPy (`_numpy.tokens`)."""
    grad_wanted = logits.requires_grad and torch.is_grad_enabled()
    if not torch_math.on_kernels(logits) or in_compiled_transform():
        # (inplace_backward has no effect there, nor below: nothing to refuse)
        return _device_cross_entropy(logits, target.long(), opts)
    if torch_backend.graph_ops():
        return _graph_cross_entropy(logits, target.long(), opts, grad_wanted)
    inplace = bool(inplace_backward) and grad_wanted
    if inplace:
        _check_inplace(logits)
    return _apply(_CrossEntropy, logits, target, opts, inplace, grad_wanted)


class _LinearCrossEntropy(torch.autograd.Function):
    """`linear_cross_entropy` on the kernel, chunk by chunk.

    mean/sum: the gradients autograd wants are made in the forward (one pass
    of three matmuls) and handed over by the first backward (a second one over
    a retained graph makes them again); ``none`` and float16 (see the module
    doc) run the chunks again with the upstream gradient in the row weights.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, target, opts, chunk, wanted):
        x2 = x.detach().reshape(-1, x.shape[-1]).contiguous()
        w, b = weight.detach(), None if bias is None else bias.detach()
        targets, valid = _numpy.tokens(torch_views.numpy_view(target), opts.ignore_index,
                                       w.shape[0])
        early = _torch_chunks.gradients_in_forward(opts.reduction, x.dtype)
        weights = row_weights(valid, opts.reduction, torch_views.numpy_accumulator(x.dtype))
        grads, losses = _torch_chunks.run_chunks(x2, w, b, targets, valid, opts, chunk, weights,
                                    wanted if early else (False,) * 3)
        ctx.grads, ctx.opts, ctx.chunk, ctx.shape, ctx.x_dtype = grads, opts, chunk, x.shape, x.dtype
        ctx.tokens = (targets, valid, weights)
        ctx.save_for_backward(x2, w, b, _checked(target))   # (for the version check, as above)
        dtype = torch_views.numpy_view(x2[:0]).dtype
        return _loss_tensor(reduce(losses, valid, opts.reduction, tuple(target.shape), dtype))

    @staticmethod
    def backward(ctx, g):
        _refuse_double_backward()
        grads, ctx.grads = ctx.grads, None
        if grads is None and _torch_chunks.gradients_in_forward(ctx.opts.reduction, ctx.x_dtype):
            # a second backward over a retained graph: the forward's gradients made
            # again, then scaled as the first backward's (its bits: gradcheck's
            # reentrancy check; g in the row weights differed in the last bit)
            grads = _LinearCrossEntropy._chunks(ctx, ctx.tokens[2])
        elif grads is not None:
            # (unpacked unused, for autograd's check: inputs changed in place
            # since the forward raise, as torch's own matmul's backward does)
            ctx.saved_tensors
        if grads is not None:
            dx, dw, db = (None if t is None else _scaled(t, g, "mean", valid)
                          for t, valid in zip(grads, (ctx.tokens[1], None, None)))
        else:
            dx, dw, db = _LinearCrossEntropy._recompute(ctx, g)
        # (ctx.x_dtype, not saved_tensors again: non-reentrant checkpoint lets a
        # backward unpack its saved tensors once, and _chunks did)
        return (None if dx is None else dx.reshape(ctx.shape),
                None if dw is None else dw.to(ctx.x_dtype),
                None if db is None else db.to(ctx.x_dtype), None, None, None, None)

    @staticmethod
    def _recompute(ctx, g):
        """The chunks again, each token's gradient weighted by its upstream `g`
        (reduction ``"none"``, float16)."""
        if torch_math.batchable_backward(g):   # (not a graph: `_refuse_double_backward` ran)
            raise RuntimeError(
                "xent.linear_cross_entropy's backward for reduction='none' or float16 inputs "
                "runs its chunks again with the upstream gradient as the tokens' weights, one "
                "upstream gradient at a time: batched ones (autograd.grad(..., "
                "is_grads_batched=True), jacobian(..., vectorize=True)) are not supported "
                "there; use vectorize=False, or a loop")
        return _LinearCrossEntropy._chunks(
            ctx, _upstream_weights(ctx.tokens[2], g, ctx.opts.reduction))

    @staticmethod
    def _chunks(ctx, weights):
        """``(dx, dW, db)`` (None where not wanted) from the chunks run again with
        these row `weights`."""
        x2, w, b, _ = ctx.saved_tensors
        targets, valid, _ = ctx.tokens
        wanted = ctx.needs_input_grad[:3]
        grads = _torch_chunks.run_chunks(x2, w, b, targets, valid, ctx.opts, ctx.chunk, weights, wanted)[0]
        return (None, None, None) if grads is None else grads


def _device_linear(x, weight, bias, target, opts, chunk):
    """`linear_cross_entropy` in torch ops, one checkpointed chunk at a time (under a
    torch.func transform, which refuses checkpoint's saved-tensor hooks, the
    chunks are not checkpointed: their logits are kept for the backward); a
    half-precision weight's and bias's gradients summed over the chunks in
    float32 (`shared_in_float32`)."""
    x2, t = x.reshape(-1, x.shape[-1]), target.reshape(-1).long()
    # ignored tokens' rows of x at 0: an inf or NaN there reaches no gradient (dW = dzᵀ·x)
    x2 = torch.where((t != opts.ignore_index)[:, None], x2, 0)
    acc = torch_views.accumulator_dtype(x.dtype)
    weight_of, bias_of = shared_in_float32(weight), shared_in_float32(bias)

    def chunk_losses(xc, tc):
        w, b = weight_of(), bias_of()
        z = xc @ w.t() if b is None else torch.addmm(b, xc, w.t())
        return _array_math.token_losses(torch_math.Ops, z.to(acc), tc, opts)

    def run(xc, tc):
        if torch._C._are_functorch_transforms_active():
            return chunk_losses(xc, tc)
        return checkpoint(chunk_losses, xc, tc, use_reentrant=False)

    # no tokens: one empty chunk still ties the (zero) loss to x and the weights
    parts = [run(x2[lo:lo + chunk], t[lo:lo + chunk]) for lo in range(0, max(x2.shape[0], 1), chunk)]
    losses = torch.cat(parts)
    return _array_math.reduce(losses, target, opts).to(x.dtype)


def linear_cross_entropy(x, weight, bias, target, opts, chunk, return_grads):
    """`xent.linear_cross_entropy` on torch tensors (checked)."""
    if not torch_math.on_kernels(x) or in_compiled_transform():
        return _device_linear(x, weight, bias, target.long(), opts, chunk)
    if torch_backend.graph_ops():
        return _torch_linear_ops.loss(x, weight, bias, target.long(), opts, chunk)
    wanted = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad
                   for t in (x, weight, bias))
    return _apply(_LinearCrossEntropy, x, weight, bias, target, opts, chunk, wanted)
